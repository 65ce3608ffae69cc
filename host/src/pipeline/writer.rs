//! The writer: one prepared batch becomes its dead letters, then one MySQL
//! transaction (rows, `processed_events`, positions). It runs beside the
//! consuming loop, so the next batch is fetched and projected while this one
//! commits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use chrono::Utc;
use rdkafka::Message as _;
use rdkafka::message::OwnedMessage;
use sqlx::{Connection as _, MySqlPool};

use super::project::Projected;
use crate::consume::{Expected, PartitionKey};
use crate::dlq::{Failure, Publisher};
use crate::ops::Shared;
use crate::sink::{self, Applied, BatchOutcome, ExecError, SchemaCell};

/// A batch aligned and projected, ready to write.
pub struct Prepared {
    pub(super) messages: Vec<OwnedMessage>,
    pub(super) applied: Vec<Projected>,
    pub(super) failed: Vec<(usize, Failure)>,
    pub(super) offsets: BTreeMap<PartitionKey, i64>,
    pub(super) started: Instant,
    pub(super) projected_us: u64,
    /// Its dead letters were acknowledged (a retry does not send them again).
    pub(super) dead_lettered: AtomicBool,
    /// Attempts that failed with an unclassified database error.
    pub(super) unclassified: AtomicU32,
}

/// Attempts of a batch an unclassified database error may fail before the
/// events it hits are dead-lettered as `unclassified`.
pub const UNCLASSIFIED_ATTEMPTS: u32 = 5;

/// Why a batch attempt did not commit.
pub(super) enum Attempt {
    /// Database or broker trouble: retry the same batch after a backoff.
    Transient(anyhow::Error),
    /// The stored positions of these partitions moved: drop the batch and
    /// re-read them.
    Moved(Vec<PartitionKey>),
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Self {
        Attempt::Transient(e)
    }
}

/// Whether the batch has used up its attempts against unclassified errors.
fn unclassified_exhausted(p: &Prepared) -> bool {
    p.unclassified.load(Ordering::Acquire) + 1 >= UNCLASSIFIED_ATTEMPTS
}

/// Counts a failed attempt against an unclassified error: retried.
fn unclassified_attempt(p: &Prepared, e: sqlx::Error) -> Attempt {
    let n = p.unclassified.fetch_add(1, Ordering::AcqRel) + 1;
    anyhow::Error::new(e)
        .context(format!(
            "unclassified MySQL error (attempt {n}; at attempt {UNCLASSIFIED_ATTEMPTS} the events it hits are dead-lettered)"
        ))
        .into()
}

/// Writes prepared batches: dead letters, then one MySQL transaction. Runs
/// beside the consuming loop, so the next batch is fetched and projected
/// while this one commits.
pub struct Writer {
    pub(super) pool: MySqlPool,
    pub(super) schema: Arc<SchemaCell>,
    pub(super) group: String,
    pub(super) dlq: Publisher,
    pub(super) shared: Arc<Shared>,
    /// Longest one batch's transaction may take.
    pub(super) statement_timeout: std::time::Duration,
}

