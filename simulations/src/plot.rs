//! Charts as SVG files.

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
