//! Where each owned partition stands, and seeking to the positions MySQL
//! holds.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::Offset;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::OwnedMessage;

use super::{Gap, PartitionKey, Source, Stored};
use crate::settings::StartPolicy;

/// Per partition of a batch, the stored position it starts from (`None`:
/// no row yet), checked by the sink's fence.
pub type Expected = BTreeMap<PartitionKey, Option<i64>>;

/// Where one owned partition stands: the next offset to apply. Once the
/// consumer delivers from there, a higher offset than `next` is a gap in the
/// log (retention, compaction, transaction markers), not a lost message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    pub(super) next: i64,
    /// What MySQL holds for the partition, as far as this host knows.
    pub(super) committed: Option<i64>,
}

impl Source {
    /// Forgets the positions of partitions revoked or (re)assigned since the
    /// last call.
    fn drain_rebalances(&mut self) {
        for p in self.consumer.context().drain() {
            self.positions.remove(&p);
        }
    }

    /// Whether aligning `batch` needs the stored positions (a partition this
    /// host has no position for).
    pub fn needs_stored(&mut self, batch: &[OwnedMessage]) -> bool {
        self.drain_rebalances();
        // Messages come in runs of one partition: look each run up once.
        let mut last: Option<(&str, i32)> = None;
        batch.iter().any(|m| {
            let key = (m.topic(), m.partition());
            if last == Some(key) {
                return false;
            }
            last = Some(key);
            !self.positions.contains_key(&(key.0.to_owned(), key.1))
        })
    }

    /// Whether this host follows any partition (and so should look for
    /// positions moved under it).
    pub fn has_positions(&mut self) -> bool {
        self.drain_rebalances();
        !self.positions.is_empty()
    }

    /// Drops what is below each partition's position, seeking where the
    /// consumer is not where MySQL says it should be (`stored`, given when
    /// [`Source::needs_stored`] said so). Returns the messages to apply.
    pub fn align(
        &mut self,
        batch: Vec<OwnedMessage>,
        stored: Option<&Stored>,
    ) -> anyhow::Result<Vec<OwnedMessage>> {
        self.drain_rebalances();
        let mut firsts: BTreeMap<PartitionKey, i64> = BTreeMap::new();
        for m in &batch {
            firsts
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(m.offset());
        }
        // Partitions sought now: their messages in this batch came from
        // before the seek and are dropped; the consumer delivers again from
        // the stored position.
        let mut sought = HashSet::new();
        for (key, first) in &firsts {
            if self.positions.contains_key(key) {
                continue;
            }
            let stored = stored.context("the stored positions are needed to align this batch")?;
            match stored.get(key) {
                Some(&next) if next != *first => {
                    tracing::info!(topic = %key.0, partition = key.1, from = *first, to = next, "seeking to the position stored in MySQL");
                    self.consumer
                        .seek(&key.0, key.1, Offset::Offset(next), Duration::from_secs(10))
                        .with_context(|| {
                            format!("failed to seek {}[{}] to {next}", key.0, key.1)
                        })?;
                    sought.insert(key.clone());
                    self.positions.insert(
                        key.clone(),
                        Position {
                            next,
                            committed: Some(next),
                        },
                    );
                }
                Some(&next) => {
                    self.positions.insert(
                        key.clone(),
                        Position {
                            next,
                            committed: Some(next),
                        },
                    );
                }
                None => {
                    // No stored position: start by the policy, never where
                    // Kafka's committed offset (perhaps of another
                    // database under this group) put the consumer.
                    let (offset, start) = self.policy_start(key)?;
                    // (With `latest`, a message past the high watermark
                    // seen arrived meanwhile: start at it.)
                    let (offset, start) = if *first >= start && self.start == StartPolicy::Latest {
                        (Offset::Offset(*first), *first)
                    } else {
                        (offset, start)
                    };
                    if start != *first {
                        tracing::info!(topic = %key.0, partition = key.1, from = *first, to = start, policy = ?self.start, "no position stored in MySQL; seeking to the start the policy gives");
                        self.consumer
                            .seek(&key.0, key.1, offset, Duration::from_secs(10))
                            .with_context(|| {
                                format!("failed to seek {}[{}] to {start}", key.0, key.1)
                            })?;
                        sought.insert(key.clone());
                    }
                    self.positions.insert(
                        key.clone(),
                        Position {
                            next: start,
                            committed: None,
                        },
                    );
                }
            }
        }
        let mut kept = Vec::with_capacity(batch.len());
        for m in batch {
            let key = (m.topic().to_owned(), m.partition());
            if sought.contains(&key) {
                continue;
            }
            let Some(pos) = self.positions.get_mut(&key) else {
                continue;
            };
            if m.offset() < pos.next {
                continue; // already applied
            }
            if m.offset() > pos.next {
                // The log lost offsets this database never applied.
                self.gaps.push(Gap {
                    topic: key.0.clone(),
                    partition: key.1,
                    from: pos.next,
                    to: m.offset(),
                });
            }
            pos.next = m.offset() + 1;
            kept.push(m);
        }
        Ok(kept)
    }

