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

use events::{Envelope, EventType};
use mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use mongodb::{Collection, Database};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// Internal fields of stored documents; never part of an API response or an
/// event payload.
pub const INTERNAL_FIELDS: [&str; 3] = ["_outbox", "_pending", "_version"];

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
    _t: std::marker::PhantomData<T>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            name: self.name,
            collection: self.collection.clone(),
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
    pub fn new(db: &Database, name: &'static str) -> Self {
        Store {
            name,
            collection: db.collection(name),
            _t: std::marker::PhantomData,
        }
    }

    fn decode(&self, mut d: Document) -> ApiResult<(T, i64)> {
        let version = d.get_i64("_version").unwrap_or(0);
        for f in INTERNAL_FIELDS {
            d.remove(f);
        }
        let t = bson::from_document(d).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "stored {} document does not decode: {e}",
                self.name
            ))
        })?;
        Ok((t, version))
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

    /// Inserts a new document together with the event it emits (whose
    /// payload is the full document).
    pub async fn insert(&self, id: ObjectId, doc: &T, event_type: EventType) -> ApiResult<()> {
        let mut d = bson::to_document(doc).map_err(|e| ApiError::Internal(e.into()))?;
        d.insert("_id", id);
        let envelope = Envelope::new(event_type, id.to_hex(), to_json(&d));
        d.insert("_version", 1i64);
        d.insert("_pending", true);
        d.insert("_outbox", vec![Bson::Document(outbox_entry(&envelope))]);
        self.collection.insert_one(d).await?;
        Ok(())
    }

    /// Reads the document, lets `change` modify it and say what to emit, and
    /// writes the new state and the event in one write if nobody changed the
    /// document meanwhile (else tries again).
    pub async fn mutate(
        &self,
        id: ObjectId,
        what: &str,
        mut change: impl FnMut(&mut T) -> ApiResult<Mutation>,
    ) -> ApiResult<T> {
        for _ in 0..MAX_RETRIES {
            let Some((mut doc, version)) = self.get(id).await? else {
                return Err(ApiError::NotFound(format!(
                    "{what} {} not found",
                    id.to_hex()
                )));
            };
            let mutation = change(&mut doc)?;
            let data = match mutation.payload {
                Payload::Document => to_json(&{
                    let mut full =
                        bson::to_document(&doc).map_err(|e| ApiError::Internal(e.into()))?;
                    full.insert("_id", id);
                    full
                }),
                Payload::Minimal(v) => v,
            };
            let envelope = Envelope::new(mutation.event_type, id.to_hex(), data);
            let mut set = bson::to_document(&doc).map_err(|e| ApiError::Internal(e.into()))?;
            set.insert("_version", version + 1);
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

    pub fn minimal(event_type: EventType, data: serde_json::Value) -> Self {
        Mutation {
            event_type,
            payload: Payload::Minimal(data),
        }
    }
}
