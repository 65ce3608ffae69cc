//! `projector canary <FILE>`: runs a candidate component beside the live one
//! on the same events, writing nothing, and compares their row operations
//! event by event.
//!
//! The canary consumes the domain's topic with a consumer of its own (group
//! `<group>.canary.<domain>`, partitions assigned, from the live host's
//! stored positions, so it sees the events the live host is about to apply;
//! or from the start with `--from-start`). Each event is projected by the
//! live component (the one of the components folder) and by the candidate,
//! each in a fresh instance, and the two results compared:
//!
//! - **agreed**: the same operations (or both refused the event with the
//!   same error class);
//! - **expected difference**: the same operations except in columns the
//!   operator declared (`--expect table.column` or `--expect column`), the
//!   point of the change;
//! - **difference**: anything else (other columns, other operations, or
//!   the candidate accepting what the live one refuses);
//! - **error**: the candidate failed (trap, deadline, invalid operation)
//!   where the live one did not.
//!
//! `--promote-after N` deploys the candidate to the live host (`POST
//! /projections/deploy`) after N events agreed (agreed or expected) with no
//! difference and no error; the first difference or error ends the canary
//! without promoting. The report (counts, examples with event id, operation,
//! column, live and candidate value) is printed and kept in
//! `projector_jobs` for the status page and metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flatten::{Column, RowOp, Value};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::jobs;
use super::replay::{topic_of, watermarks_of};
use crate::sandbox::{GuestFailure, LoadedComponent, Runtime, envelope_view};
use crate::settings::Settings;
use crate::sink::{self, Schema};

/// Options of a canary.
pub struct Options {
    /// Promote after this many agreeing events with no difference or error.
    pub promote_after: Option<u64>,
    /// Columns whose differences are expected: `table.column` or `column`.
    pub expect: Vec<String>,
    /// Stop after this many events.
    pub max_events: Option<u64>,
    /// Stop after this long without an event.
    pub idle_timeout: Option<Duration>,
    /// From the start of the topic instead of the live positions.
    pub from_start: bool,
    /// The live host's admin URL (for promoting).
    pub url: Option<String>,
    /// Examples kept per kind.
    pub examples: usize,
}

/// One example of a difference or an error.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub kind: &'static str,
    pub event_id: String,
    pub event_type: String,
    pub partition: i32,
    pub offset: i64,
    /// The operation (index, kind and table) where they differ.
    pub op: String,
    pub column: Option<String>,
    pub live: serde_json::Value,
    pub candidate: serde_json::Value,
}

/// What a canary saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub domain: String,
    pub live: String,
    pub candidate: String,
    pub events: u64,
    pub agreed: u64,
    pub expected_differences: u64,
    pub differences: u64,
    pub errors: u64,
    /// Differences per `table.column` (`table.*` for a different operation).
    pub by_column: BTreeMap<String, u64>,
    pub examples: Vec<Example>,
    /// `promoted`, `refused` (a difference or an error with
    /// `--promote-after`), or `compared` (no promotion asked, or stopped
    /// before N).
    pub verdict: String,
    pub promoted: Option<String>,
    pub elapsed_secs: f64,
}

impl Report {
    /// Agreeing events (identical or differing only where expected).
    pub fn agreeing(&self) -> u64 {
        self.agreed + self.expected_differences
    }

    /// Agreement as a share of events.
    pub fn agreement(&self) -> f64 {
        if self.events == 0 {
            1.0
        } else {
            self.agreeing() as f64 / self.events as f64
        }
    }

    fn detail(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(examples) = v.get_mut("examples").and_then(|e| e.as_array_mut()) {
            examples.truncate(5);
        }
        v["agreement"] = json!(self.agreement());
        v
    }
}

/// How one event compared.
enum Outcome {
    Agreed,
    Expected,
    Differs(Vec<Example>),
    Error(Box<Example>),
}

