//! What the host knows about itself, shared by the pipeline, the monitor,
//! the reloader's observer and the admin server: dependency checks, lag per
//! partition, rates per domain, the recent errors and the metrics.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::lag::{LagStatus, PartitionLag};
use super::metrics::Metrics;
use crate::sandbox::Registry;
use crate::sandbox::reload::ReloadEvent;
use crate::settings::Settings;

/// Most recent errors kept for the status page.
const RECENT_ERRORS: usize = 20;

/// Most recent dead letters kept for the status page.
const RECENT_LETTERS: usize = 50;

/// How far back the status page's charts go.
pub const HISTORY: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// One monitor sample kept for the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at: DateTime<Utc>,
    /// Events applied per second per domain since the previous sample.
    pub rates: BTreeMap<String, f64>,
    pub total_lag: i64,
}

/// A dead letter this host sent, as the status page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentLetter {
    /// `<dlq topic>:<partition>:<offset>`, as `projector dlq show` takes it.
    pub id: String,
    pub at: DateTime<Utc>,
    pub class: String,
    /// `<topic>[<partition>]@<offset>` of the event.
    pub source: String,
    pub error: String,
}

/// The result of one dependency check.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Check {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub message: String,
}

/// What the host observed, as served by `/status.json`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Observed {
    pub mysql: Check,
    pub kafka: Check,
    /// Set while a batch is being retried after a transient failure.
    /// Lanes (topics) retrying a batch after a transient failure, with why.
    pub retrying: std::collections::BTreeMap<String, String>,
    pub partitions: Vec<PartitionLag>,
    pub lag_status: LagStatus,
    pub total_lag: i64,
    /// Events applied per second per domain over the last sample interval.
    pub rates: BTreeMap<String, f64>,
    /// Events applied per domain since start (from the metrics).
    pub applied: BTreeMap<String, u64>,
    /// Events dead-lettered since start (from the metrics).
    pub dead_lettered: u64,
    /// Gaps met in the log since start (offsets retention deleted before
    /// this database applied them), and the offsets they cover.
    pub log_gaps: u64,
    pub log_gap_offsets: u64,
    pub recent_errors: VecDeque<RecentError>,
    /// The dead letters this host sent, newest last.
    pub recent_letters: VecDeque<RecentLetter>,
    /// The monitor's samples of the last [`HISTORY`], oldest first.
    pub history: VecDeque<Sample>,
    /// Shadow rebuilds and canaries (`projector_jobs`), as last read.
    pub jobs: Vec<super::jobs::Job>,
    #[serde(skip)]
    pub(super) rate_base: Option<(Instant, BTreeMap<String, u64>)>,
}

/// A loaded component, as listed by the status page and readiness.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    pub domain: String,
    pub version: String,
    pub digest: String,
    pub handles: Vec<String>,
    /// The tables it declares it writes.
    pub writes: Vec<String>,
    /// The tables the settings grant its domain.
    pub granted: Vec<String>,
}

/// State shared by the pipeline, the monitor, the reloader and the admin
/// server of one host.
pub struct Shared {
    pub metrics: Metrics,
    pub group: String,
    pub topics: Vec<String>,
    pub registry: watch::Receiver<Arc<Registry>>,
    pub started_at: DateTime<Utc>,
    /// The admin server's bound address, once it listens.
    pub admin_addr: OnceLock<std::net::SocketAddr>,
    /// Where the read-only listener (`admin.metrics_listen`) is bound.
    pub metrics_addr: OnceLock<std::net::SocketAddr>,
    pub grants: crate::settings::Grants,
    /// Samples kept for the charts: [`HISTORY`] at the monitor's interval.
    history_len: usize,
    observed: Mutex<Observed>,
}

