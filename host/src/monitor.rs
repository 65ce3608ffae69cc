//! What the host knows about itself, for `/health`, `/metrics` and the status
//! page: dependency checks, lag per partition with a Burrow-style status,
//! rates per domain and the recent errors.
//!
//! # Lag status
//!
//! Every `admin.lag_interval` the monitor reads the group's next offsets from
//! MySQL (the authoritative position, see `pipeline`) and each partition's log
//! end offset from the broker. Lag = log end offset - next offset. Over the
//! last `admin.lag_window` samples a partition is:
//!
//! - **ERR** when its lag is over `admin.lag_error_threshold`;
//! - **STALL** when it had lag in every sample and its next offset did not
//!   move (the consumer is stuck or gone);
//! - **WARN** when its lag never shrank and grew over the window (the
//!   consumer moves but falls behind);
//! - **OK** otherwise (any sample at zero lag is OK).
//!
//! The overall status is the worst partition's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::pipeline::Stats;
use crate::registry::Registry;
use crate::settings::Settings;

/// Most recent errors kept for the status page.
const RECENT_ERRORS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum LagStatus {
    #[default]
    Ok,
    Warn,
    Stall,
    Err,
}

impl LagStatus {
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LagStatus::Ok => "OK",
            LagStatus::Warn => "WARN",
            LagStatus::Stall => "STALL",
            LagStatus::Err => "ERR",
        }
    }
}

/// The status of one partition from its recent `(next offset, lag)` samples,
/// oldest first, given the window length and the error threshold.
pub fn evaluate(samples: &[(i64, i64)], window: usize, error_threshold: i64) -> LagStatus {
    let Some(&(_, last_lag)) = samples.last() else {
        return LagStatus::Ok;
    };
    if last_lag > error_threshold {
        return LagStatus::Err;
    }
    if samples.len() < window.max(2) || samples.iter().any(|&(_, lag)| lag == 0) {
        return LagStatus::Ok;
    }
    let first_next = samples[0].0;
    if samples.iter().all(|&(next, _)| next == first_next) {
        return LagStatus::Stall;
    }
    if samples.windows(2).all(|w| w[1].1 >= w[0].1) && last_lag > samples[0].1 {
        return LagStatus::Warn;
    }
    LagStatus::Ok
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

/// One partition as the last samples saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
    pub status: LagStatus,
    #[serde(skip)]
    samples: VecDeque<(i64, i64)>,
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
    pub retrying: Option<String>,
    pub partitions: Vec<PartitionLag>,
    pub lag_status: LagStatus,
    pub total_lag: i64,
    /// Events applied per second per domain over the last sample interval.
    pub rates: BTreeMap<String, f64>,
    /// Events applied per domain since start.
    pub applied: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub recent_errors: VecDeque<RecentError>,
    #[serde(skip)]
    rate_base: Option<(Instant, BTreeMap<String, u64>)>,
}

/// A loaded component, as listed by the status page and readiness.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    pub domain: String,
    pub version: String,
    pub digest: String,
    pub handles: Vec<String>,
}

/// State shared by the pipeline, the monitor, the reloader and the admin
/// server of one host.
pub struct Shared {
    pub metrics: Metrics,
    pub stats: Arc<Stats>,
    pub group: String,
    pub topics: Vec<String>,
    pub registry: watch::Receiver<Arc<Registry>>,
    pub started_at: DateTime<Utc>,
    /// The admin server's bound address, once it listens.
    pub admin_addr: OnceLock<std::net::SocketAddr>,
    observed: Mutex<Observed>,
}

