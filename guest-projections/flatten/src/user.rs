//! `user.*` -> `users` (soft delete).
//!
//! | column         | source                          |
//! |----------------|---------------------------------|
//! | user_id        | entity_id                       |
//! | email          | data.contact_info.primary_email |
//! | phone          | data.contact_info.phone         |
//! | display_name   | data.profile.display_name       |
//! | avatar         | data.profile.avatar             |
//! | bio            | data.profile.bio                |
//! | deleted_at     | data.deleted_at; user.deleted sets it to the event time |
//! | created_at     | data.created_at                 |
//! | updated_at     | data.updated_at, else the event time |

use crate::{
    Domain, Envelope, Event, Info, Keyed, Result, RowOp, TableDef, Upsert, col, make_info,
};

pub(crate) const USERS: TableDef = TableDef {
    name: "users",
    columns: &[
        "user_id",
        "email",
        "phone",
        "display_name",
        "avatar",
        "bio",
        "deleted_at",
        "created_at",
        "updated_at",
    ],
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
