//! The configs the tool writes for the proxies under test: switchyard's `routes.yaml` and Envoy's
//! bootstrap, each set up the way a user would for the same job — a primary provider, a backup
//! channel taken when the primary fails, a breaker (outlier detection), active health checks.
//!
//! [`switchyard_yaml`] is the one place the proxy's config is written: keys that land later (route
//! `retry`, `idempotency`) go there.

use std::net::SocketAddr;
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
}

/// Timeout of one attempt at a provider, in both proxies.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The whole request, all attempts, in both proxies.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

/// switchyard's config for a run. `revision` varies a harmless value (the route timeout by a few
/// ms), so that each rewrite of the reload scenario is a real change with a new hash.
///
/// Breakers, health checks, slow start, a provider quota and a route rate limit are on; the limits
/// are far above the load, so they cost what they cost without ever refusing a request.
pub fn switchyard_yaml(u: &Upstreams, revision: u64) -> String {
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
{route_extra}"#,
        primary = provider(&u.primary.0, u.primary.1),
        backup = provider(&u.backup.0, u.backup.1),
        primary_name = u.primary.0,
        backup_name = u.backup.0,
        route_timeout = ROUTE_TIMEOUT.as_millis() as u64 + revision % 2,
        route_extra = u
            .route_extra
            .iter()
            .map(|l| format!("    {}\n", l.trim()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        Upstreams {
            primary: ("psp-primary".into(), "127.0.0.1:9101".parse().unwrap()),
            backup: ("psp-backup".into(), "127.0.0.1:9102".parse().unwrap()),
            attempt_timeout: ATTEMPT_TIMEOUT,
            route_extra: vec!["idempotency: { max_entries: 10000 }".into()],
        }
    }

    #[test]
    fn switchyard_config_names_both_providers_and_varies_by_revision() {
        let a = switchyard_yaml(&upstreams(), 0);
        let b = switchyard_yaml(&upstreams(), 1);
        assert!(a.contains("url: http://127.0.0.1:9101"));
        assert!(a.contains("{ provider: psp-backup, priority: 1 }"));
        assert!(a.contains("timeout: 1000ms"));
        assert!(a.contains("\n    idempotency: { max_entries: 10000 }\n"));
        assert_ne!(a, b);
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
}
