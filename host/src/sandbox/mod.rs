//! The sandbox: projection components loaded, routed and called under limits.
//!
//! - `runtime`: the wasmtime engine, component loading and guest calls
//!   (every wasmtime detail lives there);
//! - `contract`: the WIT versions accepted, what `describe()` must say, and
//!   the conversion of the bindings into `flatten` types;
//! - `registry`: which projection handles which event type;
//! - `reload`: hot reload of a components folder, `selftest`: the fixtures
//!   a reload runs first.
//!
//! The sandbox never touches the database: whether a declaration fits the
//! schema is decided by an [`registry::Admission`] the host passes in.

mod contract;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod selftest;

pub use registry::{Admission, Projection, Registry};
pub use reload::{ReloadReport, Reloader, SchemaRefresh};
pub use runtime::{GuestFailure, LoadError, LoadedComponent, Runtime, Session};

/// Calls `f` with the projection contract's view of a decoded envelope (the
/// strings a component receives).
pub fn envelope_view<R>(
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
