//! Webhook ingress: signatures of each scheme, dedupe, delivery to the shop, allowlists, listeners.
//!
//! The "shop" is a mock server; signatures are computed here with a reference HMAC (the `hmac` crate
//! directly, as the providers document the schemes), never with the code under test.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::Request;
use http_body_util::Full;
use sha2::Sha256;

use crate::support::*;

fn reference_hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn stripe_signature(secret: &str, t: u64, body: &str) -> String {
    let sig = reference_hmac(secret.as_bytes(), format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(sig))
}

/// Writes secret files in a folder of their own and returns it.
fn secrets(pairs: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in pairs {
        std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
    }
    dir
}

fn path_of(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

/// A proxy with one provider route and the given webhooks section.
async fn proxy_with(webhooks: &str) -> (TestProxy, MockProvider) {
    let provider = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_1"}"#)).await;
    let yaml = format!(
        "{}webhooks:\n{webhooks}",
        config(&[("psp", &provider.url())], "", "")
    );
    (TestProxy::start(&yaml).await, provider)
}

/// A shop that answers `status` (changeable while it runs).
async fn shop(status: Arc<AtomicU16>, delay: Duration) -> MockProvider {
    MockProvider::start(move |_| {
        Reply::status(status.load(Ordering::SeqCst), r#"{"ok":true}"#).delay(delay)
    })
    .await
}

fn stripe_hook(shop: &MockProvider, secrets: &[String], extra: &str) -> String {
    let files: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "  - name: stripe-events
    path: /webhooks/stripe
    forward_to: {}/payments/webhook
    verify: {{ scheme: stripe, secrets_file: [{}], tolerance: 5m }}
{extra}",
        shop.url(),
        files.join(", ")
    )
}

async fn post_signed(proxy: &TestProxy, path: &str, header: (&str, &str), body: &str) -> Answer {
    send(
        Request::post(proxy.url(path))
            .header("content-type", "application/json")
            .header(header.0, header.1)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

async fn webhook_metric(proxy: &TestProxy, result: &str) -> f64 {
    metric(
        proxy,
        &format!("switchyard_webhooks_total{{result=\"{result}\",webhook=\"stripe-events\"}}"),
    )
    .await
}

#[tokio::test]
async fn stripe_valid_changed_stale_and_rotated_signatures() {
    let keys = secrets(&[("new", "whsec_new"), ("old", "whsec_old")]);
    let status = Arc::new(AtomicU16::new(200));
    let shop = shop(Arc::clone(&status), Duration::ZERO).await;
    let hook = stripe_hook(&shop, &[path_of(&keys, "new"), path_of(&keys, "old")], "");
    let (proxy, provider) = proxy_with(&hook).await;

    // Valid: forwarded with the raw body and the provider's signature, not routed to a provider.
    let body = r#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    let sig = stripe_signature("whsec_new", now(), body);
    let a = post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.body, r#"{"ok":true}"#, "the shop's answer is passed back");
    let got = shop.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/payments/webhook");
    assert_eq!(got[0].body, body);
    assert_eq!(got[0].headers["stripe-signature"], sig.as_str());
    assert_eq!(got[0].headers["x-switchyard-webhook"], "stripe-events");
    assert!(got[0].headers.contains_key("x-request-id"));
    assert_eq!(provider.count(), 0);

    // One byte changed: refused, not forwarded.
    let changed = body.replace("evt_1", "evt_2");
    let a = post_signed(
        &proxy,
        "/webhooks/stripe",
        ("stripe-signature", &sig),
        &changed,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("x-switchyard-error"), Some("bad_signature"));
    assert_eq!(a.header("content-type"), Some("application/problem+json"));

    // Signed ten minutes ago: stale.
    let old = stripe_signature("whsec_new", now() - 600, r#"{"id":"evt_3"}"#);
    let a = post_signed(
        &proxy,
        "/webhooks/stripe",
        ("stripe-signature", &old),
        r#"{"id":"evt_3"}"#,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("x-switchyard-error"), Some("stale"));

    // Rotation: the old secret still verifies; an unknown one does not.
    let body4 = r#"{"id":"evt_4"}"#;
    let a = post_signed(
        &proxy,
        "/webhooks/stripe",
        (
            "stripe-signature",
            &stripe_signature("whsec_old", now(), body4),
        ),
        body4,
    )
    .await;
    assert_eq!(a.status, 200);
    let a = post_signed(
        &proxy,
        "/webhooks/stripe",
        (
            "stripe-signature",
            &stripe_signature("whsec_other", now(), body4),
        ),
        body4,
    )
    .await;
    assert_eq!(a.status, 401);
    // No signature at all.
    let a = post(&proxy.url("/webhooks/stripe"), body4).await;
    assert_eq!(a.status, 401);

    assert_eq!(
        shop.count(),
        2,
        "only the two valid events reached the shop"
    );
    assert_eq!(webhook_metric(&proxy, "forwarded").await, 2.0);
    assert_eq!(webhook_metric(&proxy, "bad_signature").await, 3.0);
    assert_eq!(webhook_metric(&proxy, "stale").await, 1.0);
}

#[tokio::test]
async fn the_same_event_twice_is_delivered_once() {
    let keys = secrets(&[("k", "whsec_k")]);
    let shop = shop(Arc::new(AtomicU16::new(200)), Duration::ZERO).await;
    let (proxy, _p) = proxy_with(&stripe_hook(&shop, &[path_of(&keys, "k")], "")).await;
    let body = r#"{"id":"evt_dup","type":"charge.succeeded"}"#;
    for i in 0..3 {
        // Stripe signs each delivery anew: a fresh timestamp, the same event.
        let sig = stripe_signature("whsec_k", now() - i, body);
        let a = post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(shop.count(), 1);
    assert_eq!(webhook_metric(&proxy, "forwarded").await, 1.0);
    assert_eq!(webhook_metric(&proxy, "duplicate").await, 2.0);
}

#[tokio::test]
async fn an_event_the_shop_did_not_accept_is_delivered_on_redelivery() {
    let keys = secrets(&[("k", "whsec_k")]);
    let status = Arc::new(AtomicU16::new(503));
    let shop = shop(Arc::clone(&status), Duration::ZERO).await;
    let (proxy, _p) = proxy_with(&stripe_hook(&shop, &[path_of(&keys, "k")], "")).await;
    let body = r#"{"id":"evt_retry"}"#;
    let send_it = || async {
        let sig = stripe_signature("whsec_k", now(), body);
        post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await
    };
    // The shop is failing: the provider gets its 503 and will redeliver.
    let a = send_it().await;
    assert_eq!(a.status, 503);
    // The shop is back: the redelivery goes through, once.
    status.store(200, Ordering::SeqCst);
    assert_eq!(send_it().await.status, 200);
    assert_eq!(send_it().await.status, 200);
    assert_eq!(shop.count(), 2, "one refused delivery, one accepted");
    assert_eq!(webhook_metric(&proxy, "shop_error").await, 1.0);
    assert_eq!(webhook_metric(&proxy, "forwarded").await, 1.0);
    assert_eq!(webhook_metric(&proxy, "duplicate").await, 1.0);
}

#[tokio::test]
async fn an_unreachable_shop_gets_a_502_and_nothing_is_marked_delivered() {
    let keys = secrets(&[("k", "whsec_k")]);
    let closed = closed_port().await;
    let hook = format!(
        "  - name: stripe-events
    path: /webhooks/stripe
    forward_to: http://{closed}/hook
    verify: {{ scheme: stripe, secrets_file: [\"{}\"] }}
",
        path_of(&keys, "k")
    );
    let (proxy, _p) = proxy_with(&hook).await;
    let body = r#"{"id":"evt_x"}"#;
    let sig = stripe_signature("whsec_k", now(), body);
    let a = post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("x-switchyard-error"), Some("shop_error"));
    // Still not delivered: the next copy is tried again (and fails again), never answered duplicate.
    let a = post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await;
    assert_eq!(a.status, 502);
}

#[tokio::test]
async fn two_concurrent_copies_are_delivered_once() {
    let keys = secrets(&[("k", "whsec_k")]);
    let shop = shop(Arc::new(AtomicU16::new(200)), Duration::from_millis(300)).await;
    let (proxy, _p) = proxy_with(&stripe_hook(&shop, &[path_of(&keys, "k")], "")).await;
    let body = r#"{"id":"evt_race"}"#;
    let sig = stripe_signature("whsec_k", now(), body);
    let (a, b) = tokio::join!(
        post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body),
        post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body),
    );
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    assert_eq!(shop.count(), 1, "never delivered twice");
    assert_eq!(webhook_metric(&proxy, "forwarded").await, 1.0);
    assert_eq!(webhook_metric(&proxy, "duplicate").await, 1.0);
}

fn adyen_item(key: &[u8], psp: &str, event: &str) -> String {
    let signing = format!("{psp}::TestMerchant:order-7:1130:EUR:{event}:true");
    let sig =
        base64::engine::general_purpose::STANDARD.encode(reference_hmac(key, signing.as_bytes()));
    format!(
        r#"{{"NotificationRequestItem":{{"pspReference":"{psp}","merchantAccountCode":"TestMerchant","merchantReference":"order-7","amount":{{"value":1130,"currency":"EUR"}},"eventCode":"{event}","success":"true","additionalData":{{"hmacSignature":"{sig}"}}}}}}"#
    )
}

#[tokio::test]
async fn adyen_notifications_are_verified_item_by_item() {
    let new_key = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
    let old_key = "DFB1EB5485895CFA84146406857104ABB4CBCABDC8AAF103A624C8F6A3EAAB00";
    let keys = secrets(&[("new", new_key), ("old", old_key)]);
    let shop = MockProvider::start(|_| {
        Reply::status(200, "[accepted]").header("content-type", "text/plain")
    })
    .await;
    let hook = format!(
        "  - name: adyen
    path: /webhooks/adyen
    forward_to: {}/adyen
    verify: {{ scheme: adyen, secrets_file: [\"{}\", \"{}\"] }}
",
        shop.url(),
        path_of(&keys, "new"),
        path_of(&keys, "old")
    );
    let (proxy, _p) = proxy_with(&hook).await;
    let new = hex::decode(new_key).unwrap();
    let old = hex::decode(old_key).unwrap();
    let body = format!(
        r#"{{"live":"false","notificationItems":[{}]}}"#,
        adyen_item(&new, "7914073381342284", "AUTHORISATION")
    );
    let a = post(&proxy.url("/webhooks/adyen"), &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.body, "[accepted]");
    // The redelivery of the same item is a duplicate, answered the way Adyen expects.
    let a = post(&proxy.url("/webhooks/adyen"), &body).await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "[accepted]"));
    // A changed amount fails; an item signed with the previous key passes (rotation).
    let changed = body.replace("\"value\":1130", "\"value\":9999");
    assert_eq!(
        post(&proxy.url("/webhooks/adyen"), &changed).await.status,
        401
    );
    let rotated = format!(
        r#"{{"live":"false","notificationItems":[{}]}}"#,
        adyen_item(&old, "7914073381342285", "CAPTURE")
    );
    assert_eq!(
        post(&proxy.url("/webhooks/adyen"), &rotated).await.status,
        200
    );
    // Not a notification at all.
    let a = post(&proxy.url("/webhooks/adyen"), "hello").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("x-switchyard-error"), Some("malformed"));
    assert_eq!(shop.count(), 2);
}

#[tokio::test]
async fn generic_hmac_with_prefix_timestamp_and_shop_signature() {
    let keys = secrets(&[("cko", "cko-secret"), ("shop", "shop-secret")]);
    let shop = shop(Arc::new(AtomicU16::new(200)), Duration::ZERO).await;
    let hook = format!(
        "  - name: cko
    path: /webhooks/cko
    forward_to: {}/cko
    verify: {{ scheme: hmac-sha256, header: Cko-Signature, prefix: 'sha256=', timestamp_header: X-Cko-Timestamp, tolerance: 1m, secrets_file: [\"{}\"] }}
    sign_for_shop: {{ header: X-Shop-Signature, secret_file: \"{}\" }}
",
        shop.url(),
        path_of(&keys, "cko"),
        path_of(&keys, "shop")
    );
    let (proxy, _p) = proxy_with(&hook).await;
    let body = r#"{"id":"evt_cko_1","type":"payment_captured"}"#;
    let signed = |t: u64, body: &str| {
        let sig = reference_hmac(b"cko-secret", format!("{t}.{body}").as_bytes());
        (t.to_string(), format!("sha256={}", hex::encode(sig)))
    };
    let post_cko = |t: String, sig: String, body: String| {
        let url = proxy.url("/webhooks/cko");
        async move {
            send(
                Request::post(url)
                    .header("cko-signature", sig)
                    .header("x-cko-timestamp", t)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
            .await
        }
    };
    let (t, sig) = signed(now(), body);
    let a = post_cko(t, sig, body.to_owned()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // The shop can verify that the event came through the sidecar.
    let got = &shop.received()[0];
    let header = got.headers["x-shop-signature"].to_str().unwrap().to_owned();
    let (t_part, v1) = header.split_once(",v1=").unwrap();
    let t_shop = t_part.strip_prefix("t=").unwrap();
    let expected = reference_hmac(b"shop-secret", format!("{t_shop}.{body}").as_bytes());
    assert_eq!(v1, hex::encode(expected));

    let (t, sig) = signed(now() - 120, body);
    let a = post_cko(t, sig, body.to_owned()).await;
    assert_eq!(a.header("x-switchyard-error"), Some("stale"));
    let (t, sig) = signed(now(), body);
    let a = post_cko(t, sig, body.replace("captured", "refunded")).await;
    assert_eq!(a.header("x-switchyard-error"), Some("bad_signature"));
    assert_eq!(shop.count(), 1);
}

#[tokio::test]
async fn allowlists_methods_and_sizes_are_checked_before_the_shop() {
    let keys = secrets(&[("k", "whsec_k")]);
    let shop = shop(Arc::new(AtomicU16::new(200)), Duration::ZERO).await;
    let blocked = stripe_hook(
        &shop,
        &[path_of(&keys, "k")],
        "    allow_from: [10.0.0.0/8, 2600:1f18::/32]\n    max_body: 1KiB\n",
    );
    let allowed = stripe_hook(
        &shop,
        &[path_of(&keys, "k")],
        "    allow_from: [127.0.0.0/8]\n",
    )
    .replace("stripe-events", "allowed")
    .replace("/webhooks/stripe", "/webhooks/allowed");
    let (proxy, _p) = proxy_with(&format!("{blocked}{allowed}")).await;
    let body = r#"{"id":"evt_ip"}"#;
    let sig = stripe_signature("whsec_k", now(), body);
    let a = post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.header("x-switchyard-error"), Some("forbidden_source"));
    let a = post_signed(
        &proxy,
        "/webhooks/allowed",
        ("stripe-signature", &sig),
        body,
    )
    .await;
    assert_eq!(a.status, 200);
    let a = get(&proxy.url("/webhooks/allowed")).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("POST"));
    // Over max_body on the first webhook (allowlist aside, size is checked on the allowed one).
    let big = stripe_hook(&shop, &[path_of(&keys, "k")], "    max_body: 1KiB\n");
    let (proxy2, _p2) = proxy_with(&big).await;
    let large = format!(r#"{{"id":"evt_big","pad":"{}"}}"#, "x".repeat(2000));
    let sig = stripe_signature("whsec_k", now(), &large);
    let a = post_signed(
        &proxy2,
        "/webhooks/stripe",
        ("stripe-signature", &sig),
        &large,
    )
    .await;
    assert_eq!(a.status, 413);
    assert_eq!(shop.count(), 1);
}

#[tokio::test]
async fn a_webhook_with_its_own_listener_is_served_only_there() {
    let keys = secrets(&[("k", "whsec_k")]);
    let shop = shop(Arc::new(AtomicU16::new(200)), Duration::ZERO).await;
    let hook = stripe_hook(&shop, &[path_of(&keys, "k")], "    listen: 127.0.0.1:0\n");
    let (proxy, provider) = proxy_with(&hook).await;
    let addr = proxy
        .app()
        .webhook_addr("127.0.0.1:0".parse().unwrap())
        .expect("the webhook listener is bound");
    let body = r#"{"id":"evt_l"}"#;
    let sig = stripe_signature("whsec_k", now(), body);
    let a = send(
        Request::post(format!("http://{addr}/webhooks/stripe"))
            .header("stripe-signature", &sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(shop.count(), 1);
    // Anything else on the webhook listener is 404, never routed to a provider.
    let a = post(&format!("http://{addr}/v1/payment_intents"), "amount=1").await;
    assert_eq!(a.status, 404);
    // On the shop listener the path is an ordinary route.
    let a = post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        provider.count(),
        1,
        "the shop listener routed it to the provider"
    );
    assert_eq!(shop.count(), 1);
}

fn adyen_hook(shop: &MockProvider, key_file: &str, extra: &str) -> String {
    format!(
        "  - name: adyen
    path: /webhooks/adyen
    forward_to: {}/adyen
    verify: {{ scheme: adyen, secrets_file: [\"{key_file}\"] }}
{extra}",
        shop.url()
    )
}

async fn post_basic(proxy: &TestProxy, body: &str) -> Answer {
    send(
        Request::post(proxy.url("/webhooks/adyen"))
            .header("content-type", "application/json")
            .header("authorization", "Basic YWR5ZW46c2VjcmV0")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn adyen_basic_auth_reaches_the_shop_and_a_partly_known_batch_forwards_only_new_items() {
    let key = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
    let keys = secrets(&[("k", key)]);
    let shop = MockProvider::start(|_| {
        Reply::status(200, "[accepted]").header("content-type", "text/plain")
    })
    .await;
    let (proxy, _p) = proxy_with(&adyen_hook(&shop, &path_of(&keys, "k"), "")).await;
    let key = hex::decode(key).unwrap();
    let first = adyen_item(&key, "1111", "AUTHORISATION");
    let second = adyen_item(&key, "2222", "AUTHORISATION");
    let a = post_basic(
        &proxy,
        &format!(r#"{{"live":"false","notificationItems":[{first}]}}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let got = shop.received();
    assert_eq!(
        got[0].headers["authorization"], "Basic YWR5ZW46c2VjcmV0",
        "the shop checks Adyen's Basic auth itself"
    );

    // One known item and one new: the shop gets only the new one, the provider `[accepted]`.
    let batch = format!(r#"{{"live":"false","notificationItems":[{first},{second}]}}"#);
    let a = post_basic(&proxy, &batch).await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "[accepted]"));
    let got = shop.received();
    assert_eq!(got.len(), 2);
    let sent: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    let items = sent["notificationItems"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{sent}");
    assert_eq!(items[0]["NotificationRequestItem"]["pspReference"], "2222");
    assert_eq!(sent["live"], "false");

    // Now both are known: a duplicate, not forwarded.
    let a = post_basic(&proxy, &batch).await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "[accepted]"));
    assert_eq!(shop.count(), 2);
}

#[tokio::test]
async fn authorization_is_dropped_when_the_webhook_says_so() {
    let key = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
    let keys = secrets(&[("k", key)]);
    let shop = MockProvider::start(|_| Reply::status(200, "[accepted]")).await;
    let hook = adyen_hook(
        &shop,
        &path_of(&keys, "k"),
        "    forward_authorization: false\n",
    );
    let (proxy, _p) = proxy_with(&hook).await;
    let item = adyen_item(&hex::decode(key).unwrap(), "3333", "CAPTURE");
    let a = post_basic(
        &proxy,
        &format!(r#"{{"live":"false","notificationItems":[{item}]}}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(!shop.received()[0].headers.contains_key("authorization"));

    // /admin/config lists the webhook and the option.
    let view = get(&proxy.admin_url("/admin/config")).await.json();
    assert_eq!(view["webhooks"][0]["name"], "adyen");
    assert_eq!(view["webhooks"][0]["scheme"], "adyen");
    assert_eq!(view["webhooks"][0]["forward_authorization"], false);
}

#[tokio::test]
async fn a_shop_that_times_out_gets_a_504_whose_body_says_504() {
    let keys = secrets(&[("k", "whsec_k")]);
    let shop = MockProvider::start(|_| Reply::hang()).await;
    let hook = stripe_hook(&shop, &[path_of(&keys, "k")], "    timeout: 300ms\n");
    let (proxy, _p) = proxy_with(&hook).await;
    let body = r#"{"id":"evt_slow"}"#;
    let sig = stripe_signature("whsec_k", now(), body);
    let a = post_signed(&proxy, "/webhooks/stripe", ("stripe-signature", &sig), body).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["status"], 504);
    assert_eq!(a.header("x-switchyard-error"), Some("shop_error"));
}

/// A well-formed Stripe signature header from 1970.
const ZEROS_AT_1: &str = "t=1,v1=0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn forged_floods_are_turned_away_before_their_bodies_are_read() {
    let status = Arc::new(AtomicU16::new(200));
    let shop = shop(Arc::clone(&status), Duration::ZERO).await;
    let dir = secrets(&[("whsec", "whsec_test_secret")]);
    let (proxy, _provider) = proxy_with(&stripe_hook(&shop, &[path_of(&dir, "whsec")], "")).await;
    let big = format!(r#"{{"id":"evt_forged","pad":"{}"}}"#, "x".repeat(512 << 10));

    // No signature header, or a stale one: it can never verify, so the body is not read, and the
    // connection is closed rather than drained.
    for header in [("x-other", "1"), ("stripe-signature", ZEROS_AT_1)] {
        let a = post_signed(&proxy, "/webhooks/stripe", header, &big).await;
        assert_eq!(a.status, 401, "{}", a.text());
        assert_eq!(a.header("connection"), Some("close"));
    }
    assert_eq!(webhook_metric(&proxy, "bad_signature").await, 1.0);
    assert_eq!(webhook_metric(&proxy, "stale").await, 1.0);

    // A source that keeps failing verification is throttled, unread, for the rest of the second;
    // refused traffic never reaches the shop.
    let forged = format!("t={},v1={}", now(), "0".repeat(64));
    let mut throttled = None;
    for i in 0..200 {
        let a = post_signed(
            &proxy,
            "/webhooks/stripe",
            ("stripe-signature", &forged),
            &big,
        )
        .await;
        if a.status == 429 {
            throttled = Some((i, a));
            break;
        }
        assert_eq!(a.status, 401);
    }
    let (i, a) = throttled.expect("a flood of forged events is throttled");
    assert!(i >= 45, "not before the limit: throttled after {i}");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert!(webhook_metric(&proxy, "throttled").await >= 1.0);
    assert_eq!(shop.count(), 0);
}
