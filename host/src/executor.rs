//! Validates row operations and executes a batch of events in one MySQL
//! transaction.
//!
//! Guarantees implemented here:
//! - **Allowlist**: an operation may touch only a table and columns its
//!   component declared and the schema has ([`validate`]); the event stamp
//!   columns are written by the host alone. SQL text holds only quoted
//!   [`Ident`]s; every value is a bound parameter.
//! - **No stale overwrite**: every write is guarded by the row's
//!   `event_timestamp`: an upsert or update changes a row only if the event is
//!   at least as new as the row; soft deletes and deletes likewise; a child
//!   `replace` applies only if its event is at least as new as the parent row.
//!   Replays and redrives of old events are therefore harmless.
//! - **Order**: within a batch, statements are grouped by kind (upserts,
//!   replaces, updates, soft deletes, deletes; parents before children) and
//!   rows keep batch order. Because every write is timestamp-guarded, the
//!   final state equals that of applying the events one by one.
//! - **Exactly once**: events already in `processed_events` are skipped; the
//!   applied events' `processed_events` rows and the partitions' next offsets
//!   are written in the same transaction as the rows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use flatten::{Column, Info, RowOp, Value};
use sqlx::mysql::{MySqlArguments, MySqlDatabaseError};
use sqlx::query::Query;
use sqlx::{MySql, MySqlConnection, Row as _};

use crate::schema::{Ident, Schema, TableInfo};

/// MySQL caps a statement at 65 535 placeholders; stay well below.
const MAX_PLACEHOLDERS: usize = 30_000;

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Timestamp(NaiveDateTime),
    Json(String),
}

fn bind<'q>(q: Query<'q, MySql, MySqlArguments>, v: &'q Bind) -> Query<'q, MySql, MySqlArguments> {
    match v {
        Bind::Null => q.bind(None::<String>),
        Bind::Text(s) | Bind::Json(s) => q.bind(s.as_str()),
        Bind::Int(i) => q.bind(*i),
        Bind::Float(f) => q.bind(*f),
        Bind::Bool(b) => q.bind(*b),
        Bind::Timestamp(t) => q.bind(*t),
    }
}

/// Parses an RFC 3339 timestamp into the UTC wall time stored in DATETIME(6).
pub fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).naive_utc())
}

fn to_bind(column: &str, v: &Value) -> Result<Bind, String> {
    Ok(match v {
        Value::Null => Bind::Null,
        Value::Text(s) => Bind::Text(s.clone()),
        Value::Int(i) => Bind::Int(*i),
        Value::Float(f) if f.is_finite() => Bind::Float(*f),
        Value::Float(f) => return Err(format!("column {column}: {f} is not a finite number")),
        Value::Boolean(b) => Bind::Bool(*b),
        Value::Timestamp(s) => Bind::Timestamp(
            parse_timestamp(s).ok_or_else(|| format!("column {column}: {s:?} is not RFC 3339"))?,
        ),
        Value::Json(s) => {
            serde_json::from_str::<serde::de::IgnoredAny>(s)
                .map_err(|e| format!("column {column}: not valid JSON: {e}"))?;
            Bind::Json(s.clone())
        }
    })
}

/// A validated operation: identifiers checked, values converted.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidOp {
    Upsert {
        table: String,
        key: Vec<(String, Bind)>,
        values: Vec<(String, Bind)>,
    },
    Update {
        table: String,
        key: Vec<(String, Bind)>,
        values: Vec<(String, Bind)>,
    },
    Replace {
        table: String,
        parent: Vec<(String, Bind)>,
        rows: Vec<Vec<(String, Bind)>>,
    },
    SoftDelete {
        table: String,
        key: Vec<(String, Bind)>,
    },
    Delete {
        table: String,
        key: Vec<(String, Bind)>,
    },
}

