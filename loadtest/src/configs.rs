//! The configs the tool writes for the proxies under test: switchyard's `routes.yaml`, Envoy's
//! bootstrap, HAProxy's and nginx's configs, each set up the way a user would for the same job — a
//! primary provider, a backup channel taken when the primary fails, retries, a breaker (outlier
//! detection, or what the proxy has in its place), active health checks where the proxy has them,
//! the same attempt timeout, two workers (Envoy's default concurrency on a two-core machine), no
//! access log, every file in the run's folder.
//!
//! [`switchyard_yaml`] is the one place the proxy's config is written: keys that land later (route
//! `retry`, `idempotency`) go there.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// What the generated configs need to know.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// The primary provider's name and address.
    pub primary: (String, SocketAddr),
    /// The backup provider's name and address.
    pub backup: (String, SocketAddr),
    /// Timeout of one attempt at a provider.
    pub attempt_timeout: Duration,
    /// Extra keys of switchyard's route, one YAML line each (`--route-extra`).
    pub route_extra: Vec<String>,
    /// Extra top-level keys of switchyard's config, one YAML line each (`--config-extra`).
    pub config_extra: Vec<String>,
}

/// Timeout of one attempt at a provider, in every proxy.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The whole request, all attempts, in every proxy that has such a limit.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of a connection attempt to a provider, in every proxy.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Retries after the first attempt (Envoy's `num_retries`), in every proxy.
pub const RETRIES: u32 = 2;
/// Workers of HAProxy (threads) and nginx (processes): Envoy's default concurrency, one per core,
/// on the two-core machines the figures are taken on.
pub const WORKERS: u32 = 2;

/// Where one sidecar keeps payment state: the `state:` section of its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// In the sidecar's memory (`backend: memory`).
    Memory,
    /// An embedded store in `dir`, relative to the config file (`backend: local`): one per sidecar.
    Local {
        /// The store's folder.
        dir: String,
    },
    /// The Redis at `addr`, shared by every sidecar (`backend: redis`), with the proxy's defaults
    /// written out: a 100 ms timeout per command, `fail_closed`.
    Redis {
        /// Where it listens.
        addr: SocketAddr,
    },
}

impl State {
    /// The `state:` section.
    pub fn yaml(&self) -> String {
        match self {
            State::Memory => "state:\n  backend: memory\n".into(),
            State::Local { dir } => format!("state:\n  backend: local\n  dir: {dir}\n"),
            State::Redis { addr } => format!(
                "state:\n  backend: redis\n  redis:\n    url: redis://{addr}/0\n    timeout: 100ms\n    on_unavailable: fail_closed\n"
            ),
        }
    }
}

