//! The consuming loop: Kafka -> projection -> MySQL.
//!
//! # Delivery guarantee
//!
//! **Exactly-once effect.** For every batch, one MySQL transaction writes the
//! row operations of each event not yet in `processed_events`, those events'
//! `processed_events` rows, and the next offset of every partition in the
//! batch (`consumer_offsets`). Only after that commit are the same offsets
//! committed to Kafka, and only as advice for lag tools: when a partition is
//! assigned the host reads its position from MySQL and seeks there, and
//! anything delivered below that position is dropped. A crash at any point
//! therefore replays at most the uncommitted batch, and `processed_events`
//! (primary key `event_id`) makes a replayed event a no-op.
//!
//! What would break it: writing rows outside that transaction, committing
//! Kafka offsets before MySQL, or deleting `processed_events` rows of events
//! still in the topics while the stored offsets point below them.
//!
//! **Per-partition order** is kept: a batch holds messages in partition order,
//! and the executor's grouping preserves the effect of applying them one by
//! one (every write is guarded by the row's event timestamp).
//!
//! **Bad input never stops a partition.** An event that cannot be decoded,
//! routed, projected or validated, or whose data the database refuses, goes to
//! the dead-letter topic `dlq.<topic>` (acknowledged before the batch commits)
//! and its offset is committed with the batch. A batch that the database
//! refuses is retried event by event under savepoints, so only the bad event
//! is dead-lettered. Transient failures (database or broker unavailable,
//! deadlock) never dead-letter anything: the batch is retried with backoff
//! while the assigned partitions are paused and the consumer keeps polling
//! (so the group does not evict it), and readiness reports the failure.
//!
//! **Replays and moved positions.** Each batch's transaction first locks the
//! stored positions of its partitions and checks they are where this host
//! left them (`executor::fence`). `projector replay` resets a domain's
//! positions to 0 in MySQL; the host sees it there (at the next batch, or
//! within a second when the partition is quiet), seeks back and re-projects
//! the topic through the current component.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use flatten::Envelope;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection as _, MySqlPool};
use tokio::sync::watch;

use crate::admin::{self, Admin};
use crate::executor::{self, Applied, BatchOutcome, ExecError};
use crate::monitor::{Monitor, Shared};
use crate::registry::{Projection, Registry};
use crate::reload::Reloader;
use crate::runtime::{GuestFailure, Runtime, Session};
use crate::schema::{self, Schema};
use crate::settings::{Settings, redact_url};

/// Largest original message kept inline in a dead letter; larger ones are
/// truncated (the dead letter keeps the source coordinates for redrive).
pub const DLQ_MAX_ORIGINAL: usize = 512 * 1024;

/// Counters of what the host did, for tests, logs and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub applied: std::sync::atomic::AtomicU64,
    pub duplicates: std::sync::atomic::AtomicU64,
    pub dead_lettered: std::sync::atomic::AtomicU64,
    pub batches: std::sync::atomic::AtomicU64,
    pub transient_errors: std::sync::atomic::AtomicU64,
}