impl Writer {
    /// Dead-letters the permanent failures and commits the rest with the
    /// offsets. Any error is transient or a moved position.
    pub(super) async fn write(&self, p: &Prepared, expected: &Expected) -> Result<(), Attempt> {
        // Dead letters are acknowledged before the offsets move past them.
        if !p.dead_lettered.load(Ordering::Acquire) {
            self.dead_letter(&p.messages, &p.failed).await?;
            p.dead_lettered.store(true, Ordering::Release);
        }
        let commit_started = Instant::now();
        let mut refused = HashSet::new();
        let outcome = match self.commit(&p.applied, &p.offsets, expected).await {
            Ok(o) => o,
            Err(ExecError::Data(reason)) => {
                tracing::warn!(%reason, events = p.applied.len(), "the database refused a batch; retrying it event by event");
                let (outcome, ids) = self.commit_isolated(p, expected).await?;
                refused = ids;
                outcome
            }
            Err(ExecError::Moved(keys)) => return Err(Attempt::Moved(keys)),
            Err(ExecError::Transient(e)) => {
                return Err(anyhow::Error::new(e)
                    .context("MySQL transaction failed")
                    .into());
            }
            Err(ExecError::Unclassified(e)) => {
                if !unclassified_exhausted(p) {
                    return Err(unclassified_attempt(p, e));
                }
                tracing::warn!(error = %e, events = p.applied.len(), "an unclassified database error outlasted its retries; retrying the batch event by event");
                let (outcome, ids) = self.commit_isolated(p, expected).await?;
                refused = ids;
                outcome
            }
        };
        self.shared
            .metrics
            .batch_commit_seconds
            .observe(commit_started.elapsed().as_secs_f64());
        self.observe_batch(&p.applied, &outcome, &refused, p.started);
        tracing::debug!(
            messages = p.messages.len(),
            applied = outcome.applied,
            duplicates = outcome.duplicates,
            dead_lettered = p.failed.len() + refused.len(),
            project_us = p.projected_us,
            commit_us = commit_started.elapsed().as_micros() as u64,
            elapsed_us = p.started.elapsed().as_micros() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// Metrics of a committed batch (`refused`: dead-lettered by the
    /// database, counted as dead letters already).
    fn observe_batch(
        &self,
        applied: &[Projected],
        outcome: &BatchOutcome,
        refused: &HashSet<String>,
        started: Instant,
    ) {
        let metrics = &self.shared.metrics;
        let skipped: HashSet<&str> = outcome.skipped.iter().map(String::as_str).collect();
        let now = Utc::now().naive_utc();
        let mut by_type: HashMap<(&str, &'static str), u64> = HashMap::new();
        for a in applied
            .iter()
            .filter(|a| !refused.contains(&a.inner.event_id))
        {
            let duplicate = skipped.contains(a.inner.event_id.as_str());
            let outcome = if duplicate { "duplicate" } else { "applied" };
            *by_type
                .entry((a.inner.event_type.as_str(), outcome))
                .or_insert(0) += 1;
            if !duplicate {
                let latency = (now - a.inner.timestamp).num_microseconds().unwrap_or(0);
                metrics
                    .end_to_end_seconds
                    .observe((latency.max(0) as f64) / 1e6);
            }
        }
        for ((event_type, outcome), n) in by_type {
            metrics
                .events
                .with_label_values(&[event_type, outcome])
                .inc_by(n);
        }
        metrics.batch_events.observe(applied.len() as f64);
        metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    async fn commit(
        &self,
        applied: &[Projected],
        offsets: &BTreeMap<PartitionKey, i64>,
        expected: &Expected,
    ) -> Result<BatchOutcome, ExecError> {
        let events: Vec<&Applied> = applied.iter().map(|a| &a.inner).collect();
        let group = &self.group;
        let mut conn = self.pool.acquire().await?;
        let work = async {
            let mut tx = conn.begin().await?;
            sink::fence(&mut tx, group, expected).await?;
            self.same_components(applied, offsets)?;
            let outcome =
                sink::apply_batch(&mut tx, &self.schema.get(), group, &events, offsets).await?;
            tx.commit().await?;
            Ok(outcome)
        };
        match tokio::time::timeout(self.statement_timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                // Mid-statement the connection cannot be reused: closing it
                // makes the server roll the transaction back.
                conn.close_on_drop();
                Err(ExecError::Transient(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the batch's transaction took longer than {:?} (mysql.statement_timeout)",
                        self.statement_timeout
                    ),
                ))))
            }
        }
    }

    /// Checked under the fence's locks: a batch whose events a component no
    /// longer in force projected (replaced while the batch waited, as a
    /// shadow rebuild's swap does while it holds the positions) is not
    /// written; its partitions restart from their stored positions and the
    /// events are projected again by the component in force.
    fn same_components(
        &self,
        applied: &[Projected],
        offsets: &BTreeMap<PartitionKey, i64>,
    ) -> Result<(), ExecError> {
        let registry = self.shared.registry.borrow().clone();
        let stale = applied.iter().any(|a| {
            a.component_ref.as_ref().is_some_and(|c| {
                registry
                    .route(&a.inner.event_type)
                    .is_none_or(|p| p.digest() != c.digest)
            })
        });
        if stale {
            tracing::info!("a component was replaced while this batch waited; projecting it again");
            return Err(ExecError::Moved(offsets.keys().cloned().collect()));
        }
        Ok(())
    }

