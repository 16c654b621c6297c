//! The simulator's charts: latency over time per policy with the faults shaded, traffic share
//! per backend, limits, and the decision timeline.

use crate::sim::report::{Point, Results};
use plotters::prelude::*;
use std::path::Path;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A chart over simulated seconds, with any y axis (linear or log).
type Chart<'a, 'b, Y> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

/// Shades every backend fault (and surge or partition) over the chart's height.
fn shade_faults<Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, '_, Y>,
    r: &Results,
    x1: f64,
    y0: f64,
    y1: f64,
) -> Result<(), String> {
    let red = RGBColor(214, 39, 40);
    chart
        .draw_series(r.faults.iter().map(|f| {
            let a = f.from.as_secs_f64();
            let b = if f.until == std::time::Duration::MAX {
                x1
            } else {
                f.until.as_secs_f64().min(x1)
            };
            Rectangle::new([(a, y0), (b, y1)], red.mix(0.10).filled())
        }))
        .map_err(e)?;
    Ok(())
}

fn legend<'a, 'b: 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'a, 'b, Y>,
    at: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .position(at)
        .draw()
        .map_err(e)
}

fn span(r: &Results) -> f64 {
    r.series
        .values()
        .filter_map(|s| s.last().map(|p| p.t_s))
        .fold(1.0, f64::max)
}

fn fault_note(r: &Results) -> String {
    if r.faults.is_empty() {
        String::new()
    } else {
        " (faults shaded red)".into()
    }
}

/// p99 latency of successful requests per telemetry tick, one line per policy, log scale.
fn latency(r: &Results, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let x1 = span(r);
    let mut hi: f64 = 1.0;
    let mut lo: f64 = f64::INFINITY;
    for s in r.series.values() {
        for p in s.iter().filter(|p| p.p99_ms > 0.0) {
            hi = hi.max(p.p99_ms);
            lo = lo.min(p.p99_ms);
        }
    }
    let lo = if lo.is_finite() {
        (lo * 0.8).max(0.01)
    } else {
        0.1
    };
    let hi = hi * 1.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: p99 latency per {} tick{}",
                r.scenario,
                "telemetry",
                fault_note(r)
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x1, (lo..hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("simulated seconds")
        .y_desc("p99 latency, ms (log)")
        .draw()
        .map_err(e)?;
    shade_faults(&mut chart, r, x1, lo, hi)?;
    for (i, policy) in r.policies.iter().enumerate() {
        let Some(s) = r.series.get(policy) else {
            continue;
        };
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                s.iter()
                    .filter(|p| p.p99_ms > 0.0)
                    .map(|p| (p.t_s, p.p99_ms)),
                c.stroke_width(2),
            ))
            .map_err(e)?
            .label(policy.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(e)
}

fn addresses(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = r
        .series
        .values()
        .flat_map(|s| s.iter().flat_map(|p| p.tries.keys().cloned()))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn share(p: &Point, addr: &str) -> Option<f64> {
    let total: u64 = p.tries.values().sum();
    (total > 0).then(|| 100.0 * p.tries.get(addr).copied().unwrap_or(0) as f64 / total as f64)
}

/// Share of tries per backend over time: one panel per policy.
fn shares(r: &Results, path: &Path) -> Result<(), String> {
    let n = r.policies.len().max(1);
    let h = 60 + 210 * n as u32;
    let root = SVGBackend::new(path, (1200, h)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!(
                "{}: share of tries per backend{}",
                r.scenario,
                fault_note(r)
            ),
            ("sans-serif", 18),
        )
        .map_err(e)?;
    let panels = root.split_evenly((n, 1));
    let addrs = addresses(r);
    let x1 = span(r);
    for (pi, (policy, area)) in r.policies.iter().zip(panels.iter()).enumerate() {
        let Some(s) = r.series.get(policy) else {
            continue;
        };
        let last = pi + 1 == n;
        let mut chart = ChartBuilder::on(area)
            .caption(policy.as_str(), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(if last { 36 } else { 18 })
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x1, 0.0..100.0)
            .map_err(e)?;
        let mut mesh = chart.configure_mesh();
        mesh.y_desc("% of tries");
        if last {
            mesh.x_desc("simulated seconds");
        }
        mesh.draw().map_err(e)?;
        shade_faults(&mut chart, r, x1, 0.0, 100.0)?;
        for (ai, a) in addrs.iter().enumerate() {
            let c = color(ai);
            let series = chart
                .draw_series(LineSeries::new(
                    s.iter().filter_map(|p| Some((p.t_s, share(p, a)?))),
                    c.stroke_width(2),
                ))
                .map_err(e)?;
            if pi == 0 {
                series.label(a.clone()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2))
                });
            }
        }
        if pi == 0 {
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
    }
    root.present().map_err(e)
}

