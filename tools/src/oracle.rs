//! An independent oracle of the projection: the tables a stream of events
//! must end as, computed without the host.
//!
//! It is deliberately naive and written apart from the code it checks: no
//! `flatten` crate, no sink, no batching. Each event's columns are taken from
//! its JSON with the mapping of the seed's flattening tables (and the
//! documented rules where the seed is silent: `created_at`/`updated_at` from
//! the document, else the event time; a cancel or ship updates the order
//! row), and applied in its own transaction with plain SQL, in stream order
//! (which keeps every entity's order, as a partition does). A write only
//! happens when the event is at least as new as the row, as the seed's
//! "advanced challenges" ask. Comparing the host's tables with these, whole
//! rows, catches a host that records an event but drops or corrupts its rows
//! the same way every time.

use anyhow::Context as _;
use serde_json::Value;
use sqlx::{Connection as _, MySqlConnection, MySqlPool};

use crate::generate::Generated;

/// A column value to bind.
#[derive(Debug, Clone)]
enum V {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
}

/// `row[path]` following object keys; `None` for a missing or null step.
fn at<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = doc;
    for key in path {
        v = v.get(key)?;
    }
    (!v.is_null()).then_some(v)
}

fn text(doc: &Value, path: &[&str]) -> V {
    match at(doc, path) {
        Some(Value::String(s)) => V::Text(s.clone()),
        Some(other) => V::Text(other.to_string()),
        None => V::Null,
    }
}

fn int(doc: &Value, path: &[&str]) -> V {
    at(doc, path)
        .and_then(Value::as_i64)
        .map_or(V::Null, V::Int)
}

fn float(doc: &Value, path: &[&str]) -> V {
    at(doc, path)
        .and_then(Value::as_f64)
        .map_or(V::Null, V::Float)
}

/// RFC 3339 as the UTC `DATETIME(6)` text MySQL takes.
fn db_time(rfc3339: &str) -> anyhow::Result<String> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .or_else(|_| {
            // A document time without an offset is UTC.
            chrono::NaiveDateTime::parse_from_str(rfc3339, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|n| n.and_utc().fixed_offset())
        })
        .with_context(|| format!("not a timestamp: {rfc3339}"))?;
    Ok(t.with_timezone(&chrono::Utc)
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string())
}

fn time(doc: &Value, path: &[&str]) -> anyhow::Result<V> {
    match at(doc, path).and_then(Value::as_str) {
        Some(s) => Ok(V::Text(db_time(s)?)),
        None => Ok(V::Null),
    }
}

/// JSON text with object keys sorted at every level, compact.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn json(doc: &Value, path: &[&str]) -> V {
    at(doc, path).map_or(V::Null, |v| V::Text(canonical(v)))
}

/// One event as the oracle reads it.
struct Event {
    event_type: String,
    event_id: String,
    /// The event time, as `DATETIME(6)` text.
    ts: String,
    entity: String,
    data: Value,
}

impl Event {
    fn parse(payload: &[u8]) -> anyhow::Result<Event> {
        let v: Value = serde_json::from_slice(payload).context("an envelope")?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .with_context(|| format!("envelope without {k}"))
        };
        Ok(Event {
            event_type: field("event_type")?,
            event_id: field("event_id")?,
            ts: db_time(&field("timestamp")?)?,
            entity: field("entity_id")?,
            data: v["data"].clone(),
        })
    }

    /// The timestamp at `path` of the data, else the event time.
    fn time_or_now(&self, path: &[&str]) -> anyhow::Result<V> {
        Ok(match time(&self.data, path)? {
            V::Null => V::Text(self.ts.clone()),
            t => t,
        })
    }

    /// `data.created_at` and `data.updated_at`, each else the event time.
    fn record_times(&self) -> anyhow::Result<[V; 2]> {
        Ok([
            self.time_or_now(&["created_at"])?,
            self.time_or_now(&["updated_at"])?,
        ])
    }
}

fn bind<'q>(
    q: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    v: &'q V,
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    match v {
        V::Null => q.bind(None::<String>),
        V::Text(s) => q.bind(s.as_str()),
        V::Int(i) => q.bind(*i),
        V::Float(f) => q.bind(*f),
    }
}

