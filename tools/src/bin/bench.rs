//! `bench`: projection throughput, latency, CPU and memory against the raw
//! ceilings and the per-event design, in one run (`scripts/bench`).
//!
//! 1. Generates N events (seeded, `projector_tools::generate`) into fresh
//!    topics, plus the first M of the same events for the slow per-event
//!    mode, and one paced stream per host run.
//! 2. Runs every mode `--runs` times (3 by default) in rotated order (round
//!    r starts with mode r), each run on a fresh database and group:
//!    - raw Kafka consume: the N messages read and their envelopes decoded;
//!    - executor ceiling: the row writes of the N events (flattened
//!      beforehand, untimed) executed with the sink's multi-row guarded
//!      statements in 5,000-event transactions: no Kafka, JSON, WASM or
//!      bookkeeping;
//!    - plain ceiling: the final row images of the N events written with
//!      plain multi-row upserts in 10,000-row transactions (tables must
//!      equal the executor's);
//!    - the seed design: the M events one at a time from Kafka, the seed's
//!      statements, a commit per statement, no bookkeeping;
//!    - the default host as one and as two processes in one group, and
//!      killed with SIGKILL a third of the way and restarted (time from the
//!      restart to its first commit);
//!    - projection only, in this process on one thread: the N events
//!      flattened natively and through the WASM components (a fresh
//!      instance per event, and those of any `--compare` components
//!      folder), timing only the projection calls: the sandbox's own cost;
//!    - the host (`projector run`, a child process) per-event (batch 1, on
//!      the first M events), batched with the WASM components (the
//!      default), batched with the flattening compiled in (`--native`), and
//!      the default with any `--compare LABEL=PATH[,COMPONENTS_DIR]` binary
//!      (also as one and two processes when the scale mode runs).
//!
//!    A host is timed from the outside by the positions it commits in the
//!    same transaction as its rows (`consumer_offsets`), polled every 5 ms:
//!    steady throughput is the events committed after its first commit over
//!    the time to its last; wall time runs from spawning the process to the
//!    last commit (start, component compilation, group join, first batch);
//!    CPU is the process's user + system time at that moment. Then a stream
//!    is paced open-loop at a fixed rate (`--latency-rate`, 2,000 events/s,
//!    for the batched modes; `--per-event-latency-rate`, 500, for the
//!    per-event mode; at most half the run's capacity)
//!    and each event's latency runs from its due send time to the poll that
//!    sees it committed, with the CPU the machine, the host, the Kafka
//!    broker, MariaDB and the bench used meanwhile (from `/proc`). Peak RSS
//!    is the host's `VmHWM`.
//!
//!    For the ceilings and each host's steady window it also takes the CPU
//!    the timed events cost the machine (from `/proc`: the host, or this
//!    process for a ceiling, MariaDB and the Kafka broker), per event, and
//!    the most the machine's cores allow at that cost (every core busy with
//!    that work alone): a target that needs more than that is out of this
//!    machine's reach until the CPU per event falls, and the report says so.
//! 3. Prints the median of each mode with the min-max spread, checks that
//!    every run over the same events ended with the same tables (an
//!    in-database checksum), and writes a JSON file with every run and an
//!    SVG chart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use projector_tools::generate::{Generated, Generator};
use projector_tools::process::{Proc, clock_ticks, cpu_secs as process_cpu_secs};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::{Connection as _, MySqlPool};

