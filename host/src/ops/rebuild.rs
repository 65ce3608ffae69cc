//! `projector rebuild --domain <d>`: rebuilds one domain into shadow tables
//! alongside live traffic, then swaps them in with one atomic `RENAME
//! TABLE`. Readers see the old complete tables or the new complete ones,
//! never a mix; `--rollback` swaps back, `--drop-previous` forgets.
//!
//! # How
//!
//! The shadow is a database of its own on the same server,
//! `<db>_rb_<domain>`, projected by an ordinary host built in this
//! process: the domain's component (or `--component FILE`), the domain's
//! topic from offset 0, its own consumer group
//! (`<group>.rebuild.<domain>`), its own bookkeeping (positions,
//! `processed_events`, tombstones), so it has every guarantee of a host.
//! It declares its tables as any host does, so they have the component's
//! declared schema, keys and foreign keys.
//!
//! The shadow host never passes the live host's positions: its consumer is
//! bounded by them ([`crate::consume::Bound`]), raised as the live host
//! moves. Once it is close, the swap:
//!
//! 1. locks the live positions of the topic (`SELECT … FOR UPDATE`, the
//!    rows each live batch locks first): the live host's batches of this
//!    topic wait; the other domains go on;
//! 2. bounds the shadow at exactly those positions and waits until it is
//!    there, then stops it: shadow and live tables now stand for the same
//!    events, so the positions do not change;
//! 3. exchanges the topic's `processed_events` and the domain's tombstones
//!    between the two databases (in the locked transaction);
//! 4. one `RENAME TABLE` moves the live tables into the shadow database and
//!    the shadow tables into the live one (through an empty third database,
//!    `<db>_rbx_<domain>`, since foreign key names are unique per
//!    database); InnoDB carries the foreign keys along;
//! 5. with `--component`, deploys it to the live host (`POST
//!    /projections/deploy`); a live batch projected by the old component
//!    while it waited is projected again (the writer checks the component
//!    under the same locks);
//! 6. commits, and the live host's waiting batches go on, on the new tables.
//!
//! The previous tables stay in the shadow database with their bookkeeping
//! and positions: `--rollback` exchanges them back the same way and moves
//! the live positions back to the swap's, so the live host projects what
//! came since onto them (with the previous component, redeployed if the
//! rebuild deployed one). `--drop-previous` drops the shadow databases.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use sqlx::{MySqlConnection, MySqlPool};
use tokio_util::sync::CancellationToken;

use super::jobs;
use super::replay::{hold_positions, topic_of, watermarks_of};
use crate::consume::{Bound, PartitionKey};
use crate::pipeline::{Host, Mode};
use crate::sandbox::{Runtime, registry::component_file};
use crate::settings::{Settings, StartPolicy};
use crate::sink;

/// The databases and tables of one domain's rebuild.
#[derive(Debug, Clone)]
pub struct Plan {
    pub domain: String,
    pub topic: String,
    pub live_db: String,
    pub shadow_db: String,
    pub transit_db: String,
    /// The shadow host's consumer group (positions in the shadow database).
    pub shadow_group: String,
}

impl Plan {
    pub async fn new(pool: &MySqlPool, settings: &Settings, domain: &str) -> anyhow::Result<Plan> {
        sink::schema::Ident::parse(domain)
            .map_err(|e| anyhow::anyhow!("domain {domain:?}: {e}"))?;
        let topic = topic_of(settings, domain)?;
        let live_db: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
            .fetch_one(pool)
            .await?;
        let live_db = live_db.context("mysql.url names no database")?;
        let shadow_db = format!("{live_db}_rb_{domain}");
        let transit_db = format!("{live_db}_rbx_{domain}");
        for db in [&live_db, &transit_db] {
            anyhow::ensure!(
                db.len() <= 64 && !db.contains('`'),
                "database name {db:?} is too long or holds a backtick"
            );
        }
        Ok(Plan {
            domain: domain.to_owned(),
            topic,
            shadow_group: format!("{}.rebuild.{domain}", settings.kafka.group_id),
            live_db,
            shadow_db,
            transit_db,
        })
    }

