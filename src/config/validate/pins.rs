//! `pins:` — how many payment-object ids are remembered with their provider, and for how long.

use super::Validator;
use crate::config::model::Pins;
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn pins(&mut self, raw: Option<schema::RawPins>) -> Pins {
        let d = Pins::default();
        let Some(p) = raw else { return d };
        let max_entries = p.max_entries.unwrap_or(d.max_entries);
        if max_entries == 0 {
            self.problem("pins.max_entries", "must be at least 1");
        }
        Pins {
            max_entries: max_entries.max(1),
            ttl: self.duration("pins.ttl", p.ttl.as_deref(), d.ttl),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn pins_have_defaults_bounds_and_errors_naming_their_line() {
        assert_eq!(valid(&config("", "", "")).pins, Pins::default());
        let s = valid(&config("", "", "pins:\n  max_entries: 10000\n  ttl: 30d\n"));
        assert_eq!(s.pins.max_entries, 10_000);
        assert_eq!(s.pins.ttl, Duration::from_secs(30 * 24 * 3600));
        let text = config("", "", "pins:\n  max_entries: 0\n");
        assert_problem(
            &only_problem(&text),
            "pins.max_entries",
            &text,
            "max_entries",
            "at least 1",
        );
        let text = config("", "", "pins:\n  ttl: forever\n");
        assert_problem(&only_problem(&text), "pins.ttl", &text, "ttl", "duration");
        let text = config("", "", "pins:\n  max_entires: 5\n");
        assert!(
            parse_error(&text).contains("max_entires"),
            "{}",
            parse_error(&text)
        );
    }
}
