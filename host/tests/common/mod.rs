//! Shared helpers for the host's integration tests against the real stack
//! (`scripts/stack up`): connection settings and per-test isolation.

#![allow(dead_code)]

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions as _, MySqlPool};

pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://projector:projector@127.0.0.1:3306/projector".to_owned())
}

/// A unique suffix for databases, topics and groups of one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A fresh, empty database for one test; dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin: MySqlConnectOptions = mysql_url().parse().unwrap();
        let name = unique("projector_test");
        let mut conn = admin
            .clone()
            .connect()
            .await
            .expect("MariaDB of scripts/stack is up");
        sqlx::query(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        let options = admin.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .unwrap();
        TestDb { name, url, pool }
    }

    /// A fresh database, migrated, with the write audit of
    /// `projector_tools::audit` installed (an event applied twice shows as
    /// surplus row writes).
    pub async fn audited() -> TestDb {
        let db = TestDb::new().await;
        projector_host::sink::migrate_with_builtin_tables(&db.pool)
            .await
            .unwrap();
        projector_tools::audit::install(&db.pool).await.unwrap();
        db
    }

    /// Row writes the audit counted.
    #[allow(dead_code)]
    pub async fn writes(&self) -> i64 {
        projector_tools::audit::writes(&self.pool).await.unwrap()
    }

    /// Row writes that repeat a write of the same row by the same event
    /// (an event applied more than once).
    pub async fn repeats(&self) -> i64 {
        projector_tools::audit::repeated_writes(&self.pool)
            .await
            .unwrap()
    }

    pub async fn drop_db(self) {
        sqlx::query(&format!("DROP DATABASE `{}`", self.name))
            .execute(&self.pool)
            .await
            .unwrap();
        self.pool.close().await;
    }
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use projector_host::pipeline::{Host, Mode};
use projector_host::settings::Settings;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub fn repo() -> PathBuf {
    manifest_dir().join("..")
}

pub fn components_dir() -> PathBuf {
    std::env::var_os("PROJECTOR_COMPONENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/projections"))
}

/// Five fresh topic names (one per domain) for one test, `<prefix>.<domain>`.
pub struct Topics {
    pub prefix: String,
}

impl Topics {
    pub fn new() -> Topics {
        Topics {
            prefix: unique("t"),
        }
    }

    pub fn of(&self, event_type: &str) -> String {
        format!("{}.{}", self.prefix, event_type.split('.').next().unwrap())
    }

    pub fn all(&self) -> Vec<String> {
        ["user", "supplier", "product", "order", "post"]
            .iter()
            .map(|d| format!("{}.{d}", self.prefix))
            .collect()
    }
}

/// Settings of a host for one test.
/// The admin token of the tests' hosts.
#[allow(dead_code)]
pub const ADMIN_TOKEN: &str = "test-admin-token";

pub fn settings(db: &TestDb, topics: &Topics, group: &str) -> Settings {
    let mut s = Settings::default();
    s.kafka.bootstrap_servers = kafka_bootstrap();
    s.kafka.group_id = group.to_owned();
    s.kafka
        .extra
        .insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    s.topics = topics.all();
    s.mysql.url = db.url.clone();
    s.components.dir = components_dir();
    s.batch.max_events = 200;
    s.batch.max_wait = Duration::from_millis(20);
    s.admin.listen = "127.0.0.1:0".parse().unwrap();
    s.admin.lag_interval = Duration::from_millis(500);
    s.admin.lag_window = 4;
    s.admin.token = Some(ADMIN_TOKEN.to_owned());
    // Tests that reload call the endpoint; a watcher would race with them.
    s.components.watch = false;
    s
}

pub fn producer() -> FutureProducer {
    let mut config = ClientConfig::new();
    let kafka = events::KafkaSettings {
        bootstrap_servers: kafka_bootstrap(),
        ..Default::default()
    };
    for (k, v) in kafka.producer_config() {
        config.set(k, v);
    }
    config.create().unwrap()
}

/// Produces raw bytes with a key and waits for the acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("broker acknowledges");
}

