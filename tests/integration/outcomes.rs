//! Every outcome class of PAYMENT_RULES.md §1, end to end over real sockets: a primary that fails in
//! one precise way (refused connect, a pooled connection closed, a reset after the request was written,
//! a timeout, HTTP/2 REFUSED_STREAM and GOAWAY, 429, 5xx with and without a not-executed marker, an
//! in-progress 409) and a backup that always succeeds. Each test checks what the shop sees and what
//! each provider received: a possibly-sent payment never reaches the backup, and every attempt of one
//! payment carries the same key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

const PAY: &str = "/v1/payment_intents";
const FORM: &str = "amount=1000&currency=eur";
const PRIMARY_OK: &str = r#"{"id":"pi_primary","status":"succeeded"}"#;
const BACKUP_OK: &str = r#"{"id":"pi_backup","status":"succeeded"}"#;
/// A breaker that never opens during a test, so it cannot change which provider is tried.
const NO_BREAKER: &str =
    "breaker: { consecutive_failures: 0, failure_rate: 1.0, min_requests: 100000 }";
/// Fast retries at the same provider.
const RETRY_3: &str = "retry: { attempts: 3, backoff: 1ms, max_backoff: 2ms }";

async fn backup() -> MockProvider {
    MockProvider::start(|_| Reply::ok(BACKUP_OK)).await
}

/// Route `payments` to `primary` (priority 0) and `backup`, both with `provider_extra`, the primary
/// also with `primary_only` (e.g. its TLS settings).
async fn proxy(
    primary: &str,
    backup: &str,
    primary_only: &str,
    provider_extra: &str,
    route_extra: &str,
) -> TestProxy {
    let mut yaml = config(
        &[("primary", primary), ("backup", backup)],
        provider_extra,
        route_extra,
    );
    if !primary_only.is_empty() {
        let at = format!("    url: {primary}\n");
        let extra: String = primary_only.lines().map(|l| format!("    {l}\n")).collect();
        yaml = yaml.replacen(&at, &format!("{at}{extra}"), 1);
    }
    TestProxy::start(&yaml).await
}

async fn pay(proxy: &TestProxy, key: &str) -> Answer {
    post_with_key(&proxy.url(PAY), key, FORM).await
}

/// Every request carried `key` as its idempotency key.
fn all_keyed(received: &[Received], key: &str) -> bool {
    received.iter().all(|r| {
        r.headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            == Some(key)
    })
}

async fn attempts_metric(proxy: &TestProxy, outcome: &str, provider: &str) -> f64 {
    metric(
        proxy,
        &format!(
            r#"switchyard_attempts_total{{outcome="{outcome}",provider="{provider}",route="payments"}}"#
        ),
    )
    .await
}

async fn failovers_metric(proxy: &TestProxy, reason: &str) -> f64 {
    metric(
        proxy,
        &format!(
            r#"switchyard_failovers_total{{from="primary",reason="{reason}",route="payments",to="backup"}}"#
        ),
    )
    .await
}

async fn unknown_metric(proxy: &TestProxy) -> f64 {
    metric(
        proxy,
        r#"switchyard_unknown_outcomes_total{provider="primary",route="payments"}"#,
    )
    .await
}

