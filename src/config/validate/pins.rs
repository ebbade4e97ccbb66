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