fn columns(
    cols: &[Column],
    table: &TableInfo,
    seen: &mut HashSet<String>,
) -> Result<Vec<(String, Bind)>, String> {
    cols.iter()
        .map(|c| {
            Ident::parse(&c.name).map_err(|e| e.to_string())?;
            if flatten::HOST_COLUMNS.contains(&c.name.as_str()) {
                return Err(format!(
                    "{}.{} is written by the host only",
                    table.name.as_str(),
                    c.name
                ));
            }
            if !table.columns.contains(&c.name) {
                return Err(format!(
                    "{}.{} does not exist in the schema",
                    table.name.as_str(),
                    c.name
                ));
            }
            if !seen.insert(c.name.clone()) {
                return Err(format!("{}.{} appears twice", table.name.as_str(), c.name));
            }
            Ok((c.name.clone(), to_bind(&c.name, &c.value)?))
        })
        .collect()
}

fn key_names(key: &[(String, Bind)]) -> BTreeSet<&str> {
    key.iter().map(|(n, _)| n.as_str()).collect()
}

/// Checks one operation against what the component declared and what the
/// schema has. The error says why the operation is not allowed.
pub fn validate(op: &RowOp, declared: &Info, schema: &Schema) -> Result<ValidOp, String> {
    if !declared.allows(op) {
        return Err(format!(
            "writes {} columns {:?}, which {} did not declare",
            op.table(),
            op.column_names(),
            declared.domain
        ));
    }
    let table = schema
        .tables
        .get(op.table())
        .filter(|t| t.stamped)
        .ok_or_else(|| {
            format!(
                "table {:?} is not a projection table of the schema",
                op.table()
            )
        })?;
    let name = table.name.as_str().to_owned();
    let nonempty_key = |key: &[(String, Bind)]| {
        if key.iter().any(|(_, v)| *v == Bind::Null) {
            Err(format!("{name}: a key column is NULL"))
        } else {
            Ok(())
        }
    };
    match op {
        RowOp::Upsert(u) | RowOp::Update(u) => {
            let mut seen = HashSet::new();
            let key = columns(&u.key, table, &mut seen)?;
            let values = columns(&u.values, table, &mut seen)?;
            nonempty_key(&key)?;
            if matches!(op, RowOp::Upsert(_)) {
                let pk: BTreeSet<&str> = table.primary_key.iter().map(String::as_str).collect();
                if key_names(&key) != pk {
                    return Err(format!(
                        "upsert on {name} must be keyed by its primary key {pk:?}"
                    ));
                }
                Ok(ValidOp::Upsert {
                    table: name,
                    key,
                    values,
                })
            } else {
                if !table.is_unique_key(&key_names(&key)) {
                    return Err(format!("update on {name} must be keyed by a unique key"));
                }
                if values.is_empty() {
                    return Err(format!("update on {name} sets nothing"));
                }
                Ok(ValidOp::Update {
                    table: name,
                    key,
                    values,
                })
            }
        }
        RowOp::Replace(r) => {
            let Some(crate::schema::ForeignKey {
                columns: fk_cols, ..
            }) = &table.parent
            else {
                return Err(format!("replace on {name}, which has no parent table"));
            };
            let mut seen = HashSet::new();
            let parent = columns(&r.parent, table, &mut seen)?;
            nonempty_key(&parent)?;
            let fk: BTreeSet<&str> = fk_cols.iter().map(String::as_str).collect();
            if key_names(&parent) != fk {
                return Err(format!("replace on {name} must name its parent by {fk:?}"));
            }
            let rows = r
                .rows
                .iter()
                .map(|row| columns(row, table, &mut seen.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ValidOp::Replace {
                table: name,
                parent,
                rows,
            })
        }
        RowOp::SoftDelete(k) | RowOp::Delete(k) => {
            let key = columns(&k.key, table, &mut HashSet::new())?;
            nonempty_key(&key)?;
            if !table.is_unique_key(&key_names(&key)) {
                return Err(format!("delete on {name} must be keyed by a unique key"));
            }
            if matches!(op, RowOp::SoftDelete(_)) {
                if !table.columns.contains("deleted_at") {
                    return Err(format!(
                        "soft delete on {name}, which has no deleted_at column"
                    ));
                }
                Ok(ValidOp::SoftDelete { table: name, key })
            } else {
                Ok(ValidOp::Delete { table: name, key })
            }
        }
    }
}

/// One event ready to apply.
#[derive(Debug, Clone)]
pub struct Applied {
    pub event_id: String,
    pub event_type: String,
    pub timestamp: NaiveDateTime,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `domain@version` of the component that projected it.
    pub component: String,
    pub ops: Vec<ValidOp>,
}

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The database refused the data (too long, out of range, a key conflict,
    /// a broken foreign key): retrying will not help; find the event.
    #[error("the database refused the data: {0}")]
    Data(String),
    /// The database is unavailable or the transaction lost a race (deadlock,
    /// lock wait timeout, lost connection): retry later.
    #[error("database unavailable or contended: {0}")]
    Transient(#[source] sqlx::Error),
    /// The stored position of a partition is not where this host left it
    /// (a replay reset it, or another consumer moved it): nothing was
    /// written; re-read the positions and seek.
    #[error("stored positions moved: {0:?}")]
    Moved(Vec<(String, i32)>),
}

/// MySQL error numbers that mean the data itself is unacceptable.
const DATA_ERRORS: [u16; 13] = [
    1048, 1054, 1062, 1264, 1265, 1292, 1366, 1406, 1451, 1452, 3140, 4025, 1690,
];

impl From<sqlx::Error> for ExecError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && let Some(mysql) = db.try_downcast_ref::<MySqlDatabaseError>()
            && DATA_ERRORS.contains(&mysql.number())
        {
            return ExecError::Data(mysql.message().to_owned());
        }
        ExecError::Transient(e)
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events whose rows were written now.
    pub applied: usize,
    /// Events skipped because `processed_events` already had them.
    pub duplicates: usize,
    /// The event ids of those skipped events.
    pub skipped: Vec<String>,
}

/// Applies `events` (in partition order) and records them and `offsets`
/// ((topic, partition) -> next offset) for `group`, all on `conn` inside the
/// caller's transaction.
pub async fn apply_batch(
    conn: &mut MySqlConnection,
    schema: &Schema,
    group: &str,
    events: &[&Applied],
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<BatchOutcome, ExecError> {
    let already = already_processed(conn, events).await?;
    let fresh: Vec<&Applied> = events
        .iter()
        .copied()
        .filter(|e| !already.contains(&e.event_id))
        .collect();
    // One event id twice in one batch (a producer retry that slipped
    // through): apply it once.
    let mut seen = HashSet::new();
    let fresh: Vec<&Applied> = fresh
        .into_iter()
        .filter(|e| seen.insert(e.event_id.as_str()))
        .collect();
    let duplicates = events.len() - fresh.len();
    let fresh_ids: HashSet<&str> = fresh.iter().map(|e| e.event_id.as_str()).collect();
    let skipped = events
        .iter()
        .filter(|e| !fresh_ids.contains(e.event_id.as_str()))
        .map(|e| e.event_id.clone())
        .collect();

    write_ops(conn, schema, &fresh).await?;
    record_processed(conn, &fresh).await?;
    record_offsets(conn, group, offsets).await?;
    Ok(BatchOutcome {
        applied: fresh.len(),
        duplicates,
        skipped,
    })
}

/// Locks the stored positions of the given partitions for the rest of the
/// transaction and checks each is what the caller last saw (`None`: no row).
/// Run first in a batch's transaction: a replay that reset a partition, or
/// another consumer that moved it, makes the batch fail with
/// [`ExecError::Moved`] before anything is written.
pub async fn fence(
    conn: &mut MySqlConnection,
    group: &str,
    expected: &BTreeMap<(String, i32), Option<i64>>,
) -> Result<(), ExecError> {
    if expected.is_empty() {
        return Ok(());
    }
    let topics: BTreeSet<&str> = expected.keys().map(|(t, _)| t.as_str()).collect();
    let sql = format!(
        "SELECT topic, `partition`, next_offset FROM consumer_offsets \
         WHERE group_id = ? AND topic IN ({}) FOR UPDATE",
        vec!["?"; topics.len()].join(",")
    );
    let mut q = sqlx::query(&sql).bind(group);
    for t in &topics {
        q = q.bind(*t);
    }
    let mut stored: HashMap<(String, i32), i64> = HashMap::new();
    for row in q.fetch_all(&mut *conn).await? {
        stored.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    let moved: Vec<(String, i32)> = expected
        .iter()
        .filter(|(key, want)| stored.get(*key).copied() != **want)
        .map(|(key, _)| key.clone())
        .collect();
    if moved.is_empty() {
        Ok(())
    } else {
        Err(ExecError::Moved(moved))
    }
}

async fn already_processed(
    conn: &mut MySqlConnection,
    events: &[&Applied],
) -> Result<HashSet<String>, ExecError> {
    let mut found = HashSet::new();
    for chunk in events.chunks(1000) {
        if chunk.is_empty() {
            continue;
        }
        let sql = format!(
            "SELECT event_id FROM processed_events WHERE event_id IN ({})",
            vec!["?"; chunk.len()].join(",")
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q.bind(e.event_id.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            found.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(found)
}

async fn record_processed(
    conn: &mut MySqlConnection,
    events: &[&Applied],
) -> Result<(), ExecError> {
    for chunk in events.chunks(MAX_PLACEHOLDERS / 6) {
        if chunk.is_empty() {
            continue;
        }
        let sql = format!(
            "INSERT INTO processed_events (event_id, event_type, topic, `partition`, `offset`, component) VALUES {}",
            vec!["(?,?,?,?,?,?)"; chunk.len()].join(",")
        );
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.event_id.as_str())
                .bind(e.event_type.as_str())
                .bind(e.topic.as_str())
                .bind(e.partition)
                .bind(e.offset)
                .bind(e.component.as_str());
        }
        // A duplicate event id here means another consumer applied the event
        // concurrently: the whole transaction must roll back and retry.
        q.execute(&mut *conn).await.map_err(ExecError::Transient)?;
    }
    Ok(())
}

async fn record_offsets(
    conn: &mut MySqlConnection,
    group: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<(), ExecError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO consumer_offsets (group_id, topic, `partition`, next_offset) VALUES {} \
         ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, VALUES(next_offset))",
        vec!["(?,?,?,?)"; offsets.len()].join(",")
    );
    let mut q = sqlx::query(&sql);
    for ((topic, partition), next) in offsets {
        q = q
            .bind(group)
            .bind(topic.as_str())
            .bind(*partition)
            .bind(*next);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// The next offsets stored for `group` on `topics`.
pub async fn stored_offsets(
    pool: &sqlx::MySqlPool,
    group: &str,
) -> Result<HashMap<(String, i32), i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT topic, `partition`, next_offset FROM consumer_offsets WHERE group_id = ?",
    )
    .bind(group)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                (r.try_get::<String, _>(0)?, r.try_get::<i32, _>(1)?),
                r.try_get::<i64, _>(2)?,
            ))
        })
        .collect()
}

