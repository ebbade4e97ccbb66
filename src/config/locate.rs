//! Finds the line of a YAML path (`routes[0].targets[1].provider`) in the source text.
//!
//! serde reports the line of syntax and type errors itself; errors found by `validate` after
//! deserialising (an unknown provider name, a bad URL) only know their path. This module walks the
//! event stream of the same text once and records where each path starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Lines (1-based) of every path in a YAML document.
#[derive(Debug, Default)]
pub struct Lines {
    lines: HashMap<String, usize>,
}

impl Lines {
    /// Indexes `text`. A text that does not parse yields an empty index (its syntax error is reported
    /// with a line by the deserialiser).
    pub fn index(text: &str) -> Self {
        let mut recv = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut recv, false).is_err() {
            return Self::default();
        }
        Self { lines: recv.lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Recorder {
    /// The path of the node that starts now, or `None` when the event is a mapping key.
    fn node_path(&mut self, key_text: Option<&str>, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // This node is a key. Only scalar keys have a path.
                    let k = key_text.unwrap_or("?").to_owned();
                    self.lines.entry(join(path, &k)).or_insert(line);
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                self.node_path(Some(&value), line);
            }
            Event::Alias(_) => {
                self.node_path(None, line);
            }
            Event::MappingStart(..) => {
                let path = self.node_path(None, line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(None, line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_block_and_flow_paths() {
        let text = "listen: 127.0.0.1:8080\nproviders:\n  a:\n    url: http://x\nroutes:\n  - name: r\n    targets:\n      - { provider: a }\n      - provider: b\n        weight: 3\n";
        let lines = Lines::index(text);
        assert_eq!(lines.line_of("listen"), Some(1));
        assert_eq!(lines.line_of("providers.a.url"), Some(4));
        assert_eq!(lines.line_of("routes[0].name"), Some(6));
        assert_eq!(lines.line_of("routes[0].targets[0].provider"), Some(8));
        assert_eq!(lines.line_of("routes[0].targets[1].provider"), Some(9));
        assert_eq!(lines.line_of("routes[0].targets[1].weight"), Some(10));
        // A path that is not written falls back to its nearest written ancestor.
        assert_eq!(lines.line_of("routes[0].targets[1].priority"), Some(9));
        assert_eq!(lines.line_of("nothing"), None);
    }
}
