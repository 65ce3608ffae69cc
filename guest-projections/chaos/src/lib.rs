//! A `user` projection that misbehaves on request, to prove the sandbox.
//!
//! It projects like the real user projection unless `data.chaos` says:
//! - `"loop"`: spins forever (the host's deadline must stop it);
//! - `"alloc"`: allocates without bound (the memory cap must stop it);
//! - `"panic"`: panics, which traps the instance;
//! - `"undeclared"`: writes a table it did not declare;
//! - `"undeclared_column"`: writes an undeclared column of a declared table.

use projection_sdk::bindings::projector::projection::types::{
    Column, Envelope, Info, ProjectionError, RowOp, Upsert, Value,
};

struct Component;

fn marker(data: &str) -> Option<&'static str> {
    ["undeclared_column", "undeclared", "loop", "alloc", "panic"]
        .into_iter()
        .find(|m| {
            data.contains(&format!("\"chaos\":\"{m}\""))
                || data.contains(&format!("\"chaos\": \"{m}\""))
        })
}

impl projection_sdk::bindings::Guest for Component {
    fn describe() -> Info {
        let mut info = projection_sdk::describe(&projection_sdk::flatten::USER);
        info.version = format!("{}-chaos", info.version);
        info
    }

    fn project(event: Envelope) -> Result<Vec<RowOp>, ProjectionError> {
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
            Some("undeclared") => Ok(vec![RowOp::Upsert(Upsert {
                table: "orders".into(),
                key: vec![Column {
                    name: "order_id".into(),
                    value: Value::Text(event.entity_id),
                }],
                values: vec![Column {
                    name: "status".into(),
                    value: Value::Text("hijacked".into()),
                }],
            })]),
            Some("undeclared_column") => Ok(vec![RowOp::Upsert(Upsert {
                table: "users".into(),
                key: vec![Column {
                    name: "user_id".into(),
                    value: Value::Text(event.entity_id),
                }],
                values: vec![Column {
                    name: "password_hash".into(),
                    value: Value::Text("x".into()),
                }],
            })]),
            _ => projection_sdk::project(&projection_sdk::flatten::USER, event),
        }
    }
}

projection_sdk::bindings::export!(Component);