/// Inserts the row, or overwrites it if the event is at least as new.
async fn upsert(
    conn: &mut MySqlConnection,
    e: &Event,
    table: &str,
    cols: &[(&str, V)],
) -> anyhow::Result<()> {
    let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    let sets: Vec<String> = names
        .iter()
        .skip(1)
        .chain(["event_id", "event_timestamp"].iter())
        .map(|n| {
            format!("`{n}` = IF(VALUES(event_timestamp) >= event_timestamp, VALUES(`{n}`), `{n}`)")
        })
        .collect();
    // The guard reads the old event_timestamp: it is assigned last.
    let sql = format!(
        "INSERT INTO `{table}` ({}, event_id, event_timestamp) VALUES ({}) ON DUPLICATE KEY UPDATE {}",
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", "),
        vec!["?"; cols.len() + 2].join(", "),
        sets.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for (_, v) in cols {
        q = bind(q, v);
    }
    q.bind(&e.event_id)
        .bind(&e.ts)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("{} {}: upsert {table}", e.event_type, e.event_id))?;
    Ok(())
}

/// The parent's children become exactly `rows`, if the event is at least as
/// new as the parent row.
async fn replace(
    conn: &mut MySqlConnection,
    e: &Event,
    (parent_table, parent_key): (&str, &str),
    table: &str,
    rows: &[Vec<(&str, V)>],
) -> anyhow::Result<()> {
    let parent_ts: Option<String> = sqlx::query_scalar(&format!(
        "SELECT CAST(event_timestamp AS CHAR) FROM `{parent_table}` WHERE `{parent_key}` = ?"
    ))
    .bind(&e.entity)
    .fetch_optional(&mut *conn)
    .await?;
    if parent_ts.is_none_or(|t| t > e.ts) {
        return Ok(());
    }
    sqlx::query(&format!("DELETE FROM `{table}` WHERE `{parent_key}` = ?"))
        .bind(&e.entity)
        .execute(&mut *conn)
        .await?;
    for row in rows {
        let mut cols = vec![(parent_key, V::Text(e.entity.clone()))];
        cols.extend(row.iter().cloned());
        upsert(conn, e, table, &cols).await?;
    }
    Ok(())
}

