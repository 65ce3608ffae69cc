//! `supplier.*` -> `suppliers` (hard delete).
//!
//! | column               | source                                        |
//! |----------------------|-----------------------------------------------|
//! | supplier_id          | entity_id                                     |
//! | email                | data.contact_info.primary_email               |
//! | primary_phone        | data.contact_info.primary_phone               |
//! | contact_person_name  | data.contact_info.contact_person_name         |
//! | contact_person_title | data.contact_info.contact_person_title        |
//! | contact_person_email | data.contact_info.contact_person_email        |
//! | contact_person_phone | data.contact_info.contact_person_phone        |
//! | legal_name           | data.company_info.legal_name                  |
//! | dba_name             | data.company_info.dba_name                    |
//! | street, city, state, zip_code, country | data.company_info.business_address.* |
//! | support_email        | data.business_info.support_email              |
//! | support_phone        | data.business_info.support_phone              |
//! | website              | data.business_info.website                    |
//! | social_urls          | data.business_info.social_urls (JSON)         |
//! | created_at / updated_at | data.created_at / data.updated_at, else the event time |

use crate::{
    Domain, Envelope, Event, Info, Keyed, Result, RowOp, TableDef, Upsert, col, make_info,
};

pub(crate) const SUPPLIERS: TableDef = TableDef {
    name: "suppliers",
    columns: &[
        "supplier_id",
        "email",
        "primary_phone",
        "contact_person_name",
        "contact_person_title",
        "contact_person_email",
        "contact_person_phone",
        "legal_name",
        "dba_name",
        "street",
        "city",
        "state",
        "zip_code",
        "country",
        "support_email",
        "support_phone",
        "website",
        "social_urls",
        "created_at",
        "updated_at",
    ],
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
