//! The user projection declaring what the host must refuse to do to a live
//! table: `users.phone` as BIGINT (a type change of a VARCHAR) and a new
//! `users.score` BIGINT NOT NULL (existing rows would have no value). Loading
//! it must change nothing, print the SQL an operator would run, and leave
//! the serving component in place.

#![cfg_attr(target_arch = "wasm32", no_std)]

use projection_sdk::flatten::{self, ColumnDef, Domain, Info, SqlType};

fn info() -> Info {
    let mut info = (flatten::USER.info)();
    for t in &mut info.tables {
        if t.name == "users" {
            for c in &mut t.columns {
                if c.name == "phone" {
                    c.sql_type = SqlType::Bigint;
                }
            }
            t.columns.push(ColumnDef {
                name: "score".into(),
                sql_type: SqlType::Bigint,
                nullable: false,
                doc: "never written".into(),
            });
        }
    }
    info
}

const USER_NARROWING: Domain = Domain {
    name: "user",
    info,
    project: flatten::USER.project,
};

projection_sdk::component!(USER_NARROWING);