fn value_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn op_kind(op: &RowOp) -> &'static str {
    match op {
        RowOp::Upsert(_) => "upsert",
        RowOp::Update(_) => "update",
        RowOp::Replace(_) => "replace",
        RowOp::SoftDelete(_) => "soft_delete",
        RowOp::Delete(_) => "delete",
    }
}

/// The columns of an operation by name (a replace's rows numbered).
fn columns(op: &RowOp) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut put = |prefix: &str, cols: &[Column]| {
        for c in cols {
            out.insert(format!("{prefix}{}", c.name), c.value.clone());
        }
    };
    match op {
        RowOp::Upsert(u) | RowOp::Update(u) => {
            put("", &u.key);
            put("", &u.values);
        }
        RowOp::Replace(r) => {
            put("", &r.parent);
            for (i, row) in r.rows.iter().enumerate() {
                put(&format!("[{i}]."), row);
            }
        }
        RowOp::SoftDelete(k) | RowOp::Delete(k) => put("", &k.key),
    }
    out
}

/// The plain column name of a (possibly row-numbered) column.
fn plain(column: &str) -> &str {
    column.rsplit('.').next().unwrap_or(column)
}

struct Compare<'a> {
    expect: &'a [String],
}

impl Compare<'_> {
    fn expected(&self, table: &str, column: &str) -> bool {
        let column = plain(column);
        self.expect
            .iter()
            .any(|e| e == column || *e == format!("{table}.{column}"))
    }

    fn ops(&self, at: &Example, live: &[RowOp], candidate: &[RowOp]) -> Outcome {
        if live == candidate {
            return Outcome::Agreed;
        }
        let mut unexpected = Vec::new();
        let n = live.len().max(candidate.len());
        for i in 0..n {
            let (l, c) = (live.get(i), candidate.get(i));
            let (Some(l), Some(c)) = (l, c) else {
                let (op, table) = l
                    .or(c)
                    .map(|o| (op_kind(o), o.table().to_owned()))
                    .unwrap_or_default();
                unexpected.push(Example {
                    op: format!("#{i} {op} {table}"),
                    column: None,
                    live: l
                        .map(|o| serde_json::to_value(o).unwrap_or_default())
                        .unwrap_or(serde_json::Value::Null),
                    candidate: c
                        .map(|o| serde_json::to_value(o).unwrap_or_default())
                        .unwrap_or(serde_json::Value::Null),
                    ..at.clone()
                });
                continue;
            };
            if l == c {
                continue;
            }
            // Compared column by column when they are the same operation
            // on the same table (a replace: with as many rows).
            let same_shape = op_kind(l) == op_kind(c)
                && l.table() == c.table()
                && match (l, c) {
                    (RowOp::Replace(a), RowOp::Replace(b)) => a.rows.len() == b.rows.len(),
                    _ => true,
                };
            if !same_shape {
                unexpected.push(Example {
                    op: format!("#{i} {} {}", op_kind(l), l.table()),
                    column: None,
                    live: serde_json::to_value(l).unwrap_or_default(),
                    candidate: serde_json::to_value(c).unwrap_or_default(),
                    ..at.clone()
                });
                continue;
            }
            let (lc, cc) = (columns(l), columns(c));
            let names: std::collections::BTreeSet<&String> = lc.keys().chain(cc.keys()).collect();
            for name in names {
                let (lv, cv) = (lc.get(name), cc.get(name));
                if lv == cv || self.expected(l.table(), name) {
                    continue;
                }
                unexpected.push(Example {
                    op: format!("#{i} {} {}", op_kind(l), l.table()),
                    column: Some(name.clone()),
                    live: lv.map(value_json).unwrap_or(serde_json::Value::Null),
                    candidate: cv.map(value_json).unwrap_or(serde_json::Value::Null),
                    ..at.clone()
                });
            }
        }
        if unexpected.is_empty() {
            Outcome::Expected
        } else {
            Outcome::Differs(unexpected)
        }
    }
}

