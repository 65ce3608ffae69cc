//! Guest-side glue for projection components.
//!
//! It generates the bindings of `wit/projection.wit` once, converts between
//! them and the plain types of `projection-flatten`, and offers
//! [`component!`], so a domain crate is one line:
//!
//! ```ignore
//! projection_sdk::component!(projection_sdk::flatten::USER);
//! ```

pub use flatten;

/// The generated bindings of `wit/projection.wit`.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "projection",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "projection_sdk::bindings",
    });
}

use bindings::projector::projection::types as wit;

/// `describe()` of a component built from `domain`.
pub fn describe(domain: &flatten::Domain) -> wit::Info {
    let info = (domain.info)();
    wit::Info {
        domain: info.domain,
        version: info.version,
        handles: info.handles,
        writes: info
            .writes
            .into_iter()
            .map(|t| wit::TableUse {
                table: t.table,
                columns: t.columns,
            })
            .collect(),
    }
}

/// `project()` of a component built from `domain`.
pub fn project(
    domain: &flatten::Domain,
    event: wit::Envelope,
) -> Result<Vec<wit::RowOp>, wit::ProjectionError> {
    let envelope = flatten::Envelope {
        event_type: &event.event_type,
        event_id: &event.event_id,
        timestamp: &event.timestamp,
        entity_id: &event.entity_id,
        data: &event.data,
    };
    match (domain.project)(&envelope) {
        Ok(ops) => Ok(ops.into_iter().map(row_op).collect()),
        Err(flatten::ProjectionError::InvalidEvent(m)) => {
            Err(wit::ProjectionError::InvalidEvent(m))
        }
        Err(flatten::ProjectionError::Unsupported(m)) => Err(wit::ProjectionError::Unsupported(m)),
        Err(flatten::ProjectionError::Internal(m)) => Err(wit::ProjectionError::Internal(m)),
    }
}

fn value(v: flatten::Value) -> wit::Value {
    match v {
        flatten::Value::Null => wit::Value::Null,
        flatten::Value::Text(s) => wit::Value::Text(s),
        flatten::Value::Int(i) => wit::Value::Int(i),
        flatten::Value::Float(f) => wit::Value::Float(f),
        flatten::Value::Boolean(b) => wit::Value::Boolean(b),
        flatten::Value::Timestamp(s) => wit::Value::Timestamp(s),
        flatten::Value::Json(s) => wit::Value::Json(s),
    }
}

fn columns(cols: Vec<flatten::Column>) -> Vec<wit::Column> {
    cols.into_iter()
        .map(|c| wit::Column {
            name: c.name,
            value: value(c.value),
        })
        .collect()
}

fn upsert(u: flatten::Upsert) -> wit::Upsert {
    wit::Upsert {
        table: u.table,
        key: columns(u.key),
        values: columns(u.values),
    }
}

fn keyed(k: flatten::Keyed) -> wit::Keyed {
    wit::Keyed {
        table: k.table,
        key: columns(k.key),
    }
}

fn row_op(op: flatten::RowOp) -> wit::RowOp {
    match op {
        flatten::RowOp::Upsert(u) => wit::RowOp::Upsert(upsert(u)),
        flatten::RowOp::Update(u) => wit::RowOp::Update(upsert(u)),
        flatten::RowOp::Replace(r) => wit::RowOp::Replace(wit::Replace {
            table: r.table,
            parent: columns(r.parent),
            rows: r.rows.into_iter().map(columns).collect(),
        }),
        flatten::RowOp::SoftDelete(k) => wit::RowOp::SoftDelete(keyed(k)),
        flatten::RowOp::Delete(k) => wit::RowOp::Delete(keyed(k)),
    }
}

/// Exports a component whose `describe` and `project` are those of a
/// [`flatten::Domain`]; the version it reports is the calling crate's
/// `CARGO_PKG_VERSION`.
#[macro_export]
macro_rules! component {
    ($domain:expr) => {
        struct Component;

        impl $crate::bindings::Guest for Component {
            fn describe() -> $crate::bindings::projector::projection::types::Info {
                // The component crate's own version (its Cargo.toml), so
                // each component versions on its own.
                let mut info = $crate::describe(&$domain);
                info.version = ::core::env!("CARGO_PKG_VERSION").into();
                info
            }

            fn project(
                event: $crate::bindings::projector::projection::types::Envelope,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::projector::projection::types::RowOp>,
                $crate::bindings::projector::projection::types::ProjectionError,
            > {
                $crate::project(&$domain, event)
            }
        }

        $crate::bindings::export!(Component);
    };
}
