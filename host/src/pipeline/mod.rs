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
//! A partition with no stored position starts by `start_without_position`
//! (earliest by default), never at Kafka's committed offset, which may
//! belong to another database under the same group.
//!
//! What would break it: writing rows outside that transaction, committing
//! Kafka offsets before MySQL, or deleting `processed_events` rows of events
//! still in the topics while the stored offsets point below them. That is
//! why pruning (`projector prune`, or the host every `prune.every`) deletes
//! only rows of offsets below their partition's low watermark: Kafka can
//! never deliver those again, a replay
//! starts at or above it, and a redriven dead letter never had a row. A gap
//! (offsets retention deleted before they were applied) is reported, not
//! hidden: those events are lost to this database, not applied twice.
//!
//! **Lanes.** Each topic has its own consumer (a member of the group) and
//! its own loop, so a replay or a backlog in one domain does not queue in
//! front of the others. Everything below holds per lane; a domain's tables
//! are written by its lane only.
//!
//! **Per-partition order** is kept: a batch holds messages in partition order,
//! and the sink's phases are cut wherever they would apply two events of one
//! entity out of that order, so a batch has the effect of applying its
//! events one by one (every write is guarded by the row's event timestamp;
//! on equal timestamps the later event wins, and an upsert older than its
//! row's tombstone is dropped).
//!
//! **Bad input never stops a partition.** An event that cannot be decoded,
//! routed, projected or validated, or whose data the database refuses, goes to
//! the dead-letter topic `dlq.<topic>` (acknowledged before the batch commits)
//! and its offset is committed with the batch. A batch that the database
//! refuses is retried event by event under savepoints, so only the bad event
//! is dead-lettered. Transient failures (a closed list: database or broker
//! unavailable, deadlock, lock wait, timeouts) never dead-letter anything; an
//! unclassified error is retried 4 times, then the events it hits are
//! dead-lettered as `unclassified`. The batch is retried with backoff
//! while the assigned partitions are paused and the consumer keeps polling
//! (so the group does not evict it), and readiness reports the failure.
//!
//! **Replays and moved positions.** Each batch's transaction first locks the
//! stored positions of its partitions and checks they are where this host
//! left them (the sink's `fence`). `projector replay` resets a domain's
//! positions to 0 in MySQL; the host sees it there (at the next batch, or
//! within a second when the partition is quiet), seeks back and re-projects
//! the topic through the current component.
//!
//! **Shutdown** is one [`CancellationToken`]: the loop stops taking batches,
//! finishes the one in hand (unless a transient failure outlasts the
//! shutdown: then it is left for the next start, which is safe by the
//! guarantee above) and commits the last positions to Kafka.
//!
//! The loop (this file) uses `consume`, `sandbox`, `sink`, `dlq` and `ops`;
//! none of those reaches back into it. `project` routes and projects a batch,
//! `writer` commits one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::consume::{self, PartitionKey, Source};
use crate::dlq::Publisher;
use crate::ops::{Admin, Monitor, Shared, admin};
use crate::sandbox::{Admission, Registry, Reloader, Runtime, SchemaRefresh};
use crate::settings::{Settings, redact_url};
use crate::sink::{self, Schema, SchemaCell};

mod project;
mod writer;

pub use project::{Projected, component_ref, project_all, project_all_observed};
pub use writer::Writer;

use writer::{Attempt, Prepared};

/// How events are projected.
pub enum Mode {
    /// WebAssembly components from the configured folder.
    Wasm,
    /// The same flattening compiled into the host (no sandbox).
    Native,
}

/// The projection host, built from settings.
pub struct Host {
    pub settings: Settings,
    pub pool: sqlx::MySqlPool,
    pub schema: Arc<SchemaCell>,
    pub shared: Arc<Shared>,
    writer: Arc<Writer>,
    registry: Arc<watch::Sender<Arc<Registry>>>,
    runtime: Option<Arc<Runtime>>,
    /// One consumer per topic: each topic is a lane of its own.
    sources: Vec<(String, Source)>,
}

/// One topic's loop: its own consumer, batches and retries, so a backlog,
/// a replay or a transient failure in one domain does not hold the others
/// (they share the database pool, the projections and the host's state).
struct Lane {
    topic: String,
    settings: Settings,
    pool: sqlx::MySqlPool,
    schema: Arc<SchemaCell>,
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    registry: Arc<watch::Sender<Arc<Registry>>>,
    source: Source,
}