#[derive(Parser)]
#[command(about = "Benchmark the projection modes against the raw ceilings")]
struct Args {
    /// Events in the stream.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events the per-event mode projects (it is ~50x slower).
    #[arg(long, default_value_t = 5_000)]
    per_event_events: usize,
    /// Produce rate of the batched host modes' latency runs (events per
    /// second); a mode whose capacity is below twice its rate is paced at
    /// half its capacity.
    #[arg(long, default_value_t = 2000)]
    latency_rate: usize,
    /// Produce rate of the per-event mode's latency run.
    #[arg(long, default_value_t = 500)]
    per_event_latency_rate: usize,
    /// Length of each latency run (seconds).
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the JSON and SVG go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Batch size of the batched host modes (the host's default is 500).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Only these modes (kafka, mysql, plain, seed, per-event, wasm, scale,
    /// recovery, rebuild, native); repeat it or separate them with commas.
    #[arg(long = "only", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(MODES))]
    only: Vec<String>,
    /// Runs of each mode, in rotated order.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also run the default mode (and the scale mode's one and two
    /// processes) with another `projector` binary, for before/after
    /// comparisons in one run: LABEL=PATH, or
    /// LABEL=PATH,COMPONENTS_DIR for a binary that needs components of its
    /// own (one built before a WIT minor version it does not know)
    /// (repeatable).
    #[arg(long = "compare")]
    compare: Vec<String>,
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

fn env_or(k: &str, default: &str) -> String {
    std::env::var(k)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

struct Ctx {
    kafka: String,
    mysql_url: String,
    components: PathBuf,
    bin_dir: PathBuf,
    run: String,
}

/// One timed run of one mode.
#[derive(Debug, Clone, serde::Serialize)]
struct RunResult {
    mode: String,
    round: usize,
    events: usize,
    /// Events per second in steady state: for a host, the events committed
    /// after its first commit over the time from its first to its last
    /// commit; for the ceilings, events over the timed seconds.
    events_per_sec: f64,
    /// Seconds from the start of the run (for a host, spawning the process)
    /// to its last commit: includes start, component compilation, the
    /// group join and the first batch.
    wall_secs: f64,
    /// The host process's CPU time (user + system) from start to last commit.
    cpu_secs: Option<f64>,
    /// Latency of the paced stream, from each event's due send time to the
    /// poll that saw it committed.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// The rate of the paced stream (events per second), and that rate as a
    /// fraction of this run's steady throughput.
    paced_rate: Option<usize>,
    rate_over_capacity: Option<f64>,
    /// Where the machine's CPU went while the paced stream ran.
    paced_cpu: Option<PacedCpu>,
    peak_rss_mb: Option<f64>,
    checksum: Option<String>,
    /// The CPU the timed events cost the machine (a host's steady window;
    /// a ceiling's SQL).
    work: Option<Work>,
}

impl RunResult {
    /// A run timed from the inside (no process, no paced stream): `events`
    /// over `secs`.
    fn timed(
        mode: &str,
        round: usize,
        events: usize,
        secs: f64,
        checksum: Option<String>,
    ) -> RunResult {
        RunResult {
            mode: mode.to_owned(),
            round,
            events,
            events_per_sec: events as f64 / secs,
            wall_secs: secs,
            cpu_secs: None,
            p50_ms: None,
            p99_ms: None,
            paced_rate: None,
            rate_over_capacity: None,
            paced_cpu: None,
            peak_rss_mb: None,
            checksum,
            work: None,
        }
    }
}

/// What a run's timed events cost in CPU-seconds: the process that drives
/// the writes (a host; for a ceiling, this bench process, which runs the
/// executor's code), MariaDB and the Kafka broker when they run here.
/// Measured from `/proc`, so it holds on any machine; on one whose cores
/// the services share, it bounds what a mode can ever do there: at most
/// `cpu_bound_events_per_sec`, this machine's cores busy all along with
/// nothing but this work.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Work {
    events: usize,
    driver_cpu_secs: f64,
    mariadb_cpu_secs: Option<f64>,
    kafka_cpu_secs: Option<f64>,
}

impl Work {
    fn cpu_secs(&self) -> f64 {
        self.driver_cpu_secs
            + self.mariadb_cpu_secs.unwrap_or(0.0)
            + self.kafka_cpu_secs.unwrap_or(0.0)
    }

    /// Events per second with every core of this machine busy with this
    /// work and nothing else.
    fn cpu_bound_events_per_sec(&self) -> Option<f64> {
        let cpu = self.cpu_secs();
        (cpu > 0.0 && machine_cpus() > 0).then(|| self.events as f64 * machine_cpus() as f64 / cpu)
    }

    fn add(&mut self, other: Work) {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.events += other.events;
        self.driver_cpu_secs += other.driver_cpu_secs;
        self.mariadb_cpu_secs = sum(self.mariadb_cpu_secs, other.mariadb_cpu_secs);
        self.kafka_cpu_secs = sum(self.kafka_cpu_secs, other.kafka_cpu_secs);
    }
}

/// The runs of one mode: medians, and the spread of the throughput.
#[derive(Debug, Clone, serde::Serialize)]
struct Summary {
    mode: String,
    runs: usize,
    events: usize,
    events_per_sec: f64,
    events_per_sec_min: f64,
    events_per_sec_max: f64,
    wall_secs: f64,
    cpu_secs: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    paced_rate: Option<f64>,
    rate_over_capacity: Option<f64>,
    paced_cpu: Option<PacedCpu>,
    peak_rss_mb: Option<f64>,
    /// Medians of the runs' CPU per event (µs) and of the most events per
    /// second the machine's cores allow at that cost.
    cpu_us_per_event: Option<WorkPerEvent>,
    cpu_bound_events_per_sec: Option<f64>,
}

/// CPU per event (µs), by process: see [`Work`].
#[derive(Debug, Clone, serde::Serialize)]
struct WorkPerEvent {
    total: f64,
    driver: f64,
    mariadb: Option<f64>,
    kafka: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

impl Summary {
    fn of(mode: &str, runs: &[&RunResult]) -> Summary {
        let med = |f: &dyn Fn(&RunResult) -> Option<f64>| {
            median(runs.iter().filter_map(|r| f(r)).collect())
        };
        let rates: Vec<f64> = runs.iter().map(|r| r.events_per_sec).collect();
        Summary {
            mode: mode.to_owned(),
            runs: runs.len(),
            events: runs.first().map_or(0, |r| r.events),
            events_per_sec: median(rates.clone()).unwrap_or(0.0),
            events_per_sec_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
            events_per_sec_max: rates.iter().copied().fold(0.0, f64::max),
            wall_secs: med(&|r| Some(r.wall_secs)).unwrap_or(0.0),
            cpu_secs: med(&|r| r.cpu_secs),
            p50_ms: med(&|r| r.p50_ms),
            p99_ms: med(&|r| r.p99_ms),
            paced_rate: med(&|r| r.paced_rate.map(|r| r as f64)),
            rate_over_capacity: med(&|r| r.rate_over_capacity),
            paced_cpu: PacedCpu::median(runs.iter().filter_map(|r| r.paced_cpu.as_ref())),
            peak_rss_mb: runs.iter().filter_map(|r| r.peak_rss_mb).reduce(f64::max),
            cpu_us_per_event: {
                let per = |f: &dyn Fn(&Work) -> Option<f64>| {
                    med(&|r| {
                        let w = r.work.as_ref().filter(|w| w.events > 0)?;
                        Some(f(w)? * 1e6 / w.events as f64)
                    })
                };
                per(&|w| Some(w.cpu_secs())).map(|total| WorkPerEvent {
                    total,
                    driver: per(&|w| Some(w.driver_cpu_secs)).unwrap_or(0.0),
                    mariadb: per(&|w| w.mariadb_cpu_secs),
                    kafka: per(&|w| w.kafka_cpu_secs),
                })
            },
            cpu_bound_events_per_sec: med(&|r| r.work.as_ref()?.cpu_bound_events_per_sec()),
        }
    }

    /// (max - min) / median of the throughput, in percent.
    fn spread_pct(&self) -> f64 {
        100.0 * (self.events_per_sec_max - self.events_per_sec_min) / self.events_per_sec.max(1e-9)
    }
}

impl Ctx {
    fn kafka_config(&self) -> events::KafkaSettings {
        events::KafkaSettings {
            bootstrap_servers: self.kafka.clone(),
            ..Default::default()
        }
    }

    fn producer(&self) -> anyhow::Result<FutureProducer> {
        let mut config = ClientConfig::new();
        for (k, v) in self.kafka_config().producer_config() {
            config.set(k, v);
        }
        config.set("queue.buffering.max.messages", "1000000");
        Ok(config.create()?)
    }

    async fn fresh_db(&self, tag: &str) -> anyhow::Result<(String, String, MySqlPool)> {
        let name = format!("bench_{}_{tag}", self.run);
        let (url, pool) =
            projector_tools::snapshot::create_database(&self.mysql_url, &name).await?;
        Ok((name, url, pool))
    }

    fn topics(&self, set: &str) -> Vec<String> {
        ["user", "supplier", "product", "order", "post"]
            .iter()
            .map(|d| format!("bench_{}_{set}.{d}", self.run))
            .collect()
    }
}

/// Where one produced event landed, and when it was due (paced runs).
struct Placed {
    partition: (String, i32),
    offset: i64,
    due: Instant,
}

/// Produces events to `bench_<run>_<set>.<domain>`, returning where each
/// landed. With a rate the sends are paced open-loop: event `i` is due at
/// `start + i / rate` and its latency is counted from that due time, so a
/// send that falls behind does not hide the delay (no coordinated omission).
async fn produce(
    ctx: &Ctx,
    set: &str,
    events: impl Iterator<Item = Generated>,
    rate: Option<usize>,
) -> anyhow::Result<Vec<Placed>> {
    let producer = ctx.producer()?;
    let mut placed = Vec::new();
    let mut pending = std::collections::VecDeque::new();
    let started = Instant::now();
    for (n, e) in events.enumerate() {
        let due = started + Duration::from_secs_f64(rate.map_or(0.0, |r| n as f64 / r as f64));
        if rate.is_some()
            && let Some(wait) = due.checked_duration_since(Instant::now())
        {
            tokio::time::sleep(wait).await;
        }
        let topic = format!("bench_{}_{set}.{}", ctx.run, e.domain);
        let delivery = producer
            .send_result(
                FutureRecord::to(&topic)
                    .key(&e.entity_id)
                    .payload(&e.payload),
            )
            .map_err(|(e, _)| e)?;
        pending.push_back((topic, due, delivery));
        while pending.len() > 50_000 {
            let (topic, due, p) = pending.pop_front().expect("not empty");
            let d = p.await?.map_err(|(e, _)| e)?;
            placed.push(Placed {
                partition: (topic, d.partition),
                offset: d.offset,
                due,
            });
        }
    }
    for (topic, due, p) in pending {
        let d = p.await?.map_err(|(e, _)| e)?;
        placed.push(Placed {
            partition: (topic, d.partition),
            offset: d.offset,
            due,
        });
    }
    Ok(placed)
}

/// The committed positions of a host's group as MySQL holds them: the host
/// writes them in the same transaction as the rows, so a position is visible
/// exactly when the events before it are committed.
async fn committed(pool: &MySqlPool, group: &str) -> HashMap<(String, i32), i64> {
    sqlx::query_as::<_, (String, i32, i64)>(
        "SELECT topic, `partition`, next_offset FROM consumer_offsets WHERE group_id = ?",
    )
    .bind(group)
    .fetch_all(pool)
    .await
    .unwrap_or_default() // before the host's migrations the table is missing
    .into_iter()
    .map(|(t, p, o)| ((t, p), o))
    .collect()
}

async fn create_topics(ctx: &Ctx, sets: &[&str]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &ctx.kafka);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config.create()?;
    let names: Vec<String> = sets.iter().flat_map(|s| ctx.topics(s)).collect();
    if names.is_empty() {
        return Ok(());
    }
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 4, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// A consumer (group `bench_<run>_<tag>`, never committing) assigned every
/// partition of `set`'s topics from the beginning.
fn from_the_start(ctx: &Ctx, set: &str, tag: &str) -> anyhow::Result<BaseConsumer> {
    let mut settings = ctx.kafka_config();
    settings.group_id = format!("bench_{}_{tag}", ctx.run);
    let mut config = ClientConfig::new();
    for (k, v) in settings.consumer_config() {
        config.set(k, v);
    }
    // librdkafka's own prefetch bound (per partition), not the host's
    // memory-saving one: the raw consume rate is a ceiling.
    config.set("queued.max.messages.kbytes", "65536");
    let consumer: BaseConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in ctx.topics(set) {
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning)?;
            }
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Raw consume: every message of the topics read and its envelope decoded.
fn raw_consume(ctx: &Ctx, set: &str, n: usize, round: usize) -> anyhow::Result<RunResult> {
    let consumer = from_the_start(ctx, set, &format!("raw{round}"))?;
    let started = Instant::now();
    let mut read = 0;
    let mut bytes = 0usize;
    while read < n {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                let payload = m.payload().unwrap_or_default();
                let envelope: events::RawEnvelope = events::Envelope::from_slice(payload)?;
                bytes += envelope.data.get().len();
                read += 1;
            }
            Some(Err(e)) => bail!("consume failed: {e}"),
            None => bail!("no message within 10 s after {read}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    say(format!(
        "raw consume: {read} messages ({} MB of data) in {secs:.2} s",
        bytes >> 20
    ));
    Ok(RunResult::timed(RAW_KAFKA, round, read, secs, None))
}

/// Writes the row operations of the first `n` events of `seed` into the
/// fresh database of `pool` with the executor's statements (the sink's
/// multi-row, guarded writes) in 5,000-event transactions; returns the time
/// spent in SQL (generating and flattening are not timed).
async fn executor_fill(pool: &MySqlPool, seed: u64, n: usize) -> anyhow::Result<(Duration, Work)> {
    projector_host::sink::migrate_with_builtin_tables(pool).await?;
    let schema = projector_host::sink::Schema::load(pool).await?;
    let infos: HashMap<&str, (flatten::Domain, flatten::Info)> = flatten::DOMAINS
        .into_iter()
        .map(|d| (d.name, (d, (d.info)())))
        .collect();
    let mut generator = Generator::new(seed);
    let mut timed = Duration::ZERO;
    let mut work = Work::default();
    let services = Services::find();
    let mut done = 0;
    let mut conn = pool.acquire().await?;
    while done < n {
        let chunk = 5_000.min(n - done);
        // Untimed: generate, flatten and validate.
        let mut applied = Vec::with_capacity(chunk);
        for i in 0..chunk {
            let e = generator.next_event();
            let env: events::RawEnvelope = events::Envelope::from_slice(&e.payload)?;
            let (domain, info) = &infos[e.domain];
            let event_id = env.event_id.to_string();
            let ops = projector_host::sandbox::envelope_view(&env, |flat| (domain.project)(flat))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let ops = ops
                .iter()
                .map(|op| projector_host::sink::validate(op, info, &schema))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!(e))?;
            applied.push(projector_host::sink::Applied {
                event_id,
                event_type: env.event_type.clone(),
                timestamp: env.timestamp.naive_utc(),
                entity_id: env.entity_id.clone(),
                topic: e.domain.to_owned(),
                partition: 0,
                offset: (done + i) as i64,
                component: "ceiling".into(),
                ops,
            });
        }
        let refs: Vec<&projector_host::sink::Applied> = applied.iter().collect();
        let before = CpuCounters::take(std::process::id(), &services);
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        projector_host::sink::write_ops(&mut tx, &schema, &refs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await?;
        timed += started.elapsed();
        if let Some(w) = before.spent(&CpuCounters::take(std::process::id(), &services), chunk) {
            work.add(w);
        }
        done += chunk;
    }
    Ok((timed, work))
}

/// Projection alone, in this process on one thread: the `n` events
/// (generated untimed, 5,000 at a time) flattened natively (`components`
/// `None`) or through the WASM components of a folder, a fresh instance per
/// event as the host makes them; no Kafka, validation or SQL. Only the
/// projection calls are timed: what the sandbox costs per event. The
/// checksum digests every operation, so WASM and native must agree.
fn projection_only(
    mode: &str,
    components: Option<&std::path::Path>,
    seed: u64,
    n: usize,
    round: usize,
) -> anyhow::Result<RunResult> {
    use std::hash::{Hash as _, Hasher as _};
    let runtime =
        projector_host::sandbox::Runtime::new(projector_host::settings::SandboxLimits::default())?;
    let loaded: HashMap<&str, projector_host::sandbox::LoadedComponent> = match components {
        Some(dir) => flatten::DOMAINS
            .iter()
            .map(|d| {
                let path = dir.join(format!("{}.wasm", d.name));
                runtime
                    .load_file(&path)
                    .map(|c| (d.name, c))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            })
            .collect::<anyhow::Result<_>>()?,
        None => HashMap::new(),
    };
    let domains: HashMap<&str, flatten::Domain> =
        flatten::DOMAINS.into_iter().map(|d| (d.name, d)).collect();
    let mut generator = Generator::new(seed);
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    let mut timed = Duration::ZERO;
    let mut done = 0;
    while done < n {
        let chunk = 5_000.min(n - done);
        let envelopes = (0..chunk)
            .map(|_| {
                let e = generator.next_event();
                Ok((e.domain, events::Envelope::from_slice(&e.payload)?))
            })
            .collect::<anyhow::Result<Vec<(&str, events::RawEnvelope)>>>()?;
        let mut outputs = Vec::with_capacity(chunk);
        let started = Instant::now();
        for (domain, env) in &envelopes {
            let ops =
                projector_host::sandbox::envelope_view(env, |flat| match loaded.get(domain) {
                    Some(c) => c.session().project(flat).map_err(|e| e.to_string()),
                    None => (domains[domain].project)(flat).map_err(|e| e.to_string()),
                });
            outputs.push(ops);
        }
        timed += started.elapsed();
        for ops in outputs {
            serde_json::to_string(&ops.map_err(|e| anyhow::anyhow!(e))?)?.hash(&mut digest);
        }
        done += chunk;
    }
    Ok(RunResult::timed(
        mode,
        round,
        n,
        timed.as_secs_f64(),
        Some(format!("{:016x}", digest.finish())),
    ))
}

/// Plain ceiling: the final row images of the `n` events (made untimed by
/// the executor in a scratch database, read back as SQL literals) written
/// into a fresh database with plain multi-row `INSERT … ON DUPLICATE KEY
/// UPDATE col = VALUES(col)`, 1,000 rows a statement, 10,000 rows a
/// transaction: no guards, no bookkeeping, no per-event work. The fastest
/// way found here to make MariaDB hold these tables; its tables must equal
/// the executor's.
async fn plain_ceiling(ctx: &Ctx, seed: u64, n: usize, round: usize) -> anyhow::Result<RunResult> {
    let (src_name, _, src) = ctx.fresh_db(&format!("plainsrc{round}")).await?;
    let _ = executor_fill(&src, seed, n).await?;
    let want = projector_tools::snapshot::checksum(&src).await?;
    // Row images, parents first, as `(lit, lit, …)` tuples.
    let mut images: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for table in projector_tools::snapshot::TABLES {
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = ? AND EXTRA NOT LIKE '%GENERATED%' ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(&src)
        .await?;
        let tuple = cols
            .iter()
            .map(|c| format!("QUOTE(`{c}`)"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(&format!(
            "SELECT CONCAT('(', CONCAT_WS(',', {tuple}), ')') FROM `{table}`"
        ))
        .fetch_all(&src)
        .await?;
        let rows = rows
            .into_iter()
            .map(String::from_utf8)
            .collect::<Result<Vec<_>, _>>()?;
        images.push((table.to_owned(), cols, rows));
    }
    let _ = sqlx::query(&format!("DROP DATABASE `{src_name}`"))
        .execute(&src)
        .await;
    let (name, _, pool) = ctx.fresh_db(&format!("plain{round}")).await?;
    projector_host::sink::migrate_with_builtin_tables(&pool).await?;
    let mut conn = pool.acquire().await?;
    let services = Services::find();
    let before = CpuCounters::take(std::process::id(), &services);
    let started = Instant::now();
    let mut rows_written = 0;
    for (table, cols, rows) in &images {
        let names = cols
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let update = cols
            .iter()
            .map(|c| format!("`{c}` = VALUES(`{c}`)"))
            .collect::<Vec<_>>()
            .join(", ");
        for tx_rows in rows.chunks(10_000) {
            let mut tx = conn.begin().await?;
            for chunk in tx_rows.chunks(1_000) {
                let sql = format!(
                    "INSERT INTO `{table}` ({names}) VALUES {} ON DUPLICATE KEY UPDATE {update}",
                    chunk.join(",")
                );
                sqlx::raw_sql(&sql).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        rows_written += rows.len();
    }
    let secs = started.elapsed().as_secs_f64();
    let work = before.spent(&CpuCounters::take(std::process::id(), &services), n);
    drop(conn);
    let checksum = projector_tools::snapshot::checksum(&pool).await?;
    say(format!(
        "plain ceiling: {rows_written} final rows of {n} events in {secs:.2} s of SQL; tables {} the executor's",
        if checksum == want {
            "equal"
        } else {
            "DIFFER from"
        }
    ));
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&pool)
        .await;
    Ok(RunResult {
        work,
        ..RunResult::timed(PLAIN_CEILING, round, n, secs, Some(checksum))
    })
}

/// The seed's design, in Rust: consume `set` one message at a time, flatten
/// it (natively, the same flattening), and run the seed's statements on an
/// autocommit connection: each upsert, update, soft delete or delete its
/// own statement and commit; a replace a DELETE and one INSERT per row in
/// one transaction (the seed's `replace_variants`). No guards, no
/// `processed_events`, no positions: what it gives up is what the host
/// keeps. Timed from the first message to the last commit.
async fn seed_design(ctx: &Ctx, set: &str, n: usize, round: usize) -> anyhow::Result<RunResult> {
    use projector_host::sink::{Bind, ValidOp};
    let (name, _, pool) = ctx.fresh_db(&format!("seed{round}")).await?;
    projector_host::sink::migrate_with_builtin_tables(&pool).await?;
    let schema = projector_host::sink::Schema::load(&pool).await?;
    let infos: HashMap<&str, (flatten::Domain, flatten::Info)> = flatten::DOMAINS
        .into_iter()
        .map(|d| (d.name, (d, (d.info)())))
        .collect();
    let consumer = from_the_start(ctx, set, &format!("seed{round}"))?;
    let mut conn = pool.acquire().await?;
    let cols = |c: &[(String, Bind)]| c.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>();
    let key_where = |k: &[(String, Bind)]| {
        k.iter()
            .map(|(n, _)| format!("`{n}` = ?"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let mut started = None;
    let mut done = 0;
    while done < n {
        let m = match tokio::task::block_in_place(|| consumer.poll(Duration::from_secs(10))) {
            Some(Ok(m)) => m,
            Some(Err(e)) => bail!("consume failed: {e}"),
            None => bail!("no message within 10 s after {done}"),
        };
        started.get_or_insert_with(Instant::now);
        let env: events::RawEnvelope =
            events::Envelope::from_slice(m.payload().unwrap_or_default())?;
        let (domain, info) = &infos[env.topic()];
        let ops = projector_host::sandbox::envelope_view(&env, |flat| (domain.project)(flat))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (event_id, ts) = (env.event_id.to_string(), env.timestamp.naive_utc());
        for op in &ops {
            let op = projector_host::sink::validate(op, info, &schema)
                .map_err(|e| anyhow::anyhow!(e))?;
            match op {
                ValidOp::Upsert { table, key, values } => {
                    let mut names = cols(&key);
                    names.extend(cols(&values));
                    let update: Vec<String> = cols(&values)
                        .iter()
                        .chain(["`event_id`".to_owned(), "`event_timestamp`".to_owned()].iter())
                        .map(|c| format!("{c} = VALUES({c})"))
                        .collect();
                    let sql = format!(
                        "INSERT INTO `{table}` ({}, `event_id`, `event_timestamp`) VALUES ({}?, ?) \
                         ON DUPLICATE KEY UPDATE {}",
                        names.join(", "),
                        "?, ".repeat(names.len()),
                        update.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for (_, b) in key.iter().chain(&values) {
                        q = q.bind(b);
                    }
                    q.bind(&event_id).bind(ts).execute(&mut *conn).await?;
                }
                ValidOp::Update { table, key, values } => {
                    let set: Vec<String> =
                        cols(&values).iter().map(|c| format!("{c} = ?")).collect();
                    let sql = format!(
                        "UPDATE `{table}` SET {}, `event_id` = ?, `event_timestamp` = ? WHERE {}",
                        set.join(", "),
                        key_where(&key)
                    );
                    let mut q = sqlx::query(&sql);
                    for (_, b) in &values {
                        q = q.bind(b);
                    }
                    q = q.bind(&event_id).bind(ts);
                    for (_, b) in &key {
                        q = q.bind(b);
                    }
                    q.execute(&mut *conn).await?;
                }
                ValidOp::Replace {
                    table,
                    parent,
                    rows,
                } => {
                    // The child's foreign key columns carry the parent's key names.
                    let mut tx = conn.begin().await?;
                    let sql = format!("DELETE FROM `{table}` WHERE {}", key_where(&parent));
                    let mut q = sqlx::query(&sql);
                    for (_, b) in &parent {
                        q = q.bind(b);
                    }
                    q.execute(&mut *tx).await?;
                    for row in &rows {
                        let mut names = cols(&parent);
                        names.extend(cols(row));
                        let sql = format!(
                            "INSERT INTO `{table}` ({}, `event_id`, `event_timestamp`) VALUES ({}?, ?)",
                            names.join(", "),
                            "?, ".repeat(names.len())
                        );
                        let mut q = sqlx::query(&sql);
                        for (_, b) in parent.iter().chain(row) {
                            q = q.bind(b);
                        }
                        q.bind(&event_id).bind(ts).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }
                ValidOp::SoftDelete { table, key } => {
                    let sql = format!(
                        "UPDATE `{table}` SET `deleted_at` = ?, `event_id` = ?, `event_timestamp` = ? WHERE {}",
                        key_where(&key)
                    );
                    let mut q = sqlx::query(&sql).bind(ts).bind(&event_id).bind(ts);
                    for (_, b) in &key {
                        q = q.bind(b);
                    }
                    q.execute(&mut *conn).await?;
                }
                ValidOp::Delete { table, key } => {
                    let sql = format!("DELETE FROM `{table}` WHERE {}", key_where(&key));
                    let mut q = sqlx::query(&sql);
                    for (_, b) in &key {
                        q = q.bind(b);
                    }
                    q.execute(&mut *conn).await?;
                }
            }
        }
        done += 1;
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64()).max(1e-6);
    drop(conn);
    // Its tables are not compared: without the guards an event that
    // arrives late overwrites newer rows, which is the point of the host.
    let checksum = projector_tools::snapshot::checksum(&pool).await?;
    say(format!(
        "seed design: {n} events in {secs:.2} s, one commit per statement"
    ));
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&pool)
        .await;
    Ok(RunResult::timed(
        SEED_DESIGN,
        round,
        n,
        secs,
        Some(format!("seed:{checksum}")),
    ))
}

/// MySQL ceiling: the stream's row writes without Kafka, JSON, WASM or
/// bookkeeping, in 5,000-event transactions.
async fn mysql_ceiling(
    ctx: &Ctx,
    seed: u64,
    n: usize,
    tag: &str,
    round: usize,
) -> anyhow::Result<RunResult> {
    let (name, _url, pool) = ctx.fresh_db(&format!("{tag}{round}")).await?;
    let (timed, work) = executor_fill(&pool, seed, n).await?;
    let checksum = projector_tools::snapshot::checksum(&pool).await?;
    let secs = timed.as_secs_f64();
    say(format!(
        "MySQL ceiling ({tag}): {n} events in {secs:.2} s of SQL"
    ));
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&pool)
        .await;
    Ok(RunResult {
        work: Some(work),
        ..RunResult::timed(MYSQL_CEILING, round, n, secs, Some(checksum))
    })
}

fn peak_rss_mb(child: &Child) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The CPU time (user + system) a process has used so far.
fn cpu_secs(child: &Child) -> Option<f64> {
    process_cpu_secs(child.id())
}

/// Where the machine's CPU went while a paced stream ran, in cores (1.0:
/// one core busy all along): the machine as a whole and each process of the
/// pipeline on it. The services are found by their process names; run
/// elsewhere, they are absent. On a machine where they share the cores, a
/// paced stream's latency is only the pipeline's own while `busy` stays
/// well under the machine's cores (`machine.cpus` in the JSON).
#[derive(Debug, Clone, serde::Serialize)]
struct PacedCpu {
    /// Cores busy with anything (user, system, interrupts).
    busy: f64,
    host: f64,
    kafka: Option<f64>,
    mariadb: Option<f64>,
    /// This process: the paced producer and the 5 ms position poller.
    bench: f64,
}

impl PacedCpu {
    fn median<'a>(runs: impl Iterator<Item = &'a PacedCpu>) -> Option<PacedCpu> {
        let runs: Vec<&PacedCpu> = runs.collect();
        let med = |f: &dyn Fn(&PacedCpu) -> Option<f64>| {
            median(runs.iter().filter_map(|r| f(r)).collect())
        };
        Some(PacedCpu {
            busy: med(&|r| Some(r.busy))?,
            host: med(&|r| Some(r.host))?,
            kafka: med(&|r| r.kafka),
            mariadb: med(&|r| r.mariadb),
            bench: med(&|r| Some(r.bench))?,
        })
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!("host {:.2}", self.host)];
        if let Some(k) = self.kafka {
            parts.push(format!("Kafka {k:.2}"));
        }
        if let Some(m) = self.mariadb {
            parts.push(format!("MariaDB {m:.2}"));
        }
        parts.push(format!("bench {:.2}", self.bench));
        format!(
            "{:.2} of {} cores busy ({})",
            self.busy,
            machine_cpus(),
            parts.join(", ")
        )
    }
}

/// CPU counters (seconds) at one moment, for [`PacedCpu`].
struct CpuCounters {
    at: Instant,
    machine_busy: Option<f64>,
    host: Option<f64>,
    kafka: Option<f64>,
    mariadb: Option<f64>,
    bench: Option<f64>,
}

impl CpuCounters {
    fn take(host: u32, services: &Services) -> CpuCounters {
        CpuCounters {
            at: Instant::now(),
            machine_busy: machine_busy_secs(),
            host: process_cpu_secs(host),
            kafka: services.kafka.and_then(process_cpu_secs),
            mariadb: services.mariadb.and_then(process_cpu_secs),
            bench: process_cpu_secs(std::process::id()),
        }
    }

    /// The CPU-seconds spent between `self` and `later` on `events`, with
    /// `driver` the process `self` was taken for.
    fn spent(&self, later: &CpuCounters, events: usize) -> Option<Work> {
        let secs = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0));
        Some(Work {
            events,
            driver_cpu_secs: secs(self.host, later.host)?,
            mariadb_cpu_secs: secs(self.mariadb, later.mariadb),
            kafka_cpu_secs: secs(self.kafka, later.kafka),
        })
    }

    fn until(&self, later: &CpuCounters) -> Option<PacedCpu> {
        let secs = (later.at - self.at).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0) / secs);
        Some(PacedCpu {
            busy: cores(self.machine_busy, later.machine_busy)?,
            host: cores(self.host, later.host)?,
            kafka: cores(self.kafka, later.kafka),
            mariadb: cores(self.mariadb, later.mariadb),
            bench: cores(self.bench, later.bench)?,
        })
    }
}

/// The pids of the services on this machine, if they run here.
struct Services {
    kafka: Option<u32>,
    mariadb: Option<u32>,
}

impl Services {
    fn find() -> Services {
        let mut found = Services {
            kafka: None,
            mariadb: None,
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if matches!(comm.trim(), "mariadbd" | "mysqld") {
                found.mariadb.get_or_insert(pid);
            } else if comm.trim() == "java" {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if cmdline.split(|b| *b == 0).any(|arg| arg == b"kafka.Kafka") {
                    found.kafka.get_or_insert(pid);
                }
            }
        }
        found
    }
}

/// The machine's cores (0 where unknown).
fn machine_cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Seconds the machine's cores have been busy (user, nice, system, irq and
/// softirq time of `/proc/stat`), summed over the cores.
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    Some(busy / clock_ticks())
}

/// How many events of `ends` ((topic, partition) -> end offset of the set)
/// the positions cover.
fn covered(ends: &HashMap<(String, i32), i64>, positions: &HashMap<(String, i32), i64>) -> i64 {
    ends.iter()
        .map(|(k, end)| positions.get(k).copied().unwrap_or(0).min(*end))
        .sum()
}

/// (topic, partition) -> one past the last offset of the placed events.
fn ends_of(placed: &[Placed]) -> HashMap<(String, i32), i64> {
    let mut ends = HashMap::new();
    for p in placed {
        let end = ends.entry(p.partition.clone()).or_insert(0);
        *end = (p.offset + 1).max(*end);
    }
    ends
}

/// A host mode to run.
#[derive(Clone)]
struct HostMode {
    mode: String,
    bin: PathBuf,
    /// Its own components folder (default: the bench's).
    components: Option<PathBuf>,
    /// The backlog it projects, and where that backlog's events are.
    set: &'static str,
    ends: Arc<HashMap<(String, i32), i64>>,
    n: usize,
    native: bool,
    batch: usize,
}

/// How often positions are polled; the resolution of every time taken from
/// commits.
const POLL: Duration = Duration::from_millis(5);

/// One run of a host mode: spawn `projector run` on a fresh database and
/// group, time its backlog from the outside (positions it commits with the
/// rows), then pace a stream at a fixed rate and take each event's latency
/// from its due time to the poll that sees it committed.
async fn host_mode(
    ctx: &Ctx,
    host: &HostMode,
    round: usize,
    latency_set: &str,
    args: &Args,
) -> anyhow::Result<RunResult> {
    let tag = format!(
        "{}{round}",
        host.mode
            .replace([' ', '-', '(', ')', ',', '[', ']'], "_")
            .to_lowercase()
    );
    let (name, url, pool) = ctx.fresh_db(&tag).await?;
    let group = format!("bench_{}_{tag}", ctx.run);
    let mut topics = ctx.topics(host.set);
    topics.extend(ctx.topics(latency_set));
    let started = Instant::now();
    let mut child = spawn_host(ctx, host, &url, &group, &topics, &tag, None)?;
    let result = async {
        let n = host.n as i64;
        let deadline = started + Duration::from_secs(3600);
        let mut first: Option<(Instant, i64)> = None;
        let mut said = Instant::now();
        let services = Services::find();
        let mut first_cpu = None;
        let (last, cpu, last_cpu) = loop {
            let done = progress(&pool, &group, &host.ends).await;
            let now = Instant::now();
            if done > 0 && first.is_none() {
                first = Some((now, done));
                first_cpu = Some(CpuCounters::take(child.id(), &services));
            }
            if done >= n {
                break (
                    now,
                    cpu_secs(&child),
                    CpuCounters::take(child.id(), &services),
                );
            }
            if let Some(status) = child.try_wait()? {
                bail!("the host exited ({status}) after {done} events");
            }
            if now > deadline {
                bail!("the host did not finish in an hour ({done} events)");
            }
            if said.elapsed() > Duration::from_secs(10) {
                say(format!("{}: {done}/{n} events", host.mode));
                said = now;
            }
            tokio::time::sleep(POLL).await;
        };
        let (first_at, first_done) = first.expect("done > 0 was seen");
        let steady_secs = (last - first_at).as_secs_f64();
        let events_per_sec = if steady_secs > 0.0 {
            (n - first_done) as f64 / steady_secs
        } else {
            n as f64 / (last - started).as_secs_f64()
        };
        // The steady window's CPU, as its throughput.
        let work = first_cpu
            .and_then(|f| f.spent(&last_cpu, (n - first_done) as usize))
            .filter(|w| w.events > 0);
        let checksum = projector_tools::snapshot::checksum(&pool).await?;

        // Latency: a stream paced at a fixed rate against the caught-up
        // host; at most half its measured capacity, or the figure would
        // measure a growing queue rather than the pipeline.
        let rate = if host.batch == 1 {
            args.per_event_latency_rate
        } else {
            args.latency_rate
        };
        let paced_rate = (rate as f64).min(events_per_sec / 2.0).max(1.0) as usize;
        let total = paced_rate * args.latency_secs as usize;
        let mut generator = Generator::new(args.seed + 1000);
        let stream = ctx.topics(latency_set);
        let mut seen: HashMap<(String, i32), Vec<(Instant, i64)>> = HashMap::new();
        let mut note = |positions: HashMap<(String, i32), i64>, at: Instant| {
            for (k, o) in positions {
                if stream.contains(&k.0) {
                    let v = seen.entry(k).or_default();
                    if v.last().is_none_or(|l| l.1 < o) {
                        v.push((at, o));
                    }
                }
            }
        };
        let services = Services::find();
        let cpu_before = CpuCounters::take(child.id(), &services);
        let producing = produce(
            ctx,
            latency_set,
            (0..total).map(|_| generator.next_event()),
            Some(paced_rate),
        );
        tokio::pin!(producing);
        let placed = loop {
            tokio::select! {
                placed = &mut producing => break placed?,
                () = tokio::time::sleep(POLL) => {
                    let positions = committed(&pool, &group).await;
                    note(positions, Instant::now());
                }
            }
        };
        let ends = ends_of(&placed);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let positions = committed(&pool, &group).await;
            let all = covered(&ends, &positions) >= placed.len() as i64;
            note(positions, Instant::now());
            if all {
                break;
            }
            if Instant::now() > deadline {
                bail!("the paced events were not all committed within 10 minutes");
            }
            tokio::time::sleep(POLL).await;
        }
        let paced_cpu = cpu_before.until(&CpuCounters::take(child.id(), &services));
        let mut latencies: Vec<f64> = placed
            .iter()
            .filter_map(|p| {
                let (at, _) = seen
                    .get(&p.partition)?
                    .iter()
                    .find(|(_, o)| *o > p.offset)?;
                Some(at.saturating_duration_since(p.due).as_secs_f64() * 1000.0)
            })
            .collect();
        if latencies.len() != placed.len() {
            bail!(
                "{} of {} paced events have no commit time",
                placed.len() - latencies.len(),
                placed.len()
            );
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
        };
        Ok(RunResult {
            mode: host.mode.clone(),
            round,
            events: host.n,
            events_per_sec,
            wall_secs: (last - started).as_secs_f64(),
            cpu_secs: cpu,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            paced_rate: Some(paced_rate),
            rate_over_capacity: Some(paced_rate as f64 / events_per_sec),
            paced_cpu,
            peak_rss_mb: peak_rss_mb(&child),
            checksum: Some(checksum),
            work,
        })
    }
    .await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&pool)
        .await;
    result
}

