//! Tombstones: a hard delete records the row's key and the delete's
//! timestamp (the newest delete per row), and an upsert older than its row's
//! tombstone is dropped, so a late or redriven older event cannot bring a
//! deleted row (and its children) back. `projector prune` removes old ones.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use sqlx::{MySqlConnection, Row as _};

use super::Applied;
use super::classify::ExecError;
use super::schema::Schema;
use super::statement::{Statement, padded_chunks};
use super::validate::{Bind, ValidOp};

/// Keys per `IN` list.
const KEYS_PER_STATEMENT: usize = 500;

/// Records the delete of the row `key` of `table` by `e`, unless a newer
/// delete of it is recorded already.
pub(super) async fn record(
    conn: &mut MySqlConnection,
    table: &str,
    key: &[(String, Bind)],
    e: &Applied,
) -> Result<(), ExecError> {
    sqlx::query(
        "INSERT INTO tombstones (table_name, row_key, event_id, event_timestamp) VALUES (?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE \
         event_id = IF(VALUES(event_timestamp) >= event_timestamp, VALUES(event_id), event_id), \
         event_timestamp = GREATEST(event_timestamp, VALUES(event_timestamp))",
    )
    .bind(table)
    .bind(row_key(key))
    .bind(e.event_id.as_str())
    .bind(e.timestamp)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A row's key as `tombstones.row_key`: its key values as text, joined by
/// U+001F (one value: the value itself, e.g. the entity id).
pub(super) fn row_key(key: &[(String, Bind)]) -> String {
    values_key(key.iter().map(|(_, v)| v))
}

/// Values as [`row_key`] writes them: a text that is equal for equal keys,
/// whether a value came from an operation or was read back as text.
pub(super) fn values_key<'a>(values: impl Iterator<Item = &'a Bind>) -> String {
    let mut out = String::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push('\u{1f}');
        }
        match v {
            Bind::Text(s) | Bind::Json(s) => out.push_str(s),
            Bind::Int(n) => out.push_str(&n.to_string()),
            other => out.push_str(&format!("{other:?}")),
        }
    }
    out
}

/// The tombstones of the rows the batch upserts into parent tables (child
/// rows follow their parent), in one statement: (table, row key) -> the
/// delete's timestamp.
pub(super) async fn tombstones_of<'a>(
    conn: &mut MySqlConnection,
    schema: &Schema,
    events: &[&'a Applied],
) -> Result<HashMap<(&'a str, String), NaiveDateTime>, ExecError> {
    let mut keys: Vec<(&'a str, String)> = Vec::new();
    for e in events {
        for op in &e.ops {
            if let ValidOp::Upsert { table: t, key, .. } = op
                && schema
                    .tables
                    .get(t.as_str())
                    .is_some_and(|i| i.parent.is_none())
            {
                keys.push((t.as_str(), row_key(key)));
            }
        }
    }
    keys.sort();
    keys.dedup();
    let mut found = HashMap::new();
    for chunk in padded_chunks(&keys, KEYS_PER_STATEMENT) {
        let mut q = Statement::new(
            "SELECT table_name, row_key, event_timestamp FROM tombstones WHERE (table_name, row_key) IN (",
            Statement::tuples_len(chunk.len(), 2) + 1,
        );
        q.tuples(&chunk, |tuple, (t, k)| {
            tuple.bind(*t).bind(k.as_str());
        });
        q.push(")");
        for row in q.fetch_all(&mut *conn).await? {
            let (t, k, at): (String, String, NaiveDateTime) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            if let Some((table, key)) = chunk.iter().find(|(ct, ck)| *ct == t && *ck == k) {
                found.insert((*table, key.clone()), at);
            }
        }
    }
    Ok(found)
}