/// Sets columns of an existing row, if the event is at least as new.
async fn update(
    conn: &mut MySqlConnection,
    e: &Event,
    (table, key): (&str, &str),
    cols: &[(&str, V)],
) -> anyhow::Result<()> {
    let sets: Vec<String> = cols.iter().map(|(n, _)| format!("`{n}` = ?")).collect();
    let sql = format!(
        "UPDATE `{table}` SET {}, event_id = ?, event_timestamp = ? WHERE `{key}` = ? AND event_timestamp <= ?",
        sets.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for (_, v) in cols {
        q = bind(q, v);
    }
    q.bind(&e.event_id)
        .bind(&e.ts)
        .bind(&e.entity)
        .bind(&e.ts)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sets `deleted_at` to the event time.
async fn soft_delete(
    conn: &mut MySqlConnection,
    e: &Event,
    table_key: (&str, &str),
) -> anyhow::Result<()> {
    update(conn, e, table_key, &[("deleted_at", V::Text(e.ts.clone()))]).await
}

/// Deletes the row if the event is at least as new, and remembers the
/// delete (the newest one per row): an older event for the entity changes
/// nothing afterwards.
async fn delete(
    conn: &mut MySqlConnection,
    e: &Event,
    (table, key): (&str, &str),
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "DELETE FROM `{table}` WHERE `{key}` = ? AND event_timestamp <= ?"
    ))
    .bind(&e.entity)
    .bind(&e.ts)
    .execute(&mut *conn)
    .await?;
    let newest = tombstone_of(conn, table, &e.entity).await?;
    if newest.as_ref().is_none_or(|t| *t <= e.ts) {
        sqlx::query("REPLACE INTO tombstones (table_name, row_key, event_id, event_timestamp) VALUES (?, ?, ?, ?)")
            .bind(table)
            .bind(&e.entity)
            .bind(&e.event_id)
            .bind(&e.ts)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The time of the newest delete of `entity`'s row in `table`, if any.
async fn tombstone_of(
    conn: &mut MySqlConnection,
    table: &str,
    entity: &str,
) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(event_timestamp AS CHAR) FROM tombstones WHERE table_name = ? AND row_key = ?",
    )
    .bind(table)
    .bind(entity)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Whether a delete newer than the event removed the entity's row.
async fn deleted_after(conn: &mut MySqlConnection, e: &Event) -> anyhow::Result<bool> {
    let table = match e.event_type.split('.').next() {
        Some("user") => "users",
        Some("supplier") => "suppliers",
        Some("product") => "products",
        Some("order") => "orders",
        Some("post") => "posts",
        _ => return Ok(false),
    };
    let deleted = tombstone_of(conn, table, &e.entity).await?;
    Ok(deleted.is_some_and(|t| t > e.ts))
}

async fn apply_one(conn: &mut MySqlConnection, e: &Event) -> anyhow::Result<()> {
    if deleted_after(conn, e).await? {
        return Ok(());
    }
    let d = &e.data;
    let id = || V::Text(e.entity.clone());
    match e.event_type.as_str() {
        "user.created" | "user.updated" => {
            let [created, updated] = e.record_times()?;
            upsert(
                conn,
                e,
                "users",
                &[
                    ("user_id", id()),
                    ("email", text(d, &["contact_info", "primary_email"])),
                    ("phone", text(d, &["contact_info", "phone"])),
                    ("display_name", text(d, &["profile", "display_name"])),
                    ("avatar", text(d, &["profile", "avatar"])),
                    ("bio", text(d, &["profile", "bio"])),
                    ("deleted_at", time(d, &["deleted_at"])?),
                    ("created_at", created),
                    ("updated_at", updated),
                ],
            )
            .await
        }
        "user.deleted" => soft_delete(conn, e, ("users", "user_id")).await,
        "supplier.created" | "supplier.updated" => {
            let [created, updated] = e.record_times()?;
            let contact = |k: &str| text(d, &["contact_info", k]);
            let address = |k: &str| text(d, &["company_info", "business_address", k]);
            upsert(
                conn,
                e,
                "suppliers",
                &[
                    ("supplier_id", id()),
                    ("email", contact("primary_email")),
                    ("primary_phone", contact("primary_phone")),
                    ("contact_person_name", contact("contact_person_name")),
                    ("contact_person_title", contact("contact_person_title")),
                    ("contact_person_email", contact("contact_person_email")),
                    ("contact_person_phone", contact("contact_person_phone")),
                    ("legal_name", text(d, &["company_info", "legal_name"])),
                    ("dba_name", text(d, &["company_info", "dba_name"])),
                    ("street", address("street")),
                    ("city", address("city")),
                    ("state", address("state")),
                    ("zip_code", address("zip_code")),
                    ("country", address("country")),
                    (
                        "support_email",
                        text(d, &["business_info", "support_email"]),
                    ),
                    (
                        "support_phone",
                        text(d, &["business_info", "support_phone"]),
                    ),
                    ("website", text(d, &["business_info", "website"])),
                    ("social_urls", json(d, &["business_info", "social_urls"])),
                    ("created_at", created),
                    ("updated_at", updated),
                ],
            )
            .await
        }
        "supplier.deleted" => delete(conn, e, ("suppliers", "supplier_id")).await,
        "product.created"
        | "product.updated"
        | "product.published"
        | "product.discontinued"
        | "product.out_of_stock"
        | "product.restored" => {
            let [created, updated] = e.record_times()?;
            let stat = |k: &str| int(d, &["stats", k]);
            upsert(
                conn,
                e,
                "products",
                &[
                    ("product_id", id()),
                    ("supplier_id", text(d, &["supplier_id"])),
                    ("name", text(d, &["name"])),
                    ("description", text(d, &["description"])),
                    ("category", text(d, &["category"])),
                    ("base_price_cents", int(d, &["base_price_cents"])),
                    ("status", text(d, &["status"])),
                    ("base_sku", text(d, &["metadata", "base_sku"])),
                    ("view_count", stat("view_count")),
                    ("favorite_count", stat("favorite_count")),
                    ("purchase_count", stat("purchase_count")),
                    ("review_count", stat("review_count")),
                    ("average_rating", float(d, &["stats", "average_rating"])),
                    ("published_at", time(d, &["published_at"])?),
                    ("created_at", created.clone()),
                    ("updated_at", updated.clone()),
                ],
            )
            .await?;
            let mut rows = Vec::new();
            if let Some(Value::Object(variants)) = at(d, &["variants"]) {
                for (key, v) in variants {
                    rows.push(vec![
                        ("variant_key", V::Text(key.clone())),
                        ("sku", text(v, &["sku"])),
                        ("price_cents", int(v, &["price_cents"])),
                        ("quantity", int(v, &["quantity"])),
                        ("attributes_json", json(v, &["attributes"])),
                        ("created_at", created.clone()),
                        ("updated_at", updated.clone()),
                    ]);
                }
            }
            replace(
                conn,
                e,
                ("products", "product_id"),
                "product_variants",
                &rows,
            )
            .await
        }
        "product.deleted" => delete(conn, e, ("products", "product_id")).await,
        "order.created" => {
            let [created, updated] = e.record_times()?;
            let ship = |k: &str| text(d, &["shipping_address", k]);
            upsert(
                conn,
                e,
                "orders",
                &[
                    ("order_id", id()),
                    ("order_number", text(d, &["order_number"])),
                    ("customer_user_id", text(d, &["customer", "user_id"])),
                    ("customer_name", text(d, &["customer", "display_name"])),
                    ("customer_email", text(d, &["customer", "email"])),
                    ("shipping_recipient_name", ship("recipient_name")),
                    ("shipping_phone", ship("phone")),
                    ("shipping_street", ship("street")),
                    ("shipping_city", ship("city")),
                    ("shipping_state", ship("state")),
                    ("shipping_zip_code", ship("zip_code")),
                    ("shipping_country", ship("country")),
                    ("status", text(d, &["status"])),
                    ("total_cents", int(d, &["total_cents"])),
                    ("carrier", text(d, &["shipment", "carrier"])),
                    ("tracking_number", text(d, &["shipment", "tracking_number"])),
                    ("shipped_at", time(d, &["shipment", "shipped_at"])?),
                    ("cancelled_at", time(d, &["cancelled_at"])?),
                    ("created_at", created.clone()),
                    ("updated_at", updated.clone()),
                ],
            )
            .await?;
            let mut rows = Vec::new();
            for item in at(d, &["items"])
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let snap = |k: &str| text(item, &["product_snapshot", k]);
                rows.push(vec![
                    ("item_id", text(item, &["item_id"])),
                    ("product_id", snap("product_id")),
                    ("product_name", snap("product_name")),
                    ("supplier_id", snap("supplier_id")),
                    ("variant_name", snap("variant_name")),
                    ("quantity", int(item, &["quantity"])),
                    ("unit_price_cents", int(item, &["unit_price_cents"])),
                    ("total_cents", int(item, &["total_cents"])),
                    ("created_at", created.clone()),
                    ("updated_at", updated.clone()),
                ]);
            }
            replace(conn, e, ("orders", "order_id"), "order_items", &rows).await
        }
        "order.cancelled" => {
            let at = e.time_or_now(&["cancelled_at"])?;
            update(
                conn,
                e,
                ("orders", "order_id"),
                &[
                    ("status", V::Text("cancelled".into())),
                    ("cancelled_at", at),
                    ("updated_at", V::Text(e.ts.clone())),
                ],
            )
            .await
        }
        "order.shipped" => {
            let at = e.time_or_now(&["shipped_at"])?;
            update(
                conn,
                e,
                ("orders", "order_id"),
                &[
                    ("status", V::Text("shipped".into())),
                    ("carrier", text(d, &["carrier"])),
                    ("tracking_number", text(d, &["tracking_number"])),
                    ("shipped_at", at),
                    ("updated_at", V::Text(e.ts.clone())),
                ],
            )
            .await
        }
        "post.created" | "post.updated" | "post.published" => {
            let [created, updated] = e.record_times()?;
            let link = |k: &str| text(d, &["link_preview", k]);
            let stat = |k: &str| int(d, &["stats", k]);
            upsert(
                conn,
                e,
                "posts",
                &[
                    ("post_id", id()),
                    ("author_user_id", text(d, &["author", "user_id"])),
                    ("author_name", text(d, &["author", "display_name"])),
                    ("author_avatar", text(d, &["author", "avatar"])),
                    ("author_type", text(d, &["author", "author_type"])),
                    ("post_type", text(d, &["post_type"])),
                    ("text_content", text(d, &["text_content"])),
                    ("media_json", json(d, &["media"])),
                    ("link_url", link("url")),
                    ("link_title", link("title")),
                    ("link_description", link("description")),
                    ("link_image", link("image")),
                    ("view_count", stat("view_count")),
                    ("like_count", stat("like_count")),
                    ("comment_count", stat("comment_count")),
                    ("share_count", stat("share_count")),
                    ("published_at", time(d, &["published_at"])?),
                    ("deleted_at", time(d, &["deleted_at"])?),
                    ("created_at", created),
                    ("updated_at", updated),
                ],
            )
            .await
        }
        "post.deleted" => soft_delete(conn, e, ("posts", "post_id")).await,
        other => anyhow::bail!("the oracle knows no event type {other}"),
    }
}

/// Applies generated events in stream order to the migrated database of
/// `pool`, one event per transaction.
pub async fn apply(pool: &MySqlPool, events: &[Generated]) -> anyhow::Result<()> {
    apply_envelopes(pool, events.iter().map(|g| g.payload.as_slice())).await
}

/// Applies envelopes (JSON bytes) in order to the migrated database of
/// `pool`, one event per transaction.
pub async fn apply_envelopes<'a>(
    pool: &MySqlPool,
    envelopes: impl IntoIterator<Item = &'a [u8]>,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    for payload in envelopes {
        let e = Event::parse(payload)?;
        let mut tx = conn.begin().await?;
        apply_one(&mut tx, &e).await?;
        tx.commit().await?;
    }
    Ok(())
}
