//! The `switchyard` command: run the sidecar, check a config, or run one sandbox provider.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use switchyard::app::{self, Options};
use switchyard::config::{self, EnvAndFiles, PlaceholderSecrets, SecretSource, Snapshot};
use switchyard::error::Human;
use switchyard::sandbox::{self, Registry, Sandbox};
use switchyard::upstream::Upstreams;

/// jemalloc, with its background thread on: memory a burst of connections freed goes back to the
/// system about 10 s later (`dirty_decay_ms`), where the system allocator kept it (Cargo.toml says
/// what was measured). Set `_RJEM_MALLOC_CONF` to tune it (jemalloc's `MALLOC_CONF` options).
#[cfg(all(unix, not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A payment-safe sidecar proxy between a shop and its payment providers.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Run(RunArgs),
    /// Validate a config file and print a summary; exit code 0 when valid, 1 when not.
    Check {
        /// The config file.
        #[arg(long, default_value = "routes.yaml")]
        config: PathBuf,
        /// Do not fail when an environment variable or file holding a secret is missing (CI of a
        /// shop that has no production secrets).
        #[arg(long)]
        allow_missing_secrets: bool,
    },
    /// Run one simulated provider on its own.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: SocketAddr,
        /// Its name (shown in its answers and payment ids).
        #[arg(long, default_value = "sandbox")]
        name: String,
        /// Serve the control API (GET/POST /admin/sandbox/NAME) on this address.
        #[arg(long)]
        control: Option<SocketAddr>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The config file.
    #[arg(long, default_value = "routes.yaml")]
    config: PathBuf,
    /// Do not watch the file for changes (SIGHUP and POST /admin/reload still reload).
    #[arg(long)]
    no_watch: bool,
    /// Threads serving requests. One (the default) runs everything on a single thread, as a sidecar
    /// should: no hand-off between threads per request, and one core serves well over 10 000
    /// payments/s. More spread connections over that many threads; `0` means one per core.
    #[arg(long, env = "SWITCHYARD_WORKERS", default_value_t = 1)]
    workers: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The async runtime: one thread unless the sidecar is asked for more workers.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let workers = match &cli.command {
        None => cli.run.workers,
        Some(Command::Run(args)) => args.workers,
        Some(_) => 1,
    };
    let runtime = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => run(cli.run).await,
            Some(Command::Run(args)) => run(args).await,
            Some(Command::Check {
                config,
                allow_missing_secrets,
            }) => check(&config, allow_missing_secrets),
            Some(Command::Sandbox {
                listen,
                name,
                control,
            }) => run_sandbox(listen, &name, control).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut options = Options::new(args.config);
    options.watch = !args.no_watch;
    app::run(options).await?;
    Ok(ExitCode::SUCCESS)
}