/// Starts `projector run` of `host` on database `url` and group `group`
/// (log in the temp folder, tagged), with static membership when
/// `instance` is given.
fn spawn_host(
    ctx: &Ctx,
    host: &HostMode,
    url: &str,
    group: &str,
    topics: &[String],
    tag: &str,
    instance: Option<&str>,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&host.bin);
    cmd.arg("run");
    if host.native {
        cmd.arg("--native");
    }
    if let Some(id) = instance {
        cmd.env("PROJECTOR_INSTANCE_ID", id);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join(format!("bench-{tag}.log")))?;
    cmd.env("MYSQL_URL", url)
        .env("KAFKA_BOOTSTRAP", &ctx.kafka)
        .env("PROJECTOR_GROUP_ID", group)
        .env("PROJECTOR_TOPICS", topics.join(","))
        .env(
            "PROJECTOR_COMPONENTS_DIR",
            host.components.as_ref().unwrap_or(&ctx.components),
        )
        .env("PROJECTOR_BATCH_SIZE", host.batch.to_string())
        .env("PROJECTOR_ADMIN_ADDR", "127.0.0.1:0")
        .env("PROJECTOR_WATCH_COMPONENTS", "false")
        .env("RUST_LOG", env_or("BENCH_HOST_LOG", "warn"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Proc)
        .with_context(|| format!("{} starts", host.bin.display()))
}

