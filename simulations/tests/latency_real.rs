//! The latency model on Alibaba GenTD26's monitoring (22.8 h of a Stable Diffusion service,
//! per minute): load is the summed QPS, latency the mean end-to-end inference time, in flight
//! the mean gateway backlog. The service scaled out as load rose, so latency did not rise with
//! load, and the model must say so rather than invent a saturation point.

use std::collections::BTreeMap;
use std::path::Path;
use vivremotion_datasets::{catalog, Data};
use vivremotion_models::latency::{LatencyModel, Sample};

#[test]
fn an_autoscaled_service_shows_no_saturation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets");
    let Data::Series(all) =
        catalog::load(&root, "alibaba-gentd26-monitoring").unwrap_or_else(|e| panic!("{e}"))
    else {
        panic!("monitoring is a set of series");
    };
    let by = |name: &str| -> BTreeMap<i64, f64> {
        let s = all
            .iter()
            .find(|s| s.name.contains(name))
            .unwrap_or_else(|| {
                panic!(
                    "no {name} in {:?}",
                    all.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            });
        s.ts_ms
            .iter()
            .copied()
            .zip(s.values.iter().copied())
            .collect()
    };
    let (qps, lat, queue) = (by("qps"), by("pipeline_latency_ms"), by("queue_size"));
    let samples: Vec<Sample> = qps
        .iter()
        .filter_map(|(t, &load)| {
            Some(Sample {
                load,
                inflight: queue.get(t).copied().unwrap_or(0.0),
                latency: *lat.get(t)?,
            })
        })
        .collect();
    assert!(samples.len() > 900, "{} joined minutes", samples.len());
    let m = LatencyModel::fit(&samples).unwrap_or_else(|e| panic!("{e}"));
    println!("{m:?}");
    assert_eq!(m.saturation, None, "{m:?}");
    assert!(m.per_load < 0.0, "latency fell as load rose here: {m:?}");
    assert!(m.r2 < 0.3, "{m:?}");
    assert!(m.max_load > 9.0 && m.max_load < 11.0, "{m:?}");
}