impl Shared {
    pub fn new(settings: &Settings, registry: watch::Receiver<Arc<Registry>>) -> Shared {
        let shared = Shared {
            metrics: Metrics::new(),
            group: settings.kafka.group_id.clone(),
            topics: settings.topics.clone(),
            registry,
            started_at: Utc::now(),
            admin_addr: OnceLock::new(),
            metrics_addr: OnceLock::new(),
            grants: settings.grants.clone(),
            history_len: (HISTORY.as_secs_f64()
                / settings.admin.lag_interval.as_secs_f64().max(0.05))
            .ceil()
            .clamp(2.0, 20_000.0) as usize,
            observed: Mutex::new(Observed::default()),
        };
        shared.components_changed();
        shared
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of what was observed, with the counts of the metrics.
    pub fn observed(&self) -> Observed {
        let mut o = self.lock().clone();
        o.applied = self.metrics.applied_by_domain();
        o.dead_lettered = self.metrics.dead_lettered_total();
        o
    }

    pub fn components(&self) -> Vec<ComponentView> {
        self.registry
            .borrow()
            .domains()
            .map(|(domain, p)| ComponentView {
                domain: domain.clone(),
                version: p.info().version.clone(),
                digest: p.digest().to_owned(),
                handles: p.info().handles.clone(),
                writes: p.info().writes.iter().map(|t| t.table.clone()).collect(),
                granted: self.grants.0.get(domain).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Refreshes `projector_component_info` after a (re)load, and creates
    /// the counters of the event types it handles at zero.
    pub fn components_changed(&self) {
        self.metrics.component_info.reset();
        let components = self.components();
        for c in &components {
            self.metrics
                .component_info
                .with_label_values(&[&c.domain, &c.version, &c.digest])
                .set(1);
        }
        self.metrics.init_series(
            self.topics.iter().map(String::as_str),
            components
                .iter()
                .flat_map(|c| c.handles.iter().map(String::as_str)),
        );
        for domain in self
            .grants
            .0
            .keys()
            .chain(components.iter().map(|c| &c.domain))
        {
            for outcome in ["loaded", "refused"] {
                self.metrics.reloads.with_label_values(&[domain, outcome]);
            }
        }
    }

    /// Keeps a monitor sample for the charts, dropping those older than
    /// [`HISTORY`].
    pub(super) fn push_sample(o: &mut Observed, sample: Sample, len: usize) {
        o.history.push_back(sample);
        while o.history.len() > len {
            o.history.pop_front();
        }
    }

    pub(super) fn history_len(&self) -> usize {
        self.history_len
    }

    /// Records a dead letter this host sent.
    pub fn record_letter(&self, id: String, class: &str, source: String, error: &str) {
        let mut o = self.lock();
        if o.recent_letters.len() == RECENT_LETTERS {
            o.recent_letters.pop_front();
        }
        o.recent_letters.push_back(RecentLetter {
            id,
            at: Utc::now(),
            class: class.to_owned(),
            source,
            error: error.chars().take(500).collect(),
        });
    }

    pub fn record_error(&self, kind: &str, message: impl Into<String>) {
        let mut o = self.lock();
        if o.recent_errors.len() == RECENT_ERRORS {
            o.recent_errors.pop_front();
        }
        o.recent_errors.push_back(RecentError {
            at: Utc::now(),
            kind: kind.to_owned(),
            message: message.into(),
        });
    }

    pub fn set_retrying(&self, lane: &str, reason: Option<String>) {
        {
            let mut o = self.lock();
            match reason {
                Some(r) => o.retrying.insert(lane.to_owned(), r),
                None => o.retrying.remove(lane),
            };
        }
        self.update_ready();
    }

    /// Records what a reload did (the reloader's observer).
    pub fn reloaded(&self, event: ReloadEvent<'_>) {
        match event {
            ReloadEvent::Loaded { domain, .. } => {
                self.components_changed();
                self.metrics
                    .reloads
                    .with_label_values(&[domain, "loaded"])
                    .inc();
            }
            ReloadEvent::Refused {
                domain,
                file,
                reason,
            } => {
                self.metrics
                    .reloads
                    .with_label_values(&[domain, "refused"])
                    .inc();
                self.record_error("component_refused", format!("{}: {reason}", file.display()));
            }
        }
    }

    /// Records offsets the log lost before this database applied them: an
    /// error in the log, the metrics, readiness's checks and the status
    /// page.
    pub fn log_gap(&self, topic: &str, partition: i32, from: i64, to: i64) {
        let missing = (to - from).max(0) as u64;
        let message = format!(
            "{topic}[{partition}]: offsets {from}..{to} ({missing}) were deleted from the log before this database applied them"
        );
        tracing::error!(topic, partition, from, to, "{message}");
        self.metrics
            .log_gap_offsets
            .with_label_values(&[topic, &partition.to_string()])
            .inc_by(missing);
        {
            let mut o = self.lock();
            o.log_gaps += 1;
            o.log_gap_offsets += missing;
        }
        self.record_error("log_gap", message);
    }

    /// Why the host is not ready (empty when it is).
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let o = self.lock();
        let mut reasons = Vec::new();
        if !o.mysql.ok {
            reasons.push(format!(
                "mysql: {}",
                o.mysql.error.as_deref().unwrap_or("not checked yet")
            ));
        }
        if !o.kafka.ok {
            reasons.push(format!(
                "kafka: {}",
                o.kafka.error.as_deref().unwrap_or("not checked yet")
            ));
        }
        if self.registry.borrow().domains().next().is_none() {
            reasons.push("components: none loaded".to_owned());
        }
        for (lane, r) in &o.retrying {
            reasons.push(format!(
                "pipeline: {lane}: retrying after a transient failure: {r}"
            ));
        }
        if o.lag_status == LagStatus::Err {
            reasons.push("lag: over the error threshold".to_owned());
        }
        reasons
    }

    pub(super) fn update_ready(&self) {
        let ready = self.not_ready_reasons().is_empty();
        self.metrics.ready.set(i64::from(ready));
    }
}
