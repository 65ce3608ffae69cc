//! `product.*` -> `products` + `product_variants` (hard delete, variants cascade).
//!
//! Every lifecycle event (created, updated, published, discontinued,
//! out_of_stock, restored) carries the full document and refreshes the row and
//! replaces the variants, so a variant removed from the document disappears.
//! The columns and their sources are declared in [`PRODUCTS`] and
//! [`VARIANTS`].

use crate::SqlType::*;
use crate::prelude::*;
use crate::table::{CREATED_AT, Parent, Table, UPDATED_AT, not_null, nullable};
use crate::{
    Domain, Envelope, Event, Info, Keyed, ProjectionError, Replace, Result, RowOp, Upsert, Value,
    col, make_info,
};

pub(crate) const PRODUCTS: Table = Table {
    name: "products",
    doc: "One row per product; `product.deleted` deletes it and its variants.",
    columns: &[
        not_null("product_id", Varchar(24), "entity_id"),
        nullable("supplier_id", Varchar(24), "data.supplier_id"),
        nullable("name", Varchar(512), "data.name"),
        nullable("description", Text, "data.description"),
        nullable("category", Varchar(128), "data.category"),
        nullable("base_price_cents", Bigint, "data.base_price_cents"),
        nullable("status", Varchar(32), "data.status"),
        nullable("base_sku", Varchar(128), "data.metadata.base_sku"),
        nullable("view_count", Bigint, "data.stats.view_count"),
        nullable("favorite_count", Bigint, "data.stats.favorite_count"),
        nullable("purchase_count", Bigint, "data.stats.purchase_count"),
        nullable("review_count", Bigint, "data.stats.review_count"),
        nullable("average_rating", Double, "data.stats.average_rating"),
        nullable("published_at", Datetime, "data.published_at"),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["product_id"],
    unique_keys: &[],
    indexes: &[
        &["supplier_id"],
        &["category"],
        &["status"],
        &["created_at"],
    ],
    parent: None,
};

pub(crate) const VARIANTS: Table = Table {
    name: "product_variants",
    doc: "One row per entry of a product's `variants` map, replaced with every product event.",
    columns: &[
        not_null("id", Serial, "assigned by the database"),
        not_null("product_id", Varchar(24), "entity_id"),
        not_null("variant_key", Varchar(255), "the key in data.variants"),
        nullable("sku", Varchar(128), "data.variants.<key>.sku"),
        nullable("price_cents", Bigint, "data.variants.<key>.price_cents"),
        nullable("quantity", Bigint, "data.variants.<key>.quantity"),
        nullable(
            "attributes_json",
            Json,
            "data.variants.<key>.attributes (JSON)",
        ),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["id"],
    unique_keys: &[&["product_id", "variant_key"]],
    indexes: &[],
    parent: Some(Parent {
        columns: &["product_id"],
        table: "products",
        references: &["product_id"],
        cascade: true,
    }),
};

const HANDLES: [&str; 7] = [
    "product.created",
    "product.updated",
    "product.published",
    "product.discontinued",
    "product.out_of_stock",
    "product.restored",
    "product.deleted",
];

pub(crate) const DOMAIN: Domain = Domain {
    name: "product",
    info,
    project,
};

fn info() -> Info {
    make_info("product", &HANDLES, &[&PRODUCTS, &VARIANTS])
}

fn project(env: &Envelope<'_>) -> Result<Vec<RowOp>> {
    let ev = Event::parse(env)?;
    match ev.event_type {
        "product.created"
        | "product.updated"
        | "product.published"
        | "product.discontinued"
        | "product.out_of_stock"
        | "product.restored" => upsert(&ev),
        "product.deleted" => {
            ev.check_payload_id("product_id")?;
            Ok(vec![RowOp::Delete(Keyed {
                table: PRODUCTS.name.into(),
                key: vec![col("product_id", ev.id())],
            })])
        }
        _ => Err(ev.unsupported("product")),
    }
}

fn upsert(ev: &Event<'_>) -> Result<Vec<RowOp>> {
    let data = ev.data()?;
    let metadata = data.obj("metadata")?;
    let stats = data.obj("stats")?;
    let [created_at, updated_at] = ev.record_times(&data)?;

    let variants = data.obj("variants")?;
    let mut rows = Vec::new();
    for (key, _) in data.entries("variants")? {
        if key.is_empty() {
            return Err(ProjectionError::InvalidEvent(
                "data.variants: a variant key is empty".into(),
            ));
        }
        let variant = variants.obj(key)?;
        rows.push(vec![
            col("variant_key", Value::Text(key.clone())),
            col("sku", variant.text("sku")?),
            col("price_cents", variant.int("price_cents")?),
            col("quantity", variant.int("quantity")?),
            col("attributes_json", variant.json("attributes")?),
            created_at.clone(),
            updated_at.clone(),
        ]);
    }

    Ok(vec![
        RowOp::Upsert(Upsert {
            table: PRODUCTS.name.into(),
            key: vec![col("product_id", ev.id())],
            values: vec![
                col("supplier_id", data.text("supplier_id")?),
                col("name", data.text("name")?),
                col("description", data.text("description")?),
                col("category", data.text("category")?),
                col("base_price_cents", data.int("base_price_cents")?),
                col("status", data.text("status")?),
                col("base_sku", metadata.text("base_sku")?),
                col("view_count", stats.int("view_count")?),
                col("favorite_count", stats.int("favorite_count")?),
                col("purchase_count", stats.int("purchase_count")?),
                col("review_count", stats.int("review_count")?),
                col("average_rating", stats.float("average_rating")?),
                col("published_at", data.timestamp("published_at")?),
                created_at,
                updated_at,
            ],
        }),
        RowOp::Replace(Replace {
            table: VARIANTS.name.into(),
            parent: vec![col("product_id", ev.id())],
            rows,
        }),
    ])
}
