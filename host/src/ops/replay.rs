//! `projector replay --domain <d>`: rebuilds one domain's tables from the
//! start of its topic through the component in force, while the host keeps
//! projecting the other domains.
//!
//! In one MySQL transaction the replay locks the topic's stored positions,
//! empties the domain's tables (children first), forgets the topic's
//! `processed_events`, and sets the topic's positions to 0. The running
//! host(s) of the group notice the moved positions (the batch fence, or the
//! once-a-second check for quiet partitions), seek to the beginning and
//! re-project the whole topic; the other topics are not touched. The command
//! then shows progress until the positions pass the log end offsets it saw at
//! the start and prints the final count.
//!
//! Safe to interrupt and to rerun: the reset is one transaction, and after it
//! the host owns the rebuild whether or not this command still watches. If
//! no host runs, the rebuild happens when one starts. Events that fail again
//! are dead-lettered again.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sqlx::{Connection as _, MySqlPool, Row as _};

use crate::sandbox::{Registry, Runtime};
use crate::settings::Settings;
use crate::sink::{Schema, SchemaCell};

/// What a reset did.
#[derive(Debug)]
pub struct Reset {
    pub topic: String,
    pub tables: Vec<(String, u64)>,
    pub forgotten_events: u64,
    /// (partition, low, high) watermarks at the reset.
    pub ends: Vec<(i32, i64, i64)>,
}

/// The topic of a domain among the configured ones: `<domain>` or
/// `<prefix>.<domain>`.
pub fn topic_of(settings: &Settings, domain: &str) -> anyhow::Result<String> {
    settings
        .topics
        .iter()
        .find(|t| *t == domain || t.ends_with(&format!(".{domain}")))
        .cloned()
        .with_context(|| {
            format!(
                "no configured topic for domain {domain:?} (topics: {})",
                settings.topics.join(", ")
            )
        })
}

/// The tables the domain's current component writes, children first.
pub fn tables_of(
    settings: &Settings,
    schema: &Schema,
    domain: &str,
) -> anyhow::Result<Vec<String>> {
    let runtime = Runtime::from_settings(settings)?;
    // The same admission as a running host: a declaration outside the
    // domain's grant is refused, so a replay never clears another domain's
    // tables.
    let admit =
        crate::pipeline::admission(&Arc::new(SchemaCell::new(schema.clone())), &settings.grants);
    let registry = Registry::load_dir(&runtime, &settings.components.dir, &*admit)?;
    let (_, projection) = registry
        .domains()
        .find(|(d, _)| d.as_str() == domain)
        .with_context(|| {
            format!(
                "no component for domain {domain:?} in {} (domains: {})",
                settings.components.dir.display(),
                registry
                    .domains()
                    .map(|(d, _)| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let mut tables: Vec<String> = projection
        .info()
        .writes
        .iter()
        .map(|t| t.table.clone())
        .collect();
    // Children (tables with a parent) before parents.
    tables.sort_by_key(|t| schema.tables.get(t).is_none_or(|i| i.parent.is_none()));
    Ok(tables)
}

/// (partition, low, high) watermarks of each partition of `topic`.
pub fn watermarks(settings: &Settings, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let mut config = rdkafka::ClientConfig::new();
    for (k, v) in settings.kafka.consumer_config() {
        config.set(k, v);
    }
    config.set("group.id", format!("{}.replay", settings.kafka.group_id));
    let consumer: BaseConsumer = config.create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("metadata of {topic}"))?;
    let mut out = Vec::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            out.push((p.id(), low, high));
        }
    }
    if out.is_empty() {
        anyhow::bail!("topic {topic} has no partitions (does it exist?)");
    }
    Ok(out)
}

/// [`watermarks`] off the async threads.
pub async fn watermarks_of(
    settings: &Settings,
    topic: &str,
) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || watermarks(&settings, &topic)).await?
}

