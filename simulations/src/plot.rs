//! Charts as SVG files.

pub mod sim;

use plotters::prelude::*;
use std::path::Path;

fn range(values: &[&[f64]]) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in values
        .iter()
        .flat_map(|s| s.iter())
        .filter(|v| v.is_finite())
    {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// The actual series `(hours, values)` and forecasts `(hours, point, lower, upper)` with
/// their interval as a band.
pub fn forecast(
    path: &Path,
    title: &str,
    (ax, actual): (&[f64], &[f64]),
    (hours, point, lo, hi): (&[f64], &[f64], &[f64], &[f64]),
) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x0 = ax.first().copied().unwrap_or(0.0);
    let x1 = ax.last().copied().unwrap_or(1.0).max(x0 + 1e-9);
    let (y0, y1) = range(&[actual, point, lo, hi]);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("hours since the start of the series")
        .y_desc("value")
        .draw()
        .map_err(|e| e.to_string())?;
    let band: Vec<(f64, f64)> = hours
        .iter()
        .zip(hi)
        .filter(|(_, v)| v.is_finite())
        .map(|(x, v)| (*x, *v))
        .chain(
            hours
                .iter()
                .zip(lo)
                .rev()
                .filter(|(_, v)| v.is_finite())
                .map(|(x, v)| (*x, *v)),
        )
        .collect();
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(std::iter::once(Polygon::new(band, blue.mix(0.18).filled())))
        .map_err(|e| e.to_string())?
        .label("80 % interval")
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 16, y + 5)], blue.mix(0.18).filled())
        });
    chart
        .draw_series(LineSeries::new(
            ax.iter().zip(actual).map(|(x, v)| (*x, *v)),
            BLACK.mix(0.7).stroke_width(1),
        ))
        .map_err(|e| e.to_string())?
        .label("actual")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
    chart
        .draw_series(
            LineSeries::new(
                hours.iter().zip(point).map(|(x, v)| (*x, *v)),
                blue.stroke_width(2),
            )
            .point_size(2),
        )
        .map_err(|e| e.to_string())?
        .label("forecast")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], blue.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A series (above) and its anomaly scores (below) against time in days, with the label
/// windows shaded red, the probation period grey, the chosen threshold dashed and the scored
/// detections (after probation) marked.
#[allow(clippy::too_many_arguments)]
pub fn anomaly(
    path: &Path,
    title: &str,
    ts_ms: &[i64],
    values: &[f64],
    scores: &[f64],
    windows: &[(i64, i64)],
    probation_end_ms: Option<i64>,
    threshold: f64,
) -> Result<(), String> {
    let t0 = ts_ms.first().copied().unwrap_or(0);
    let day = |t: i64| (t - t0) as f64 / 86_400_000.0;
    let xs: Vec<f64> = ts_ms.iter().map(|&t| day(t)).collect();
    let x1 = xs.last().copied().unwrap_or(1.0).max(1e-9);
    let root = SVGBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(360);
    let red = RGBColor(214, 39, 40);
    let shade = |chart: &mut ChartContext<
        '_,
        SVGBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
                 y0: f64,
                 y1: f64|
     -> Result<(), String> {
        if let Some(p) = probation_end_ms {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (day(p), y1)],
                    BLACK.mix(0.08).filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(windows.iter().map(|&(a, b)| {
                Rectangle::new([(day(a), y0), (day(b), y1)], red.mix(0.15).filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let (y0, y1) = range(&[values]);
    let mut chart = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(20)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .y_desc("value")
        .draw()
        .map_err(|e| e.to_string())?;
    shade(&mut chart, y0, y1)?;
    chart
        .draw_series(LineSeries::new(
            xs.iter()
                .zip(values)
                .filter(|(_, v)| v.is_finite())
                .map(|(x, v)| (*x, *v)),
            BLACK.mix(0.75).stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x1, 0.0..1.05)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("days since the start of the series")
        .y_desc("anomaly score")
        .draw()
        .map_err(|e| e.to_string())?;
    shade(&mut chart, 0.0, 1.05)?;
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            xs.iter().zip(scores).map(|(x, v)| (*x, *v)),
            blue.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    if threshold <= 1.0 {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, threshold), (x1, threshold)],
                6,
                4,
                red.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                xs.iter()
                    .zip(scores)
                    .zip(ts_ms)
                    .filter(|((_, s), t)| {
                        **s >= threshold && probation_end_ms.is_none_or(|p| **t >= p)
                    })
                    .map(|(xs, _)| xs)
                    .map(|(x, s)| Circle::new((*x, *s), 3, red.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
