//! Products and their lifecycle.
//!
//! Creating takes a supplier's token; every other change is for the
//! product's supplier or an admin. `GET /products?supplier_id=&status=`
//! lists newest first.
//!
//! | method | path                          | emits                 | from status               |
//! |--------|-------------------------------|-----------------------|---------------------------|
//! | POST   | /products (a supplier)        | product.created       | - (starts as `draft`)     |
//! | PATCH  | /products/{id}                | product.updated       | any but `deleted`         |
//! | POST   | /products/{id}/publish        | product.published     | `draft`                   |
//! | POST   | /products/{id}/discontinue    | product.discontinued  | `active`, `out_of_stock`  |
//! | POST   | /products/{id}/out-of-stock   | product.out_of_stock  | `active`                  |
//! | POST   | /products/{id}/restore        | product.restored      | `out_of_stock`, `discontinued` |
//! | DELETE | /products/{id}                | product.deleted       | any but `deleted`         |
//! | GET    | /products/{id}                | -                     |                           |
//!
//! Lifecycle events carry the full document; `product.deleted` carries
//! `{"product_id"}`. A transition from another status is a 409.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use events::EventType;
use mongodb::bson::oid::ObjectId;
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::idempotency::NewId;
use crate::reads::{Page, Paging};
use crate::store::{Mutation, json_with_id, object_id};
use crate::validate::{ApiQuery, Valid};
pub use events::payload::{Attribute, Metadata, Product, Stats, Variant};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 512)]
    pub name: String,
    #[schema(max_length = 20000)]
    pub description: Option<String>,
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 128)]
    pub category: String,
    #[schema(minimum = 0)]
    pub base_price_cents: i64,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub variants: BTreeMap<String, Variant>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 512)]
    pub name: Option<String>,
    #[schema(max_length = 20000)]
    pub description: Option<String>,
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 128)]
    pub category: Option<String>,
    #[schema(minimum = 0)]
    pub base_price_cents: Option<i64>,
    pub metadata: Option<Metadata>,
    pub variants: Option<BTreeMap<String, Variant>>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/products", post(create).get(list))
        .route("/products/{id}", get(read).patch(update).delete(delete))
        .route("/products/{id}/publish", post(publish))
        .route("/products/{id}/discontinue", post(discontinue))
        .route("/products/{id}/out-of-stock", post(out_of_stock))
        .route("/products/{id}/restore", post(restore))
}

#[utoipa::path(post, path = "/products", tag = "products", params(crate::idempotency::IdempotencyKey), request_body = ProductInput, security(("bearer" = [])), responses((status = 404, description = "the supplier does not exist", body = crate::error::ErrorBody), (status = 409, description = "the supplier was deleted", body = crate::error::ErrorBody), (status = 201, description = "a draft; emits product.created", body = Product), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not a supplier", body = crate::error::ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    caller: Principal,
    new_id: NewId,
    Valid(req): Valid<ProductInput>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let supplier_id = caller.as_supplier()?;
    match app.suppliers.get(supplier_id).await? {
        Some((s, _)) if s.deleted_at.is_none() => {}
        Some(_) => {
            return Err(ApiError::Conflict(format!(
                "supplier {} was deleted",
                supplier_id.to_hex()
            )));
        }
        None => {
            return Err(ApiError::NotFound(format!(
                "supplier {} does not exist",
                supplier_id.to_hex()
            )));
        }
    }
    let id = new_id.0;
    let (product, _) = app
        .products
        .insert(id, EventType::ProductCreated, |at| Product {
            supplier_id: supplier_id.to_hex(),
            name: req.name,
            description: req.description,
            category: req.category,
            base_price_cents: req.base_price_cents,
            status: "draft".into(),
            metadata: req.metadata,
            stats: Stats::default(),
            variants: req.variants,
            published_at: None,
            deleted_at: None,
            created_at: at.into(),
            updated_at: at.into(),
        })
        .await?;
    app.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json_with_id(id, &product))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductFilter {
    /// Only this supplier's products.
    #[param(pattern = "^[0-9a-f]{24}$")]
    pub supplier_id: Option<String>,
    /// Only products in this status (draft, active, out_of_stock,
    /// discontinued, deleted).
    #[param(pattern = "^(draft|active|out_of_stock|discontinued|deleted)$")]
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/products", tag = "products", params(ProductFilter, Paging), responses((status = 200, description = "newest first", body = Page), (status = 422, body = crate::error::ErrorBody)))]
async fn list(
    State(app): State<AppState>,
    ApiQuery(filter): ApiQuery<ProductFilter>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page>> {
    let mut query = mongodb::bson::Document::new();
    if let Some(s) = &filter.supplier_id {
        ObjectId::parse_str(s)
            .map_err(|_| ApiError::Validation("supplier_id is not a 24-hex ObjectId".into()))?;
        query.insert("supplier_id", s);
    }
    if let Some(st) = &filter.status {
        if !STATUSES.contains(&st.as_str()) {
            return Err(ApiError::Validation(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            )));
        }
        query.insert("status", st);
    }
    Ok(Json(
        crate::reads::page(&app.products.collection, query, None, &paging).await?,
    ))
}

/// The statuses a product goes through.
const STATUSES: [&str; 5] = ["draft", "active", "out_of_stock", "discontinued", "deleted"];

#[utoipa::path(get, path = "/products/{id}", tag = "products", params(("id" = String, Path)), responses((status = 200, body = Product), (status = 404, body = crate::error::ErrorBody)))]
async fn read(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "product")?;
    match app.products.get(oid).await? {
        Some((p, _)) if p.status != "deleted" => Ok(Json(json_with_id(oid, &p))),
        Some(_) => Err(ApiError::NotFound(format!("product {id} was deleted"))),
        None => Err(ApiError::NotFound(format!("product {id} not found"))),
    }
}

