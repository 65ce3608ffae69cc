//! The host's Prometheus metrics (served as text at `/metrics` of the admin
//! port). Every name is prefixed `projector_`.
//!
//! They are the one record of what the host counted: the status page, the
//! per-domain rates and the tests read the same counters through the
//! accessors below.

use std::collections::BTreeMap;

use prometheus::core::Collector as _;

use prometheus::{
    Encoder as _, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics of one host.
pub struct Metrics {
    registry: Registry,
    /// `projector_events_total{event_type, outcome}`; outcome is `applied`,
    /// `duplicate` or `dead_lettered`.
    pub events: IntCounterVec,
    /// `projector_batch_events`: events per committed batch.
    pub batch_events: Histogram,
    /// `projector_batch_duration_seconds`: project + commit of one batch.
    pub batch_seconds: Histogram,
    /// `projector_batch_commit_duration_seconds`: the MySQL transaction of
    /// one batch (positions check, rows, bookkeeping, commit).
    pub batch_commit_seconds: Histogram,
    /// `projector_guest_call_duration_seconds{domain}`: one `project` call.
    pub guest_call_seconds: HistogramVec,
    /// `projector_end_to_end_latency_seconds`: envelope timestamp to commit.
    pub end_to_end_seconds: Histogram,
    /// `projector_dead_letters_total{topic, error_class}`.
    pub dead_letters: IntCounterVec,
    /// `projector_transient_errors_total`: batches that failed and were retried.
    pub transient_errors: IntCounter,
    /// `projector_partition_lag{topic, partition}`: log end offset - next offset.
    pub lag: IntGaugeVec,
    /// `projector_partition_next_offset{topic, partition}` (from MySQL).
    pub next_offset: IntGaugeVec,
    /// `projector_partition_log_end_offset{topic, partition}` (from the broker).
    pub log_end_offset: IntGaugeVec,
    /// `projector_partition_lag_status{topic, partition}`: 0 OK, 1 WARN, 2 STALL, 3 ERR.
    pub lag_status: IntGaugeVec,
    /// `projector_lag_status`: the worst partition status.
    pub overall_lag_status: IntGauge,
    /// `projector_component_info{domain, version, digest}` = 1 for each loaded component.
    pub component_info: IntGaugeVec,
    /// `projector_component_reloads_total{domain, outcome}`; outcome `loaded` or `refused`.
    pub reloads: IntCounterVec,
    /// `projector_ready`: 1 when `/health/ready` answers 200.
    pub ready: IntGauge,
    /// `projector_dependency_up{dependency}`: 1 when MySQL / Kafka answered the last check.
    pub dependency_up: IntGaugeVec,
    /// `projector_log_gap_offsets_total{topic, partition}`: offsets the log
    /// lost (retention) before this database applied them.
    pub log_gap_offsets: IntCounterVec,
    /// `projector_envelope_unknown_fields_total`: envelopes that carried
    /// fields beyond the five (ignored).
    pub envelope_unknown_fields: IntCounter,
    /// `projector_job_state{kind, domain, state}` = 1: the latest state of
    /// each shadow rebuild and canary (`projector_jobs`).
    pub job_state: IntGaugeVec,
    /// `projector_rebuild_progress_ratio{domain}`: events the shadow applied
    /// over the live position's (1 once swapped).
    pub rebuild_progress: GaugeVec,
    /// `projector_canary_events{domain, result}`: events a canary compared,
    /// by result (`agreed`, `expected_difference`, `difference`, `error`).
    pub canary_events: IntGaugeVec,
    /// The unknown field names logged so far (each once, up to a bound).
    unknown_field_names: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

fn seconds_buckets() -> Vec<f64> {
    vec![
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

/// How many distinct unknown envelope field names are logged.
const LOGGED_UNKNOWN_FIELDS: usize = 64;

/// A rebuild that reached its swap (and perhaps was rolled back or dropped
/// since).
fn swapped(j: &super::jobs::Job) -> bool {
    j.state == "swapped" || j.detail.get("rename_ms").is_some()
}

impl Metrics {
    /// The jobs' gauges from their rows (a job's previous state is removed).
    pub fn set_jobs(&self, jobs: &[super::jobs::Job]) {
        self.job_state.reset();
        self.rebuild_progress.reset();
        self.canary_events.reset();
        for j in jobs {
            self.job_state
                .with_label_values(&[j.kind.as_str(), j.domain.as_str(), j.state.as_str()])
                .set(1);
            let n = |k: &str| {
                j.detail
                    .get(k)
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0)
            };
            match j.kind.as_str() {
                "rebuild" => {
                    let ratio = if swapped(j) {
                        1.0
                    } else if n("total") > 0 {
                        n("done") as f64 / n("total") as f64
                    } else {
                        0.0
                    };
                    self.rebuild_progress
                        .with_label_values(&[j.domain.as_str()])
                        .set(ratio);
                }
                "canary" => {
                    for (result, key) in [
                        ("agreed", "agreed"),
                        ("expected_difference", "expected_differences"),
                        ("difference", "differences"),
                        ("error", "errors"),
                    ] {
                        self.canary_events
                            .with_label_values(&[j.domain.as_str(), result])
                            .set(n(key));
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts an envelope that carried `fields` beyond the five, and logs
    /// each field name the first time it is seen.
    pub fn note_unknown_fields(&self, event_type: &str, fields: &[String]) {
        self.envelope_unknown_fields.inc();
        let mut seen = self
            .unknown_field_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for f in fields {
            if seen.len() < LOGGED_UNKNOWN_FIELDS && seen.insert(f.clone()) {
                tracing::warn!(
                    field = %f,
                    event_type,
                    "envelopes carry a field beyond the five known ones; it is ignored"
                );
            }
        }
    }

    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let partition = &["topic", "partition"];
        Metrics {
            events: reg!(IntCounterVec::new(
                Opts::new(
                    "projector_events_total",
                    "Events handled, by type and outcome."
                ),
                &["event_type", "outcome"]
            )),
            batch_events: reg!(Histogram::with_opts(
                HistogramOpts::new("projector_batch_events", "Events per committed batch.")
                    .buckets(vec![
                        1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0
                    ])
            )),
            batch_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "projector_batch_duration_seconds",
                    "Time to project and commit one batch."
                )
                .buckets(seconds_buckets())
            )),
            batch_commit_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "projector_batch_commit_duration_seconds",
                    "Time of one batch's MySQL transaction, commit included."
                )
                .buckets(seconds_buckets())
            )),
            guest_call_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "projector_guest_call_duration_seconds",
                    "Time of one project() call of a projection."
                )
                .buckets(seconds_buckets()),
                &["domain"]
            )),
            end_to_end_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "projector_end_to_end_latency_seconds",
                    "From the envelope's timestamp to the commit of its rows."
                )
                .buckets(seconds_buckets())
            )),
            dead_letters: reg!(IntCounterVec::new(
                Opts::new(
                    "projector_dead_letters_total",
                    "Events sent to a dead-letter topic."
                ),
                &["topic", "error_class"]
            )),
            log_gap_offsets: reg!(IntCounterVec::new(
                Opts::new(
                    "projector_log_gap_offsets_total",
                    "Offsets deleted from the log before this database applied them."
                ),
                partition
            )),
            envelope_unknown_fields: reg!(IntCounter::new(
                "projector_envelope_unknown_fields_total",
                "Envelopes that carried fields beyond the five known ones (ignored)."
            )),
            unknown_field_names: Default::default(),
            job_state: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_job_state",
                    "Shadow rebuilds and canaries: 1 for each job's latest state."
                ),
                &["kind", "domain", "state"]
            )),
            rebuild_progress: reg!(GaugeVec::new(
                Opts::new(
                    "projector_rebuild_progress_ratio",
                    "A shadow rebuild's events applied over the live position (1 once swapped)."
                ),
                &["domain"]
            )),
            canary_events: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_canary_events",
                    "Events a canary compared, by result."
                ),
                &["domain", "result"]
            )),
            transient_errors: reg!(IntCounter::new(
                "projector_transient_errors_total",
                "Batch attempts that failed transiently and were retried."
            )),
            lag: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_partition_lag",
                    "Log end offset minus the next offset to apply."
                ),
                partition
            )),
            next_offset: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_partition_next_offset",
                    "Next offset to apply, as stored in MySQL."
                ),
                partition
            )),
            log_end_offset: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_partition_log_end_offset",
                    "The partition's log end offset (high watermark)."
                ),
                partition
            )),
            lag_status: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_partition_lag_status",
                    "Lag status: 0 OK, 1 WARN, 2 STALL, 3 ERR."
                ),
                partition
            )),
            overall_lag_status: reg!(IntGauge::new(
                "projector_lag_status",
                "Worst partition lag status: 0 OK, 1 WARN, 2 STALL, 3 ERR."
            )),
            component_info: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_component_info",
                    "Loaded projection components (value 1)."
                ),
                &["domain", "version", "digest"]
            )),
            reloads: reg!(IntCounterVec::new(
                Opts::new(
                    "projector_component_reloads_total",
                    "Component reload attempts by outcome."
                ),
                &["domain", "outcome"]
            )),
            ready: reg!(IntGauge::new(
                "projector_ready",
                "1 when the host is ready."
            )),
            dependency_up: reg!(IntGaugeVec::new(
                Opts::new(
                    "projector_dependency_up",
                    "1 when the dependency answered the last check."
                ),
                &["dependency"]
            )),
            registry,
        }
    }

    /// Creates the series a host will count, at zero, so that rates and
    /// `increase()` see their first increment (a series born at 1 has no
    /// earlier sample to differ from): every outcome of every event type
    /// the components handle, and every dead-letter class of every topic.
    pub fn init_series<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        event_types: impl IntoIterator<Item = &'a str>,
    ) {
        for event_type in event_types {
            for outcome in ["applied", "duplicate", "dead_lettered"] {
                self.events.with_label_values(&[event_type, outcome]);
            }
        }
        for topic in topics {
            for class in crate::dlq::CLASSES {
                self.dead_letters.with_label_values(&[topic, class]);
            }
        }
    }

    /// Events applied now (not skipped as duplicates).
    pub fn applied_total(&self) -> u64 {
        self.events_by_outcome("applied").values().sum()
    }

    /// Events skipped because `processed_events` already held them.
    pub fn duplicates_total(&self) -> u64 {
        self.events_by_outcome("duplicate").values().sum()
    }

    /// Events sent to a dead-letter topic.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_letters
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Dead letters sent per error class (classes with none left out).
    pub fn dead_letters_by_class(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for family in self.dead_letters.collect() {
            for m in family.get_metric() {
                let n = m.get_counter().get_value() as u64;
                let class = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "error_class")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                if n > 0 {
                    *out.entry(class).or_insert(0) += n;
                }
            }
        }
        out
    }

    /// Batches committed.
    pub fn batches_total(&self) -> u64 {
        self.batch_events.get_sample_count()
    }

    /// Events applied per domain (the event type's topic part).
    pub fn applied_by_domain(&self) -> BTreeMap<String, u64> {
        let mut by_domain = BTreeMap::new();
        for (event_type, n) in self.events_by_outcome("applied") {
            let domain = event_type.split('.').next().unwrap_or_default().to_owned();
            *by_domain.entry(domain).or_insert(0) += n;
        }
        by_domain
    }

    /// `projector_events_total` of one outcome, by event type.
    fn events_by_outcome(&self, outcome: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for family in self.events.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                if label("outcome") == outcome {
                    *out.entry(label("event_type")).or_insert(0) +=
                        m.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
