//! `order.*` -> `orders` + `order_items`.
//!
//! `order.created` carries the full document: the order row is upserted and
//! its items replaced. `order.cancelled` (`{"order_number"}`) and
//! `order.shipped` (`{"order_number", "carrier", "tracking_number",
//! "shipped_at"}`) only update an existing order row.
//!
//! | orders column            | source                                  |
//! |--------------------------|-----------------------------------------|
//! | order_id                 | entity_id                               |
//! | order_number             | data.order_number                       |
//! | customer_user_id         | data.customer.user_id                   |
//! | customer_name            | data.customer.display_name              |
//! | customer_email           | data.customer.email                     |
//! | shipping_recipient_name  | data.shipping_address.recipient_name    |
//! | shipping_phone           | data.shipping_address.phone             |
//! | shipping_street, shipping_city, shipping_state, shipping_zip_code, shipping_country | data.shipping_address.* |
//! | status                   | data.status; "cancelled" / "shipped" on those events |
//! | total_cents              | data.total_cents                        |
//! | carrier, tracking_number | data.shipment.* ; order.shipped: data.* |
//! | shipped_at               | data.shipment.shipped_at ; order.shipped: data.shipped_at, else the event time |
//! | cancelled_at             | data.cancelled_at ; order.cancelled: data.cancelled_at, else the event time |
//!
//! | order_items column | source                                   |
//! |--------------------|------------------------------------------|
//! | order_id           | entity_id                                |
//! | item_id            | item.item_id                             |
//! | product_id         | item.product_snapshot.product_id         |
//! | product_name       | item.product_snapshot.product_name       |
//! | supplier_id        | item.product_snapshot.supplier_id        |
//! | variant_name       | item.product_snapshot.variant_name       |
//! | quantity           | item.quantity                            |
//! | unit_price_cents   | item.unit_price_cents                    |
//! | total_cents        | item.total_cents                         |

use crate::{
    Domain, Envelope, Event, Info, ProjectionError, Replace, Result, RowOp, TableDef, Upsert,
    Value, col, make_info,
};

pub(crate) const ORDERS: TableDef = TableDef {
    name: "orders",
    columns: &[
        "order_id",
        "order_number",
        "customer_user_id",
        "customer_name",
        "customer_email",
        "shipping_recipient_name",
        "shipping_phone",
        "shipping_street",
        "shipping_city",
        "shipping_state",
        "shipping_zip_code",
        "shipping_country",
        "status",
        "total_cents",
        "carrier",
        "tracking_number",
        "shipped_at",
        "cancelled_at",
        "created_at",
        "updated_at",
    ],
};

pub(crate) const ITEMS: TableDef = TableDef {
    name: "order_items",
    columns: &[
        "order_id",
        "item_id",
        "product_id",
        "product_name",
        "supplier_id",
        "variant_name",
        "quantity",
        "unit_price_cents",
        "total_cents",
        "created_at",
        "updated_at",
    ],
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
