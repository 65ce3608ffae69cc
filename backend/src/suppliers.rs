//! Suppliers: create, update, delete, read.
//!
//! | method | path              | emits             | payload             |
//! |--------|-------------------|-------------------|---------------------|
//! | POST   | /suppliers        | supplier.created  | the full document   |
//! | PATCH  | /suppliers/{id}   | supplier.updated  | the full document   |
//! | DELETE | /suppliers/{id}   | supplier.deleted  | `{"supplier_id"}`   |
//! | GET    | /suppliers/{id}   | -                 | -                   |
//!
//! MongoDB keeps a deleted supplier with `deleted_at`; the projection removes
//! its row.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use events::EventType;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::common::{email, now, optional, required};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::store::{Mutation, json_with_id, object_id};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Supplier {
    pub contact_info: SupplierContact,
    pub company_info: CompanyInfo,
    pub business_info: BusinessInfo,
    pub deleted_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierContact {
    pub primary_email: String,
    pub primary_phone: Option<String>,
    pub contact_person_name: Option<String>,
    pub contact_person_title: Option<String>,
    pub contact_person_email: Option<String>,
    pub contact_person_phone: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompanyInfo {
    pub legal_name: String,
    pub dba_name: Option<String>,
    pub business_address: Option<Address>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub street: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip_code: Option<String>,
    pub country: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BusinessInfo {
    pub support_email: Option<String>,
    pub support_phone: Option<String>,
    pub website: Option<String>,
    #[serde(default)]
    pub social_urls: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupplierInput {
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

fn check_contact(c: &SupplierContact) -> ApiResult<()> {
    email("contact_info.primary_email", &c.primary_email)?;
    optional("contact_info.primary_phone", &c.primary_phone, 64)?;
    optional(
        "contact_info.contact_person_name",
        &c.contact_person_name,
        255,
    )?;
    optional(
        "contact_info.contact_person_title",
        &c.contact_person_title,
        255,
    )?;
    optional(
        "contact_info.contact_person_email",
        &c.contact_person_email,
        255,
    )?;
    optional(
        "contact_info.contact_person_phone",
        &c.contact_person_phone,
        64,
    )
}

fn check_company(c: &CompanyInfo) -> ApiResult<()> {
    required("company_info.legal_name", &c.legal_name, 255)?;
    optional("company_info.dba_name", &c.dba_name, 255)?;
    if let Some(a) = &c.business_address {
        optional("company_info.business_address.street", &a.street, 255)?;
        optional("company_info.business_address.city", &a.city, 128)?;
        optional("company_info.business_address.state", &a.state, 128)?;
        optional("company_info.business_address.zip_code", &a.zip_code, 32)?;
        optional("company_info.business_address.country", &a.country, 64)?;
    }
    Ok(())
}

fn check_business(b: &BusinessInfo) -> ApiResult<()> {
    optional("business_info.support_email", &b.support_email, 255)?;
    optional("business_info.support_phone", &b.support_phone, 64)?;
    optional("business_info.website", &b.website, 1024)?;
    if b.social_urls.len() > 20 || b.social_urls.values().any(|u| u.len() > 1024) {
        return Err(ApiError::Validation(
            "business_info.social_urls: at most 20 URLs of 1024 characters".into(),
        ));
    }
    Ok(())
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/suppliers", post(create))
        .route("/suppliers/{id}", get(read).patch(update).delete(delete))
}

#[utoipa::path(post, path = "/suppliers", tag = "suppliers", request_body = SupplierInput, responses((status = 201, description = "emits supplier.created", body = Supplier), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<SupplierInput>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_contact(&req.contact_info)?;
    check_company(&req.company_info)?;
    check_business(&req.business_info)?;
    let at = now();
    let supplier = Supplier {
        contact_info: req.contact_info,
        company_info: req.company_info,
        business_info: req.business_info,
        deleted_at: None,
        created_at: at.clone(),
        updated_at: at,
    };
    let id = ObjectId::new();
    app.suppliers
        .insert(id, &supplier, EventType::SupplierCreated)
        .await?;
    app.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json_with_id(id, &supplier))))
}

#[utoipa::path(get, path = "/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)), responses((status = 200, body = Supplier), (status = 404, body = crate::error::ErrorBody)))]
async fn read(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "supplier")?;
    match app.suppliers.get(oid).await? {
        Some((s, _)) => Ok(Json(json_with_id(oid, &s))),
        None => Err(ApiError::NotFound(format!("supplier {id} not found"))),
    }
}

#[utoipa::path(patch, path = "/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)), request_body = SupplierPatch, responses((status = 200, description = "emits supplier.updated", body = Supplier), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SupplierPatch>,
) -> ApiResult<Json<Value>> {
    if let Some(c) = &req.contact_info {
        check_contact(c)?;
    }
    if let Some(c) = &req.company_info {
        check_company(c)?;
    }
    if let Some(b) = &req.business_info {
        check_business(b)?;
    }
    let oid = object_id(&id, "supplier")?;
    let s = app
        .suppliers
        .mutate(oid, "supplier", |s| {
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
            s.updated_at = now();
            Ok(Mutation::full(EventType::SupplierUpdated))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &s)))
}

#[utoipa::path(delete, path = "/suppliers/{id}", tag = "suppliers", params(("id" = String, Path)), responses((status = 204, description = "emits supplier.deleted"), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let oid = object_id(&id, "supplier")?;
    app.suppliers
        .mutate(oid, "supplier", |s| {
            if s.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!(
                    "supplier {id} is already deleted"
                )));
            }
            let at = now();
            s.deleted_at = Some(at.clone());
            s.updated_at = at;
            Ok(Mutation::minimal(
                EventType::SupplierDeleted,
                json!({"supplier_id": oid.to_hex()}),
            ))
        })
        .await?;
    app.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
