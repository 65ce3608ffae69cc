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

/// Defines, in the calling module, `describe` and `project` of a component
/// built from a [`flatten::Domain`], converting to the bindings in `$wit`
/// (any `projector:projection` 1.x types interface: the SDK's own, or a 1.0
/// component's).
#[doc(hidden)]
#[macro_export]
macro_rules! __conversions {
    ($wit:path) => {
        use $wit as wit;

        /// `describe()` of a component built from `domain`.
        pub fn describe(domain: &$crate::flatten::Domain) -> wit::Info {
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
            domain: &$crate::flatten::Domain,
            event: wit::Envelope,
        ) -> Result<Vec<wit::RowOp>, wit::ProjectionError> {
            let envelope = $crate::flatten::Envelope {
                event_type: &event.event_type,
                event_id: &event.event_id,
                timestamp: &event.timestamp,
                entity_id: &event.entity_id,
                data: &event.data,
            };
            match (domain.project)(&envelope) {
                Ok(ops) => Ok(ops.into_iter().map(row_op).collect()),
                Err($crate::flatten::ProjectionError::InvalidEvent(m)) => {
                    Err(wit::ProjectionError::InvalidEvent(m))
                }
                Err($crate::flatten::ProjectionError::Unsupported(m)) => {
                    Err(wit::ProjectionError::Unsupported(m))
                }
                Err($crate::flatten::ProjectionError::Internal(m)) => {
                    Err(wit::ProjectionError::Internal(m))
                }
            }
        }

        fn value(v: $crate::flatten::Value) -> wit::Value {
            match v {
                $crate::flatten::Value::Null => wit::Value::Null,
                $crate::flatten::Value::Text(s) => wit::Value::Text(s),
                $crate::flatten::Value::Int(i) => wit::Value::Int(i),
                $crate::flatten::Value::Float(f) => wit::Value::Float(f),
                $crate::flatten::Value::Boolean(b) => wit::Value::Boolean(b),
                $crate::flatten::Value::Timestamp(s) => wit::Value::Timestamp(s),
                $crate::flatten::Value::Json(s) => wit::Value::Json(s),
            }
        }

        fn columns(cols: Vec<$crate::flatten::Column>) -> Vec<wit::Column> {
            cols.into_iter()
                .map(|c| wit::Column {
                    name: c.name,
                    value: value(c.value),
                })
                .collect()
        }

        fn upsert(u: $crate::flatten::Upsert) -> wit::Upsert {
            wit::Upsert {
                table: u.table,
                key: columns(u.key),
                values: columns(u.values),
            }
        }

        fn keyed(k: $crate::flatten::Keyed) -> wit::Keyed {
            wit::Keyed {
                table: k.table,
                key: columns(k.key),
            }
        }

        fn row_op(op: $crate::flatten::RowOp) -> wit::RowOp {
            match op {
                $crate::flatten::RowOp::Upsert(u) => wit::RowOp::Upsert(upsert(u)),
                $crate::flatten::RowOp::Update(u) => wit::RowOp::Update(upsert(u)),
                $crate::flatten::RowOp::Replace(r) => wit::RowOp::Replace(wit::Replace {
                    table: r.table,
                    parent: columns(r.parent),
                    rows: r.rows.into_iter().map(columns).collect(),
                }),
                $crate::flatten::RowOp::SoftDelete(k) => wit::RowOp::SoftDelete(keyed(k)),
                $crate::flatten::RowOp::Delete(k) => wit::RowOp::Delete(keyed(k)),
            }
        }
    };
}

__conversions!(bindings::projector::projection::types);

/// `tables()` of a component built from `domain`: the typed definition of
/// every table it writes.
pub fn tables(domain: &flatten::Domain) -> Vec<wit::TableDef> {
    (domain.info)().tables.into_iter().map(table_def).collect()
}

fn table_def(t: flatten::TableDef) -> wit::TableDef {
    use flatten::SqlType as T;
    wit::TableDef {
        name: t.name,
        doc: t.doc,
        columns: t
            .columns
            .into_iter()
            .map(|c| wit::ColumnDef {
                name: c.name,
                sql_type: match c.sql_type {
                    T::Varchar(n) => wit::ColumnType::Varchar(n),
                    T::Text => wit::ColumnType::Text,
                    T::Bigint => wit::ColumnType::Bigint,
                    T::Double => wit::ColumnType::Double,
                    T::Boolean => wit::ColumnType::Boolean,
                    T::Datetime => wit::ColumnType::Datetime,
                    T::Json => wit::ColumnType::Json,
                    T::Serial => wit::ColumnType::Serial,
                },
                nullable: c.nullable,
                doc: c.doc,
            })
            .collect(),
        primary_key: t.primary_key,
        unique_keys: t.unique_keys,
        indexes: t.indexes,
        parent: t.parent.map(|p| wit::ParentKey {
            columns: p.columns,
            table: p.table,
            references: p.references,
            cascade: p.cascade,
        }),
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

            fn tables() -> ::std::vec::Vec<$crate::bindings::projector::projection::types::TableDef>
            {
                $crate::tables(&$domain)
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