    /// Exchanges `tables` between the live and the shadow database with one
    /// `RENAME TABLE` (see [`rename_exchange`]).
    async fn swap_tables(
        &self,
        conn: &mut MySqlConnection,
        tables: &[String],
    ) -> anyhow::Result<Duration> {
        rename_exchange(
            conn,
            &self.live_db,
            &self.shadow_db,
            &self.transit_db,
            tables,
        )
        .await
    }

    /// The settings' MySQL URL with the shadow database.
    fn shadow_url(&self, settings: &Settings) -> anyhow::Result<String> {
        let mut url = url::Url::parse(&settings.mysql.url).context("mysql.url")?;
        url.set_path(&format!("/{}", self.shadow_db));
        Ok(url.to_string())
    }
}

/// What a rebuild did, for the command's output and the job's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub domain: String,
    pub topic: String,
    pub component: String,
    /// Messages of the topic the shadow consumed (offsets, all partitions).
    pub events: i64,
    /// From the start to the shadow first being close to live.
    pub catch_up_secs: f64,
    /// From the start to the swap's commit.
    pub total_secs: f64,
    /// How long the live host's batches of this topic waited (the locked
    /// transaction).
    pub live_paused_ms: f64,
    /// Of the pause, the shadow reaching the held positions.
    pub reach_ms: f64,
    /// The `RENAME TABLE` alone: how long readers of the domain's tables
    /// could wait.
    pub rename_ms: f64,
    /// The exchange of `processed_events` and tombstones.
    pub bookkeeping_ms: f64,
    /// The tables swapped, with their row counts after the swap.
    pub tables: Vec<(String, i64)>,
    /// The positions (partition, next offset) the swap happened at.
    pub positions: Vec<(i32, i64)>,
    /// The component deployed to the live host with the swap, if any.
    pub deployed: Option<String>,
}

/// Options of a rebuild.
pub struct Options {
    /// Rebuild with this component instead of the one in force; it is
    /// deployed to the live host at the swap.
    pub component: Option<PathBuf>,
    /// The live host's admin URL, for deploying `component`.
    pub url: Option<String>,
    /// Rebuild although retention deleted the start of the topic.
    pub force: bool,
    /// Give up when the shadow makes no progress for this long.
    pub stall_timeout: Duration,
    /// Stops the rebuild while it catches up (a swap under way completes).
    pub interrupt: CancellationToken,
}

fn quoted(db: &str, table: &str) -> String {
    format!("`{db}`.`{table}`")
}

/// The projection tables (`table_name`s) a component declares it writes.
fn written_tables(
    runtime: &Runtime,
    bytes: &[u8],
    source: &str,
) -> anyhow::Result<(Vec<String>, String)> {
    let c = runtime
        .load(bytes, source)
        .map_err(|e| anyhow::anyhow!("component {source} refused: {e:#}"))?;
    let label = c.label();
    Ok((
        c.info.writes.iter().map(|w| w.table.clone()).collect(),
        label,
    ))
}

/// The tables a swap exchanges: those the rebuilt component writes, then
/// those only the previous one wrote; and the rebuilt one's label.
fn swapped_tables(
    runtime: &Runtime,
    (rebuilt, source): (&[u8], &str),
    previous: &[u8],
) -> anyhow::Result<(Vec<String>, String)> {
    let (mut tables, label) = written_tables(runtime, rebuilt, source)?;
    for t in written_tables(runtime, previous, "previous")?.0 {
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    Ok((tables, label))
}

/// Next offsets of `group` on `topic` (partitions without a row: their low
/// watermark).
async fn positions(
    pool: &MySqlPool,
    group: &str,
    topic: &str,
    ends: &[(i32, i64, i64)],
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let stored = sink::stored_offsets(pool, group).await?;
    Ok(ends
        .iter()
        .map(|(p, low, _)| {
            let key: PartitionKey = (topic.to_owned(), *p);
            (*p, stored.get(&key).copied().unwrap_or(*low).max(*low))
        })
        .collect())
}

async fn exists(conn: &mut MySqlConnection, db: &str, table: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(db)
    .bind(table)
    .fetch_one(&mut *conn)
    .await?
        > 0)
}

