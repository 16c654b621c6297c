//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as in Envoy.
//!
//! Each endpoint fills slots of a prime-sized table in the order of its own permutation
//! `(offset + j·skip) mod M`; heavier endpoints take turns more often. A key's slot is
//! `hash mod M`. When an endpoint is added or removed, most keys keep their endpoint
//! (minimal disruption), and every instance builds the same table from the same endpoints.

use super::hash::hash64;

/// Table size: prime, ≥ 100 × the endpoints we expect, as the paper recommends.
pub const TABLE_SIZE: usize = 65_537;

#[derive(Debug, Clone)]
pub struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// Build a table over `names` (stable endpoint identities) with `weights`. Returns `None`
    /// if every weight is zero.
    pub fn new(names: &[&str], weights: &[u32]) -> Option<Maglev> {
        Self::with_size(names, weights, TABLE_SIZE)
    }

    pub fn with_size(names: &[&str], weights: &[u32], m: usize) -> Option<Maglev> {
        let max_w = weights.iter().copied().max().unwrap_or(0);
        if max_w == 0 || m == 0 {
            return None;
        }
        struct Entry {
            idx: u32,
            offset: u64,
            skip: u64,
            next: u64,
            weight: f64,
            target: f64,
        }
        let m64 = m as u64;
        let mut entries: Vec<Entry> = names
            .iter()
            .zip(weights)
            .enumerate()
            .filter(|(_, (_, &w))| w > 0)
            .map(|(i, (name, &w))| Entry {
                idx: i as u32,
                offset: hash64(name.as_bytes(), 0x6d61_676c) % m64,
                skip: hash64(name.as_bytes(), 0x736b_6970) % (m64.max(2) - 1) + 1,
                next: 0,
                weight: f64::from(w) / f64::from(max_w),
                target: 0.0,
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m];
        let mut filled = 0usize;
        let mut iteration = 1u64;
        while filled < m {
            for e in entries.iter_mut() {
                if filled >= m {
                    break;
                }
                // An endpoint of weight w (relative to the heaviest) takes a turn once every 1/w
                // iterations.
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += 1.0;
                let mut c = ((e.offset + e.skip * e.next) % m64) as usize;
                while table[c] != EMPTY {
                    e.next += 1;
                    c = ((e.offset + e.skip * e.next) % m64) as usize;
                }
                table[c] = e.idx;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Some(Maglev {
            table: table.into_boxed_slice(),
        })
    }

    /// Endpoint index for a key hash.
    #[inline]
    pub fn lookup(&self, key_hash: u64) -> u32 {
        self.table[(key_hash % self.table.len() as u64) as usize]
    }

    #[cfg(test)]
    fn table(&self) -> &[u32] {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn equal_weights_share_the_table_evenly() {
        let ns = names(5);
        let refs: Vec<&str> = ns.iter().map(String::as_str).collect();
        let m = Maglev::new(&refs, &[1; 5]).unwrap();
        let mut counts = [0usize; 5];
        m.table().iter().for_each(|&i| counts[i as usize] += 1);
        for c in counts {
            let share = c as f64 / TABLE_SIZE as f64;
            assert!((share - 0.2).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn weights_shape_the_table() {
        let ns = names(2);
        let refs: Vec<&str> = ns.iter().map(String::as_str).collect();
        let m = Maglev::new(&refs, &[3, 1]).unwrap();
        let first = m.table().iter().filter(|&&i| i == 0).count() as f64 / TABLE_SIZE as f64;
        assert!((first - 0.75).abs() < 0.01, "{first}");
        assert!(Maglev::new(&refs, &[0, 0]).is_none());
    }

    #[test]
    fn removing_an_endpoint_moves_few_keys() {
        let ns = names(10);
        let all: Vec<&str> = ns.iter().map(String::as_str).collect();
        let before = Maglev::new(&all, &[1; 10]).unwrap();
        // Drain endpoint 3 (weight 0): only its keys should move, plus a little churn.
        let mut w = [1u32; 10];
        w[3] = 0;
        let after = Maglev::new(&all, &w).unwrap();
        let moved = before
            .table()
            .iter()
            .zip(after.table())
            .filter(|(b, a)| b != a && **b != 3)
            .count();
        assert!((moved as f64 / TABLE_SIZE as f64) < 0.03, "moved {moved}");
        assert!(after.table().iter().all(|&i| i != 3));
    }

    proptest! {
        #[test]
        fn every_slot_goes_to_a_live_endpoint(weights in prop::collection::vec(0u32..5, 1..8), key in any::<u64>()) {
            let ns = names(weights.len());
            let refs: Vec<&str> = ns.iter().map(String::as_str).collect();
            match Maglev::with_size(&refs, &weights, 1031) {
                None => prop_assert!(weights.iter().all(|&w| w == 0)),
                Some(m) => {
                    prop_assert!(m.table().iter().all(|&i| weights[i as usize] > 0));
                    prop_assert!(weights[m.lookup(key) as usize] > 0);
                }
            }
        }
    }
}