/// Asserts the shop got the backup's answer after one attempt at the primary, the backup received
/// the payment once with its key, and the shop is not told the outcome is unknown.
fn assert_completed_at_backup(a: &Answer, backup: &MockProvider, key: &str) {
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), BACKUP_OK);
    assert_eq!(a.header("x-switchyard-provider"), Some("backup"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(a.header("x-switchyard-outcome"), None);
    assert_eq!(a.header("x-switchyard-error"), None);
    assert_eq!(backup.count(), 1);
    assert!(
        all_keyed(&backup.received(), key),
        "{:?}",
        backup.received()
    );
}

/// Asserts the shop was told the payment's outcome is unknown, at the primary, after `attempts`.
fn assert_unknown(a: &Answer, status: u16, kind: &str, attempts: &str) {
    assert_eq!(a.status, status, "{}", a.text());
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(a.header("x-switchyard-error"), Some(kind), "{}", a.text());
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(a.header("x-switchyard-attempts"), Some(attempts));
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
}

// Not sent: connection refused. The payment moves to the backup at once.
#[tokio::test]
async fn connect_refused_is_not_sent_and_fails_over_to_the_backup() {
    let dead = closed_port().await;
    let backup = backup().await;
    let proxy = proxy(&format!("http://{dead}"), &backup.url(), "", "", "").await;
    let a = pay(&proxy, "order-refused").await;
    assert_completed_at_backup(&a, &backup, "order-refused");
    assert_eq!(attempts_metric(&proxy, "not_sent", "primary").await, 1.0);
    assert_eq!(failovers_metric(&proxy, "not_sent").await, 1.0);
    assert_eq!(unknown_metric(&proxy).await, 0.0);
}

// Not sent: the pooled keep-alive connection to the primary was closed by the provider while idle, and
// the provider stopped listening. The next payment finds that connection dead before writing anything
// (the pool drops it, or hyper hands the request back unsent) and completes at the backup.
#[tokio::test]
async fn a_pooled_connection_closed_while_idle_sends_nothing_and_fails_over() {
    let primary = MockProvider::start(|_| Reply::ok(PRIMARY_OK)).await;
    let backup = backup().await;
    let proxy = proxy(&primary.url(), &backup.url(), "", NO_BREAKER, "").await;
    let first = pay(&proxy, "order-pooled-1").await;
    assert_eq!(first.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(
        primary.open_connections(),
        1,
        "the proxy keeps the connection"
    );

    assert!(
        primary.go_down().await,
        "the proxy closed its side of the pooled connection"
    );
    let a = pay(&proxy, "order-pooled-2").await;
    assert_completed_at_backup(&a, &backup, "order-pooled-2");
    assert_eq!(
        primary.count(),
        1,
        "only the first payment reached the primary"
    );
    assert_eq!(attempts_metric(&proxy, "not_sent", "primary").await, 1.0);
    assert_eq!(attempts_metric(&proxy, "unknown", "primary").await, 0.0);
}

// Unknown: the primary read the whole request (and may have charged it), then reset the connection.
// Retried at the primary only, with the same key; never the backup; 502 unknown while it keeps failing,
// and the shop's retry with the same key still goes to the primary.
#[tokio::test]
async fn a_reset_after_the_request_was_written_is_unknown_and_stays_at_the_primary() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = Arc::clone(&healthy);
    let primary = MockProvider::start(move |_| {
        if h.load(Ordering::SeqCst) {
            Reply::ok(PRIMARY_OK)
        } else {
            Reply::reset()
        }
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(&primary.url(), &backup.url(), "", NO_BREAKER, RETRY_3).await;
    let a = pay(&proxy, "order-reset").await;
    assert_unknown(&a, 502, "provider_failed", "3");
    assert_eq!(primary.count(), 3, "retried at the primary");
    assert!(all_keyed(&primary.received(), "order-reset"));
    assert_eq!(
        backup.count(),
        0,
        "a maybe-charged payment never reaches the backup"
    );
    assert_eq!(attempts_metric(&proxy, "unknown", "primary").await, 3.0);
    assert_eq!(unknown_metric(&proxy).await, 1.0);

    // Not stored as final: the shop's retry goes to the primary again, which now answers.
    healthy.store(true, Ordering::SeqCst);
    let again = pay(&proxy, "order-reset").await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.text(), PRIMARY_OK);
    assert_eq!(again.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(again.header("idempotent-replayed"), None);
    assert_eq!(primary.count(), 4);
    assert!(all_keyed(&primary.received(), "order-reset"));
    assert_eq!(backup.count(), 0);
}

// Unknown, then settled inside one shop request: a reset the provider lost (nothing recorded), then a
// success at the same provider with the same key.
#[tokio::test]
async fn a_reset_then_a_success_completes_at_the_primary_with_the_same_key() {
    let calls = AtomicUsize::new(0);
    let primary = MockProvider::start(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::reset_unrecorded()
        } else {
            Reply::ok(PRIMARY_OK)
        }
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(&primary.url(), &backup.url(), "", NO_BREAKER, RETRY_3).await;
    let a = pay(&proxy, "order-reset-once").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), PRIMARY_OK);
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(
        primary.count(),
        1,
        "the reset one was lost, the retry recorded"
    );
    assert!(all_keyed(&primary.received(), "order-reset-once"));
    assert_eq!(backup.count(), 0);
    assert_eq!(attempts_metric(&proxy, "unknown", "primary").await, 1.0);
    assert_eq!(attempts_metric(&proxy, "processed", "primary").await, 1.0);
}

// Unknown: a timeout after the request was written. Same rules as a reset; 504.
#[tokio::test]
async fn a_timeout_after_the_request_was_written_is_unknown_and_stays_at_the_primary() {
    let primary = MockProvider::start(|_| Reply::hang()).await;
    let backup = backup().await;
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        "timeout: 150ms",
        NO_BREAKER,
        "retry: { attempts: 2, backoff: 1ms, max_backoff: 2ms }",
    )
    .await;
    let a = pay(&proxy, "order-timeout").await;
    assert_unknown(&a, 504, "provider_timeout", "2");
    assert_eq!(primary.count(), 2);
    assert!(all_keyed(&primary.received(), "order-timeout"));
    assert_eq!(backup.count(), 0);
    assert_eq!(unknown_metric(&proxy).await, 1.0);
}

