//! `bench`: projection throughput, latency and memory against the raw
//! ceilings and the per-event design, in one run (`scripts/bench`).
//!
//! 1. Generates N events (seeded, `projector_tools::generate`) into fresh
//!    topics, plus a smaller backlog of the first M events for the slow
//!    per-event mode, and a latency stream.
//! 2. Measures, on this machine in this run:
//!    - raw Kafka consume: the N messages read and their envelopes decoded;
//!    - MySQL ceiling: the row writes of the N events (flattened beforehand,
//!      untimed) executed with the executor's multi-row statements in
//!      5,000-event transactions: no Kafka, JSON, WASM or bookkeeping;
//!    - the host (`projector run`, a child process) per-event (batch 1, on
//!      the M backlog), batched with the WASM components (the default), and
//!      batched with the flattening compiled in (`--native`).
//!
//!    Host throughput is events / (last - first `processed_at`) of its
//!    backlog; then each host gets a stream at a fixed rate and the p50/p99
//!    of commit time minus send time are taken; peak RSS is the host's
//!    `VmHWM`.
//! 3. Checks that every run over the same events ended with the same tables
//!    (an in-database checksum), and prints a table, a JSON file and an SVG
//!    chart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use projector_tools::generate::{Generated, Generator};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::{Connection as _, MySqlPool, Row as _};

#[derive(Parser)]
#[command(about = "Benchmark the projection modes against the raw ceilings")]
struct Args {
    /// Events in the stream.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events the per-event mode projects (it is ~50x slower).
    #[arg(long, default_value_t = 5_000)]
    per_event_events: usize,
    /// Produce rate of the latency runs (events per second).
    #[arg(long, default_value_t = 500)]
    latency_rate: usize,
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
    /// Only these modes (kafka, mysql, per-event, wasm, native).
    #[arg(long = "only")]
    only: Vec<String>,
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

#[derive(Debug, Clone, serde::Serialize)]
struct ModeResult {
    mode: &'static str,
    events: usize,
    seconds: f64,
    events_per_sec: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    peak_rss_mb: Option<f64>,
    checksum: Option<String>,
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

/// Produces events to `bench_<run>_<set>.<domain>`; with a rate, paced and
/// returning each event's send time.
async fn produce(
    ctx: &Ctx,
    set: &str,
    events: impl Iterator<Item = Generated>,
    rate: Option<usize>,
) -> anyhow::Result<(usize, HashMap<String, SystemTime>)> {
    let producer = ctx.producer()?;
    let mut sent = HashMap::new();
    let mut pending = std::collections::VecDeque::new();
    let started = Instant::now();
    let mut n = 0;
    for e in events {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            sent.insert(e.event_id.clone(), SystemTime::now());
        }
        let topic = format!("bench_{}_{set}.{}", ctx.run, e.domain);
        pending.push_back(
            producer
                .send_result(
                    FutureRecord::to(&topic)
                        .key(&e.entity_id)
                        .payload(&e.payload),
                )
                .map_err(|(e, _)| e)?,
        );
        n += 1;
        while pending.len() > 50_000 {
            let p = pending.pop_front().expect("not empty");
            p.await?.map_err(|(e, _)| e)?;
        }
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok((n, sent))
}

async fn create_topics(ctx: &Ctx, sets: &[&str]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &ctx.kafka);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config.create()?;
    let names: Vec<String> = sets.iter().flat_map(|s| ctx.topics(s)).collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 4, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Raw consume: every message of the topics read and its envelope decoded.
fn raw_consume(ctx: &Ctx, set: &str, n: usize) -> anyhow::Result<ModeResult> {
    let mut settings = ctx.kafka_config();
    settings.group_id = format!("bench_{}_raw", ctx.run);
    let mut config = ClientConfig::new();
    for (k, v) in settings.consumer_config() {
        config.set(k, v);
    }
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
    Ok(ModeResult {
        mode: "raw Kafka consume",
        events: read,
        seconds: secs,
        events_per_sec: read as f64 / secs,
        p50_ms: None,
        p99_ms: None,
        peak_rss_mb: None,
        checksum: None,
    })
}

/// MySQL ceiling: the stream's row writes without Kafka, JSON, WASM or
/// bookkeeping, in 5,000-event transactions.
async fn mysql_ceiling(ctx: &Ctx, seed: u64, n: usize, tag: &str) -> anyhow::Result<ModeResult> {
    let (name, _url, pool) = ctx.fresh_db(tag).await?;
    projector_host::sink::migrate(&pool).await?;
    let schema = projector_host::sink::Schema::load(&pool).await?;
    let infos: HashMap<&str, (flatten::Domain, flatten::Info)> = flatten::DOMAINS
        .into_iter()
        .map(|d| (d.name, (d, (d.info)())))
        .collect();
    let mut generator = Generator::new(seed);
    let mut timed = Duration::ZERO;
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
                topic: e.domain.to_owned(),
                partition: 0,
                offset: (done + i) as i64,
                component: "ceiling".into(),
                ops,
            });
        }
        let refs: Vec<&projector_host::sink::Applied> = applied.iter().collect();
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        projector_host::sink::write_ops(&mut tx, &schema, &refs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await?;
        timed += started.elapsed();
        done += chunk;
    }
    drop(conn);
    let checksum = projector_tools::snapshot::checksum(&pool).await?;
    let secs = timed.as_secs_f64();
    say(format!(
        "MySQL ceiling ({tag}): {n} events in {secs:.2} s of SQL"
    ));
    let _ = sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&pool)
        .await;
    Ok(ModeResult {
        mode: "MySQL ceiling",
        events: n,
        seconds: secs,
        events_per_sec: n as f64 / secs,
        p50_ms: None,
        p99_ms: None,
        peak_rss_mb: None,
        checksum: Some(checksum),
    })
}