    /// Applies the events one by one under savepoints; the ones the database
    /// refuses are dead-lettered, the others committed with the offsets.
    /// An event failing with an unclassified error retries the batch until
    /// [`UNCLASSIFIED_ATTEMPTS`], then is dead-lettered as `unclassified`.
    async fn commit_isolated(
        &self,
        p: &Prepared,
        expected: &Expected,
    ) -> Result<(BatchOutcome, HashSet<String>), Attempt> {
        let (applied, offsets, messages) = (&p.applied, &p.offsets, &p.messages);
        let group = &self.group;
        let transient = |e: sqlx::Error| {
            Attempt::from(anyhow::Error::new(e).context("MySQL failed during isolation"))
        };
        let mut conn = self.pool.acquire().await.map_err(transient)?;
        let mut tx = conn.begin().await.map_err(transient)?;
        match sink::fence(&mut tx, group, expected)
            .await
            .and_then(|()| self.same_components(applied, offsets))
        {
            Ok(()) => {}
            Err(ExecError::Moved(keys)) => return Err(Attempt::Moved(keys)),
            Err(e) => return Err(anyhow::anyhow!("position check failed: {e}").into()),
        }
        let mut refused = Vec::new();
        let mut outcome = BatchOutcome::default();
        for (i, a) in applied.iter().enumerate() {
            sqlx::query("SAVEPOINT one_event")
                .execute(&mut *tx)
                .await
                .map_err(transient)?;
            match sink::apply_batch(
                &mut tx,
                &self.schema.get(),
                group,
                &[&a.inner],
                &BTreeMap::new(),
            )
            .await
            {
                Ok(o) => {
                    outcome.applied += o.applied;
                    outcome.duplicates += o.duplicates;
                    outcome.skipped.extend(o.skipped);
                    sqlx::query("RELEASE SAVEPOINT one_event")
                        .execute(&mut *tx)
                        .await
                        .map_err(transient)?;
                }
                Err(ExecError::Data(reason)) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT one_event")
                        .execute(&mut *tx)
                        .await
                        .map_err(transient)?;
                    refused.push((i, "rejected_by_database", reason));
                }
                Err(ExecError::Unclassified(e)) if unclassified_exhausted(p) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT one_event")
                        .execute(&mut *tx)
                        .await
                        .map_err(transient)?;
                    refused.push((i, "unclassified", e.to_string()));
                }
                Err(ExecError::Unclassified(e)) => return Err(unclassified_attempt(p, e)),
                Err(ExecError::Transient(e)) => return Err(transient(e)),
                Err(ExecError::Moved(keys)) => return Err(Attempt::Moved(keys)),
            }
        }
        let failures: Vec<(usize, Failure)> = refused
            .iter()
            .map(|(i, class, reason)| {
                (
                    applied[*i].source_index,
                    Failure {
                        class,
                        message: reason.clone(),
                        component: applied[*i].component_ref.clone(),
                    },
                )
            })
            .collect();
        // Dead letters are acknowledged before the offsets move past them.
        self.dead_letter(messages, &failures).await?;
        sink::apply_batch(&mut tx, &self.schema.get(), group, &[], offsets)
            .await
            .map_err(|e| anyhow::anyhow!("recording offsets failed: {e}"))?;
        tx.commit().await.map_err(transient)?;
        let refused = refused
            .iter()
            .map(|(i, _, _)| applied[*i].inner.event_id.clone())
            .collect();
        Ok((outcome, refused))
    }

    /// Publishes dead letters, waits for the broker's acknowledgement, and
    /// counts them.
    async fn dead_letter(
        &self,
        messages: &[OwnedMessage],
        failed: &[(usize, Failure)],
    ) -> anyhow::Result<()> {
        if failed.is_empty() {
            return Ok(());
        }
        let ids = self.dlq.send(messages, failed).await?;
        for ((index, failure), id) in failed.iter().zip(ids) {
            let m = &messages[*index];
            debug_assert!(
                crate::dlq::CLASSES.contains(&failure.class),
                "dead-letter class {:?} is missing from dlq::CLASSES",
                failure.class
            );
            self.shared
                .metrics
                .dead_letters
                .with_label_values(&[m.topic(), failure.class])
                .inc();
            if let Ok(envelope) = events::Envelope::from_slice(m.payload().unwrap_or_default()) {
                let envelope: events::RawEnvelope = envelope;
                self.shared
                    .metrics
                    .events
                    .with_label_values(&[envelope.event_type.as_str(), "dead_lettered"])
                    .inc();
            }
            let source = format!("{}[{}]@{}", m.topic(), m.partition(), m.offset());
            self.shared
                .record_error(failure.class, format!("{source}: {}", failure.message));
            self.shared
                .record_letter(id, failure.class, source, &failure.message);
        }
        Ok(())
    }
}