/// A projection result: the operations, or the failure's class and text.
type Projected = Result<Vec<RowOp>, (&'static str, String)>;

fn project(c: &LoadedComponent, schema: Option<&Schema>, env: &flatten::Envelope<'_>) -> Projected {
    let ops = c
        .session()
        .project(env)
        .map_err(|e: GuestFailure| (e.class(), e.to_string()))?;
    if let Some(schema) = schema {
        for op in &ops {
            sink::validate(op, &c.info, schema).map_err(|e| (e.class(), e.to_string()))?;
        }
    }
    Ok(ops)
}

/// Runs the canary until promotion, refusal, `max_events`, `idle_timeout`
/// or `shutdown`.
pub async fn run(
    settings: &Settings,
    file: &Path,
    options: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let runtime = Runtime::from_settings(settings)?;
    let bytes =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let candidate = runtime
        .load(&bytes, &file.display().to_string())
        .map_err(|e| anyhow::anyhow!("candidate {} refused: {e:#}", file.display()))?;
    let domain = candidate.info.domain.clone();
    settings
        .grants
        .check(&candidate.info)
        .map_err(|e| anyhow::anyhow!("candidate {} refused: {e}", candidate.label()))?;
    let live_file =
        crate::sandbox::registry::component_file(&runtime, &settings.components.dir, &domain)?;
    let live = runtime
        .load_file(&live_file)
        .map_err(|e| anyhow::anyhow!("live component {} refused: {e:#}", live_file.display()))?;
    let pool = sink::connect_mysql(&settings.mysql.url, 2).await?;
    sink::migrate(&pool).await?;
    let schema = Schema::load(&pool).await?;
    // The candidate's operations are validated as the host would, unless it
    // declares what the live schema lacks yet (a deploy would add it).
    let candidate_schema = schema
        .check_declaration(&candidate.info)
        .is_ok()
        .then_some(&schema);
    let topic = topic_of(settings, &domain)?;
    let ends = watermarks_of(settings, &topic).await?;
    let stored = sink::stored_offsets(&pool, &settings.kafka.group_id).await?;
    let mut assignment = TopicPartitionList::new();
    for (p, low, _) in &ends {
        let from = if options.from_start {
            *low
        } else {
            stored.get(&(topic.clone(), *p)).copied().unwrap_or(*low)
        };
        assignment.add_partition_offset(&topic, *p, Offset::Offset(from))?;
    }
    let mut config = settings.kafka.consumer_config();
    config.insert(
        "group.id".into(),
        format!("{}.canary.{domain}", settings.kafka.group_id),
    );
    config.insert("enable.auto.commit".into(), "false".into());
    let consumer: StreamConsumer = crate::consume::client_config(config)
        .create()
        .context("failed to create the canary's consumer")?;
    consumer.assign(&assignment)?;

    let mut report = Report {
        domain: domain.clone(),
        live: live.label(),
        candidate: candidate.label(),
        verdict: "compared".into(),
        ..Report::default()
    };
    let record = |state: &'static str, report: &Report, fresh: bool| {
        let (pool, domain, detail) = (pool.clone(), domain.clone(), report.detail());
        async move {
            if let Err(e) = jobs::record(&pool, "canary", &domain, state, &detail, fresh).await {
                tracing::warn!(error = %e, "could not record the canary's state");
            }
        }
    };
    record("comparing", &report, true).await;
    let compare = Compare {
        expect: &options.expect,
    };
    let mut last_record = Instant::now();
    let mut last_event = Instant::now();
    let refused = loop {
        if options.max_events.is_some_and(|n| report.events >= n) {
            break false;
        }
        if let Some(n) = options.promote_after
            && report.agreeing() >= n
        {
            break false;
        }
        if last_record.elapsed() >= Duration::from_secs(1) {
            last_record = Instant::now();
            record("comparing", &report, false).await;
            eprintln!(
                "[canary] {} events: {} agreed, {} expected differences, {} differences, {} errors",
                report.events,
                report.agreed,
                report.expected_differences,
                report.differences,
                report.errors
            );
        }
        if options
            .idle_timeout
            .is_some_and(|t| last_event.elapsed() > t)
        {
            break false;
        }
        let message = tokio::select! {
            () = shutdown.cancelled() => break false,
            m = tokio::time::timeout(Duration::from_millis(250), consumer.recv()) => m,
        };
        let m = match message {
            Err(_) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        last_event = Instant::now();
        let Some(payload) = m.payload() else { continue };
        let Ok(envelope) = events::Envelope::from_slice(payload) else {
            // Refused by both before any component runs.
            report.events += 1;
            report.agreed += 1;
            continue;
        };
        if !candidate.info.handles.contains(&envelope.event_type)
            && !live.info.handles.contains(&envelope.event_type)
        {
            report.events += 1;
            report.agreed += 1;
            continue;
        }
        let (l, c) = envelope_view(&envelope, |env| {
            (
                project(&live, Some(&schema), env),
                project(&candidate, candidate_schema, env),
            )
        });
        let at = Example {
            kind: "difference",
            event_id: envelope.event_id.to_string(),
            event_type: envelope.event_type.clone(),
            partition: m.partition(),
            offset: m.offset(),
            op: String::new(),
            column: None,
            live: serde_json::Value::Null,
            candidate: serde_json::Value::Null,
        };
        let outcome = match (&l, &c) {
            (Ok(l), Ok(c)) => compare.ops(&at, l, c),
            (Err((lc, _)), Err((cc, _))) if lc == cc => Outcome::Agreed,
            (Ok(_) | Err(_), Err((class, message))) => Outcome::Error(Box::new(Example {
                kind: "error",
                op: class.to_string(),
                live: match &l {
                    Ok(ops) => json!(format!("{} operations", ops.len())),
                    Err((class, message)) => json!(format!("{class}: {message}")),
                },
                candidate: json!(format!("{class}: {message}")),
                ..at
            })),
            (Err((class, message)), Ok(ops)) => Outcome::Differs(vec![Example {
                op: "accepted".into(),
                live: json!(format!("{class}: {message}")),
                candidate: json!(format!("{} operations", ops.len())),
                ..at
            }]),
        };
        report.events += 1;
        match outcome {
            Outcome::Agreed => report.agreed += 1,
            Outcome::Expected => report.expected_differences += 1,
            Outcome::Differs(examples) => {
                report.differences += 1;
                for e in examples {
                    let table = e.op.rsplit(' ').next().unwrap_or("").to_owned();
                    let key = format!("{table}.{}", e.column.as_deref().map_or("*", plain));
                    *report.by_column.entry(key).or_default() += 1;
                    if report.examples.len() < options.examples {
                        report.examples.push(e);
                    }
                }
            }
            Outcome::Error(e) => {
                report.errors += 1;
                if report.examples.len() < options.examples {
                    report.examples.push(*e);
                }
            }
        }
        if options.promote_after.is_some() && (report.differences > 0 || report.errors > 0) {
            break true;
        }
    };
    report.elapsed_secs = started.elapsed().as_secs_f64();
    if refused {
        report.verdict = "refused".into();
        record("refused", &report, false).await;
        return Ok(report);
    }
    if let Some(n) = options.promote_after
        && report.agreeing() >= n
    {
        match super::admin::deploy_remote(settings, bytes, options.url.as_deref()).await? {
            Ok(label) => {
                report.verdict = "promoted".into();
                report.promoted = Some(label);
                record("promoted", &report, false).await;
            }
            Err(reason) => {
                report.verdict = format!("refused by the host: {reason}");
                record("refused", &report, false).await;
            }
        }
        return Ok(report);
    }
    record("stopped", &report, false).await;
    Ok(report)
}
