//! The relay: publishes the pending events stored in documents, in order per
//! document (so per entity), and clears each one after the broker
//! acknowledged it.
//!
//! It runs after every mutation (woken by [`Notify`]) and sweeps every
//! second, so events written while Kafka was down, or before a crash, are
//! published as soon as the broker is back.
//!
//! - **Several backend instances**: a relay publishes a document's outbox
//!   only while it holds the document's lease (`_lease_owner`,
//!   `_lease_until`, taken by a conditional update, [`LEASE`] long), so
//!   two instances do not publish the same events; the removal of
//!   published events is conditional on `_version` and bumps it, so two
//!   removals can never bring an event back.
//! - **Backoff per document**: a document whose publication fails is
//!   retried after 0.2 s, 0.4 s, … up to 60 s (`_relay_after`,
//!   `_relay_failures`) while the others keep flowing.
//! - **Quarantine**: an outbox entry that is not a publishable event (a
//!   field missing, a payload that is not an envelope) is moved to the
//!   `relay_quarantine` collection with its reason, logged, and counted on
//!   `/health`; the events after it are published.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use mongodb::Database;
use mongodb::bson::{Document, doc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;

/// How long a relay holds a document it publishes.
pub const LEASE: Duration = Duration::from_secs(30);
/// The longest pause before a failing document is retried.
pub const MAX_DOCUMENT_BACKOFF: Duration = Duration::from_secs(60);
/// Where malformed outbox entries go.
pub const QUARANTINE: &str = "relay_quarantine";

/// The pause before a failing document's first retry, by default.
pub const FIRST_DOCUMENT_BACKOFF: Duration = Duration::from_millis(200);

/// The pause before a document's next attempt after `failures` failures
/// in a row: `first`, doubling with each further failure, at most
/// [`MAX_DOCUMENT_BACKOFF`].
pub fn document_backoff(first: Duration, failures: u32) -> Duration {
    first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(MAX_DOCUMENT_BACKOFF)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

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
    /// Names this relay in leases (unique per process).
    pub owner: String,
    pub db: Database,
    pub producer: FutureProducer,
    /// Prepended to every topic name (empty in production; tests isolate with it).
    pub topic_prefix: String,
    pub wake: Arc<Notify>,
    /// The pause before a failing document's first retry
    /// ([`FIRST_DOCUMENT_BACKOFF`] in production).
    pub first_backoff: Duration,
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
            let due = doc! {"_pending": true, "$or": [
                {"_relay_after": {"$exists": false}},
                {"_relay_after": {"$lte": now_ms()}},
            ]};
            let pending: Vec<Document> = match coll.find(due).limit(1000).await {
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

    /// Takes the document's lease for this relay if it is free, expired or
    /// already ours.
    async fn lease(
        &self,
        coll: &mongodb::Collection<Document>,
        id: mongodb::bson::oid::ObjectId,
    ) -> anyhow::Result<bool> {
        let now = now_ms();
        // Under the same lock as the outbox writes: FerretDB 1.x rewrites
        // the whole document on any update, so an unserialised lease write
        // could put back an outbox a mutation just extended.
        let _serialised = crate::store::OUTBOX_WRITES.lock().await;
        let result = coll
            .update_one(
                doc! {"_id": id, "$or": [
                    {"_lease_until": {"$exists": false}},
                    {"_lease_until": {"$lt": now}},
                    {"_lease_owner": &self.owner},
                ]},
                doc! {"$set": {"_lease_owner": &self.owner, "_lease_until": now + LEASE.as_millis() as i64}},
            )
            .await?;
        Ok(result.matched_count == 1)
    }

    /// Removes the published (and quarantined) events from the document's
    /// outbox and sets its backoff. The write is conditional on `_version`,
    /// which every mutation bumps and so does this, so an event pushed
    /// meanwhile is never overwritten (the removal is simply redone) and
    /// two removals cannot undo each other. Portable: it needs no `$pull`
    /// by condition and no `$size` query, which FerretDB 1.x lacks.
    async fn clear(
        &self,
        coll: &mongodb::Collection<Document>,
        id: mongodb::bson::oid::ObjectId,
        done: &[String],
        failed: bool,
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
                .enumerate()
                .filter(|(i, e)| !done.contains(&entry_id(*i, e)))
                .map(|(_, e)| e)
                .collect();
            let pending = !remaining.is_empty();
            let mut set = doc! {"_outbox": remaining, "_pending": pending, "_version": version + 1};
            let mut unset = doc! {"_lease_owner": "", "_lease_until": ""};
            if failed {
                let failures = current
                    .get_i32("_relay_failures")
                    .unwrap_or(0)
                    .saturating_add(1);
                set.insert("_relay_failures", failures);
                set.insert(
                    "_relay_after",
                    now_ms()
                        + document_backoff(self.first_backoff, failures as u32).as_millis() as i64,
                );
            } else {
                unset.insert("_relay_failures", "");
                unset.insert("_relay_after", "");
            }
            let result = {
                let _serialised = crate::store::OUTBOX_WRITES.lock().await;
                coll.update_one(
                    doc! {"_id": id, "_version": version},
                    doc! {"$set": set, "$unset": unset},
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

    /// Moves a malformed entry to the quarantine collection.
    async fn quarantine(
        &self,
        coll: &mongodb::Collection<Document>,
        id: mongodb::bson::oid::ObjectId,
        entry: &mongodb::bson::Bson,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::error!(collection = coll.name(), document = %id.to_hex(), reason, "an outbox entry is malformed; quarantined");
        self.db
            .collection::<Document>(QUARANTINE)
            .insert_one(doc! {
                "collection": coll.name(),
                "document_id": id,
                "entry": entry.clone(),
                "reason": reason,
                "quarantined_at": mongodb::bson::DateTime::now(),
            })
            .await?;
        Ok(())
    }

    async fn flush(
        &self,
        coll: &mongodb::Collection<Document>,
        d: &Document,
    ) -> anyhow::Result<usize> {
        let id = d.get_object_id("_id")?;
        if !self.lease(coll, id).await? {
            return Ok(0); // another relay publishes it
        }
        // The outbox as it is now that the lease is held.
        let Some(d) = coll.find_one(doc! {"_id": id}).await? else {
            return Ok(0);
        };
        let outbox = d
            .get_array("_outbox")
            .map(|a| a.to_vec())
            .unwrap_or_default();
        let mut done = Vec::new();
        let mut sent = 0;
        let mut error = None;
        for (i, entry) in outbox.iter().enumerate() {
            let record = match publishable(entry) {
                Ok(r) => r,
                Err(reason) => {
                    self.quarantine(coll, id, entry, &reason).await?;
                    done.push(entry_id(i, entry));
                    continue;
                }
            };
            let topic = format!("{}{}", self.topic_prefix, record.topic);
            match self
                .producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&record.key)
                        .payload(&record.payload),
                    Duration::from_secs(10),
                )
                .await
            {
                Ok(_) => {
                    done.push(entry_id(i, entry));
                    sent += 1;
                }
                Err((e, _)) => {
                    error = Some(anyhow::anyhow!("publishing to {topic} failed: {e}"));
                    break; // keep the order: nothing after a failed event
                }
            }
        }
        self.clear(coll, id, &done, error.is_some()).await?;
        match error {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }
}

/// An entry's identity in the outbox: its event id, or its position if it
/// has none (a malformed entry).
fn entry_id(index: usize, entry: &mongodb::bson::Bson) -> String {
    entry
        .as_document()
        .and_then(|d| d.get_str("event_id").ok())
        .map_or_else(|| format!("#{index}"), str::to_owned)
}

/// What the relay sends for one entry.
#[derive(Debug)]
struct Record {
    topic: String,
    key: String,
    payload: String,
}

/// The entry as a record, or why it cannot be published.
fn publishable(entry: &mongodb::bson::Bson) -> Result<Record, String> {
    let d = entry
        .as_document()
        .ok_or_else(|| "the entry is not a document".to_owned())?;
    let field = |name: &str| {
        d.get_str(name)
            .map(str::to_owned)
            .map_err(|_| format!("the entry has no text field {name:?}"))
    };
    let (event_id, topic, key, payload) = (
        field("event_id")?,
        field("topic")?,
        field("key")?,
        field("payload")?,
    );
    let envelope = events::RawEnvelope::from_slice(payload.as_bytes())
        .map_err(|e| format!("the payload is not an event envelope: {e}"))?;
    if envelope.event_id.to_string() != event_id
        || envelope.topic() != topic
        || envelope.key() != key
    {
        return Err("event_id, topic or key disagree with the payload".into());
    }
    Ok(Record {
        topic,
        key,
        payload,
    })
}

/// How many entries were quarantined (for `/health`).
pub async fn quarantined(db: &Database) -> anyhow::Result<u64> {
    Ok(db
        .collection::<Document>(QUARANTINE)
        .count_documents(doc! {})
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_document_backs_off_exponentially_up_to_a_minute() {
        let first = FIRST_DOCUMENT_BACKOFF;
        assert_eq!(document_backoff(first, 1), Duration::from_millis(200));
        assert_eq!(document_backoff(first, 2), Duration::from_millis(400));
        assert_eq!(document_backoff(first, 5), Duration::from_millis(3200));
        assert_eq!(document_backoff(first, 40), MAX_DOCUMENT_BACKOFF);
        assert_eq!(
            document_backoff(Duration::from_secs(5), 2),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn entries_that_are_not_events_are_refused_with_a_reason() {
        let good =
            events::Envelope::new(events::EventType::UserCreated, "abc", serde_json::json!({}));
        let entry = mongodb::bson::Bson::Document(crate::store::outbox_entry(&good));
        assert!(publishable(&entry).is_ok());
        let mut missing = crate::store::outbox_entry(&good);
        missing.remove("topic");
        assert!(publishable(&missing.into()).unwrap_err().contains("topic"));
        let mut garbage = crate::store::outbox_entry(&good);
        garbage.insert("payload", "{not json");
        assert!(
            publishable(&garbage.into())
                .unwrap_err()
                .contains("envelope")
        );
        let mut wrong = crate::store::outbox_entry(&good);
        wrong.insert("key", "another");
        assert!(publishable(&wrong.into()).is_err());
        assert!(publishable(&mongodb::bson::Bson::Int32(3)).is_err());
    }
}
