//! Sends dead letters and waits for the broker's acknowledgement.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{DEFAULT_BUDGET, DeadLetter, Failure};

/// librdkafka's default `message.max.bytes`: the producer refuses larger
/// messages before the broker sees them.
const PRODUCER_LIMIT: usize = 1_000_000;

/// Room left in a letter's limit for its headers and the record's framing.
const FRAMING: usize = 8 * 1024;

/// The dead-letter producer of a host.
pub struct Publisher {
    producer: FutureProducer,
    /// Reads each dead-letter topic's `max.message.bytes` from the broker.
    admin: Option<AdminClient<DefaultClientContext>>,
    /// The letter budget per dead-letter topic, once the broker told it.
    budgets: Mutex<HashMap<String, usize>>,
}

impl Publisher {
    pub fn new(
        producer: FutureProducer,
        admin: Option<AdminClient<DefaultClientContext>>,
    ) -> Publisher {
        Publisher {
            producer,
            admin,
            budgets: Mutex::new(HashMap::new()),
        }
    }

    /// The most bytes a letter to `topic` may have: the topic's
    /// `max.message.bytes` as the broker reports it (the default budget
    /// when it cannot be read), within the producer's own limit, less the
    /// headers and framing.
    async fn budget(&self, topic: &str) -> usize {
        if let Some(b) = self.lock_budgets().get(topic) {
            return *b;
        }
        let Some(limit) = self.topic_limit(topic).await else {
            return DEFAULT_BUDGET;
        };
        let budget = limit.min(PRODUCER_LIMIT).saturating_sub(FRAMING);
        self.lock_budgets().insert(topic.to_owned(), budget);
        budget
    }

    fn lock_budgets(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn topic_limit(&self, topic: &str) -> Option<usize> {
        let admin = self.admin.as_ref()?;
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        let described = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
            .await
            .ok()?;
        let resource = described.into_iter().next()?.ok()?;
        let limit = resource
            .get("max.message.bytes")?
            .value
            .as_ref()?
            .parse()
            .ok();
        if limit.is_none() {
            tracing::debug!(topic, "no max.message.bytes for the dead-letter topic");
        }
        limit
    }

    /// Publishes one letter per `(index into messages, failure)` to
    /// `dlq.<source topic>` and returns once the broker acknowledged them all,
    /// with each letter's id (`<dlq topic>:<partition>:<offset>`, as `projector
    /// dlq` names it), in the order of `failed`.
    pub async fn send(
        &self,
        messages: &[OwnedMessage],
        failed: &[(usize, Failure)],
    ) -> anyhow::Result<Vec<String>> {
        let mut pending = Vec::with_capacity(failed.len());
        for (index, failure) in failed {
            let m = &messages[*index];
            tracing::warn!(
                topic = m.topic(), partition = m.partition(), offset = m.offset(),
                class = failure.class, reason = %failure.message, "dead-lettering event"
            );
            let topic = format!("dlq.{}", m.topic());
            let budget = self
                .budget(&topic)
                .await
                .saturating_sub(m.key().map_or(0, <[u8]>::len));
            let payload = serde_json::to_vec(&DeadLetter::within(m, failure, budget))
                .context("a dead letter serialises")?;
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "x-error-class",
                    value: Some(failure.class),
                })
                .insert(Header {
                    key: "x-source-topic",
                    value: Some(m.topic()),
                })
                .insert(Header {
                    key: "x-source-partition",
                    value: Some(&m.partition().to_string()),
                })
                .insert(Header {
                    key: "x-source-offset",
                    value: Some(&m.offset().to_string()),
                });
            pending.push((topic, m.key(), payload, headers));
        }
        let sends: Vec<_> = pending
            .iter()
            .map(|(topic, key, payload, headers)| {
                let mut record = FutureRecord::to(topic)
                    .payload(payload)
                    .headers(headers.clone());
                if let Some(k) = key {
                    record = record.key(*k);
                }
                self.producer.send(record, Duration::from_secs(30))
            })
            .collect();
        let mut ids = Vec::with_capacity(sends.len());
        for (send, (topic, ..)) in sends.into_iter().zip(&pending) {
            let delivery = send
                .await
                .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic unavailable: {e}"))?;
            ids.push(format!(
                "{topic}:{}:{}",
                delivery.partition, delivery.offset
            ));
        }
        Ok(ids)
    }
}
