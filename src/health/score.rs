//! Where traffic goes, as pure arithmetic over health scores.
//!
//! A route's targets are grouped by priority. Each priority level's health is the weighted mean of its
//! targets' health. As in Envoy's priority load, priority P keeps `min(1, overprovisioning × health_P)`
//! of the traffic that is left, and the rest spills to the next priority (the backup channel). When the
//! levels together cannot take all traffic, the loads are scaled up to 100 % over those that can: a
//! half-healthy primary with a dead backup still gets everything, rather than refusing requests. Within a
//! level, traffic is split by `weight × health`.

use smallvec::SmallVec;

/// Per-target values of a route, inline up to 4 targets (no heap allocation per request).
pub type PerTarget<T> = SmallVec<[T; 4]>;

/// One target's inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetInput {
    /// Its priority (lower is preferred).
    pub priority: u32,
    /// Its configured weight.
    pub weight: u32,
    /// Its provider's health in [0, 1].
    pub health: f64,
}

/// Each target's share of the route's traffic, in input order. All zero when no target has health.
pub fn shares(targets: &[TargetInput], overprovisioning: f64) -> PerTarget<f64> {
    let mut out: PerTarget<f64> = smallvec::smallvec![0.0; targets.len()];
    let mut left = 1.0_f64;
    // Priority levels in ascending order, each once, without sorting a copy.
    let mut next = targets.iter().map(|t| t.priority).min();
    while let Some(p) = next {
        next = targets.iter().map(|t| t.priority).filter(|&q| q > p).min();
        let level = || (0..targets.len()).filter(move |&i| targets[i].priority == p);
        let total_weight: f64 = level().map(|i| f64::from(targets[i].weight)).sum();
        let weighted_health: f64 = level()
            .map(|i| f64::from(targets[i].weight) * targets[i].health.clamp(0.0, 1.0))
            .sum();
        if total_weight <= 0.0 || weighted_health <= 0.0 {
            continue;
        }
        let level_health = weighted_health / total_weight;
        let load = left * (overprovisioning * level_health).min(1.0);
        for i in level() {
            out[i] = load * f64::from(targets[i].weight) * targets[i].health.clamp(0.0, 1.0)
                / weighted_health;
        }
        left -= load;
        if left <= f64::EPSILON {
            break;
        }
    }
    let assigned: f64 = out.iter().sum();
    if assigned > 0.0 {
        for s in &mut out {
            *s /= assigned;
        }
    }
    out
}

/// Picks an index by share, with `unit` uniform in [0, 1). `None` when every share is zero.
pub fn pick(shares: &[f64], unit: f64) -> Option<usize> {
    let total: f64 = shares.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = unit.clamp(0.0, 1.0) * total;
    let mut last = None;
    for (i, &s) in shares.iter().enumerate() {
        if s <= 0.0 {
            continue;
        }
        last = Some(i);
        if x < s {
            return Some(i);
        }
        x -= s;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(priority: u32, weight: u32, health: f64) -> TargetInput {
        TargetInput {
            priority,
            weight,
            health,
        }
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn healthy_primary_keeps_everything() {
        close(&shares(&[t(0, 100, 1.0), t(1, 100, 1.0)], 1.4), &[1.0, 0.0]);
    }

    #[test]
    fn half_healthy_primary_keeps_seventy_percent() {
        close(&shares(&[t(0, 100, 0.5), t(1, 100, 1.0)], 1.4), &[0.7, 0.3]);
    }

    #[test]
    fn dead_primary_sends_everything_to_the_backup() {
        close(&shares(&[t(0, 100, 0.0), t(1, 100, 1.0)], 1.4), &[0.0, 1.0]);
    }

    #[test]
    fn a_primary_above_the_overprovisioning_point_keeps_all() {
        // 1.4 × 0.75 > 1: a little sickness does not move traffic.
        close(
            &shares(&[t(0, 100, 0.75), t(1, 100, 1.0)], 1.4),
            &[1.0, 0.0],
        );
    }

    #[test]
    fn loads_scale_up_when_the_backup_is_dead_too() {
        close(&shares(&[t(0, 100, 0.5), t(1, 100, 0.0)], 1.4), &[1.0, 0.0]);
        close(&shares(&[t(0, 100, 0.0), t(1, 100, 0.0)], 1.4), &[0.0, 0.0]);
    }

    #[test]
    fn weights_split_a_level() {
        close(
            &shares(&[t(0, 300, 1.0), t(0, 100, 1.0), t(1, 100, 1.0)], 1.4),
            &[0.75, 0.25, 0.0],
        );
        // Health scales the weight: equal weights, one at half health.
        let s = shares(&[t(0, 100, 1.0), t(0, 100, 0.5)], 1.4);
        close(&s, &[2.0 / 3.0, 1.0 / 3.0]);
    }

    #[test]
    fn three_levels_spill_in_order() {
        // P0 at 25 % keeps 35 %; P1 at 50 % keeps 70 % of the 65 % left; P2 gets the rest.
        let s = shares(&[t(0, 1, 0.25), t(1, 1, 0.5), t(2, 1, 1.0)], 1.4);
        close(&s, &[0.35, 0.455, 0.195]);
    }

    #[test]
    fn pick_follows_shares() {
        let s = [0.7, 0.0, 0.3];
        assert_eq!(pick(&s, 0.0), Some(0));
        assert_eq!(pick(&s, 0.69), Some(0));
        assert_eq!(pick(&s, 0.71), Some(2));
        assert_eq!(pick(&s, 0.999_999), Some(2));
        assert_eq!(pick(&[0.0, 0.0], 0.5), None);
    }
}
