use super::ewma::PeakEwma;
use super::*;
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Fake {
    in_flight: u32,
    ewma: PeakEwma,
    down: bool,
}

impl Fake {
    fn new() -> Self {
        Fake {
            in_flight: 0,
            ewma: PeakEwma::new(Duration::from_millis(30), Nanos(0)),
            down: false,
        }
    }
}

const DECAY: Duration = Duration::from_secs(10);

impl LoadView for Fake {
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
    fn latency_ns(&self, now: Nanos) -> f64 {
        self.ewma.estimate(now, DECAY)
    }
    fn available(&self, _now: Nanos) -> bool {
        !self.down
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect()
}

fn balancer(kind: BalancerKind, weights: &[u32]) -> Balancer {
    let ns = names(weights.len());
    let refs: Vec<&str> = ns.iter().map(String::as_str).collect();
    Balancer::new(kind, &refs, weights, 2)
}

fn input(now: Nanos, worker: usize, key_hash: Option<u64>) -> PickInput {
    PickInput::new(now, worker, key_hash)
}

#[test]
fn round_robin_follows_weights_exactly_per_worker() {
    let b = balancer(BalancerKind::RoundRobin, &[5, 3, 2]);
    let eps = vec![Fake::new(); 3];
    let mut rng = SmallRng::seed_from_u64(1);
    let mut counts = [0u32; 3];
    for n in 0..10_000 {
        let i = b
            .pick(&eps, &input(Nanos(0), n % 2, None), &mut rng)
            .unwrap();
        counts[i] += 1;
    }
    assert_eq!(counts, [5000, 3000, 2000]);
}

#[test]
fn least_request_prefers_idle_endpoints() {
    let b = balancer(BalancerKind::LeastRequest, &[1, 1, 1]);
    let mut eps = vec![Fake::new(); 3];
    eps[0].in_flight = 5;
    eps[1].in_flight = 1;
    eps[2].in_flight = 3;
    let mut rng = SmallRng::seed_from_u64(2);
    for _ in 0..100 {
        assert_eq!(b.pick(&eps, &input(Nanos(0), 0, None), &mut rng), Some(1));
    }
    // weight 4 with 3 in flight scores (3+1)/4 = 1 < (1+1)/1
    let b = balancer(BalancerKind::LeastRequest, &[4, 1, 1]);
    eps[0].in_flight = 3;
    assert_eq!(b.pick(&eps, &input(Nanos(0), 0, None), &mut rng), Some(0));
}

#[test]
fn zero_weight_endpoints_get_nothing() {
    for kind in [
        BalancerKind::RoundRobin,
        BalancerKind::LeastRequest,
        BalancerKind::P2cPeakEwma,
        BalancerKind::ConsistentHash,
    ] {
        let b = balancer(kind, &[1, 0, 1]);
        let eps = vec![Fake::new(); 3];
        let mut rng = SmallRng::seed_from_u64(3);
        for k in 0..1000u64 {
            let i = b.pick(
                &eps,
                &input(Nanos(k), 0, Some(k.wrapping_mul(0x9e37_79b9))),
                &mut rng,
            );
            assert_ne!(i, Some(1), "{kind:?}");
        }
        let none = balancer(kind, &[0, 0]);
        assert_eq!(
            none.pick(&eps[..2], &input(Nanos(0), 0, Some(1)), &mut rng),
            None
        );
    }
}

#[test]
fn consistent_hash_is_sticky() {
    let b = balancer(BalancerKind::ConsistentHash, &[1, 1, 1, 1]);
    let eps = vec![Fake::new(); 4];
    let mut rng = SmallRng::seed_from_u64(4);
    for key in 0..200u64 {
        let h = hash::hash64(&key.to_le_bytes(), 0);
        let first = b.pick(&eps, &input(Nanos(0), 0, Some(h)), &mut rng);
        for _ in 0..5 {
            assert_eq!(b.pick(&eps, &input(Nanos(0), 1, Some(h)), &mut rng), first);
        }
    }
}

/// A small closed-loop simulation: `clients` each send a request, wait for it, repeat.
/// Endpoint 2 is ten times slower. P2C peak-EWMA must starve it.
#[test]
fn p2c_peak_ewma_avoids_a_slow_endpoint() {
    let b = balancer(BalancerKind::P2cPeakEwma, &[1, 1, 1]);
    let latency = [
        Duration::from_millis(5),
        Duration::from_millis(5),
        Duration::from_millis(50),
    ];
    let mut eps = vec![Fake::new(); 3];
    let mut rng = SmallRng::seed_from_u64(5);
    // (finish time, client, endpoint)
    let mut pending: Vec<(Nanos, usize)> = Vec::new();
    let mut counts = [0u32; 3];
    let mut now = Nanos(0);
    let clients = 8;
    for _ in 0..clients {
        let i = b.pick(&eps, &input(now, 0, None), &mut rng).unwrap();
        eps[i].in_flight += 1;
        counts[i] += 1;
        pending.push((now.saturating_add(latency[i]), i));
    }
    while counts.iter().sum::<u32>() < 20_000 {
        pending.sort_by_key(|p| std::cmp::Reverse(p.0));
        let (t, i) = pending.pop().unwrap();
        now = t;
        eps[i].in_flight -= 1;
        eps[i].ewma.observe(latency[i], now, DECAY);
        let j = b.pick(&eps, &input(now, 0, None), &mut rng).unwrap();
        eps[j].in_flight += 1;
        counts[j] += 1;
        pending.push((now.saturating_add(latency[j]), j));
    }
    let share = f64::from(counts[2]) / f64::from(counts.iter().sum::<u32>());
    assert!(
        share < 0.02,
        "slow endpoint got {share:.3} of traffic: {counts:?}"
    );
}

proptest! {
    #[test]
    fn picks_are_always_eligible(
        weights in prop::collection::vec(0u32..10, 1..20),
        in_flight in prop::collection::vec(0u32..100, 20),
        seed in any::<u64>(),
        key in prop::option::of(any::<u64>()),
    ) {
        for kind in [BalancerKind::RoundRobin, BalancerKind::LeastRequest, BalancerKind::P2cPeakEwma, BalancerKind::ConsistentHash] {
            let b = balancer(kind, &weights);
            let eps: Vec<Fake> = (0..weights.len()).map(|i| Fake { in_flight: in_flight[i], ..Fake::new() }).collect();
            let mut rng = SmallRng::seed_from_u64(seed);
            let pick = b.pick(&eps, &input(Nanos(seed % 1_000_000), (seed % 3) as usize, key), &mut rng);
            match pick {
                None => prop_assert!(weights.iter().all(|&w| w == 0)),
                Some(i) => prop_assert!(weights[i] > 0, "{:?} picked zero-weight {}", kind, i),
            }
        }
    }

    #[test]
    fn least_request_never_picks_a_strictly_busier_endpoint(
        in_flight in prop::collection::vec(0u32..50, 2..8),
        seed in any::<u64>(),
    ) {
        let b = balancer(BalancerKind::LeastRequest, &vec![1; in_flight.len()]);
        let eps: Vec<Fake> = in_flight.iter().map(|&f| Fake { in_flight: f, ..Fake::new() }).collect();
        let mut rng = SmallRng::seed_from_u64(seed);
        let i = b.pick(&eps, &input(Nanos(0), 0, None), &mut rng).unwrap();
        prop_assert_eq!(in_flight[i], *in_flight.iter().min().unwrap());
    }
}

const KINDS: [BalancerKind; 4] = [
    BalancerKind::RoundRobin,
    BalancerKind::LeastRequest,
    BalancerKind::P2cPeakEwma,
    BalancerKind::ConsistentHash,
];

proptest! {
    /// Unavailable and avoided endpoints are never picked while the cluster is above the
    /// panic threshold and something else is left; in panic mode every endpoint is fair game
    /// except the avoided ones.
    #[test]
    fn availability_avoid_and_panic(
        kind in 0usize..4,
        down in prop::collection::vec(any::<bool>(), 1..12),
        avoid in any::<u64>(),
        seed in any::<u64>(),
        key in any::<u64>(),
    ) {
        let n = down.len();
        let kind = KINDS[kind];
        let b = balancer(kind, &vec![1; n]);
        let eps: Vec<Fake> = down.iter().map(|&d| Fake { down: d, ..Fake::new() }).collect();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut inp = input(Nanos(1), 0, Some(key));
        inp.avoid = avoid;
        let avoided = |i: usize| avoid & (1 << i) != 0;
        let available = down.iter().filter(|d| !**d).count();
        let panic = (available as f64) < 0.5 * n as f64;
        let usable = (0..n).filter(|&i| (panic || !down[i]) && !avoided(i)).count();
        for _ in 0..20 {
            let got = b.pick(&eps, &inp, &mut rng);
            match got {
                None => prop_assert!(!panic && available == 0, "nothing picked with {available} up"),
                Some(i) => {
                    prop_assert!(i < n);
                    if !panic { prop_assert!(!down[i], "picked a down endpoint {i}"); }
                    if usable > 0 { prop_assert!(!avoided(i), "picked avoided {i} with {usable} usable"); }
                }
            }
        }
    }
}

#[test]
fn consistent_hash_moves_only_the_keys_of_an_unavailable_endpoint() {
    let b = balancer(BalancerKind::ConsistentHash, &[1, 1, 1, 1]);
    let mut eps = vec![Fake::new(); 4];
    let mut rng = SmallRng::seed_from_u64(1);
    let keys: Vec<u64> = (0..2000u64)
        .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let before: Vec<usize> = keys
        .iter()
        .map(|&k| {
            b.pick(&eps, &input(Nanos(1), 0, Some(k)), &mut rng)
                .unwrap()
        })
        .collect();
    eps[2].down = true;
    for (k, &was) in keys.iter().zip(&before) {
        let now = b
            .pick(&eps, &input(Nanos(1), 0, Some(*k)), &mut rng)
            .unwrap();
        if was != 2 {
            assert_eq!(now, was, "a key of a healthy endpoint moved");
        } else {
            assert_ne!(now, 2);
        }
    }
}