// Not processed: HTTP/2 REFUSED_STREAM. The payment moves to the backup.
#[tokio::test]
async fn refused_stream_is_not_processed_and_fails_over() {
    let primary = H2Provider::start(vec![], H2Action::RefuseStream).await;
    let backup = backup().await;
    let tls = primary.tls.provider_yaml();
    let proxy = proxy(&primary.url(), &backup.url(), &tls, NO_BREAKER, "").await;
    let a = pay(&proxy, "order-refused-stream").await;
    assert_completed_at_backup(&a, &backup, "order-refused-stream");
    let seen = primary.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert!(all_keyed(&seen, "order-refused-stream"));
    assert_eq!(
        attempts_metric(&proxy, "not_processed", "primary").await,
        1.0
    );
    assert_eq!(failovers_metric(&proxy, "not_processed").await, 1.0);
}

// Not processed: REFUSED_STREAM on a route that keeps such attempts at the provider: retried there with
// the same key, and answered.
#[tokio::test]
async fn refused_stream_is_retried_at_the_same_provider_when_the_route_keeps_it() {
    let primary = H2Provider::start(
        vec![H2Action::RefuseStream],
        H2Action::Answer(Reply::ok(PRIMARY_OK)),
    )
    .await;
    let backup = backup().await;
    let tls = primary.tls.provider_yaml();
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        &tls,
        NO_BREAKER,
        &format!("{RETRY_3}\nfailover: {{ on_not_processed: false }}"),
    )
    .await;
    let a = pay(&proxy, "order-refused-retry").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), PRIMARY_OK);
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(primary.count(), 2);
    assert!(all_keyed(&primary.received(), "order-refused-retry"));
    assert_eq!(backup.count(), 0);
}

// Not processed: GOAWAY whose last-stream-id is below our stream. The payment moves to the backup.
#[tokio::test]
async fn goaway_below_our_stream_is_not_processed_and_fails_over() {
    let primary = H2Provider::start(vec![], H2Action::GoAwayUnprocessed).await;
    let backup = backup().await;
    let tls = primary.tls.provider_yaml();
    let proxy = proxy(&primary.url(), &backup.url(), &tls, NO_BREAKER, "").await;
    let a = pay(&proxy, "order-goaway-below").await;
    assert_completed_at_backup(&a, &backup, "order-goaway-below");
    assert_eq!(primary.unprocessed_goaways(), 1);
    assert_eq!(primary.count(), 0, "the primary processed nothing");
    assert_eq!(
        attempts_metric(&proxy, "not_processed", "primary").await,
        1.0
    );
    assert_eq!(failovers_metric(&proxy, "not_processed").await, 1.0);
}

// Unknown: GOAWAY whose last-stream-id covers our stream, then the connection closes without an
// answer: the provider may have processed it. Retried at the primary only, same key, never the backup.
#[tokio::test]
async fn goaway_at_our_stream_then_close_is_unknown_and_stays_at_the_primary() {
    let primary = H2Provider::start(vec![], H2Action::GoAwayAfterRead).await;
    let backup = backup().await;
    let tls = primary.tls.provider_yaml();
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        &tls,
        NO_BREAKER,
        "retry: { attempts: 2, backoff: 1ms, max_backoff: 2ms }",
    )
    .await;
    let a = pay(&proxy, "order-goaway-at").await;
    assert_unknown(&a, 502, "provider_failed", "2");
    assert_eq!(primary.count(), 2);
    assert!(all_keyed(&primary.received(), "order-goaway-at"));
    assert_eq!(primary.unprocessed_goaways(), 0);
    assert_eq!(backup.count(), 0);
    assert_eq!(attempts_metric(&proxy, "unknown", "primary").await, 2.0);
}

