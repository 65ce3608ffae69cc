//! Sends dead letters and waits for the broker's acknowledgement.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{DeadLetter, Failure};

/// The dead-letter producer of a host.
pub struct Publisher {
    producer: FutureProducer,
}

impl Publisher {
    pub fn new(producer: FutureProducer) -> Publisher {
        Publisher { producer }
    }

    /// Publishes one letter per `(index into messages, failure)` to
    /// `dlq.<source topic>` and returns once the broker acknowledged them all.
    pub async fn send(
        &self,
        messages: &[OwnedMessage],
        failed: &[(usize, Failure)],
    ) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(failed.len());
        for (index, failure) in failed {
            let m = &messages[*index];
            tracing::warn!(
                topic = m.topic(), partition = m.partition(), offset = m.offset(),
                class = failure.class, reason = %failure.message, "dead-lettering event"
            );
            let payload = serde_json::to_vec(&DeadLetter::new(m, failure))
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
            pending.push((format!("dlq.{}", m.topic()), m.key(), payload, headers));
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
        for send in sends {
            send.await
                .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic unavailable: {e}"))?;
        }
        Ok(())
    }
}