/// Tables ordered parents first.
fn table_order(schema: &Schema) -> HashMap<&str, usize> {
    let depth = |name: &str| {
        let mut d = 0;
        let mut cur = schema.tables.get(name);
        while let Some(t) = cur.and_then(|t| t.parent.as_ref()) {
            d += 1;
            if d > 16 {
                break;
            }
            cur = schema.tables.get(&t.parent_table);
        }
        d
    };
    schema
        .tables
        .keys()
        .map(|t| (t.as_str(), depth(t)))
        .collect()
}

/// Bound columns of one row: (name, value).
type Cols = [(String, Bind)];
/// One upsert of a batch: key, values, stamp.
type UpsertRow<'a> = (&'a Cols, &'a Cols, Stamp<'a>);

struct Stamp<'a> {
    event_id: &'a str,
    ts: NaiveDateTime,
}

/// Writes the row operations of `events` with the guarded multi-row
/// statements, and nothing else (no `processed_events`, no offsets): the
/// part of [`apply_batch`] that the benchmark's MySQL ceiling measures alone.
pub async fn write_ops(
    conn: &mut MySqlConnection,
    schema: &Schema,
    events: &[&Applied],
) -> Result<(), ExecError> {
    let order = table_order(schema);
    let table = |name: &str| -> &TableInfo { &schema.tables[name] };

    // Phase 1: upserts, grouped by table and column list, parents first.
    let mut upserts: BTreeMap<(usize, String, Vec<String>), Vec<UpsertRow>> = BTreeMap::new();
    for e in events {
        for op in &e.ops {
            if let ValidOp::Upsert {
                table: t,
                key,
                values,
            } = op
            {
                let names = key.iter().chain(values).map(|(n, _)| n.clone()).collect();
                upserts
                    .entry((order[t.as_str()], t.clone(), names))
                    .or_default()
                    .push((
                        key,
                        values,
                        Stamp {
                            event_id: &e.event_id,
                            ts: e.timestamp,
                        },
                    ));
            }
        }
    }
    for ((_, t, names), rows) in &upserts {
        let info = table(t);
        check_unique_conflicts(conn, info, names, rows.iter().map(|(k, v, _)| (*k, *v))).await?;
        upsert_rows(conn, info, names, rows).await?;
    }

    // Phase 2: replaces, right after the upserts of their parents (a later
    // partial update of the parent must not make an earlier full document's
    // children look stale). Per parent, the last replace of the batch whose event
    // is at least as new as the parent row wins; the others are stale.
    let mut replaces: BTreeMap<(usize, String), Vec<ReplaceOp>> = BTreeMap::new();
    for e in events {
        for op in &e.ops {
            if let ValidOp::Replace {
                table: t,
                parent,
                rows,
            } = op
            {
                replaces
                    .entry((order[t.as_str()], t.clone()))
                    .or_default()
                    .push((
                        parent,
                        rows,
                        Stamp {
                            event_id: &e.event_id,
                            ts: e.timestamp,
                        },
                    ));
            }
        }
    }
    for ((_, t), ops) in &replaces {
        replace_children(conn, schema, table(t), ops).await?;
    }

    // Phase 3: updates, one statement each, in batch order.
    for e in events {
        for op in &e.ops {
            if let ValidOp::Update {
                table: t,
                key,
                values,
            } = op
            {
                let set: Vec<String> = values
                    .iter()
                    .map(|(n, _)| format!("{} = ?", quote(n)))
                    .collect();
                let sql = format!(
                    "UPDATE {} SET {}, `event_id` = ?, `event_timestamp` = ? WHERE {} AND `event_timestamp` <= ?",
                    table(t).name,
                    set.join(", "),
                    where_key(key)
                );
                let mut q = sqlx::query(&sql);
                for (_, v) in values {
                    q = bind(q, v);
                }
                q = q.bind(e.event_id.as_str()).bind(e.timestamp);
                for (_, v) in key {
                    q = bind(q, v);
                }
                q.bind(e.timestamp).execute(&mut *conn).await?;
            }
        }
    }

    // Phases 4 and 5: soft deletes and deletes, guarded, in batch order.
    for e in events {
        for op in &e.ops {
            match op {
                ValidOp::SoftDelete { table: t, key } => {
                    let sql = format!(
                        "UPDATE {} SET `deleted_at` = ?, `event_id` = ?, `event_timestamp` = ? \
                         WHERE {} AND `event_timestamp` <= ?",
                        table(t).name,
                        where_key(key)
                    );
                    let mut q = sqlx::query(&sql)
                        .bind(e.timestamp)
                        .bind(e.event_id.as_str())
                        .bind(e.timestamp);
                    for (_, v) in key {
                        q = bind(q, v);
                    }
                    q.bind(e.timestamp).execute(&mut *conn).await?;
                }
                ValidOp::Delete { .. }
                | ValidOp::Upsert { .. }
                | ValidOp::Update { .. }
                | ValidOp::Replace { .. } => {}
            }
        }
    }
    for e in events {
        for op in &e.ops {
            if let ValidOp::Delete { table: t, key } = op {
                let sql = format!(
                    "DELETE FROM {} WHERE {} AND `event_timestamp` <= ?",
                    table(t).name,
                    where_key(key)
                );
                let mut q = sqlx::query(&sql);
                for (_, v) in key {
                    q = bind(q, v);
                }
                q.bind(e.timestamp).execute(&mut *conn).await?;
            }
        }
    }
    Ok(())
}

