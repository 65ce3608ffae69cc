//! The sink: validated row operations become one MySQL transaction per batch.
//!
//! Guarantees implemented here (each in the file named):
//! - **Allowlist** (`validate`): an operation may touch only a table and
//!   columns its component declared and the schema has; values are bound
//!   parameters, identifiers quoted [`schema::Ident`]s.
//! - **No stale overwrite** and **order** (`rows`): every write is guarded by
//!   the row's `event_timestamp`, so the final state equals that of applying
//!   the batch's events one by one.
//! - **Exactly once** (`bookkeeping`): events already in `processed_events`
//!   are skipped; the applied events' `processed_events` rows and the
//!   partitions' next offsets are written in the same transaction as the rows.
//! - **Error classes** (`classify`): data errors are permanent, the rest is
//!   retried.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDateTime;
use sqlx::MySqlConnection;

mod bookkeeping;
mod classify;
mod connect;
pub mod reconcile;
mod rows;
pub mod schema;
mod statement;
mod tombstones;
mod validate;

pub use bookkeeping::{fence, stored_offsets};
pub use classify::ExecError;
pub use connect::connect_mysql;
pub use reconcile::{Plan, ReconcileError, migrate_with_builtin_tables, reconcile};
pub use rows::write_ops;
pub use schema::{Schema, SchemaCell, migrate};
pub use validate::{Bind, OpError, ValidOp, parse_timestamp, validate, validate_owned};

use bookkeeping::{already_processed, record_offsets, record_processed};

/// One event ready to apply.
#[derive(Debug, Clone)]
pub struct Applied {
    pub event_id: String,
    pub event_type: String,
    pub timestamp: NaiveDateTime,
    /// The entity the event is about (its envelope's `entity_id`).
    pub entity_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `domain@version` of the component that projected it.
    pub component: String,
    pub ops: Vec<ValidOp>,
}

/// The phase in which [`write_ops`] runs an op: upserts, replaces,
/// updates, soft deletes, deletes.
fn phase(op: &ValidOp) -> u8 {
    match op {
        ValidOp::Upsert { .. } => 1,
        ValidOp::Replace { .. } => 2,
        ValidOp::Update { .. } => 3,
        ValidOp::SoftDelete { .. } => 4,
        ValidOp::Delete { .. } => 5,
    }
}

/// Splits a batch where running it phase by phase would change what
/// applying its events one by one writes: where an event of an entity has
/// an op of an earlier phase than an update, soft delete or delete of an
/// earlier event of the same entity in the same segment (that op would
/// otherwise run first, and the guarded update or delete then finds a newer
/// row, or the revival is deleted). Upserts and replaces never need a cut:
/// the replace phase keeps the last replace at least as new as its parent.
/// Segments run in order, so ties (equal timestamps) resolve in partition
/// order as in the event-by-event path. Ordinary lifecycles never split.
pub fn in_order_segments<'a, 'e>(events: &'a [&'e Applied]) -> Vec<&'a [&'e Applied]> {
    const FIRST_GUARDED: u8 = 3; // updates, soft deletes, deletes
    let mut segments = Vec::new();
    let mut start = 0;
    let mut guarded: HashMap<(&str, &str), u8> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let Some(first) = e.ops.iter().map(phase).min() else {
            continue;
        };
        let last = e.ops.iter().map(phase).max().unwrap_or(first);
        let entity = (e.topic.as_str(), e.entity_id.as_str());
        if guarded.get(&entity).is_some_and(|p| *p > first) {
            segments.push(&events[start..i]);
            start = i;
            guarded.clear();
        }
        if last >= FIRST_GUARDED {
            let p = guarded.entry(entity).or_insert(last);
            *p = (*p).max(last);
        }
    }
    segments.push(&events[start..]);
    segments
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

    for segment in in_order_segments(&fresh) {
        write_ops(conn, schema, segment).await?;
    }
    record_processed(conn, &fresh).await?;
    record_offsets(conn, group, offsets).await?;
    Ok(BatchOutcome {
        applied: fresh.len(),
        duplicates,
        skipped,
    })
}
