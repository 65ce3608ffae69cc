//! The domain event contract of projector, shared by the producer backend and
//! the projection host so that topic names, event type names and the envelope
//! shape cannot drift between the two sides.
//!
//! - [`Topic`]: the five domain topics and their dead-letter twins.
//! - [`EventType`]: the twenty event types, each belonging to one topic.
//! - [`Envelope`]: `{event_type, event_id, timestamp, entity_id, data}` exactly as
//!   the reference design puts it on the wire (JSON).
//! - [`KafkaSettings`]: client settings for the producer and the consumer.
//! - [`payload`]: the payload of each event type.

mod envelope;
mod kafka;
pub mod payload;
mod types;

pub use envelope::{Envelope, EnvelopeError, RawEnvelope, format_timestamp};
pub use kafka::{DEFAULT_GROUP_ID, KafkaSettings};
pub use types::{EventType, Topic, UnknownEventType, UnknownTopic};