// Not processed: 429 with Retry-After on a route that keeps such attempts at the provider: retried
// there after the (capped) delay with the same key; the breaker does not count the 429.
#[tokio::test]
async fn a_429_is_retried_after_its_delay_and_not_counted_by_the_breaker() {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&hits);
    let primary = MockProvider::start(move |_| {
        let mut hits = h.lock().unwrap();
        hits.push(Instant::now());
        if hits.len() == 1 {
            Reply::status(429, r#"{"error":{"type":"rate_limit_error"}}"#)
                .header("retry-after", "1")
        } else {
            Reply::ok(PRIMARY_OK)
        }
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        "",
        // One failure would open it.
        "breaker: { consecutive_failures: 1, open_for: 30s, jitter: 0 }",
        "retry: { attempts: 2, retry_after_cap: 200ms }\nfailover: { on_not_processed: false }",
    )
    .await;
    let a = pay(&proxy, "order-429").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("2"));
    assert_eq!(a.header("x-switchyard-outcome"), None);
    let gap = {
        let hits = hits.lock().unwrap();
        assert_eq!(hits.len(), 2);
        hits[1] - hits[0]
    };
    assert!(gap >= Duration::from_millis(190), "waited {gap:?}");
    assert!(all_keyed(&primary.received(), "order-429"));
    assert_eq!(backup.count(), 0);
    assert_eq!(
        attempts_metric(&proxy, "not_processed", "primary").await,
        1.0
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_breaker_state{provider="primary",state="closed"}"#
        )
        .await,
        1.0,
        "a 429 is not an outage"
    );
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_breaker_transitions_total{from="closed",provider="primary",to="open"}"#
        )
        .await,
        0.0
    );
}

