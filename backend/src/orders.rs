//! Orders: place, cancel, ship, read.
//!
//! | method | path                 | who                          | emits            | payload |
//! |--------|----------------------|------------------------------|------------------|---------|
//! | POST   | /orders              | a user (the customer)        | order.created    | the full document |
//! | POST   | /orders/{id}/cancel  | the customer                 | order.cancelled  | `{"order_number"}` |
//! | POST   | /orders/{id}/ship    | a supplier of an item, admin | order.shipped    | `{"order_number", "carrier", "tracking_number", "shipped_at"}` |
//! | GET    | /orders/{id}         | the customer, a supplier of an item, admin | - | - |
//! | GET    | /orders?customer_id= | that customer, admin         | -                | newest first |
//!
//! Placing an order checks that the customer exists (and is not deleted) and
//! that every product is `active` with the requested variant, and snapshots
//! product name, supplier and price into the order. Only a `pending` order can
//! be cancelled or shipped (409 otherwise).

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
pub use events::payload::{Customer, Item, Order, ProductSnapshot, Shipment, ShippingAddress};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderLine>,
    pub shipping_address: ShippingAddress,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    #[schema(pattern = "^[0-9a-f]{24}$")]
    pub product_id: String,
    /// The variant's key in the product's `variants`; `Default` if omitted.
    #[schema(max_length = 255)]
    pub variant: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipOrder {
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 64)]
    pub carrier: String,
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 128)]
    pub tracking_number: String,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", post(place).get(list))
        .route("/orders/{id}", get(read))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/orders/{id}/ship", post(ship))
}

#[utoipa::path(post, path = "/orders", tag = "orders", params(crate::idempotency::IdempotencyKey), request_body = PlaceOrder, security(("bearer" = [])), responses((status = 404, description = "a product, variant or the customer does not exist", body = crate::error::ErrorBody), (status = 201, description = "emits order.created", body = Order), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not a user account", body = crate::error::ErrorBody), (status = 409, description = "a product is not active", body = crate::error::ErrorBody)))]
async fn place(
    State(app): State<AppState>,
    caller: Principal,
    new_id: NewId,
    Valid(req): Valid<PlaceOrder>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let customer_id = caller.as_user()?;
    let customer = match app.users.get(customer_id).await? {
        Some((u, _)) if u.deleted_at.is_none() => u,
        Some(_) => {
            return Err(ApiError::Conflict(format!(
                "customer {} was deleted",
                customer_id.to_hex()
            )));
        }
        None => {
            return Err(ApiError::NotFound(format!(
                "customer {} does not exist",
                customer_id.to_hex()
            )));
        }
    };
    let mut items = Vec::with_capacity(req.items.len());
    let mut products: std::collections::HashMap<ObjectId, crate::products::Product> =
        std::collections::HashMap::new();
    for (i, line) in req.items.iter().enumerate() {
        let pid = ObjectId::parse_str(&line.product_id).map_err(|_| {
            ApiError::Validation(format!("items[{i}].product_id is not a 24-hex ObjectId"))
        })?;
        if let std::collections::hash_map::Entry::Vacant(slot) = products.entry(pid) {
            let Some((p, _)) = app.products.get(pid).await? else {
                return Err(ApiError::NotFound(format!(
                    "items[{i}]: product {} does not exist",
                    line.product_id
                )));
            };
            slot.insert(p);
        }
        let product = &products[&pid];
        if product.status != "active" {
            return Err(ApiError::Conflict(format!(
                "items[{i}]: product {} is {}, not active",
                line.product_id, product.status
            )));
        }
        let variant_name = line.variant.clone().unwrap_or_else(|| "Default".to_owned());
        let Some(variant) = product.variants.get(&variant_name) else {
            return Err(ApiError::NotFound(format!(
                "items[{i}]: product {} has no variant {variant_name:?}",
                line.product_id
            )));
        };
        items.push(Item {
            item_id: (i + 1).to_string(),
            product_snapshot: ProductSnapshot {
                product_id: line.product_id.clone(),
                product_name: product.name.clone(),
                supplier_id: product.supplier_id.clone(),
                variant_name,
            },
            quantity: line.quantity,
            unit_price_cents: variant.price_cents,
            total_cents: variant.price_cents.saturating_mul(line.quantity),
        });
    }
    let id = new_id.0;
    let (order, _) = app
        .orders
        .insert(id, EventType::OrderCreated, |at| Order {
            order_number: format!("ORD-{}-{}", &at[..10].replace('-', ""), &id.to_hex()[16..]),
            customer: Customer {
                user_id: customer_id.to_hex(),
                display_name: customer.profile.display_name,
                email: customer.contact_info.primary_email,
            },
            shipping_address: req.shipping_address,
            total_cents: items
                .iter()
                .map(|i| i.total_cents)
                .fold(0i64, i64::saturating_add),
            items,
            status: "pending".into(),
            shipment: None,
            cancelled_at: None,
            created_at: at.into(),
            updated_at: at.into(),
        })
        .await?;
    app.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json_with_id(id, &order))))
}

