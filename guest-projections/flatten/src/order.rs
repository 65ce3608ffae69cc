//! `order.*` -> `orders` + `order_items`.
//!
//! `order.created` carries the full document: the order row is upserted and
//! its items replaced. `order.cancelled` (`{"order_number"}`) and
//! `order.shipped` (`{"order_number", "carrier", "tracking_number",
//! "shipped_at"}`) only update an existing order row. The columns and their
//! sources are declared in [`ORDERS`] and [`ITEMS`].

use crate::SqlType::*;
use crate::prelude::*;
use crate::table::{CREATED_AT, Parent, Table, UPDATED_AT, not_null, nullable};
use crate::{
    Domain, Envelope, Event, Info, ProjectionError, Replace, Result, RowOp, Upsert, Value, col,
    make_info,
};

pub(crate) const ORDERS: Table = Table {
    name: "orders",
    doc: "One row per order; cancelling or shipping updates it.",
    columns: &[
        not_null("order_id", Varchar(24), "entity_id"),
        nullable("order_number", Varchar(64), "data.order_number"),
        nullable("customer_user_id", Varchar(24), "data.customer.user_id"),
        nullable("customer_name", Varchar(255), "data.customer.display_name"),
        nullable("customer_email", Varchar(255), "data.customer.email"),
        nullable(
            "shipping_recipient_name",
            Varchar(255),
            "data.shipping_address.recipient_name",
        ),
        nullable("shipping_phone", Varchar(64), "data.shipping_address.phone"),
        nullable(
            "shipping_street",
            Varchar(255),
            "data.shipping_address.street",
        ),
        nullable("shipping_city", Varchar(128), "data.shipping_address.city"),
        nullable(
            "shipping_state",
            Varchar(128),
            "data.shipping_address.state",
        ),
        nullable(
            "shipping_zip_code",
            Varchar(32),
            "data.shipping_address.zip_code",
        ),
        nullable(
            "shipping_country",
            Varchar(64),
            "data.shipping_address.country",
        ),
        nullable(
            "status",
            Varchar(32),
            "data.status; \"cancelled\" / \"shipped\" on those events",
        ),
        nullable("total_cents", Bigint, "data.total_cents"),
        nullable(
            "carrier",
            Varchar(64),
            "data.shipment.carrier; order.shipped: data.carrier",
        ),
        nullable(
            "tracking_number",
            Varchar(128),
            "data.shipment.tracking_number; order.shipped: data.tracking_number",
        ),
        nullable(
            "shipped_at",
            Datetime,
            "data.shipment.shipped_at; order.shipped: data.shipped_at, else the event time",
        ),
        nullable(
            "cancelled_at",
            Datetime,
            "data.cancelled_at; order.cancelled: data.cancelled_at, else the event time",
        ),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["order_id"],
    unique_keys: &[&["order_number"]],
    indexes: &[&["customer_user_id"], &["status"], &["created_at"]],
    parent: None,
};

pub(crate) const ITEMS: Table = Table {
    name: "order_items",
    doc: "One row per item of an order, replaced with `order.created`.",
    columns: &[
        not_null("id", Serial, "assigned by the database"),
        not_null("order_id", Varchar(24), "entity_id"),
        not_null("item_id", Varchar(64), "item.item_id"),
        nullable(
            "product_id",
            Varchar(24),
            "item.product_snapshot.product_id",
        ),
        nullable(
            "product_name",
            Varchar(512),
            "item.product_snapshot.product_name",
        ),
        nullable(
            "supplier_id",
            Varchar(24),
            "item.product_snapshot.supplier_id",
        ),
        nullable(
            "variant_name",
            Varchar(255),
            "item.product_snapshot.variant_name",
        ),
        nullable("quantity", Bigint, "item.quantity"),
        nullable("unit_price_cents", Bigint, "item.unit_price_cents"),
        nullable("total_cents", Bigint, "item.total_cents"),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["id"],
    unique_keys: &[&["order_id", "item_id"]],
    indexes: &[&["product_id"]],
    parent: Some(Parent {
        columns: &["order_id"],
        table: "orders",
        references: &["order_id"],
        cascade: true,
    }),
};

const HANDLES: [&str; 3] = ["order.created", "order.cancelled", "order.shipped"];

pub(crate) const DOMAIN: Domain = Domain {
    name: "order",
    info,
    project,
};

fn info() -> Info {
    make_info("order", &HANDLES, &[&ORDERS, &ITEMS])
}

fn project(env: &Envelope<'_>) -> Result<Vec<RowOp>> {
    let ev = Event::parse(env)?;
    match ev.event_type {
        "order.created" => created(&ev),
        "order.cancelled" => {
            let data = ev.data()?;
            let at = ev_time(&ev, data.timestamp("cancelled_at")?);
            Ok(vec![update(
                &ev,
                vec![
                    col("status", Value::Text("cancelled".into())),
                    col("cancelled_at", at),
                    col("updated_at", Value::Timestamp(ev.timestamp.clone())),
                ],
            )])
        }
        "order.shipped" => {
            let data = ev.data()?;
            let at = ev_time(&ev, data.timestamp("shipped_at")?);
            Ok(vec![update(
                &ev,
                vec![
                    col("status", Value::Text("shipped".into())),
                    col("carrier", data.text("carrier")?),
                    col("tracking_number", data.text("tracking_number")?),
                    col("shipped_at", at),
                    col("updated_at", Value::Timestamp(ev.timestamp.clone())),
                ],
            )])
        }
        _ => Err(ev.unsupported("order")),
    }
}

/// The given time, or the event time when the payload has none.
fn ev_time(ev: &Event<'_>, at: Value) -> Value {
    match at {
        Value::Null => Value::Timestamp(ev.timestamp.clone()),
        t => t,
    }
}

fn update(ev: &Event<'_>, values: Vec<crate::Column>) -> RowOp {
    RowOp::Update(Upsert {
        table: ORDERS.name.into(),
        key: vec![col("order_id", ev.id())],
        values,
    })
}

fn created(ev: &Event<'_>) -> Result<Vec<RowOp>> {
    let data = ev.data()?;
    let customer = data.obj("customer")?;
    let shipping = data.obj("shipping_address")?;
    let shipment = data.obj("shipment")?;
    let [created_at, updated_at] = ev.record_times(&data)?;

    let mut rows = Vec::new();
    for (index, raw) in data.array("items")?.iter().enumerate() {
        let item = data.element("items", index, raw)?;
        let snapshot = item.obj("product_snapshot")?;
        let item_id = item.text("item_id")?;
        if item_id == Value::Null {
            return Err(ProjectionError::InvalidEvent(format!(
                "{}.item_id is missing",
                item.path()
            )));
        }
        rows.push(vec![
            col("item_id", item_id),
            col("product_id", snapshot.text("product_id")?),
            col("product_name", snapshot.text("product_name")?),
            col("supplier_id", snapshot.text("supplier_id")?),
            col("variant_name", snapshot.text("variant_name")?),
            col("quantity", item.int("quantity")?),
            col("unit_price_cents", item.int("unit_price_cents")?),
            col("total_cents", item.int("total_cents")?),
            created_at.clone(),
            updated_at.clone(),
        ]);
    }

    Ok(vec![
        RowOp::Upsert(Upsert {
            table: ORDERS.name.into(),
            key: vec![col("order_id", ev.id())],
            values: vec![
                col("order_number", data.text("order_number")?),
                col("customer_user_id", customer.text("user_id")?),
                col("customer_name", customer.text("display_name")?),
                col("customer_email", customer.text("email")?),
                col("shipping_recipient_name", shipping.text("recipient_name")?),
                col("shipping_phone", shipping.text("phone")?),
                col("shipping_street", shipping.text("street")?),
                col("shipping_city", shipping.text("city")?),
                col("shipping_state", shipping.text("state")?),
                col("shipping_zip_code", shipping.text("zip_code")?),
                col("shipping_country", shipping.text("country")?),
                col("status", data.text("status")?),
                col("total_cents", data.int("total_cents")?),
                col("carrier", shipment.text("carrier")?),
                col("tracking_number", shipment.text("tracking_number")?),
                col("shipped_at", shipment.timestamp("shipped_at")?),
                col("cancelled_at", data.timestamp("cancelled_at")?),
                created_at,
                updated_at,
            ],
        }),
        RowOp::Replace(Replace {
            table: ITEMS.name.into(),
            parent: vec![col("order_id", ev.id())],
            rows,
        }),
    ])
}
