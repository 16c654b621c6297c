//! Smooth weighted round robin, precomputed.
//!
//! nginx's smooth WRR spreads each endpoint's turns evenly through the cycle (weights 5,1,1
//! give a a b a c a a, not a a a a a b c). The cycle depends only on the weights, so it is
//! computed once per policy snapshot; a pick is then an index into it. Each worker walks the
//! cycle with its own counter, so picks share no cache line across threads, and every worker's
//! traffic (hence the total) follows the weights exactly.

/// Longest cycle kept. Larger weight sums are scaled down, which keeps every non-zero weight
/// at least 1 and bounds the relative error of each share by about len/MAX_CYCLE.
pub const MAX_CYCLE: u64 = 8192;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The smooth WRR cycle for `weights`: endpoint indices in pick order. Zero weights never
/// appear; all-zero weights give an empty cycle.
pub fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x)).collect();
    let g = w.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    w.iter_mut().for_each(|x| *x /= g);
    let total: u64 = w.iter().sum();
    if total > MAX_CYCLE {
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = ((*x as f64 * MAX_CYCLE as f64 / total as f64).round() as u64).max(1);
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0usize;
        let mut best_val = i64::MIN;
        for (i, &wi) in w.iter().enumerate() {
            if wi == 0 {
                continue;
            }
            current[i] += wi as i64;
            if current[i] > best_val {
                best_val = current[i];
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nginx_example_is_smooth() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weights_are_skipped() {
        assert_eq!(smooth_cycle(&[0, 2, 0, 2]), vec![1, 3]);
        assert!(smooth_cycle(&[0, 0]).is_empty());
        assert!(smooth_cycle(&[]).is_empty());
    }

    proptest! {
        #[test]
        fn cycle_follows_weights(weights in prop::collection::vec(0u32..1000, 1..12)) {
            let cycle = smooth_cycle(&weights);
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            if total == 0 {
                prop_assert!(cycle.is_empty());
                return Ok(());
            }
            let mut counts = vec![0u64; weights.len()];
            for &i in &cycle { counts[i as usize] += 1; }
            let n = cycle.len() as f64;
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    prop_assert_eq!(counts[i], 0);
                } else {
                    prop_assert!(counts[i] >= 1);
                    let share = counts[i] as f64 / n;
                    let want = f64::from(w) / total as f64;
                    prop_assert!((share - want).abs() <= 1.0 / n + 1e-9, "i={} share={} want={}", i, share, want);
                }
            }
        }

        #[test]
        fn huge_weights_still_give_every_endpoint_a_turn(weights in prop::collection::vec(1u32..1_000_000, 1..50)) {
            let cycle = smooth_cycle(&weights);
            prop_assert!(cycle.len() as u64 <= MAX_CYCLE + weights.len() as u64);
            for i in 0..weights.len() {
                prop_assert!(cycle.contains(&(i as u32)));
            }
        }
    }
}
