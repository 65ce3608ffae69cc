//! The relay: publishes the pending events stored in documents, in order per
//! document (so per entity), and clears each one after the broker
//! acknowledged it.
//!
//! It runs after every mutation (woken by [`Notify`]) and sweeps every
//! second, so events written while Kafka was down, or before a crash, are
//! published as soon as the broker is back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use mongodb::Database;
use mongodb::bson::{Document, doc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;

/// Collections whose documents carry an outbox.
pub const COLLECTIONS: [&str; 5] = ["users", "suppliers", "products", "orders", "posts"];

/// Indexes the relay's query (`{_pending: true}`) so a sweep does not scan
/// every document. Failure is logged, not fatal: the relay still works.
pub async fn ensure_indexes(db: &Database) {
    for name in COLLECTIONS {
        let index = mongodb::IndexModel::builder()
            .keys(doc! {"_pending": 1})
            .build();
        if let Err(e) = db.collection::<Document>(name).create_index(index).await {
            tracing::warn!(error = %e, collection = name, "could not index pending events");
        }
    }
}

pub struct Relay {
    pub db: Database,
    pub producer: FutureProducer,
    /// Prepended to every topic name (empty in production; tests isolate with it).
    pub topic_prefix: String,
    pub wake: Arc<Notify>,
}

/// How one sweep went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub published: usize,
    pub failed: bool,
}

impl Relay {
    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let sweep = self.sweep().await;
            let pause = if sweep.failed {
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            } else {
                backoff = Duration::from_millis(200);
                Duration::from_secs(1)
            };
            if sweep.published >= 1000 && !sweep.failed {
                continue; // a full page: more may be waiting
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified(), if !sweep.failed => {
                    // Let a burst of writes gather into one sweep.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes what is pending now, document by document in parallel, each
    /// document's events in order.
    pub async fn sweep(&self) -> Sweep {
        let mut total = Sweep::default();
        for name in COLLECTIONS {
            let coll = self.db.collection::<Document>(name);
            let pending: Vec<Document> = match coll.find(doc! {"_pending": true}).limit(1000).await
            {
                Ok(cursor) => match cursor.try_collect().await {
                    Ok(docs) => docs,
                    Err(e) => {
                        tracing::warn!(error = %e, collection = name, "relay could not read pending events");
                        total.failed = true;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, collection = name, "relay could not read pending events");
                    total.failed = true;
                    continue;
                }
            };
            let results =
                futures_util::future::join_all(pending.iter().map(|d| self.flush(&coll, d))).await;
            for r in results {
                match r {
                    Ok(n) => total.published += n,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "relay could not publish; will retry");
                        total.failed = true;
                    }
                }
            }
        }
        total
    }

    /// Removes the published events from the document's outbox. The write is
    /// conditional on `_version`, which every mutation bumps, so an event
    /// pushed meanwhile is never overwritten (the removal is simply redone).
    /// Portable: it needs no `$pull` by condition and no `$size` query, which
    /// FerretDB 1.x lacks.
    async fn clear(
        &self,
        coll: &mongodb::Collection<Document>,
        id: mongodb::bson::oid::ObjectId,
        sent: &[String],
    ) -> anyhow::Result<()> {
        for _ in 0..20 {
            let Some(current) = coll.find_one(doc! {"_id": id}).await? else {
                return Ok(());
            };
            let version = current.get_i64("_version").unwrap_or(0);
            let remaining: Vec<mongodb::bson::Bson> = current
                .get_array("_outbox")
                .map(|a| a.to_vec())
                .unwrap_or_default()
                .into_iter()
                .filter(|e| {
                    e.as_document()
                        .and_then(|d| d.get_str("event_id").ok())
                        .is_none_or(|event_id| !sent.iter().any(|s| s == event_id))
                })
                .collect();
            let pending = !remaining.is_empty();
            let result = {
                let _serialised = crate::store::OUTBOX_WRITES.lock().await;
                coll.update_one(
                    doc! {"_id": id, "_version": version},
                    doc! {"$set": {"_outbox": remaining, "_pending": pending}},
                )
                .await?
            };
            if result.matched_count == 1 {
                return Ok(());
            }
        }
        anyhow::bail!(
            "document {} kept changing while its outbox was cleared",
            id.to_hex()
        )
    }

    async fn flush(
        &self,
        coll: &mongodb::Collection<Document>,
        d: &Document,
    ) -> anyhow::Result<usize> {
        let id = d.get_object_id("_id")?;
        let outbox = d
            .get_array("_outbox")
            .map(|a| a.to_vec())
            .unwrap_or_default();
        let mut sent = Vec::new();
        let mut error = None;
        for entry in &outbox {
            let Some(entry) = entry.as_document() else {
                continue;
            };
            let topic = format!("{}{}", self.topic_prefix, entry.get_str("topic")?);
            let key = entry.get_str("key")?;
            let payload = entry.get_str("payload")?;
            match self
                .producer
                .send(
                    FutureRecord::to(&topic).key(key).payload(payload),
                    Duration::from_secs(10),
                )
                .await
            {
                Ok(_) => sent.push(entry.get_str("event_id")?.to_owned()),
                Err((e, _)) => {
                    error = Some(anyhow::anyhow!("publishing to {topic} failed: {e}"));
                    break; // keep the order: nothing after a failed event
                }
            }
        }
        if !sent.is_empty() || error.is_none() {
            self.clear(coll, id, &sent).await?;
        }
        match error {
            Some(e) => Err(e),
            None => Ok(sent.len()),
        }
    }
}
