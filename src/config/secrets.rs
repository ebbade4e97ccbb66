//! Secrets the config names (`*_env`, `*_file`): where each comes from, the value type that never
//! shows itself, and the reader the validator asks for values.
//!
//! Reading is behind [`SecretSource`], so validation stays a pure function of the text: the running
//! proxy reads the process environment and the file system ([`EnvAndFiles`]), tests pass a
//! [`MapSecrets`] and never touch the process environment.

use std::collections::HashMap;
use std::path::PathBuf;

use http::HeaderValue;

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (its content, trailing newline removed).
    File(PathBuf),
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A secret the config reads: where it is used and where it comes from.
#[derive(Debug, Clone)]
pub struct SecretUse {
    /// YAML path of the key that names it.
    pub path: String,
    /// Its source.
    pub source: SecretRef,
}

/// A secret value. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(HeaderValue);

impl Secret {
    /// Wraps a header value, marking it sensitive.
    pub(crate) fn new(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        Self(value)
    }

    /// The value as a header value (marked sensitive, so HTTP/2 never indexes it).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// Compares with `candidate` in time that depends neither on where they differ nor on the
    /// candidate's length: their SHA-256 digests are compared, every byte.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        let mine = Sha256::digest(self.0.as_bytes());
        let theirs = Sha256::digest(candidate);
        mine.iter()
            .zip(theirs.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What the validator needs from the outside world: secret values.
pub trait SecretSource: Send + Sync {
    /// The value of `secret`, or why it cannot be read.
    fn read(&self, secret: &SecretRef) -> Result<String, String>;
}

/// Reads secrets from the process environment and the file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvAndFiles;

impl SecretSource for EnvAndFiles {
    fn read(&self, secret: &SecretRef) -> Result<String, String> {
        match secret {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Accepts every secret with a placeholder value: for `check --allow-missing-secrets`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlaceholderSecrets;

impl SecretSource for PlaceholderSecrets {
    fn read(&self, _: &SecretRef) -> Result<String, String> {
        Ok("placeholder".to_owned())
    }
}

/// Secrets from an in-memory table, keyed by environment variable name or by the resolved file path.
/// For tests, and for embedding the proxy without reading the process environment.
#[derive(Debug, Default, Clone)]
pub struct MapSecrets(HashMap<String, String>);

impl MapSecrets {
    /// An empty table: every secret is missing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the value of an environment variable name or of a file path.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }
}

impl SecretSource for MapSecrets {
    fn read(&self, secret: &SecretRef) -> Result<String, String> {
        let key = match secret {
            SecretRef::Env(name) => name.clone(),
            SecretRef::File(path) => path.display().to_string(),
        };
        self.0
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("{secret} is not set"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_only_itself_whatever_the_length_of_the_guess() {
        let s = Secret::new(HeaderValue::from_static("adm1n-t0ken"));
        assert!(s.matches(b"adm1n-t0ken"));
        for guess in [
            &b""[..],
            b"a",
            b"adm1n-t0ke",
            b"adm1n-t0kenX",
            b"ADM1N-T0KEN",
        ] {
            assert!(!s.matches(guess), "{guess:?}");
        }
    }
}
