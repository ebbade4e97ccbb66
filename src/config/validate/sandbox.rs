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

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn sandbox_names_are_unique_and_plain() {
        let text = config(
        "",
        "",
        "sandbox:\n  - { name: psp, listen: 127.0.0.1:9101 }\n  - { name: psp, listen: 127.0.0.1:9102 }\n  - { name: my psp, listen: 127.0.0.1:9103 }\n",
    );
        let all = problems(&text);
        let found: Vec<(&str, Option<usize>)> =
            all.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert_eq!(
            found,
            [("sandbox[1].name", Some(11)), ("sandbox[2].name", Some(12))],
            "{all:#?}"
        );
        assert!(all[0].message.contains("duplicate sandbox name \"psp\""));
        assert!(all[1].message.contains("letters, digits"));
    }
}
