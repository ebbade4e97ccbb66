//! `routes.yaml`: its serde mirror (`schema`), the checks that turn it into a typed [`Snapshot`]
//! (`validate`), and the file watch that triggers a reload (`reload`).
//!
//! Parsing and validation are pure functions of the text (secrets come through a [`SecretSource`]), so
//! they are tested with inline YAML; reading the file is the caller's business.

mod locate;
pub mod reload;
pub mod schema;
mod units;
pub mod validate;

use std::path::Path;

pub use locate::Lines;
pub use units::{parse_duration, parse_size};
pub use validate::{
    EnvAndFiles, Pins, PlaceholderSecrets, Problem, Route, SecretRef, SecretSource, Snapshot,
};

/// A table keyed by config names (providers, routes), looked up on every request. Names are the
/// operator's, not the shop's, so a fast non-keyed hash (FNV) is safe where SipHash would cost more
/// than the lookup.
pub type NameMap<V> = std::collections::HashMap<std::sync::Arc<str>, V, fnv::FnvBuildHasher>;

/// Why a config text was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not fit the schema (unknown key, wrong type).
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
    /// The YAML fits the schema but its values are wrong.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Parses and validates config text. `base_dir` resolves relative file names.
pub fn load(
    text: &str,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Result<Snapshot, ConfigError> {
    let raw = schema::from_yaml(text)?;
    validate::validate(raw, base_dir, secrets).map_err(|mut problems| {
        let lines = Lines::index(text);
        for p in &mut problems {
            p.line = lines.line_of(&p.path);
        }
        ConfigError::Invalid(problems)
    })
}

/// Reads, parses and validates a config file; also returns its text (for the digest).
pub fn load_file(
    path: &Path,
    secrets: &dyn SecretSource,
) -> Result<(Snapshot, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let snapshot = load(&text, base, secrets)?;
    Ok((snapshot, text))
}

#[cfg(test)]
mod tests;
