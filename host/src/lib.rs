//! The projector host: consumes the domain topics, runs each event through
//! the WebAssembly projection component of its domain, and writes the
//! resulting row operations to MySQL with exactly-once effect.

pub mod admin;
pub mod cli;
pub mod dlq;
pub mod executor;
pub mod generate;
pub mod metrics;
pub mod monitor;
pub mod pipeline;
pub mod registry;
pub mod reload;
pub mod replay;
pub mod runtime;
pub mod schema;
pub mod settings;
pub mod snapshot;