impl Shared {
    pub fn new(
        settings: &Settings,
        stats: Arc<Stats>,
        registry: watch::Receiver<Arc<Registry>>,
    ) -> Shared {
        let shared = Shared {
            metrics: Metrics::new(),
            stats,
            group: settings.kafka.group_id.clone(),
            topics: settings.topics.clone(),
            registry,
            started_at: Utc::now(),
            admin_addr: OnceLock::new(),
            observed: Mutex::new(Observed::default()),
        };
        shared.components_changed();
        shared
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of what was observed.
    pub fn observed(&self) -> Observed {
        self.lock().clone()
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
            })
            .collect()
    }

    /// Refreshes `projector_component_info` after a (re)load.
    pub fn components_changed(&self) {
        self.metrics.component_info.reset();
        for c in self.components() {
            self.metrics
                .component_info
                .with_label_values(&[&c.domain, &c.version, &c.digest])
                .set(1);
        }
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

    pub fn set_retrying(&self, reason: Option<String>) {
        self.lock().retrying = reason;
        self.update_ready();
    }

    /// Counts events applied per domain (for the rates) and dead letters.
    pub fn count(&self, applied: &HashMap<String, u64>, dead_lettered: u64) {
        let mut o = self.lock();
        for (domain, n) in applied {
            *o.applied.entry(domain.clone()).or_insert(0) += n;
        }
        o.dead_lettered += dead_lettered;
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
        if let Some(r) = &o.retrying {
            reasons.push(format!("pipeline: retrying after a transient failure: {r}"));
        }
        if o.lag_status == LagStatus::Err {
            reasons.push("lag: over the error threshold".to_owned());
        }
        reasons
    }

    fn update_ready(&self) {
        let ready = self.not_ready_reasons().is_empty();
        self.metrics.ready.set(i64::from(ready));
    }
}

/// Samples dependencies and lag every `admin.lag_interval`.
pub struct Monitor {
    shared: Arc<Shared>,
    pool: MySqlPool,
    kafka: Arc<BaseConsumer>,
    window: usize,
    error_threshold: i64,
    interval: Duration,
}