/// Events of `ends` committed in the group now.
async fn progress(pool: &MySqlPool, group: &str, ends: &HashMap<(String, i32), i64>) -> i64 {
    covered(ends, &committed(pool, group).await)
}

/// The default host as `processes` processes in one group on the same
/// backlog (static membership, one instance id each): steady throughput from
/// the first commit to the last, and the tables.
async fn scale_out(
    ctx: &Ctx,
    host: &HostMode,
    processes: usize,
    round: usize,
) -> anyhow::Result<RunResult> {
    // A `--compare` binary's runs get databases and groups of their own.
    let label: String = host
        .mode
        .strip_prefix(WASM)
        .unwrap_or(&host.mode)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let tag = format!("scale{processes}_{round}{label}");
    let (name, url, pool) = ctx.fresh_db(&tag).await?;
    let group = format!("bench_{}_{tag}", ctx.run);
    let topics = ctx.topics(host.set);
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..processes {
        children.push(spawn_host(
            ctx,
            host,
            &url,
            &group,
            &topics,
            &tag,
            Some(&format!("{tag}-{i}")),
        )?);
    }
    let n = host.n as i64;
    let result = async {
        let mut first = None;
        let deadline = started + Duration::from_secs(3600);
        let last = loop {
            let done = progress(&pool, &group, &host.ends).await;
            let now = Instant::now();
            if done > 0 && first.is_none() {
                first = Some((now, done));
            }
            if done >= n {
                break now;
            }
            for c in &mut children {
                if let Some(status) = c.try_wait()? {
                    bail!("a host exited ({status}) after {done} events");
                }
            }
            if now > deadline {
                bail!("{processes} hosts did not finish in an hour ({done} events)");
            }
            tokio::time::sleep(POLL).await;
        };
        let (first_at, first_done) = first.expect("done > 0 was seen");
        let steady = (last - first_at).as_secs_f64().max(1e-3);
        let cpu: f64 = children.iter().map(|c| &**c).filter_map(cpu_secs).sum();
        Ok(RunResult {
            mode: scale_name_of(&host.mode, processes),
            round,
            events: host.n,
            events_per_sec: (n - first_done) as f64 / steady,
            wall_secs: (last - started).as_secs_f64(),
            cpu_secs: Some(cpu),
            p50_ms: None,
            p99_ms: None,
            paced_rate: None,
            rate_over_capacity: None,
            paced_cpu: None,
            peak_rss_mb: children
                .iter()
                .map(|c| &**c)
                .filter_map(peak_rss_mb)
                .reduce(f64::max),
            checksum: Some(projector_tools::snapshot::checksum(&pool).await?),
            work: None,
        })
    }
    .await;
    for c in &mut children {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let _ = c.wait();
    }
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&pool)
        .await;
    result
}

