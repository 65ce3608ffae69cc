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

/// Calls `f` with the projection contract's view of a decoded envelope (the
/// strings a component receives).
pub fn with_flat_envelope<R>(
    envelope: &events::RawEnvelope,
    f: impl FnOnce(&flatten::Envelope<'_>) -> R,
) -> R {
    let event_id = envelope.event_id.to_string();
    let timestamp = envelope.timestamp_string();
    f(&flatten::Envelope {
        event_type: &envelope.event_type,
        event_id: &event_id,
        timestamp: &timestamp,
        entity_id: &envelope.entity_id,
        data: envelope.data.get(),
    })
}