/// One `RENAME TABLE` exchanging `tables` between databases `a` and `b`
/// through `transit` (a table missing on one side just moves). Returns how
/// long it took.
async fn rename_exchange(
    conn: &mut MySqlConnection,
    a: &str,
    b: &str,
    transit: &str,
    tables: &[String],
) -> anyhow::Result<Duration> {
    let mut out = Vec::new();
    let mut back = Vec::new();
    let mut across = Vec::new();
    for t in tables {
        let (in_a, in_b) = (exists(conn, a, t).await?, exists(conn, b, t).await?);
        if in_a {
            out.push(format!("{} TO {}", quoted(a, t), quoted(transit, t)));
            back.push(format!("{} TO {}", quoted(transit, t), quoted(b, t)));
        }
        if in_b {
            across.push(format!("{} TO {}", quoted(b, t), quoted(a, t)));
        }
    }
    let pairs: Vec<String> = out.into_iter().chain(across).chain(back).collect();
    if pairs.is_empty() {
        return Ok(Duration::ZERO);
    }
    // Readers holding the tables make the rename wait, and new readers queue
    // behind it: bounded, and the swap is retried later.
    sqlx::query(&format!(
        "SET SESSION lock_wait_timeout = {}",
        RENAME_WAIT.as_secs()
    ))
    .execute(&mut *conn)
    .await?;
    let started = Instant::now();
    sqlx::query(&format!("RENAME TABLE {}", pairs.join(", ")))
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            // ER_LOCK_WAIT_TIMEOUT: the metadata locks of readers.
            let held = e
                .as_database_error()
                .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
                .is_some_and(|d| d.number() == 1205);
            if held {
                anyhow::Error::new(ReadersHeld)
            } else {
                anyhow::Error::new(e).context("RENAME TABLE failed")
            }
        })?;
    Ok(started.elapsed())
}

/// Longest a `RENAME TABLE` waits for readers holding the tables (new
/// readers queue behind it meanwhile, so it is short); then the swap is
/// abandoned and tried again.
const RENAME_WAIT: Duration = Duration::from_secs(2);

/// Readers held the tables for [`RENAME_WAIT`].
#[derive(Debug, thiserror::Error)]
#[error("readers held the tables for longer than the swap waits ({RENAME_WAIT:?})")]
struct ReadersHeld;

