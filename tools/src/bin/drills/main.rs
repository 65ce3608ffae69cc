//! `drills`: repeatable fault drills against the real stack (`scripts/drills`).
//!
//! Each drill streams generated events (or API calls) through real processes
//! while it breaks something, then prints one line: events produced, events
//! applied, lost, duplicated effects. Lost counts produced events missing from
//! `processed_events` and rows missing against the tables the independent
//! oracle computes from the same events (`projector_tools::oracle`: no host
//! code); duplicated counts extra or different rows and repeated row writes
//! beyond the oracle's (an event applied twice writes its rows again: see
//! `projector_tools::audit`).
//! The run fails unless both are 0 for every drill.
//!
//! The drills restart the shared Kafka and MariaDB of `scripts/stack`: run
//! them alone, not beside the test suite.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use projector_tools::generate::{Generated, Generator};
use projector_tools::process::Proc;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::MySqlPool;

mod chaos;
mod edges;

#[derive(Parser)]
#[command(
    about = "Fault drills: kill -9, broker restart, MariaDB outage, SIGTERM during it, backend kill, hot reload, edge cases, replay under load, misbehaving components"
)]
struct Args {
    /// Fewer events per drill (the form scripts/test runs).
    #[arg(long)]
    short: bool,
    /// Run only these drills (kill9, broker, mariadb, sigterm, backend, reload, edges, replay, chaos).
    #[arg(long = "only")]
    only: Vec<String>,
    /// Seed of the generated streams and the random kill points.
    #[arg(long, default_value_t = 20261126)]
    seed: u64,
    /// Keep the process logs even when every drill passes.
    #[arg(long)]
    keep_logs: bool,
    /// How long MariaDB stays down in the outage drill (seconds).
    #[arg(long, default_value_t = 20)]
    outage_secs: u64,
}

struct Ctx {
    root: PathBuf,
    bin_dir: PathBuf,
    kafka: String,
    mysql_url: String,
    mongo: String,
    scratch: tempfile::TempDir,
    short: bool,
    rng: rand::rngs::StdRng,
    seed: u64,
}

fn env_or(k: &str, default: &str) -> String {
    std::env::var(k)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("[drills] {msg}");
}

struct Db {
    name: String,
    url: String,
    pool: MySqlPool,
}

impl Ctx {
    fn unique(&self, what: &str) -> String {
        format!("drill_{what}_{}", uuid::Uuid::new_v4().simple())
    }

    /// A fresh database, migrated, with the write audit installed.
    async fn fresh_db(&self) -> anyhow::Result<Db> {
        let name = self.unique("db");
        let (url, pool) =
            projector_tools::snapshot::create_database(&self.mysql_url, &name).await?;
        projector_host::sink::migrate_with_builtin_tables(&pool).await?;
        projector_tools::audit::install(&pool).await?;
        Ok(Db { name, url, pool })
    }

    async fn drop_db(&self, db: Db) {
        let _ = sqlx::query(&format!("DROP DATABASE `{}`", db.name))
            .execute(&db.pool)
            .await;
        db.pool.close().await;
    }

