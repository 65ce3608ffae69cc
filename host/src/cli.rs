//! The subcommands behind `projector`'s thin `main`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use std::process::ExitCode;

use crate::pipeline::{Host, Mode};
use crate::sandbox::{Runtime, envelope_view};
use crate::settings::Settings;
use crate::sink::connect_mysql;

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// `projector run [--native]`: consumes until SIGINT/SIGTERM, then finishes
/// the batch in hand, commits and exits 0.
pub fn run(settings: Settings, native: bool) -> anyhow::Result<ExitCode> {
    tokio_runtime()?.block_on(async {
        let mode = if native { Mode::Native } else { Mode::Wasm };
        let shutdown = crate::shutdown::on_signals();
        let host = Host::build(settings, mode).await?;
        host.run(shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `projector migrate`: applies the host's migrations, then reconciles the
/// tables every component of the configured folder declares (as a host
/// starting on that folder would, grants first), printing each change.
pub fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::from_settings(settings)?;
    let files = crate::sandbox::registry::wasm_files(&settings.components.dir).unwrap_or_default();
    tokio_runtime()?.block_on(async {
        let pool = connect_mysql(&settings.mysql.url, 1).await?;
        crate::sink::migrate(&pool).await?;
        for m in crate::sink::schema::MIGRATOR.iter() {
            println!("migration {:>4} {}", m.version, m.description);
        }
        let mut refused = 0;
        for file in &files {
            let component = runtime
                .load_file(file)
                .with_context(|| format!("component {} refused", file.display()))?;
            let applied = async {
                settings.grants.check(&component.info)?;
                crate::sink::reconcile(&pool, &component.info.tables)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match applied {
                Ok(changes) => {
                    for c in &changes {
                        println!("{}: {}: {}", component.label(), c.table, c.what);
                    }
                    if changes.is_empty() && !component.info.tables.is_empty() {
                        println!("{}: tables up to date", component.label());
                    }
                }
                Err(e) => {
                    refused += 1;
                    println!("{}: refused: {e}", component.label());
                }
            }
        }
        pool.close().await;
        if refused > 0 {
            return Ok(ExitCode::FAILURE);
        }
        println!("schema is up to date");
        Ok(ExitCode::SUCCESS)
    })
}

/// `projector check [--against MYSQL_URL] FILE...`: loads each component as
/// the host would (sandbox, contract, the domain's grant in the settings)
/// and prints its declaration, or why it is refused. With `--against`, it
/// also prints the schema changes loading it into that database would
/// apply, refuse (with the SQL) or leave alone, changing nothing; a 1.0
/// component, which declares no typed tables, is checked against the live
/// tables. Fails if any is refused.
pub fn check(
    settings: &Settings,
    against: Option<&str>,
    files: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::from_settings(settings)?;
    let rt = tokio_runtime()?;
    let database = match against {
        Some(url) => Some(rt.block_on(async {
            let pool = connect_mysql(url, 1).await?;
            let schema = crate::sink::Schema::load(&pool).await?;
            anyhow::Ok((pool, schema))
        })?),
        None => None,
    };
    let mut refused = 0;
    let mut report = Vec::new();
    for file in files {
        let checked = runtime
            .load_file(file)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                settings.grants.check(&c.info)?;
                let plan = match &database {
                    Some((pool, _)) if !c.info.tables.is_empty() => Some(
                        rt.block_on(crate::sink::reconcile::plan_against(pool, &c.info.tables))
                            .map_err(|e| format!("{e:#}"))?,
                    ),
                    Some((_, schema)) => {
                        schema.check_declaration(&c.info)?;
                        None
                    }
                    None => None,
                };
                match plan {
                    Some(plan) if !plan.refuse.is_empty() => Err(format!(
                        "the schema change it needs is not additive, so a host would refuse it:\n{plan}"
                    )),
                    _ => Ok((c, plan)),
                }
            });
        if json {
            report.push(match &checked {
                Ok((c, plan)) => serde_json::json!({
                    "file": file,
                    "ok": true,
                    "domain": c.info.domain,
                    "version": c.info.version,
                    "digest": c.digest,
                    "handles": c.info.handles,
                    "writes": c.info.writes.iter().map(|t| serde_json::json!({
                        "table": t.table,
                        "columns": t.columns.len(),
                    })).collect::<Vec<_>>(),
                    "typed_tables": c.info.tables.iter().map(|t| &t.name).collect::<Vec<_>>(),
                    "schema_plan": plan.as_ref().map(ToString::to_string),
                }),
                Err(e) => serde_json::json!({"file": file, "ok": false, "reason": e}),
            });
            if checked.is_err() {
                refused += 1;
            }
            continue;
        }
        match checked {
            Ok((c, plan)) => {
                println!(
                    "ok      {}  {}  sha256:{}",
                    file.display(),
                    c.label(),
                    &c.digest[..16]
                );
                println!("        handles: {}", c.info.handles.join(", "));
                for t in &c.info.writes {
                    println!("        writes {} ({} columns)", t.table, t.columns.len());
                }
                if c.info.tables.is_empty() {
                    println!("        declares no typed tables (a 1.0 component)");
                }
                if let Some(plan) = plan {
                    for line in plan.to_string().lines() {
                        println!("        {line}");
                    }
                }
            }
            Err(e) => {
                refused += 1;
                println!("refused {}: {e}", file.display());
            }
        }
    }
    if let Some((pool, _)) = database {
        rt.block_on(pool.close());
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `projector schema-doc [--write FILE] [FILE...]`: the schema reference
/// generated from the components' declarations, printed or spliced into
/// `FILE` between its marker lines.
pub fn schema_doc(
    settings: &Settings,
    write: Option<&Path>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::from_settings(settings)?;
    let files = if files.is_empty() {
        crate::sandbox::registry::wasm_files(&settings.components.dir)?
    } else {
        files.to_vec()
    };
    let infos = files
        .iter()
        .map(|f| {
            runtime
                .load_file(f)
                .map(|c| c.info)
                .with_context(|| format!("component {} refused", f.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let section = crate::schema_doc::render(&infos);
    match write {
        None => print!("{section}"),
        Some(path) => {
            let doc = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let Some(next) = crate::schema_doc::splice(&doc, &section) else {
                anyhow::bail!(
                    "{} has no generated section: add the lines\n{}\n{}",
                    path.display(),
                    crate::schema_doc::BEGIN,
                    crate::schema_doc::END
                );
            };
            std::fs::write(path, next)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote the generated section of {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `projector new <domain> [--dir DIR] [--sdk PATH]`.
pub fn new(domain: &str, dir: Option<PathBuf>, sdk: &Path) -> anyhow::Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("{domain}-projection")));
    for file in crate::author::scaffold(domain, &dir, sdk)? {
        println!("created {}", file.display());
    }
    println!(
        "next: projector test {0}   (then cargo build --release --target wasm32-wasip2 in {0}, and projector check or deploy the .wasm)",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `projector test [DIR]`: fails if either build misses a golden file.
pub fn test(settings: &Settings, dir: &Path) -> anyhow::Result<ExitCode> {
    crate::author::test(settings, dir)?;
    Ok(ExitCode::SUCCESS)
}

/// `projector deploy FILE [--url URL]`: sends a component to a running
/// host's `POST /projections/deploy`. Exit 0 when it is in force; 1 when the
/// host refused it (the reason is printed) or cannot be reached.
pub fn deploy(settings: &Settings, file: &Path, url: Option<&str>) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let outcome =
        tokio_runtime()?.block_on(crate::ops::admin::deploy_remote(settings, bytes, url))?;
    Ok(match outcome {
        Ok(label) => {
            println!("deployed {}: {label} is in force", file.display());
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("refused {}: {reason}", file.display());
            ExitCode::FAILURE
        }
    })
}

/// `projector project [--components DIR] FILE...`: routes each envelope file
/// to the component of its domain and prints the row operations it returns.
pub fn project(
    settings: &Settings,
    dir: Option<&Path>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::from_settings(settings)?;
    let dir = dir.unwrap_or(&settings.components.dir);
    let mut components = std::collections::HashMap::new();
    let mut failed = 0;
    for file in files {
        let text =
            std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
        let envelope: events::RawEnvelope = match events::Envelope::from_slice(&text) {
            Ok(e) => e,
            Err(e) => {
                failed += 1;
                println!("{}: {e}", file.display());
                continue;
            }
        };
        let domain = envelope.topic().to_owned();
        if !components.contains_key(&domain) {
            let path = dir.join(format!("{domain}.wasm"));
            let loaded = runtime
                .load_file(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            components.insert(domain.clone(), loaded);
        }
        let component = &components[&domain];
        println!(
            "{} {} -> {}",
            envelope.event_type,
            envelope.entity_id,
            component.label()
        );
        match envelope_view(&envelope, |env| component.session().project(env)) {
            Ok(ops) => {
                for op in &ops {
                    print_op(op);
                }
            }
            Err(e) => {
                failed += 1;
                println!("  refused ({}): {e}", e.class());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn show(v: &flatten::Value) -> String {
    use flatten::Value;
    let clip = |s: &str| {
        if s.chars().count() > 48 {
            format!("{}…", s.chars().take(47).collect::<String>())
        } else {
            s.to_owned()
        }
    };
    match v {
        Value::Null => "NULL".to_owned(),
        Value::Text(s) => format!("{:?}", clip(s)),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Timestamp(t) => t.clone(),
        Value::Json(j) => format!("json {}", clip(j)),
    }
}

fn print_columns(indent: &str, cols: &[flatten::Column]) {
    for c in cols {
        println!("{indent}{:<24} {}", c.name, show(&c.value));
    }
}

fn print_op(op: &flatten::RowOp) {
    use flatten::RowOp;
    match op {
        RowOp::Upsert(u) | RowOp::Update(u) => {
            let verb = if matches!(op, RowOp::Upsert(_)) {
                "upsert"
            } else {
                "update"
            };
            println!("  {verb} {}", u.table);
            print_columns("    key  ", &u.key);
            print_columns("    set  ", &u.values);
        }
        RowOp::Replace(r) => {
            println!("  replace {} ({} rows)", r.table, r.rows.len());
            print_columns("    parent ", &r.parent);
            for (i, row) in r.rows.iter().enumerate() {
                println!("    row {i}");
                print_columns("      ", row);
            }
        }
        RowOp::SoftDelete(k) => {
            println!("  soft-delete {}", k.table);
            print_columns("    key  ", &k.key);
        }
        RowOp::Delete(k) => {
            println!("  delete {}", k.table);
            print_columns("    key  ", &k.key);
        }
    }
}

/// `projector publish [--topic-prefix P] FILE...`: sends each envelope file to
/// the topic of its event type with the entity id as key, as the backend would.
pub fn publish(settings: &Settings, prefix: &str, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    tokio_runtime()?.block_on(async {
        let mut config = rdkafka::ClientConfig::new();
        for (k, v) in settings.kafka.producer_config() {
            config.set(k, v);
        }
        let producer: FutureProducer = config
            .create()
            .context("failed to create the Kafka producer")?;
        for file in files {
            let bytes = std::fs::read(file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let envelope: events::RawEnvelope = events::Envelope::from_slice(&bytes)
                .with_context(|| format!("{} is not an envelope", file.display()))?;
            let topic = format!("{prefix}{}", envelope.topic());
            let delivery = producer
                .send(
                    FutureRecord::to(&topic).key(envelope.key()).payload(&bytes),
                    std::time::Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("publishing {} failed: {e}", file.display()))?;
            println!(
                "{:<22} -> {topic}[{}]@{}  key {}",
                envelope.event_type, delivery.partition, delivery.offset, envelope.entity_id
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// What `projector status` reports.
#[derive(serde::Serialize)]
struct Status {
    group: String,
    /// Rows per projection table.
    tables: std::collections::BTreeMap<String, i64>,
    events_applied: i64,
    partitions: Vec<PartitionStatus>,
    total_lag: i64,
}

#[derive(serde::Serialize)]
struct PartitionStatus {
    topic: String,
    partition: i32,
    next_offset: i64,
    log_end_offset: i64,
    lag: i64,
}

/// `projector status [--json]`: what the projection holds and how far
/// behind it is.
pub fn status(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let status = tokio_runtime()?.block_on(async {
        let pool = connect_mysql(&settings.mysql.url, 1).await?;
        let mut tables = std::collections::BTreeMap::new();
        for table in crate::sink::schema::PROJECTION_TABLES {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM `{table}`"))
                .fetch_one(&pool)
                .await?;
            tables.insert((*table).to_owned(), n);
        }
        let events_applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
            .fetch_one(&pool)
            .await?;
        let stored = crate::sink::stored_offsets(&pool, &settings.kafka.group_id).await?;
        pool.close().await;
        let mut config = rdkafka::ClientConfig::new();
        for (k, v) in settings.kafka.consumer_config() {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config.create().context("failed to create a Kafka client")?;
        let metadata = consumer
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .context("Kafka metadata unavailable")?;
        let mut partitions = Vec::new();
        for topic in metadata
            .topics()
            .iter()
            .filter(|t| settings.topics.iter().any(|s| s == t.name()))
        {
            for p in topic.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic.name(), p.id(), std::time::Duration::from_secs(10))
                    .context("watermarks unavailable")?;
                let next = stored
                    .get(&(topic.name().to_owned(), p.id()))
                    .copied()
                    .unwrap_or(0);
                partitions.push(PartitionStatus {
                    topic: topic.name().to_owned(),
                    partition: p.id(),
                    next_offset: next,
                    log_end_offset: high,
                    lag: (high - next).max(0),
                });
            }
        }
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        anyhow::Ok(Status {
            group: settings.kafka.group_id.clone(),
            tables,
            events_applied,
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
        })
    })?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("table                 rows");
    for (table, n) in &status.tables {
        println!("{table:<20} {n:>6}");
    }
    println!("events applied       {:>6}", status.events_applied);
    println!(
        "\ntopic[partition]   next  end  lag   (group {})",
        status.group
    );
    for p in &status.partitions {
        println!(
            "{:<16} {:>6} {:>4} {:>4}",
            format!("{}[{}]", p.topic, p.partition),
            p.next_offset,
            p.log_end_offset,
            p.lag
        );
    }
    println!("total lag {}", status.total_lag);
    Ok(ExitCode::SUCCESS)
}

/// `projector replay --domain D`: resets the domain and follows the rebuild.
pub fn replay(
    settings: &Settings,
    domain: &str,
    wait: bool,
    stall_timeout: u64,
    force: bool,
) -> anyhow::Result<ExitCode> {
    tokio_runtime()?.block_on(async {
        let pool = connect_mysql(&settings.mysql.url, 2).await?;
        let reset = crate::ops::replay::reset(&pool, settings, domain, force).await?;
        for (table, n) in &reset.tables {
            println!("emptied {table:<18} {n:>8} rows");
        }
        println!(
            "forgot {} processed events of {}; its positions are back at 0 for group {}",
            reset.forgotten_events, reset.topic, settings.kafka.group_id
        );
        if !wait {
            println!(
                "the running host rebuilds {domain} from the start of {}",
                reset.topic
            );
            return Ok(ExitCode::SUCCESS);
        }
        let applied = crate::ops::replay::follow(
            &pool,
            settings,
            &reset,
            std::time::Duration::from_secs(stall_timeout),
        )
        .await?;
        let total: i64 = reset.ends.iter().map(|(_, low, high)| high - low).sum();
        println!(
            "replayed {total} messages of {}: {applied} events applied",
            reset.topic
        );
        for (table, _) in &reset.tables {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM `{table}`"))
                .fetch_one(&pool)
                .await?;
            println!("  {table:<18} {n:>8} rows");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// What `projector rebuild` does.
pub enum RebuildAction {
    Rebuild,
    Rollback,
    DropPrevious,
}

impl RebuildAction {
    pub fn from_flags(rollback: bool, drop_previous: bool) -> RebuildAction {
        match (rollback, drop_previous) {
            (true, _) => RebuildAction::Rollback,
            (_, true) => RebuildAction::DropPrevious,
            _ => RebuildAction::Rebuild,
        }
    }
}

/// `projector rebuild --domain D [--component F] [--rollback | --drop-previous]`.
pub fn rebuild(
    settings: &Settings,
    domain: &str,
    action: RebuildAction,
    options: crate::ops::rebuild::Options,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::ops::rebuild;
    tokio_runtime()?.block_on(async {
        match action {
            RebuildAction::Rollback => println!(
                "{}",
                rebuild::rollback(settings, domain, options.url.as_deref()).await?
            ),
            RebuildAction::DropPrevious => {
                println!("{}", rebuild::drop_previous(settings, domain).await?)
            }
            RebuildAction::Rebuild => {
                let mut options = options;
                // Ctrl-C or SIGTERM stops the catch-up (never a swap under way).
                options.interrupt = crate::shutdown::on_signals();
                let r = rebuild::rebuild(settings, domain, options).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!(
                        "rebuilt {} from {} events of {} with {} in {:.1} s (caught up after {:.1} s)",
                        r.domain, r.events, r.topic, r.component, r.total_secs, r.catch_up_secs
                    );
                    println!(
                        "swap: live {} paused {:.0} ms (bookkeeping {:.0} ms), RENAME TABLE {:.1} ms, at positions {:?}",
                        r.topic, r.live_paused_ms, r.bookkeeping_ms, r.rename_ms, r.positions
                    );
                    if let Some(d) = &r.deployed {
                        println!("deployed {d} to the live host");
                    }
                    for (t, n) in &r.tables {
                        println!("  {t:<18} {n:>8} rows");
                    }
                    println!(
                        "the previous tables are kept: `projector rebuild --domain {domain} --rollback` swaps them back, `--drop-previous` drops them"
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `projector canary FILE`: exit 0 when every event agreed (and, with
/// `--promote-after`, the candidate was promoted); 1 otherwise.
pub fn canary(
    settings: &Settings,
    file: &Path,
    options: crate::ops::canary::Options,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let asked = options.promote_after.is_some();
    let report = tokio_runtime()?.block_on(async {
        // Ctrl-C or SIGTERM ends the comparison with its report.
        crate::ops::canary::run(settings, file, options, crate::shutdown::on_signals()).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "canary {} beside {}: {} events, {:.2}% agreeing ({} identical, {} expected differences), {} differences, {} errors",
            report.candidate,
            report.live,
            report.events,
            report.agreement() * 100.0,
            report.agreed,
            report.expected_differences,
            report.differences,
            report.errors
        );
        for (column, n) in &report.by_column {
            println!("  differs in {column:<32} {n:>6} events");
        }
        for e in &report.examples {
            println!(
                "  {} {} {} [{}@{}] {}{}: live {} / candidate {}",
                e.kind,
                e.event_id,
                e.event_type,
                e.partition,
                e.offset,
                e.op,
                e.column
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default(),
                e.live,
                e.candidate
            );
        }
        match &report.promoted {
            Some(label) => println!("promoted: {label} is in force"),
            None if asked => println!("not promoted: {}", report.verdict),
            None => {}
        }
    }
    let clean = report.differences == 0 && report.errors == 0;
    Ok(if clean && (!asked || report.promoted.is_some()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// `projector prune`: removes `processed_events` rows of messages below
/// their partition's low watermark (retention deleted them: they can never
/// be delivered again, so their rows guard nothing), and tombstones older
/// than `tombstone_days`.
pub fn prune(settings: &Settings, tombstone_days: u32) -> anyhow::Result<ExitCode> {
    tokio_runtime()?.block_on(async {
        let pool = connect_mysql(&settings.mysql.url, 1).await?;
        crate::sink::migrate(&pool).await?;
        let p = crate::ops::prune::prune(&pool, settings, tombstone_days).await?;
        for (topic, e) in &p.skipped {
            println!("skipping {topic}: {e}");
        }
        let (pruned, tombstones) = (p.processed_events, p.tombstones);
        println!("pruned {pruned} processed events below their partition's low watermark");
        println!("pruned {tombstones} tombstones older than {tombstone_days} days");
        Ok(ExitCode::SUCCESS)
    })
}

/// One dead letter as `projector dlq list --json` prints it.
#[derive(serde::Serialize)]
struct ListedLetter<'a> {
    id: String,
    topic: &'a str,
    partition: i32,
    offset: i64,
    error_class: &'a str,
    error: &'a str,
    failed_at: chrono::DateTime<chrono::Utc>,
    retry_count: u32,
    redriven: bool,
}

/// `projector dlq list [--class C] [--json]`.
pub fn dlq_list(settings: &Settings, class: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let letters = crate::dlq::redrive::read_letters(settings)?;
    let done = tokio_runtime()?.block_on(async {
        let pool = connect_mysql(&settings.mysql.url, 1).await?;
        crate::sink::migrate(&pool).await?;
        crate::dlq::redrive::redriven(&pool).await
    })?;
    let selected: Vec<_> = letters
        .iter()
        .filter(|l| class.is_none_or(|c| c == l.error_class()))
        .collect();
    if json {
        let listed: Vec<ListedLetter<'_>> = selected
            .iter()
            .map(|l| ListedLetter {
                id: l.id(),
                topic: &l.letter.topic,
                partition: l.letter.partition,
                offset: l.letter.offset,
                error_class: l.error_class(),
                error: &l.letter.error,
                failed_at: l.letter.failed_at,
                retry_count: l.letter.retry_count,
                redriven: done.contains(&l.id()),
            })
            .collect();
        println!("{}", serde_json::to_string(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22} {:<22} {:<20} {:>5} {:<9} error",
        "id", "source", "class", "retry", "redriven"
    );
    for l in &selected {
        let (topic, partition, offset) = l.source();
        println!(
            "{:<22} {:<22} {:<20} {:>5} {:<9} {}",
            l.id(),
            format!("{topic}[{partition}]@{offset}"),
            l.error_class(),
            l.letter.retry_count,
            if done.contains(&l.id()) { "yes" } else { "no" },
            clip(&l.letter.error, 80)
        );
    }
    println!("{} dead letters", selected.len());
    Ok(ExitCode::SUCCESS)
}

/// `projector dlq show ID [--json]`: the letter with its original parsed
/// when it is JSON; exit 1 when there is no such letter.
pub fn dlq_show(settings: &Settings, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some(letter) = crate::dlq::redrive::read_letter(settings, id)? else {
        eprintln!("no dead letter {id} (see `projector dlq list`)");
        return Ok(ExitCode::FAILURE);
    };
    let mut value = letter.shown();
    value["id"] = serde_json::Value::String(letter.id());
    if json {
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `projector dlq redrive`.
pub fn dlq_redrive(
    settings: &Settings,
    selection: crate::dlq::redrive::Selection,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    if !selection.all && selection.class.is_none() && selection.ids.is_empty() {
        anyhow::bail!("say which letters: --all, --class CLASS or ids");
    }
    tokio_runtime()?.block_on(async {
        let pool = connect_mysql(&settings.mysql.url, 1).await?;
        let report = crate::dlq::redrive::redrive(settings, &pool, &selection, dry_run).await?;
        let verb = if dry_run { "would redrive" } else { "redriven" };
        for id in &report.sent {
            println!("{verb} {id}");
        }
        for (id, reason) in &report.failed {
            println!("failed   {id}: {reason}");
        }
        println!(
            "{} {verb}, {} skipped (already redriven; --again to resend), {} failed",
            report.sent.len(),
            report.skipped_already_redriven,
            report.failed.len()
        );
        Ok(if report.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