/// Begins a transaction on `conn` holding the group's stored positions of
/// `topic` (the rows each batch of the topic locks first, so none commits
/// while it is held), and returns them (partition, next offset). Read
/// committed: scans of `processed_events` in it lock only the rows they
/// change, not the gaps other topics' batches insert into.
pub async fn hold_positions<'c>(
    conn: &'c mut sqlx::MySqlConnection,
    group: &str,
    topic: &str,
) -> anyhow::Result<(sqlx::Transaction<'c, sqlx::MySql>, Vec<(i32, i64)>)> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = conn.begin().await?;
    let rows = sqlx::query(
        "SELECT `partition`, next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ? FOR UPDATE",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(&mut *tx)
    .await?;
    let held = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    Ok((tx, held))
}

/// Empties the domain's tables and resets its topic's positions to 0.
/// Refused when retention already deleted the start of the topic (the
/// tables could not be rebuilt whole), unless `force`.
pub async fn reset(
    pool: &MySqlPool,
    settings: &Settings,
    domain: &str,
    force: bool,
) -> anyhow::Result<Reset> {
    crate::sink::migrate(pool).await?;
    let schema = Schema::load(pool).await?;
    let topic = topic_of(settings, domain)?;
    let tables = tables_of(settings, &schema, domain)?;
    let ends = watermarks_of(settings, &topic).await?;
    let lost: Vec<String> = ends
        .iter()
        .filter(|(_, low, _)| *low > 0)
        .map(|(partition, low, _)| format!("{topic}[{partition}] starts at offset {low}"))
        .collect();
    if !lost.is_empty() {
        if !force {
            anyhow::bail!(
                "refusing to replay {domain}: retention deleted the start of its topic ({}); \
                 the events before those offsets are gone, so emptying {} would lose rows that \
                 cannot be rebuilt. Pass --force to replay what is left.",
                lost.join(", "),
                tables.join(", ")
            );
        }
        tracing::warn!(topic = %topic, lost = ?lost, "replaying a topic whose start retention deleted (--force)");
    }
    let group = &settings.kafka.group_id;
    let mut conn = pool.acquire().await?;
    // No batch of this topic commits half before and half after the reset.
    let (mut tx, _) = hold_positions(&mut conn, group, &topic).await?;
    let mut deleted = Vec::new();
    for table in &tables {
        let ident =
            crate::sink::schema::Ident::parse(table).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let n = sqlx::query(&format!("DELETE FROM `{}`", ident.as_str()))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("emptying {table}"))?
            .rows_affected();
        deleted.push((table.clone(), n));
    }
    for table in &tables {
        sqlx::query("DELETE FROM tombstones WHERE table_name = ?")
            .bind(table)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("forgetting the tombstones of {table}"))?;
    }
    let forgotten = sqlx::query("DELETE FROM processed_events WHERE topic = ?")
        .bind(&topic)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for (partition, _, _) in &ends {
        sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, `partition`, next_offset) VALUES (?, ?, ?, 0) \
             ON DUPLICATE KEY UPDATE next_offset = 0",
        )
        .bind(group)
        .bind(&topic)
        .bind(partition)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Reset {
        topic,
        tables: deleted,
        forgotten_events: forgotten,
        ends,
    })
}

/// Waits until the group's positions on the topic pass the ends seen at the
/// reset, drawing a progress bar on stderr. Fails if nothing moves for
/// `stall_timeout`.
pub async fn follow(
    pool: &MySqlPool,
    settings: &Settings,
    reset: &Reset,
    stall_timeout: Duration,
) -> anyhow::Result<u64> {
    let total: i64 = reset.ends.iter().map(|(_, low, high)| high - low).sum();
    let mut last_done = -1;
    let mut last_move = Instant::now();
    loop {
        let stored = crate::sink::stored_offsets(pool, &settings.kafka.group_id).await?;
        let positions: BTreeMap<i32, i64> = stored
            .into_iter()
            .filter(|((t, _), _)| *t == reset.topic)
            .map(|((_, p), n)| (p, n))
            .collect();
        let done: i64 = reset
            .ends
            .iter()
            .map(|(p, low, high)| (positions.get(p).copied().unwrap_or(0).min(*high) - low).max(0))
            .sum();
        let width = 30;
        let filled = if total == 0 {
            width
        } else {
            (done * width as i64 / total) as usize
        };
        eprint!(
            "\r[replay] [{}{}] {:>3}%  {done}/{total} events of {}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            if total == 0 { 100 } else { done * 100 / total },
            reset.topic
        );
        let _ = std::io::stderr().flush();
        if done >= total {
            eprintln!();
            break;
        }
        if done != last_done {
            last_done = done;
            last_move = Instant::now();
        } else if last_move.elapsed() > stall_timeout {
            eprintln!();
            anyhow::bail!(
                "no progress for {}s: is a `projector run` host consuming group {:?}? The domain is reset; it is rebuilt when a host runs",
                stall_timeout.as_secs(),
                settings.kafka.group_id
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let applied: i64 = sqlx::query("SELECT COUNT(*) FROM processed_events WHERE topic = ?")
        .bind(&reset.topic)
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    Ok(applied as u64)
}