/// switchyard's config for a run, with the `state` section of one sidecar. `revision` varies a harmless value (the route timeout by a few
/// ms), so that each rewrite of the reload scenario is a real change with a new hash.
///
/// Breakers, health checks, slow start, a provider quota and a route rate limit are on; the limits
/// are far above the load, so they cost what they cost without ever refusing a request.
pub fn switchyard_yaml(u: &Upstreams, state: &State, revision: u64) -> String {
    let provider = |name: &str, addr: SocketAddr| {
        format!(
            r#"  {name}:
    url: http://{addr}
    connect_timeout: 250ms
    timeout: {timeout}ms
    pool_max_idle: 256
    breaker: {{ consecutive_failures: 5, failure_rate: 0.5, window: 10s, min_requests: 20, open_for: 1s, max_open_for: 10s, half_open_probes: 3 }}
    health_check: {{ path: /healthz, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}
    slow_start: 2s
    quota: {{ rps: 1000000, burst: 100000 }}
"#,
            timeout = u.attempt_timeout.as_millis()
        )
    };
    format!(
        r#"# Written by loadtest (loadtest/src/configs.rs), revision {revision}.
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
drain_timeout: 1s
providers:
{primary}{backup}routes:
  - name: payments
    match:
      path_prefix: /v1/
      methods: [GET, POST]
    targets:
      - {{ provider: {primary_name}, priority: 0 }}
      - {{ provider: {backup_name}, priority: 1 }}
    timeout: {route_timeout}ms
    max_body: 64KiB
    rate_limit: {{ rps: 1000000, burst: 100000 }}
    # Retries and idempotency settings go here (from --route-extra).
{route_extra}{state}{config_extra}"#,
        primary = provider(&u.primary.0, u.primary.1),
        backup = provider(&u.backup.0, u.backup.1),
        primary_name = u.primary.0,
        backup_name = u.backup.0,
        route_timeout = ROUTE_TIMEOUT.as_millis() as u64 + revision % 2,
        state = state.yaml(),
        route_extra = u
            .route_extra
            .iter()
            .map(|l| format!("    {}\n", l.trim()))
            .collect::<String>(),
        config_extra = u
            .config_extra
            .iter()
            .map(|l| format!("{}\n", l.trim()))
            .collect::<String>(),
    )
}

/// Envoy stats (cluster `payments`) the report keeps: retries, retry and pending overflows, connect
/// failures, outlier ejections.
pub const ENVOY_STATS: [&str; 6] = [
    "cluster.payments.upstream_rq_retry",
    "cluster.payments.upstream_rq_retry_success",
    "cluster.payments.upstream_rq_retry_overflow",
    "cluster.payments.upstream_rq_pending_overflow",
    "cluster.payments.upstream_cx_connect_fail",
    "cluster.payments.outlier_detection.ejections_enforced_total",
];

/// The response header through which the Envoy config tells which endpoint answered.
pub const ENVOY_UPSTREAM_HEADER: &str = "x-upstream-host";

/// Envoy's bootstrap for a run, listening on `listen`: one cluster with the primary at priority 0
/// and the backup at priority 1 (Envoy moves traffic down a priority as hosts turn unhealthy),
/// active health checks, outlier detection that ejects after 5 failures in a row, and retries on
/// connect failures and 5xx that prefer another priority — what the Envoy docs suggest for failover.
///
/// Envoy's default circuit breakers (1024 connections, pending and active requests, and only 3
/// retries in flight per cluster) would shed load or skip retries at the loads here; they are raised,
/// as a user running a payment sidecar would. Its admin API on `admin` serves the stats the report
/// reads (retries, overflows, ejections).
pub fn envoy_yaml(u: &Upstreams, listen: SocketAddr, admin: SocketAddr) -> String {
    let endpoint = |priority: u32, addr: SocketAddr| {
        format!(
            r#"        - priority: {priority}
          lb_endpoints:
            - endpoint:
                address:
                  socket_address: {{ address: {ip}, port_value: {port} }}
"#,
            ip = addr.ip(),
            port = addr.port()
        )
    };
    let secs = |d: Duration| format!("{:.3}s", d.as_secs_f64());
    format!(
        r#"# Written by loadtest (loadtest/src/configs.rs).
admin:
  address:
    socket_address: {{ address: {admin_ip}, port_value: {admin_port} }}
static_resources:
  listeners:
    - name: shop
      address:
        socket_address: {{ address: {listen_ip}, port_value: {listen_port} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: shop
                route_config:
                  name: payments
                  virtual_hosts:
                    - name: payments
                      domains: ["*"]
                      response_headers_to_add:
                        - header: {{ key: {header}, value: "%UPSTREAM_HOST%" }}
                      routes:
                        - match: {{ prefix: "/v1/" }}
                          route:
                            cluster: payments
                            timeout: {route_timeout}
                            retry_policy:
                              retry_on: connect-failure,5xx
                              num_retries: 2
                              per_try_timeout: {attempt_timeout}
                              retry_priority:
                                name: envoy.retry_priorities.previous_priorities
                                typed_config:
                                  "@type": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig
                                  update_frequency: 1
                              retry_host_predicate:
                                - name: envoy.retry_host_predicates.previous_hosts
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                              host_selection_retry_max_attempts: 3
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: payments
      type: STATIC
      connect_timeout: 0.25s
      lb_policy: ROUND_ROBIN
      circuit_breakers:
        thresholds:
          - priority: DEFAULT
            max_connections: 100000
            max_pending_requests: 100000
            max_requests: 100000
            max_retries: 10000
      load_assignment:
        cluster_name: payments
        endpoints:
{primary}{backup}      health_checks:
        - timeout: 0.5s
          interval: 1s
          unhealthy_threshold: 2
          healthy_threshold: 2
          http_health_check: {{ path: /healthz }}
      outlier_detection:
        consecutive_5xx: 5
        consecutive_gateway_failure: 5
        interval: 1s
        base_ejection_time: 1s
        max_ejection_time: 10s
        max_ejection_percent: 100
"#,
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        listen_ip = listen.ip(),
        listen_port = listen.port(),
        header = ENVOY_UPSTREAM_HEADER,
        route_timeout = secs(ROUTE_TIMEOUT),
        attempt_timeout = secs(u.attempt_timeout),
        primary = endpoint(0, u.primary.1),
        backup = endpoint(1, u.backup.1),
    )
}

/// The response header through which the HAProxy and nginx configs name the server that answered:
/// [`UPSTREAM_PRIMARY`] or [`UPSTREAM_BACKUP`]. Neither puts it on an answer the proxy made itself.
pub const UPSTREAM_HEADER: &str = "x-upstream";
/// The primary provider's server name in the HAProxy and nginx configs.
pub const UPSTREAM_PRIMARY: &str = "primary";
/// The backup provider's server name in the HAProxy and nginx configs.
pub const UPSTREAM_BACKUP: &str = "backup";

/// HAProxy's config for a run, listening on `listen`, its stats page (`/stats`, CSV at
/// `/stats;csv`) on `stats`, its pid file in `dir`.
///
/// One backend with the primary as its server and the backup as a `backup` server (HAProxy sends a
/// backup traffic only while every other server is down); active health checks (GET /healthz every
/// 1 s, down after 2 failures, up after 2 successes); `observe layer7 ... on-error mark-down` as
/// the breaker: 5 failed answers or connections in a row take the server down at once (Envoy's
/// outlier detection), the health checks bring it back. Retries ([`RETRIES`]) on what Envoy's
/// `connect-failure,5xx` covers — a refused or timed-out connection, no or an empty answer, the
/// attempt timeout, 500/502/503/504 — with `option redispatch 1`, so that a retry goes to the
/// backup as soon as the primary is down. HAProxy has no limit on the whole request: the attempt
/// timeout (`timeout server`) and the retries bound it. Threads: [`WORKERS`]. No `log` line, so
/// nothing is logged; startup warnings go to stderr.
pub fn haproxy_cfg(u: &Upstreams, listen: SocketAddr, stats: SocketAddr, dir: &Path) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    format!(
        r#"# Written by loadtest (loadtest/src/configs.rs).
global
    nbthread {workers}
    pidfile "{pidfile}"

defaults
    mode http
    option http-keep-alive
    timeout connect {connect}
    timeout server {attempt}
    timeout client 30s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout queue {route}
    timeout check 500ms

frontend shop
    bind {listen}
    default_backend payments

backend payments
    balance roundrobin
    retries {retries}
    retry-on conn-failure empty-response response-timeout 500 502 503 504
    option redispatch 1
    http-reuse safe
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2 observe layer7 error-limit 5 on-error mark-down
    http-response set-header {header} %s
    server {primary_name} {primary}
    server {backup_name} {backup} backup

listen stats
    bind {stats}
    stats enable
    stats uri /stats
"#,
        workers = WORKERS,
        pidfile = dir.join("haproxy.pid").display(),
        connect = ms(CONNECT_TIMEOUT),
        attempt = ms(u.attempt_timeout),
        route = ms(ROUTE_TIMEOUT),
        retries = RETRIES,
        header = UPSTREAM_HEADER,
        primary_name = UPSTREAM_PRIMARY,
        backup_name = UPSTREAM_BACKUP,
        primary = u.primary.1,
        backup = u.backup.1,
    )
}

/// HAProxy counters (CSV columns of `/stats;csv`, row `payments,BACKEND`) the report keeps, with
/// their names in the report: retries, redispatches, connection and response errors.
pub const HAPROXY_STATS: [(&str, &str); 4] = [
    ("wretr", "retries"),
    ("wredis", "redispatches"),
    ("econ", "connection_errors"),
    ("eresp", "response_errors"),
];

/// The counters of [`HAPROXY_STATS`] out of HAProxy's stats CSV, plus how often each server went
/// down (`chkdown`), as `name value` (`?` where the CSV has none).
pub fn haproxy_stats(csv: &str) -> Vec<String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches('#')
        .trim()
        .split(',')
        .collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let value = |server: &str, column: &str| {
        let i = header.iter().position(|h| *h == column)?;
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&"payments") && r.get(1) == Some(&server))?;
        row.get(i).filter(|v| !v.is_empty()).map(|v| v.to_string())
    };
    let mut out: Vec<String> = HAPROXY_STATS
        .iter()
        .map(|(column, name)| {
            format!(
                "{name} {}",
                value("BACKEND", column).unwrap_or_else(|| "?".into())
            )
        })
        .collect();
    for server in [UPSTREAM_PRIMARY, UPSTREAM_BACKUP] {
        out.push(format!(
            "{server}_went_down {}",
            value(server, "chkdown").unwrap_or_else(|| "?".into())
        ));
    }
    out
}