/// What a projection must satisfy to be loaded: its declared tables within
/// the domain's grant (the operator's settings), and every declared table
/// and column present in the schema in force.
pub fn admission(schema: &Arc<SchemaCell>, grants: &crate::settings::Grants) -> Admission {
    let (schema, grants) = (schema.clone(), grants.clone());
    Arc::new(move |info| {
        grants.check(info)?;
        schema.get().check_declaration(info)
    })
}

/// Makes the database hold the tables a projection declares (WIT 1.1.0):
/// its grant first, so nothing outside it is ever created, then the
/// additive changes under the migration lock (see `sink::reconcile`).
pub async fn declare_tables(
    pool: &sqlx::MySqlPool,
    grants: &crate::settings::Grants,
    info: &flatten::Info,
) -> Result<(), String> {
    grants.check(info)?;
    sink::reconcile(pool, &info.tables)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The reconciliation a reloader runs before admitting a component: its
/// declared tables, then the live schema read again into `cell`.
pub fn reconciler(
    pool: &sqlx::MySqlPool,
    cell: &Arc<SchemaCell>,
    grants: &crate::settings::Grants,
) -> crate::sandbox::reload::Reconcile {
    let (pool, cell, grants) = (pool.clone(), cell.clone(), grants.clone());
    Arc::new(move |info| {
        let (pool, cell, grants) = (pool.clone(), cell.clone(), grants.clone());
        Box::pin(async move {
            declare_tables(&pool, &grants, &info).await?;
            let schema = Schema::load(&pool).await.map_err(|e| format!("{e:#}"))?;
            cell.set(schema);
            Ok(())
        })
    })
}

impl Host {
    /// Connects to MySQL (running migrations), loads the projections,
    /// reconciles the tables they declare, and subscribes to the topics.
    pub async fn build(settings: Settings, mode: Mode) -> anyhow::Result<Host> {
        let pool = sink::connect_mysql(&settings.mysql.url, settings.mysql.max_connections).await?;
        sink::migrate(&pool).await?;
        let (projections, runtime) = match mode {
            Mode::Wasm => {
                let runtime = Arc::new(Runtime::from_settings(&settings)?);
                (
                    Registry::load_files(&runtime, &settings.components.dir)?,
                    Some(runtime),
                )
            }
            Mode::Native => (Registry::native_projections(), None),
        };
        for p in &projections {
            declare_tables(&pool, &settings.grants, p.info())
                .await
                .map_err(|e| anyhow::anyhow!("projection {} refused: {e}", p.label()))?;
        }
        let schema = Arc::new(SchemaCell::new(Schema::load(&pool).await?));
        let admit = admission(&schema, &settings.grants);
        let registry = Registry::new(projections, &*admit)?;
        let sources = settings
            .topics
            .iter()
            .map(|t| Ok((t.clone(), Source::new(&settings, t)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dlq = Publisher::new(
            consume::producer(&settings)?,
            consume::admin(&settings).ok(),
        );
        tracing::info!(
            topics = ?settings.topics,
            group = %settings.kafka.group_id,
            mysql = %redact_url(&settings.mysql.url),
            batch = settings.batch.max_events,
            "projector host ready"
        );
        let (registry, registry_rx) = watch::channel(Arc::new(registry));
        let shared = Arc::new(Shared::new(&settings, registry_rx));
        let writer = Arc::new(Writer {
            pool: pool.clone(),
            schema: schema.clone(),
            group: settings.kafka.group_id.clone(),
            dlq,
            shared: shared.clone(),
            statement_timeout: settings.mysql.statement_timeout,
        });
        Ok(Host {
            writer,
            settings,
            pool,
            schema,
            shared,
            registry: Arc::new(registry),
            runtime,
            sources,
        })
    }

    /// The hot reloader of this host's components folder (none in native mode).
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.runtime.as_ref().map(|runtime| {
            let admission = admission(&self.schema, &self.settings.grants);
            // Before each reload, the schema is read again: a migration
            // applied while the host runs counts for the next reload.
            let (pool, cell) = (self.pool.clone(), self.schema.clone());
            let refresh: SchemaRefresh = Arc::new(move || {
                let (pool, cell) = (pool.clone(), cell.clone());
                Box::pin(async move {
                    let schema = Schema::load(&pool).await.map_err(|e| format!("{e:#}"))?;
                    cell.set(schema);
                    Ok(())
                })
            });
            let shared = self.shared.clone();
            Arc::new(
                Reloader::new(
                    runtime.clone(),
                    admission,
                    self.settings.components.dir.clone(),
                    self.registry.clone(),
                    Arc::new(move |event| shared.reloaded(event)),
                )
                .refreshing(refresh)
                .reconciling(reconciler(
                    &self.pool,
                    &self.schema,
                    &self.settings.grants,
                )),
            )
        })
    }

    /// Starts the admin server, the lag monitor and (in WASM mode, if
    /// enabled) the components folder watcher; they stop when the returned
    /// guard drops.
    async fn start_services(&self) -> anyhow::Result<Services> {
        let reloader = self.reloader();
        let mut tasks = Vec::new();
        let admin = Admin {
            shared: self.shared.clone(),
            reloader: reloader.clone(),
            token: self.settings.admin.token()?.as_deref().map(Admin::digest),
            settings: Some(Arc::new(self.settings.clone())),
        };
        if let Some(addr) = self.settings.admin.metrics_listen {
            tasks.push(admin::serve_read_only(addr, admin.clone()).await?.1);
        }
        let (_, server) = admin::serve(self.settings.admin.listen, admin).await?;
        tasks.push(server);
        let monitor = Monitor::new(&self.settings, self.pool.clone(), self.shared.clone())?;
        tasks.push(tokio::spawn(monitor.run()));
        tasks.push(tokio::spawn(crate::ops::prune::every(
            self.pool.clone(),
            self.settings.clone(),
        )));
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

    /// Stops every lane's delivery at `bound` (see [`consume::Bound`]).
    pub fn bounded(&mut self, bound: &consume::Bound) {
        for (_, source) in &mut self.sources {
            source.bounded(bound.clone());
        }
    }

    /// The sandbox runtime (none in native mode).
    pub fn runtime(&self) -> Option<&Arc<Runtime>> {
        self.runtime.as_ref()
    }

    /// Consumes until `shutdown` is cancelled, then finishes the batches in
    /// hand and returns. Each topic runs in a lane of its own; a lane that
    /// fails stops the others and its error is returned.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let _services = self.start_services().await?;
        let stop = shutdown.child_token();
        let mut lanes = tokio::task::JoinSet::new();
        for (topic, source) in std::mem::take(&mut self.sources) {
            let lane = Lane {
                topic,
                settings: self.settings.clone(),
                pool: self.pool.clone(),
                schema: self.schema.clone(),
                shared: self.shared.clone(),
                writer: self.writer.clone(),
                registry: self.registry.clone(),
                source,
            };
            let stop = stop.clone();
            lanes.spawn(async move {
                let topic = lane.topic.clone();
                let result = lane.run(stop.clone()).await;
                if result.is_err() {
                    stop.cancel();
                }
                result.with_context(|| format!("the lane of {topic} failed"))
            });
        }
        let mut first_error = None;
        while let Some(done) = lanes.join_next().await {
            let result = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = result
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        tracing::info!("projector host stopped");
        first_error.map_or(Ok(()), Err)
    }
}

impl Lane {
    /// The projections in force.
    fn registry(&self) -> Arc<Registry> {
        self.registry.borrow().clone()
    }

    /// Batches are pipelined: while one is written to MySQL (by the
    /// [`Writer`], in the background), the next is fetched and projected.
    /// Commits stay strictly in order: a batch is written only after the one
    /// before it committed.
    async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut last_check = Instant::now();
        let mut inflight: Option<Inflight> = None;
        loop {
            // Assigned partitions nothing was delivered from yet start where
            // MySQL (or the start policy) says, not where Kafka's committed
            // offset put them. Before fetching: a batch must not hold
            // messages from before such a seek.
            let unpositioned = self.source.unpositioned();
            if !unpositioned.is_empty() {
                let stored = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    stored = self.stored() => stored,
                };
                if let Ok(stored) = stored {
                    self.source.position(&unpositioned, &stored);
                }
            }
            // `next_batch` is not cancelled by anything but shutdown (a
            // cancelled batch would drop the messages it gathered).
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                batch = self.source.next_batch() => batch,
            };
            let prepared = if batch.is_empty() {
                None
            } else {
                self.prepare(batch, &shutdown).await?
            };
            if let Some(previous) = inflight.take() {
                match self.finish(previous, &shutdown).await? {
                    Finished::Committed => {}
                    Finished::Shutdown => break,
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
            // Finish the batch in hand; if a transient failure outlasts the
            // shutdown it is left for the next start.
            let _ = self.finish(last, &shutdown).await?;
        }
        self.source.commit_last();
        tracing::debug!(topic = %self.topic, "lane stopped");
        Ok(())
    }

    /// Between batches: follows stored positions that moved under this host
    /// (a replay reset them) on partitions that are otherwise quiet.
    async fn follow_moved_positions(&mut self) -> Vec<PartitionKey> {
        if !self.source.has_positions() {
            return Vec::new();
        }
        let Ok(stored) = self.stored().await else {
            return Vec::new(); // MySQL is down: the batches will say so
        };
        let moved = self.source.moved(&stored);
        self.source.seek_to_stored(&moved, &stored);
        moved
    }

    /// Goes back to the stored positions of these partitions; the consumer
    /// delivers again from there (nothing of the dropped batches was written).
    async fn restart_from_stored(&mut self, mut keys: Vec<PartitionKey>) {
        keys.sort();
        keys.dedup();
        tracing::info!(partitions = ?keys, "stored positions moved; re-reading them");
        match self.stored().await {
            Ok(stored) => self.source.seek_to_stored(&keys, &stored),
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read the stored positions");
                self.source.forget(&keys);
            }
        }
    }

    /// Aligns a batch with the stored positions and projects it. Transient
    /// failures (MySQL down while reading positions) are waited out; `None`
    /// if nothing is left to do or shutdown was asked meanwhile.
    async fn prepare(
        &mut self,
        batch: Vec<rdkafka::message::OwnedMessage>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Arc<Prepared>>> {
        let mut retry = Retry::default();
        let messages = loop {
            // Nothing of the batch is written yet: shutdown may drop it.
            let stored = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                stored = self.stored_if_needed(&batch) => stored,
            };
            let aligned = match stored {
                Ok(stored) => self.source.align(batch.clone(), stored.as_ref()),
                Err(e) => Err(e),
            };
            for gap in self.source.take_gaps() {
                self.shared
                    .log_gap(&gap.topic, gap.partition, gap.from, gap.to);
            }
            match aligned {
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
        let offsets = Source::next_offsets(&messages);
        let schema = self.schema.get();
        let (mut messages, mut applied, mut failed) =
            self.project(messages, schema.clone()).await?;
        // A value refused against the schema this host read may fit the
        // live one (a column widened since, before a redrive): read it again
        // and project once more if it changed.
        if failed.iter().any(|(_, f)| f.class == "invalid_op")
            && let Ok(live) = Schema::load(&self.pool).await
            && live != *schema
        {
            tracing::info!(
                "the schema changed since it was read; projecting the batch again against the live one"
            );
            self.schema.set(live);
            (messages, applied, failed) = self.project(messages, self.schema.get()).await?;
        }
        Ok(Some(Arc::new(Prepared {
            messages,
            applied,
            failed,
            offsets,
            started,
            projected_us: started.elapsed().as_micros() as u64,
            dead_lettered: std::sync::atomic::AtomicBool::new(false),
            unclassified: std::sync::atomic::AtomicU32::new(0),
        })))
    }

    /// Projects and validates `messages` on a blocking thread (guest calls
    /// are CPU work).
    async fn project(
        &self,
        messages: Vec<rdkafka::message::OwnedMessage>,
        schema: Arc<Schema>,
    ) -> anyhow::Result<(
        Vec<rdkafka::message::OwnedMessage>,
        Vec<project::Projected>,
        Vec<(usize, crate::dlq::Failure)>,
    )> {
        let registry = self.registry();
        let shared = self.shared.clone();
        let limit = self.settings.batch.max_event_bytes;
        tokio::task::spawn_blocking(move || {
            let (applied, failed) =
                project_all_observed(&registry, &schema, &messages, limit, Some(&shared));
            (messages, applied, failed)
        })
        .await
        .context("projection thread failed")
    }

    /// The stored positions, if aligning `batch` needs them.
    async fn stored_if_needed(
        &mut self,
        batch: &[rdkafka::message::OwnedMessage],
    ) -> anyhow::Result<Option<consume::Stored>> {
        if !self.source.needs_stored(batch) {
            return Ok(None);
        }
        Ok(Some(self.stored().await?))
    }

    /// The stored positions of the group, read within
    /// `mysql.statement_timeout` (a hung database must not hold the loop).
    async fn stored(&self) -> anyhow::Result<consume::Stored> {
        let limit = self.settings.mysql.statement_timeout;
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("reading the stored positions")?;
        let read = sink::stored_offsets(&mut *conn, &self.settings.kafka.group_id);
        match tokio::time::timeout(limit, read).await {
            Ok(stored) => stored.context("reading the stored positions"),
            Err(_) => {
                // Mid-statement the connection cannot be reused.
                conn.close_on_drop();
                anyhow::bail!(
                    "reading the stored positions took longer than {limit:?} (mysql.statement_timeout)"
                )
            }
        }
    }

    /// Starts writing a prepared batch in the background.
    fn spawn_write(&self, p: Arc<Prepared>) -> Inflight {
        let expected = self.source.expected(p.offsets.keys());
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
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Finished> {
        let Inflight { prepared, mut task } = inflight;
        let mut result = tokio::select! {
            biased;
            result = &mut task => result.context("batch writer failed")?,
            () = shutdown.cancelled() => {
                // A healthy database commits the batch in hand well within
                // the grace; one that is down or hung does not, and the
                // batch is left for the next start (nothing of it is
                // committed unless its transaction was).
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                    Ok(result) => result.context("batch writer failed")?,
                    Err(_) => {
                        task.abort();
                        tracing::info!("shutdown while writing: the batch is left for the next start");
                        return Ok(Finished::Shutdown);
                    }
                }
            }
        };
        let mut retry = Retry::default();
        loop {
            match result {
                Ok(()) => {
                    self.source.committed(&prepared.offsets);
                    self.recovered(&mut retry);
                    return Ok(Finished::Committed);
                }
                Err(Attempt::Moved(keys)) => {
                    self.recovered(&mut retry);
                    let mut all: Vec<PartitionKey> = prepared.offsets.keys().cloned().collect();
                    all.extend(keys);
                    return Ok(Finished::Moved(all));
                }
                Err(Attempt::Transient(e)) => {
                    if !self.wait_out(&mut retry, e, shutdown).await {
                        return Ok(Finished::Shutdown);
                    }
                    let expected = self.source.expected(prepared.offsets.keys());
                    result = self.writer.write(&prepared, &expected).await;
                }
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
        shutdown: &CancellationToken,
    ) -> bool {
        self.shared.metrics.transient_errors.inc();
        let backoff = retry.next();
        let reason = format!("{e:#}");
        tracing::warn!(error = %reason, retry_in_ms = backoff.as_millis() as u64, "batch not committed, retrying");
        self.shared.record_error("transient", reason.clone());
        self.shared.set_retrying(&self.topic, Some(reason));
        let until = tokio::time::Instant::now() + backoff;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                tracing::info!("shutdown while retrying: the batch is left for the next start");
                false
            }
            () = self.source.poll_paused(until) => true,
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
            self.source.resume();
            self.shared.set_retrying(&self.topic, None);
            *retry = Retry::default();
        }
    }
}

/// How long shutdown waits for a batch being written before leaving it for
/// the next start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Backoff of a batch retried after transient failures: exponential from
/// 100 ms to 5 s, with jitter so that hosts of one group do not retry in step.
#[derive(Default)]
struct Retry {
    attempts: u32,
    backoff: Option<ExponentialBackoff>,
}

impl Retry {
    fn next(&mut self) -> Duration {
        self.attempts += 1;
        self.backoff
            .get_or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(Duration::from_secs(5))
    }
}

struct Inflight {
    prepared: Arc<Prepared>,
    task: tokio::task::JoinHandle<Result<(), Attempt>>,
}

enum Finished {
    Committed,
    /// Nothing written; these partitions must go back to their stored positions.
    Moved(Vec<PartitionKey>),
    Shutdown,
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
