//! The audit trail through the running proxy: a record per shop request and per webhook, bodies with
//! card data masked, no credential in any file, flushed on shutdown; and the public writer API with a
//! fake clock (day rotation, retention) and a full queue.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use switchyard::audit::{Audit, Clock, ManualClock, WebhookRecord};
use switchyard::config::{AuditBodies, AuditConfig};
use switchyard::metrics::Metrics;

use crate::support::*;

/// Every line of every audit file in `dir`, and the files' whole text.
fn read_all(dir: &Path) -> (Vec<Value>, String) {
    let mut lines = Vec::new();
    let mut text = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (lines, text);
    };
    let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let t = std::fs::read_to_string(&path).unwrap();
        // A line without its newline is still being written (the writer thread appends while the
        // test reads): the next read gets it whole.
        for l in t.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let l = l.trim_end();
            lines.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")));
        }
        text.push_str(&t);
    }
    (lines, text)
}

async fn records_of(dir: &Path, kind: &str, n: usize) -> Vec<Value> {
    let mut found = Vec::new();
    let ok = eventually(Duration::from_secs(5), || {
        found = read_all(dir)
            .0
            .into_iter()
            .filter(|v| v["type"] == kind)
            .collect();
        let len = found.len();
        async move { len >= n }
    })
    .await;
    assert!(ok, "expected {n} {kind} records, have {found:?}");
    found
}

const PROVIDER_KEY: &str = "sk_live_PROVIDERKEY0000";
const SHOP_TOKEN: &str = "Bearer sk_test_SHOPTOKEN1111";