/// nginx's config for a run, listening on `listen`, with `dir` as its prefix: pid file, temp
/// folders, nothing else written (no access log; errors at `warn` to stderr, which the tool keeps
/// in the run's folder). nginx runs it in the foreground (`-g 'daemon off;'`), [`WORKERS`] worker
/// processes.
///
/// One `upstream` with the primary and the backup marked `backup` (nginx takes a backup for a
/// request once the primary has failed it, or while the primary counts as down), and
/// `proxy_next_upstream` on what Envoy's `connect-failure,5xx` covers: a connection error, the
/// attempt timeout, 500/502/503/504 — and `non_idempotent`, without which nginx never passes a
/// POST on once it was sent, so that only refused connections would fail over. Up to
/// [`RETRIES`] + 1 attempts within [`ROUTE_TIMEOUT`]. nginx (without NGINX Plus) has no active
/// health checks; `max_fails=5 fail_timeout=1s` is its breaker: 5 failures within 1 s count the
/// server down for 1 s. Keep-alive to the shop and to the providers (`keepalive`, HTTP/1.1 with an
/// empty `Connection`), with request limits per connection far above a run's.
///
/// The answering server is named in [`UPSTREAM_HEADER`] through a `map` of the last address
/// tried, taken only when that attempt got an answer's header (`$upstream_header_time` is `-` for
/// a failed one): nginx's own error pages have no such header.
pub fn nginx_conf(u: &Upstreams, listen: SocketAddr, dir: &Path) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let temp = |name: &str| dir.join("nginx-temp").join(name).display().to_string();
    // `$upstream_addr` lists the addresses tried ("a, b"), `$upstream_header_time` their times
    // ("-, 0.002"): an address followed by a space is the last one tried.
    let answered_by =
        |addr: SocketAddr| format!(r#""~(^|, ){} .*[0-9]$""#, regex_escape(&addr.to_string()));
    format!(
        r#"# Written by loadtest (loadtest/src/configs.rs).
worker_processes {workers};
pid "{pidfile}";
error_log stderr warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path "{body}";
    proxy_temp_path "{proxy}";
    fastcgi_temp_path "{fastcgi}";
    uwsgi_temp_path "{uwsgi}";
    scgi_temp_path "{scgi}";
    keepalive_timeout 75s;
    keepalive_requests 1000000;

    map "$upstream_addr $upstream_header_time" $upstream_name {{
        default "";
        {primary_re} {primary_name};
        {backup_re} {backup_name};
    }}

    upstream payments {{
        server {primary} max_fails=5 fail_timeout=1s;
        server {backup} backup max_fails=5 fail_timeout=1s;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen {listen};
        location /v1/ {{
            proxy_pass http://payments;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout {connect};
            proxy_send_timeout {attempt};
            proxy_read_timeout {attempt};
            proxy_next_upstream error timeout http_500 http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries {tries};
            proxy_next_upstream_timeout {route};
            add_header {header} $upstream_name always;
        }}
    }}
}}
"#,
        workers = WORKERS,
        pidfile = dir.join("nginx.pid").display(),
        body = temp("body"),
        proxy = temp("proxy"),
        fastcgi = temp("fastcgi"),
        uwsgi = temp("uwsgi"),
        scgi = temp("scgi"),
        primary_re = answered_by(u.primary.1),
        backup_re = answered_by(u.backup.1),
        primary_name = UPSTREAM_PRIMARY,
        backup_name = UPSTREAM_BACKUP,
        primary = u.primary.1,
        backup = u.backup.1,
        listen = listen,
        connect = ms(CONNECT_TIMEOUT),
        attempt = ms(u.attempt_timeout),
        tries = RETRIES + 1,
        route = ms(ROUTE_TIMEOUT),
        header = UPSTREAM_HEADER,
    )
}

