//! Documents in MongoDB with their pending events in the same document.
//!
//! **No lost emission** (the transactional outbox, without transactions):
//! every mutation writes the new document *and* the event envelope it emits
//! in one single-document write (`_outbox` array, `_pending` flag). A write
//! that fails emits nothing; a write that succeeds is published by the
//! [relay](crate::relay) whenever Kafka is reachable, even after a crash. The
//! relay removes an event from `_outbox` only after the broker acknowledged
//! it, so an event may be published twice after a crash at that moment (same
//! `event_id`; the projection host applies it once) but never zero times.
//!
//! Concurrent mutations of one document are serialised by an optimistic
//! `_version` check, so the full-document payloads of successive events
//! always reflect the successive states.
//!
//! **Per-entity order that survives clock skew**: the projection keeps the
//! newest state by event timestamp, so the timestamps of one entity's
//! events must grow in the order they were written, whichever instance's
//! clock stamps them. Each document keeps the time of its last event
//! (`_last_event_us`) and the next one is stamped
//! `max(now, last + 1 µs)`; the `_version` check makes that a total order.
//!
//! **Bounded outbox**: a document whose outbox already holds
//! `outbox_cap` unpublished events (Kafka down for long) refuses further
//! mutations with 503 and `Retry-After` instead of growing toward
//! MongoDB's 16 MB document limit.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use events::{Envelope, EventType};
use mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use mongodb::{Collection, Database};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// Internal fields of stored documents; never part of an API response or an
/// event payload.
pub const INTERNAL_FIELDS: [&str; 6] = [
    "_outbox",
    "_pending",
    "_version",
    "_last_event_us",
    "_relay_after",
    "_relay_failures",
];

/// Where the time comes from (tests drive skewed clocks through it).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's UTC clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What every store shares: the clock and the outbox cap.
#[derive(Clone)]
pub struct StoreConfig {
    pub clock: Arc<dyn Clock>,
    /// Unpublished events a document may hold before its mutations answer 503.
    pub outbox_cap: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            clock: Arc::new(SystemClock),
            outbox_cap: 100,
        }
    }
}

/// Whether a MongoDB error is a duplicate key (E11000).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == 11000)),
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// The time of an entity's next event: now, or 1 µs after its last event
/// if this clock is behind it.
pub fn next_event_time(now: DateTime<Utc>, last_us: Option<i64>) -> DateTime<Utc> {
    let now_us = now.timestamp_micros();
    let us = match last_us {
        Some(last) if last >= now_us => last + 1,
        _ => now_us,
    };
    DateTime::from_timestamp_micros(us).unwrap_or(now)
}

/// The JSON form of a document (`model_dump(mode="json")`): `_id` becomes
/// the 24-hex string `id`, internal fields are dropped.
pub fn to_json<T: Serialize>(doc: &T) -> serde_json::Value {
    // Plain structs of strings, numbers and maps always serialise.
    let mut v = serde_json::to_value(doc).expect("document serialises");
    if let Some(map) = v.as_object_mut() {
        for f in INTERNAL_FIELDS {
            map.remove(f);
        }
        if let Some(id) = map.remove("_id") {
            let hex = id.get("$oid").cloned().unwrap_or(id);
            let mut out = serde_json::Map::new();
            out.insert("id".into(), hex);
            out.extend(std::mem::take(map));
            *map = out;
        }
    }
    v
}

/// The API form of a document: `{"id": "<24 hex>", ...}`.
pub fn json_with_id<T: Serialize>(id: ObjectId, doc: &T) -> serde_json::Value {
    let mut v = to_json(doc);
    if let Some(map) = v.as_object_mut() {
        let mut out = serde_json::Map::new();
        out.insert("id".into(), id.to_hex().into());
        out.extend(std::mem::take(map));
        *map = out;
    }
    v
}

/// A pending event as stored in `_outbox`: the exact bytes to publish.
pub fn outbox_entry(envelope: &Envelope) -> Document {
    doc! {
        "event_id": envelope.event_id.to_string(),
        "topic": envelope.topic(),
        "key": envelope.key(),
        "payload": String::from_utf8(envelope.to_vec()).expect("JSON is UTF-8"),
    }
}

/// Parses a path id as an ObjectId.
pub fn object_id(id: &str, what: &str) -> ApiResult<ObjectId> {
    ObjectId::parse_str(id)
        .map_err(|_| ApiError::NotFound(format!("{what} {id:?} not found (ids are 24 hex digits)")))
}

/// A collection of documents of type `T` with outbox-carrying writes.
pub struct Store<T> {
    pub name: &'static str,
    pub collection: Collection<Document>,
    config: StoreConfig,
    _t: std::marker::PhantomData<T>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            name: self.name,
            collection: self.collection.clone(),
            config: self.config.clone(),
            _t: std::marker::PhantomData,
        }
    }
}

/// Tries before a contended mutation gives up with 409.
const MAX_RETRIES: usize = 8;

