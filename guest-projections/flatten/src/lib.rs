//! Flattening of the social-commerce platform's domain events into flat row
//! operations for the MySQL analytics projection.
//!
//! Pure functions only: no I/O, no clock, no randomness. The same code runs
//! inside the per-domain WebAssembly components (through `projection-sdk`) and
//! natively in the host (for the benchmark's native mode and for tests).
//!
//! Field rules (see [`doc`]): a missing or null field or object gives NULL
//! columns; a field of the wrong JSON type is an `invalid-event` error that
//! names its path; a missing or empty entity id, or `data` that is not a JSON
//! object, is an `invalid-event` error. No input makes these functions panic.
//!
//! The host stamps every written row with the envelope's `event_id` and
//! `event_timestamp`; a projection never writes those two columns itself.
//!
//! `no_std` (with `alloc`): a component built from it links no Rust `std`,
//! so it imports nothing from WASI and instantiates as one core module.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

/// What `std`'s prelude gives and a `no_std` crate lacks, from `alloc`
/// (re-exported as `projection_sdk::prelude` for component crates).
pub mod prelude {
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
}

pub mod doc;
pub mod ops;
pub mod table;

mod order;
mod post;
mod product;
mod supplier;
mod user;

use serde_json::Value as Json;

use prelude::*;

use doc::Obj;
pub use ops::*;

type Result<T> = core::result::Result<T, ProjectionError>;

/// A domain projection: what it declares and how it flattens.
#[derive(Clone, Copy)]
pub struct Domain {
    pub name: &'static str,
    pub info: fn() -> Info,
    pub project: fn(&Envelope<'_>) -> Result<Vec<RowOp>>,
}

/// The five built-in projections.
pub const DOMAINS: [Domain; 5] = [
    user::DOMAIN,
    supplier::DOMAIN,
    product::DOMAIN,
    order::DOMAIN,
    post::DOMAIN,
];

/// The built-in projection of a domain (topic) name.
pub fn domain(name: &str) -> Option<Domain> {
    DOMAINS.into_iter().find(|d| d.name == name)
}

/// Columns the host owns and stamps on every row it writes; a projection may
/// not write them.
pub const HOST_COLUMNS: [&str; 2] = ["event_id", "event_timestamp"];

/// The version every built-in projection reports (the crate version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The self-description of a projection handling `handles` and writing
/// `tables` (all their columns but the database-assigned ones).
pub fn make_info(domain: &str, handles: &[&str], tables: &[&table::Table]) -> Info {
    Info {
        domain: domain.to_owned(),
        version: VERSION.to_owned(),
        handles: handles.iter().map(|h| (*h).to_owned()).collect(),
        writes: tables.iter().map(|t| t.writes()).collect(),
        tables: tables.iter().map(|t| t.def()).collect(),
    }
}

/// An envelope whose common parts have been checked.
pub(crate) struct Event<'a> {
    pub event_type: &'a str,
    pub entity_id: &'a str,
    /// The envelope timestamp, normalised.
    pub timestamp: String,
    data: Json,
}

impl<'a> Event<'a> {
    pub fn parse(env: &Envelope<'a>) -> Result<Event<'a>> {
        if env.entity_id.trim().is_empty() {
            return Err(ProjectionError::InvalidEvent(
                "entity_id is missing or empty".to_owned(),
            ));
        }
        let timestamp = doc::normalize_timestamp(env.timestamp).ok_or_else(|| {
            ProjectionError::InvalidEvent(format!("timestamp {:?} is not RFC 3339", env.timestamp))
        })?;
        if env.data.trim().is_empty() {
            return Err(ProjectionError::InvalidEvent("data is missing".to_owned()));
        }
        let data: Json = serde_json::from_str(env.data)
            .map_err(|e| ProjectionError::InvalidEvent(format!("data is not valid JSON: {e}")))?;
        Ok(Event {
            event_type: env.event_type,
            entity_id: env.entity_id,
            timestamp,
            data,
        })
    }

    /// `data` as an object.
    pub fn data(&self) -> Result<Obj<'_>> {
        Obj::root("data", &self.data)
    }

    /// The entity id as a column value.
    pub fn id(&self) -> Value {
        Value::Text(self.entity_id.to_owned())
    }

    /// `created_at` from the document, and `updated_at` from the document or,
    /// failing that, the event time.
    pub fn record_times(&self, data: &Obj<'_>) -> Result<[Column; 2]> {
        let updated = match data.timestamp("updated_at")? {
            Value::Null => Value::Timestamp(self.timestamp.clone()),
            t => t,
        };
        Ok([
            col("created_at", data.timestamp("created_at")?),
            col("updated_at", updated),
        ])
    }

    /// For minimal payloads (`{"user_id": ...}`): an id field that is present
    /// must name the same entity as the envelope.
    pub fn check_payload_id(&self, field: &str) -> Result<()> {
        let data = self.data()?;
        match data.str(field)? {
            Some(id) if id != self.entity_id => Err(ProjectionError::InvalidEvent(format!(
                "data.{field} {id:?} does not match entity_id {:?}",
                self.entity_id
            ))),
            _ => Ok(()),
        }
    }

    pub fn unsupported(&self, domain: &str) -> ProjectionError {
        ProjectionError::Unsupported(format!(
            "event type {:?} is not handled by the {domain} projection",
            self.event_type
        ))
    }
}

/// The `user` projection.
pub const USER: Domain = user::DOMAIN;
/// The `supplier` projection.
pub const SUPPLIER: Domain = supplier::DOMAIN;
/// The `product` projection.
pub const PRODUCT: Domain = product::DOMAIN;
/// The `order` projection.
pub const ORDER: Domain = order::DOMAIN;
/// The `post` projection.
pub const POST: Domain = post::DOMAIN;
