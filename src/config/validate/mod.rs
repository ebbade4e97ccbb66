//! Turns the raw mirror into a typed, checked [`Snapshot`]: every value parsed, every reference
//! resolved, every secret read. Each problem is reported with the YAML path it comes from, and all
//! problems of a file are reported at once.
//!
//! One file per config section; this one holds the entry point, [`validate`], and the checkers every
//! section shares (durations, sizes, ratios, header names, secrets).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::model::{Snapshot, DEFAULT_DRAIN_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_HEADER_BYTES};
use super::schema::RawConfig;
use super::secrets::{Secret, SecretRef, SecretSource, SecretUse};
use super::units::{parse_duration, parse_size};

mod admin;
mod breaker;
mod dialect;
mod health_checks;
mod idempotency;
mod limits;
mod listeners;
mod pins;
mod providers;
mod quotas;
mod rate_limits;
mod retry;
mod routes;
mod sandbox;
mod state;
mod webhooks;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path, e.g. `routes[0].targets[1].provider`.
    pub path: String,
    /// Line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(top)"
        } else {
            &self.path
        };
        match self.line {
            Some(line) => write!(f, "{path} (line {line}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Validates a raw config. `base_dir` is the folder relative file paths are resolved against.
pub fn validate(
    raw: RawConfig,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Result<Snapshot, Vec<Problem>> {
    let mut v = Validator {
        problems: Vec::new(),
        base_dir,
        secrets,
        secret_uses: Vec::new(),
    };
    let snapshot = v.config(raw);
    if v.problems.is_empty() {
        Ok(Snapshot {
            secrets: v.secret_uses,
            ..snapshot
        })
    } else {
        Err(v.problems)
    }
}

struct Validator<'a> {
    problems: Vec<Problem>,
    base_dir: &'a Path,
    secrets: &'a dyn SecretSource,
    secret_uses: Vec<SecretUse>,
}

impl Validator<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        let Some(text) = text else { return default };
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.problem(path, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(path, e);
                default
            }
        }
    }

    /// Like `duration`, but "0s" is allowed and means off.
    fn duration_or_zero(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(path, e);
                default
            }
        }
    }

    fn size(&mut self, path: &str, text: Option<&str>, default: u64, min: u64, max: u64) -> usize {
        let Some(text) = text else {
            return default as usize;
        };
        match parse_size(text) {
            Ok(n) if n < min || n > max => {
                self.problem(path, format!("must be between {min} and {max} bytes"));
                default as usize
            }
            Ok(n) => n as usize,
            Err(e) => {
                self.problem(path, e);
                default as usize
            }
        }
    }

    fn count(&mut self, path: String, value: Option<u32>, default: u32, min: u32) -> u32 {
        let v = value.unwrap_or(default);
        if v < min {
            self.problem(path, format!("must be at least {min}"));
            return default;
        }
        v
    }

    fn ratio(&mut self, path: String, value: Option<f64>, default: f64, max: f64) -> f64 {
        let v = value.unwrap_or(default);
        if v.is_nan() || !(0.0..=max).contains(&v) {
            self.problem(path, format!("must be between 0.0 and {max}"));
            return default;
        }
        v
    }

    fn file(&self, text: &str) -> PathBuf {
        self.base_dir.join(text)
    }

    fn secret(
        &mut self,
        path: &str,
        env: Option<&str>,
        file: Option<&str>,
        what: &str,
    ) -> Option<Secret> {
        let (key, source) = match (env, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    path,
                    format!("give {what} in one of _env or _file, not both"),
                );
                return None;
            }
            (Some(name), None) if !name.is_empty() => ("env", SecretRef::Env(name.to_owned())),
            (None, Some(f)) if !f.is_empty() => ("file", SecretRef::File(self.file(f))),
            (None, None) => return None,
            _ => {
                self.problem(path, format!("the name of {what}'s source is empty"));
                return None;
            }
        };
        let key_path = format!("{path}_{key}");
        let value = self.read_secret(key_path.clone(), source.clone())?;
        match HeaderValue::from_str(&value) {
            Ok(v) => Some(Secret::new(v)),
            Err(_) => {
                self.problem(
                    key_path,
                    format!("{source} holds characters not allowed in an HTTP header"),
                );
                None
            }
        }
    }

    /// Reads one secret named at `key_path`, recording where it comes from. A trailing newline is
    /// removed; a value that is then empty or only whitespace is a problem at `key_path`, since an
    /// empty token or credential would silently turn a check off or be sent as is.
    fn read_secret(&mut self, key_path: String, source: SecretRef) -> Option<String> {
        self.secret_uses.push(SecretUse {
            path: key_path.clone(),
            source: source.clone(),
        });
        match self.secrets.read(&source) {
            Ok(value) => {
                let value = value.trim_end_matches(['\r', '\n']);
                if value.trim().is_empty() {
                    let what = if value.is_empty() {
                        "is empty"
                    } else {
                        "is empty (only whitespace)"
                    };
                    self.problem(key_path, format!("{source} {what}"));
                    return None;
                }
                Some(value.to_owned())
            }
            Err(e) => {
                self.problem(key_path, e);
                None
            }
        }
    }

    /// A header name, or a problem at `path`.
    fn header_name(&mut self, path: &str, text: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.problem(path, format!("\"{text}\" is not a header name"));
                None
            }
        }
    }

    /// A secret that must be given: `{key}_env` or `{key}_file` under `path`.
    fn required_secret(
        &mut self,
        path: &str,
        key: &str,
        env: Option<&str>,
        file: Option<&str>,
        what: &str,
    ) -> Option<Secret> {
        if env.is_none() && file.is_none() {
            self.problem(path, format!("set {key}_env or {key}_file"));
            return None;
        }
        self.secret(&format!("{path}.{key}"), env, file, what)
    }

    fn config(&mut self, raw: RawConfig) -> Snapshot {
        let listen = self.socket_addr("listen", raw.listen.as_deref(), DEFAULT_LISTEN);
        let admin = self.admin(raw.admin, listen);
        let drain_timeout = self.duration(
            "drain_timeout",
            raw.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let max_header_bytes = self.size(
            "max_header_bytes",
            raw.max_header_bytes.as_deref(),
            DEFAULT_MAX_HEADER_BYTES,
            8 << 10,
            16 << 20,
        );
        let audit = raw.audit.map(|a| self.audit(a));
        let pins = self.pins(raw.pins);

        // Every name written, valid or not: a target naming a provider that has problems of its own
        // is not also reported as unknown.
        let defined: BTreeSet<String> = raw.providers.keys().cloned().collect();
        let providers = self.providers(raw.providers);
        let (routes, route_names) = self.routes(raw.routes, &providers, &defined);
        let webhooks = self.webhooks(raw.webhooks, listen, admin.listen, &route_names);
        let sandbox = self.sandbox(raw.sandbox);
        let largest_body = routes
            .iter()
            .map(|r| r.max_body)
            .chain(webhooks.iter().map(|w| w.max_body))
            .max()
            .unwrap_or(0);
        let limits = self.limits(raw.limits, largest_body);
        let state = self.state(raw.state);

        Snapshot {
            listen,
            admin,
            drain_timeout,
            max_header_bytes,
            providers,
            routes,
            sandbox,
            webhooks,
            audit,
            pins,
            limits,
            state,
            secrets: Vec::new(),
        }
    }
}

