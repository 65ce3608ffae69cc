//! Suppliers: create, update, delete, read.
//!
//! | method | path              | who                 | emits             | payload             |
//! |--------|-------------------|---------------------|-------------------|---------------------|
//! | POST   | /suppliers        | anyone              | supplier.created  | the full document   |
//! | PATCH  | /suppliers/{id}   | the supplier, admin | supplier.updated  | the full document   |
//! | DELETE | /suppliers/{id}   | the supplier, admin | supplier.deleted  | `{"supplier_id"}`   |
//! | GET    | /suppliers/{id}   | anyone              | -                 | -                   |
//!
//! A supplier registers with a password and logs in with
//! `contact_info.primary_email`. MongoDB keeps a deleted supplier with
//! `deleted_at`; the projection removes its row.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use events::EventType;
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::auth::{Principal, Role, hash_password};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::NewId;
use crate::store::{Mutation, json_with_id, object_id};
use crate::validate::Valid;
pub use events::payload::{Address, BusinessInfo, CompanyInfo, Supplier, SupplierContact};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierInput {
    /// 8 to 128 characters; log in with `contact_info.primary_email` and it.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    pub contact_info: SupplierContact,
    pub company_info: CompanyInfo,
    #[serde(default)]
    pub business_info: BusinessInfo,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierPatch {
    pub contact_info: Option<SupplierContact>,
    pub company_info: Option<CompanyInfo>,
    pub business_info: Option<BusinessInfo>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/suppliers", post(create))
        .route("/suppliers/{id}", get(read).patch(update).delete(delete))
}

#[utoipa::path(post, path = "/suppliers", tag = "suppliers", params(crate::idempotency::IdempotencyKey), request_body = SupplierInput, responses((status = 201, description = "emits supplier.created", body = Supplier), (status = 400, body = crate::error::ErrorBody), (status = 409, description = "the email is taken", body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    new_id: NewId,
    Valid(req): Valid<SupplierInput>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = new_id.0;
    let hash = hash_password(req.password).await?;
    app.accounts
        .claim(&req.contact_info.primary_email, id, Role::Supplier, &hash)
        .await?;
    let (supplier, _) = app
        .suppliers
        .insert(id, EventType::SupplierCreated, |at| Supplier {
            contact_info: req.contact_info,
            company_info: req.company_info,
            business_info: req.business_info,
            deleted_at: None,
            created_at: at.into(),
            updated_at: at.into(),
        })
        .await?;
    app.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json_with_id(id, &supplier))))
}

#[utoipa::path(get, path = "/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)), responses((status = 200, body = Supplier), (status = 404, body = crate::error::ErrorBody)))]
async fn read(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "supplier")?;
    match app.suppliers.get(oid).await? {
        Some((s, _)) if s.deleted_at.is_none() => Ok(Json(json_with_id(oid, &s))),
        Some(_) => Err(ApiError::NotFound(format!("supplier {id} was deleted"))),
        None => Err(ApiError::NotFound(format!("supplier {id} not found"))),
    }
}

#[utoipa::path(patch, path = "/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)), request_body = SupplierPatch, security(("bearer" = [])), responses((status = 200, description = "emits supplier.updated", body = Supplier), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
    Valid(req): Valid<SupplierPatch>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "supplier")?;
    caller.owns_or_admin(&id, "supplier")?;
    let new_email = req.contact_info.as_ref().map(|c| c.primary_email.as_str());
    let old_email = match new_email {
        Some(_) => app
            .suppliers
            .get(oid)
            .await?
            .map(|(s, _)| s.contact_info.primary_email),
        None => None,
    };
    let write = app.suppliers.mutate(oid, "supplier", |s, at| {
        if s.deleted_at.is_some() {
            return Err(ApiError::Conflict(format!("supplier {id} was deleted")));
        }
        if let Some(c) = &req.contact_info {
            s.contact_info = c.clone();
        }
        if let Some(c) = &req.company_info {
            s.company_info = c.clone();
        }
        if let Some(b) = &req.business_info {
            s.business_info = b.clone();
        }
        s.updated_at = at.into();
        Ok(Mutation::full(EventType::SupplierUpdated))
    });
    let s = app
        .accounts
        .with_email_change(oid, old_email, new_email, write)
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &s)))
}

#[utoipa::path(delete, path = "/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "emits supplier.deleted"), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
async fn delete(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let oid = object_id(&id, "supplier")?;
    caller.owns_or_admin(&id, "supplier")?;
    let s = app
        .suppliers
        .mutate(oid, "supplier", |s, at| {
            if s.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!(
                    "supplier {id} is already deleted"
                )));
            }
            s.deleted_at = Some(at.into());
            s.updated_at = at.into();
            Ok(Mutation::minimal(
                EventType::SupplierDeleted,
                events::payload::SupplierDeleted {
                    supplier_id: oid.to_hex(),
                },
            ))
        })
        .await?;
    app.accounts
        .release(&s.contact_info.primary_email, oid)
        .await?;
    app.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