fn peak_rss_mb(child: &Child) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn count(pool: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

struct HostRun<'a> {
    mode: &'static str,
    set: &'a str,
    n: usize,
    native: bool,
    batch: usize,
    latency_set: &'a str,
    latency_seed: u64,
}

/// A host mode: backlog throughput, then latency at a fixed rate, peak RSS.
async fn host_mode(ctx: &Ctx, run: &HostRun<'_>, args: &Args) -> anyhow::Result<ModeResult> {
    let tag = run.mode.replace([' ', '-', '(', ')'], "_");
    let (name, url, pool) = ctx.fresh_db(&tag).await?;
    let mut topics = ctx.topics(run.set);
    topics.extend(ctx.topics(run.latency_set));
    let mut cmd = Command::new(ctx.bin_dir.join("projector"));
    cmd.arg("run");
    if run.native {
        cmd.arg("--native");
    }
    let log = std::fs::File::create(std::env::temp_dir().join(format!("bench-{tag}.log")))?;
    let mut child: Child = cmd
        .env("MYSQL_URL", &url)
        .env("KAFKA_BOOTSTRAP", &ctx.kafka)
        .env("PROJECTOR_GROUP_ID", format!("bench_{}_{tag}", ctx.run))
        .env("PROJECTOR_TOPICS", topics.join(","))
        .env("PROJECTOR_COMPONENTS_DIR", &ctx.components)
        .env("PROJECTOR_BATCH_SIZE", run.batch.to_string())
        .env("PROJECTOR_ADMIN_ADDR", "127.0.0.1:0")
        .env("PROJECTOR_WATCH_COMPONENTS", "false")
        .env("RUST_LOG", env_or("BENCH_HOST_LOG", "warn"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("the projector binary starts")?;
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut last = (0, Instant::now());
        loop {
            let done = count(&pool).await;
            if done as usize >= run.n {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("the host exited ({status}) after {done} events");
            }
            if Instant::now() > deadline {
                bail!("the host did not finish in an hour ({done} events)");
            }
            if done != last.0 {
                if last.1.elapsed() > Duration::from_secs(10) {
                    say(format!("{}: {done}/{} events", run.mode, run.n));
                    last.1 = Instant::now();
                }
                last.0 = done;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let secs: f64 = sqlx::query(
            "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(processed_at), MAX(processed_at)) FROM processed_events",
        )
        .fetch_one(&pool)
        .await?
        .try_get::<i64, _>(0)? as f64
            / 1e6;
        let checksum = projector_tools::snapshot::checksum(&pool).await?;
        say(format!("{}: {} events in {secs:.2} s", run.mode, run.n));
        // Latency at a fixed rate, against the caught-up host.
        let total = (args.latency_rate as u64 * args.latency_secs) as usize;
        let mut generator = Generator::new(run.latency_seed);
        let (sent_n, sent) = produce(
            ctx,
            run.latency_set,
            (0..total).map(|_| generator.next_event()),
            Some(args.latency_rate),
        )
        .await?;
        let want = (run.n + sent_n) as i64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while count(&pool).await < want {
            if Instant::now() > deadline {
                bail!("latency events not all applied within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rows = sqlx::query(
            "SELECT event_id, CAST(UNIX_TIMESTAMP(processed_at) * 1000000 AS SIGNED) FROM processed_events",
        )
        .fetch_all(&pool)
        .await?;
        let mut latencies: Vec<f64> = rows
            .iter()
            .filter_map(|r| {
                let id: String = r.try_get(0).ok()?;
                let at: i64 = r.try_get(1).ok()?;
                let sent = sent.get(&id)?;
                let sent_us = sent.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_micros() as i64;
                Some((at - sent_us) as f64 / 1000.0)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
        Ok(ModeResult {
            mode: run.mode,
            events: run.n,
            seconds: secs,
            events_per_sec: run.n as f64 / secs.max(1e-6),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            peak_rss_mb: peak_rss_mb(&child),
            checksum: Some(checksum),
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

fn svg_chart(results: &[ModeResult], n: usize) -> String {
    let w = 760.0;
    let bar_h = 34.0;
    let left = 230.0;
    let top = 50.0;
    let h = top + results.len() as f64 * (bar_h + 14.0) + 40.0;
    let max = results.iter().map(|r| r.events_per_sec).fold(1.0, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"20\" y=\"28\" font-size=\"16\" font-weight=\"bold\">projector throughput, events/s ({n} events, one run)</text>"
    );
    for (i, r) in results.iter().enumerate() {
        let y = top + i as f64 * (bar_h + 14.0);
        let len = (w - left - 120.0) * r.events_per_sec / max;
        let colour = match r.mode {
            m if m.contains("WASM") => "#1565c0",
            m if m.contains("native") => "#2e7d32",
            m if m.contains("per-event") => "#c62828",
            _ => "#757575",
        };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{}\">{:.0}</text>",
            left - 8.0,
            y + bar_h * 0.65,
            r.mode,
            left + len + 6.0,
            y + bar_h * 0.65,
            r.events_per_sec
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
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
    let wanted = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    let n = args.events;
    let m = args.per_event_events.min(n);
    say(format!(
        "run {}: generating and producing {n} events (seed {})",
        ctx.run, args.seed
    ));
    // Every topic exists before a host subscribes (a host only sees topics
    // created later at its next metadata refresh).
    create_topics(&ctx, &["main", "small", "latency0", "latency1", "latency2"]).await?;
    let started = Instant::now();
    let mut generator = Generator::new(args.seed);
    produce(&ctx, "main", (0..n).map(|_| generator.next_event()), None).await?;
    say(format!(
        "produced in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let mut generator = Generator::new(args.seed);
    produce(&ctx, "small", (0..m).map(|_| generator.next_event()), None).await?;

    let mut results = Vec::new();
    if wanted("kafka") {
        let ctx_ref = &ctx;
        results.push(tokio::task::block_in_place(|| {
            raw_consume(ctx_ref, "main", n)
        })?);
    }
    let mut ceiling_small = None;
    if wanted("mysql") {
        results.push(mysql_ceiling(&ctx, args.seed, n, "ceiling").await?);
        if wanted("per-event") {
            ceiling_small = Some(mysql_ceiling(&ctx, args.seed, m, "ceiling_small").await?);
        }
    }
    let runs = [
        (
            "per-event",
            "host per-event (WASM, batch 1)",
            "small",
            m,
            false,
            1,
        ),
        (
            "wasm",
            "host batched (WASM, default)",
            "main",
            n,
            false,
            args.batch,
        ),
        (
            "native",
            "host batched (native)",
            "main",
            n,
            true,
            args.batch,
        ),
    ];
    for (i, (key, mode, set, events, native, batch)) in runs.into_iter().enumerate() {
        if !wanted(key) {
            continue;
        }
        say(format!("{mode}: projecting {events} events"));
        let latency_set = format!("latency{i}");
        results.push(
            host_mode(
                &ctx,
                &HostRun {
                    mode,
                    set,
                    n: events,
                    native,
                    batch,
                    latency_set: &latency_set,
                    latency_seed: args.seed + 1000,
                },
                &args,
            )
            .await?,
        );
    }

    // Same events, same tables: every mode over the N events must agree, and
    // the per-event mode must agree with the ceiling over its M events.
    let full: Vec<&ModeResult> = results
        .iter()
        .filter(|r| r.checksum.is_some() && r.events == n)
        .collect();
    let mut consistent = full.windows(2).all(|w| w[0].checksum == w[1].checksum);
    if let (Some(small), Some(per_event)) = (
        &ceiling_small,
        results.iter().find(|r| r.mode.contains("per-event")),
    ) && m != n
    {
        consistent &= small.checksum == per_event.checksum;
    }

    println!();
    println!(
        "projector benchmark: {n} events (seed {}), one run on this machine",
        args.seed
    );
    println!(
        "{:<34} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}",
        "mode", "events", "seconds", "events/s", "p50 ms", "p99 ms", "RSS MB"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    for r in &results {
        println!(
            "{:<34} {:>9} {:>9.2} {:>11.0} {:>9} {:>9} {:>9}",
            r.mode,
            r.events,
            r.seconds,
            r.events_per_sec,
            opt(r.p50_ms),
            opt(r.p99_ms),
            opt(r.peak_rss_mb)
        );
    }
    let rate = |needle: &str| {
        results
            .iter()
            .find(|r| r.mode.contains(needle))
            .map(|r| r.events_per_sec)
    };
    let mut ratios = serde_json::Map::new();
    if let (Some(w), Some(c)) = (rate("WASM, default"), rate("MySQL ceiling")) {
        println!("default / MySQL ceiling   {:.2}", w / c);
        ratios.insert("default_over_mysql_ceiling".into(), json!(w / c));
    }
    if let (Some(w), Some(k)) = (rate("WASM, default"), rate("Kafka")) {
        println!("default / Kafka consume   {:.2}", w / k);
        ratios.insert("default_over_kafka_consume".into(), json!(w / k));
    }
    if let (Some(w), Some(p)) = (rate("WASM, default"), rate("per-event")) {
        println!("default / per-event       {:.1}x", w / p);
        ratios.insert("default_over_per_event".into(), json!(w / p));
    }
    if let (Some(w), Some(nat)) = (rate("WASM, default"), rate("native")) {
        println!("default (WASM) / native   {:.2}", w / nat);
        ratios.insert("wasm_over_native".into(), json!(w / nat));
    }
    println!(
        "table checksums: {}",
        if consistent {
            "equal across modes"
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
        "latency_rate": args.latency_rate,
        "latency_secs": args.latency_secs,
        "results": results,
        "ratios": ratios,
        "checksums_equal": consistent,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
    });
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(base.with_extension("svg"), svg_chart(&results, n))?;
    println!(
        "wrote {} and {}",
        base.with_extension("json").display(),
        base.with_extension("svg").display()
    );
    if !consistent {
        bail!("the modes ended with different tables");
    }
    Ok(())
}
