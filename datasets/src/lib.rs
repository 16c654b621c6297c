//! The public traces in `../shared/datasets`, loaded with polars into two types: a [`Trace`]
//! (arrivals with what is known of each request) and a [`Series`] (timestamps, values,
//! optional anomaly labels). This crate is the only user of polars; the lean proxy + brain
//! binary does not compile it.

pub mod catalog;
pub mod describe;
pub mod error;
pub mod export;
pub mod gen;
pub mod read;
pub mod series;
pub mod sources;
pub mod trace;

pub use catalog::{load, load_nab_dir, load_series, root, Data, Entry, Kind, ENTRIES};
pub use error::{DatasetError, Result};
pub use gen::{ClientSet, ClientWindow, Iat};
pub use series::{Agg, Measure, Series, Stats};
pub use trace::{Arrival, Status, Trace};
