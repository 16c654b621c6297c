//! vivremotion's data plane: an HTTP/1.1 + HTTP/2 reverse proxy that balances adaptively and
//! records the telemetry the brain learns from.
//!
//! Layout, following a request:
//! - [`server`]: listeners and thread-per-core workers (own runtime, own socket, own pools).
//! - [`service`]: the pipeline: check → route ([`routing`]) → pick ([`balance`]) → forward
//!   ([`client`], [`headers`]) → respond → record ([`body`]'s guard into [`telemetry`]).
//! - [`snapshot`]: config + policy compiled into the immutable snapshot the pipeline reads;
//!   [`state`] swaps snapshots whole (config reload, policy swap).
//! - [`endpoint`]: per-endpoint live load (in-flight, peak-EWMA, passive health).
//! - [`config`]: two-phase TOML config with field-path errors.
//! - [`access_log`]: the optional JSON access log, written off the request path.
//! - [`admin`]: metrics, health, config, upstreams, telemetry, policy, demo controls.
//! - [`demo`]: controllable demo upstreams for `vivremotion up`.
//! - [`app`]: wiring, reload and shutdown.
//!
//! Decision code ([`flow`]: a request's admission, picks, tries and retries; [`balance`],
//! [`guard`], [`endpoint`], admission limits, telemetry recording) lives in the IO-free
//! `vivremotion-decide` crate (re-exported here under the same names), so the simulator runs
//! exactly what the proxy runs. Both request paths drive [`flow::RequestFlow`] and decide
//! nothing themselves; [`wait`] maps its queue waits and backoffs onto tokio.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod client;
pub mod demo;
pub mod drain;
pub mod error;
pub mod fast;
pub mod h1;
pub mod headers;
pub mod limits;
pub mod loops;
pub mod routing;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod timer;
pub mod tls;
pub mod wait;

// The decision core, under the names the proxy has always used for it.
pub use vivremotion_decide::{balance, config, control, endpoint, flow, guard, trace};

pub use app::{App, AppError, AppOptions};
pub use config::Config;
