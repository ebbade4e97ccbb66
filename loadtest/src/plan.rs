//! The request plan: which Idempotency-Key each request carries.
//!
//! Slot `i` of a run is a pure function of the seed and `i`, so a run can be repeated exactly and the
//! open and closed models share one plan. A slot is a fresh payment (its own key), a re-send of an
//! earlier slot's key (as a shop retries after a timeout or a crash), or a pair: two requests with
//! the same new key sent at the same moment (a double click, two workers picking up one order).

/// What a slot sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// One request with a new key.
    Fresh,
    /// One request re-sending the key of an earlier slot.
    Resend,
    /// Two concurrent requests with the same new key.
    Pair,
}

/// One slot of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its position in the run.
    pub index: u64,
    /// The key it sends (the index of the slot that first used it).
    pub key: u64,
    /// What it sends.
    pub kind: SlotKind,
}

impl Slot {
    /// How many requests it sends.
    pub fn requests(&self) -> usize {
        match self.kind {
            SlotKind::Pair => 2,
            _ => 1,
        }
    }
}

/// How far back a re-send reaches, in slots.
const RESEND_WINDOW: u64 = 1000;

/// The plan of a run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    seed: u64,
    resend_ratio: f64,
    concurrent_share: f64,
}

impl Plan {
    /// A plan where a share `resend_ratio` of slots re-send a key, `concurrent_share` of those as a
    /// concurrent pair.
    pub fn new(seed: u64, resend_ratio: f64, concurrent_share: f64) -> Self {
        Self {
            seed,
            resend_ratio: resend_ratio.clamp(0.0, 1.0),
            concurrent_share: concurrent_share.clamp(0.0, 1.0),
        }
    }

    /// Mean requests per slot: the slot rate is the request rate divided by this.
    pub fn requests_per_slot(&self) -> f64 {
        1.0 + self.resend_ratio * self.concurrent_share
    }

    fn kind(&self, i: u64) -> SlotKind {
        let r = unit(self.seed, i, 0x5107);
        let late = self.resend_ratio * (1.0 - self.concurrent_share);
        if i > 0 && r < late {
            SlotKind::Resend
        } else if r < self.resend_ratio {
            SlotKind::Pair
        } else {
            SlotKind::Fresh
        }
    }

    /// Slot `i`.
    pub fn slot(&self, i: u64) -> Slot {
        let kind = self.kind(i);
        let mut j = i;
        while self.kind(j) == SlotKind::Resend {
            // j > 0 here: slot 0 is never a re-send.
            let back = 1 + mix(self.seed ^ mix(j ^ 0xBAC4)) % j.min(RESEND_WINDOW);
            j -= back;
        }
        Slot {
            index: i,
            key: j,
            kind,
        }
    }
}

impl Plan {
    /// Whether a later slot, within four re-send windows, re-sends key `key`. Its first request may
    /// then meet that re-send in flight (a stall can even let the re-send overtake it, when it goes
    /// out a few slots later on another connection), so a 409 "key in flight" to it is expected, not
    /// a failure. Asked only for a 409: it looks at up to 4 000 slots.
    pub fn is_resent(&self, key: u64) -> bool {
        (key + 1..=key + 4 * RESEND_WINDOW)
            .any(|j| self.kind(j) == SlotKind::Resend && self.slot(j).key == key)
    }
}

/// The amount charged for a key: the same on every re-send, so a provider sees the same body.
pub fn amount(key: u64) -> u64 {
    100 + key % 9_900
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from the seed, the slot and a salt.
fn unit(seed: u64, i: u64, salt: u64) -> f64 {
    (mix(seed ^ mix(i ^ salt)) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_proportion() {
        let plan = Plan::new(7, 0.3, 0.5);
        let again = Plan::new(7, 0.3, 0.5);
        let n = 20_000;
        let mut resend = 0;
        for i in 0..n {
            let s = plan.slot(i);
            assert_eq!(s, again.slot(i));
            match s.kind {
                SlotKind::Resend => {
                    resend += 1;
                    assert!(s.key < i, "a re-send uses an earlier key");
                    assert!(i - s.key <= 1000 * 20);
                    assert_ne!(plan.slot(s.key).kind, SlotKind::Resend);
                }
                SlotKind::Pair | SlotKind::Fresh => assert_eq!(s.key, i),
            }
        }
        let share = |c: i32| c as f64 / n as f64;
        assert!((share(resend) - 0.15).abs() < 0.02, "{}", share(resend));
        assert!((share(pair_count(&plan, n)) - 0.15).abs() < 0.02);
        assert!((plan.requests_per_slot() - 1.15).abs() < 1e-9);
    }

    fn pair_count(plan: &Plan, n: u64) -> i32 {
        (0..n)
            .filter(|&i| plan.slot(i).kind == SlotKind::Pair)
            .count() as i32
    }

    #[test]
    fn a_key_is_resent_when_a_later_slot_sends_it_again() {
        let plan = Plan::new(7, 0.3, 0.5);
        let resent: Vec<u64> = (1..5_000)
            .filter(|&i| plan.slot(i).kind == SlotKind::Resend)
            .map(|i| plan.slot(i).key)
            .collect();
        assert!(!resent.is_empty());
        for &k in &resent {
            assert!(plan.is_resent(k), "key {k} is re-sent");
        }
        // A fresh key no slot sends again.
        let lonely = (0..1_000)
            .filter(|&k| plan.slot(k).kind == SlotKind::Fresh)
            .find(|&k| !((k + 1)..(k + 4_001)).any(|j| plan.slot(j).key == k))
            .expect("some key is sent once");
        assert!(!plan.is_resent(lonely));
        assert!(!Plan::new(1, 0.0, 0.5).is_resent(3));
    }

    #[test]
    fn no_resends_when_off() {
        let plan = Plan::new(1, 0.0, 0.5);
        assert!((0..1000).all(|i| plan.slot(i).kind == SlotKind::Fresh));
        assert_eq!(amount(3), amount(3));
    }
}