// Not processed: 429 on a route that allows failover: the backup takes it at once; the breaker does
// not count the 429.
#[tokio::test]
async fn a_429_fails_over_when_the_route_allows_it() {
    let primary = MockProvider::start(|_| {
        Reply::status(429, r#"{"error":{"type":"rate_limit_error"}}"#).header("retry-after", "1")
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        "",
        "breaker: { consecutive_failures: 1, open_for: 30s, jitter: 0 }",
        "",
    )
    .await;
    let a = pay(&proxy, "order-429-failover").await;
    assert_completed_at_backup(&a, &backup, "order-429-failover");
    assert_eq!(primary.count(), 1);
    assert!(all_keyed(&primary.received(), "order-429-failover"));
    assert_eq!(failovers_metric(&proxy, "not_processed").await, 1.0);
    assert_eq!(
        metric(
            &proxy,
            r#"switchyard_breaker_state{provider="primary",state="closed"}"#
        )
        .await,
        1.0
    );
}

// Unknown: a 5xx without a not-executed marker. Retried at the primary only; 502 unknown; never the
// backup.
#[tokio::test]
async fn a_5xx_without_a_marker_is_unknown_and_never_reaches_the_backup() {
    let primary = MockProvider::start(|_| Reply::status(503, r#"{"error":"unavailable"}"#)).await;
    let backup = backup().await;
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        "",
        NO_BREAKER,
        "retry: { attempts: 2, backoff: 1ms, max_backoff: 2ms }",
    )
    .await;
    let a = pay(&proxy, "order-503").await;
    assert_unknown(&a, 502, "outcome_unknown", "2");
    assert_eq!(primary.count(), 2);
    assert!(all_keyed(&primary.received(), "order-503"));
    assert_eq!(backup.count(), 0);
    assert_eq!(unknown_metric(&proxy).await, 1.0);
}

// Not processed: Adyen's `transient-error: true` on a 5xx. The payment moves to the backup.
#[tokio::test]
async fn a_5xx_marked_transient_by_adyen_is_not_processed_and_fails_over() {
    let primary = MockProvider::start(|_| {
        Reply::status(
            503,
            r#"{"status":503,"errorCode":"000","errorType":"internal"}"#,
        )
        .header("transient-error", "true")
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(&primary.url(), &backup.url(), "", NO_BREAKER, "").await;
    let a = pay(&proxy, "order-adyen-transient").await;
    assert_completed_at_backup(&a, &backup, "order-adyen-transient");
    assert_eq!(primary.count(), 1);
    assert!(all_keyed(&primary.received(), "order-adyen-transient"));
    assert_eq!(failovers_metric(&proxy, "not_processed").await, 1.0);
}

// Not processed: Stripe's 409 with `Stripe-Should-Retry: true`. The payment moves to the backup.
#[tokio::test]
async fn a_409_with_stripe_should_retry_is_not_processed_and_fails_over() {
    let primary = MockProvider::start(|_| {
        Reply::status(
            409,
            r#"{"error":{"type":"api_error","message":"concurrent request"}}"#,
        )
        .header("stripe-should-retry", "true")
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(&primary.url(), &backup.url(), "", NO_BREAKER, "").await;
    let a = pay(&proxy, "order-stripe-retry").await;
    assert_completed_at_backup(&a, &backup, "order-stripe-retry");
    assert_eq!(primary.count(), 1);
    assert_eq!(failovers_metric(&proxy, "not_processed").await, 1.0);
}

const KEY_IN_USE: &str = r#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use","message":"There is currently another in-progress request using this Stripe API key and idempotency key. Please try again later."}}"#;

// Unknown, still: the primary timed out on the first attempt (it may be charging), and answers the
// shop's retry with Stripe's in-progress 409. That 409 is not a final answer: not stored, not replayed,
// never the backup; the shop is told the outcome is unknown, with Retry-After; a later retry reaches the
// primary again and gets its real answer.
#[tokio::test]
async fn an_in_progress_409_after_a_timeout_stays_unknown() {
    let calls = AtomicUsize::new(0);
    let primary = MockProvider::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::hang(),
        1 => Reply::status(409, KEY_IN_USE),
        _ => Reply::ok(PRIMARY_OK),
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        "timeout: 150ms",
        NO_BREAKER,
        "retry: { attempts: 1 }",
    )
    .await;
    let first = pay(&proxy, "order-in-progress").await;
    assert_unknown(&first, 504, "provider_timeout", "1");

    let busy = pay(&proxy, "order-in-progress").await;
    assert_ne!(
        busy.status, 409,
        "the provider's in-progress 409 is not the payment's answer"
    );
    assert!(
        busy.status.is_server_error(),
        "{} {}",
        busy.status,
        busy.text()
    );
    assert_eq!(busy.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(busy.header("x-switchyard-provider"), Some("primary"));
    assert!(busy.header("retry-after").is_some(), "{:?}", busy.headers);
    assert_eq!(backup.count(), 0);

    let settled = pay(&proxy, "order-in-progress").await;
    assert_eq!(settled.status, 200, "{}", settled.text());
    assert_eq!(settled.text(), PRIMARY_OK);
    assert_eq!(
        settled.header("idempotent-replayed"),
        None,
        "the 409 was not stored for replay"
    );
    assert_eq!(primary.count(), 3);
    assert!(all_keyed(&primary.received(), "order-in-progress"));
    assert_eq!(backup.count(), 0);
}

// Pinned: once an attempt may have reached the primary (GOAWAY at our stream, then close), a later
// attempt the primary refused unprocessed (REFUSED_STREAM) must not move the payment to the backup:
// the first one may have charged. Retried at the primary only, with the same key, until it answers.
#[tokio::test]
async fn a_refused_stream_after_an_unknown_attempt_stays_at_the_primary() {
    let primary = H2Provider::start(
        vec![H2Action::GoAwayAfterRead, H2Action::RefuseStream],
        H2Action::Answer(Reply::ok(PRIMARY_OK)),
    )
    .await;
    let backup = backup().await;
    let tls = primary.tls.provider_yaml();
    let proxy = proxy(&primary.url(), &backup.url(), &tls, NO_BREAKER, RETRY_3).await;
    let a = pay(&proxy, "order-pinned-refused").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), PRIMARY_OK);
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("3"));
    assert_eq!(primary.count(), 3);
    assert!(all_keyed(&primary.received(), "order-pinned-refused"));
    assert_eq!(backup.count(), 0, "the first attempt may have charged");
    assert_eq!(attempts_metric(&proxy, "unknown", "primary").await, 1.0);
    assert_eq!(
        attempts_metric(&proxy, "not_processed", "primary").await,
        1.0
    );
    assert_eq!(failovers_metric(&proxy, "not_processed").await, 0.0);
}

// Unknown, still, inside one shop request: the proxy's own retry after a timeout meets the primary's
// in-progress 409. It must not end the payment with that 409: the proxy keeps retrying at the primary
// (after its Retry-After or backoff) or answers unknown; it never stores the 409 and never tries the
// backup.
#[tokio::test]
async fn an_in_progress_409_to_the_proxys_own_retry_is_not_the_answer() {
    let calls = AtomicUsize::new(0);
    let primary = MockProvider::start(move |_| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::hang(),
        1 => Reply::status(409, KEY_IN_USE),
        _ => Reply::ok(PRIMARY_OK),
    })
    .await;
    let backup = backup().await;
    let proxy = proxy(
        &primary.url(),
        &backup.url(),
        "timeout: 150ms",
        NO_BREAKER,
        "retry: { attempts: 3, backoff: 1ms, max_backoff: 2ms }",
    )
    .await;
    let a = pay(&proxy, "order-in-progress-retry").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), PRIMARY_OK);
    assert_eq!(a.header("x-switchyard-provider"), Some("primary"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("3"));
    assert_eq!(primary.count(), 3);
    assert!(all_keyed(&primary.received(), "order-in-progress-retry"));
    assert_eq!(backup.count(), 0);
    // What was stored is the real answer, not the 409.
    let replay = pay(&proxy, "order-in-progress-retry").await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(primary.count(), 3);
}
