//! `supplier.*` -> `suppliers` (hard delete). The columns and their sources
//! are declared in [`SUPPLIERS`].

use crate::SqlType::*;
use crate::prelude::*;
use crate::table::{CREATED_AT, Table, UPDATED_AT, not_null, nullable};
use crate::{Domain, Envelope, Event, Info, Keyed, Result, RowOp, Upsert, col, make_info};

pub(crate) const SUPPLIERS: Table = Table {
    name: "suppliers",
    doc: "One row per supplier; `supplier.deleted` deletes it.",
    columns: &[
        not_null("supplier_id", Varchar(24), "entity_id"),
        nullable("email", Varchar(255), "data.contact_info.primary_email"),
        nullable(
            "primary_phone",
            Varchar(64),
            "data.contact_info.primary_phone",
        ),
        nullable(
            "contact_person_name",
            Varchar(255),
            "data.contact_info.contact_person_name",
        ),
        nullable(
            "contact_person_title",
            Varchar(255),
            "data.contact_info.contact_person_title",
        ),
        nullable(
            "contact_person_email",
            Varchar(255),
            "data.contact_info.contact_person_email",
        ),
        nullable(
            "contact_person_phone",
            Varchar(64),
            "data.contact_info.contact_person_phone",
        ),
        nullable("legal_name", Varchar(255), "data.company_info.legal_name"),
        nullable("dba_name", Varchar(255), "data.company_info.dba_name"),
        nullable(
            "street",
            Varchar(255),
            "data.company_info.business_address.street",
        ),
        nullable(
            "city",
            Varchar(128),
            "data.company_info.business_address.city",
        ),
        nullable(
            "state",
            Varchar(128),
            "data.company_info.business_address.state",
        ),
        nullable(
            "zip_code",
            Varchar(32),
            "data.company_info.business_address.zip_code",
        ),
        nullable(
            "country",
            Varchar(64),
            "data.company_info.business_address.country",
        ),
        nullable(
            "support_email",
            Varchar(255),
            "data.business_info.support_email",
        ),
        nullable(
            "support_phone",
            Varchar(64),
            "data.business_info.support_phone",
        ),
        nullable("website", Varchar(1024), "data.business_info.website"),
        nullable("social_urls", Json, "data.business_info.social_urls (JSON)"),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["supplier_id"],
    unique_keys: &[],
    indexes: &[&["email"], &["legal_name"], &["country", "state", "city"]],
    parent: None,
};

const HANDLES: [&str; 3] = ["supplier.created", "supplier.updated", "supplier.deleted"];

pub(crate) const DOMAIN: Domain = Domain {
    name: "supplier",
    info,
    project,
};

fn info() -> Info {
    make_info("supplier", &HANDLES, &[&SUPPLIERS])
}

fn project(env: &Envelope<'_>) -> Result<Vec<RowOp>> {
    let ev = Event::parse(env)?;
    match ev.event_type {
        "supplier.created" | "supplier.updated" => upsert(&ev),
        "supplier.deleted" => {
            ev.check_payload_id("supplier_id")?;
            Ok(vec![RowOp::Delete(Keyed {
                table: SUPPLIERS.name.into(),
                key: vec![col("supplier_id", ev.id())],
            })])
        }
        _ => Err(ev.unsupported("supplier")),
    }
}

fn upsert(ev: &Event<'_>) -> Result<Vec<RowOp>> {
    let data = ev.data()?;
    let contact = data.obj("contact_info")?;
    let company = data.obj("company_info")?;
    let address = company.obj("business_address")?;
    let business = data.obj("business_info")?;
    let [created_at, updated_at] = ev.record_times(&data)?;
    Ok(vec![RowOp::Upsert(Upsert {
        table: SUPPLIERS.name.into(),
        key: vec![col("supplier_id", ev.id())],
        values: vec![
            col("email", contact.text("primary_email")?),
            col("primary_phone", contact.text("primary_phone")?),
            col("contact_person_name", contact.text("contact_person_name")?),
            col(
                "contact_person_title",
                contact.text("contact_person_title")?,
            ),
            col(
                "contact_person_email",
                contact.text("contact_person_email")?,
            ),
            col(
                "contact_person_phone",
                contact.text("contact_person_phone")?,
            ),
            col("legal_name", company.text("legal_name")?),
            col("dba_name", company.text("dba_name")?),
            col("street", address.text("street")?),
            col("city", address.text("city")?),
            col("state", address.text("state")?),
            col("zip_code", address.text("zip_code")?),
            col("country", address.text("country")?),
            col("support_email", business.text("support_email")?),
            col("support_phone", business.text("support_phone")?),
            col("website", business.text("website")?),
            col("social_urls", business.json("social_urls")?),
            created_at,
            updated_at,
        ],
    })])
}