fn check(path: &std::path::Path, allow_missing_secrets: bool) -> anyhow::Result<ExitCode> {
    let secrets: &dyn SecretSource = if allow_missing_secrets {
        &PlaceholderSecrets
    } else {
        &EnvAndFiles
    };
    let loaded = config::load_file(path, secrets).and_then(|(snapshot, text)| {
        Upstreams::build(&snapshot, None)
            .map(|_| (snapshot, text))
            .map_err(config::ConfigError::Invalid)
    });
    match loaded {
        Ok((snapshot, text)) => {
            print!("{}", summary(path, &snapshot, &text));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}: INVALID", path.display());
            println!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn summary(path: &std::path::Path, s: &Snapshot, text: &str) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let mut out = String::new();
    let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let _ = writeln!(out, "{}: OK (sha256 {})", path.display(), &digest[..16]);
    let token = if s.admin.token.is_some() {
        "write calls need a bearer token"
    } else {
        "no token: write calls are open to local processes"
    };
    let _ = writeln!(
        out,
        "listen {}   admin {} ({token})",
        s.listen, s.admin.listen
    );
    let _ = writeln!(out, "providers ({}):", s.providers.len());
    for p in s.providers.values() {
        let auth = match &p.auth {
            Some(a) => format!("auth {}", a.header),
            None => "no auth".into(),
        };
        let tls = if p.scheme == http::uri::Scheme::HTTPS {
            match (&p.tls.ca_file, &p.tls.client_cert) {
                (None, None) => ", tls webpki roots".to_owned(),
                (ca, cert) => format!(
                    ", tls{}{}",
                    ca.as_ref()
                        .map(|c| format!(" ca {}", c.display()))
                        .unwrap_or_default(),
                    cert.as_ref().map(|_| " + client cert").unwrap_or_default()
                ),
            }
        } else {
            ", plaintext (loopback only)".to_owned()
        };
        let _ = writeln!(
            out,
            "  {:<16} {}://{}{}  timeout {}, connect {}, {auth}{tls}",
            p.name,
            p.scheme,
            p.authority,
            p.base_path,
            Human(p.timeout),
            Human(p.connect_timeout)
        );
    }
    let _ = writeln!(out, "routes ({}):", s.routes.len());
    for r in &s.routes {
        let methods = r
            .matcher
            .methods
            .as_ref()
            .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "any".into());
        let targets: Vec<String> = r
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{} (priority {}, weight {})",
                    t.provider, t.priority, t.weight
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:<16} {} {}{}  -> {}  timeout {}, max_body {} B",
            r.name,
            methods,
            r.matcher.path_prefix,
            r.matcher
                .host
                .as_ref()
                .map(|h| format!(" host {h}"))
                .unwrap_or_default(),
            targets.join(", "),
            Human(r.timeout),
            r.max_body
        );
    }
    if !s.webhooks.is_empty() {
        let _ = writeln!(out, "webhooks ({}):", s.webhooks.len());
        for w in &s.webhooks {
            let listen = w.listen.map(|l| format!(" on {l}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<16} POST {}{listen}  -> {}  verify {} ({} key{}), timeout {}{}",
                w.name,
                w.path,
                w.forward_to_shown(),
                w.verify.scheme.as_str(),
                w.verify.keys.len(),
                if w.verify.keys.len() == 1 { "" } else { "s" },
                Human(w.timeout),
                if w.forward_authorization {
                    ""
                } else {
                    ", Authorization not forwarded"
                },
            );
        }
    }
    if !s.sandbox.is_empty() {
        let list: Vec<String> = s
            .sandbox
            .iter()
            .map(|b| format!("{} on {}", b.name, b.listen))
            .collect();
        let _ = writeln!(out, "sandbox providers: {}", list.join(", "));
    }
    let state = match &s.state.redis {
        // The URL with its password, if any, replaced: `check` output ends up in CI logs.
        Some(r) => format!(
            "redis at {}, timeout {}, on_unavailable {}, quota_share {}",
            r.url.redacted(),
            Human(r.timeout),
            r.on_unavailable.as_str(),
            r.quota_share
        ),
        None => match s.state.backend {
            switchyard::config::StateBackend::Memory => {
                "memory (lost on every restart: tests and throwaway runs only)".to_owned()
            }
            _ => format!("local in {}", s.state.dir.display()),
        },
    };
    let _ = writeln!(out, "state: {state}");
    let _ = writeln!(out, "secrets read ({}):", s.secrets.len());
    for secret in &s.secrets {
        let _ = writeln!(out, "  {:<36} from {}", secret.path, secret.source);
    }
    out
}

async fn run_sandbox(
    listen: SocketAddr,
    name: &str,
    control: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::start(name, listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    // Printed on stdout so that a parent process (the loadtest) can read the port when it asked for 0.
    println!("sandbox {name} listening on {}", sandbox.addr());
    let mut registry = Registry::default();
    registry.insert(sandbox);
    if let Some(addr) = control {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (control): {e}"))?;
        println!("sandbox control on {}", listener.local_addr()?);
        tokio::spawn(sandbox::serve_control(listener, registry));
    }
    tokio::signal::ctrl_c().await.ok();
    Ok(ExitCode::SUCCESS)
}
