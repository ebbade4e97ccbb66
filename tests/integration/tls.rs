//! TLS to providers: the proxy verifies the provider's certificate against the webpki roots plus the
//! configured `ca_file`, negotiates h2 or http/1.1 by ALPN, presents a client certificate for mTLS,
//! verifies `server_name` instead of the URL's host when set, and refuses to start on a missing file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::support::*;

const PAYMENT: &str = "amount=1000&currency=eur";
const OK_BODY: &str = r#"{"id":"pi_tls_1","status":"succeeded"}"#;

/// A test certificate authority.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), for a server or a client.
    fn leaf(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test leaf");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A certificate and its private key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS acceptor serving `leaf`, offering `alpn`, and (with `client_ca`) requiring a client
/// certificate issued by that CA.
fn acceptor(leaf: &Leaf, alpn: &[&[u8]], client_ca: Option<&TestCa>) -> TlsAcceptor {
    let builder = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                ring(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(vec![leaf.cert_der.clone()], leaf.key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

async fn tls_mock(acceptor: TlsAcceptor) -> MockProvider {
    MockProvider::start_with(Some(acceptor), |_: &Received| Reply::ok(OK_BODY)).await
}

fn https_url(mock: &MockProvider) -> String {
    format!("https://127.0.0.1:{}", mock.addr.port())
}

/// Writes `text` to `dir/name` and returns the absolute path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A YAML `tls:` line for a provider, with absolute (quoted) file paths.
fn tls_yaml(fields: &[(&str, &str)]) -> String {
    let inner: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    format!(
        "tls: {{ {} }}\nconnect_timeout: 2s\ntimeout: 5s",
        inner.join(", ")
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts that the proxy itself answered 502 with the given error kind (or any kind when `None`).
fn assert_proxy_502(answer: &Answer, kind: Option<&str>) {
    assert_eq!(answer.status, 502, "body: {}", answer.text());
    let got = answer
        .header("x-switchyard-error")
        .unwrap_or_else(|| panic!("no x-switchyard-error header: {answer:?}"));
    if let Some(kind) = kind {
        assert_eq!(got, kind, "body: {}", answer.text());
    }
}

#[tokio::test]
async fn trusts_the_configured_ca_and_negotiates_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("switchyard test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let server = ca.server(&["127.0.0.1", "localhost"]);

    let h2_mock = tls_mock(acceptor(&server, H2_AND_H1, None)).await;
    let h1_mock = tls_mock(acceptor(&server, H1_ONLY, None)).await;
    let tls = tls_yaml(&[("ca_file", path_str(&ca_file))]);

    for (mock, version) in [
        (&h2_mock, http::Version::HTTP_2),
        (&h1_mock, http::Version::HTTP_11),
    ] {
        let proxy = TestProxy::start(&config(&[("psp-tls", &https_url(mock))], &tls, "")).await;
        let answer = post(&proxy.url("/v1/payment_intents"), PAYMENT).await;
        assert_eq!(answer.status, 200, "body: {}", answer.text());
        assert_eq!(answer.text(), OK_BODY);
        assert_eq!(answer.header("x-switchyard-provider"), Some("psp-tls"));
        assert_eq!(answer.header("x-switchyard-error"), None);

        let received = mock.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].version, version);
        assert_eq!(received[0].method, http::Method::POST);
        assert_eq!(received[0].uri, "/v1/payment_intents");
        assert_eq!(&received[0].body[..], PAYMENT.as_bytes());
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_before_any_byte_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("switchyard test CA");
    let other = TestCa::new("some other CA");
    let other_file = write(dir.path(), "other-ca.pem", &other.pem());
    let mock = tls_mock(acceptor(&ca.server(&["127.0.0.1"]), H2_AND_H1, None)).await;

    let tls = tls_yaml(&[("ca_file", path_str(&other_file))]);
    let proxy = TestProxy::start(&config(&[("psp-tls", &https_url(&mock))], &tls, "")).await;
    let answer = post(&proxy.url("/v1/payment_intents"), PAYMENT).await;
    assert_proxy_502(&answer, Some("provider_tls"));
    assert_eq!(mock.count(), 0, "the provider must not see the request");
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_a_ca_file_a_private_ca_is_not_trusted() {
    let ca = TestCa::new("switchyard test CA");
    let mock = tls_mock(acceptor(&ca.server(&["127.0.0.1"]), H2_AND_H1, None)).await;

    // Only the webpki roots: the test CA is not among them.
    let proxy = TestProxy::start(&config(
        &[("psp-tls", &https_url(&mock))],
        "connect_timeout: 2s\ntimeout: 5s",
        "",
    ))
    .await;
    let answer = post(&proxy.url("/v1/payment_intents"), PAYMENT).await;
    assert_proxy_502(&answer, Some("provider_tls"));
    assert_eq!(mock.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn mtls_needs_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("switchyard test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let client = ca.client("switchyard-client");
    let cert_file = write(dir.path(), "client.pem", &client.cert_pem);
    let key_file = write(dir.path(), "client-key.pem", &client.key_pem);
    let server = ca.server(&["127.0.0.1"]);

    for alpn in [H2_AND_H1, H1_ONLY] {
        let mock = tls_mock(acceptor(&server, alpn, Some(&ca))).await;
        let url = https_url(&mock);

        // Without a client certificate the provider refuses the handshake.
        let tls = tls_yaml(&[("ca_file", path_str(&ca_file))]);
        let proxy = TestProxy::start(&config(&[("psp-mtls", &url)], &tls, "")).await;
        let answer = post(&proxy.url("/v1/payment_intents"), PAYMENT).await;
        assert_proxy_502(&answer, None);
        // A refused client certificate is a TLS failure (nothing processed), over h2 and http/1.1 alike.
        assert_eq!(
            answer.header("x-switchyard-error"),
            Some("provider_tls"),
            "{}",
            answer.text()
        );
        assert_eq!(mock.count(), 0, "the provider must not see the request");
        proxy.shutdown().await;

        // With it, the request goes through.
        let tls = tls_yaml(&[
            ("ca_file", path_str(&ca_file)),
            ("client_cert_file", path_str(&cert_file)),
            ("client_key_file", path_str(&key_file)),
        ]);
        let proxy = TestProxy::start(&config(&[("psp-mtls", &url)], &tls, "")).await;
        let answer = post(&proxy.url("/v1/payment_intents"), PAYMENT).await;
        assert_eq!(answer.status, 200, "body: {}", answer.text());
        assert_eq!(answer.text(), OK_BODY);
        assert_eq!(answer.header("x-switchyard-provider"), Some("psp-mtls"));
        assert_eq!(mock.count(), 1);
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn server_name_is_verified_instead_of_the_url_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("switchyard test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let mock = tls_mock(acceptor(&ca.server(&["provider.test"]), H2_AND_H1, None)).await;
    let url = https_url(&mock);

    let tls = tls_yaml(&[
        ("ca_file", path_str(&ca_file)),
        ("server_name", "provider.test"),
    ]);
    let proxy = TestProxy::start(&config(&[("psp-named", &url)], &tls, "")).await;
    let answer = post(&proxy.url("/v1/payment_intents"), PAYMENT).await;
    assert_eq!(answer.status, 200, "body: {}", answer.text());
    assert_eq!(answer.header("x-switchyard-provider"), Some("psp-named"));
    assert_eq!(mock.count(), 1);
    proxy.shutdown().await;

    // The certificate does not name 127.0.0.1: without server_name the handshake fails.
    let tls = tls_yaml(&[("ca_file", path_str(&ca_file))]);
    let proxy = TestProxy::start(&config(&[("psp-named", &url)], &tls, "")).await;
    let answer = post(&proxy.url("/v1/payment_intents"), PAYMENT).await;
    assert_proxy_502(&answer, Some("provider_tls"));
    assert_eq!(
        mock.count(),
        1,
        "the failed attempt must not reach the provider"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_missing_ca_file_stops_the_start_and_names_the_provider_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let tls = tls_yaml(&[("ca_file", path_str(&missing))]);
    let yaml = config(&[("psp-missing", "https://127.0.0.1:9")], &tls, "");
    let err = match TestProxy::try_start(&yaml, false).await {
        Ok(proxy) => {
            proxy.shutdown().await;
            panic!("started with a ca_file that does not exist");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("providers.psp-missing.tls"), "{err}");
    assert!(err.contains(path_str(&missing)), "{err}");
}

#[tokio::test]
async fn a_provider_that_never_finishes_the_tls_handshake_costs_connect_timeout_then_fails_over() {
    // Accepts TCP and then says nothing: the TLS handshake never finishes. The sockets are held (not
    // closed) until the test ends, so the proxy sees neither an answer nor a reset.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            sockets.push(tcp);
        }
    });
    let backup = MockProvider::start(|_| Reply::ok(OK_BODY)).await;

    // The route's 3 s deadline ends long before the providers' 30 s attempt timeout: only
    // connect_timeout (300 ms, TCP and TLS) can free the payment for the backup in time.
    let yaml = config(
        &[
            ("psp-stuck", &format!("https://{stuck}")),
            ("psp-backup", &backup.url()),
        ],
        "connect_timeout: 300ms\ntimeout: 30s",
        "timeout: 3s",
    );
    let proxy = TestProxy::start(&yaml).await;
    let answer = post_with_key(
        &proxy.url("/v1/payment_intents"),
        "order-tls-stuck",
        PAYMENT,
    )
    .await;
    assert_eq!(answer.status, 200, "body: {}", answer.text());
    assert_eq!(answer.header("x-switchyard-provider"), Some("psp-backup"));
    assert_eq!(backup.count(), 1);
    proxy.shutdown().await;
    held.abort();
}
