//! A `user` projection that misbehaves on request, to prove the sandbox.
//!
//! It projects like the real user projection unless `data.chaos` says:
//! - `"loop"`: spins forever (the host's deadline must stop it);
//! - `"alloc"`: allocates without bound (the memory cap must stop it);
//! - `"panic"`: panics, which traps the instance;
//! - `"sleep"`: sleeps for an hour (a WASI poll on a monotonic-clock
//!   pollable, which no epoch deadline interrupts);
//! - `"clock"`: reads the wall clock into its output (a projection that
//!   depends on when it runs);
//! - `"recurse"`: recurses without bound (the wasm stack limit must stop it);
//! - `"flood"`: answers 5000 upserts for one event (the output caps must
//!   refuse it);
//! - `"entropy"`: asks the host for 32 MiB of random bytes in one call
//!   (work the host does outside any deadline check: the host-call cap must
//!   refuse it);
//! - `"remember"`: projects normally but puts the entity id of the event
//!   this instance saw before (kept in a static) into `display_name`, so
//!   an instance carried from one event to the next shows;
//! - `"wrong_type"`: writes an integer into `display_name` (a VARCHAR);
//! - `"too_long"`: writes a 300-character `display_name` (VARCHAR(255));
//! - `"undeclared"`: writes a table it did not declare;
//! - `"undeclared_column"`: writes an undeclared column of a declared table.

use projection_sdk::bindings::projector::projection::types::{
    Column, Envelope, Info, ProjectionError, RowOp, Upsert, Value,
};

struct Component;

/// The entity id of the previous event this instance projected, if any.
static PREVIOUS: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn marker(data: &str) -> Option<&'static str> {
    [
        "undeclared_column",
        "undeclared",
        "loop",
        "alloc",
        "panic",
        "sleep",
        "clock",
        "recurse",
        "flood",
        "entropy",
        "remember",
        "wrong_type",
        "too_long",
    ]
    .into_iter()
    .find(|m| {
        data.contains(&format!("\"chaos\":\"{m}\""))
            || data.contains(&format!("\"chaos\": \"{m}\""))
    })
}

/// One upsert of `table` keyed `key = id`, setting `column` to `value`.
fn one_row(table: &str, key: &str, id: String, column: &str, value: Value) -> Vec<RowOp> {
    vec![RowOp::Upsert(Upsert {
        table: table.into(),
        key: vec![Column {
            name: key.into(),
            value: Value::Text(id),
        }],
        values: vec![Column {
            name: column.into(),
            value,
        }],
    })]
}

/// Recurses until the stack runs out (the bound is never reached).
fn depth(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 32]);
    if frame[0] == u64::MAX {
        return 0;
    }
    depth(frame[31] + 1) + frame[1]
}

impl projection_sdk::bindings::Guest for Component {
    fn describe() -> Info {
        let mut info = projection_sdk::describe(&projection_sdk::flatten::USER);
        info.version = format!("{}-chaos", info.version);
        info
    }

    fn tables() -> Vec<projection_sdk::bindings::projector::projection::types::TableDef> {
        projection_sdk::tables(&projection_sdk::flatten::USER)
    }

    fn project(event: Envelope) -> Result<Vec<RowOp>, ProjectionError> {
        let previous = PREVIOUS
            .lock()
            .map(|mut p| p.replace(event.entity_id.clone()))
            .unwrap_or(None);
        match marker(&event.data) {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("panic") => panic!("chaos: asked to panic"),
            Some("sleep") => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                projection_sdk::project(&projection_sdk::flatten::USER, event)
            }
            Some("clock") => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Err(ProjectionError::Internal(format!("it is {now}")))
            }
            Some("flood") => Ok((0..5000)
                .map(|i| {
                    RowOp::Upsert(Upsert {
                        table: "users".into(),
                        key: vec![Column {
                            name: "user_id".into(),
                            value: Value::Text(format!("{}-{i}", event.entity_id)),
                        }],
                        values: vec![],
                    })
                })
                .collect()),
            Some("recurse") => Ok(one_row(
                "users",
                "user_id",
                event.entity_id,
                "display_name",
                Value::Text(depth(0).to_string()),
            )),
            Some("entropy") => {
                let bytes = wasip2::random::random::get_random_bytes(32 << 20);
                Err(ProjectionError::Internal(format!(
                    "the host handed over {} random bytes",
                    bytes.len()
                )))
            }
            Some("remember") => Ok(one_row(
                "users",
                "user_id",
                event.entity_id,
                "display_name",
                Value::Text(previous.unwrap_or_else(|| "nothing before".into())),
            )),
            Some(m @ ("wrong_type" | "too_long")) => Ok(one_row(
                "users",
                "user_id",
                event.entity_id,
                "display_name",
                if m == "wrong_type" {
                    Value::Int(42)
                } else {
                    Value::Text("x".repeat(300))
                },
            )),
            Some("undeclared") => Ok(one_row(
                "orders",
                "order_id",
                event.entity_id,
                "status",
                Value::Text("hijacked".into()),
            )),
            Some("undeclared_column") => Ok(one_row(
                "users",
                "user_id",
                event.entity_id,
                "password_hash",
                Value::Text("x".into()),
            )),
            _ => projection_sdk::project(&projection_sdk::flatten::USER, event),
        }
    }
}

projection_sdk::bindings::export!(Component);