impl Monitor {
    pub fn new(
        settings: &Settings,
        pool: MySqlPool,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Monitor> {
        let mut config = rdkafka::ClientConfig::new();
        for (k, v) in settings.kafka.consumer_config() {
            config.set(k, v);
        }
        // A metadata-only client: it never joins the group.
        config.set("group.id", format!("{}.monitor", settings.kafka.group_id));
        let kafka: BaseConsumer = config.create()?;
        Ok(Monitor {
            shared,
            pool,
            kafka: Arc::new(kafka),
            window: settings.admin.lag_window.max(2),
            error_threshold: settings.admin.lag_error_threshold,
            interval: settings.admin.lag_interval,
        })
    }

    /// Samples forever (until the task is dropped).
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample().await;
        }
    }

    /// One sample: MySQL positions, broker watermarks, statuses, rates.
    pub async fn sample(&self) {
        let now = Utc::now();
        let stored = tokio::time::timeout(
            Duration::from_secs(3),
            crate::executor::stored_offsets(&self.pool, &self.shared.group),
        )
        .await;
        let mysql = match stored {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 3 s".to_owned()),
        };
        let kafka = self.watermarks().await;
        let shared = &self.shared;
        let metrics = &shared.metrics;
        {
            let mut o = shared.lock();
            o.mysql = Check {
                ok: mysql.is_ok(),
                error: mysql.as_ref().err().cloned(),
                checked_at: Some(now),
            };
            o.kafka = Check {
                ok: kafka.is_ok(),
                error: kafka.as_ref().err().cloned(),
                checked_at: Some(now),
            };
            metrics
                .dependency_up
                .with_label_values(&["mysql"])
                .set(i64::from(mysql.is_ok()));
            metrics
                .dependency_up
                .with_label_values(&["kafka"])
                .set(i64::from(kafka.is_ok()));
            if let (Ok(stored), Ok(marks)) = (&mysql, &kafka) {
                let mut previous: HashMap<(String, i32), PartitionLag> = o
                    .partitions
                    .drain(..)
                    .map(|p| ((p.topic.clone(), p.partition), p))
                    .collect();
                let mut worst = LagStatus::Ok;
                let mut total = 0;
                for ((topic, partition), (low, high)) in marks {
                    let key = (topic.clone(), *partition);
                    // No stored position yet: the consumer starts at the
                    // earliest offset still in the log.
                    let next = stored.get(&key).copied().unwrap_or(*low);
                    let lag = (high - next).max(0);
                    let mut samples = previous.remove(&key).map(|p| p.samples).unwrap_or_default();
                    samples.push_back((next, lag));
                    while samples.len() > self.window {
                        samples.pop_front();
                    }
                    let status =
                        evaluate(samples.make_contiguous(), self.window, self.error_threshold);
                    worst = worst.max(status);
                    total += lag;
                    let labels = [topic.as_str(), &partition.to_string()];
                    metrics.lag.with_label_values(&labels).set(lag);
                    metrics.next_offset.with_label_values(&labels).set(next);
                    metrics.log_end_offset.with_label_values(&labels).set(*high);
                    metrics
                        .lag_status
                        .with_label_values(&labels)
                        .set(status.code());
                    o.partitions.push(PartitionLag {
                        topic: topic.clone(),
                        partition: *partition,
                        next_offset: next,
                        log_end_offset: *high,
                        lag,
                        status,
                        samples,
                    });
                }
                o.lag_status = worst;
                o.total_lag = total;
                metrics.overall_lag_status.set(worst.code());
            }
            // Rates per domain from the applied counts.
            let instant = Instant::now();
            let applied = o.applied.clone();
            if let Some((at, base)) = &o.rate_base {
                let secs = instant.duration_since(*at).as_secs_f64().max(1e-3);
                let rates = applied
                    .iter()
                    .map(|(d, n)| {
                        (
                            d.clone(),
                            (n - base.get(d).copied().unwrap_or(0)) as f64 / secs,
                        )
                    })
                    .collect();
                o.rates = rates;
            }
            o.rate_base = Some((instant, applied));
        }
        if let Err(e) = &mysql {
            shared.record_error("mysql", e.clone());
        }
        if let Err(e) = &kafka {
            shared.record_error("kafka", e.clone());
        }
        shared.update_ready();
    }

    /// (low, high) watermarks of every partition of the subscribed topics.
    async fn watermarks(&self) -> Result<BTreeMap<(String, i32), (i64, i64)>, String> {
        let kafka = self.kafka.clone();
        let topics = self.shared.topics.clone();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(3);
            let mut marks = BTreeMap::new();
            for topic in topics {
                let metadata = kafka
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| format!("metadata of {topic}: {e}"))?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        let (low, high) = kafka
                            .fetch_watermarks(t.name(), p.id(), timeout)
                            .map_err(|e| format!("watermarks of {}[{}]: {e}", t.name(), p.id()))?;
                        marks.insert((t.name().to_owned(), p.id()), (low, high));
                    }
                }
            }
            Ok(marks)
        })
        .await
        .map_err(|e| format!("watermark thread failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_status_follows_the_burrow_rules() {
        let w = 4;
        // Too few samples, or any sample at zero lag: OK.
        assert_eq!(evaluate(&[(10, 5)], w, 100), LagStatus::Ok);
        assert_eq!(
            evaluate(&[(10, 5), (10, 0), (10, 5), (10, 5)], w, 100),
            LagStatus::Ok
        );
        // Lag and no progress over the window: STALL.
        assert_eq!(
            evaluate(&[(10, 5), (10, 6), (10, 7), (10, 7)], w, 100),
            LagStatus::Stall
        );
        // Progress, but lag never shrinks and grows: WARN.
        assert_eq!(
            evaluate(&[(10, 5), (12, 6), (14, 6), (16, 9)], w, 100),
            LagStatus::Warn
        );
        // Progress and lag shrinking at some point: OK.
        assert_eq!(
            evaluate(&[(10, 5), (12, 7), (14, 3), (16, 9)], w, 100),
            LagStatus::Ok
        );
        // Over the threshold: ERR whatever the window says.
        assert_eq!(evaluate(&[(10, 101)], w, 100), LagStatus::Err);
        assert_eq!(evaluate(&[], w, 100), LagStatus::Ok);
    }
}
