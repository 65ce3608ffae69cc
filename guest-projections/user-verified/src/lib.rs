//! The `user` projection extended as the author's guide does it: it also
//! handles `user.verified` and writes `users.verified_at` (the event time), a
//! column the shipped schema does not have. It declares the column (typed,
//! nullable), so the host adds it when it loads this component.

#![cfg_attr(target_arch = "wasm32", no_std)]

use projection_sdk::flatten::{
    self, ColumnDef, Domain, Envelope, Info, ProjectionError, RowOp, SqlType, Upsert, Value, col,
    doc::normalize_timestamp,
};
use projection_sdk::prelude::*;

fn info() -> Info {
    let mut info = (flatten::USER.info)();
    info.handles.push("user.verified".into());
    for t in &mut info.writes {
        if t.table == "users" {
            t.columns.push("verified_at".into());
        }
    }
    for t in &mut info.tables {
        if t.name == "users" {
            t.columns.push(ColumnDef {
                name: "verified_at".into(),
                sql_type: SqlType::Datetime,
                nullable: true,
                doc: "user.verified: the event time".into(),
            });
        }
    }
    info
}

fn project(env: &Envelope<'_>) -> Result<Vec<RowOp>, ProjectionError> {
    if env.event_type != "user.verified" {
        return (flatten::USER.project)(env);
    }
    let at = normalize_timestamp(env.timestamp).ok_or_else(|| {
        ProjectionError::InvalidEvent(format!("timestamp {:?} is not RFC 3339", env.timestamp))
    })?;
    Ok(vec![RowOp::Update(Upsert {
        table: "users".into(),
        key: vec![col("user_id", Value::Text(env.entity_id.to_owned()))],
        values: vec![
            col("verified_at", Value::Timestamp(at.clone())),
            col("updated_at", Value::Timestamp(at)),
        ],
    })])
}

const USER_VERIFIED: Domain = Domain {
    name: "user",
    info,
    project,
};

projection_sdk::component!(USER_VERIFIED);