/// A host running in this process until [`RunningHost::stop`].
pub struct RunningHost {
    pub shared: std::sync::Arc<projector_host::ops::Shared>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningHost {
    pub async fn start(settings: Settings, mode: Mode) -> RunningHost {
        let host = Host::build(settings, mode).await.expect("host builds");
        let shared = host.shared.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(host.run(stop.clone()));
        RunningHost { shared, stop, task }
    }

    /// `http://127.0.0.1:<port>` of the host's admin server, once it listens.
    pub async fn admin_url(&self) -> String {
        for _ in 0..200 {
            if let Some(addr) = self.shared.admin_addr.get() {
                return format!("http://{addr}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the admin server did not start");
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Waits until the file at `path` holds `needle` at least `times` times.
pub async fn wait_log(path: &Path, needle: &str, times: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not say {needle:?} {times} times within {timeout:?}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `processed_events` holds more than `n` rows.
pub async fn wait_processed_past(pool: &MySqlPool, n: i64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        if got > n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processed_events stayed at {got}, not past {n}, for {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `processed_events` holds `n` rows.
pub async fn wait_processed(pool: &MySqlPool, n: i64, timeout: Duration) {
    wait_until(pool, "SELECT COUNT(*) FROM processed_events", n, timeout).await;
}

/// Waits until a `SELECT COUNT(*)`-style query returns `n`.
pub async fn wait_until(pool: &MySqlPool, sql: &str, n: i64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1);
        if got == n {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{sql} returned {got}, expected {n} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[allow(unused_imports)]
pub use projector_tools::snapshot::{Dump, TABLES};

pub async fn dump(pool: &MySqlPool) -> Dump {
    projector_tools::snapshot::dump(pool).await.unwrap()
}

pub async fn checksum(pool: &MySqlPool) -> String {
    projector_tools::snapshot::checksum(pool).await.unwrap()
}

/// A fixture envelope re-targeted at another entity, with a new event id
/// and timestamp.
pub fn fixture(event_type: &str, entity_id: &str, timestamp: &str) -> serde_json::Value {
    let path = repo().join(format!("guest-projections/fixtures/{event_type}.json"));
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["entity_id"] = entity_id.into();
    v["event_id"] = uuid::Uuid::new_v4().to_string().into();
    v["timestamp"] = timestamp.into();
    let data = v["data"].as_object_mut().unwrap();
    for id_field in ["user_id", "supplier_id", "product_id", "post_id"] {
        if data.len() == 1 && data.contains_key(id_field) {
            data.insert(id_field.to_owned(), entity_id.into());
        }
    }
    if data.contains_key("order_number") {
        data.insert("order_number".into(), format!("ORD-{entity_id}").into());
    }
    v
}

/// A random 24-hex id like a MongoDB ObjectId.
pub fn object_id() -> String {
    format!("{:024x}", rand::random::<u128>() & ((1u128 << 96) - 1))
}

/// Asserts two dumps are equal, reporting only the rows that differ.
pub fn assert_same(real: &Dump, expected: &Dump) {
    let mut problems = Vec::new();
    for (table, rows) in expected {
        let got = real.get(table).cloned().unwrap_or_default();
        if got.len() != rows.len() {
            problems.push(format!(
                "{table}: {} rows, expected {}",
                got.len(),
                rows.len()
            ));
        }
        for want in rows {
            if !got.contains(want) {
                problems.push(format!("{table}: missing or different row {want:?}"));
            }
        }
        for have in &got {
            if !rows.contains(have) {
                problems.push(format!("{table}: unexpected row {have:?}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Reads `n` messages from the start of `topic` (each as its JSON value and
/// headers), failing after `timeout`.
pub async fn read_topic(
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(serde_json::Value, BTreeMap<String, String>)> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Headers as _;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "500");
    let consumer: StreamConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            // The topic may not exist yet.
            Ok(Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ))) => continue,
            Ok(m) => m.unwrap(),
            Err(_) => panic!(
                "only {} of {n} messages on {topic} within {timeout:?}",
                out.len()
            ),
        };
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|hd| {
                        (
                            hd.key.to_owned(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((value, headers));
    }
    out
}

pub fn spawn_host(
    db: &TestDb,
    topics: &Topics,
    group: &str,
    log: &std::path::Path,
) -> std::process::Child {
    spawn_host_batched(db, topics, group, log, 100)
}

/// [`spawn_host`] with `batch` events per transaction.
pub fn spawn_host_batched(
    db: &TestDb,
    topics: &Topics,
    group: &str,
    log: &std::path::Path,
    batch: usize,
) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .arg("run")
        .env("MYSQL_URL", &db.url)
        .env("KAFKA_BOOTSTRAP", kafka_bootstrap())
        .env("PROJECTOR_GROUP_ID", group)
        .env("PROJECTOR_TOPICS", topics.all().join(","))
        .env("PROJECTOR_COMPONENTS_DIR", components_dir())
        .env("PROJECTOR_WATCH_COMPONENTS", "false")
        .env("PROJECTOR_BATCH_SIZE", batch.to_string())
        .env("PROJECTOR_ADMIN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the projector binary starts")
}

/// A stream of `n_entities` user, product and order lifecycles (7 to 9
/// events each).
pub fn events(n_entities: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for n in 0..n_entities {
        let (u, p, o) = (object_id(), object_id(), object_id());
        let t = |m: u32| format!("2026-01-01T00:{m:02}:{:02}.{:06}Z", n % 60, n);
        for (ty, id, m) in [
            ("user.created", &u, 0),
            ("user.updated", &u, 1),
            ("product.created", &p, 0),
            ("product.updated", &p, 1),
            ("product.published", &p, 2),
            ("order.created", &o, 0),
            ("order.shipped", &o, 1),
        ] {
            out.push(fixture(ty, id, &t(m)));
        }
        if n % 3 == 0 {
            out.push(fixture("product.deleted", &p, &t(9)));
            out.push(fixture("user.deleted", &u, &t(9)));
        }
    }
    out
}

pub async fn produce_all(topics: &Topics, events: &[serde_json::Value]) {
    use rdkafka::producer::FutureRecord;
    let producer = producer();
    let mut pending = Vec::new();
    for e in events {
        let topic = topics.of(e["event_type"].as_str().unwrap());
        let payload = e.to_string();
        let key = e["entity_id"].as_str().unwrap();
        // Queued without waiting: the idempotent producer keeps per-key order.
        pending.push(
            producer
                .send_result(FutureRecord::to(&topic).key(key).payload(&payload))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for p in pending {
        p.await
            .unwrap()
            .map_err(|(e, _)| e)
            .expect("broker acknowledges");
    }
}

/// The tables the same events must give, computed by the independent oracle
/// (`projector_tools::oracle`: one event per transaction, plain SQL, no host
/// code).
pub async fn clean_run(events: &[serde_json::Value]) -> Dump {
    clean_run_audited(events).await.0
}

/// [`clean_run`] and the repeated row writes the audit counted while the
/// oracle applied the events (normally none).
pub async fn clean_run_audited(events: &[serde_json::Value]) -> (Dump, i64) {
    clean_run_audited_after(events, &[]).await
}

/// [`clean_run`] on a database first changed by `ddl` (a widened column, as
/// an operator's fix would).
#[allow(dead_code)]
pub async fn clean_run_after(events: &[serde_json::Value], ddl: &[&str]) -> Dump {
    clean_run_audited_after(events, ddl).await.0
}

async fn clean_run_audited_after(events: &[serde_json::Value], ddl: &[&str]) -> (Dump, i64) {
    let db = TestDb::audited().await;
    for statement in ddl {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
    projector_tools::oracle::apply_envelopes(&db.pool, payloads.iter().map(Vec::as_slice))
        .await
        .expect("the oracle applies the events");
    let d = dump(&db.pool).await;
    let repeats = db.repeats().await;
    db.drop_db().await;
    (d, repeats)
}

/// Every one of the `n` events recorded, and no more repeated row writes
/// than in the clean run (`clean_writes`): an event applied twice writes
/// its rows again.
pub async fn assert_each_event_once(db: &TestDb, n: usize, clean_writes: i64) {
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, n as i64, "events recorded in processed_events");
    assert_eq!(
        db.repeats().await,
        clean_writes,
        "repeated row writes against the clean run (more: an event was applied twice)"
    );
}

/// Runs `scripts/stack ARGS` and returns its stdout; panics if it fails.
pub fn stack(args: &[&str]) -> String {
    let out = std::process::Command::new(repo().join("scripts/stack"))
        .args(args)
        .output()
        .expect("scripts/stack runs");
    assert!(
        out.status.success(),
        "scripts/stack {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET `url`: (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("admin server answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Parses the Prometheus text format strictly: every line is a comment
/// (`# HELP`/`# TYPE`), blank, or `name{labels} value`. Keys are
/// `name{k="v",...}` with labels sorted.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels: Vec<(String, String)> = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    let end = after
                        .find('"')
                        .unwrap_or_else(|| panic!("unterminated label in {line:?}"));
                    labels.push((k.to_owned(), after[..end].to_owned()));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                labels.sort();
                (name, labels)
            }
            None => (series, vec![]),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        out.insert(key, value);
    }
    out
}

#[allow(unused_imports)]
pub use projector_tools::rebuilt;

/// Writes a file the way a deployment should: to a temporary name, then
/// renamed into place.
pub fn install_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A private copy of the built components folder (for tests that change it).
pub fn components_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in ["user", "supplier", "product", "order", "post"] {
        std::fs::copy(
            components_dir().join(format!("{d}.wasm")),
            dir.path().join(format!("{d}.wasm")),
        )
        .unwrap();
    }
    dir
}

pub fn test_component(name: &str) -> PathBuf {
    components_dir().join(format!("../test-projections/{name}.wasm"))
}

/// `projector ARGS` with a test's connection settings; (success, stdout+stderr).
pub fn projector(
    mysql_url: &str,
    topics: &Topics,
    group: &str,
    components: &Path,
    args: &[&str],
) -> (bool, String) {
    let topics = topics.all().join(",");
    let kafka = kafka_bootstrap();
    run_projector(
        args,
        &[
            ("MYSQL_URL", mysql_url),
            ("KAFKA_BOOTSTRAP", &kafka),
            ("PROJECTOR_GROUP_ID", group),
            ("PROJECTOR_TOPICS", &topics),
            (
                "PROJECTOR_COMPONENTS_DIR",
                &components.display().to_string(),
            ),
        ],
    )
}

/// `projector ARGS` with only `env` added; (success, stdout+stderr).
#[allow(dead_code)]
pub fn run_projector(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the projector binary runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A producer that sends messages up to 4 MB (the default stops at 1 MB).
#[allow(dead_code)]
pub fn big_producer() -> FutureProducer {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", kafka_bootstrap())
        .set("message.max.bytes", "4194304");
    config.create().unwrap()
}

/// Deletes the messages of `topic`'s partition below `offset`, as retention
/// would, and returns the partition (the one `processed_events` names: the
/// test's events share a key).
#[allow(dead_code)]
pub async fn delete_records_below(pool: &MySqlPool, topic: &str, offset: i64) -> i32 {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let partition: i32 = sqlx::query_scalar("SELECT MAX(`partition`) FROM processed_events")
        .fetch_one(pool)
        .await
        .unwrap();
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let mut upto = rdkafka::TopicPartitionList::new();
    upto.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .unwrap();
    admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .unwrap();
    partition
}

// The checkout the tests run in (cargo sets CARGO_MANIFEST_DIR when it runs
// them), not the one they were compiled in: a shared target folder may hold
// a binary built from another clone of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

/// Polls `{url}/metrics` until the series `name` is `value` (10 s at most);
/// returns the last scrape.
#[allow(dead_code)]
pub async fn wait_metric(url: &str, name: &str, value: f64) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for _ in 0..100 {
        m = parse_prometheus(&http_get(&format!("{url}/metrics")).await.1);
        if m.get(name) == Some(&value) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became {value}: {m:?}");
}

/// The digest of the component in force for `domain` in a running host.
#[allow(dead_code)]
pub fn digest_in_force(shared: &projector_host::ops::Shared, domain: &str) -> String {
    shared
        .registry
        .borrow()
        .domains()
        .find(|(d, _)| d.as_str() == domain)
        .map(|(_, p)| p.digest().to_owned())
        .unwrap_or_else(|| panic!("no component for {domain}"))
}