/// Serialises this process's compare-and-set writes of a document's outbox
/// (a mutation's `$push`, the relay's clear), each conditional on
/// `_version`. MongoDB applies a filtered update atomically, but FerretDB
/// 1.x on SQLite evaluates the filter and writes in separate steps, so two
/// such updates racing on one document could both match and the later
/// one overwrite the other's outbox: an event lost (seen once in the demo,
/// a `user.deleted` cleared by the relay as it was pushed). Across backend
/// instances this needs a real lease, which the relay does not have yet.
pub(crate) static OUTBOX_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl<T: Serialize + DeserializeOwned + Clone> Store<T> {
    pub fn new(db: &Database, name: &'static str, config: StoreConfig) -> Self {
        Store {
            name,
            collection: db.collection(name),
            config,
            _t: std::marker::PhantomData,
        }
    }

    fn decode(&self, d: Document) -> ApiResult<(T, i64)> {
        self.decode_full(d).map(|(t, stored)| (t, stored.version))
    }

    fn decode_full(&self, mut d: Document) -> ApiResult<(T, Stored)> {
        let stored = Stored {
            version: d.get_i64("_version").unwrap_or(0),
            last_event_us: d.get_i64("_last_event_us").ok(),
            outbox_len: d.get_array("_outbox").map_or(0, Vec::len),
        };
        for f in INTERNAL_FIELDS {
            d.remove(f);
        }
        let t = bson::from_document(d).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "stored {} document does not decode: {e}",
                self.name
            ))
        })?;
        Ok((t, stored))
    }

    /// The document with its version. Deleted entities stay in MongoDB (with
    /// `deleted_at` or status `deleted`): MongoDB is the source of truth, and
    /// the projection decides how a delete shows in MySQL.
    pub async fn get(&self, id: ObjectId) -> ApiResult<Option<(T, i64)>> {
        match self.collection.find_one(doc! {"_id": id}).await? {
            Some(d) => self.decode(d).map(Some),
            None => Ok(None),
        }
    }

    /// Inserts a new document, made by `make` from its creation time,
    /// together with the event it emits (whose payload is the full
    /// document). If a document with this id exists already (a retried
    /// create with the same idempotency key), nothing is written and that
    /// document is answered with `false`.
    pub async fn insert(
        &self,
        id: ObjectId,
        event_type: EventType,
        make: impl FnOnce(&str) -> T,
    ) -> ApiResult<(T, bool)> {
        let at = next_event_time(self.config.clock.now(), None);
        let doc = make(&events::format_timestamp(&at));
        let mut d = bson::to_document(&doc).map_err(|e| ApiError::Internal(e.into()))?;
        d.insert("_id", id);
        let envelope = Envelope::at(event_type, id.to_hex(), to_json(&d), at);
        d.insert("_version", 1i64);
        d.insert("_last_event_us", at.timestamp_micros());
        d.insert("_pending", true);
        d.insert("_outbox", vec![Bson::Document(outbox_entry(&envelope))]);
        match self.collection.insert_one(d).await {
            Ok(_) => Ok((doc, true)),
            Err(e) if is_duplicate_key(&e) => match self.get(id).await? {
                Some((existing, _)) => Ok((existing, false)),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the document, lets `change` modify it (given the event's
    /// time) and say what to emit, and writes the new state and the event in
    /// one write if nobody changed the document meanwhile (else tries again).
    pub async fn mutate(
        &self,
        id: ObjectId,
        what: &str,
        mut change: impl FnMut(&mut T, &str) -> ApiResult<Mutation>,
    ) -> ApiResult<T> {
        for _ in 0..MAX_RETRIES {
            let Some(d) = self.collection.find_one(doc! {"_id": id}).await? else {
                return Err(ApiError::NotFound(format!(
                    "{what} {} not found",
                    id.to_hex()
                )));
            };
            let (mut doc, stored) = self.decode_full(d)?;
            if stored.outbox_len >= self.config.outbox_cap {
                return Err(ApiError::Unavailable {
                    message: format!(
                        "{what} {} has {} events waiting to be published (Kafka unreachable?); try again later",
                        id.to_hex(),
                        stored.outbox_len
                    ),
                    retry_after_secs: 5,
                });
            }
            let version = stored.version;
            let at = next_event_time(self.config.clock.now(), stored.last_event_us);
            let mutation = change(&mut doc, &events::format_timestamp(&at))?;
            let data = match mutation.payload {
                Payload::Document => to_json(&{
                    let mut full =
                        bson::to_document(&doc).map_err(|e| ApiError::Internal(e.into()))?;
                    full.insert("_id", id);
                    full
                }),
                Payload::Minimal(v) => v,
            };
            let envelope = Envelope::at(mutation.event_type, id.to_hex(), data, at);
            let mut set = bson::to_document(&doc).map_err(|e| ApiError::Internal(e.into()))?;
            set.insert("_version", version + 1);
            set.insert("_last_event_us", at.timestamp_micros());
            set.insert("_pending", true);
            let update = doc! {"$set": set, "$push": {"_outbox": outbox_entry(&envelope)}};
            let result = {
                let _serialised = OUTBOX_WRITES.lock().await;
                self.collection
                    .update_one(doc! {"_id": id, "_version": version}, update)
                    .await?
            };
            if result.matched_count == 1 {
                return Ok(doc);
            }
        }
        Err(ApiError::Conflict(format!(
            "{what} {} is being changed concurrently; try again",
            id.to_hex()
        )))
    }
}

/// The bookkeeping of a stored document.
struct Stored {
    version: i64,
    last_event_us: Option<i64>,
    outbox_len: usize,
}

/// What a mutation emits.
pub struct Mutation {
    pub event_type: EventType,
    pub payload: Payload,
}

pub enum Payload {
    /// The full document after the change.
    Document,
    /// A minimal payload (ids only), as the reference design sends for
    /// deletes and cancellations.
    Minimal(serde_json::Value),
}

impl Mutation {
    pub fn full(event_type: EventType) -> Self {
        Mutation {
            event_type,
            payload: Payload::Document,
        }
    }

    /// `data` is one of the small payloads of [`events::payload`].
    pub fn minimal(event_type: EventType, data: impl Serialize) -> Self {
        Mutation {
            event_type,
            // The small payloads are plain structs of strings.
            payload: Payload::Minimal(serde_json::to_value(data).expect("a payload serialises")),
        }
    }
}