fn scale_name(processes: usize) -> String {
    scale_name_of(WASM, processes)
}

/// The scale-out mode of a host mode (the default, or a `--compare` one).
fn scale_name_of(mode: &str, processes: usize) -> String {
    format!("{mode} x{processes} processes")
}

/// Recovery: the default host with static membership is killed with
/// SIGKILL a third of the way through the backlog and started again at
/// once; the time from the new process's spawn to its first commit past
/// the kill, and the tables at the end (exactly once across the kill).
async fn recovery(ctx: &Ctx, host: &HostMode, round: usize) -> anyhow::Result<RunResult> {
    let tag = format!("recovery{round}");
    let (name, url, pool) = ctx.fresh_db(&tag).await?;
    let group = format!("bench_{}_{tag}", ctx.run);
    let topics = ctx.topics(host.set);
    let n = host.n as i64;
    let instance = format!("{tag}-host");
    let started = Instant::now();
    let mut child = spawn_host(ctx, host, &url, &group, &topics, &tag, Some(&instance))?;
    let result = async {
        let deadline = started + Duration::from_secs(3600);
        while progress(&pool, &group, &host.ends).await < n / 3 {
            if Instant::now() > deadline {
                bail!("the host made no progress");
            }
            tokio::time::sleep(POLL).await;
        }
        child.kill()?; // SIGKILL
        let _ = child.wait();
        let at_kill = progress(&pool, &group, &host.ends).await;
        let restarted = Instant::now();
        child = spawn_host(ctx, host, &url, &group, &topics, &tag, Some(&instance))?;
        let mut first_commit = None;
        loop {
            let done = progress(&pool, &group, &host.ends).await;
            if done > at_kill && first_commit.is_none() {
                first_commit = Some(restarted.elapsed().as_secs_f64());
            }
            if done >= n {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("the restarted host exited ({status}) after {done} events");
            }
            if Instant::now() > deadline {
                bail!("the restarted host did not finish ({done} events)");
            }
            tokio::time::sleep(POLL).await;
        }
        let secs = first_commit.expect("it finished");
        say(format!(
            "recovery: killed at {at_kill}/{n} events; the restarted host committed {secs:.2} s after its spawn"
        ));
        Ok(RunResult {
            mode: RECOVERY.to_owned(),
            round,
            events: host.n,
            events_per_sec: n as f64 / started.elapsed().as_secs_f64(),
            wall_secs: secs,
            cpu_secs: None,
            p50_ms: None,
            p99_ms: None,
            paced_rate: None,
            rate_over_capacity: None,
            paced_cpu: None,
            peak_rss_mb: None,
            checksum: Some(projector_tools::snapshot::checksum(&pool).await?),
            work: None,
        })
    }
    .await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&pool)
        .await;
    result
}

