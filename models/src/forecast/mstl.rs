//! MSTL decomposition with an AutoETS trend (augurs), refitted on a trailing window.

use augurs::ets::{trend::AutoETSTrendModel, AutoETS};
use augurs::mstl::MSTLModel;
use augurs::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum MstlError {
    #[error("MSTL needs at least two full seasons of {period} points, got {got}")]
    TooShort { period: usize, got: usize },
    #[error("MSTL + ETS fit failed: {0}")]
    Fit(String),
}

/// Point forecasts for 1..=horizon steps after the end of `y`, from MSTL with `periods`
/// and a non-seasonal AutoETS on the trend.
pub fn forecast(y: &[f64], periods: &[usize], horizon: usize) -> Result<Vec<f64>, MstlError> {
    let longest = periods.iter().copied().max().unwrap_or(1);
    if y.len() < 2 * longest {
        return Err(MstlError::TooShort {
            period: longest,
            got: y.len(),
        });
    }
    let model = MSTLModel::new(
        periods.to_vec(),
        AutoETSTrendModel::from(AutoETS::non_seasonal()),
    );
    let fit = model.fit(y).map_err(|e| MstlError::Fit(e.to_string()))?;
    let f = fit
        .predict(horizon, None)
        .map_err(|e| MstlError::Fit(e.to_string()))?;
    Ok(f.point)
}
