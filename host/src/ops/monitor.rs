//! The monitor: samples dependencies, lag per partition and rates per domain
//! into the shared state, for `/health`, `/metrics` and the status page.
//!
//! # Lag
//!
//! Every `admin.lag_interval` the monitor reads the group's next offsets from
//! MySQL (the authoritative position, see `pipeline`) and each partition's log
//! end offset from the broker. Lag = log end offset - next offset; the
//! statuses are described in `lag`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sqlx::MySqlPool;

use super::lag::{LagStatus, PartitionLag, evaluate};
use super::state::{Check, Shared};
use crate::settings::Settings;

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
            crate::sink::stored_offsets(&self.pool, &self.shared.group),
        )
        .await;
        let mysql = match stored {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 3 s".to_owned()),
        };
        let kafka = self.watermarks().await;
        let jobs =
            tokio::time::timeout(Duration::from_secs(3), super::jobs::list(&self.pool)).await;
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
            if let Ok(Ok(jobs)) = jobs {
                metrics.set_jobs(&jobs);
                o.jobs = jobs;
            }
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
                    // At zero until a gap: `increase()` then sees the first one.
                    metrics.log_gap_offsets.with_label_values(&labels);
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
            let applied = metrics.applied_by_domain();
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
                let sample = super::state::Sample {
                    at: now,
                    rates: o.rates.clone(),
                    total_lag: o.total_lag,
                };
                Shared::push_sample(&mut o, sample, shared.history_len());
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
