//! Consuming: the Kafka client of the host, batches of messages, pausing
//! during transient failures, and the positions each partition resumes from.
//!
//! The positions themselves are owned by MySQL (see `pipeline`); this module
//! never reads the database: the loop hands it the stored positions when it
//! asks for them ([`Source::needs_stored`]).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use crate::settings::{Settings, StartPolicy};

mod positions;
mod rebalance;

pub use positions::Expected;
pub use rebalance::RebalanceLog;

use positions::Position;

/// A partition: (topic, partition).
pub type PartitionKey = (String, i32);

/// Stored next offsets, as the sink reads them.
pub type Stored = HashMap<PartitionKey, i64>;

/// Offsets a [`Source`] must not deliver from, per partition (a partition
/// not in the map is not bounded). Shared with whoever moves it: a shadow
/// rebuild stops its consumer exactly at the live host's positions. Only
/// ever raised.
pub type Bound = std::sync::Arc<std::sync::RwLock<HashMap<PartitionKey, i64>>>;

/// A librdkafka configuration from key-value settings.
pub fn client_config(map: BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in map {
        config.set(k, v);
    }
    config
}

/// The producer of dead letters.
pub fn producer(settings: &Settings) -> anyhow::Result<FutureProducer> {
    client_config(settings.kafka.producer_config())
        .create()
        .context("failed to create the DLQ producer")
}

/// An admin client of the brokers (topic configurations).
pub fn admin(
    settings: &Settings,
) -> anyhow::Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>> {
    client_config(settings.kafka.producer_config())
        .create()
        .context("failed to create the Kafka admin client")
}

/// The host's consumer of the domain topics and where each owned partition
/// stands.
pub struct Source {
    consumer: StreamConsumer<RebalanceLog>,
    max_events: usize,
    max_wait: Duration,
    positions: HashMap<PartitionKey, Position>,
    /// Messages received while paused for a transient failure, to be
    /// processed before anything newer.
    held: Vec<OwnedMessage>,
    /// The offsets of the last committed batch, committed to Kafka again
    /// (synchronously) on shutdown.
    last_offsets: BTreeMap<PartitionKey, i64>,
    /// Positions committed to MySQL but not yet advised to Kafka, and when
    /// Kafka was last advised.
    advice: BTreeMap<PartitionKey, i64>,
    advised_at: Option<Instant>,
    /// Where partitions without a stored position start.
    start: StartPolicy,
    /// Gaps met in the log since the pipeline last took them.
    gaps: Vec<Gap>,
    /// Where delivery stops, if bounded, and the messages received at or
    /// past it (their partitions paused), in order, until it rises.
    bound: Option<Bound>,
    beyond: Vec<OwnedMessage>,
}

/// Offsets the log no longer has between where a partition stood and the
/// next message the broker delivered (retention deleted them unread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub topic: String,
    pub partition: i32,
    /// The first missing offset and the first offset delivered after them.
    pub from: i64,
    pub to: i64,
}

/// How often the advisory Kafka offset commit is sent at most. One per
/// batch would be one request per event in per-event mode; queued on the
/// coordinator connection ahead of the heartbeats, they cost the group
/// membership (measured: a session timeout and a 40 s stall).
const ADVISE_EVERY: Duration = Duration::from_secs(1);

impl Source {
    /// Creates a consumer of the group subscribed to `topic`, one of the
    /// lanes the host runs: the group's members then differ in their
    /// subscriptions, which the assignor handles (each topic's partitions go
    /// to the members subscribed to it).
    pub fn new(settings: &Settings, topic: &str) -> anyhow::Result<Source> {
        let mut config = settings.kafka.consumer_config();
        let client_id = format!(
            "{}-{}",
            config.get("client.id").cloned().unwrap_or_default(),
            topic.rsplit('.').next().unwrap_or(topic)
        );
        config.insert("client.id".to_owned(), client_id);
        if let Some(instance) = settings
            .kafka
            .instance_id
            .as_deref()
            .filter(|i| !i.is_empty())
        {
            config.insert(
                "group.instance.id".to_owned(),
                format!(
                    "{instance}-{}",
                    topic.replace(
                        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_' && c != '.',
                        "_"
                    )
                ),
            );
        }
        let consumer: StreamConsumer<RebalanceLog> = client_config(config)
            .create_with_context(RebalanceLog::default())
            .context("failed to create the Kafka consumer")?;
        consumer
            .subscribe(&[topic])
            .context("failed to subscribe")?;
        Ok(Source {
            consumer,
            max_events: settings.batch.max_events,
            max_wait: settings.batch.max_wait,
            positions: HashMap::new(),
            held: Vec::new(),
            last_offsets: BTreeMap::new(),
            advice: BTreeMap::new(),
            advised_at: None,
            start: settings.start_without_position,
            gaps: Vec::new(),
            bound: None,
            beyond: Vec::new(),
        })
    }

    /// Delivers no message at or past `bound` (see [`Bound`]).
    pub fn bounded(&mut self, bound: Bound) {
        self.bound = Some(bound);
    }

    /// Up to `max_events` messages: the held ones first, else waits up to a
    /// second for the first message, then at most `max_wait` for the rest.
    /// Cancelling it loses the messages it gathered: only shutdown may.
    pub async fn next_batch(&mut self) -> Vec<OwnedMessage> {
        let batch = self.next_unbounded().await;
        self.within_bound(batch)
    }

