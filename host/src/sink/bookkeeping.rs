//! The host's bookkeeping inside each batch's transaction: the position
//! fence, `processed_events` (exactly once) and `consumer_offsets` (where
//! each partition resumes).

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{MySqlConnection, Row as _};

use super::Applied;
use super::classify::ExecError;
use super::statement::{Statement, padded_chunks, shaped_chunks};

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
    // Only these partitions' rows: the batches of hosts that share a topic
    // (each owning some of its partitions) do not wait for each other. A
    // lock of the whole topic's rows made them take turns.
    let mut q = Statement::new(
        "SELECT topic, `partition`, next_offset FROM consumer_offsets WHERE group_id = ",
        Statement::tuples_len(expected.len(), 2) + 48,
    );
    q.bind(group).push(" AND (topic, `partition`) IN (");
    q.tuples(expected.keys(), |row, (topic, partition)| {
        row.bind(topic.as_str()).bind(*partition);
    });
    q.push(") FOR UPDATE");
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

/// Rows per multi-row statement: MySQL caps a statement at 65,535
/// placeholders, and smaller statements keep the server's parse cheap.
const ROWS_PER_STATEMENT: usize = 1000;

/// The ids among `events` that `processed_events` already holds.
pub(super) async fn already_processed(
    conn: &mut MySqlConnection,
    events: &[&Applied],
) -> Result<HashSet<String>, ExecError> {
    let mut found = HashSet::new();
    for chunk in padded_chunks(events, ROWS_PER_STATEMENT) {
        let mut q = Statement::new(
            "SELECT event_id FROM processed_events WHERE event_id IN ",
            Statement::tuples_len(1, chunk.len()),
        );
        q.tuples([()], |list, ()| {
            for e in &chunk {
                list.bind(e.event_id.as_str());
            }
        });
        for row in q.fetch_all(&mut *conn).await? {
            found.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(found)
}

/// One `processed_events` row per applied event.
pub(super) async fn record_processed(
    conn: &mut MySqlConnection,
    events: &[&Applied],
) -> Result<(), ExecError> {
    for chunk in shaped_chunks(events, ROWS_PER_STATEMENT) {
        let mut q = Statement::new(
            "INSERT INTO processed_events (event_id, event_type, topic, `partition`, `offset`, component) VALUES ",
            Statement::tuples_len(chunk.len(), 6),
        );
        q.tuples(chunk, |row, e| {
            row.bind(e.event_id.as_str())
                .bind(e.event_type.as_str())
                .bind(e.topic.as_str())
                .bind(e.partition)
                .bind(e.offset)
                .bind(e.component.as_str());
        });
        // A duplicate event id here means another consumer applied the event
        // concurrently: the whole transaction must roll back and retry. Any
        // other refusal (a component label over the column) is about the
        // events, as for the rows.
        q.execute(&mut *conn).await.map_err(|e| {
            if ExecError::is_duplicate_key(&e) {
                ExecError::Transient(e)
            } else {
                ExecError::from(e)
            }
        })?;
    }
    Ok(())
}

/// The next offset of each partition; a position only moves forward.
pub(super) async fn record_offsets(
    conn: &mut MySqlConnection,
    group: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<(), ExecError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut q = Statement::new(
        "INSERT INTO consumer_offsets (group_id, topic, `partition`, next_offset) VALUES ",
        Statement::tuples_len(offsets.len(), 4) + 90,
    );
    q.tuples(offsets, |row, ((topic, partition), next)| {
        row.bind(group)
            .bind(topic.as_str())
            .bind(*partition)
            .bind(*next);
    });
    q.push(" ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, VALUES(next_offset))");
    q.execute(&mut *conn).await?;
    Ok(())
}

/// The next offsets stored for `group` on `topics`.
pub async fn stored_offsets<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::MySql>,
    group: &str,
) -> Result<HashMap<(String, i32), i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT topic, `partition`, next_offset FROM consumer_offsets WHERE group_id = ?",
    )
    .bind(group)
    .fetch_all(db)
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
