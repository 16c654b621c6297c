//! Engine throughput: simulated requests per second of wall time on one core, with
//! P2C peak-EWMA, retries (a 2 % error burst keeps them busy) and a concurrency limit on.
//! The arrivals are prepared once, outside the timing: this measures the engine and the
//! decision core it drives. `bench/sim.sh` runs it pinned to one core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::PathBuf;
use std::time::Duration;
use vivremotion_simulations::sim;

fn engine(c: &mut Criterion) {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/sim-throughput.toml");
    let mut s = sim::scenario::load_file(&file).unwrap_or_else(|e| panic!("{e}"));
    // 10 s of the 50 000/s stream: about 500 000 requests per iteration.
    s.file.duration = Some(Duration::from_secs(10));
    let prep = sim::prepare(&s, std::path::Path::new("."), 1).unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("sim");
    g.throughput(Throughput::Elements(prep.arrivals.len() as u64));
    g.sample_size(10);
    g.bench_function("p2c_ewma_retries_limit", |b| {
        b.iter(|| {
            let r = sim::run_one(&s, &prep, "p2c-ewma", &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.totals.requests, prep.arrivals.len() as u64);
            r.totals.ok
        })
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