/// Column names reach SQL only after [`validate`] checked them against the
/// schema and the identifier pattern.
fn quote(name: &str) -> String {
    format!("`{name}`")
}

/// `` `a`, `b` `` for a list of validated column names.
fn quote_list(cols: &[String]) -> String {
    cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
}

fn where_key(key: &[(String, Bind)]) -> String {
    key.iter()
        .map(|(n, _)| format!("{} = ?", quote(n)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

async fn upsert_rows(
    conn: &mut MySqlConnection,
    info: &TableInfo,
    names: &[String],
    rows: &[UpsertRow<'_>],
) -> Result<(), ExecError> {
    let cols: Vec<String> = names.iter().map(|n| quote(n)).collect();
    let newer = "VALUES(`event_timestamp`) >= `event_timestamp`";
    // A conflict on another unique key than the primary key must not touch
    // someone else's row: the primary key has to match as well.
    let same_pk: Vec<String> = info
        .primary_key
        .iter()
        .map(|k| format!("{0} = VALUES({0})", quote(k)))
        .collect();
    let guard = format!("{newer} AND {}", same_pk.join(" AND "));
    let mut sets: Vec<String> = names
        .iter()
        .filter(|n| !info.primary_key.contains(n))
        .map(|n| format!("{0} = IF({guard}, VALUES({0}), {0})", quote(n)))
        .collect();
    sets.push(format!(
        "`event_id` = IF({guard}, VALUES(`event_id`), `event_id`)"
    ));
    // Last, so every condition above saw the row's old timestamp.
    sets.push(format!(
        "`event_timestamp` = IF({guard}, VALUES(`event_timestamp`), `event_timestamp`)"
    ));
    let per_row = names.len() + 2;
    let placeholders = format!("({})", vec!["?"; per_row].join(","));
    for chunk in rows.chunks((MAX_PLACEHOLDERS / per_row).max(1)) {
        let sql = format!(
            "INSERT INTO {} ({}, `event_id`, `event_timestamp`) VALUES {} ON DUPLICATE KEY UPDATE {}",
            info.name,
            cols.join(", "),
            vec![placeholders.as_str(); chunk.len()].join(","),
            sets.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (key, values, stamp) in chunk {
            for (_, v) in key.iter().chain(values.iter()) {
                q = bind(q, v);
            }
            q = q.bind(stamp.event_id).bind(stamp.ts);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Refuses an upsert whose secondary unique key (e.g. `orders.order_number`)
/// already belongs to another row, in the table or earlier in the batch.
async fn check_unique_conflicts<'a>(
    conn: &mut MySqlConnection,
    info: &TableInfo,
    names: &[String],
    rows: impl Iterator<Item = (&'a [(String, Bind)], &'a [(String, Bind)])>,
) -> Result<(), ExecError> {
    let uniques: Vec<&Vec<String>> = info
        .unique_keys
        .iter()
        .filter(|u| u.iter().all(|c| names.contains(c)))
        .collect();
    if uniques.is_empty() {
        return Ok(());
    }
    let rows: Vec<HashMap<&str, &Bind>> = rows
        .map(|(k, v)| {
            k.iter()
                .chain(v.iter())
                .map(|(n, b)| (n.as_str(), b))
                .collect()
        })
        .collect();
    for unique in uniques {
        // Keyed by the debug form: `Bind` holds floats and so is not `Hash`.
        let mut owners: HashMap<String, Vec<&Bind>> = HashMap::new();
        let mut probe = Vec::new();
        for row in &rows {
            let uk: Vec<&Bind> = unique.iter().map(|c| row[c.as_str()]).collect();
            if uk.iter().any(|b| **b == Bind::Null) {
                continue;
            }
            let pk: Vec<&Bind> = info.primary_key.iter().map(|c| row[c.as_str()]).collect();
            if let Some(owner) = owners.get(&format!("{uk:?}")) {
                if *owner != pk {
                    return Err(ExecError::Data(format!(
                        "{}: two rows of the batch share the unique key {unique:?}",
                        info.name.as_str()
                    )));
                }
            } else {
                owners.insert(format!("{uk:?}"), pk.clone());
                probe.push((uk, pk));
            }
        }
        for chunk in probe.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            let tuple = format!("({})", vec!["?"; unique.len()].join(","));
            let sql = format!(
                "SELECT {}, {} FROM {} WHERE ({}) IN ({})",
                quote_list(&info.primary_key),
                quote_list(unique),
                info.name,
                quote_list(unique),
                vec![tuple.as_str(); chunk.len()].join(",")
            );
            let mut q = sqlx::query(&sql);
            for (uk, _) in chunk {
                for b in uk {
                    q = bind(q, b);
                }
            }
            for row in q.fetch_all(&mut *conn).await? {
                let stored_pk: Vec<String> = (0..info.primary_key.len())
                    .map(|i| row.try_get::<String, _>(i))
                    .collect::<Result<_, _>>()?;
                let stored_uk: Vec<String> = (0..unique.len())
                    .map(|i| row.try_get::<String, _>(info.primary_key.len() + i))
                    .collect::<Result<_, _>>()?;
                for (uk, pk) in chunk {
                    let as_text = |v: &[&Bind]| -> Vec<String> {
                        v.iter()
                            .map(|b| {
                                if let Bind::Text(s) = b {
                                    s.clone()
                                } else {
                                    format!("{b:?}")
                                }
                            })
                            .collect()
                    };
                    if as_text(uk) == stored_uk && as_text(pk) != stored_pk {
                        return Err(ExecError::Data(format!(
                            "{}: unique key {unique:?} = {stored_uk:?} already belongs to {stored_pk:?}",
                            info.name.as_str()
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

type ReplaceOp<'a> = (&'a [(String, Bind)], &'a [Vec<(String, Bind)>], Stamp<'a>);

async fn replace_children(
    conn: &mut MySqlConnection,
    schema: &Schema,
    info: &TableInfo,
    ops: &[ReplaceOp<'_>],
) -> Result<(), ExecError> {
    let Some(crate::schema::ForeignKey {
        columns: fk_cols,
        parent_table,
        parent_columns: parent_cols,
    }) = &info.parent
    else {
        return Err(ExecError::Data(format!(
            "{} has no parent",
            info.name.as_str()
        )));
    };
    let parent_info = &schema.tables[parent_table];
    // The parent's key, in FK column order, for each op.
    let parent_key = |parent: &[(String, Bind)]| -> Vec<Bind> {
        fk_cols
            .iter()
            .map(|c| {
                parent
                    .iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, b)| b.clone())
                    .unwrap_or(Bind::Null)
            })
            .collect()
    };
    let mut keys: Vec<Vec<Bind>> = Vec::new();
    for (parent, _, _) in ops {
        let k = parent_key(parent);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    // Current parent timestamps (locked: no concurrent writer can slip in).
    let mut parent_ts: Vec<(Vec<Bind>, NaiveDateTime)> = Vec::new();
    let tuple = format!("({})", vec!["?"; parent_cols.len()].join(","));
    for chunk in keys.chunks(500) {
        let sql = format!(
            "SELECT {}, `event_timestamp` FROM {} WHERE ({}) IN ({}) FOR UPDATE",
            quote_list(parent_cols),
            parent_info.name,
            quote_list(parent_cols),
            vec![tuple.as_str(); chunk.len()].join(",")
        );
        let mut q = sqlx::query(&sql);
        for k in chunk {
            for b in k {
                q = bind(q, b);
            }
        }
        for row in q.fetch_all(&mut *conn).await? {
            let key: Vec<Bind> = (0..parent_cols.len())
                .map(|i| row.try_get::<String, _>(i).map(Bind::Text))
                .collect::<Result<_, _>>()?;
            parent_ts.push((key, row.try_get(parent_cols.len())?));
        }
    }
    // The winning op per parent: the last one at least as new as the parent row.
    let mut winners: Vec<(Vec<Bind>, usize)> = Vec::new();
    for (i, (parent, _, stamp)) in ops.iter().enumerate() {
        let k = parent_key(parent);
        let Some((_, ts)) = parent_ts.iter().find(|(pk, _)| *pk == k) else {
            continue;
        };
        if stamp.ts >= *ts {
            match winners.iter_mut().find(|(wk, _)| *wk == k) {
                Some(w) => w.1 = i,
                None => winners.push((k, i)),
            }
        }
    }
    if winners.is_empty() {
        return Ok(());
    }
    for chunk in winners.chunks(500) {
        let sql = format!(
            "DELETE FROM {} WHERE ({}) IN ({})",
            info.name,
            quote_list(fk_cols),
            vec![format!("({})", vec!["?"; fk_cols.len()].join(",")); chunk.len()].join(",")
        );
        let mut q = sqlx::query(&sql);
        for (k, _) in chunk {
            for b in k {
                q = bind(q, b);
            }
        }
        q.execute(&mut *conn).await?;
    }
    // Insert the winners' rows, grouped by column list.
    let mut groups: BTreeMap<Vec<String>, Vec<(Vec<&Bind>, &Stamp)>> = BTreeMap::new();
    for (k, i) in &winners {
        let (_, rows, stamp) = &ops[*i];
        for row in rows.iter() {
            let mut names: Vec<String> = fk_cols.clone();
            names.extend(row.iter().map(|(n, _)| n.clone()));
            let mut values: Vec<&Bind> = k.iter().collect();
            values.extend(row.iter().map(|(_, b)| b));
            groups.entry(names).or_default().push((values, stamp));
        }
    }
    for (names, rows) in groups {
        let per_row = names.len() + 2;
        let placeholders = format!("({})", vec!["?"; per_row].join(","));
        for chunk in rows.chunks((MAX_PLACEHOLDERS / per_row).max(1)) {
            let sql = format!(
                "INSERT INTO {} ({}, `event_id`, `event_timestamp`) VALUES {}",
                info.name,
                names
                    .iter()
                    .map(|n| quote(n))
                    .collect::<Vec<_>>()
                    .join(", "),
                vec![placeholders.as_str(); chunk.len()].join(",")
            );
            let mut q = sqlx::query(&sql);
            for (values, stamp) in chunk {
                for v in values {
                    q = bind(q, v);
                }
                q = q.bind(stamp.event_id).bind(stamp.ts);
            }
            q.execute(&mut *conn).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_converted_and_checked() {
        assert_eq!(
            to_bind("t", &Value::Timestamp("2025-01-02T03:04:05.000006Z".into())).unwrap(),
            Bind::Timestamp(parse_timestamp("2025-01-02T03:04:05.000006+00:00").unwrap())
        );
        assert!(to_bind("t", &Value::Timestamp("yesterday".into())).is_err());
        assert!(to_bind("j", &Value::Json("{not json".into())).is_err());
        assert!(to_bind("f", &Value::Float(f64::NAN)).is_err());
        assert_eq!(
            to_bind("j", &Value::Json("[1]".into())).unwrap(),
            Bind::Json("[1]".into())
        );
    }
}
