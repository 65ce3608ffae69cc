//! `product.*` -> `products` + `product_variants` (hard delete, variants cascade).
//!
//! Every lifecycle event (created, updated, published, discontinued,
//! out_of_stock, restored) carries the full document and refreshes the row and
//! replaces the variants, so a variant removed from the document disappears.
//!
//! | products column  | source                        |
//! |------------------|-------------------------------|
//! | product_id       | entity_id                     |
//! | supplier_id      | data.supplier_id              |
//! | name             | data.name                     |
//! | description      | data.description              |
//! | category         | data.category                 |
//! | base_price_cents | data.base_price_cents         |
//! | status           | data.status                   |
//! | base_sku         | data.metadata.base_sku        |
//! | view_count, favorite_count, purchase_count, review_count | data.stats.* (integers) |
//! | average_rating   | data.stats.average_rating (number) |
//! | published_at     | data.published_at             |
//!
//! | product_variants column | source                              |
//! |-------------------------|-------------------------------------|
//! | product_id              | entity_id                           |
//! | variant_key             | the key in data.variants            |
//! | sku                     | data.variants.<key>.sku             |
//! | price_cents             | data.variants.<key>.price_cents     |
//! | quantity                | data.variants.<key>.quantity        |
//! | attributes_json         | data.variants.<key>.attributes (JSON) |
//!
//! Both tables: created_at / updated_at from the document, else the event time.

use crate::{
    Domain, Envelope, Event, Info, Keyed, ProjectionError, Replace, Result, RowOp, TableDef,
    Upsert, Value, col, make_info,
};

pub(crate) const PRODUCTS: TableDef = TableDef {
    name: "products",
    columns: &[
        "product_id",
        "supplier_id",
        "name",
        "description",
        "category",
        "base_price_cents",
        "status",
        "base_sku",
        "view_count",
        "favorite_count",
        "purchase_count",
        "review_count",
        "average_rating",
        "published_at",
        "created_at",
        "updated_at",
    ],
};

pub(crate) const VARIANTS: TableDef = TableDef {
    name: "product_variants",
    columns: &[
        "product_id",
        "variant_key",
        "sku",
        "price_cents",
        "quantity",
        "attributes_json",
        "created_at",
        "updated_at",
    ],
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
