//! The host's bookkeeping inside each batch's transaction: the position
//! fence, `processed_events` (exactly once) and `consumer_offsets` (where
//! each partition resumes).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::{MySql, MySqlConnection, QueryBuilder, Row as _};

use super::Applied;
use super::classify::ExecError;

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
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT topic, `partition`, next_offset FROM consumer_offsets WHERE group_id = ",
    );
    q.push_bind(group).push(" AND topic IN (");
    let mut list = q.separated(",");
    for t in topics {
        list.push_bind(t);
    }
    q.push(") FOR UPDATE");
    let mut stored: HashMap<(String, i32), i64> = HashMap::new();
    for row in q.build().fetch_all(&mut *conn).await? {
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
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::<MySql>::new("SELECT event_id FROM processed_events WHERE event_id IN (");
        let mut list = q.separated(",");
        for e in chunk {
            list.push_bind(e.event_id.as_str());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
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
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO processed_events (event_id, event_type, topic, `partition`, `offset`, component) ",
        );
        q.push_values(chunk, |mut row, e| {
            row.push_bind(e.event_id.as_str())
                .push_bind(e.event_type.as_str())
                .push_bind(e.topic.as_str())
                .push_bind(e.partition)
                .push_bind(e.offset)
                .push_bind(e.component.as_str());
        });
        // A duplicate event id here means another consumer applied the event
        // concurrently: the whole transaction must roll back and retry.
        q.build()
            .execute(&mut *conn)
            .await
            .map_err(ExecError::Transient)?;
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
    let mut q = QueryBuilder::<MySql>::new(
        "INSERT INTO consumer_offsets (group_id, topic, `partition`, next_offset) ",
    );
    q.push_values(offsets, |mut row, ((topic, partition), next)| {
        row.push_bind(group)
            .push_bind(topic.as_str())
            .push_bind(*partition)
            .push_bind(*next);
    });
    q.push(" ON DUPLICATE KEY UPDATE next_offset = GREATEST(next_offset, VALUES(next_offset))");
    q.build().execute(&mut *conn).await?;
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