/// The concurrency limit in force (where the route has one) and requests shed per tick.
fn limits(r: &Results, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            &format!(
                "{}: limits in force and requests refused{}",
                r.scenario,
                fault_note(r)
            ),
            ("sans-serif", 18),
        )
        .map_err(e)?;
    let (top, bottom) = root.split_vertically(330);
    let x1 = span(r);
    let lim_hi = r
        .series
        .values()
        .flat_map(|s| s.iter().filter_map(|p| p.limit))
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(20)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x1, 0.0..lim_hi.max(1.0))
        .map_err(e)?;
    chart
        .configure_mesh()
        .y_desc("concurrency limit")
        .draw()
        .map_err(e)?;
    shade_faults(&mut chart, r, x1, 0.0, lim_hi.max(1.0))?;
    let mut any = false;
    for (i, policy) in r.policies.iter().enumerate() {
        let Some(s) = r.series.get(policy) else {
            continue;
        };
        let c = color(i);
        let pts: Vec<(f64, f64)> = s
            .iter()
            .filter_map(|p| Some((p.t_s, f64::from(p.limit?))))
            .collect();
        any |= !pts.is_empty();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(e)?
            .label(policy.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    if any {
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    } else {
        chart
            .draw_series(std::iter::once(Text::new(
                "the route has no concurrency limit",
                (x1 * 0.02, lim_hi * 0.5),
                ("sans-serif", 15),
            )))
            .map_err(e)?;
    }
    let refused_hi = r
        .series
        .values()
        .flat_map(|s| s.iter().map(|p| p.shed + p.limited))
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x1, 0.0..refused_hi.max(1.0))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("simulated seconds")
        .y_desc("shed + limited per tick")
        .draw()
        .map_err(e)?;
    shade_faults(&mut chart, r, x1, 0.0, refused_hi.max(1.0))?;
    for (i, policy) in r.policies.iter().enumerate() {
        let Some(s) = r.series.get(policy) else {
            continue;
        };
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|p| (p.t_s, (p.shed + p.limited) as f64)),
                color(i).stroke_width(2),
            ))
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// One row per policy: a mark at each decision (policy applied or rejected, ejection,
/// breaker, health check), faults shaded.
fn timeline(r: &Results, path: &Path) -> Result<(), String> {
    let n = r.policies.len().max(1);
    let root = SVGBackend::new(path, (1200, 140 + 50 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let x1 = span(r);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: decisions (circle: policy applied, cross: rejected or lost, triangle: ejection or breaker, square: health check){}",
                r.scenario,
                fault_note(r)
            ),
            ("sans-serif", 14),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(110)
        .build_cartesian_2d(0.0..x1, -0.5..(n as f64 - 0.5))
        .map_err(e)?;
    let names = r.policies.clone();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("simulated seconds")
        .draw()
        .map_err(e)?;
    shade_faults(&mut chart, r, x1, -0.5, n as f64 - 0.5)?;
    for (i, policy) in r.policies.iter().enumerate() {
        let Some(ds) = r.decisions.get(policy) else {
            continue;
        };
        let y = i as f64;
        let c = color(i);
        for d in ds.iter().filter(|d| d.instance != "scenario") {
            let at = (d.at_s, y);
            let res = if d.what.contains("applied") {
                chart.draw_series(std::iter::once(Circle::new(at, 4, c.filled())))
            } else if d.what.contains("rejected") || d.what.contains("lost") {
                chart.draw_series(std::iter::once(Cross::new(at, 5, c.stroke_width(2))))
            } else if d.what.contains("health") {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (d.at_s - x1 * 0.002, y - 0.15),
                        (d.at_s + x1 * 0.002, y + 0.15),
                    ],
                    c.filled(),
                )))
            } else {
                chart.draw_series(std::iter::once(TriangleMarker::new(at, 6, c.filled())))
            };
            res.map_err(e)?;
        }
    }
    root.present().map_err(e)
}

type Draw = fn(&Results, &Path) -> Result<(), String>;

/// Writes every chart into `dir`; returns (title, file name) for the report.
pub fn all(r: &Results, dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let charts: [(&str, &str, Draw); 4] = [
        ("p99 latency over time", "latency.svg", latency),
        ("traffic share per backend", "share.svg", shares),
        ("limits over time", "limits.svg", limits),
        ("decision timeline", "timeline.svg", timeline),
    ];
    for (title, file, f) in charts {
        f(r, &dir.join(file))?;
        out.push((title.to_string(), file.to_string()));
    }
    Ok(out)
}