    async fn next_unbounded(&mut self) -> Vec<OwnedMessage> {
        self.release_beyond();
        let max = self.max_events;
        if !self.held.is_empty() {
            let rest = self.held.split_off(self.held.len().min(max));
            return std::mem::replace(&mut self.held, rest);
        }
        let mut batch = Vec::with_capacity(max.min(4096));
        // Held past a bound, the wait is short: a raised bound is seen soon.
        let idle = if self.beyond.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(20)
        };
        let Ok(first) = tokio::time::timeout(idle, self.consumer.recv()).await else {
            // Idle: whatever was committed since the last advice is advised now.
            self.advise();
            return batch;
        };
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return batch;
            }
        }
        let deadline = tokio::time::Instant::now() + self.max_wait;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Messages kept past the bound that it now admits go to `held` (ahead
    /// of anything newer), and their partitions resume when none is left.
    fn release_beyond(&mut self) {
        let Some(bound) = &self.bound else { return };
        if self.beyond.is_empty() {
            return;
        }
        let bound = bound.read().unwrap_or_else(|e| e.into_inner());
        let admitted = |m: &OwnedMessage| {
            bound
                .get(&(m.topic().to_owned(), m.partition()))
                .is_none_or(|b| m.offset() < *b)
        };
        // Per partition, a prefix of its messages is admitted.
        let mut stopped: std::collections::HashSet<(String, i32)> = Default::default();
        let mut kept = Vec::new();
        let mut released = Vec::new();
        for m in std::mem::take(&mut self.beyond) {
            let key = (m.topic().to_owned(), m.partition());
            if !stopped.contains(&key) && admitted(&m) {
                released.push(m);
            } else {
                stopped.insert(key);
                kept.push(m);
            }
        }
        drop(bound);
        let mut resume = TopicPartitionList::new();
        for m in &released {
            let key = (m.topic().to_owned(), m.partition());
            if !stopped.contains(&key) && resume.find_partition(&key.0, key.1).is_none() {
                resume.add_partition(&key.0, key.1);
            }
        }
        if resume.count() > 0 {
            let _ = self.consumer.resume(&resume);
        }
        self.beyond = kept;
        released.append(&mut self.held);
        self.held = released;
    }

    /// Keeps out of `batch` every message at or past the bound, and those
    /// after it in its partition, pausing their partitions.
    fn within_bound(&mut self, batch: Vec<OwnedMessage>) -> Vec<OwnedMessage> {
        let Some(bound) = &self.bound else {
            return batch;
        };
        let bound = bound.read().unwrap_or_else(|e| e.into_inner());
        let mut stopped: std::collections::HashSet<(String, i32)> = self
            .beyond
            .iter()
            .map(|m| (m.topic().to_owned(), m.partition()))
            .collect();
        let mut pause = TopicPartitionList::new();
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let key = (m.topic().to_owned(), m.partition());
            let past = bound.get(&key).is_some_and(|b| m.offset() >= *b);
            if past || stopped.contains(&key) {
                stopped.insert(key.clone());
                if pause.find_partition(&key.0, key.1).is_none() {
                    pause.add_partition(&key.0, key.1);
                }
                self.beyond.push(m);
            } else {
                out.push(m);
            }
        }
        if pause.count() > 0 {
            let _ = self.consumer.pause(&pause);
        }
        out
    }

    /// Keeps polling until `until` with every assigned partition paused (so
    /// the group keeps this member), holding whatever still arrives for the
    /// next batch.
    pub async fn poll_paused(&mut self, until: tokio::time::Instant) {
        loop {
            // Partitions assigned meanwhile are paused too.
            self.pause(true);
            match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Err(_) => return,
                Ok(Ok(m)) => self.held.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Kafka consumer error while paused");
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(Duration::from_millis(100).min(left)).await;
                }
            }
        }
    }

    /// Pauses (or resumes) fetching of every assigned partition.
    pub fn pause(&self, pause: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, pause, "pause/resume failed");
        }
    }

    /// Records a batch's offsets as committed to MySQL and commits them to
    /// Kafka as advice for lag tools.
    pub fn committed(&mut self, offsets: &BTreeMap<PartitionKey, i64>) {
        for (key, next) in offsets {
            if let Some(pos) = self.positions.get_mut(key) {
                pos.committed = Some(*next);
            }
            self.last_offsets.insert(key.clone(), *next);
            self.advice.insert(key.clone(), *next);
        }
        if self
            .advised_at
            .is_none_or(|at| at.elapsed() >= ADVISE_EVERY)
        {
            self.advise();
        }
    }

    /// Commits the positions committed to MySQL since the last advice to
    /// Kafka (asynchronously), for the partitions this host still owns.
    fn advise(&mut self) {
        let advice = std::mem::take(&mut self.advice);
        let owned: BTreeMap<PartitionKey, i64> = advice
            .into_iter()
            .filter(|(key, _)| self.positions.contains_key(key))
            .collect();
        self.advised_at = Some(Instant::now());
        self.commit_kafka(&owned, CommitMode::Async);
    }

    /// Commits the last batch's offsets to Kafka synchronously (on shutdown).
    pub fn commit_last(&self) {
        self.commit_kafka(&self.last_offsets, CommitMode::Sync);
    }

    fn commit_kafka(&self, offsets: &BTreeMap<PartitionKey, i64>, mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            // Advisory only: MySQL holds the real position.
            tracing::debug!(error = %e, "advisory Kafka offset commit failed");
        }
    }

    /// The next offset after each partition's last message of `messages`.
    pub fn next_offsets(messages: &[OwnedMessage]) -> BTreeMap<PartitionKey, i64> {
        let mut offsets = BTreeMap::new();
        for m in messages {
            let e = offsets
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        offsets
    }
}
