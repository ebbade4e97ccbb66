//! Wiring: load the config, start the sandboxes, build the upstreams and the request stack, bind the
//! listeners, watch the file (and SIGHUP) for reloads, and drain on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::{AdminState, Reload, ReloadStatus};
use crate::audit::{Audit, SystemClock};
use crate::budget::BufferBudget;
use crate::config::reload::{self, Reloader};
use crate::config::{ConfigError, EnvAndFiles, SecretSource};
use crate::generation::{Current, Generation};
use crate::layers;
use crate::metrics::Metrics;
use crate::resolver::Resolver;
use crate::sandbox::{Registry, Sandbox};
use crate::server::{Limits, Server, Shared};
use crate::side_runtime::SideRuntime;
use crate::state::Stores;
use crate::webhooks::Webhooks;

/// How to run.
#[derive(Clone)]
pub struct Options {
    /// The config file.
    pub config_path: PathBuf,
    /// Reload when the file changes.
    pub watch: bool,
    /// Reload on SIGHUP.
    pub sighup: bool,
    /// Where the secrets the config names are read, at start and on every reload.
    pub secrets: Arc<dyn SecretSource>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config_path", &self.config_path)
            .field("watch", &self.watch)
            .field("sighup", &self.sighup)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Runs `path` with the file watch on, SIGHUP handled, and secrets read from the process
    /// environment and the file system.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            config_path: path.into(),
            watch: true,
            sighup: true,
            secrets: Arc::new(EnvAndFiles),
        }
    }

    /// Reads secrets from `secrets` instead (tests pass a table, never the process environment).
    pub fn with_secrets(mut self, secrets: impl SecretSource + 'static) -> Self {
        self.secrets = Arc::new(secrets);
        self
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is not valid.
    #[error("{path}: invalid config:\n{source}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
    /// The store of payment state could not be opened: without it the sidecar would forget which
    /// provider a payment may have reached.
    #[error("{0}")]
    State(#[source] crate::state::OpenError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// What the listener is for.
        what: String,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file watch could not be set up.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The file.
        path: String,
        /// The watch error.
        #[source]
        source: notify::Error,
    },
    /// A runtime thread could not be started.
    #[error("cannot start the runtime of the {what}: {source}")]
    Runtime {
        /// What it is for.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The audit folder could not be created or the writer not started.
    #[error("cannot start the audit trail in {dir}: {source}")]
    Audit {
        /// The folder.
        dir: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A running sidecar.
pub struct App {
    shop: Server,
    admin: Server,
    sandboxes: Registry,
    ready: Arc<AtomicBool>,
    current: Current,
    reloader: Arc<Reloader>,
    metrics: Metrics,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Webhook listeners: (configured address, server).
    webhook_servers: Vec<(std::net::SocketAddr, Server)>,
    /// The runtime the webhook listeners run on, when there are any.
    side: Option<SideRuntime>,
    audit: Audit,
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}

impl App {
    /// Loads the config and starts everything. Returns once every listener is bound.
    pub async fn start(options: Options) -> Result<Self, StartError> {
        let path = options.config_path.clone();
        let config_error = |source| StartError::Config {
            path: path.display().to_string(),
            source,
        };
        let (snapshot, text) = reload::load_file_off_thread(&path, Arc::clone(&options.secrets))
            .await
            .map_err(config_error)?;
        // Before any listener is bound: the limit decides whether max_connections can be reached.
        crate::fd_limit::check(snapshot.limits.max_connections);
        let metrics = Metrics::new();
        let state = Arc::new(
            Stores::open(&snapshot, &metrics)
                .await
                .map_err(StartError::State)?,
        );
        let generation = Generation::build(snapshot, &text, None, &state, &metrics, Instant::now())
            .map_err(|problems| config_error(ConfigError::Invalid(problems)))?;
        let snapshot = Arc::clone(&generation.snapshot);

        let mut sandboxes = Registry::default();
        for s in &snapshot.sandbox {
            let sandbox =
                Sandbox::start(&s.name, s.listen)
                    .await
                    .map_err(|source| StartError::Bind {
                        what: format!("sandbox {}", s.name),
                        addr: s.listen,
                        source,
                    })?;
            tracing::info!(sandbox = %s.name, addr = %sandbox.addr(), "sandbox provider listening");
            sandboxes.insert(sandbox);
        }

        let current: Current = Arc::new(ArcSwap::from_pointee(generation));
        metrics.config_generation.set(1);
        // The state series exist from the start, at zero, so alerts and dashboards never see a gap.
        metrics.state_opened(state.backend());
        metrics
            .config_last_reload_success_timestamp_seconds
            .set(reload::unix_now());

        let limits_of =
            |listener| Limits::new(snapshot.max_header_bytes, &snapshot.limits, listener);
        let shared = Shared {
            metrics: metrics.clone(),
            budget: BufferBudget::new(
                snapshot.limits.max_buffered_bytes,
                metrics.buffered_bytes.clone(),
                metrics.overload_rejections_total.clone(),
            ),
            // The shop and webhook listeners share it; the admin listener has only its own, so that
            // probes and scrapes still get in when the shop side is full.
            connections: Some(Arc::new(Semaphore::new(snapshot.limits.max_connections))),
        };
        let shop_listener = bind(snapshot.listen, "shop listener").await?;
        let admin_listener = bind(snapshot.admin.listen, "admin listener").await?;
        let audit = match &snapshot.audit {
            Some(cfg) => Audit::start(cfg, &metrics, Arc::new(SystemClock)).map_err(|source| {
                StartError::Audit {
                    dir: cfg.dir.display().to_string(),
                    source,
                }
            })?,
            None => Audit::disabled(),
        };
        let resolver = Resolver::new(Arc::clone(&current), metrics.clone(), audit.clone());
        let webhooks = Arc::new(Webhooks::new(
            metrics.clone(),
            audit.clone(),
            Arc::clone(&state),
            Some(Arc::clone(&resolver)),
        ));
        let mut webhook_servers = Vec::new();
        let listeners = snapshot.webhook_listeners();
        let side = match listeners.is_empty() {
            true => None,
            false => Some(SideRuntime::start("switchyard-webhooks").map_err(|source| {
                StartError::Runtime {
                    what: "webhook listeners".to_owned(),
                    source,
                }
            })?),
        };
        for addr in listeners {
            let listener = bind(addr, "webhook listener").await?;
            let service = layers::webhook_stack(
                Arc::clone(&current),
                metrics.clone(),
                Arc::clone(&webhooks),
                addr,
            );
            let server = match &side {
                Some(side) => Server::spawn_on(
                    side.handle(),
                    listener,
                    service,
                    limits_of(&snapshot.limits.webhooks),
                    "webhooks",
                    shared.clone(),
                ),
                None => Server::spawn(
                    listener,
                    service,
                    limits_of(&snapshot.limits.webhooks),
                    "webhooks",
                    shared.clone(),
                ),
            };
            webhook_servers.push((addr, server));
        }

        let status = Arc::new(Mutex::new(ReloadStatus::default()));
        let reloader = Arc::new(Reloader::new(
            path.clone(),
            Arc::clone(&options.secrets),
            Arc::clone(&current),
            metrics.clone(),
            Arc::clone(&status),
        ));
        reloader.restart_checks(&current.load());
        let ready = Arc::new(AtomicBool::new(false));
        let admin_state = AdminState {
            metrics: metrics.clone(),
            current: Arc::clone(&current),
            status,
            ready: Arc::clone(&ready),
            sandboxes: sandboxes.clone(),
            reloader: Arc::clone(&reloader) as Arc<dyn Reload>,
            config_path: path.clone(),
            resolver: Arc::clone(&resolver),
        };
        let admin_service = tower::service_fn(move |req| admin_state.clone().handle(req));
        let admin = Server::spawn(
            admin_listener,
            admin_service,
            limits_of(&snapshot.limits.admin),
            "admin",
            Shared {
                connections: None,
                ..shared.clone()
            },
        );
        let shop_service = layers::stack(
            Arc::clone(&current),
            metrics.clone(),
            audit.clone(),
            webhooks,
        );
        let shop = Server::spawn(
            shop_listener,
            shop_service,
            limits_of(&snapshot.limits.shop),
            "shop",
            shared,
        );

        let mut background = vec![resolver.spawn()];
        if options.watch {
            let (watch, mut changes) =
                reload::watch(&path).map_err(|source| StartError::Watch {
                    path: path.display().to_string(),
                    source,
                })?;
            let reloader = Arc::clone(&reloader);
            background.push(tokio::spawn(async move {
                let _watch = watch;
                while changes.recv().await.is_some() {
                    // Let a burst of writes settle, then reload once.
                    tokio::time::sleep(reload::SETTLE).await;
                    while changes.try_recv().is_ok() {}
                    let _ = reloader.reload().await;
                }
            }));
        }
        if options.sighup {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                if let Ok(mut hup) = signal(SignalKind::hangup()) {
                    let reloader = Arc::clone(&reloader);
                    background.push(tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            tracing::info!("SIGHUP: reloading the config");
                            let _ = reloader.reload().await;
                        }
                    }));
                }
            }
        }

        ready.store(true, Ordering::Release);
        // Bound addresses of the webhook listeners, as "configured=bound" pairs (a configured port 0
        // is picked by the system: tools that start the sidecar read the port here).
        let webhook_listeners = webhook_servers
            .iter()
            .map(|(configured, s)| format!("{configured}={}", s.local_addr()))
            .collect::<Vec<_>>()
            .join(",");
        tracing::info!(
            listen = %shop.local_addr(),
            admin = %admin.local_addr(),
            webhooks = %webhook_listeners,
            routes = snapshot.routes.len(),
            providers = snapshot.providers.len(),
            workers = tokio::runtime::Handle::current().metrics().num_workers(),
            "switchyard is serving"
        );
        Ok(Self {
            shop,
            admin,
            sandboxes,
            ready,
            current,
            reloader,
            metrics,
            background,
            webhook_servers,
            side,
            audit,
        })
    }

    /// The bound address of the webhook listener configured as `configured` (a `webhooks[].listen`).
    pub fn webhook_addr(&self, configured: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
        self.webhook_servers
            .iter()
            .find(|(c, _)| *c == configured)
            .map(|(_, s)| s.local_addr())
    }

    /// The audit trail (disabled when `audit:` is not configured).
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The shop listener's address.
    pub fn shop_addr(&self) -> std::net::SocketAddr {
        self.shop.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.local_addr()
    }

    /// The in-process sandbox named `name`.
    pub fn sandbox(&self, name: &str) -> Option<&Sandbox> {
        self.sandboxes.get(name)
    }

    /// The generation in use.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Reloads the config file now.
    pub async fn reload(&self) -> Result<u64, String> {
        self.reloader.reload().await
    }

    /// Fails readiness, stops accepting, lets in-flight requests finish up to `drain_timeout`, then stops
    /// the admin listener.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        for task in &self.background {
            task.abort();
        }
        self.reloader.stop_checks();
        let drain = self.current.load().snapshot.drain_timeout;
        tracing::info!(?drain, "shutting down: draining in-flight requests");
        self.shop.shutdown(drain).await;
        for (_, server) in self.webhook_servers {
            server.shutdown(drain).await;
        }
        if let Some(side) = self.side {
            side.stop().await;
        }
        // Every request has ended: write out what the audit queue still holds.
        self.audit.close().await;
        self.admin.shutdown(Duration::from_secs(1)).await;
        tracing::info!("stopped");
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub async fn run(options: Options) -> Result<(), StartError> {
    // Listening before anything is served: a SIGTERM that comes while start-up is still finishing
    // (a request may already be answered by then) drains like any other, instead of killing the
    // process with the signal's default action.
    let stop = StopSignal::listen();
    let app = App::start(options).await?;
    stop.wait().await;
    app.shutdown().await;
    Ok(())
}

/// SIGTERM (and SIGINT), listened for from the moment it is made.
struct StopSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignal {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate());
            let int = signal(SignalKind::interrupt());
            Self {
                signals: term.ok().zip(int.ok()),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.signals {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