#[utoipa::path(patch, path = "/products/{id}", tag = "products", params(("id" = String, Path)), request_body = ProductPatch, security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits product.updated", body = Product), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
    Valid(req): Valid<ProductPatch>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "product")?;
    let p = app
        .products
        .mutate(oid, "product", |p, at| {
            caller.owns_or_admin(&p.supplier_id, "product")?;
            if p.status == "deleted" {
                return Err(ApiError::Conflict(format!("product {id} was deleted")));
            }
            if let Some(n) = &req.name {
                p.name = n.clone();
            }
            if let Some(d) = &req.description {
                p.description = Some(d.clone());
            }
            if let Some(c) = &req.category {
                p.category = c.clone();
            }
            if let Some(b) = req.base_price_cents {
                p.base_price_cents = b;
            }
            if let Some(m) = &req.metadata {
                p.metadata = m.clone();
            }
            if let Some(v) = &req.variants {
                p.variants = v.clone();
            }
            p.updated_at = at.into();
            Ok(Mutation::full(EventType::ProductUpdated))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &p)))
}

/// A status transition: allowed only from `from`.
async fn transition(
    app: &AppState,
    caller: Principal,
    id: &str,
    from: &[&str],
    to: &str,
    event_type: EventType,
) -> ApiResult<Json<Value>> {
    let oid = object_id(id, "product")?;
    let p = app
        .products
        .mutate(oid, "product", |p, at| {
            caller.owns_or_admin(&p.supplier_id, "product")?;
            if !from.contains(&p.status.as_str()) {
                return Err(ApiError::Conflict(format!(
                    "product {id} is {}; {} needs it to be {}",
                    p.status,
                    event_type.as_str(),
                    from.join(" or ")
                )));
            }
            p.status = to.to_owned();
            if to == "active" && p.published_at.is_none() {
                p.published_at = Some(at.into());
            }
            p.updated_at = at.into();
            Ok(Mutation::full(event_type))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &p)))
}

#[utoipa::path(post, path = "/products/{id}/publish", tag = "products", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits product.published", body = Product), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "not allowed from the current status", body = crate::error::ErrorBody)))]
async fn publish(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    transition(
        &app,
        caller,
        &id,
        &["draft"],
        "active",
        EventType::ProductPublished,
    )
    .await
}

#[utoipa::path(post, path = "/products/{id}/discontinue", tag = "products", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits product.discontinued", body = Product), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "not allowed from the current status", body = crate::error::ErrorBody)))]
async fn discontinue(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    transition(
        &app,
        caller,
        &id,
        &["active", "out_of_stock"],
        "discontinued",
        EventType::ProductDiscontinued,
    )
    .await
}

#[utoipa::path(post, path = "/products/{id}/out-of-stock", tag = "products", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits product.out_of_stock", body = Product), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "not allowed from the current status", body = crate::error::ErrorBody)))]
async fn out_of_stock(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    transition(
        &app,
        caller,
        &id,
        &["active"],
        "out_of_stock",
        EventType::ProductOutOfStock,
    )
    .await
}

#[utoipa::path(post, path = "/products/{id}/restore", tag = "products", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits product.restored", body = Product), (status = 404, body = crate::error::ErrorBody), (status = 409, description = "not allowed from the current status", body = crate::error::ErrorBody)))]
async fn restore(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    transition(
        &app,
        caller,
        &id,
        &["out_of_stock", "discontinued"],
        "active",
        EventType::ProductRestored,
    )
    .await
}

#[utoipa::path(delete, path = "/products/{id}", tag = "products", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 204, description = "emits product.deleted"), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn delete(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let oid = object_id(&id, "product")?;
    app.products
        .mutate(oid, "product", |p, at| {
            caller.owns_or_admin(&p.supplier_id, "product")?;
            if p.status == "deleted" {
                return Err(ApiError::Conflict(format!(
                    "product {id} is already deleted"
                )));
            }
            p.status = "deleted".into();
            p.deleted_at = Some(at.into());
            p.updated_at = at.into();
            Ok(Mutation::minimal(
                EventType::ProductDeleted,
                events::payload::ProductDeleted {
                    product_id: oid.to_hex(),
                },
            ))
        })
        .await?;
    app.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
