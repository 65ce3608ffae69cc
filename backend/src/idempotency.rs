//! `Idempotency-Key` on POST requests: a retry answers the first response
//! and writes (and emits) nothing new.
//!
//! A key is scoped to the caller (the token's account, or anonymous), the
//! method and the path. The first request with a key records it in the
//! `idempotency` collection before the handler runs (the record's `_id`
//! makes the claim atomic), together with the id a create will give its new
//! entity ([`NewId`]). Then:
//! - a 2xx answer is stored and every later request with the key gets it
//!   back (`Idempotency-Replayed: true`);
//! - any other answer releases the key (nothing was written), so a retry
//!   runs again;
//! - the same key with another body, or while the first request is still
//!   running, is a 409.
//!
//! A backend that dies between writing the entity and storing the answer
//! leaves the record `started`; after [`STALE_AFTER`] a retry runs the
//! handler again with the same entity id, whose insert then finds the
//! entity already there and answers it without emitting anything.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mongodb::bson::{Document, doc, oid::ObjectId};
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// The collection of keys.
pub const COLLECTION: &str = "idempotency";
/// The request header.
pub const HEADER: &str = "idempotency-key";
/// How long a started request holds its key before a retry may take over.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// How long keys are kept (where the server honours TTL indexes).
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// The header, as the document declares it (and the middleware checks it
/// against that declaration).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKey {
    /// Any 1 to 255 visible ASCII characters, unique per request you mean
    /// (a UUID is a good key). A retry with the same key answers the first
    /// response and writes nothing; the same key with another body is a 409.
    #[serde(rename = "Idempotency-Key")]
    #[param(pattern = r"^[!-~]{1,255}$")]
    pub key: Option<String>,
}

/// POST routes that need no token.
const PUBLIC: [&str; 3] = ["/users", "/suppliers", "/auth/login"];

/// The id a create gives its new entity: fixed by the idempotency key when
/// the request has one, fresh otherwise.
#[derive(Debug, Clone, Copy)]
pub struct NewId(pub ObjectId);

#[derive(Debug, Clone, Copy)]
struct ReservedId(ObjectId);

impl<S: Send + Sync> FromRequestParts<S> for NewId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(NewId(
            parts
                .extensions
                .get::<ReservedId>()
                .map_or_else(ObjectId::new, |r| r.0),
        ))
    }
}

/// Expires old keys (MongoDB; FerretDB 1.x keeps them).
pub async fn ensure_indexes(db: &mongodb::Database) {
    let index = mongodb::IndexModel::builder()
        .keys(doc! {"created_at": 1})
        .options(
            mongodb::options::IndexOptions::builder()
                .expire_after(KEEP_FOR)
                .build(),
        )
        .build();
    if let Err(e) = db
        .collection::<Document>(COLLECTION)
        .create_index(index)
        .await
    {
        tracing::warn!(error = %e, "could not create the expiry index of idempotency keys");
    }
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

fn now_bson() -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::now()
}

/// The middleware.
pub async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = String::from_utf8_lossy(key.as_bytes()).into_owned();
    let (mut parts, body) = req.into_parts();
    let raw = std::collections::HashMap::from([("Idempotency-Key".to_owned(), key.clone())]);
    if let Err(e) = crate::validate::check_params::<IdempotencyKey>("Idempotency-Key", &raw) {
        // A caller without a valid token learns that first.
        if !PUBLIC.contains(&parts.uri.path()) && crate::auth::subject(&app, &parts).is_none() {
            return ApiError::Unauthorized("this action needs a token".into()).into_response();
        }
        return e.into_response();
    }
    let bytes = match to_bytes(body, crate::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::TooLarge(format!(
                "the body is larger than {} bytes",
                crate::MAX_BODY_BYTES
            ))
            .into_response();
        }
    };
    let scope =
        crate::auth::subject(&app, &parts).map_or_else(|| "anonymous".into(), |id| id.to_hex());
    let path = parts.uri.path().to_owned();
    let record_id = hex_sha256(&[scope.as_bytes(), path.as_bytes(), key.as_bytes()]);
    let fingerprint = hex_sha256(&[path.as_bytes(), &bytes]);
    let keys = app.db.collection::<Document>(COLLECTION);

    let reserved = ObjectId::new();
    let claim = doc! {
        "_id": &record_id,
        "fingerprint": &fingerprint,
        "entity_id": reserved,
        "state": "started",
        "started_at": now_bson(),
        "created_at": now_bson(),
    };
    let entity_id = match keys.insert_one(claim).await {
        Ok(_) => reserved,
        Err(e) if crate::store::is_duplicate_key(&e) => {
            match existing(&keys, &record_id, &fingerprint).await {
                Ok(Existing::Replay(response)) => return response,
                Ok(Existing::TakeOver(id)) => id,
                Err(e) => return e.into_response(),
            }
        }
        Err(e) => return ApiError::from(e).into_response(),
    };

    parts.extensions.insert(ReservedId(entity_id));
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if !response.status().is_success() {
        // Nothing was written: let a retry run again.
        if let Err(e) = keys
            .delete_one(doc! {"_id": &record_id, "state": "started"})
            .await
        {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
        return response;
    }
    let (resp_parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::Internal(anyhow::anyhow!("reading the response: {e}"))
                .into_response();
        }
    };
    let stored = doc! {"$set": {
        "state": "done",
        "status": i32::from(resp_parts.status.as_u16()),
        "body": String::from_utf8_lossy(&body).into_owned(),
    }};
    if let Err(e) = keys.update_one(doc! {"_id": &record_id}, stored).await {
        // The entity is written; a retry after STALE_AFTER finds it by its
        // reserved id.
        tracing::warn!(error = %e, "could not store an idempotent response");
    }
    Response::from_parts(resp_parts, Body::from(body))
}

enum Existing {
    Replay(Response),
    TakeOver(ObjectId),
}

async fn existing(
    keys: &mongodb::Collection<Document>,
    record_id: &str,
    fingerprint: &str,
) -> Result<Existing, ApiError> {
    let Some(record) = keys.find_one(doc! {"_id": record_id}).await? else {
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key just finished; retry".into(),
        ));
    };
    if record.get_str("fingerprint").ok() != Some(fingerprint) {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used for a different request".into(),
        ));
    }
    if record.get_str("state").ok() == Some("done") {
        let status = record
            .get_i32("status")
            .ok()
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .unwrap_or(StatusCode::OK);
        let body = record.get_str("body").unwrap_or_default().to_owned();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("idempotency-replayed", HeaderValue::from_static("true"));
        return Ok(Existing::Replay(response));
    }
    let entity_id = record
        .get_object_id("entity_id")
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("idempotency record: {e}")))?;
    let started = record
        .get_datetime("started_at")
        .map(|d| d.timestamp_millis())
        .unwrap_or(0);
    let stale_before = now_bson().timestamp_millis() - STALE_AFTER.as_millis() as i64;
    if started > stale_before {
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still in progress; retry later".into(),
        ));
    }
    // Take over a request whose backend died: only one retry wins.
    let taken = keys
        .update_one(
            doc! {"_id": record_id, "state": "started", "started_at": record.get_datetime("started_at").copied().unwrap_or(mongodb::bson::DateTime::from_millis(0))},
            doc! {"$set": {"started_at": now_bson()}},
        )
        .await?;
    if taken.matched_count == 1 {
        Ok(Existing::TakeOver(entity_id))
    } else {
        Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still in progress; retry later".into(),
        ))
    }
}