    /// The stored position each partition of `offsets` should have before
    /// its batch commits: where this host left it.
    pub fn expected<'a>(&self, partitions: impl Iterator<Item = &'a PartitionKey>) -> Expected {
        partitions
            .map(|k| {
                (
                    k.clone(),
                    self.positions.get(k).and_then(|pos| pos.committed),
                )
            })
            .collect()
    }

    /// The followed partitions whose stored position is no longer what this
    /// host committed (a replay reset them).
    pub fn moved(&self, stored: &Stored) -> Vec<PartitionKey> {
        self.positions
            .iter()
            .filter(|(key, pos)| {
                pos.committed.is_some() && stored.get(*key).copied() != pos.committed
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Seeks the given partitions to their stored positions (the beginning
    /// where none is stored), dropping messages held from before.
    pub fn seek_to_stored(&mut self, keys: &[PartitionKey], stored: &Stored) {
        self.drop_held(keys);
        for key in keys {
            let committed = stored.get(key).copied();
            let next = committed.unwrap_or(0);
            let offset = committed.map_or(Offset::Beginning, Offset::Offset);
            tracing::info!(topic = %key.0, partition = key.1, to = next, "stored position moved; seeking there");
            match self
                .consumer
                .seek(&key.0, key.1, offset, Duration::from_secs(10))
            {
                Ok(()) => {
                    self.positions
                        .insert(key.clone(), Position { next, committed });
                }
                Err(e) => {
                    // Not ours any more (or not fetching yet): the next
                    // assignment reads the stored position afresh.
                    tracing::debug!(topic = %key.0, partition = key.1, error = %e, "seek failed");
                    self.positions.remove(key);
                }
            }
        }
    }

    /// Drops held messages of these partitions: the consumer delivers them
    /// again from the position it seeks to.
    fn drop_held(&mut self, keys: &[PartitionKey]) {
        self.held.retain(|m| {
            !keys
                .iter()
                .any(|(t, p)| m.topic() == t && m.partition() == *p)
        });
    }

    /// Assigned partitions this host has no position for yet (nothing
    /// delivered since the assignment: an idle partition, or one where
    /// Kafka's committed offset already sits at the end of the log).
    pub fn unpositioned(&mut self) -> Vec<PartitionKey> {
        self.drain_rebalances();
        let Ok(assignment) = self.consumer.assignment() else {
            return Vec::new();
        };
        assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .filter(|key| !self.positions.contains_key(key))
            .collect()
    }

    /// Seeks each of `keys` to where it starts: its stored position, else
    /// where the start policy says. A partition whose seek fails (not
    /// fetching yet) stays unpositioned and is tried again.
    pub fn position(&mut self, keys: &[PartitionKey], stored: &Stored) {
        for key in keys {
            let (offset, next, committed) = match stored.get(key) {
                Some(&next) => (Offset::Offset(next), next, Some(next)),
                None => match self.policy_start(key) {
                    Ok((offset, next)) => (offset, next, None),
                    Err(e) => {
                        tracing::debug!(topic = %key.0, partition = key.1, error = %e, "could not read the partition's offsets");
                        continue;
                    }
                },
            };
            // With a stored position: asynchronous (no timeout). A
            // synchronous seek of an idle partition waits out its fetch
            // (fetch.wait.max.ms) and would hold the loop for each of them;
            // the seek's barrier is set at once (nothing fetched before it is
            // delivered after it), and should it not take, the consumer goes
            // on from Kafka's committed offset, which this host advised after
            // its MySQL commits (at or below the stored position: `align`
            // drops what is below). Without one (a fresh database), Kafka's
            // committed offset may be another database's, at the end of the
            // log: there a lost seek would silently skip the whole history.
            // librdkafka refuses a seek on a partition whose fetcher has not
            // started yet, and reports it only to a synchronous caller, so
            // this one waits for the answer (once per partition, on a first
            // start) and is tried again when refused.
            let wait = if committed.is_some() {
                Duration::ZERO
            } else {
                Duration::from_secs(2)
            };
            match self.consumer.seek(&key.0, key.1, offset, wait) {
                Ok(()) => {
                    tracing::debug!(topic = %key.0, partition = key.1, next, "positioned an assigned partition");
                    self.drop_held(std::slice::from_ref(key));
                    self.positions
                        .insert(key.clone(), Position { next, committed });
                }
                Err(e) => {
                    tracing::debug!(topic = %key.0, partition = key.1, error = %e, "seek failed; trying again later");
                }
            }
        }
    }

    /// Resumes fetching after a pause, and seeks every positioned partition
    /// to where it continues (past the messages held while paused). A pause
    /// drops librdkafka's fetch state, and a partition positioned by an
    /// asynchronous seek just before it, with nothing delivered yet, would
    /// otherwise resume from Kafka's committed offset: after a fresh database
    /// under an old group that is the end of the log, and the partition's
    /// whole history would silently never arrive.
    pub fn resume(&mut self) {
        self.drain_rebalances();
        self.pause(false);
        for (key, pos) in &self.positions {
            let after_held = self
                .held
                .iter()
                .filter(|m| m.topic() == key.0 && m.partition() == key.1)
                .map(|m| m.offset() + 1)
                .max();
            let offset = match after_held {
                Some(next) => Offset::Offset(next.max(pos.next)),
                None if pos.next == 0 => Offset::Beginning,
                None => Offset::Offset(pos.next),
            };
            if let Err(e) = self.consumer.seek(&key.0, key.1, offset, Duration::ZERO) {
                tracing::debug!(topic = %key.0, partition = key.1, error = %e, "seek on resume failed");
            }
        }
    }

    /// Where a partition without a stored position starts by the policy:
    /// (the offset to seek to, the next offset expected). `earliest` is the
    /// log's beginning, resolved by the broker as it fetches (if retention
    /// deleted offsets before it, the first message delivered shows the gap);
    /// `latest` is the high watermark, asked of the broker.
    fn policy_start(&mut self, key: &PartitionKey) -> anyhow::Result<(Offset, i64)> {
        Ok(match self.start {
            StartPolicy::Earliest => (Offset::Beginning, 0),
            StartPolicy::Latest => {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(&key.0, key.1, Duration::from_secs(10))
                    .with_context(|| {
                        format!("failed to read the offsets of {}[{}]", key.0, key.1)
                    })?;
                (Offset::Offset(high), high)
            }
        })
    }

    /// The gaps met since the last call.
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }

    /// Forgets these partitions' positions: the next batch reads them from
    /// MySQL again.
    pub fn forget(&mut self, keys: &[PartitionKey]) {
        self.drop_held(keys);
        for k in keys {
            self.positions.remove(k);
        }
    }
}