fn unknown_provider(name: &str, defined: &BTreeSet<String>) -> String {
    let known: Vec<&str> = defined.iter().map(String::as_str).collect();
    if known.is_empty() {
        format!("unknown provider \"{name}\" (no providers are defined)")
    } else {
        format!(
            "unknown provider \"{name}\" (defined: {})",
            known.join(", ")
        )
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn a_missing_environment_variable_is_named() {
        let text = config("    auth:\n      value_env: PSP_API_KEY\n", "", "");
        let p = only_problem(&text);
        assert_problem(
            &p,
            "providers.psp.auth.value_env",
            &text,
            "value_env",
            "PSP_API_KEY",
        );

        let text = config("", "", "admin:\n  token_env: SWITCHYARD_ADMIN_TOKEN\n");
        let p = only_problem(&text);
        assert_problem(
            &p,
            "admin.token_env",
            &text,
            "token_env",
            "SWITCHYARD_ADMIN_TOKEN",
        );
    }

    #[test]
    fn a_secret_comes_from_exactly_one_source() {
        let text = config(
            "    auth:\n      value_env: PSP_API_KEY\n      value_file: psp.key\n",
            "",
            "",
        );
        let secrets = Secrets::default()
            .with("PSP_API_KEY", "a")
            .with("/etc/switchyard/psp.key", "b");
        let p = only_problem_with(&text, &secrets);
        assert_eq!(p.path, "providers.psp.auth.value");
        assert_eq!(p.line, Some(line_of(&text, "auth:")));
        assert!(p.message.contains("not both"), "{p:?}");

        let text = config("    auth: { header: X-Api-Key }\n", "", "");
        assert_problem(
            &only_problem(&text),
            "providers.psp.auth",
            &text,
            "auth:",
            "set value_env or value_file",
        );

        let text = config(
            "",
            "",
            "admin:\n  token_env: A\n  token_file: admin.token\n",
        );
        let secrets = Secrets::default()
            .with("A", "a")
            .with("/etc/switchyard/admin.token", "b");
        let p = only_problem_with(&text, &secrets);
        assert_eq!(p.path, "admin.token");
        assert!(p.message.contains("not both"), "{p:?}");

        let text = config("    auth: { value_env: \"\" }\n", "", "");
        let p = only_problem(&text);
        assert_eq!(p.path, "providers.psp.auth.value");
        assert!(p.message.contains("empty"), "{p:?}");
    }

    #[test]
    fn a_secret_that_cannot_be_a_header_value_is_rejected_without_showing_it() {
        let text = config("    auth: { value_env: PSP_API_KEY }\n", "", "");
        let secrets = Secrets::default().with("PSP_API_KEY", "sk_live\nX-Evil: 1");
        let p = only_problem_with(&text, &secrets);
        assert_problem(
            &p,
            "providers.psp.auth.value_env",
            &text,
            "value_env",
            "not allowed in an HTTP header",
        );
        assert!(p.message.contains("PSP_API_KEY"), "{p:?}");
        assert!(!p.message.contains("sk_live"), "{p:?}");
    }

    #[test]
    fn a_file_secret_loses_its_trailing_newline_and_is_never_shown() {
        let text = config(
            "    auth: { value_file: secrets/psp.key }\n",
            "",
            "admin:\n  listen: 0.0.0.0:9901\n  token_file: /run/admin.token\n",
        );
        let secrets = Secrets::default()
            .with("/etc/switchyard/secrets/psp.key", "sk_live_file\n")
            .with("/run/admin.token", "adm1n-t0ken\r\n");
        let s = valid_with(&text, &secrets);

        let auth = match &s.providers["psp"].auth {
            Some(a) => a,
            None => panic!("no auth"),
        };
        assert_eq!(auth.value.header_value(), "sk_live_file");
        let token = match &s.admin.token {
            Some(t) => t,
            None => panic!("no admin token"),
        };
        assert!(token.matches(b"adm1n-t0ken"));

        let debug = format!("{s:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains("sk_live_file"), "{debug}");
        assert!(!debug.contains("adm1n-t0ken"), "{debug}");
        assert_eq!(format!("{:?}", auth.value), "Secret(<redacted>)");

        let uses: Vec<(&str, &SecretRef)> = s
            .secrets
            .iter()
            .map(|u| (u.path.as_str(), &u.source))
            .collect();
        assert_eq!(
            uses,
            [
                (
                    "admin.token_file",
                    &SecretRef::File(PathBuf::from("/run/admin.token"))
                ),
                (
                    "providers.psp.auth.value_file",
                    &SecretRef::File(PathBuf::from("/etc/switchyard/secrets/psp.key"))
                ),
            ]
        );
    }

    #[test]
    fn empty_secrets_are_refused_at_their_key() {
        let admin_env = "admin:\n  listen: 127.0.0.1:9901\n  token_env: ADMIN_TOKEN\n";
        for value in ["", "\n", "   ", " \t\r\n"] {
            let text = config("", "", admin_env);
            let p = only_problem_with(&text, &Secrets::default().with("ADMIN_TOKEN", value));
            assert_problem(&p, "admin.token_env", &text, "token_env", "is empty");
            assert!(p.message.contains("ADMIN_TOKEN"), "{p:?}");
        }

        let admin_file = "admin:\n  listen: 127.0.0.1:9901\n  token_file: /run/admin.token\n";
        let text = config("", "", admin_file);
        let p = only_problem_with(&text, &Secrets::default().with("/run/admin.token", "\n\n"));
        assert_problem(&p, "admin.token_file", &text, "token_file", "is empty");

        let auth = "    auth: { value_env: PSP_KEY }\n";
        let text = config(auth, "", "");
        for value in ["", "\n", "  "] {
            let p = only_problem_with(&text, &Secrets::default().with("PSP_KEY", value));
            assert_problem(
                &p,
                "providers.psp.auth.value_env",
                &text,
                "value_env",
                "is empty",
            );
        }

        let auth = "    auth: { header: X-Api-Key, value_file: psp.key }\n";
        let text = config(auth, "", "");
        let p = only_problem_with(
            &text,
            &Secrets::default().with("/etc/switchyard/psp.key", ""),
        );
        assert_problem(
            &p,
            "providers.psp.auth.value_file",
            &text,
            "value_file",
            "is empty",
        );
    }
}
