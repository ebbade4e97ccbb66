//! `webhooks:` and `audit:` — the checks of webhook ingress and of the audit trail settings.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::Uri;

use super::{is_loopback_host, valid_name, Validator};
use crate::config::model::{
    AuditBodies, AuditConfig, Dedupe, GenericHmac, SignForShop, SignatureEncoding, SignatureScheme,
    SigningKey, Verify, Webhook, DEFAULT_AUDIT_MAX_BODY, DEFAULT_AUDIT_MAX_BYTES,
    DEFAULT_AUDIT_QUEUE, DEFAULT_AUDIT_RETENTION, DEFAULT_DEDUPE_MAX_ENTRIES, DEFAULT_DEDUPE_TTL,
    DEFAULT_SHOP_SIGNATURE_HEADER, DEFAULT_WEBHOOK_MAX_BODY, DEFAULT_WEBHOOK_TIMEOUT,
    DEFAULT_WEBHOOK_TOLERANCE,
};
use crate::config::schema;
use crate::config::secrets::SecretRef;

impl Validator<'_> {
    pub(super) fn webhooks(
        &mut self,
        raw: Vec<schema::RawWebhook>,
        shop: SocketAddr,
        admin: SocketAddr,
        route_names: &HashSet<String>,
    ) -> Vec<Arc<Webhook>> {
        let mut names = HashSet::new();
        let mut paths: HashMap<(Option<SocketAddr>, String), usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, w) in raw.into_iter().enumerate() {
            let path = format!("webhooks[{i}]");
            if !valid_name(&w.name) {
                self.problem(
                    format!("{path}.name"),
                    "webhook names use letters, digits, '-', '_' and '.' only",
                );
            } else if !names.insert(w.name.clone()) {
                self.problem(
                    format!("{path}.name"),
                    format!("duplicate webhook name \"{}\"", w.name),
                );
            } else if route_names.contains(&w.name) {
                self.problem(
                    format!("{path}.name"),
                    format!(
                        "\"{}\" is also a route name; webhook requests are logged and counted under their webhook's name, so the two must differ",
                        w.name
                    ),
                );
            }
            if let Some(hook) = self.webhook(&path, w, shop, admin) {
                let key = (hook.listen, hook.path.clone());
                if let Some(first) = paths.insert(key, i) {
                    self.problem(
                        format!("{path}.path"),
                        format!(
                            "webhooks[{first}] already serves {} on this listener",
                            hook.path
                        ),
                    );
                }
                out.push(Arc::new(hook));
            }
        }
        out
    }

    fn webhook(
        &mut self,
        path: &str,
        w: schema::RawWebhook,
        shop: SocketAddr,
        admin: SocketAddr,
    ) -> Option<Webhook> {
        if !w.path.starts_with('/') || w.path.contains(['?', '#']) {
            self.problem(
                format!("{path}.path"),
                "must start with '/' and hold no query",
            );
        }
        let listen = w.listen.as_deref().map(|l| {
            let addr = self.socket_addr(&format!("{path}.listen"), Some(l), "");
            if addr.port() != 0 && addr == admin {
                self.problem(
                    format!("{path}.listen"),
                    "must differ from admin.listen: the admin API is never served to providers",
                );
            } else if addr.port() != 0 && addr == shop {
                self.problem(
                    format!("{path}.listen"),
                    "is the shop listener; omit listen to serve this webhook there",
                );
            }
            addr
        });
        let forward_to = self.forward_to(&format!("{path}.forward_to"), &w.forward_to);
        let verify = self.verify(&format!("{path}.verify"), w.verify);
        let allow_from = w
            .allow_from
            .map(|list| self.allow_from(&format!("{path}.allow_from"), list));
        let dedupe = match w.dedupe {
            None => Dedupe {
                ttl: DEFAULT_DEDUPE_TTL,
                max_entries: DEFAULT_DEDUPE_MAX_ENTRIES,
            },
            Some(d) => {
                let ttl = self.duration(
                    &format!("{path}.dedupe.ttl"),
                    d.ttl.as_deref(),
                    DEFAULT_DEDUPE_TTL,
                );
                let max_entries = d.max_entries.unwrap_or(DEFAULT_DEDUPE_MAX_ENTRIES);
                if max_entries == 0 {
                    self.problem(format!("{path}.dedupe.max_entries"), "must be at least 1");
                }
                Dedupe {
                    ttl,
                    max_entries: max_entries.max(1),
                }
            }
        };
        let sign_for_shop = w.sign_for_shop.and_then(|s| {
            let spath = format!("{path}.sign_for_shop");
            let header = self.header_name(
                &format!("{spath}.header"),
                s.header.as_deref().unwrap_or(DEFAULT_SHOP_SIGNATURE_HEADER),
            );
            let secret = self.required_secret(
                &spath,
                "secret",
                s.secret_env.as_deref(),
                s.secret_file.as_deref(),
                "the shop's webhook secret",
            )?;
            Some(SignForShop {
                header: header?,
                key: SigningKey::new(secret.header_value().as_bytes().to_vec()),
            })
        });
        let max_body = self.size(
            &format!("{path}.max_body"),
            w.max_body.as_deref(),
            DEFAULT_WEBHOOK_MAX_BODY,
            1,
            64 << 20,
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            w.timeout.as_deref(),
            DEFAULT_WEBHOOK_TIMEOUT,
        );
        Some(Webhook {
            name: Arc::from(w.name.as_str()),
            path: w.path,
            listen,
            forward_to: forward_to?,
            verify: verify?,
            allow_from,
            dedupe,
            sign_for_shop,
            max_body,
            timeout,
        })
    }

    fn forward_to(&mut self, path: &str, text: &str) -> Option<Uri> {
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(e) => {
                self.problem(path, format!("\"{text}\" is not a URL: {e}"));
                return None;
            }
        };
        let ok_scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => {
                if !uri.host().is_some_and(is_loopback_host) {
                    self.problem(
                        path,
                        "plain http:// is only allowed to a loopback address; use https://",
                    );
                    return None;
                }
                true
            }
            _ => false,
        };
        if !ok_scheme || uri.host().is_none() {
            self.problem(
                path,
                format!("\"{text}\" must be an http://127.0.0.1:PORT/... or https:// URL"),
            );
            return None;
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            self.problem(path, "credentials in the URL are not allowed");
            return None;
        }
        Some(uri)
    }

    fn verify(&mut self, path: &str, v: schema::RawVerify) -> Option<Verify> {
        let generic_only = [
            ("header", v.header.is_some()),
            ("encoding", v.encoding.is_some()),
            ("prefix", v.prefix.is_some()),
            ("timestamp_header", v.timestamp_header.is_some()),
        ];
        let scheme = match v.scheme.as_str() {
            "stripe" | "adyen" => {
                for (key, set) in generic_only {
                    if set {
                        self.problem(
                            format!("{path}.{key}"),
                            format!("applies to scheme hmac-sha256 only, not {}", v.scheme),
                        );
                    }
                }
                if v.scheme == "stripe" {
                    SignatureScheme::Stripe
                } else {
                    SignatureScheme::Adyen
                }
            }
            "hmac-sha256" => {
                let header = match v.header.as_deref() {
                    Some(h) => self.header_name(&format!("{path}.header"), h),
                    None => {
                        self.problem(
                            format!("{path}.header"),
                            "scheme hmac-sha256 needs the header that carries the signature",
                        );
                        None
                    }
                };
                let encoding = match v.encoding.as_deref() {
                    None | Some("hex") => SignatureEncoding::Hex,
                    Some("base64") => SignatureEncoding::Base64,
                    Some(other) => {
                        self.problem(
                            format!("{path}.encoding"),
                            format!("\"{other}\" is not one of hex, base64"),
                        );
                        SignatureEncoding::Hex
                    }
                };
                let timestamp_header = v
                    .timestamp_header
                    .as_deref()
                    .and_then(|h| self.header_name(&format!("{path}.timestamp_header"), h));
                SignatureScheme::HmacSha256(GenericHmac {
                    header: header?,
                    encoding,
                    prefix: v.prefix.unwrap_or_default(),
                    timestamp_header,
                })
            }
            other => {
                self.problem(
                    format!("{path}.scheme"),
                    format!("\"{other}\" is not one of stripe, adyen, hmac-sha256"),
                );
                return None;
            }
        };
        let signs_time = match &scheme {
            SignatureScheme::Stripe => true,
            SignatureScheme::Adyen => false,
            SignatureScheme::HmacSha256(g) => g.timestamp_header.is_some(),
        };
        if v.tolerance.is_some() && !signs_time {
            self.problem(
                format!("{path}.tolerance"),
                "this scheme signs no timestamp (replays are caught by dedupe); remove tolerance",
            );
        }
        let tolerance = self.duration(
            &format!("{path}.tolerance"),
            v.tolerance.as_deref(),
            DEFAULT_WEBHOOK_TOLERANCE,
        );
        let mut keys = Vec::new();
        let mut sources = Vec::new();
        for (i, name) in v.secrets_env.unwrap_or_default().into_iter().enumerate() {
            sources.push((
                format!("{path}.secrets_env[{i}]"),
                SecretRef::Env(name.clone()),
                name.is_empty(),
            ));
        }
        for (i, file) in v.secrets_file.unwrap_or_default().into_iter().enumerate() {
            sources.push((
                format!("{path}.secrets_file[{i}]"),
                SecretRef::File(self.file(&file)),
                file.is_empty(),
            ));
        }
        if sources.is_empty() {
            self.problem(
                path,
                "set secrets_env or secrets_file (a list: several secrets are accepted during a rotation)",
            );
        }
        for (key_path, source, empty) in sources {
            if empty {
                self.problem(key_path, "the name of the secret's source is empty");
                continue;
            }
            let Some(value) = self.read_secret(key_path.clone(), source.clone()) else {
                continue;
            };
            if scheme == SignatureScheme::Adyen {
                match hex::decode(value.trim()) {
                    Ok(bytes) if !bytes.is_empty() => keys.push(SigningKey::new(bytes)),
                    _ => self.problem(
                        key_path,
                        format!("{source} is not an Adyen HMAC key (hexadecimal)"),
                    ),
                }
            } else {
                keys.push(SigningKey::new(value.into_bytes()));
            }
        }
        Some(Verify {
            scheme,
            keys,
            tolerance,
        })
    }

    fn allow_from(&mut self, path: &str, list: Vec<String>) -> Vec<ipnet::IpNet> {
        if list.is_empty() {
            self.problem(
                path,
                "an empty list allows no source; omit allow_from to allow any",
            );
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, text)| {
                let text = text.trim();
                let parsed = text
                    .parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from));
                if parsed.is_none() {
                    self.problem(
                        format!("{path}[{i}]"),
                        format!("\"{text}\" is not an address or network (e.g. 3.18.12.63/32, 2600:1f18::/32)"),
                    );
                }
                parsed.map(|n| n.trunc())
            })
            .collect()
    }

    pub(super) fn audit(&mut self, raw: schema::RawAudit) -> AuditConfig {
        if raw.dir.trim().is_empty() {
            self.problem("audit.dir", "must name a folder");
        }
        let retention = self.duration(
            "audit.retention",
            raw.retention.as_deref(),
            DEFAULT_AUDIT_RETENTION,
        );
        if retention < Duration::from_secs(24 * 3600) {
            self.problem(
                "audit.retention",
                "must be at least 1d (files hold one UTC day each)",
            );
        }
        let bodies = match raw.bodies.as_deref() {
            None | Some("none") => AuditBodies::None,
            Some("redacted") => AuditBodies::Redacted,
            Some(other) => {
                self.problem(
                    "audit.bodies",
                    format!("\"{other}\" is not one of none, redacted"),
                );
                AuditBodies::None
            }
        };
        let max_body = self.size(
            "audit.max_body",
            raw.max_body.as_deref(),
            DEFAULT_AUDIT_MAX_BODY,
            0,
            1 << 20,
        );
        let queue = raw.queue.unwrap_or(DEFAULT_AUDIT_QUEUE);
        if !(1..=1_000_000).contains(&queue) {
            self.problem("audit.queue", "must be between 1 and 1000000");
        }
        let max_bytes = self.size(
            "audit.max_bytes",
            raw.max_bytes.as_deref(),
            DEFAULT_AUDIT_MAX_BYTES,
            1 << 20,
            u64::MAX,
        ) as u64;
        AuditConfig {
            dir: self.file(raw.dir.trim()),
            retention,
            bodies,
            max_body,
            queue: queue.clamp(1, 1_000_000),
            max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    /// A webhook section with one webhook; `verify` and `extra` are lines indented for its keys.
    fn webhook(verify: &str, extra: &str) -> String {
        config(
            "",
            "",
            &format!(
                "webhooks:
  - name: stripe-events
    path: /webhooks/stripe
    forward_to: http://127.0.0.1:3000/payments/webhook
    verify:
{verify}{extra}"
            ),
        )
    }

    #[test]
    fn webhooks_parse_with_their_defaults() {
        use crate::config::model::{
            SignatureScheme, DEFAULT_DEDUPE_TTL, DEFAULT_WEBHOOK_TOLERANCE,
        };
        let secrets = Secrets::default()
            .with("WHSEC", "whsec_new")
            .with("WHSEC_OLD", "whsec_old");
        let text = webhook(
            "      scheme: stripe\n      secrets_env: [WHSEC, WHSEC_OLD]\n",
            "",
        );
        let s = valid_with(&text, &secrets);
        assert_eq!(s.webhooks.len(), 1);
        let w = &s.webhooks[0];
        assert_eq!(&*w.name, "stripe-events");
        assert_eq!(w.path, "/webhooks/stripe");
        assert_eq!(w.listen, None);
        assert_eq!(w.forward_to, "http://127.0.0.1:3000/payments/webhook");
        assert_eq!(w.verify.scheme, SignatureScheme::Stripe);
        let keys: Vec<&[u8]> = w.verify.keys.iter().map(|k| k.as_bytes()).collect();
        assert_eq!(keys, [&b"whsec_new"[..], &b"whsec_old"[..]]);
        assert_eq!(w.verify.tolerance, DEFAULT_WEBHOOK_TOLERANCE);
        assert!(w.allow_from.is_none());
        assert_eq!(w.dedupe.ttl, DEFAULT_DEDUPE_TTL);
        assert!(w.sign_for_shop.is_none());
        assert_eq!(w.max_body, 1 << 20);
        assert_eq!(w.timeout, Duration::from_secs(10));
        // Secrets are listed by where they come from, never by value.
        let uses: Vec<&str> = s.secrets.iter().map(|u| u.path.as_str()).collect();
        assert_eq!(
            uses,
            [
                "webhooks[0].verify.secrets_env[0]",
                "webhooks[0].verify.secrets_env[1]"
            ]
        );
        assert!(!format!("{s:?}").contains("whsec_new"));
        assert!(s.audit.is_none());
    }

    #[test]
    fn webhook_settings_are_kept_as_written() {
        use crate::config::model::{SignatureEncoding, SignatureScheme};
        let secrets = Secrets::default()
            .with("CKO", "cko-secret")
            .with("SHOP", "shop-secret")
            .with(
                "ADYEN",
                "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
            );
        let text = config(
        "",
        "",
        "webhooks:
  - name: cko
    path: /webhooks/cko
    listen: 0.0.0.0:8443
    forward_to: https://shop.example/hooks?source=cko
    verify: { scheme: hmac-sha256, header: Cko-Signature, encoding: base64, prefix: 'sha256=', timestamp_header: X-Ts, tolerance: 2m, secrets_env: [CKO] }
    allow_from: [3.18.12.63/32, 2600:1f18::/32, 10.1.2.3]
    dedupe: { ttl: 7d, max_entries: 10 }
    sign_for_shop: { secret_env: SHOP }
    max_body: 64KiB
    timeout: 3s
  - name: adyen
    path: /webhooks/adyen
    forward_to: http://localhost:3000/adyen
    verify: { scheme: adyen, secrets_env: [ADYEN] }
",
    );
        let s = valid_with(&text, &secrets);
        let w = &s.webhooks[0];
        assert_eq!(w.listen, Some(addr("0.0.0.0:8443")));
        let SignatureScheme::HmacSha256(g) = &w.verify.scheme else {
            panic!("{:?}", w.verify.scheme)
        };
        assert_eq!(g.header, "cko-signature");
        assert_eq!(g.encoding, SignatureEncoding::Base64);
        assert_eq!(g.prefix, "sha256=");
        assert_eq!(
            g.timestamp_header.as_ref().map(|h| h.as_str()),
            Some("x-ts")
        );
        assert_eq!(w.verify.tolerance, Duration::from_secs(120));
        let nets: Vec<String> = w
            .allow_from
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["3.18.12.63/32", "2600:1f18::/32", "10.1.2.3/32"]);
        assert_eq!(w.dedupe.ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(w.dedupe.max_entries, 10);
        let shop = w.sign_for_shop.as_ref().unwrap();
        assert_eq!(shop.header, "x-switchyard-signature");
        assert_eq!(shop.key.as_bytes(), b"shop-secret");
        assert_eq!(w.max_body, 64 << 10);
        assert_eq!(w.timeout, Duration::from_secs(3));
        // An Adyen key is hexadecimal and used decoded.
        let a = &s.webhooks[1];
        assert_eq!(a.verify.scheme, SignatureScheme::Adyen);
        assert_eq!(a.verify.keys[0].as_bytes().len(), 32);
        assert_eq!(a.verify.keys[0].as_bytes()[0], 0x44);
    }

    #[test]
    fn webhook_problems_name_their_path_and_line() {
        let stripe = "      scheme: stripe\n      secrets_env: [WHSEC]\n";
        let secrets = Secrets::default()
            .with("WHSEC", "whsec_x")
            .with("BAD", "not-hex!");
        let cases = [
        (
            webhook("      scheme: paypal\n      secrets_env: [WHSEC]\n", ""),
            "webhooks[0].verify.scheme",
            "scheme: paypal",
            "not one of stripe, adyen, hmac-sha256",
        ),
        (
            webhook("      scheme: stripe\n", ""),
            "webhooks[0].verify",
            "verify:",
            "set secrets_env or secrets_file",
        ),
        (
            webhook("      scheme: stripe\n      secrets_env: [MISSING]\n", ""),
            "webhooks[0].verify.secrets_env[0]",
            "secrets_env: [MISSING]",
            "MISSING is not set",
        ),
        (
            webhook("      scheme: adyen\n      secrets_env: [BAD]\n", ""),
            "webhooks[0].verify.secrets_env[0]",
            "secrets_env: [BAD]",
            "not an Adyen HMAC key",
        ),
        (
            webhook("      scheme: hmac-sha256\n      secrets_env: [WHSEC]\n", ""),
            "webhooks[0].verify.header",
            "verify:",
            "needs the header",
        ),
        (
            webhook(
                "      scheme: stripe\n      secrets_env: [WHSEC]\n      header: X-Sig\n",
                "",
            ),
            "webhooks[0].verify.header",
            "header: X-Sig",
            "hmac-sha256 only",
        ),
        (
            webhook(
                "      scheme: hmac-sha256\n      header: X-Sig\n      encoding: hexa\n      secrets_env: [WHSEC]\n",
                "",
            ),
            "webhooks[0].verify.encoding",
            "encoding: hexa",
            "not one of hex, base64",
        ),
        (
            webhook(
                "      scheme: adyen\n      secrets_env: [WHSEC]\n      tolerance: 5m\n",
                "",
            )
            .replace("whsec_x", ""),
            "webhooks[0].verify.tolerance",
            "tolerance: 5m",
            "signs no timestamp",
        ),
        (
            webhook(stripe, "    allow_from: [3.18.12.63/33]\n"),
            "webhooks[0].allow_from[0]",
            "allow_from:",
            "not an address or network",
        ),
        (
            webhook(stripe, "    allow_from: []\n"),
            "webhooks[0].allow_from",
            "allow_from:",
            "omit allow_from",
        ),
        (
            webhook(stripe, "    dedupe: { ttl: forever }\n"),
            "webhooks[0].dedupe.ttl",
            "dedupe:",
            "not a duration",
        ),
        (
            webhook(stripe, "    sign_for_shop: { header: X-Sig }\n"),
            "webhooks[0].sign_for_shop",
            "sign_for_shop:",
            "set secret_env or secret_file",
        ),
        (
            webhook(stripe, "    listen: 127.0.0.1:9901\n"),
            "webhooks[0].listen",
            "listen: 127.0.0.1:9901",
            "must differ from admin.listen",
        ),
        (
            webhook(stripe, "    listen: 127.0.0.1:8080\n"),
            "webhooks[0].listen",
            "listen: 127.0.0.1:8080",
            "omit listen",
        ),
        (
            webhook(stripe, "").replace("http://127.0.0.1:3000", "http://shop.example"),
            "webhooks[0].forward_to",
            "forward_to:",
            "only allowed to a loopback address",
        ),
        (
            webhook(stripe, "").replace("path: /webhooks/stripe", "path: webhooks"),
            "webhooks[0].path",
            "path: webhooks",
            "must start with '/'",
        ),
        (
            webhook(stripe, "").replace("name: stripe-events", "name: pay # clash"),
            "webhooks[0].name",
            "pay # clash",
            "also a route name",
        ),
    ];
        for (text, path, needle, phrase) in cases {
            // The Adyen-with-tolerance case has one more problem (its key is not hexadecimal): look for ours.
            let all = problems_with(&text, &secrets);
            let p = all
                .iter()
                .find(|p| p.path == path)
                .unwrap_or_else(|| panic!("no problem at {path}: {all:#?}\n{text}"));
            assert_problem(p, path, &text, needle, phrase);
        }
    }

    #[test]
    fn two_webhooks_may_not_share_a_name_or_a_path_on_one_listener() {
        let secrets = Secrets::default().with("S", "s");
        let one = |name: &str, path: &str, listen: &str| {
            format!(
            "  - name: {name}\n    path: {path}\n{listen}    forward_to: http://127.0.0.1:3000/\n    verify: {{ scheme: stripe, secrets_env: [S] }}\n"
        )
        };
        let text = config(
            "",
            "",
            &format!(
                "webhooks:\n{}{}{}",
                one("a", "/h", ""),
                one("a", "/h", ""),
                one("b", "/h", "    listen: 127.0.0.1:7000\n"),
            ),
        );
        let all = problems_with(&text, &secrets);
        let found: Vec<(&str, bool)> = all
            .iter()
            .map(|p| (p.path.as_str(), p.message.contains("webhooks[0]")))
            .collect();
        assert_eq!(
            found,
            [("webhooks[1].name", false), ("webhooks[1].path", true)],
            "{all:#?}"
        );
    }

    #[test]
    fn audit_parses_with_its_defaults_and_resolves_its_folder() {
        use crate::config::model::{AuditBodies, DEFAULT_AUDIT_RETENTION};
        let s = valid(&config("", "", "audit: { dir: audit }\n"));
        let a = s.audit.unwrap();
        assert_eq!(a.dir, Path::new(BASE).join("audit"));
        assert_eq!(a.retention, DEFAULT_AUDIT_RETENTION);
        assert_eq!(a.bodies, AuditBodies::None);
        assert_eq!(a.max_body, 64 << 10);
        assert_eq!(a.queue, 10_000);
        assert_eq!(a.max_bytes, 10 << 30);

        let s = valid(&config(
        "",
        "",
        "audit:\n  dir: /var/lib/switchyard/audit\n  retention: 180d\n  bodies: redacted\n  max_body: 16KiB\n  queue: 50\n  max_bytes: 512MiB\n",
    ));
        let a = s.audit.unwrap();
        assert_eq!(a.dir, PathBuf::from("/var/lib/switchyard/audit"));
        assert_eq!(a.retention, Duration::from_secs(180 * 24 * 3600));
        assert_eq!(a.bodies, AuditBodies::Redacted);
        assert_eq!(a.max_body, 16 << 10);
        assert_eq!(a.queue, 50);
        assert_eq!(a.max_bytes, 512 << 20);
    }

    #[test]
    fn audit_problems_name_their_path_and_line() {
        let cases = [
            (
                "audit:\n  dir: a\n  bodies: full\n",
                "audit.bodies",
                "bodies: full",
                "not one of none, redacted",
            ),
            (
                "audit:\n  dir: a\n  retention: 12h\n",
                "audit.retention",
                "retention: 12h",
                "at least 1d",
            ),
            (
                "audit:\n  dir: a\n  queue: 0\n",
                "audit.queue",
                "queue: 0",
                "between 1 and",
            ),
            (
                "audit:\n  dir: ''\n",
                "audit.dir",
                "dir: ''",
                "must name a folder",
            ),
            (
                "audit:\n  dir: a\n  max_bytes: 64KiB\n",
                "audit.max_bytes",
                "max_bytes: 64KiB",
                "between 1048576 and",
            ),
            (
                "audit:\n  dir: a\n  max_bytes: lots\n",
                "audit.max_bytes",
                "max_bytes: lots",
                "not a size",
            ),
            (
                "audit:\n  dir: a\n  max_body: 2MiB\n",
                "audit.max_body",
                "max_body: 2MiB",
                "between 0 and",
            ),
        ];
        for (top, path, needle, phrase) in cases {
            let text = config("", "", top);
            assert_problem(&only_problem(&text), path, &text, needle, phrase);
        }
        // `dir` is required, and unknown keys are parse errors with their path.
        assert!(parse_error(&config("", "", "audit: { retention: 1d }\n")).contains("dir"));
        assert!(parse_error(&config("", "", "audit: { dir: a, file: x }\n")).contains("file"));
    }
}
