//! Partition (re)assignments, as the consumer's callbacks report them.

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::PartitionKey;

/// Partitions revoked or assigned since the loop last looked.
#[derive(Default)]
pub struct RebalanceLog {
    revoked: Mutex<Vec<PartitionKey>>,
    assigned: Mutex<Vec<PartitionKey>>,
}

impl RebalanceLog {
    /// Takes every partition revoked or assigned since the last call.
    pub fn drain(&self) -> Vec<PartitionKey> {
        let mut changed =
            std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()));
        changed.extend(std::mem::take(
            &mut *self.assigned.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        changed
    }
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &TopicPartitionList| -> Vec<PartitionKey> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                let p = parts(tpl);
                tracing::info!(partitions = ?p, "partitions assigned");
                self.assigned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(p);
            }
            Rebalance::Revoke(tpl) => {
                let p = parts(tpl);
                tracing::info!(partitions = ?p, "partitions revoked");
                self.revoked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(p);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}
