//! `user.*` -> `users` (soft delete). The columns and their sources are
//! declared in [`USERS`].

use crate::SqlType::*;
use crate::prelude::*;
use crate::table::{CREATED_AT, Table, UPDATED_AT, not_null, nullable};
use crate::{Domain, Envelope, Event, Info, Keyed, Result, RowOp, Upsert, col, make_info};

pub(crate) const USERS: Table = Table {
    name: "users",
    doc: "One row per user account; `user.deleted` sets `deleted_at` (soft delete).",
    columns: &[
        not_null("user_id", Varchar(24), "entity_id"),
        nullable("email", Varchar(255), "data.contact_info.primary_email"),
        nullable("phone", Varchar(64), "data.contact_info.phone"),
        nullable("display_name", Varchar(255), "data.profile.display_name"),
        nullable("avatar", Varchar(1024), "data.profile.avatar"),
        nullable("bio", Text, "data.profile.bio"),
        nullable(
            "deleted_at",
            Datetime,
            "data.deleted_at; user.deleted sets the event time",
        ),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["user_id"],
    unique_keys: &[],
    indexes: &[&["email"], &["created_at"]],
    parent: None,
};

const HANDLES: [&str; 3] = ["user.created", "user.updated", "user.deleted"];

pub(crate) const DOMAIN: Domain = Domain {
    name: "user",
    info,
    project,
};

fn info() -> Info {
    make_info("user", &HANDLES, &[&USERS])
}

fn project(env: &Envelope<'_>) -> Result<Vec<RowOp>> {
    let ev = Event::parse(env)?;
    match ev.event_type {
        "user.created" | "user.updated" => upsert(&ev),
        "user.deleted" => {
            ev.check_payload_id("user_id")?;
            Ok(vec![RowOp::SoftDelete(Keyed {
                table: USERS.name.into(),
                key: vec![col("user_id", ev.id())],
            })])
        }
        _ => Err(ev.unsupported("user")),
    }
}

fn upsert(ev: &Event<'_>) -> Result<Vec<RowOp>> {
    let data = ev.data()?;
    let contact = data.obj("contact_info")?;
    let profile = data.obj("profile")?;
    let [created_at, updated_at] = ev.record_times(&data)?;
    Ok(vec![RowOp::Upsert(Upsert {
        table: USERS.name.into(),
        key: vec![col("user_id", ev.id())],
        values: vec![
            col("email", contact.text("primary_email")?),
            col("phone", contact.text("phone")?),
            col("display_name", profile.text("display_name")?),
            col("avatar", profile.text("avatar")?),
            col("bio", profile.text("bio")?),
            col("deleted_at", data.timestamp("deleted_at")?),
            created_at,
            updated_at,
        ],
    })])
}