/// Who may read an order: its customer, a supplier of one of its items, an
/// admin.
fn may_read(caller: &Principal, o: &Order) -> bool {
    caller.is_admin()
        || caller.is(&o.customer.user_id)
        || o.items
            .iter()
            .any(|i| caller.is(&i.product_snapshot.supplier_id))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderFilter {
    /// The customer (default: the caller). Only that customer or an admin
    /// may list them.
    #[param(pattern = "^[0-9a-f]{24}$")]
    pub customer_id: Option<String>,
}

#[utoipa::path(get, path = "/orders", tag = "orders", params(OrderFilter, Paging), security(("bearer" = [])), responses((status = 200, description = "a customer's orders, newest first", body = Page), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn list(
    State(app): State<AppState>,
    caller: Principal,
    ApiQuery(filter): ApiQuery<OrderFilter>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page>> {
    let customer = filter.customer_id.unwrap_or_else(|| caller.id.to_hex());
    ObjectId::parse_str(&customer)
        .map_err(|_| ApiError::Validation("customer_id is not a 24-hex ObjectId".into()))?;
    if !caller.is_admin() && !caller.is(&customer) {
        return Err(ApiError::Forbidden(
            "only the customer or an admin may list these orders".into(),
        ));
    }
    Ok(Json(
        crate::reads::page(
            &app.orders.collection,
            mongodb::bson::doc! {"customer.user_id": customer},
            None,
            &paging,
        )
        .await?,
    ))
}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, body = Order), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
async fn read(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "order")?;
    match app.orders.get(oid).await? {
        Some((o, _)) if may_read(&caller, &o) => Ok(Json(json_with_id(oid, &o))),
        Some(_) => Err(ApiError::Forbidden(format!("order {id} is not yours"))),
        None => Err(ApiError::NotFound(format!("order {id} not found"))),
    }
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, description = "not the customer", body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits order.cancelled", body = Order), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn cancel(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "order")?;
    let o = app
        .orders
        .mutate(oid, "order", |o, at| {
            if !caller.is(&o.customer.user_id) {
                return Err(ApiError::Forbidden(
                    "only the customer may cancel an order".into(),
                ));
            }
            if o.status != "pending" {
                return Err(ApiError::Conflict(format!(
                    "order {id} is {} and cannot be cancelled",
                    o.status
                )));
            }
            o.status = "cancelled".into();
            o.cancelled_at = Some(at.into());
            o.updated_at = at.into();
            Ok(Mutation::minimal(
                EventType::OrderCancelled,
                events::payload::OrderCancelled {
                    order_number: o.order_number.clone(),
                },
            ))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &o)))
}

#[utoipa::path(post, path = "/orders/{id}/ship", tag = "orders", params(("id" = String, Path)), request_body = ShipOrder, security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, description = "not a supplier of its items nor an admin", body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits order.shipped", body = Order), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn ship(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
    Valid(req): Valid<ShipOrder>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "order")?;
    let o = app
        .orders
        .mutate(oid, "order", |o, at| {
            let supplies = o
                .items
                .iter()
                .any(|i| caller.is(&i.product_snapshot.supplier_id));
            if !caller.is_admin() && !supplies {
                return Err(ApiError::Forbidden(
                    "only a supplier of the order's items or an admin may ship it".into(),
                ));
            }
            if o.status != "pending" {
                return Err(ApiError::Conflict(format!(
                    "order {id} is {} and cannot be shipped",
                    o.status
                )));
            }
            o.status = "shipped".into();
            o.shipment = Some(Shipment {
                carrier: req.carrier.clone(),
                tracking_number: req.tracking_number.clone(),
                shipped_at: at.into(),
            });
            o.updated_at = at.into();
            Ok(Mutation::minimal(
                EventType::OrderShipped,
                events::payload::OrderShipped {
                    order_number: o.order_number.clone(),
                    carrier: req.carrier.clone(),
                    tracking_number: req.tracking_number.clone(),
                    shipped_at: at.into(),
                },
            ))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &o)))
}
