//! Guest-side glue for projection components.
//!
//! It generates the bindings of `wit/projection.wit` once, converts between
//! them and the plain types of `projection-flatten`, and offers
//! [`component!`], so a domain crate is two lines:
//!
//! ```ignore
//! #![cfg_attr(target_arch = "wasm32", no_std)]
//! projection_sdk::component!(projection_sdk::flatten::USER);
//! ```
//!
//! **No `std` in a component.** Rust's `std` on `wasm32-wasip2` imports
//! some twenty WASI interfaces (clocks, streams, stdio, environment,
//! exit...) whether the code uses them or not, and `wit-component` then
//! builds the component from three core modules and about seventeen core
//! instances, all of which the host instantiates for every event. A
//! component built from this crate is `no_std` on wasm32: its only imports
//! are those of the WIT world (none), it is one core module, its heap is
//! `dlmalloc` (the allocator `std` itself uses on `wasm32-unknown-unknown`)
//! starting in an arena of its initial memory, and a panic traps.
//! `component!` defines the panic handler, so the crate that calls it must
//! be `no_std` on wasm32 (the attribute above); `component!(DOMAIN, std)`
//! is for a crate that wants `std` and its imports.

#![no_std]

extern crate alloc;

/// The heap of every component built from this crate: `std` would bring
/// wasi-libc's `malloc`; without `std` a component needs its own.
#[cfg(target_arch = "wasm32")]
mod heap;

// `memcmp`, `memcpy` and the like, which `core` calls and `std` would have
// linked: taken from wasi-libc (the target's own `libc.a`), whose string
// functions import nothing.
#[cfg(target_os = "wasi")]
#[link(name = "c")]
unsafe extern "C" {}

/// The canonical ABI's allocator export, which the host calls to place
/// arguments in the guest's memory. On `wasm32-wasip2`, `wit-bindgen`
/// leaves it to wasi-libc's `malloc`, which would be a second heap; this
/// one is the component's own (`heap`). (On `wasm32-wasip1`, `wit-bindgen`
/// defines it, on the global allocator too.)
///
/// # Safety
/// Called by the host as the canonical ABI specifies: `old_ptr` and
/// `old_len` from an earlier call (or 0), a power-of-two `align`.
#[cfg(all(target_arch = "wasm32", target_env = "p2"))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two alignment and sizes
    // that fit the guest's 32-bit memory; `old_ptr`/`old_len` come from an
    // earlier call with the same alignment.
    let ptr = unsafe {
        if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}

/// What `std`'s prelude gives and a `no_std` component crate lacks:
/// `use projection_sdk::prelude::*;`.
pub use flatten::prelude;

pub use flatten;

/// The generated bindings of `wit/projection.wit`.
#[allow(clippy::too_many_arguments, unexpected_cfgs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "projection",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "projection_sdk::bindings",
        // `std::error::Error` for the error types only under a `std`
        // feature this crate does not have: the bindings stay `no_std`.
        std_feature,
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
        ) -> ::core::result::Result<$crate::prelude::Vec<wit::RowOp>, wit::ProjectionError> {
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

        fn columns(
            cols: $crate::prelude::Vec<$crate::flatten::Column>,
        ) -> $crate::prelude::Vec<wit::Column> {
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
pub fn tables(domain: &flatten::Domain) -> alloc::vec::Vec<wit::TableDef> {
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
///
/// On wasm32 it also defines the component's panic handler (a panic
/// traps), so the calling crate must be `no_std` there:
/// `#![cfg_attr(target_arch = "wasm32", no_std)]`. `component!(DOMAIN, std)`
/// leaves the panic handler to `std`, for a crate that links it.
#[macro_export]
macro_rules! component {
    ($domain:expr, std) => {
        struct Component;

        impl $crate::bindings::Guest for Component {
            fn describe() -> $crate::bindings::projector::projection::types::Info {
                // The component crate's own version (its Cargo.toml), so
                // each component versions on its own.
                let mut info = $crate::describe(&$domain);
                info.version = ::core::env!("CARGO_PKG_VERSION").into();
                info
            }

            fn tables()
            -> $crate::prelude::Vec<$crate::bindings::projector::projection::types::TableDef> {
                $crate::tables(&$domain)
            }

            fn project(
                event: $crate::bindings::projector::projection::types::Envelope,
            ) -> ::core::result::Result<
                $crate::prelude::Vec<$crate::bindings::projector::projection::types::RowOp>,
                $crate::bindings::projector::projection::types::ProjectionError,
            > {
                $crate::project(&$domain, event)
            }
        }

        $crate::bindings::export!(Component);
    };
    ($domain:expr) => {
        $crate::component!($domain, std);

        /// A panic traps: the host dead-letters the event with the
        /// `guest_trap` class (a panic message would need `std`'s stderr).
        #[cfg(target_arch = "wasm32")]
        #[panic_handler]
        fn panic(_: &::core::panic::PanicInfo<'_>) -> ! {
            ::core::arch::wasm32::unreachable()
        }
    };
}