/// The bookkeeping of `topic` and `tables` exchanged between databases
/// `a` and `b` in `tx`: `processed_events` of the topic and the tombstones
/// of the tables. Only the rows one side lacks or holds differently move
/// (through the `transit` database); a rebuild by the same component
/// usually moves none, so the live pause does not grow with the history
/// beyond one indexed comparison of the two sets.
async fn exchange_bookkeeping(
    tx: &mut MySqlConnection,
    plan: &Plan,
    a: &str,
    b: &str,
    tables: &[String],
) -> anyhow::Result<()> {
    struct Set<'s> {
        table: &'static str,
        key: &'static [&'static str],
        /// What makes two rows of one key differ.
        compared: &'static [&'static str],
        /// The rows of the set, on alias `x`.
        filter: String,
        binds: Vec<&'s str>,
    }
    let placeholders = vec!["?"; tables.len().max(1)].join(", ");
    let sets = [
        Set {
            table: "processed_events",
            key: &["event_id"],
            compared: &["component"],
            filter: "x.topic = ?".to_owned(),
            binds: vec![plan.topic.as_str()],
        },
        Set {
            table: "tombstones",
            key: &["table_name", "row_key"],
            compared: &["event_id", "event_timestamp"],
            filter: format!("x.table_name IN ({placeholders})"),
            binds: if tables.is_empty() {
                vec![""]
            } else {
                tables.iter().map(String::as_str).collect()
            },
        },
    ];
    let transit = &plan.transit_db;
    for set in &sets {
        let on = |x: &str, y: &str| {
            set.key
                .iter()
                .map(|k| format!("{x}.`{k}` = {y}.`{k}`"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let same = set
            .compared
            .iter()
            .map(|c| format!("x.`{c}` <=> y.`{c}`"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let (ta, tb) = (quoted(a, set.table), quoted(b, set.table));
        let (da, db) = (
            quoted(transit, set.table),
            quoted(transit, &format!("{}_other", set.table)),
        );
        let mut steps: Vec<(String, bool)> = Vec::new();
        // Each side's rows the other lacks or holds differently, set aside.
        for (from, to, into) in [(&ta, &tb, &da), (&tb, &ta, &db)] {
            steps.push((
                format!(
                    "INSERT INTO {into} SELECT x.* FROM {from} x LEFT JOIN {to} y ON {} \
                     WHERE {} AND (y.`{}` IS NULL OR NOT ({same}))",
                    on("x", "y"),
                    set.filter,
                    set.key[0]
                ),
                true,
            ));
        }
        // Out of each side, into the other.
        for (side, aside) in [(&ta, &da), (&tb, &db)] {
            steps.push((
                format!("DELETE x FROM {side} x JOIN {aside} d ON {}", on("x", "d")),
                false,
            ));
        }
        for (side, from) in [(&ta, &db), (&tb, &da)] {
            steps.push((format!("INSERT INTO {side} SELECT * FROM {from}"), false));
        }
        for aside in [&da, &db] {
            steps.push((format!("DELETE FROM {aside}"), false));
        }
        for (sql, filtered) in steps {
            let mut q = sqlx::query(&sql);
            if filtered {
                for v in &set.binds {
                    q = q.bind(*v);
                }
            }
            q.execute(&mut *tx)
                .await
                .with_context(|| format!("exchanging {}", set.table))?;
        }
    }
    Ok(())
}

/// Creates the shadow and transit databases afresh (the shadow's previous
/// tables, a rollback point of an earlier rebuild, are dropped).
async fn prepare_databases(pool: &MySqlPool, plan: &Plan) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    for db in [&plan.shadow_db, &plan.transit_db] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "CREATE DATABASE `{db}` DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .execute(&mut *conn)
        .await
        .with_context(|| {
            format!("creating database {db} (the MySQL user needs CREATE and DROP on it)")
        })?;
    }
    // Where the bookkeeping exchange sets each side's rows aside.
    for table in ["processed_events", "tombstones"] {
        for aside in [table.to_owned(), format!("{table}_other")] {
            sqlx::query(&format!(
                "CREATE TABLE {} LIKE {}",
                quoted(&plan.transit_db, &aside),
                quoted(&plan.live_db, table)
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// What the shadow database remembers of its rebuild, for `--rollback`.
async fn remember(pool: &MySqlPool, key: &str, value: &[u8]) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO rebuild_state (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)",
    )
    .bind(key)
    .bind(value)
    .execute(pool)
    .await?;
    Ok(())
}

async fn recall(pool: &MySqlPool, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(
        sqlx::query_scalar("SELECT v FROM rebuild_state WHERE k = ?")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

/// The settings of the shadow host.
fn shadow_settings(settings: &Settings, plan: &Plan, dir: &Path) -> anyhow::Result<Settings> {
    let mut s = settings.clone();
    s.mysql.url = plan.shadow_url(settings)?;
    s.topics = vec![plan.topic.clone()];
    s.kafka.group_id = plan.shadow_group.clone();
    s.kafka.instance_id = None;
    s.start_without_position = StartPolicy::Earliest;
    s.components.dir = dir.to_owned();
    s.components.watch = false;
    s.admin.listen = "127.0.0.1:0".parse()?;
    s.admin.metrics_listen = None;
    Ok(s)
}

fn draw(done: i64, total: i64, topic: &str, rate: f64) {
    let width = 30;
    let filled = if total <= 0 {
        width
    } else {
        ((done.min(total) * width as i64) / total) as usize
    };
    eprint!(
        "\r[rebuild] [{}{}] {:>3}%  {done}/{total} events of {topic}  {rate:>8.0} ev/s",
        "#".repeat(filled),
        ".".repeat(width - filled),
        if total <= 0 {
            100
        } else {
            done.min(total) * 100 / total
        },
    );
    let _ = std::io::stderr().flush();
}

/// Holds the domain's rebuild lock (a named lock on its own connection,
/// released when dropped): one rebuild, rollback or drop of a domain at a
/// time.
async fn exclusive(
    pool: &MySqlPool,
    domain: &str,
) -> anyhow::Result<sqlx::pool::PoolConnection<sqlx::MySql>> {
    let mut conn = pool.acquire().await?;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT(DATABASE(), '.projector_rebuild.', ?), 0)")
            .bind(domain)
            .fetch_one(&mut *conn)
            .await?;
    anyhow::ensure!(
        locked == Some(1),
        "another rebuild, rollback or drop of {domain} is running"
    );
    Ok(conn)
}

/// Rebuilds `domain` into shadow tables and swaps them in.
pub async fn rebuild(
    settings: &Settings,
    domain: &str,
    options: Options,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let pool = sink::connect_mysql(&settings.mysql.url, 5).await?;
    sink::migrate(&pool).await?;
    let plan = Plan::new(&pool, settings, domain).await?;
    let _lock = exclusive(&pool, domain).await?;
    let runtime = Runtime::from_settings(settings)?;
    let live_file = component_file(&runtime, &settings.components.dir, domain)?;
    let live_bytes = std::fs::read(&live_file)?;
    let (shadow_bytes, source) = match &options.component {
        Some(f) => (
            std::fs::read(f).with_context(|| format!("failed to read {}", f.display()))?,
            f.display().to_string(),
        ),
        None => (live_bytes.clone(), live_file.display().to_string()),
    };
    let (tables, label) = swapped_tables(&runtime, (&shadow_bytes, &source), &live_bytes)?;
    let ends = watermarks_of(settings, &plan.topic).await?;
    let lost: Vec<String> = ends
        .iter()
        .filter(|(_, low, _)| *low > 0)
        .map(|(p, low, _)| format!("{}[{p}] starts at offset {low}", plan.topic))
        .collect();
    if !lost.is_empty() && !options.force {
        anyhow::bail!(
            "refusing to rebuild {domain}: retention deleted the start of its topic ({}); \
             the shadow would miss rows the live tables have. Pass --force to rebuild what is left.",
            lost.join(", ")
        );
    }
    let record = |state: &'static str, detail: serde_json::Value, fresh: bool| {
        let pool = pool.clone();
        let domain = domain.to_owned();
        async move {
            if let Err(e) = jobs::record(&pool, "rebuild", &domain, state, &detail, fresh).await {
                tracing::warn!(error = %e, "could not record the rebuild's state");
            }
        }
    };
    let failed = |e: &anyhow::Error| {
        record(
            "failed",
            json!({"component": label, "error": format!("{e:#}")}),
            false,
        )
    };
    record(
        "starting",
        json!({"component": label, "shadow": plan.shadow_db}),
        true,
    )
    .await;
    // A shadow that cannot start (privileges, a refused component) is a
    // failed rebuild on the status page too.
    let setup = async {
        // Only the domain's granted tables are ever swapped.
        for (bytes, source) in [(&shadow_bytes, source.as_str()), (&live_bytes, "live")] {
            let c = runtime
                .load(bytes, source)
                .map_err(|e| anyhow::anyhow!("component {source} refused: {e:#}"))?;
            settings
                .grants
                .check(&c.info)
                .map_err(|e| anyhow::anyhow!("component {} refused: {e}", c.label()))?;
            anyhow::ensure!(
                c.info.domain == domain,
                "component {} is for domain {:?}, not {domain:?}",
                c.label(),
                c.info.domain
            );
        }
        prepare_databases(&pool, &plan).await?;
        // The shadow host: its own folder holding the one component.
        let dir =
            std::env::temp_dir().join(format!("projector-rebuild-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let cleanup = RemoveDir(dir.clone());
        std::fs::write(dir.join(format!("{domain}.wasm")), &shadow_bytes)?;
        let host = Host::build(shadow_settings(settings, &plan, &dir)?, Mode::Wasm)
            .await
            .context("the shadow host could not start")?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS rebuild_state (k VARCHAR(64) PRIMARY KEY, v LONGBLOB NOT NULL)",
        )
        .execute(&host.pool)
        .await?;
        remember(&host.pool, "previous_component", &live_bytes).await?;
        remember(&host.pool, "component", &shadow_bytes).await?;
        let bound: Bound = Bound::default();
        let live_now = positions(&pool, &settings.kafka.group_id, &plan.topic, &ends).await?;
        raise(&bound, &plan.topic, &live_now);
        anyhow::Ok((host, cleanup, bound))
    }
    .await;
    let (mut host, _cleanup, bound) = match setup {
        Ok(s) => s,
        Err(e) => {
            failed(&e).await;
            return Err(e);
        }
    };
    let shadow_pool = host.pool.clone();
    host.bounded(&bound);
    let stop = CancellationToken::new();
    let mut shadow = Some(tokio::spawn(host.run(stop.clone())));
    let result = async {
        let mut caught_up_at = None;
        let mut last_done = -1i64;
        let mut last_move = Instant::now();
        let mut last_record = Instant::now() - Duration::from_secs(10);
        let mut attempts = 0;
        loop {
            if shadow.as_ref().is_none_or(|s| s.is_finished()) {
                let why = match stopped(&mut shadow).await {
                    Some(Err(e)) => format!("{e:#}"),
                    _ => "it ended".to_owned(),
                };
                anyhow::bail!("the shadow host stopped: {why}");
            }
            if options.interrupt.is_cancelled() {
                anyhow::bail!(
                    "interrupted while catching up: the live tables are unchanged; run the rebuild again to start over"
                );
            }
            let live = positions(&pool, &settings.kafka.group_id, &plan.topic, &ends).await?;
            let shadow_at = positions(&shadow_pool, &plan.shadow_group, &plan.topic, &ends).await?;
            moved_back(&bound, &plan.topic, &live)?;
            raise(&bound, &plan.topic, &live);
            let done: i64 = ends.iter().map(|(p, low, _)| shadow_at[p] - low).sum();
            let total: i64 = ends.iter().map(|(p, low, _)| live[p] - low).sum();
            let behind = total - done;
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            draw(done, total, &plan.topic, rate);
            if done != last_done {
                last_done = done;
                last_move = Instant::now();
            } else if last_move.elapsed() > options.stall_timeout && behind > 0 {
                anyhow::bail!("the shadow made no progress for {:?}", options.stall_timeout);
            }
            if last_record.elapsed() >= Duration::from_secs(1) {
                last_record = Instant::now();
                record(
                    "catching_up",
                    json!({"component": label, "done": done, "total": total, "events_per_sec": rate.round()}),
                    false,
                )
                .await;
            }
            // Close enough, and the shadow host is consuming (so the live
            // topic is not held while it starts).
            if behind <= (2 * settings.batch.max_events as i64).max(1000) && (done > 0 || total == 0) {
                let caught = *caught_up_at.get_or_insert_with(|| started.elapsed());
                record("swapping", json!({"component": label, "done": done, "total": total}), false).await;
                match swap(&pool, &shadow_pool, settings, &plan, &tables, &bound, &ends, &stop, &mut shadow, &options, &shadow_bytes).await? {
                    Some(swapped) => {
                        eprintln!();
                        return Ok((caught, swapped));
                    }
                    None => {
                        attempts += 1;
                        anyhow::ensure!(
                            attempts < 5,
                            "no swap in 5 attempts (the shadow did not reach the held positions in time, or readers held the tables); the live tables are unchanged"
                        );
                        tracing::info!("the swap did not happen; catching up again");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), stopped(&mut shadow)).await;
    let (catch_up, swapped) = match result {
        Ok(r) => r,
        Err(e) => {
            failed(&e).await;
            return Err(e);
        }
    };
    let mut counts = Vec::new();
    for t in &tables {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {}",
            quoted(&plan.live_db, t)
        ))
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        counts.push((t.clone(), n));
    }
    let report = Report {
        domain: domain.to_owned(),
        topic: plan.topic.clone(),
        component: label,
        events: swapped
            .positions
            .iter()
            .map(|(p, n)| n - ends.iter().find(|e| e.0 == *p).map_or(0, |e| e.1))
            .sum(),
        catch_up_secs: catch_up.as_secs_f64(),
        total_secs: started.elapsed().as_secs_f64(),
        live_paused_ms: swapped.paused.as_secs_f64() * 1e3,
        reach_ms: swapped.reached.as_secs_f64() * 1e3,
        rename_ms: swapped.rename.as_secs_f64() * 1e3,
        bookkeeping_ms: swapped.bookkeeping.as_secs_f64() * 1e3,
        tables: counts,
        positions: swapped.positions,
        deployed: swapped.deployed,
    };
    remember(
        &shadow_pool,
        "deployed",
        if report.deployed.is_some() {
            b"1"
        } else {
            b"0"
        },
    )
    .await?;
    record("swapped", serde_json::to_value(&report)?, false).await;
    Ok(report)
}

type ShadowTask = Option<tokio::task::JoinHandle<anyhow::Result<()>>>;

/// Waits for the shadow host's task to end, once.
async fn stopped(shadow: &mut ShadowTask) -> Option<anyhow::Result<()>> {
    let task = shadow.take()?;
    Some(task.await.map_err(anyhow::Error::from).and_then(|r| r))
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn raise(bound: &Bound, topic: &str, to: &BTreeMap<i32, i64>) {
    let mut b = bound.write().unwrap_or_else(|e| e.into_inner());
    for (p, n) in to {
        let e = b.entry((topic.to_owned(), *p)).or_insert(*n);
        *e = (*e).max(*n);
    }
}

/// A live position below the bound: a replay moved it back under the
/// rebuild.
fn moved_back(bound: &Bound, topic: &str, live: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
    let b = bound.read().unwrap_or_else(|e| e.into_inner());
    for (p, n) in live {
        if let Some(at) = b.get(&(topic.to_owned(), *p))
            && n < at
        {
            anyhow::bail!(
                "the live position of {topic}[{p}] moved back from {at} to {n} (a replay?) during the rebuild; run it again"
            );
        }
    }
    Ok(())
}

struct Swapped {
    reached: Duration,
    paused: Duration,
    rename: Duration,
    bookkeeping: Duration,
    positions: Vec<(i32, i64)>,
    deployed: Option<String>,
}

/// Steps 1 to 6 of the module's description. `None`: the shadow did not
/// reach the held positions in time, or readers held the tables past
/// [`RENAME_WAIT`] (nothing changed; catch up and retry).
#[allow(clippy::too_many_arguments)]
async fn swap(
    pool: &MySqlPool,
    shadow_pool: &MySqlPool,
    settings: &Settings,
    plan: &Plan,
    tables: &[String],
    bound: &Bound,
    ends: &[(i32, i64, i64)],
    stop: &CancellationToken,
    shadow: &mut ShadowTask,
    options: &Options,
    shadow_bytes: &[u8],
) -> anyhow::Result<Option<Swapped>> {
    let mut conn = pool.acquire().await?;
    let paused = Instant::now();
    let (mut tx, rows) = hold_positions(&mut conn, &settings.kafka.group_id, &plan.topic).await?;
    let held: BTreeMap<i32, i64> = {
        let mut m: BTreeMap<i32, i64> = ends.iter().map(|(p, low, _)| (*p, *low)).collect();
        for (p, n) in rows {
            m.insert(p, n.max(m.get(&p).copied().unwrap_or(0)));
        }
        m
    };
    moved_back(bound, &plan.topic, &held)?;
    raise(bound, &plan.topic, &held);
    // The shadow reaches exactly the held positions (it cannot pass them).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = positions(shadow_pool, &plan.shadow_group, &plan.topic, ends).await?;
        if at == held {
            break;
        }
        if Instant::now() > deadline || shadow.as_ref().is_none_or(|s| s.is_finished()) {
            tx.rollback().await?;
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The shadow is bounded at the held positions: it writes nothing more
    // (it is stopped after the commit, outside the pause).
    let reached = paused.elapsed();
    let exchanged = Instant::now();
    exchange_bookkeeping(&mut tx, plan, &plan.live_db, &plan.shadow_db, tables).await?;
    let bookkeeping = exchanged.elapsed();
    let mut rename_conn = pool.acquire().await?;
    let rename = match plan.swap_tables(&mut rename_conn, tables).await {
        Ok(d) => d,
        Err(e) => {
            tx.rollback().await?;
            if e.is::<ReadersHeld>() {
                tracing::warn!("{e}; the swap is abandoned (nothing changed) and tried again");
                return Ok(None);
            }
            return Err(e);
        }
    };
    let deployed = if options.component.is_some() {
        match super::admin::deploy_remote(settings, shadow_bytes.to_vec(), options.url.as_deref())
            .await
        {
            Ok(Ok(label)) => Some(label),
            outcome => {
                // Back as it was: the previous tables, the previous bookkeeping.
                plan.swap_tables(&mut rename_conn, tables).await?;
                tx.rollback().await?;
                let why = match outcome {
                    Ok(Err(reason)) => format!("the live host refused the component: {reason}"),
                    Err(e) => format!("{e:#}"),
                    Ok(Ok(_)) => unreachable!(),
                };
                anyhow::bail!("swap undone: {why}");
            }
        }
    } else {
        None
    };
    tx.commit().await?;
    let paused = paused.elapsed();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), stopped(shadow))
        .await
        .context("the shadow host did not stop within 60 s")?
        .context("the shadow host had stopped already")??;
    Ok(Some(Swapped {
        reached,
        paused,
        rename,
        bookkeeping,
        positions: held.into_iter().collect(),
        deployed,
    }))
}

/// `--rollback`: the previous tables back, with their bookkeeping, the
/// live positions back at the swap's, and the previous component
/// redeployed if the rebuild deployed one.
pub async fn rollback(
    settings: &Settings,
    domain: &str,
    url: Option<&str>,
) -> anyhow::Result<String> {
    let pool = sink::connect_mysql(&settings.mysql.url, 5).await?;
    let plan = Plan::new(&pool, settings, domain).await?;
    let _lock = exclusive(&pool, domain).await?;
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM projector_jobs WHERE kind = 'rebuild' AND domain = ?",
    )
    .bind(domain)
    .fetch_optional(&pool)
    .await?;
    anyhow::ensure!(
        state.as_deref() == Some("swapped"),
        "no swapped rebuild of {domain} to roll back (state: {})",
        state.as_deref().unwrap_or("none")
    );
    let shadow_pool = sink::connect_mysql(&plan.shadow_url(settings)?, 2).await?;
    let runtime = Runtime::from_settings(settings)?;
    let previous = recall(&shadow_pool, "previous_component")
        .await?
        .context("the shadow database lost its rebuild state")?;
    let rebuilt = recall(&shadow_pool, "component").await?.unwrap_or_default();
    let (tables, _) = swapped_tables(&runtime, (&rebuilt, "rebuilt"), &previous)?;
    let ends = watermarks_of(settings, &plan.topic).await?;
    let swap_positions = positions(&shadow_pool, &plan.shadow_group, &plan.topic, &ends).await?;
    let mut conn = pool.acquire().await?;
    let (mut tx, _) = hold_positions(&mut conn, &settings.kafka.group_id, &plan.topic).await?;
    exchange_bookkeeping(&mut tx, &plan, &plan.live_db, &plan.shadow_db, &tables).await?;
    for (p, n) in &swap_positions {
        sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, `partition`, next_offset) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)",
        )
        .bind(&settings.kafka.group_id)
        .bind(&plan.topic)
        .bind(p)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    }
    let mut rename_conn = pool.acquire().await?;
    if let Err(e) = plan.swap_tables(&mut rename_conn, &tables).await {
        tx.rollback().await?;
        return Err(e);
    }
    let deployed = recall(&shadow_pool, "deployed")
        .await?
        .is_some_and(|v| v == b"1");
    let mut redeployed = None;
    if deployed {
        match super::admin::deploy_remote(settings, previous, url).await {
            Ok(Ok(label)) => redeployed = Some(label),
            outcome => {
                plan.swap_tables(&mut rename_conn, &tables).await?;
                tx.rollback().await?;
                anyhow::bail!(
                    "rollback undone: redeploying the previous component failed: {outcome:?}"
                );
            }
        }
    }
    tx.commit().await?;
    let detail = json!({
        "rolled_back_to": swap_positions,
        "redeployed": redeployed,
    });
    jobs::advance(&pool, "rebuild", domain, "rolled_back", &detail).await?;
    Ok(format!(
        "rolled back {domain}: the previous tables are live again, positions back at {swap_positions:?}{}",
        redeployed
            .map(|l| format!(", {l} redeployed"))
            .unwrap_or_default()
    ))
}

/// `--drop-previous`: drops the shadow databases (the rollback point).
pub async fn drop_previous(settings: &Settings, domain: &str) -> anyhow::Result<String> {
    let pool = sink::connect_mysql(&settings.mysql.url, 3).await?;
    let plan = Plan::new(&pool, settings, domain).await?;
    let _lock = exclusive(&pool, domain).await?;
    for db in [&plan.shadow_db, &plan.transit_db] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute(&pool)
            .await?;
    }
    jobs::advance(&pool, "rebuild", domain, "dropped", &json!({})).await?;
    Ok(format!(
        "dropped {} and {}",
        plan.shadow_db, plan.transit_db
    ))
}