/// The default host projects the set; then `projector rebuild --domain
/// product` rebuilds that domain into shadow tables beside it and swaps
/// them in. Its report is the timeline; the tables must equal a clean run's.
async fn shadow_rebuild(ctx: &Ctx, host: &HostMode, round: usize) -> anyhow::Result<RunResult> {
    let tag = format!("rebuild{round}");
    let (name, url, pool) = ctx.fresh_db(&tag).await?;
    let group = format!("bench_{}_{tag}", ctx.run);
    let topics = ctx.topics(host.set);
    let n = host.n as i64;
    let mut child = spawn_host(ctx, host, &url, &group, &topics, &tag, None)?;
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(3600);
        while progress(&pool, &group, &host.ends).await < n {
            if Instant::now() > deadline {
                bail!("the host did not finish the set");
            }
            tokio::time::sleep(POLL).await;
        }
        let before = projector_tools::snapshot::checksum(&pool).await?;
        let output = Command::new(&host.bin)
            .args(["rebuild", "--domain", "product", "--json"])
            .env("MYSQL_URL", &url)
            .env("KAFKA_BOOTSTRAP", &ctx.kafka)
            .env("PROJECTOR_GROUP_ID", &group)
            .env("PROJECTOR_TOPICS", topics.join(","))
            .env("PROJECTOR_COMPONENTS_DIR", &ctx.components)
            .env("PROJECTOR_BATCH_SIZE", host.batch.to_string())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .output()
            .context("projector rebuild runs")?;
        if !output.status.success() {
            bail!("projector rebuild failed: {}", String::from_utf8_lossy(&output.stdout));
        }
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("projector rebuild --json prints its report")?;
        let after = projector_tools::snapshot::checksum(&pool).await?;
        if after != before {
            bail!("the rebuilt tables differ from the live ones they replaced");
        }
        let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
        let events = report["events"].as_u64().unwrap_or(0) as usize;
        say(format!(
            "shadow rebuild: {events} product events in {:.2} s ({:.0} events/s while catching up, {:.2} s), swap: live topic paused {:.0} ms (shadow's last stretch {:.0} ms, bookkeeping {:.0} ms), RENAME TABLE {:.1} ms",
            f("total_secs"),
            events as f64 / f("catch_up_secs").max(1e-3),
            f("catch_up_secs"),
            f("live_paused_ms"),
            f("reach_ms"),
            f("bookkeeping_ms"),
            f("rename_ms"),
        ));
        let mut result = RunResult::timed(
            REBUILD,
            round,
            events,
            f("catch_up_secs").max(1e-3),
            Some(after),
        );
        result.wall_secs = f("total_secs");
        Ok(result)
    }
    .await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    for db in [
        name.clone(),
        format!("{name}_rb_product"),
        format!("{name}_rbx_product"),
    ] {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute(&pool)
            .await;
    }
    result
}