/// `text` with the characters a PCRE pattern gives a meaning (in an address: `.`, `[`, `]`)
/// escaped.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        Upstreams {
            primary: ("psp-primary".into(), "127.0.0.1:9101".parse().unwrap()),
            backup: ("psp-backup".into(), "127.0.0.1:9102".parse().unwrap()),
            attempt_timeout: ATTEMPT_TIMEOUT,
            route_extra: vec!["idempotency: { max_entries: 10000 }".into()],
            config_extra: vec!["pins: { max_entries: 10000 }".into()],
        }
    }

    #[test]
    fn switchyard_config_names_both_providers_and_varies_by_revision() {
        let a = switchyard_yaml(&upstreams(), &State::Memory, 0);
        let b = switchyard_yaml(&upstreams(), &State::Memory, 1);
        assert!(a.contains("\nstate:\n  backend: memory\n"), "{a}");
        assert!(a.contains("url: http://127.0.0.1:9101"));
        assert!(a.contains("{ provider: psp-backup, priority: 1 }"));
        assert!(a.contains("timeout: 1000ms"));
        assert!(a.contains("\n    idempotency: { max_entries: 10000 }\n"));
        assert!(a.ends_with("\npins: { max_entries: 10000 }\n"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn switchyard_config_names_its_state_backend() {
        let local = switchyard_yaml(
            &upstreams(),
            &State::Local {
                dir: "state-2".into(),
            },
            0,
        );
        assert!(local.contains("\nstate:\n  backend: local\n  dir: state-2\n"));
        let redis = switchyard_yaml(
            &upstreams(),
            &State::Redis {
                addr: "127.0.0.1:6390".parse().unwrap(),
            },
            0,
        );
        assert!(redis.contains("  backend: redis\n  redis:\n    url: redis://127.0.0.1:6390/0\n"));
        assert!(redis.contains("on_unavailable: fail_closed"));
    }

    #[test]
    fn envoy_config_has_two_priorities() {
        let y = envoy_yaml(
            &upstreams(),
            "127.0.0.1:10000".parse().unwrap(),
            "127.0.0.1:10001".parse().unwrap(),
        );
        assert!(y.contains("port_value: 10001"));
        assert!(y.contains("max_retries: 10000"));
        assert!(y.contains("priority: 0"));
        assert!(y.contains("priority: 1"));
        assert!(y.contains("port_value: 9102"));
        assert!(y.contains("per_try_timeout: 1.000s"));
    }

    #[test]
    fn haproxy_config_has_a_backup_server_and_retries() {
        let c = haproxy_cfg(
            &upstreams(),
            "127.0.0.1:10000".parse().unwrap(),
            "127.0.0.1:10001".parse().unwrap(),
            Path::new("/run/x"),
        );
        assert!(c.contains("\n    bind 127.0.0.1:10000\n"));
        assert!(c.contains("\n    bind 127.0.0.1:10001\n"));
        assert!(c.contains("\n    server primary 127.0.0.1:9101\n"));
        assert!(c.contains("\n    server backup 127.0.0.1:9102 backup\n"));
        assert!(c.contains("nbthread 2"));
        assert!(c.contains("timeout server 1000ms"));
        assert!(c.contains("timeout connect 250ms"));
        assert!(c.contains("retries 2"));
        assert!(c.contains("option redispatch"));
        assert!(c.contains("retry-on conn-failure empty-response response-timeout"));
        assert!(c.contains("option httpchk GET /healthz"));
        assert!(c.contains("inter 1s"));
        assert!(c.contains("http-response set-header x-upstream %s"));
        assert!(c.contains("pidfile \"/run/x/haproxy.pid\""));
        assert!(!c.contains("\n    log "), "nothing is logged");
    }

    #[test]
    fn reads_haproxy_stats() {
        let csv = "# pxname,svname,econ,eresp,wretr,wredis,chkdown,\n\
                   shop,FRONTEND,,,,,,\n\
                   payments,primary,3,1,7,2,1,\n\
                   payments,backup,0,0,0,0,0,\n\
                   payments,BACKEND,3,1,7,2,1,\n";
        assert_eq!(
            haproxy_stats(csv),
            vec![
                "retries 7",
                "redispatches 2",
                "connection_errors 3",
                "response_errors 1",
                "primary_went_down 1",
                "backup_went_down 0"
            ]
        );
        assert!(haproxy_stats("").iter().all(|s| s.ends_with(" ?")));
    }

    #[test]
    fn nginx_config_has_a_backup_server_and_next_upstream() {
        let c = nginx_conf(
            &upstreams(),
            "127.0.0.1:10000".parse().unwrap(),
            Path::new("/run/x"),
        );
        assert!(c.contains("listen 127.0.0.1:10000;"));
        assert!(c.contains("server 127.0.0.1:9101 max_fails=5 fail_timeout=1s;"));
        assert!(c.contains("server 127.0.0.1:9102 backup max_fails=5 fail_timeout=1s;"));
        assert!(c.contains("worker_processes 2;"));
        assert!(c.contains(
            "proxy_next_upstream error timeout http_500 http_502 http_503 http_504 non_idempotent;"
        ));
        assert!(c.contains("proxy_next_upstream_tries 3;"));
        assert!(c.contains("proxy_read_timeout 1000ms;"));
        assert!(c.contains("proxy_connect_timeout 250ms;"));
        assert!(c.contains("keepalive 256;"));
        assert!(c.contains("proxy_http_version 1.1;"));
        assert!(c.contains("proxy_set_header Connection \"\";"));
        assert!(c.contains("access_log off;"));
        assert!(c.contains("pid \"/run/x/nginx.pid\";"));
        assert!(c.contains("proxy_temp_path \"/run/x/nginx-temp/proxy\";"));
        assert!(c.contains(r#""~(^|, )127\.0\.0\.1:9102 .*[0-9]$" backup;"#));
        assert!(c.contains("add_header x-upstream $upstream_name always;"));
        assert!(
            !c.contains("daemon"),
            "`daemon off` is given on the command line"
        );
    }

    #[test]
    fn escapes_addresses_for_a_pattern() {
        assert_eq!(regex_escape("127.0.0.1:80"), r"127\.0\.0\.1:80");
        assert_eq!(regex_escape("[::1]:80"), r"\[::1\]:80");
    }
}
