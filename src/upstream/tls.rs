//! The rustls client configuration for one provider: TLS 1.2 or newer, certificate verification always
//! on (webpki roots plus an optional CA file), an optional client certificate for mTLS, ALPN h2 and
//! http/1.1, and no 0-RTT early data (a POST must never be replayable by the network).

use std::path::Path;
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::Tls;

/// A built TLS config and a digest of every input it was built from, so a reload can tell whether
/// the files changed.
pub(crate) struct BuiltTls {
    pub(crate) config: ClientConfig,
    pub(crate) digest: [u8; 32],
}

fn read(path: &Path, what: &str, digest: &mut Sha256) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    digest.update(&bytes);
    Ok(bytes)
}

/// Builds the client config for `tls`. Errors say which file is wrong and why.
pub(crate) fn client_config(tls: &Tls) -> Result<BuiltTls, String> {
    let mut digest = Sha256::new();
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &tls.ca_file {
        let pem = read(ca, "ca_file", &mut digest)?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca_file {} holds no PEM certificate", ca.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let cert_pem = read(cert_path, "client_cert_file", &mut digest)?;
            let certs = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client_cert_file {}: {e}", cert_path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "client_cert_file {} holds no PEM certificate",
                    cert_path.display()
                ));
            }
            let key_pem = read(key_path, "client_key_file", &mut digest)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                format!(
                    "client_key_file {} holds no usable private key: {e}",
                    key_path.display()
                )
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate and key do not fit: {e}"))?
        }
    };
    config.enable_early_data = false;
    digest.update(format!("{tls:?}").as_bytes());
    Ok(BuiltTls {
        config,
        digest: digest.finalize().into(),
    })
}