async fn proxy_with_audit(bodies: &str) -> (TestProxy, MockProvider, tempfile::TempDir) {
    // The provider answers with a card object, as some APIs do.
    let provider = MockProvider::start(|_| {
        Reply::ok(r#"{"id":"pi_1","card":{"number":"4242424242424242","cvc":"321","last4":"4242"},"status":"succeeded"}"#)
            .header("request-id", "req_provider_1")
    })
    .await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(
        secrets.path().join("key"),
        format!("Bearer {PROVIDER_KEY}\n"),
    )
    .unwrap();
    let key_file = secrets.path().join("key").display().to_string();
    let yaml = config(
        &[("psp", &provider.url())],
        &format!("auth: {{ value_file: \"{key_file}\" }}"),
        "",
    ) + &format!("audit:\n  dir: audit\n  retention: 30d\n  bodies: {bodies}\n");
    (TestProxy::start(&yaml).await, provider, secrets)
}

#[tokio::test]
async fn json_and_form_bodies_are_kept_with_card_data_masked_and_no_credential_anywhere() {
    let (proxy, provider, _secrets) = proxy_with_audit("redacted").await;
    let dir = proxy.dir.path().join("audit");

    let json = r#"{"amount":1000,"payment_method_data":{"card":{"number":"4242 4242 4242 4242","cvc":"987","exp_month":12,"exp_year":2030}},"description":"order 42"}"#;
    let a = send(
        Request::post(proxy.url("/v1/payment_intents?card[cvc]=654"))
            .header("content-type", "application/json")
            .header("authorization", SHOP_TOKEN)
            .header("idempotency-key", "order-42")
            .header("cookie", "session=abcdef")
            .body(Full::new(Bytes::from(json)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let form = "amount=1000&card%5Bnumber%5D=4242424242424242&card%5Bcvc%5D=987&metadata%5Bnote%5D=4000+0566+5566+5556";
    let a = send(
        Request::post(proxy.url("/v1/charges"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", SHOP_TOKEN)
            .body(Full::new(Bytes::from(form)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    // The provider did get the real values (the audit changes nothing on the wire).
    assert_eq!(provider.received()[1].body, form);

    let records = records_of(&dir, "shop_request", 2).await;
    let by_path = |p: &str| {
        records
            .iter()
            .find(|r| r["path"].as_str().unwrap().starts_with(p))
            .unwrap_or_else(|| panic!("no record for {p}: {records:?}"))
            .clone()
    };
    let r = by_path("/v1/payment_intents");
    assert_eq!(r["route"], "payments");
    assert_eq!(r["provider"], "psp");
    assert_eq!(r["method"], "POST");
    assert_eq!(r["status"], 200);
    assert_eq!(r["idempotency_key"], "order-42");
    assert_eq!(r["provider_request_id"], "req_provider_1");
    assert_eq!(r["replayed"], false);
    assert_eq!(r["path"], "/v1/payment_intents?card[cvc]=%5Bredacted%5D");
    let req: Value = serde_json::from_str(r["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(
        req["payment_method_data"]["card"]["number"],
        "4242 42** **** 4242"
    );
    assert_eq!(req["payment_method_data"]["card"]["cvc"], "[redacted]");
    assert_eq!(
        req["payment_method_data"]["card"]["exp_month"],
        "[redacted]"
    );
    assert_eq!(req["amount"], 1000);
    assert_eq!(req["description"], "order 42");
    let resp: Value = serde_json::from_str(r["response_body"].as_str().unwrap()).unwrap();
    assert_eq!(resp["card"]["number"], "424242******4242");
    assert_eq!(resp["card"]["cvc"], "[redacted]");
    assert_eq!(resp["status"], "succeeded");

    let f = by_path("/v1/charges");
    assert_eq!(f["request_body_format"], "form");
    assert_eq!(
        f["request_body"],
        "amount=1000&card%5Bnumber%5D=424242******4242&card%5Bcvc%5D=%5Bredacted%5D&metadata%5Bnote%5D=4000+05**+****+5556"
    );

    // No CVC is left in any field (three digits could appear by chance in ids and latencies, so the
    // fields are searched, not the text), and nothing in any file holds a full card number or a
    // credential.
    for r in [&r, &f] {
        for field in ["path", "request_body", "response_body"] {
            let v = r[field].as_str().unwrap_or("");
            for cvc in ["987", "654", "321"] {
                assert!(!v.contains(cvc), "{cvc} in {field}: {v}");
            }
        }
    }
    let (_, text) = read_all(&dir);
    for secret in [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4000056655665556",
        "SHOPTOKEN",
        PROVIDER_KEY,
        "session=abcdef",
        "authorization",
        "Authorization",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} found in the audit files:\n{text}"
        );
    }
    assert!(metric(&proxy, "switchyard_audit_records_total").await >= 2.0);
    assert_eq!(metric(&proxy, "switchyard_audit_dropped_total").await, 0.0);
}

#[tokio::test]
async fn without_bodies_records_hold_no_body_and_the_proxys_own_errors_are_recorded() {
    let closed = closed_port().await;
    let yaml = config(&[("psp", &format!("http://{closed}"))], "", "")
        + "audit: { dir: audit, bodies: none }\n";
    let mut proxy = TestProxy::start(&yaml).await;
    let dir = proxy.dir.path().join("audit");
    let a = post(&proxy.url("/v1/x"), "card=4242424242424242").await;
    assert_eq!(a.status, 502);
    let records = records_of(&dir, "shop_request", 1).await;
    let r = &records[0];
    assert_eq!(r["status"], 502);
    assert_eq!(r["error"], "provider_unreachable");
    assert_eq!(r["provider"], "psp");
    assert!(r.get("request_body").is_none(), "{r}");
    assert!(r.get("response_body").is_none(), "{r}");
    assert!(r["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(r["ts"].as_str().unwrap().ends_with('Z'));

    // Records still queued at shutdown are written: the file is complete once the app has stopped.
    let a = post(&proxy.url("/v1/y"), "x").await;
    assert_eq!(a.status, 502);
    let app = proxy.app.take().unwrap();
    app.shutdown().await;
    let (lines, _) = read_all(&dir);
    assert_eq!(
        lines.iter().filter(|v| v["type"] == "shop_request").count(),
        2
    );
}

#[tokio::test]
async fn webhook_records_hold_the_verification_result_and_a_masked_body() {
    let shop = MockProvider::start(|_| Reply::ok("{}")).await;
    let provider = MockProvider::start(|_| Reply::ok("{}")).await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("k"), "whsec_k").unwrap();
    let yaml = config(&[("psp", &provider.url())], "", "")
        + &format!(
            "webhooks:\n  - name: stripe-events\n    path: /hooks/stripe\n    forward_to: {}/hook\n    verify: {{ scheme: stripe, secrets_file: [\"{}\"] }}\naudit: {{ dir: audit, bodies: redacted }}\n",
            shop.url(),
            secrets.path().join("k").display()
        );
    let proxy = TestProxy::start(&yaml).await;
    let dir = proxy.dir.path().join("audit");
    let body = r#"{"id":"evt_card","data":{"object":{"payment_method_details":{"card":{"number":"4242424242424242","cvc":"987"}}}}}"#;
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = {
        use hmac::Mac;
        let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(b"whsec_k").unwrap();
        m.update(format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", hex::encode(m.finalize().into_bytes()))
    };
    let signed = |sig: String| {
        Request::post(proxy.url("/hooks/stripe"))
            .header("stripe-signature", sig)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    assert_eq!(send(signed(sig.clone())).await.status, 200);
    assert_eq!(send(signed(sig.clone())).await.status, 200);
    assert_eq!(send(signed("t=1,v1=00".into())).await.status, 401);
    let records = records_of(&dir, "webhook", 3).await;
    let results: Vec<(&str, bool, &str)> = records
        .iter()
        .map(|r| {
            (
                r["result"].as_str().unwrap(),
                r["verified"].as_bool().unwrap(),
                r["dedupe"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("forwarded", true, "new"),
            ("duplicate", true, "duplicate"),
            ("bad_signature", false, "-")
        ]
    );
    assert_eq!(records[0]["event_id"], "evt_card");
    assert_eq!(records[0]["shop_status"], 200);
    assert_eq!(records[0]["webhook"], "stripe-events");
    let kept: Value = serde_json::from_str(records[0]["request_body"].as_str().unwrap()).unwrap();
    let card = &kept["data"]["object"]["payment_method_details"]["card"];
    assert_eq!(card["number"], "424242******4242");
    assert_eq!(card["cvc"], "[redacted]");
    let (_, text) = read_all(&dir);
    assert!(!text.contains("4242424242424242"), "{text}");
    assert!(!text.contains("whsec_k"), "{text}");
    assert!(!text.contains(&sig), "signatures are never written");
    assert!(text.contains("424242******4242"));
    // Webhook requests are not also shop-request records.
    assert!(records_of(&dir, "shop_request", 0).await.is_empty());
}

fn audit_config(dir: &Path, queue: usize) -> AuditConfig {
    AuditConfig {
        dir: dir.to_path_buf(),
        retention: Duration::from_secs(7 * 86_400),
        bodies: AuditBodies::Redacted,
        max_body: 4096,
        queue,
        max_bytes: 10 << 30,
    }
}

fn record(audit: &Audit, id: &str) -> WebhookRecord {
    WebhookRecord {
        timestamp: audit.now(),
        request_id: id.into(),
        webhook: Arc::from("hook"),
        scheme: "stripe",
        result: "forwarded",
        verified: true,
        event_id: None,
        dedupe: None,
        shop_status: None,
        latency: Duration::ZERO,
        body: None,
        body_digest: None,
    }
}

#[tokio::test]
async fn files_rotate_at_the_utc_day_and_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    // 2025-03-30 23:59:58 UTC.
    let clock = Arc::new(ManualClock::at_unix(1_743_379_198));
    let metrics = Metrics::new();
    let audit = Audit::start(
        &audit_config(dir.path(), 100),
        &metrics,
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .unwrap();
    audit.record(record(&audit, "a"));
    clock.advance(Duration::from_secs(4));
    audit.record(record(&audit, "b"));
    audit.flush().await;
    let day = |d: &str| dir.path().join(format!("audit-{d}.jsonl"));
    assert!(std::fs::read_to_string(day("2025-03-30"))
        .unwrap()
        .contains("\"a\""));
    assert!(std::fs::read_to_string(day("2025-03-31"))
        .unwrap()
        .contains("\"b\""));

    // Nine days on, with seven days' retention: both are gone, today's file is there.
    clock.advance(Duration::from_secs(9 * 86_400));
    audit.record(record(&audit, "c"));
    audit.flush().await;
    assert!(!day("2025-03-30").exists());
    assert!(!day("2025-03-31").exists());
    assert!(day("2025-04-09").exists());
    audit.close().await;
    assert_eq!(metrics.audit_records_total.get(), 3);
}

#[tokio::test]
async fn a_full_queue_counts_drops_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (audit, writer) = Audit::paused(
        &audit_config(dir.path(), 3),
        &metrics,
        Arc::new(switchyard::audit::SystemClock),
    )
    .unwrap();
    for i in 0..10 {
        audit.record(record(&audit, &format!("r{i}")));
    }
    assert_eq!(
        metrics
            .audit_dropped_total
            .with_label_values(&["queue_full"])
            .get(),
        7
    );
    writer.start().unwrap();
    audit.close().await;
    let (lines, _) = read_all(dir.path());
    let ids: Vec<&str> = lines
        .iter()
        .map(|v| v["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2"]);
    assert_eq!(metrics.audit_records_total.get(), 3);
}

#[tokio::test]
async fn the_record_holds_the_operations_key_from_the_routes_header_or_made_by_the_proxy() {
    let provider = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_key_0001"}"#)).await;
    let yaml = config(
        &[("psp", &provider.url())],
        "",
        "idempotency: { header: X-Order-Key }",
    ) + "audit:\n  dir: audit\n  retention: 30d\n  bodies: none\n";
    let proxy = TestProxy::start(&yaml).await;
    let dir = proxy.dir.path().join("audit");
    let a = send(
        Request::post(proxy.url("/v1/a"))
            .header("x-order-key", "ord-7")
            .body(Full::new(Bytes::from_static(b"amount=1")))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let b = post(&proxy.url("/v1/b"), "amount=2").await;
    let made = b
        .header("x-order-key")
        .expect("generated key returned")
        .to_owned();

    let records = records_of(&dir, "shop_request", 2).await;
    let key_of = |path: &str| {
        records
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no record for {path}: {records:?}"))["idempotency_key"]
            .clone()
    };
    assert_eq!(key_of("/v1/a"), "ord-7");
    // A generated key is a UUID: now and then (under 1%) its digits hold a Luhn-valid window and are
    // masked like any other.
    assert_eq!(
        key_of("/v1/b"),
        switchyard::redact::mask_pans(&made).as_ref()
    );
}

/// The digits of `text` with every separator removed (`%XX` escapes decoded first), `*` kept: a card
/// number written with separators shows up here as one run if it was not masked.
fn digits_only(text: &str) -> String {
    let mut out = String::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit)
        {
            i += 3;
            continue;
        }
        if bytes[i].is_ascii_digit() || bytes[i] == b'*' {
            out.push(bytes[i] as char);
        }
        i += 1;
    }
    out
}

#[tokio::test]
async fn card_numbers_in_any_form_never_reach_the_audit_files() {
    let (proxy, provider, _secrets) = proxy_with_audit("redacted").await;
    let dir = proxy.dir.path().join("audit");

    // Separators between the groups, and a card number glued to its expiry.
    let json = r#"{"amount":1000,"description":"card 4242.4242.4242.4242","ref":"pay 5555_5555_5555_4444 / 4000  0566  5566  5556","raw":"42424242424242421228"}"#;
    let a = send(
        Request::post(proxy.url("/v1/separators"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    // A CVC in a multipart part.
    let multipart = "--b0undary\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n1000\r\n--b0undary\r\nContent-Disposition: form-data; name=\"card[cvc]\"\r\n\r\n987\r\n--b0undary\r\nContent-Disposition: form-data; name=\"card[number]\"\r\n\r\n4242+4242+4242+4242\r\n--b0undary--\r\n";
    let a = send(
        Request::post(proxy.url("/v1/multipart"))
            .header("content-type", "multipart/form-data; boundary=b0undary")
            .body(Full::new(Bytes::from(multipart)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    // A card number percent-encoded in the path, and in the query.
    let a = send(
        Request::get(
            proxy.url("/v1/payment_methods/3782%20822463%2010005?n=6011%2F1111%2F1111%2F1117"),
        )
        .body(Full::default())
        .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(provider.count(), 3);

    let records = records_of(&dir, "shop_request", 3).await;
    let by_path = |p: &str| {
        records
            .iter()
            .find(|r| r["path"].as_str().unwrap().starts_with(p))
            .unwrap_or_else(|| panic!("no record for {p}: {records:?}"))
            .clone()
    };
    let multi = by_path("/v1/multipart");
    assert_eq!(multi["request_body_format"], "multipart");
    let body = multi["request_body"].as_str().unwrap();
    assert!(
        body.contains("name=\"card[cvc]\"\r\n\r\n[redacted]\r\n"),
        "{body}"
    );
    assert!(!body.contains("987"), "{body}");
    let path = by_path("/v1/payment_methods/");
    assert_eq!(
        path["path"],
        "/v1/payment_methods/3782%2082****%20*0005?n=6011%2F11**%2F****%2F1117"
    );

    let (_, text) = read_all(&dir);
    let digits = digits_only(&text);
    for pan in [
        "4242424242424242",
        "5555555555554444",
        "4000056655665556",
        "378282246310005",
        "6011111111111117",
    ] {
        assert!(!digits.contains(pan), "{pan} in the audit files:\n{text}");
    }
    assert!(text.contains("4242.42**.****.4242"), "{text}");
    assert!(
        text.contains("424242******42421228") || text.contains("424242******"),
        "{text}"
    );
}

fn stripe_signature(secret: &[u8], t: u64, body: &str) -> String {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).unwrap();
    m.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(m.finalize().into_bytes()))
}

async fn proxy_with_webhook() -> (TestProxy, MockProvider, tempfile::TempDir) {
    let shop = MockProvider::start(|_| Reply::ok("{}")).await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("k"), "whsec_k").unwrap();
    let yaml = config(&[("psp", &shop.url())], "", "")
        + &format!(
            "webhooks:\n  - name: stripe-events\n    path: /hooks/stripe\n    forward_to: {}/hook\n    verify: {{ scheme: stripe, secrets_file: [\"{}\"] }}\naudit: {{ dir: audit, bodies: redacted }}\n",
            shop.url(),
            secrets.path().join("k").display()
        );
    (TestProxy::start(&yaml).await, shop, secrets)
}

#[tokio::test]
async fn a_card_number_in_a_webhooks_free_text_is_masked() {
    let (proxy, shop, _secrets) = proxy_with_webhook().await;
    let dir = proxy.dir.path().join("audit");
    let body = r#"{"id":"evt_text","data":{"object":{"description":"Refund to card 4000/0566/5566/5556 as asked","metadata":{"note":"pan 4242_4242_4242_4242"}}}}"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let a = send(
        Request::post(proxy.url("/hooks/stripe"))
            .header("stripe-signature", stripe_signature(b"whsec_k", now, body))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        shop.received()[0].body,
        body,
        "the shop gets the event as sent"
    );
    let records = records_of(&dir, "webhook", 1).await;
    let kept = records[0]["request_body"].as_str().unwrap();
    assert!(kept.contains("4000/05**/****/5556"), "{kept}");
    let (_, text) = read_all(&dir);
    let digits = digits_only(&text);
    assert!(!digits.contains("4000056655665556"), "{text}");
    assert!(!digits.contains("4242424242424242"), "{text}");
}

#[tokio::test]
async fn refused_webhooks_are_recorded_without_their_body_and_at_a_bounded_rate() {
    let (proxy, shop, _secrets) = proxy_with_webhook().await;
    let dir = proxy.dir.path().join("audit");
    let body = format!(
        r#"{{"id":"evt_forged","note":"SECRET-MARKER card 4242 4242 4242 4242","pad":"{}"}}"#,
        "x".repeat(64 << 10)
    );
    let sent = 20;
    // A fresh timestamp with a wrong signature: the body is read (and digested) to find out.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for _ in 0..sent {
        let a = send(
            Request::post(proxy.url("/hooks/stripe"))
                .header("stripe-signature", format!("t={now},v1={}", "0".repeat(64)))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 401);
    }
    assert_eq!(shop.count(), 0);
    // Every refused request is either a record of its own or counted in a summary, once its second is
    // over.
    let mut refused = Vec::new();
    let mut suppressed = 0;
    let ok = eventually(Duration::from_secs(5), || {
        let (lines, _) = read_all(&dir);
        refused = lines
            .iter()
            .filter(|v| v["type"] == "webhook")
            .cloned()
            .collect();
        suppressed = lines
            .iter()
            .filter(|v| v["type"] == "webhook_refused_suppressed")
            .map(|v| v["suppressed"].as_u64().unwrap())
            .sum::<u64>();
        let total = refused.len() as u64 + suppressed;
        async move { total == sent }
    })
    .await;
    assert!(ok, "{} records and {suppressed} suppressed", refused.len());
    assert!(
        suppressed > 0,
        "more than the limit in a second is summarised"
    );
    for r in &refused {
        assert_eq!(r["result"], "bad_signature");
        assert!(r.get("request_body").is_none(), "{r}");
        assert_eq!(r["request_body_bytes"], body.len());
        assert_eq!(
            r["request_body_sha256"],
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()))
        );
    }
    let (_, text) = read_all(&dir);
    assert!(!text.contains("SECRET-MARKER"));
    assert!(
        text.len() < 20 << 10,
        "{} bytes for {sent} refused webhooks",
        text.len()
    );
    assert!(
        metric(
            &proxy,
            "switchyard_audit_dropped_total{reason=\"refused_webhook_limit\"}"
        )
        .await
            > 0.0
    );
}

#[tokio::test]
async fn the_audit_files_stay_under_max_bytes_and_what_is_over_is_counted() {
    let provider = MockProvider::start(|_| Reply::ok(r#"{"id":"pi_1"}"#)).await;
    let audit_dir = tempfile::tempdir().unwrap();
    // Today's file already holds all but 100 bytes of the 1 MiB budget.
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let file = audit_dir
        .path()
        .join(switchyard::audit::file_name(today as i64));
    let filler = format!(
        "{{\"type\":\"filler\",\"pad\":\"{}\"}}\n",
        "x".repeat((1 << 20) - 130)
    );
    std::fs::write(&file, &filler).unwrap();
    let yaml = config(&[("psp", &provider.url())], "", "")
        + &format!(
            "audit: {{ dir: \"{}\", bodies: none, max_bytes: 1MiB }}\n",
            audit_dir.path().display()
        );
    let proxy = TestProxy::start(&yaml).await;
    for i in 0..3 {
        assert_eq!(
            post(&proxy.url(&format!("/v1/p{i}")), "amount=1")
                .await
                .status,
            200
        );
    }
    let series = r#"switchyard_audit_dropped_total{reason="disk_budget"}"#;
    let ok = eventually(Duration::from_secs(5), || {
        let proxy = &proxy;
        async move { metric(proxy, series).await >= 3.0 }
    })
    .await;
    assert!(
        ok,
        "{} records counted as over the budget",
        metric(&proxy, series).await
    );
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= 1 << 20, "{size} bytes");
    assert_eq!(metric(&proxy, "switchyard_audit_records_total").await, 0.0);
}
