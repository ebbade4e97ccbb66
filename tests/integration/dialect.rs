//! A route's error dialect (`errors: stripe | adyen`): the proxy's own answers in the provider's
//! envelope, with `Stripe-Should-Retry`, while `x-switchyard-*` and `Retry-After` stay.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn stripe_dialect_answers_reuse_in_flight_and_rate_limit_like_stripe() {
    let provider =
        MockProvider::start(|_| Reply::ok(r#"{"id":"pi_1"}"#).delay(Duration::from_millis(400)))
            .await;
    let yaml = config(
        &[("psp", &provider.url())],
        "",
        "errors: stripe\nrate_limit: { rps: 1, burst: 3 }",
    );
    let proxy = TestProxy::start(&yaml).await;
    let url = proxy.url("/v1/payment_intents");

    // The same key while the first is in flight: Stripe's 409 idempotency_key_in_use.
    let (first, second) = tokio::join!(post_with_key(&url, "k1", "amount=1"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post_with_key(&url, "k1", "amount=1").await
    });
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(second.status, 409, "{}", second.text());
    let e = &second.json()["error"];
    assert_eq!(e["type"], "idempotency_error");
    assert_eq!(e["code"], "idempotency_key_in_use");
    assert!(e["doc_url"]
        .as_str()
        .unwrap()
        .starts_with("https://docs.stripe.com/"));
    assert!(e["message"].as_str().unwrap().contains("in flight"));
    assert_eq!(second.header("stripe-should-retry"), Some("true"));
    assert_eq!(
        second.header("x-switchyard-error"),
        Some("idempotency_conflict")
    );
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert!(second.header("retry-after").is_some());
    assert!(second.header("request-id").is_some());

    // The same key with another body: 400 idempotency_error (an IdempotencyError in the SDK).
    let reused = post_with_key(&url, "k1", "amount=2").await;
    assert_eq!(reused.status, 400, "{}", reused.text());
    assert_eq!(reused.json()["error"]["type"], "idempotency_error");
    assert_eq!(reused.header("stripe-should-retry"), Some("false"));
    assert_eq!(
        reused.header("x-switchyard-error"),
        Some("idempotency_mismatch")
    );

    // Over the rate limit: 429 rate_limit_error with Retry-After.
    let mut limited = None;
    for i in 0..5 {
        let a = post_with_key(&url, &format!("r{i}"), "amount=3").await;
        if a.status == 429 {
            limited = Some(a);
            break;
        }
    }
    let limited = limited.expect("the rate limit answers 429");
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    assert_eq!(limited.json()["error"]["code"], "rate_limit");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.header("x-switchyard-error"), Some("rate_limited"));
}

#[tokio::test]
async fn adyen_dialect_and_unknown_outcome_keep_the_switchyard_headers() {
    let provider = MockProvider::start(|_| Reply::status(500, "oops")).await;
    let yaml = config(
        &[("psp", &provider.url())],
        "",
        "errors: adyen\nretry: { attempts: 1 }",
    );
    let proxy = TestProxy::start(&yaml).await;
    let a = post_with_key(&proxy.url("/payments"), "k-adyen", "{}").await;
    assert_eq!(a.status, 502, "{}", a.text());
    let body = a.json();
    assert_eq!(body["status"], 502);
    assert_eq!(body["errorCode"], "outcome_unknown");
    assert_eq!(body["errorType"], "internal");
    assert!(body["message"].as_str().unwrap().contains("unknown"));
    assert_eq!(a.header("x-switchyard-outcome"), Some("unknown"));
    assert_eq!(a.header("x-switchyard-error"), Some("outcome_unknown"));
    assert_eq!(a.header("x-switchyard-provider"), Some("psp"));
    assert!(a.header("stripe-should-retry").is_none());
}