fn svg_chart(summaries: &[Summary], n: usize, runs: usize) -> String {
    let w = 820.0;
    let bar_h = 34.0;
    let left = 290.0;
    let top = 50.0;
    let h = top + summaries.len() as f64 * (bar_h + 14.0) + 40.0;
    let max = summaries
        .iter()
        .map(|r| r.events_per_sec_max)
        .fold(1.0, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"20\" y=\"28\" font-size=\"16\" font-weight=\"bold\">projector steady throughput, events/s ({n} events; median of {runs} runs, line = min to max)</text>"
    );
    let scale = (w - left - 120.0) / max;
    for (i, r) in summaries.iter().enumerate() {
        let y = top + i as f64 * (bar_h + 14.0);
        let len = scale * r.events_per_sec;
        let colour = match r.mode.as_str() {
            m if m.contains("WASM") => "#1565c0",
            m if m.contains("native") => "#2e7d32",
            m if m.contains("per-event") => "#c62828",
            _ => "#757575",
        };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"{colour}\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{}\">{:.0}</text>",
            left - 8.0,
            y + bar_h * 0.65,
            r.mode,
            left + scale * r.events_per_sec_min,
            left + scale * r.events_per_sec_max,
            y + bar_h / 2.0,
            y + bar_h / 2.0,
            left + scale * r.events_per_sec_max + 6.0,
            y + bar_h * 0.65,
            r.events_per_sec
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// What `--only` accepts.
const MODES: [&str; 11] = [
    "kafka",
    "mysql",
    "plain",
    "seed",
    "per-event",
    "wasm",
    "scale",
    "recovery",
    "rebuild",
    "native",
    "projection",
];
const RAW_KAFKA: &str = "raw Kafka consume";
const MYSQL_CEILING: &str = "executor ceiling (MySQL)";
const PLAIN_CEILING: &str = "plain ceiling (MySQL)";
const SEED_DESIGN: &str = "seed design (per-statement commits)";
/// Its `wall_secs` is the restart-to-first-commit time after a kill -9.
const RECOVERY: &str = "default, kill -9 and restart";
/// Its `events_per_sec` is the shadow's events over its catch-up time and
/// `wall_secs` the whole rebuild (start to swap).
const REBUILD: &str = "shadow rebuild of product (beside the default)";
const WASM: &str = "host batched (WASM, default)";
const NATIVE: &str = "host batched (native)";
const PER_EVENT: &str = "host per-event (WASM, batch 1)";
/// The start of every projection-only mode's name.
const PROJECTION: &str = "projection only";
const PROJECTION_WASM: &str = "projection only (WASM, 1 thread)";
const PROJECTION_NATIVE: &str = "projection only (native, 1 thread)";

/// What one slot of a round runs.
#[derive(Clone)]
enum Mode {
    Kafka,
    Mysql,
    Plain,
    Seed,
    Host(HostMode),
    Scale(HostMode, usize),
    Recovery(HostMode),
    Rebuild(HostMode),
    /// Its name and the components folder (`None`: native flattening).
    Projection(String, Option<PathBuf>),
}

impl Mode {
    fn name(&self) -> String {
        match self {
            Mode::Scale(h, processes) => scale_name_of(&h.mode, *processes),
            other => other.fixed_name().to_owned(),
        }
    }

    fn fixed_name(&self) -> &str {
        match self {
            Mode::Scale(..) => unreachable!("named by scale_name"),
            Mode::Recovery(_) => RECOVERY,
            Mode::Rebuild(_) => REBUILD,
            Mode::Kafka => RAW_KAFKA,
            Mode::Mysql => MYSQL_CEILING,
            Mode::Plain => PLAIN_CEILING,
            Mode::Seed => SEED_DESIGN,
            Mode::Host(h) => &h.mode,
            Mode::Projection(name, _) => name,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let root = std::env::var_os("PROJECTOR_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let ctx = Ctx {
        kafka: env_or("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        mysql_url: env_or(
            "MYSQL_URL",
            "mysql://projector:projector@127.0.0.1:3306/projector",
        ),
        components: std::env::var_os("PROJECTOR_COMPONENTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("build/projections")),
        bin_dir: std::env::current_exe()?
            .parent()
            .context("the bench binary has a folder")?
            .to_path_buf(),
        run: format!("{}", uuid::Uuid::new_v4().simple())[..10].to_owned(),
    };
    // On Ctrl-C the run is dropped, and with it the hosts it started
    // (see `Proc`).
    let outcome = tokio::select! {
        outcome = run(&ctx, &args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // However the run ended: its topics hold up to a few million events
    // (several hundred MB per run at 1M) that no later run reads.
    if let Err(e) = delete_topics(&ctx).await {
        say(format!("could not delete this run's topics: {e:#}"));
    }
    // Each mode drops its own databases; an interrupted one has not.
    if let Err(e) = drop_databases(&ctx).await {
        say(format!("could not drop this run's databases: {e:#}"));
    }
    outcome
}

/// Drops every database of this run (`bench_<run>_*`) that is still there.
async fn drop_databases(ctx: &Ctx) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    let options: sqlx::mysql::MySqlConnectOptions = ctx.mysql_url.parse()?;
    let mut conn = options.connect().await?;
    let pattern = format!("bench\\_{}\\_%", ctx.run);
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?",
    )
    .bind(&pattern)
    .fetch_all(&mut conn)
    .await?;
    for (name,) in names {
        say(format!("dropping database {name}"));
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

/// Deletes every topic of this run (`bench_<run>_*`).
async fn delete_topics(ctx: &Ctx) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &ctx.kafka);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config.create()?;
    let prefix = format!("bench_{}_", ctx.run);
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let names: Vec<&str> = md
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    say(format!(
        "deleting this run's {} topics ({prefix}*)",
        names.len()
    ));
    for r in admin.delete_topics(&names, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("deleting topic {t}: {e}"))?;
    }
    Ok(())
}

async fn run(ctx: &Ctx, args: &Args) -> anyhow::Result<()> {
    let compare: Vec<(String, PathBuf, Option<PathBuf>)> = args
        .compare
        .iter()
        .map(|c| {
            let (label, rest) = c
                .split_once('=')
                .with_context(|| format!("--compare {c}: expected LABEL=PATH[,COMPONENTS_DIR]"))?;
            let (path, components) = match rest.split_once(',') {
                Some((p, d)) => (PathBuf::from(p), Some(PathBuf::from(d))),
                None => (PathBuf::from(rest), None),
            };
            if !path.is_file() {
                bail!("--compare {c}: {} is not a file", path.display());
            }
            if let Some(d) = components.as_ref().filter(|d| !d.is_dir()) {
                bail!("--compare {c}: {} is not a folder", d.display());
            }
            Ok((label.to_owned(), path, components))
        })
        .collect::<anyhow::Result<_>>()?;
    let wanted = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    let n = args.events;
    let m = args.per_event_events.min(n);
    say(format!(
        "run {}: generating and producing {n} events (seed {}); {} runs of each mode, rotated",
        ctx.run, args.seed, args.runs
    ));
    let bin = ctx.bin_dir.join("projector");
    let host = |mode: String, bin: PathBuf, set, ends, n, native, batch| {
        Mode::Host(HostMode {
            mode,
            bin,
            components: None,
            set,
            ends,
            n,
            native,
            batch,
        })
    };
    // Every topic exists before a host subscribes (a host only sees topics
    // created later at its next metadata refresh); each host run gets its
    // own paced stream.
    let started = Instant::now();
    create_topics(ctx, &["main", "small"]).await?;
    let mut generator = Generator::new(args.seed);
    let main_ends = Arc::new(ends_of(
        &produce(ctx, "main", (0..n).map(|_| generator.next_event()), None).await?,
    ));
    let mut generator = Generator::new(args.seed);
    let small_ends = Arc::new(ends_of(
        &produce(ctx, "small", (0..m).map(|_| generator.next_event()), None).await?,
    ));
    say(format!(
        "produced in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let mut modes = Vec::new();
    if wanted("kafka") {
        modes.push(Mode::Kafka);
    }
    if wanted("mysql") {
        modes.push(Mode::Mysql);
    }
    if wanted("plain") {
        modes.push(Mode::Plain);
    }
    if wanted("seed") {
        modes.push(Mode::Seed);
    }
    if wanted("per-event") {
        modes.push(host(
            PER_EVENT.into(),
            bin.clone(),
            "small",
            small_ends.clone(),
            m,
            false,
            1,
        ));
    }
    if wanted("wasm") {
        modes.push(host(
            WASM.into(),
            bin.clone(),
            "main",
            main_ends.clone(),
            n,
            false,
            args.batch,
        ));
        for (label, path, components) in &compare {
            let mut mode = host(
                format!("{WASM} [{label}]"),
                path.clone(),
                "main",
                main_ends.clone(),
                n,
                false,
                args.batch,
            );
            if let Mode::Host(h) = &mut mode {
                h.components = components.clone();
            }
            modes.push(mode);
        }
    }
    let default_host = HostMode {
        mode: WASM.into(),
        bin: bin.clone(),
        components: None,
        set: "main",
        ends: main_ends.clone(),
        n,
        native: false,
        batch: args.batch,
    };
    if wanted("scale") {
        modes.push(Mode::Scale(default_host.clone(), 1));
        modes.push(Mode::Scale(default_host.clone(), 2));
        for (label, path, components) in &compare {
            let other = HostMode {
                mode: format!("{WASM} [{label}]"),
                bin: path.clone(),
                components: components.clone(),
                ..default_host.clone()
            };
            modes.push(Mode::Scale(other.clone(), 1));
            modes.push(Mode::Scale(other, 2));
        }
    }
    if wanted("recovery") {
        modes.push(Mode::Recovery(default_host.clone()));
    }
    if wanted("rebuild") {
        modes.push(Mode::Rebuild(default_host.clone()));
    }
    if wanted("native") {
        modes.push(host(
            NATIVE.into(),
            bin.clone(),
            "main",
            main_ends.clone(),
            n,
            true,
            args.batch,
        ));
    }
    if wanted("projection") {
        modes.push(Mode::Projection(
            PROJECTION_WASM.into(),
            Some(ctx.components.clone()),
        ));
        for (label, _, components) in &compare {
            if let Some(dir) = components {
                modes.push(Mode::Projection(
                    format!("{PROJECTION_WASM} [{label}]"),
                    Some(dir.clone()),
                ));
            }
        }
        modes.push(Mode::Projection(PROJECTION_NATIVE.into(), None));
    }
    let host_runs = modes.iter().filter(|m| matches!(m, Mode::Host(_))).count() * args.runs;
    let latency_sets: Vec<String> = (0..host_runs).map(|i| format!("latency{i}")).collect();
    create_topics(
        ctx,
        &latency_sets.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;

    // Rotated: round r starts with mode r, so no mode always runs first (on
    // a cold page cache) or last.
    let mut results: Vec<RunResult> = Vec::new();
    let mut next_latency = latency_sets.iter();
    for round in 0..args.runs {
        for i in 0..modes.len() {
            let mode = &modes[(i + round) % modes.len()];
            say(format!(
                "round {}/{}: {}",
                round + 1,
                args.runs,
                mode.name()
            ));
            let r = match mode {
                Mode::Kafka => tokio::task::block_in_place(|| raw_consume(ctx, "main", n, round))?,
                Mode::Mysql => mysql_ceiling(ctx, args.seed, n, "ceiling", round).await?,
                Mode::Plain => plain_ceiling(ctx, args.seed, n, round).await?,
                Mode::Seed => seed_design(ctx, "small", m, round).await?,
                Mode::Scale(h, processes) => scale_out(ctx, h, *processes, round).await?,
                Mode::Recovery(h) => recovery(ctx, h, round).await?,
                Mode::Rebuild(h) => shadow_rebuild(ctx, h, round).await?,
                Mode::Projection(name, components) => tokio::task::block_in_place(|| {
                    projection_only(name, components.as_deref(), args.seed, n, round)
                })?,
                Mode::Host(h) => {
                    let set = next_latency.next().expect("one paced stream per host run");
                    host_mode(ctx, h, round, set, args).await?
                }
            };
            say(format!(
                "  {} events: {:.0} events/s steady, {:.2} s to the last commit{}{}{}",
                r.events,
                r.events_per_sec,
                r.wall_secs,
                r.cpu_secs
                    .map_or(String::new(), |c| format!(", {c:.2} s of CPU")),
                match (r.p50_ms, r.p99_ms) {
                    (Some(a), Some(b)) => format!(", paced p50 {a:.1} ms p99 {b:.1} ms"),
                    _ => String::new(),
                },
                r.paced_cpu
                    .as_ref()
                    .map_or(String::new(), |c| format!(" ({})", c.describe()))
            ));
            results.push(r);
        }
    }
    // The per-event mode's reference: the ceiling's tables over its M events.
    let ceiling_small = if wanted("per-event") && m != n {
        Some(mysql_ceiling(ctx, args.seed, m, "ceiling_small", 0).await?)
    } else {
        None
    };

    // Same events, same tables: every run over the N events must agree, and
    // the per-event runs must agree with the ceiling over their M events.
    let mut consistent = {
        let full: Vec<&RunResult> = results
            .iter()
            .filter(|r| {
                r.checksum.is_some()
                    && r.events == n
                    && r.mode != SEED_DESIGN
                    && !r.mode.starts_with(PROJECTION)
            })
            .collect();
        let projected: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.mode.starts_with(PROJECTION))
            .collect();
        full.windows(2).all(|w| w[0].checksum == w[1].checksum)
            && projected.windows(2).all(|w| w[0].checksum == w[1].checksum)
    };
    if let Some(small) = &ceiling_small {
        consistent &= results
            .iter()
            .filter(|r| r.mode == PER_EVENT)
            .all(|r| r.checksum == small.checksum);
    }
    let summaries: Vec<Summary> = modes
        .iter()
        .map(|mode| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.mode == mode.name()).collect();
            Summary::of(&mode.name(), &runs)
        })
        .collect();

    println!();
    println!(
        "projector benchmark: {n} events (seed {}), {} runs of each mode in rotated order on this machine",
        args.seed, args.runs
    );
    println!(
        "{:<44} {:>7} {:>9} {:>17} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "mode (median of the runs)",
        "events",
        "events/s",
        "min-max",
        "spread",
        "wall s",
        "CPU s",
        "p50 ms",
        "p99 ms",
        "RSS MB"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    for s in &summaries {
        println!(
            "{:<44} {:>7} {:>9.0} {:>17} {:>6.0}% {:>8.2} {:>7} {:>7} {:>7} {:>7}",
            s.mode,
            s.events,
            s.events_per_sec,
            format!("{:.0}-{:.0}", s.events_per_sec_min, s.events_per_sec_max),
            s.spread_pct(),
            s.wall_secs,
            opt(s.cpu_secs),
            opt(s.p50_ms),
            opt(s.p99_ms),
            opt(s.peak_rss_mb)
        );
    }
    println!(
        "events/s: steady state, first to last commit; wall s: process start to last commit; \
         latency: due send time to commit of a paced stream, polled every {} ms",
        POLL.as_millis()
    );
    for s in &summaries {
        if let (Some(rate), Some(f)) = (s.paced_rate, s.rate_over_capacity) {
            let cpu = s
                .paced_cpu
                .as_ref()
                .map(|c| format!("; {}", c.describe()))
                .unwrap_or_default();
            println!(
                "paced stream of {:<38} {rate:>6.0} events/s = {:>4.1}% of its capacity{cpu}",
                s.mode,
                100.0 * f
            );
        }
    }
    let cpus = machine_cpus();
    if summaries.iter().any(|s| s.cpu_us_per_event.is_some()) {
        println!(
            "CPU per timed event (µs: the host, or this process for a ceiling, + MariaDB + Kafka) \
             and the most {cpus} cores allow at that cost:"
        );
    }
    for s in &summaries {
        if let (Some(w), Some(most)) = (&s.cpu_us_per_event, s.cpu_bound_events_per_sec) {
            let part = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
            println!(
                "  {:<44} {:>5.0} µs ({:.0} + {} + {}): at most {most:>6.0} events/s",
                s.mode,
                w.total,
                w.driver,
                part(w.mariadb),
                part(w.kafka)
            );
        }
    }
    let rate = |name: &str| {
        summaries
            .iter()
            .find(|s| s.mode == name)
            .map(|s| s.events_per_sec)
    };
    let cpu_bound = |name: &str| {
        summaries
            .iter()
            .find(|s| s.mode == name)
            .and_then(|s| s.cpu_bound_events_per_sec)
    };
    let mut ratios = serde_json::Map::new();
    let mut ratio = |label: String, key: &str, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            println!("{label:<60} {:.2}", a / b);
            ratios.insert(key.into(), json!(a / b));
        }
    };
    ratio(
        "default / executor ceiling".into(),
        "default_over_executor_ceiling",
        rate(WASM),
        rate(MYSQL_CEILING),
    );
    ratio(
        "default / plain ceiling".into(),
        "default_over_plain_ceiling",
        rate(WASM),
        rate(PLAIN_CEILING),
    );
    ratio(
        "executor ceiling / plain ceiling (the executor's SQL shape)".into(),
        "executor_over_plain_ceiling",
        rate(MYSQL_CEILING),
        rate(PLAIN_CEILING),
    );
    ratio(
        if m == n {
            "default / seed design".into()
        } else {
            format!("default / seed design (seed over the first {m} events)")
        },
        "default_over_seed_design",
        rate(WASM),
        rate(SEED_DESIGN),
    );
    // Whether a target can be met on this machine at all: the most the
    // default could do with every core busy with its work alone, over the
    // mode it is compared with.
    ratio(
        "  at most, at the default's CPU per event: / executor ceiling".into(),
        "default_cpu_bound_over_executor_ceiling",
        cpu_bound(WASM),
        rate(MYSQL_CEILING),
    );
    ratio(
        "  at most, at the default's CPU per event: / plain ceiling".into(),
        "default_cpu_bound_over_plain_ceiling",
        cpu_bound(WASM),
        rate(PLAIN_CEILING),
    );
    ratio(
        "  at most, at the default's CPU per event: / seed design".into(),
        "default_cpu_bound_over_seed_design",
        cpu_bound(WASM),
        rate(SEED_DESIGN),
    );
    ratio(
        "per-event / seed design (same events)".into(),
        "per_event_over_seed_design",
        rate(PER_EVENT),
        rate(SEED_DESIGN),
    );
    ratio(
        "default / Kafka consume".into(),
        "default_over_kafka_consume",
        rate(WASM),
        rate(RAW_KAFKA),
    );
    ratio(
        if m == n {
            "default / per-event".into()
        } else {
            format!("default / per-event (per-event over the first {m} events)")
        },
        "default_over_per_event",
        rate(WASM),
        rate(PER_EVENT),
    );
    ratio(
        "scale-out: 2 processes / 1 process".into(),
        "two_processes_over_one",
        rate(&scale_name(2)),
        rate(&scale_name(1)),
    );
    ratio(
        "default (WASM) / native".into(),
        "wasm_over_native",
        rate(WASM),
        rate(NATIVE),
    );
    ratio(
        "  at most, at each one's CPU per event: WASM / native".into(),
        "wasm_cpu_bound_over_native_cpu_bound",
        cpu_bound(WASM),
        cpu_bound(NATIVE),
    );
    ratio(
        "projection only: WASM / native (the sandbox's own cost)".into(),
        "projection_wasm_over_native",
        rate(PROJECTION_WASM),
        rate(PROJECTION_NATIVE),
    );
    for (label, _, _) in &compare {
        ratio(
            format!("projection only: WASM / [{label}]"),
            &format!("projection_wasm_over_{label}"),
            rate(PROJECTION_WASM),
            rate(&format!("{PROJECTION_WASM} [{label}]")),
        );
        ratio(
            format!("scale-out, 2 processes: default / [{label}]"),
            &format!("two_processes_over_{label}"),
            rate(&scale_name(2)),
            rate(&scale_name_of(&format!("{WASM} [{label}]"), 2)),
        );
        let other = format!("{WASM} [{label}]");
        ratio(
            format!("default / [{label}] (events/s)"),
            &format!("default_over_{label}"),
            rate(WASM),
            rate(&other),
        );
        let cpu = |name: &str| {
            summaries
                .iter()
                .find(|s| s.mode == name)
                .and_then(|s| s.cpu_secs)
        };
        ratio(
            format!("default / [{label}] (CPU s)"),
            &format!("default_over_{label}_cpu"),
            cpu(WASM),
            cpu(&other),
        );
    }
    if let Some(r) = summaries.iter().find(|s| s.mode == RECOVERY) {
        println!(
            "{:<60} {:.2} s",
            "restart to first commit after kill -9 (static membership)", r.wall_secs
        );
        ratios.insert("restart_to_first_commit_secs".into(), json!(r.wall_secs));
    }
    println!(
        "table checksums: {}",
        if consistent {
            "equal across modes and runs"
        } else {
            "DIFFER"
        }
    );
    std::fs::create_dir_all(&args.out)?;
    let base = args.out.join(format!("bench-{n}"));
    let report = json!({
        "events": n,
        "per_event_events": m,
        "seed": args.seed,
        "runs": args.runs,
        "latency_rate": args.latency_rate,
        "per_event_latency_rate": args.per_event_latency_rate,
        "latency_secs": args.latency_secs,
        "poll_ms": POLL.as_millis() as u64,
        "summaries": summaries,
        "results": results,
        "ratios": ratios,
        "checksums_equal": consistent,
        "machine": {"cpus": machine_cpus()},
    });
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(
        base.with_extension("svg"),
        svg_chart(&summaries, n, args.runs),
    )?;
    println!(
        "wrote {} and {}",
        base.with_extension("json").display(),
        base.with_extension("svg").display()
    );
    if !consistent {
        bail!("the runs ended with different tables");
    }
    Ok(())
}
