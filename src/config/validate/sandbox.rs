//! `sandbox:` — simulated providers served in this process.

use std::collections::HashSet;

use super::{valid_name, Validator};
use crate::config::model::Sandbox;
use crate::config::schema;

impl Validator<'_> {
    /// The simulated providers, with unique plain names.
    pub(super) fn sandbox(&mut self, raw: Vec<schema::RawSandbox>) -> Vec<Sandbox> {
        let mut sandbox_names = HashSet::new();
        let mut sandbox = Vec::new();
        for (i, s) in raw.into_iter().enumerate() {
            let path = format!("sandbox[{i}]");
            if !sandbox_names.insert(s.name.clone()) {
                self.problem(
                    format!("{path}.name"),
                    format!("duplicate sandbox name \"{}\"", s.name),
                );
            }
            if !valid_name(&s.name) {
                self.problem(
                    format!("{path}.name"),
                    "sandbox names use letters, digits, '-', '_' and '.' only",
                );
            }
            let listen = self.socket_addr(&format!("{path}.listen"), Some(&s.listen), "");
            sandbox.push(Sandbox {
                name: s.name,
                listen,
            });
        }
        sandbox
    }
}