    fn topics(prefix: &str) -> String {
        ["user", "supplier", "product", "order", "post"]
            .iter()
            .map(|d| format!("{prefix}.{d}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_host(&self, h: &HostSpec<'_>, log_name: &str) -> anyhow::Result<Proc> {
        self.spawn_host_with(h, log_name, &[])
    }

    /// [`Ctx::spawn_host`] with more environment.
    fn spawn_host_with(
        &self,
        h: &HostSpec<'_>,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join(log_name))?;
        let mut cmd = Command::new(self.bin_dir.join("projector"));
        cmd.arg("run");
        if h.native {
            cmd.arg("--native");
        }
        cmd.env("MYSQL_URL", h.db_url)
            .env("KAFKA_BOOTSTRAP", &self.kafka)
            .env("PROJECTOR_GROUP_ID", h.group)
            .env("PROJECTOR_TOPICS", Ctx::topics(h.prefix))
            .env("PROJECTOR_COMPONENTS_DIR", h.components)
            .env(
                "PROJECTOR_ADMIN_ADDR",
                format!("127.0.0.1:{}", h.admin_port),
            )
            .env("PROJECTOR_LAG_INTERVAL_MS", "500")
            .env(
                "PROJECTOR_WATCH_COMPONENTS",
                if h.watch { "true" } else { "false" },
            )
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.spawn()
            .map(Proc)
            .context("the projector binary starts (cargo build first)")
    }

    fn components(&self) -> PathBuf {
        std::env::var_os("PROJECTOR_COMPONENTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("build/projections"))
    }

    /// A test-only component (`build/test-projections/<name>.wasm`).
    fn test_component(&self, name: &str) -> PathBuf {
        self.components()
            .join(format!("../test-projections/{name}.wasm"))
    }

    /// A scratch copy of the five components, for drills that swap one.
    fn components_copy(&self) -> anyhow::Result<PathBuf> {
        let dir = self.scratch.path().join(self.unique("components"));
        std::fs::create_dir_all(&dir)?;
        for d in ["user", "supplier", "product", "order", "post"] {
            std::fs::copy(
                self.components().join(format!("{d}.wasm")),
                dir.join(format!("{d}.wasm")),
            )?;
        }
        Ok(dir)
    }

    fn stack(&self, args: &[&str]) -> anyhow::Result<()> {
        say(format!("scripts/stack {}", args.join(" ")));
        let out = Command::new(self.root.join("scripts/stack"))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "scripts/stack {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.producer_with(&[])
    }

    /// A producer with settings of `extra` on top of the backend's.
    fn producer_with(&self, extra: &[(&str, &str)]) -> anyhow::Result<FutureProducer> {
        let mut config = ClientConfig::new();
        let kafka = events::KafkaSettings {
            bootstrap_servers: self.kafka.clone(),
            ..Default::default()
        };
        for (k, v) in kafka.producer_config() {
            config.set(k, v);
        }
        // A broker restart on a stack holding thousands of test partitions
        // takes longer than the backend's 30 s: the drills' producers wait.
        config.set("message.timeout.ms", "180000");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        Ok(config.create()?)
    }

    fn stream(&mut self, full: usize) -> Vec<Generated> {
        let n = if self.short { full / 4 } else { full };
        self.seed += 1;
        Generator::stream(self.seed, n)
    }
}

/// One drill's world: a generated stream, a fresh database, fresh topics
/// and group, a free admin port.
struct Run {
    events: Vec<Generated>,
    /// Events a replay projected a second time (the replay starts a new
    /// audit generation of their tables: their writes are expected again).
    replayed: Vec<Generated>,
    db: Db,
    prefix: String,
    group: String,
    port: u16,
    components: PathBuf,
}

impl Run {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spec(&self, watch: bool) -> HostSpec<'_> {
        HostSpec {
            db_url: &self.db.url,
            prefix: &self.prefix,
            group: &self.group,
            components: &self.components,
            admin_port: self.port,
            native: false,
            watch,
        }
    }

    /// Waits for the producer, then until every event is applied.
    async fn all_applied(
        &self,
        producing: tokio::task::JoinHandle<anyhow::Result<usize>>,
    ) -> anyhow::Result<()> {
        let produced = producing.await??;
        anyhow::ensure!(
            produced == self.events.len(),
            "only {produced} events acknowledged"
        );
        wait_count(
            &self.db.pool,
            "SELECT COUNT(*) FROM processed_events",
            self.events.len() as i64,
            Duration::from_secs(300),
        )
        .await
    }
}

impl Ctx {
    async fn begin(&mut self, components: PathBuf) -> anyhow::Result<Run> {
        Ok(Run {
            events: self.stream(12_000),
            replayed: Vec::new(),
            db: self.fresh_db().await?,
            prefix: self.unique("t"),
            group: self.unique("g"),
            port: free_port(),
            components,
        })
    }

    /// Produces the run's events over about `over`, in the background.
    fn start_producing(
        &self,
        run: &Run,
        over: Duration,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<usize>>> {
        let producer = self.producer()?;
        let (events, prefix) = (run.events.clone(), run.prefix.clone());
        Ok(tokio::spawn(async move {
            produce(&producer, &prefix, &events, over).await
        }))
    }
}

struct HostSpec<'a> {
    db_url: &'a str,
    prefix: &'a str,
    group: &'a str,
    components: &'a Path,
    admin_port: u16,
    native: bool,
    watch: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Hands `e` to the producer for `<prefix>.<domain>`, keyed by its entity.
fn send(
    producer: &FutureProducer,
    prefix: &str,
    e: &Generated,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let topic = format!("{prefix}.{}", e.domain);
    producer
        .send_result(
            FutureRecord::to(&topic)
                .key(&e.entity_id)
                .payload(&e.payload),
        )
        .map_err(|(e, _)| e.into())
}

/// Produces the events to `<prefix>.<domain>` over about `over`, returning
/// once every one is acknowledged.
async fn produce(
    producer: &FutureProducer,
    prefix: &str,
    events: &[Generated],
    over: Duration,
) -> anyhow::Result<usize> {
    let chunks = (over.as_millis() / 50).max(1) as usize;
    let per = events.len().div_ceil(chunks).max(1);
    let mut pending = Vec::new();
    for chunk in events.chunks(per) {
        for e in chunk {
            pending.push(send(producer, prefix, e)?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acked = 0;
    for p in pending {
        if p.await?.is_ok() {
            acked += 1;
        }
    }
    Ok(acked)
}

async fn count(pool: &MySqlPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1)
}

async fn wait_count(pool: &MySqlPool, sql: &str, n: i64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = count(pool, sql).await;
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{sql} is {got}, expected {n} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Rows as comparable strings, per table.
fn rows(d: &projector_tools::snapshot::Dump) -> Vec<String> {
    d.iter()
        .flat_map(|(t, rows)| rows.iter().map(move |r| format!("{t}:{r:?}")))
        .collect()
}

/// (missing, extra) rows of `got` against `want`, as multisets.
fn diff(
    got: &projector_tools::snapshot::Dump,
    want: &projector_tools::snapshot::Dump,
) -> (usize, usize) {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows(want) {
        *counts.entry(r).or_insert(0) += 1;
    }
    for r in rows(got) {
        *counts.entry(r).or_insert(0) -= 1;
    }
    let missing = counts
        .values()
        .filter(|v| **v > 0)
        .map(|v| *v as usize)
        .sum();
    let extra = counts
        .values()
        .filter(|v| **v < 0)
        .map(|v| (-*v) as usize)
        .sum();
    (missing, extra)
}

/// The tables the independent oracle (`projector_tools::oracle`) computes
/// from the events, and the repeated row writes the audit counted while it
/// did.
async fn reference(
    ctx: &Ctx,
    events: &[Generated],
) -> anyhow::Result<(projector_tools::snapshot::Dump, i64)> {
    let db = ctx.fresh_db().await?;
    projector_tools::oracle::apply(&db.pool, events).await?;
    let d = projector_tools::snapshot::dump(&db.pool).await?;
    let repeats = projector_tools::audit::repeated_writes(&db.pool).await?;
    ctx.drop_db(db).await;
    Ok((d, repeats))
}

struct Verdict {
    name: &'static str,
    produced: usize,
    applied: i64,
    lost: usize,
    duplicated: usize,
    note: String,
}

impl Verdict {
    fn print(&self) {
        println!(
            "drill {:<8} produced {:>6}  applied {:>6}  lost {}  duplicated {}  {}",
            self.name, self.produced, self.applied, self.lost, self.duplicated, self.note
        );
    }
}

/// Compares a drill's database with the events produced and a clean
/// reference run, then drops the database.
async fn judge(ctx: &Ctx, name: &'static str, run: Run, note: String) -> anyhow::Result<Verdict> {
    let (db, events) = (&run.db, run.events.as_slice());
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM processed_events")
        .fetch_all(&db.pool)
        .await?;
    let applied_ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let lost_events = events
        .iter()
        .filter(|e| !applied_ids.contains(e.event_id.as_str()))
        .count();
    let (want, want_repeats) = reference(ctx, events).await?;
    let got = projector_tools::snapshot::dump(&db.pool).await?;
    let got_repeats = projector_tools::audit::repeated_writes(&db.pool).await?;
    let (missing, extra) = diff(&got, &want);
    // Repeated row writes beyond the clean run's are events applied more
    // than once (lost writes show as missing or different rows).
    let surplus = got_repeats - want_repeats;
    let verdict = Verdict {
        name,
        produced: events.len(),
        applied: applied_ids.len() as i64,
        lost: lost_events + missing,
        duplicated: extra + surplus.max(0) as usize,
        note: format!(
            "{note} [repeated row writes {got_repeats}, oracle {want_repeats}{}]",
            if run.replayed.is_empty() {
                String::new()
            } else {
                format!(" with {} events replayed", run.replayed.len())
            }
        ),
    };
    ctx.drop_db(run.db).await;
    Ok(verdict)
}

async fn http_status(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn wait_http(
    url: &str,
    want: u16,
    contains: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let (code, body) = http_status(url).await;
        if code == want && body.contains(contains) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "{url} answered {code} {body:.300} instead of {want} with {contains:?} within {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the host at `url` reports ready.
async fn wait_ready(url: &str, timeout: Duration) -> anyhow::Result<Duration> {
    wait_http(&format!("{url}/health/ready"), 200, "ready", timeout).await
}

async fn metric(url: &str, prefix: &str) -> f64 {
    let (_, text) = http_status(&format!("{url}/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Spawns the host of `run` as static member `instance` of its group, so a
/// restart takes its partitions back at once.
fn spawn_static(ctx: &Ctx, run: &Run, instance: &str) -> anyhow::Result<Proc> {
    ctx.spawn_host_with(
        &run.spec(false),
        "kill9.log",
        &[("PROJECTOR_INSTANCE_ID", instance)],
    )
}

/// How long after `spawned` the host committed its first batch, if it did
/// before `until` (its events counter starts at 0 in each process).
async fn first_commit(run: &Run, spawned: Instant, until: Instant) -> Option<Duration> {
    while Instant::now() < until {
        if metric(&run.url(), "projector_events_total").await > 0.0 {
            return Some(spawned.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

async fn drill_kill9(ctx: &mut Ctx) -> anyhow::Result<Verdict> {
    let run = ctx.begin(ctx.components()).await?;
    let over = Duration::from_secs(if ctx.short { 6 } else { 15 });
    let producing = ctx.start_producing(&run, over)?;
    let instance = format!("{}-host", run.group);
    let mut host = spawn_static(ctx, &run, &instance)?;
    let mut kills = 0;
    let mut restarts = Vec::new();
    let mut spawned = Instant::now();
    for _ in 0..5 {
        let wait = Duration::from_millis(ctx.rng.random_range(400..1600));
        if let Some(t) = first_commit(&run, spawned, spawned + wait).await {
            restarts.push(t);
        }
        tokio::time::sleep((spawned + wait).saturating_duration_since(Instant::now())).await;
        kill9(&mut host);
        kills += 1;
        let pause = ctx.rng.random_range(0..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        host = spawn_static(ctx, &run, &instance)?;
        spawned = Instant::now();
    }
    // The last restart, given all the time it needs.
    let last = first_commit(&run, spawned, spawned + Duration::from_secs(30)).await;
    run.all_applied(producing).await?;
    sigterm(&mut host);
    let last = last.map_or("none (nothing was left)".to_owned(), |t| {
        format!("{:.2} s", t.as_secs_f64())
    });
    let slowest = restarts
        .iter()
        .max()
        .map_or("-".to_owned(), |t| format!("{:.2} s", t.as_secs_f64()));
    judge(
        ctx,
        "kill9",
        run,
        format!(
            "({kills} kills with SIGKILL; start to first commit: slowest {slowest} of {} measured before the next kill, after the last kill {last})",
            restarts.len()
        ),
    )
    .await
}

async fn drill_broker(ctx: &mut Ctx) -> anyhow::Result<Verdict> {
    let run = ctx.begin(ctx.components()).await?;
    let mut host = ctx.spawn_host(&run.spec(false), "broker.log")?;
    let over = Duration::from_secs(if ctx.short { 8 } else { 15 });
    let producing = ctx.start_producing(&run, over)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    ctx.stack(&["restart", "kafka"])?;
    let restart = started.elapsed();
    run.all_applied(producing).await?;
    let dead = metric(&run.url(), "projector_dead_letters_total").await;
    anyhow::ensure!(
        host.try_wait()?.is_none(),
        "the host exited during the broker restart"
    );
    sigterm(&mut host);
    anyhow::ensure!(dead == 0.0, "{dead} events were dead-lettered");
    let note = format!(
        "(broker down and back in {:.1} s, 0 dead letters)",
        restart.as_secs_f64()
    );
    judge(ctx, "broker", run, note).await
}

async fn drill_mariadb(ctx: &mut Ctx, outage: Duration) -> anyhow::Result<Verdict> {
    let run = ctx.begin(ctx.components()).await?;
    let mut host = ctx.spawn_host(&run.spec(false), "mariadb.log")?;
    let ready_url = format!("{}/health/ready", run.url());
    wait_http(&ready_url, 200, "ready", Duration::from_secs(30)).await?;
    let producing = ctx.start_producing(&run, outage + Duration::from_secs(6))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctx.stack(&["stop", "mariadb"])?;
    let down = Instant::now();
    let degraded = wait_http(&ready_url, 503, "mysql", Duration::from_secs(20)).await?;
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    ctx.stack(&["start", "mariadb"])?;
    let ready = wait_http(&ready_url, 200, "ready", Duration::from_secs(90)).await?;
    run.all_applied(producing).await?;
    let dead = metric(&run.url(), "projector_dead_letters_total").await;
    let retried = metric(&run.url(), "projector_transient_errors_total").await;
    anyhow::ensure!(
        host.try_wait()?.is_none(),
        "the host exited during the outage"
    );
    sigterm(&mut host);
    anyhow::ensure!(
        dead == 0.0,
        "{dead} events were dead-lettered during the outage"
    );
    let note = format!(
        "(down {:.0} s; degraded after {:.1} s, ready {:.1} s after restart; {retried} retried batches, 0 dead letters)",
        outage.as_secs_f64(),
        degraded.as_secs_f64(),
        ready.as_secs_f64()
    );
    judge(ctx, "mariadb", run, note).await
}

/// SIGTERM while the host retries a batch against a stopped MariaDB: it must
/// exit cleanly at once (no panic, exit status 0), and a new host must then
/// apply everything exactly once.
async fn drill_sigterm(ctx: &mut Ctx) -> anyhow::Result<Verdict> {
    let run = ctx.begin(ctx.components()).await?;
    let mut host = ctx.spawn_host(&run.spec(false), "sigterm.log")?;
    let ready_url = format!("{}/health/ready", run.url());
    wait_http(&ready_url, 200, "ready", Duration::from_secs(30)).await?;
    let producing = ctx.start_producing(&run, Duration::from_secs(6))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctx.stack(&["stop", "mariadb"])?;
    // The loop is waiting out a transient failure when readiness says so.
    let stopped = async {
        wait_http(&ready_url, 503, "retrying", Duration::from_secs(30)).await?;
        let asked = Instant::now();
        Command::new("kill")
            .arg("-TERM")
            .arg(host.id().to_string())
            .status()?;
        loop {
            if let Some(status) = host.try_wait()? {
                break anyhow::Ok((status, asked.elapsed()));
            }
            if asked.elapsed() > Duration::from_secs(30) {
                kill9(&mut host);
                bail!("the host did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    ctx.stack(&["start", "mariadb"])?;
    let (status, took) = stopped?;
    let log = std::fs::read_to_string(ctx.scratch.path().join("sigterm.log"))?;
    anyhow::ensure!(
        status.success() && !log.contains("panicked"),
        "the host exited with {status} after SIGTERM during the outage; its log ends: {}",
        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    );
    let mut host = ctx.spawn_host(&run.spec(false), "sigterm.log")?;
    run.all_applied(producing).await?;
    sigterm(&mut host);
    let note = format!(
        "(SIGTERM while retrying against a stopped MariaDB: exit 0 in {:.2} s)",
        took.as_secs_f64()
    );
    judge(ctx, "sigterm", run, note).await
}

fn spawn_backend(
    ctx: &Ctx,
    port: u16,
    database: &str,
    prefix: &str,
    relay: bool,
) -> anyhow::Result<Proc> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.scratch.path().join("backend.log"))?;
    Command::new(ctx.bin_dir.join("projector-backend"))
        .env("MONGODB_URI", &ctx.mongo)
        .env("MONGODB_DATABASE", database)
        .env("KAFKA_BOOTSTRAP", &ctx.kafka)
        .env("BACKEND_ADDR", format!("127.0.0.1:{port}"))
        .env("BACKEND_TOPIC_PREFIX", format!("{prefix}."))
        .env("BACKEND_RELAY", if relay { "on" } else { "off" })
        // The backend logs to stdout.
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map(Proc)
        .context("the projector-backend binary starts (cargo build first)")
}

/// Creates users through the API; returns the ids the API acknowledged.
async fn create_users(api: &str, n: usize, tag: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    for i in 0..n {
        let body = serde_json::json!({"email": format!("{tag}{i}@example.com"), "password": "drill password", "display_name": format!("{tag} {i}")});
        if let Ok(r) = client.post(format!("{api}/users")).json(&body).send().await
            && r.status().is_success()
            && let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(id) = v["id"].as_str()
        {
            acked.push(id.to_owned());
        }
    }
    acked
}

/// The ids in `users`.
async fn user_ids(pool: &MySqlPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT user_id FROM users")
        .fetch_all(pool)
        .await?)
}

/// How many ids of `want` are not in `ids`.
fn missing(ids: &[String], want: &[String]) -> usize {
    let present: HashSet<&str> = ids.iter().map(String::as_str).collect();
    want.iter()
        .filter(|id| !present.contains(id.as_str()))
        .count()
}

/// Waits until every id of `want` is in `users`.
async fn wait_for_ids(pool: &MySqlPool, want: &[String], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let missing = missing(&user_ids(pool).await?, want);
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{missing} acknowledged users not in the projection within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids in `users` once no new row has arrived for `quiet`.
async fn settled_ids(pool: &MySqlPool, quiet: Duration) -> anyhow::Result<Vec<String>> {
    let mut ids = user_ids(pool).await?;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = user_ids(pool).await?;
        if now.len() != ids.len() {
            since = Instant::now();
        }
        ids = now;
    }
    Ok(ids)
}

async fn drill_backend(ctx: &mut Ctx) -> anyhow::Result<Verdict> {
    let n = if ctx.short { 60 } else { 300 };
    let db = ctx.fresh_db().await?;
    let prefix = ctx.unique("t");
    let group = ctx.unique("g");
    let database = ctx.unique("mongo");
    let components = ctx.components();
    let mut host = ctx.spawn_host(
        &HostSpec {
            db_url: &db.url,
            prefix: &prefix,
            group: &group,
            components: &components,
            admin_port: 0,
            native: false,
            watch: false,
        },
        "backend-host.log",
    )?;
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    // 1. Written, never published: the relay is off, then the backend dies.
    let mut backend = spawn_backend(ctx, port, &database, &prefix, false)?;
    wait_http(&format!("{api}/health"), 200, "", Duration::from_secs(30)).await?;
    let mut acked = create_users(&api, n, "unpublished").await;
    kill9(&mut backend);
    // 2. With the relay on, killed at random points while writing.
    let mut kills = 1;
    for round in 0..3 {
        backend = spawn_backend(ctx, port, &database, &prefix, true)?;
        wait_http(&format!("{api}/health"), 200, "", Duration::from_secs(30)).await?;
        let writer = {
            let api = api.clone();
            tokio::spawn(async move { create_users(&api, n, &format!("round{round}-")).await })
        };
        let wait = ctx.rng.random_range(100..800);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if round < 2 {
            kill9(&mut backend);
            kills += 1;
        }
        acked.extend(writer.await?);
    }
    // Unacknowledged writes that landed also count as rows, so a row count
    // reaching the number acknowledged says nothing: wait for every
    // acknowledged id, then for the relay to settle (no new row for 2 s).
    let found = wait_for_ids(&db.pool, &acked, Duration::from_secs(120)).await;
    let present = settled_ids(&db.pool, Duration::from_secs(2)).await?;
    sigterm(&mut backend);
    sigterm(&mut host);
    let lost = missing(&present, &acked);
    let created: i64 = count(
        &db.pool,
        "SELECT COUNT(*) FROM processed_events WHERE event_type = 'user.created'",
    )
    .await;
    // An event applied twice writes its row again.
    let repeats = projector_tools::audit::repeated_writes(&db.pool).await?;
    if let Err(e) = found
        && lost == 0
    {
        return Err(e);
    }
    let v = Verdict {
        name: "backend",
        produced: acked.len(),
        applied: created,
        lost,
        // An entity created twice, or one event applied twice.
        duplicated: (created - present.len() as i64).max(0) as usize + repeats.max(0) as usize,
        note: format!(
            "({kills} backend kills, {n} users written with the relay off before the first; unacknowledged writes that landed: {})",
            present.len().saturating_sub(acked.len())
        ),
    };
    ctx.drop_db(db).await;
    Ok(v)
}

/// Deletes the messages of `topic`'s `partition` below `offset`, as
/// retention would.
async fn delete_records_below(
    kafka: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()?;
    let mut upto = rdkafka::TopicPartitionList::new();
    upto.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))?;
    admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .context("delete records")?;
    Ok(())
}

async fn drill_reload(ctx: &mut Ctx) -> anyhow::Result<Verdict> {
    let dir = ctx.components_copy()?;
    let run = ctx.begin(dir.clone()).await?;
    let url = run.url();
    let mut host = ctx.spawn_host(&run.spec(true), "reload.log")?;
    wait_ready(&url, Duration::from_secs(30)).await?;
    let over = Duration::from_secs(if ctx.short { 8 } else { 15 });
    let producing = ctx.start_producing(&run, over)?;
    let user = dir.join("user.wasm");
    let original = std::fs::read(&user)?;
    let install = |bytes: &[u8]| -> anyhow::Result<()> {
        let tmp = dir.join(".user.wasm.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &user)?;
        Ok(())
    };
    let mut swaps = 0;
    for i in 0..10 {
        if i == 5 {
            install(&original[..original.len() / 3])?;
            wait_http(
                &format!("{url}/metrics"),
                200,
                "projector_component_reloads_total{domain=\"user\",outcome=\"refused\"} 1",
                Duration::from_secs(20),
            )
            .await?;
            continue;
        }
        let build = projector_tools::rebuilt(&original, &format!("drill build {i}"));
        let digest = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&build))
        };
        install(&build)?;
        wait_http(
            &format!("{url}/status.json"),
            200,
            &digest,
            Duration::from_secs(20),
        )
        .await?;
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.all_applied(producing).await?;
    let builds = count(
        &run.db.pool,
        "SELECT COUNT(DISTINCT component) FROM processed_events WHERE event_type LIKE 'user.%'",
    )
    .await;
    sigterm(&mut host);
    let note = format!(
        "({swaps} swaps and 1 broken build refused; user events projected by {builds} builds)"
    );
    judge(ctx, "reload", run, note).await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let root = std::env::var_os("PROJECTOR_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut ctx = Ctx {
        root,
        bin_dir,
        kafka: env_or("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        mysql_url: env_or(
            "MYSQL_URL",
            "mysql://projector:projector@127.0.0.1:3306/projector",
        ),
        mongo: env_or("MONGODB_URI", "mongodb://127.0.0.1:27017/"),
        scratch: tempfile::Builder::new()
            .prefix("projector-drills-")
            .tempdir()
            .expect("a scratch folder"),
        short: args.short,
        rng: rand::rngs::StdRng::seed_from_u64(args.seed),
        seed: args.seed,
    };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut failed = 0;
    let outage = Duration::from_secs(args.outage_secs);
    for name in [
        "kill9", "broker", "mariadb", "sigterm", "backend", "reload", "edges", "replay", "chaos",
    ] {
        if !wanted(name) {
            continue;
        }
        say(format!("running drill {name}"));
        let result = match name {
            "kill9" => drill_kill9(&mut ctx).await,
            "broker" => drill_broker(&mut ctx).await,
            "mariadb" => drill_mariadb(&mut ctx, outage).await,
            "sigterm" => drill_sigterm(&mut ctx).await,
            "backend" => drill_backend(&mut ctx).await,
            "reload" => drill_reload(&mut ctx).await,
            "edges" => edges::drill_edges(&mut ctx).await,
            "replay" => edges::drill_replay(&mut ctx).await,
            _ => chaos::drill_chaos(&mut ctx).await,
        };
        match result {
            Ok(v) => {
                v.print();
                if v.lost != 0 || v.duplicated != 0 {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("drill {name:<8} FAILED: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        let kept = ctx.scratch.keep();
        say(format!(
            "{failed} drill(s) failed; process logs kept in {}",
            kept.display()
        ));
        std::process::ExitCode::FAILURE
    } else {
        if args.keep_logs {
            say(format!(
                "process logs kept in {}",
                ctx.scratch.keep().display()
            ));
        }
        std::process::ExitCode::SUCCESS
    }
}
