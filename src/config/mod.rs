//! `routes.yaml`: its serde mirror (`schema`), the typed domain model the proxy runs on (`model`), the
//! checks that turn the one into the other (`validate`), where secrets come from (`secrets`), and the
//! file watch that triggers a reload (`reload`).
//!
//! Parsing and validation are pure functions of the text (secrets come through a [`SecretSource`]), so
//! they are tested with inline YAML; reading the file is the caller's business.

mod locate;
pub mod model;
pub mod reload;
pub mod schema;
pub mod secrets;
mod units;
pub mod validate;

use std::path::Path;

use yaml_rust2::parser::{Event, Parser};

pub use locate::Lines;
pub use model::*;
pub use secrets::{
    EnvAndFiles, MapSecrets, PlaceholderSecrets, Secret, SecretRef, SecretSource, SecretUse,
};
pub use units::{parse_duration, parse_size};
pub use validate::Problem;

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
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("the config is {size} bytes, more than the limit of {limit} bytes (4 MiB)")]
    TooLarge {
        /// Its size, or at least how much was read before giving up.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// Mappings and lists nest deeper than [`MAX_NESTING`].
    #[error("line {line}: mappings and lists nest deeper than the limit of {limit} levels")]
    TooDeep {
        /// Where the limit was crossed (1-based).
        line: usize,
        /// The limit.
        limit: usize,
    },
    /// The file is not UTF-8 text.
    #[error("line {line}: not UTF-8 text (byte {byte} of the file); save the file as UTF-8")]
    NotUtf8 {
        /// The line of the first byte that is not UTF-8 (1-based).
        line: usize,
        /// Its offset in the file (0-based).
        byte: usize,
    },
    /// The YAML is malformed or does not fit the schema (unknown key, wrong type).
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
    /// Loading stopped before it finished (the loading thread was cancelled or panicked).
    #[error("loading the config stopped: {0}")]
    Aborted(String),
    /// The YAML fits the schema but its values are wrong.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Largest config file (or text) accepted: far beyond any real config, small enough that parsing
/// cannot take long or much memory.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Deepest nesting of mappings and lists accepted. A real config nests about six levels; a pathological
/// one (100 000 levels) would otherwise take tens of seconds to refuse.
pub const MAX_NESTING: usize = 64;

/// Parses and validates config text. `base_dir` resolves relative file names. Texts larger than
/// [`MAX_CONFIG_BYTES`] or nested deeper than [`MAX_NESTING`] are refused before parsing.
pub fn load(
    text: &str,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Result<Snapshot, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            size: text.len() as u64,
            limit: MAX_CONFIG_BYTES,
        });
    }
    check_nesting(text, MAX_NESTING)?;
    let raw = schema::from_yaml(text)?;
    validate::validate(raw, base_dir, secrets).map_err(|mut problems| {
        let lines = Lines::index(text);
        for p in &mut problems {
            p.line = lines.line_of(&p.path);
        }
        ConfigError::Invalid(problems)
    })
}

/// Walks the event stream of `text` and fails at the first node nested deeper than `limit`. Syntax
/// errors are left to the deserialiser, which reports them with their line.
fn check_nesting(text: &str, limit: usize) -> Result<(), ConfigError> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            // The scanner has its own, higher, bound on flow nesting ('[' and '{'); it is this limit
            // that was crossed, however the scanner words it.
            Err(e) if e.info().contains("recursion limit") => {
                return Err(ConfigError::TooDeep {
                    line: e.marker().line(),
                    limit,
                })
            }
            Err(_) => return Ok(()),
        };
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                depth += 1;
                if depth > limit {
                    return Err(ConfigError::TooDeep {
                        line: mark.line(),
                        limit,
                    });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            Event::StreamEnd => return Ok(()),
            _ => {}
        }
    }
}

/// Reads a config file: at most [`MAX_CONFIG_BYTES`], and UTF-8 text.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let io = |source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file at the limit from a larger one.
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(ConfigError::TooLarge {
            size,
            limit: MAX_CONFIG_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let byte = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..byte].iter().filter(|&&b| b == b'\n').count();
        ConfigError::NotUtf8 { line, byte }
    })
}

/// Reads, parses and validates a config file; also returns its text (for the digest).
pub fn load_file(
    path: &Path,
    secrets: &dyn SecretSource,
) -> Result<(Snapshot, String), ConfigError> {
    let text = read_file(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let snapshot = load(&text, base, secrets)?;
    Ok((snapshot, text))
}

#[cfg(test)]
mod tests;
