//! Pruning what can never matter again: `processed_events` rows of messages
//! below their partition's low watermark (retention deleted them: Kafka can
//! never deliver them again, a replay starts at or above the watermark, and
//! a redriven dead letter never had a row), and tombstones older than the
//! configured number of days (an event that much older than its entity's
//! delete, arriving after the prune, would be applied again).
//!
//! `projector prune` runs it once; a running host runs it every
//! `prune.every` (see `pipeline`'s header for why this keeps the
//! exactly-once argument true).

use std::time::Duration;

use sqlx::MySqlPool;

use crate::settings::Settings;

/// What one prune removed, and the topics it could not read.
#[derive(Debug, Default)]
pub struct Pruned {
    pub processed_events: u64,
    pub tombstones: u64,
    pub skipped: Vec<(String, String)>,
}

/// Rows deleted per statement: each chunk is a short transaction beside the
/// host's batches.
const CHUNK: u64 = 5000;

/// Prunes once.
pub async fn prune(
    pool: &MySqlPool,
    settings: &Settings,
    tombstone_days: u32,
) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned::default();
    for topic in &settings.topics {
        let ends = super::replay::watermarks_of(settings, topic).await;
        let ends = match ends {
            Ok(ends) => ends,
            Err(e) => {
                pruned.skipped.push((topic.clone(), format!("{e:#}")));
                continue;
            }
        };
        for (partition, low, _) in ends.into_iter().filter(|(_, low, _)| *low > 0) {
            loop {
                let n = sqlx::query(
                    "DELETE FROM processed_events WHERE topic = ? AND `partition` = ? AND `offset` < ? LIMIT 5000",
                )
                .bind(topic)
                .bind(partition)
                .bind(low)
                .execute(pool)
                .await?
                .rows_affected();
                pruned.processed_events += n;
                if n < CHUNK {
                    break;
                }
            }
        }
    }
    pruned.tombstones = sqlx::query(
        "DELETE FROM tombstones WHERE event_timestamp < UTC_TIMESTAMP(6) - INTERVAL ? DAY",
    )
    .bind(tombstone_days)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(pruned)
}

/// Prunes every `settings.prune.every` until dropped (a host's service).
pub async fn every(pool: MySqlPool, settings: Settings) {
    let interval = settings.prune.every;
    if interval == Duration::ZERO {
        return;
    }
    loop {
        tokio::time::sleep(interval).await;
        match prune(&pool, &settings, settings.prune.tombstone_days).await {
            Ok(p) => {
                tracing::info!(
                    processed_events = p.processed_events,
                    tombstones = p.tombstones,
                    skipped = ?p.skipped,
                    "pruned rows that can never matter again"
                );
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "scheduled prune failed; next one in an interval")
            }
        }
    }
}
