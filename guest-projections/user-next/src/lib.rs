//! The `user` projection with one rule changed, as a projection author would
//! ship a new version: `display_name` is stored upper-cased and the crate's
//! version (which the component reports) is 1.1.0. The host's tests hot-reload it and replay the user domain through it.

#![cfg_attr(target_arch = "wasm32", no_std)]

use projection_sdk::flatten::{self, Domain, Envelope, ProjectionError, RowOp, Value};
use projection_sdk::prelude::*;

fn project(envelope: &Envelope<'_>) -> Result<Vec<RowOp>, ProjectionError> {
    let mut ops = (flatten::USER.project)(envelope)?;
    for op in &mut ops {
        if let RowOp::Upsert(u) | RowOp::Update(u) = op {
            for c in &mut u.values {
                if c.name == "display_name"
                    && let Value::Text(s) = &mut c.value
                {
                    *s = s.to_uppercase();
                }
            }
        }
    }
    Ok(ops)
}

const USER_NEXT: Domain = Domain {
    name: "user",
    info: flatten::USER.info,
    project,
};

projection_sdk::component!(USER_NEXT);
