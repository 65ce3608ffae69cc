//! Operating a running host: what it shares about itself (`state`,
//! `metrics`), the `monitor` that samples lag and dependencies (statuses in
//! `lag`), the `admin` HTTP server, `replay` of one domain, and `prune`.
//!
//! Nothing here reaches into the consuming loop: the loop writes into
//! [`state::Shared`] and [`metrics::Metrics`], and ops read them.

pub mod admin;
pub mod canary;
pub mod chart;
pub mod jobs;
pub mod lag;
pub mod metrics;
pub mod monitor;
pub mod prune;
pub mod rebuild;
pub mod replay;
pub mod state;

pub use admin::Admin;
pub use monitor::Monitor;
pub use state::Shared;