fn bump(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// A permanent failure of one event.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: &'static str,
    pub message: String,
    pub component: Option<ComponentRef>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentRef {
    pub name: String,
    pub version: String,
    pub digest: String,
}

impl ComponentRef {
    fn of(p: &Projection) -> ComponentRef {
        ComponentRef {
            name: p.info().domain.clone(),
            version: p.info().version.clone(),
            digest: p.digest().to_owned(),
        }
    }
}

/// Partition (re)assignments seen by the consumer callbacks.
#[derive(Default)]
pub struct RebalanceLog {
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                let p = parts(tpl);
                tracing::info!(partitions = ?p, "partitions assigned");
                self.assigned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(p);
            }
            Rebalance::Revoke(tpl) => {
                let p = parts(tpl);
                tracing::info!(partitions = ?p, "partitions revoked");
                self.revoked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(p);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Where each owned partition stands: the next offset to apply. Once the
/// consumer delivers from there, a higher offset than `next` is a gap in the
/// log (retention, compaction, transaction markers), not a lost message.
#[derive(Debug, Clone, Copy)]
struct Position {
    next: i64,
    /// What MySQL holds for the partition, as far as this host knows.
    committed: Option<i64>,
}

/// The projection host, built from settings.
pub struct Host {
    pub settings: Settings,
    pub pool: MySqlPool,
    pub schema: Arc<Schema>,
    pub stats: Arc<Stats>,
    pub shared: Arc<Shared>,
    writer: Arc<Writer>,
    registry: Arc<watch::Sender<Arc<Registry>>>,
    runtime: Option<Arc<Runtime>>,
    consumer: StreamConsumer<RebalanceLog>,
    positions: HashMap<(String, i32), Position>,
    /// Messages received while paused for a transient failure, to be
    /// processed before anything newer.
    held: Vec<OwnedMessage>,
    /// The offsets of the last committed batch, committed to Kafka again
    /// (synchronously) on shutdown.
    last_offsets: BTreeMap<(String, i32), i64>,
}

fn client_config(map: BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in map {
        config.set(k, v);
    }
    config
}

/// Connects to MySQL with the session settings the executor relies on.
pub async fn connect_mysql(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    let options: MySqlConnectOptions = url
        .parse()
        .with_context(|| format!("invalid MySQL URL {}", redact_url(url)))?;
    // Strict mode turns truncation into an error (which dead-letters the
    // event) instead of silently storing something else; UTC everywhere.
    let options = options
        .pipes_as_concat(false)
        .timezone(Some("+00:00".to_owned()))
        .charset("utf8mb4")
        .statement_cache_capacity(64);
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', SESSION innodb_lock_wait_timeout = 10")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("failed to connect to MySQL at {}", redact_url(url)))
}

/// How events are projected.
pub enum Mode {
    /// WebAssembly components from the configured folder.
    Wasm,
    /// The same flattening compiled into the host (no sandbox).
    Native,
}

impl Host {
    /// Connects to MySQL (running migrations), loads the projections, and
    /// subscribes to the topics.
    pub async fn build(settings: Settings, mode: Mode) -> anyhow::Result<Host> {
        let pool = connect_mysql(&settings.mysql.url, settings.mysql.max_connections).await?;
        schema::migrate(&pool).await?;
        let schema = Arc::new(Schema::load(&pool).await?);
        let (registry, runtime) = match mode {
            Mode::Wasm => {
                let runtime = Arc::new(Runtime::new(settings.sandbox)?);
                (
                    Registry::load_dir(&runtime, &settings.components.dir, &schema)?,
                    Some(runtime),
                )
            }
            Mode::Native => (Registry::native(&schema)?, None),
        };
        let consumer: StreamConsumer<RebalanceLog> =
            client_config(settings.kafka.consumer_config())
                .create_with_context(RebalanceLog::default())
                .context("failed to create the Kafka consumer")?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("failed to subscribe")?;
        let dlq: FutureProducer = client_config(settings.kafka.producer_config())
            .create()
            .context("failed to create the DLQ producer")?;
        tracing::info!(
            topics = ?settings.topics,
            group = %settings.kafka.group_id,
            mysql = %redact_url(&settings.mysql.url),
            batch = settings.batch.max_events,
            "projector host ready"
        );
        let (registry, registry_rx) = watch::channel(Arc::new(registry));
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared::new(&settings, stats.clone(), registry_rx));
        let writer = Arc::new(Writer {
            pool: pool.clone(),
            schema: schema.clone(),
            group: settings.kafka.group_id.clone(),
            dlq,
            shared: shared.clone(),
            stats: stats.clone(),
        });
        Ok(Host {
            writer,
            settings,
            pool,
            schema,
            stats,
            shared,
            registry: Arc::new(registry),
            runtime,
            consumer,
            positions: HashMap::new(),
            held: Vec::new(),
            last_offsets: BTreeMap::new(),
        })
    }

    /// The hot reloader of this host's components folder (none in native mode).
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.runtime.as_ref().map(|runtime| {
            Arc::new(Reloader::new(
                runtime.clone(),
                self.schema.clone(),
                self.settings.components.dir.clone(),
                self.registry.clone(),
                self.shared.clone(),
            ))
        })
    }

    /// Starts the admin server, the lag monitor and (in WASM mode, if
    /// enabled) the components folder watcher; they stop when the returned
    /// guard drops.
    async fn start_services(&self) -> anyhow::Result<Services> {
        let reloader = self.reloader();
        let mut tasks = Vec::new();
        let (_, server) = admin::serve(
            self.settings.admin.listen,
            Admin {
                shared: self.shared.clone(),
                reloader: reloader.clone(),
            },
        )
        .await?;
        tasks.push(server);
        let monitor = Monitor::new(&self.settings, self.pool.clone(), self.shared.clone())?;
        tasks.push(tokio::spawn(monitor.run()));
        if let Some(reloader) = reloader.filter(|_| self.settings.components.watch) {
            tasks.push(tokio::spawn(async move {
                if let Err(e) = reloader.watch().await {
                    tracing::error!(error = %format!("{e:#}"), "components folder watcher stopped; use POST /projections/reload");
                }
            }));
        }
        Ok(Services(tasks))
    }

    /// The projections in force.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.borrow().clone()
    }

    /// The sandbox runtime (none in native mode).
    pub fn runtime(&self) -> Option<&Arc<Runtime>> {
        self.runtime.as_ref()
    }

    /// Consumes until `shutdown` resolves, then finishes the batch in hand and
    /// returns.
    ///
    /// Batches are pipelined: while one is written to MySQL (by the
    /// [`Writer`], in the background), the next is fetched and projected.
    /// Commits stay strictly in order: a batch is written only after the one
    /// before it committed.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let _services = self.start_services().await?;
        let mut last_check = Instant::now();
        let mut inflight: Option<Inflight> = None;
        loop {
            // `next_batch` is not cancelled by anything but shutdown (a
            // cancelled batch would drop the messages it gathered).
            let batch = tokio::select! {
                biased;
                () = &mut shutdown => break,
                batch = self.next_batch() => batch?,
            };
            let prepared = if batch.is_empty() {
                None
            } else {
                self.prepare(batch, &mut shutdown).await?
            };
            if let Some(previous) = inflight.take() {
                match self.finish(previous, &mut shutdown).await? {
                    Finished::Committed => {}
                    Finished::Shutdown => return self.stopped(),
                    Finished::Moved(mut keys) => {
                        // The batch after it is dropped too: it continues
                        // from positions that are no longer valid.
                        if let Some(p) = &prepared {
                            keys.extend(p.offsets.keys().cloned());
                        }
                        self.restart_from_stored(keys).await;
                        continue;
                    }
                }
            }
            // Nothing in flight now: follow positions moved by a replay.
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                let moved = self.follow_moved_positions().await;
                if let Some(p) = &prepared
                    && p.offsets.keys().any(|k| moved.contains(k))
                {
                    self.restart_from_stored(p.offsets.keys().cloned().collect())
                        .await;
                    continue;
                }
            }
            if let Some(p) = prepared {
                inflight = Some(self.spawn_write(p));
            }
        }
        if let Some(last) = inflight.take() {
            // Finish the batch in hand; on a second signal or a failure that
            // outlasts the shutdown it is left for the next start.
            let _ = self.finish(last, &mut shutdown).await?;
        }
        self.stopped()
    }

    fn stopped(&self) -> anyhow::Result<()> {
        self.commit_kafka(&self.last_offsets, CommitMode::Sync);
        tracing::info!("projector host stopped");
        Ok(())
    }

    /// Up to `max_events` messages: waits up to a second for the first, then
    /// at most `max_wait` for the rest.
    async fn next_batch(&mut self) -> anyhow::Result<Vec<OwnedMessage>> {
        let max = self.settings.batch.max_events;
        if !self.held.is_empty() {
            let rest = self.held.split_off(self.held.len().min(max));
            return Ok(std::mem::replace(&mut self.held, rest));
        }
        let mut batch = Vec::with_capacity(max.min(4096));
        let Ok(first) = tokio::time::timeout(Duration::from_secs(1), self.consumer.recv()).await
        else {
            return Ok(batch);
        };
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(batch);
            }
        }
        let deadline = tokio::time::Instant::now() + self.settings.batch.max_wait;
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
        Ok(batch)
    }

    /// Forgets the positions of partitions revoked or (re)assigned since the
    /// last call.
    fn drain_rebalances(&mut self) {
        let ctx = self.consumer.context();
        for p in std::mem::take(&mut *ctx.revoked.lock().unwrap_or_else(|e| e.into_inner())) {
            self.positions.remove(&p);
        }
        for p in std::mem::take(&mut *ctx.assigned.lock().unwrap_or_else(|e| e.into_inner())) {
            self.positions.remove(&p);
        }
    }

    /// Seeks the given partitions to their stored positions (the beginning
    /// where none is stored).
    async fn resync(&mut self, keys: &[(String, i32)]) -> anyhow::Result<()> {
        let stored = executor::stored_offsets(&self.pool, &self.settings.kafka.group_id).await?;
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
        Ok(())
    }

    /// Between batches: follows stored positions that moved under this host
    /// (a replay reset them) on partitions that are otherwise quiet.
    async fn follow_moved_positions(&mut self) -> Vec<(String, i32)> {
        self.drain_rebalances();
        if self.positions.is_empty() {
            return Vec::new();
        }
        let Ok(stored) = executor::stored_offsets(&self.pool, &self.settings.kafka.group_id).await
        else {
            return Vec::new(); // MySQL is down: the batches will say so
        };
        let moved: Vec<(String, i32)> = self
            .positions
            .iter()
            .filter(|(key, pos)| {
                pos.committed.is_some() && stored.get(*key).copied() != pos.committed
            })
            .map(|(key, _)| key.clone())
            .collect();
        if !moved.is_empty()
            && let Err(e) = self.resync(&moved).await
        {
            tracing::warn!(error = %format!("{e:#}"), "could not follow moved positions");
        }
        moved
    }

    /// Drops what is below each partition's stored position, seeking where
    /// the consumer is not where MySQL says it should be. Returns the kept
    /// messages and, per partition, the stored position they start from.
    async fn align_positions(
        &mut self,
        batch: Vec<OwnedMessage>,
    ) -> anyhow::Result<Vec<OwnedMessage>> {
        self.drain_rebalances();
        let mut firsts: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch {
            firsts
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(m.offset());
        }
        // Partitions sought now: their messages in this batch came from
        // before the seek and are dropped; the consumer delivers again from
        // the stored position.
        let mut sought = std::collections::HashSet::new();
        if firsts.keys().any(|k| !self.positions.contains_key(k)) {
            let stored =
                executor::stored_offsets(&self.pool, &self.settings.kafka.group_id).await?;
            for (key, first) in &firsts {
                if self.positions.contains_key(key) {
                    continue;
                }
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
                    stored_next => {
                        self.positions.insert(
                            key.clone(),
                            Position {
                                next: *first,
                                committed: stored_next.copied(),
                            },
                        );
                    }
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
            pos.next = m.offset() + 1;
            kept.push(m);
        }
        Ok(kept)
    }

    /// Aligns a batch and projects it. Transient failures (MySQL down while
    /// reading positions) are waited out; `None` if nothing is left to do or
    /// shutdown was asked meanwhile.
    async fn prepare(
        &mut self,
        batch: Vec<OwnedMessage>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> anyhow::Result<Option<Arc<Prepared>>> {
        let mut retry = Retry::default();
        let messages = loop {
            match self.align_positions(batch.clone()).await {
                Ok(m) => break m,
                Err(e) => {
                    if !self.wait_out(&mut retry, e, shutdown).await {
                        return Ok(None);
                    }
                }
            }
        };
        self.recovered(&mut retry);
        if messages.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &messages {
            let e = offsets
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        // Guest calls are CPU work and may call WASI host functions that block
        // on an async runtime of their own: run them on a blocking thread.
        let registry = self.registry();
        let schema = self.schema.clone();
        let shared = self.shared.clone();
        let limit = self.settings.batch.max_event_bytes;
        let (messages, applied, failed) = tokio::task::spawn_blocking(move || {
            let (applied, failed) =
                project_all_observed(&registry, &schema, &messages, limit, Some(&shared));
            (messages, applied, failed)
        })
        .await
        .context("projection thread failed")?;
        Ok(Some(Arc::new(Prepared {
            messages,
            applied,
            failed,
            offsets,
            started,
            projected_us: started.elapsed().as_micros() as u64,
            dead_lettered: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    /// The stored position each partition of `p` should have before it
    /// commits: where this host left it.
    fn expected(&self, p: &Prepared) -> Expected {
        p.offsets
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    self.positions.get(k).and_then(|pos| pos.committed),
                )
            })
            .collect()
    }

    /// Starts writing a prepared batch in the background.
    fn spawn_write(&self, p: Arc<Prepared>) -> Inflight {
        let expected = self.expected(&p);
        let writer = self.writer.clone();
        let task = tokio::spawn({
            let p = p.clone();
            async move { writer.write(&p, &expected).await }
        });
        Inflight { prepared: p, task }
    }

    /// Waits for a batch being written, retrying it while failures are
    /// transient.
    async fn finish(
        &mut self,
        inflight: Inflight,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> anyhow::Result<Finished> {
        let Inflight { prepared, task } = inflight;
        let mut result = task.await.context("batch writer failed")?;
        let mut retry = Retry::default();
        loop {
            match result {
                Ok(()) => {
                    for (key, next) in &prepared.offsets {
                        if let Some(pos) = self.positions.get_mut(key) {
                            pos.committed = Some(*next);
                        }
                        self.last_offsets.insert(key.clone(), *next);
                    }
                    self.commit_kafka(&prepared.offsets, CommitMode::Async);
                    self.recovered(&mut retry);
                    return Ok(Finished::Committed);
                }
                Err(Attempt::Moved(keys)) => {
                    self.recovered(&mut retry);
                    let mut all: Vec<(String, i32)> = prepared.offsets.keys().cloned().collect();
                    all.extend(keys);
                    return Ok(Finished::Moved(all));
                }
                Err(Attempt::Transient(e)) => {
                    if !self.wait_out(&mut retry, e, shutdown).await {
                        return Ok(Finished::Shutdown);
                    }
                    let expected = self.expected(&prepared);
                    result = self.writer.write(&prepared, &expected).await;
                }
            }
        }
    }

    /// Goes back to the stored positions of these partitions; the consumer
    /// delivers again from there (nothing of the dropped batches was written).
    async fn restart_from_stored(&mut self, mut keys: Vec<(String, i32)>) {
        keys.sort();
        keys.dedup();
        tracing::info!(partitions = ?keys, "stored positions moved; re-reading them");
        self.held.clear();
        if let Err(e) = self.resync(&keys).await {
            tracing::warn!(error = %format!("{e:#}"), "could not re-read the stored positions");
            for k in &keys {
                self.positions.remove(k);
            }
        }
    }

    /// Records a transient failure and waits out the backoff with the
    /// assigned partitions paused, still polling so the group keeps this
    /// member. False if shutdown was asked meanwhile.
    async fn wait_out(
        &mut self,
        retry: &mut Retry,
        e: anyhow::Error,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        bump(&self.stats.transient_errors, 1);
        self.shared.metrics.transient_errors.inc();
        let backoff = retry.next();
        let reason = format!("{e:#}");
        tracing::warn!(error = %reason, retry_in_ms = backoff.as_millis() as u64, "batch not committed, retrying");
        self.shared.record_error("transient", reason.clone());
        self.shared.set_retrying(Some(reason));
        let until = tokio::time::Instant::now() + backoff;
        loop {
            // Partitions assigned meanwhile are paused too.
            self.pause(true);
            tokio::select! {
                biased;
                () = &mut *shutdown => {
                    tracing::info!("shutdown while retrying: the batch is left for the next start");
                    return false;
                }
                polled = tokio::time::timeout_at(until, self.consumer.recv()) => match polled {
                    Err(_) => return true,
                    Ok(Ok(m)) => self.held.push(m.detach()),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "Kafka consumer error while paused");
                        tokio::time::sleep(Duration::from_millis(100).min(until - tokio::time::Instant::now())).await;
                    }
                }
            }
        }
    }

    /// After a success that followed transient failures: resume fetching and
    /// clear the degraded state.
    fn recovered(&mut self, retry: &mut Retry) {
        if retry.attempts > 0 {
            tracing::info!(
                attempts = retry.attempts,
                "recovered from transient failures; resuming"
            );
            self.pause(false);
            self.shared.set_retrying(None);
            *retry = Retry::default();
        }
    }

    /// Pauses (or resumes) fetching of every assigned partition.
    fn pause(&self, pause: bool) {
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

    fn commit_kafka(&self, offsets: &BTreeMap<(String, i32), i64>, mode: CommitMode) {
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
}

/// Backoff of a batch retried after transient failures.
#[derive(Default)]
struct Retry {
    attempts: u32,
}

impl Retry {
    fn next(&mut self) -> Duration {
        self.attempts += 1;
        (Duration::from_millis(100) * 2u32.saturating_pow(self.attempts - 1).min(64))
            .min(Duration::from_secs(5))
    }
}

/// A batch aligned and projected, ready to write.
pub struct Prepared {
    messages: Vec<OwnedMessage>,
    applied: Vec<Projected>,
    failed: Vec<(usize, Failure)>,
    offsets: BTreeMap<(String, i32), i64>,
    started: Instant,
    projected_us: u64,
    /// Its dead letters were acknowledged (a retry does not send them again).
    dead_lettered: std::sync::atomic::AtomicBool,
}

struct Inflight {
    prepared: Arc<Prepared>,
    task: tokio::task::JoinHandle<Result<(), Attempt>>,
}

enum Finished {
    Committed,
    /// Nothing written; these partitions must go back to their stored positions.
    Moved(Vec<(String, i32)>),
    Shutdown,
}

/// Writes prepared batches: dead letters, then one MySQL transaction. Runs
/// beside the consuming loop, so the next batch is fetched and projected
/// while this one commits.
pub struct Writer {
    pool: MySqlPool,
    schema: Arc<Schema>,
    group: String,
    dlq: FutureProducer,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Dead-letters the permanent failures and commits the rest with the
    /// offsets. Any error is transient or a moved position.
    async fn write(&self, p: &Prepared, expected: &Expected) -> Result<(), Attempt> {
        use std::sync::atomic::Ordering;
        // Dead letters are acknowledged before the offsets move past them.
        if !p.dead_lettered.load(Ordering::Acquire) {
            self.dead_letter(&p.messages, &p.failed).await?;
            p.dead_lettered.store(true, Ordering::Release);
        }
        let mut dead_lettered = p.failed.len();
        let commit_started = Instant::now();
        let outcome = match self.commit(&p.applied, &p.offsets, expected).await {
            Ok(o) => o,
            Err(ExecError::Data(reason)) => {
                tracing::warn!(%reason, events = p.applied.len(), "the database refused a batch; retrying it event by event");
                let (outcome, refused) = self
                    .commit_isolated(&p.applied, &p.offsets, expected, &p.messages)
                    .await?;
                dead_lettered += refused;
                outcome
            }
            Err(ExecError::Moved(keys)) => return Err(Attempt::Moved(keys)),
            Err(ExecError::Transient(e)) => {
                return Err(anyhow::Error::new(e)
                    .context("MySQL transaction failed")
                    .into());
            }
        };
        bump(&self.stats.applied, outcome.applied as u64);
        bump(&self.stats.duplicates, outcome.duplicates as u64);
        bump(&self.stats.batches, 1);
        self.observe_batch(&p.applied, &outcome, p.started);
        tracing::debug!(
            messages = p.messages.len(),
            applied = outcome.applied,
            duplicates = outcome.duplicates,
            dead_lettered,
            project_us = p.projected_us,
            commit_us = commit_started.elapsed().as_micros() as u64,
            elapsed_us = p.started.elapsed().as_micros() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// Metrics of a committed batch.
    fn observe_batch(&self, applied: &[Projected], outcome: &BatchOutcome, started: Instant) {
        let metrics = &self.shared.metrics;
        let skipped: std::collections::HashSet<&str> =
            outcome.skipped.iter().map(String::as_str).collect();
        let now = Utc::now().naive_utc();
        let mut by_type: HashMap<(&str, &'static str), u64> = HashMap::new();
        let mut by_domain: HashMap<String, u64> = HashMap::new();
        for a in applied {
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
                if let Some(c) = &a.component_ref {
                    *by_domain.entry(c.name.clone()).or_insert(0) += 1;
                }
            }
        }
        for ((event_type, outcome), n) in by_type {
            metrics
                .events
                .with_label_values(&[event_type, outcome])
                .inc_by(n);
        }
        self.shared.count(&by_domain, 0);
        metrics.batch_events.observe(applied.len() as f64);
        metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    async fn commit(
        &self,
        applied: &[Projected],
        offsets: &BTreeMap<(String, i32), i64>,
        expected: &BTreeMap<(String, i32), Option<i64>>,
    ) -> Result<BatchOutcome, ExecError> {
        let events: Vec<&Applied> = applied.iter().map(|a| &a.inner).collect();
        let group = &self.group;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        executor::fence(&mut tx, group, expected).await?;
        let outcome = executor::apply_batch(&mut tx, &self.schema, group, &events, offsets).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Applies the events one by one under savepoints; the ones the database
    /// refuses are dead-lettered, the others committed with the offsets.
    async fn commit_isolated(
        &self,
        applied: &[Projected],
        offsets: &BTreeMap<(String, i32), i64>,
        expected: &BTreeMap<(String, i32), Option<i64>>,
        messages: &[OwnedMessage],
    ) -> Result<(BatchOutcome, usize), Attempt> {
        let group = &self.group;
        let transient = |e: sqlx::Error| {
            Attempt::from(anyhow::Error::new(e).context("MySQL failed during isolation"))
        };
        let mut conn = self.pool.acquire().await.map_err(transient)?;
        let mut tx = conn.begin().await.map_err(transient)?;
        match executor::fence(&mut tx, group, expected).await {
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
            match executor::apply_batch(&mut tx, &self.schema, group, &[&a.inner], &BTreeMap::new())
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
                    refused.push((i, reason));
                }
                Err(ExecError::Transient(e)) => return Err(transient(e)),
                Err(ExecError::Moved(keys)) => return Err(Attempt::Moved(keys)),
            }
        }
        let failures: Vec<(usize, Failure)> = refused
            .iter()
            .map(|(i, reason)| {
                (
                    applied[*i].source_index,
                    Failure {
                        class: "rejected_by_database",
                        message: reason.clone(),
                        component: applied[*i].component_ref.clone(),
                    },
                )
            })
            .collect();
        // Dead letters are acknowledged before the offsets move past them.
        self.dead_letter(messages, &failures).await?;
        executor::apply_batch(&mut tx, &self.schema, group, &[], offsets)
            .await
            .map_err(|e| anyhow::anyhow!("recording offsets failed: {e}"))?;
        tx.commit().await.map_err(transient)?;
        Ok((outcome, refused.len()))
    }

    /// Publishes dead letters and waits for the broker's acknowledgement.
    async fn dead_letter(
        &self,
        messages: &[OwnedMessage],
        failed: &[(usize, Failure)],
    ) -> anyhow::Result<()> {
        if failed.is_empty() {
            return Ok(());
        }
        let mut pending = Vec::new();
        for (index, failure) in failed {
            let m = &messages[*index];
            let letter = dead_letter_value(m, failure);
            let dlq_topic = format!("dlq.{}", m.topic());
            tracing::warn!(
                topic = m.topic(), partition = m.partition(), offset = m.offset(),
                class = failure.class, reason = %failure.message, "dead-lettering event"
            );
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "x-error-class",
                    value: Some(failure.class),
                })
                .insert(Header {
                    key: "x-source-topic",
                    value: Some(m.topic()),
                })
                .insert(Header {
                    key: "x-source-partition",
                    value: Some(&m.partition().to_string()),
                })
                .insert(Header {
                    key: "x-source-offset",
                    value: Some(&m.offset().to_string()),
                });
            let key = m.key().map(<[u8]>::to_vec);
            let payload = serde_json::to_vec(&letter).context("dead letter serialises")?;
            pending.push((dlq_topic, key, payload, headers));
        }
        let mut futures = Vec::new();
        for (topic, key, payload, headers) in &pending {
            let mut record = FutureRecord::to(topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(k) = key {
                record = record.key(k);
            }
            futures.push(self.dlq.send(record, Duration::from_secs(30)));
        }
        for f in futures {
            f.await
                .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic unavailable: {e}"))?;
        }
        bump(&self.stats.dead_lettered, failed.len() as u64);
        for (index, failure) in failed {
            let m = &messages[*index];
            self.shared
                .metrics
                .dead_letters
                .with_label_values(&[m.topic(), failure.class])
                .inc();
            self.shared.record_error(
                failure.class,
                format!(
                    "{}[{}]@{}: {}",
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    failure.message
                ),
            );
        }
        self.shared.count(&HashMap::new(), failed.len() as u64);
        Ok(())
    }
}

/// Per partition of a batch, the stored position it starts from (`None`:
/// no row yet), checked by `executor::fence`.
type Expected = BTreeMap<(String, i32), Option<i64>>;

/// Why a batch attempt did not commit.
enum Attempt {
    /// Database or broker trouble: retry the same batch after a backoff.
    Transient(anyhow::Error),
    /// The stored positions of these partitions moved: drop the batch and
    /// re-read them.
    Moved(Vec<(String, i32)>),
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Self {
        Attempt::Transient(e)
    }
}

/// Background tasks of a running host, aborted on drop.
struct Services(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Services {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// An event projected and validated, with where it came from.
#[derive(Debug, Clone)]
pub struct Projected {
    pub inner: Applied,
    pub source_index: usize,
    pub component_ref: Option<ComponentRef>,
}

/// Projects each message through its domain's projection (one instance per
/// domain for the whole batch) and validates the operations.
pub fn project_all(
    registry: &Registry,
    schema: &Schema,
    messages: &[OwnedMessage],
) -> (Vec<Projected>, Vec<(usize, Failure)>) {
    project_all_observed(registry, schema, messages, usize::MAX, None)
}

/// [`project_all`] refusing messages over `max_bytes` and timing each guest
/// call into the metrics of `shared`.
pub fn project_all_observed(
    registry: &Registry,
    schema: &Schema,
    messages: &[OwnedMessage],
    max_bytes: usize,
    shared: Option<&Shared>,
) -> (Vec<Projected>, Vec<(usize, Failure)>) {
    let mut sessions: HashMap<String, Session<'_>> = HashMap::new();
    let mut applied = Vec::with_capacity(messages.len());
    let mut failed = Vec::new();
    for (index, m) in messages.iter().enumerate() {
        let size = m.payload().map_or(0, <[u8]>::len);
        if size > max_bytes {
            failed.push((
                index,
                Failure {
                    class: "too_large",
                    message: format!("the message has {size} bytes, over the limit of {max_bytes}"),
                    component: None,
                },
            ));
            continue;
        }
        match project_one(registry, schema, &mut sessions, m, shared) {
            Ok(inner) => applied.push(Projected {
                component_ref: registry.route(&inner.event_type).map(ComponentRef::of),
                inner,
                source_index: index,
            }),
            Err(failure) => failed.push((index, failure)),
        }
    }
    (applied, failed)
}

fn project_one<'r>(
    registry: &'r Registry,
    schema: &Schema,
    sessions: &mut HashMap<String, Session<'r>>,
    m: &OwnedMessage,
    shared: Option<&Shared>,
) -> Result<Applied, Failure> {
    let fail = |class: &'static str, message: String, component: Option<ComponentRef>| Failure {
        class,
        message,
        component,
    };
    let Some(payload) = m.payload() else {
        return Err(fail(
            "invalid_envelope",
            "message has no payload".into(),
            None,
        ));
    };
    let envelope: events::RawEnvelope = events::Envelope::from_slice(payload)
        .map_err(|e| fail("invalid_envelope", e.to_string(), None))?;
    let projection = registry.route(&envelope.event_type).ok_or_else(|| {
        fail(
            "unknown_event_type",
            format!("no projection handles event type {:?}", envelope.event_type),
            None,
        )
    })?;
    let component = Some(ComponentRef::of(projection));
    let event_id = envelope.event_id.to_string();
    let timestamp = envelope.timestamp_string();
    let env = Envelope {
        event_type: &envelope.event_type,
        event_id: &event_id,
        timestamp: &timestamp,
        entity_id: &envelope.entity_id,
        data: envelope.data.get(),
    };
    let started = Instant::now();
    let ops = match projection {
        Projection::Wasm(c) => {
            let session = sessions
                .entry(c.info.domain.clone())
                .or_insert_with(|| c.session());
            session.project(&env)
        }
        Projection::Native(n) => (n.domain.project)(&env).map_err(GuestFailure::Rejected),
    };
    let info = projection.info();
    if let Some(shared) = shared {
        shared
            .metrics
            .guest_call_seconds
            .with_label_values(&[info.domain.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    let ops = ops.map_err(|e| fail(e.class(), e.to_string(), component.clone()))?;
    let ops = ops
        .iter()
        .map(|op| executor::validate(op, info, schema))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("disallowed_op", e, component.clone()))?;
    Ok(Applied {
        event_id,
        event_type: envelope.event_type.clone(),
        timestamp: envelope.timestamp.naive_utc(),
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        component: projection.label(),
        ops,
    })
}

/// The JSON value of a dead letter.
fn dead_letter_value(m: &OwnedMessage, failure: &Failure) -> serde_json::Value {
    let payload = m.payload().unwrap_or_default();
    let truncated = payload.len() > DLQ_MAX_ORIGINAL;
    let kept = &payload[..payload.len().min(DLQ_MAX_ORIGINAL)];
    let (original, encoding) = match std::str::from_utf8(kept) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (hex::encode(kept), "hex"),
    };
    serde_json::json!({
        "original": original,
        "original_encoding": encoding,
        "original_truncated": truncated,
        "original_size": payload.len(),
        "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "error_class": failure.class,
        "error": failure.message,
        "component": failure.component,
        "failed_at": events::format_timestamp(&Utc::now()),
        "retry_count": retry_count(m),
    })
}

/// How many times the message was redriven from a dead-letter topic
/// (`x-retry-count`, set by `projector dlq redrive`).
fn retry_count(m: &OwnedMessage) -> u32 {
    use rdkafka::message::Headers as _;
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == "x-retry-count")
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
