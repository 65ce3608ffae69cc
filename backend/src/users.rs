//! Users: register, update, delete (soft), read.
//!
//! | method | path          | emits         | payload             |
//! |--------|---------------|---------------|---------------------|
//! | POST   | /users        | user.created  | the full document   |
//! | PATCH  | /users/{id}   | user.updated  | the full document   |
//! | DELETE | /users/{id}   | user.deleted  | `{"user_id"}`       |
//! | GET    | /users/{id}   | -             | -                   |

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
pub struct User {
    pub contact_info: UserContact,
    pub profile: Profile,
    pub deleted_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserContact {
    pub primary_email: String,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub display_name: String,
    pub avatar: Option<String>,
    pub bio: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    pub email: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub avatar: Option<String>,
    pub bio: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub phone: Option<String>,
    pub avatar: Option<String>,
    pub bio: Option<String>,
}

fn check_optional(
    phone: &Option<String>,
    avatar: &Option<String>,
    bio: &Option<String>,
) -> ApiResult<()> {
    optional("phone", phone, 64)?;
    optional("avatar", avatar, 1024)?;
    optional("bio", bio, 10_000)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(register))
        .route("/users/{id}", get(read).patch(update).delete(delete))
}

#[utoipa::path(post, path = "/users", tag = "users", request_body = RegisterUser, responses((status = 201, description = "registered; emits user.created", body = User), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn register(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RegisterUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    email("email", &req.email)?;
    required("display_name", &req.display_name, 255)?;
    check_optional(&req.phone, &req.avatar, &req.bio)?;
    let at = now();
    let user = User {
        contact_info: UserContact {
            primary_email: req.email,
            phone: req.phone,
        },
        profile: Profile {
            display_name: req.display_name,
            avatar: req.avatar,
            bio: req.bio,
        },
        deleted_at: None,
        created_at: at.clone(),
        updated_at: at,
    };
    let id = ObjectId::new();
    app.users.insert(id, &user, EventType::UserCreated).await?;
    app.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json_with_id(id, &user))))
}

#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = String, Path)), responses((status = 200, body = User), (status = 404, body = crate::error::ErrorBody)))]
async fn read(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "user")?;
    match app.users.get(oid).await? {
        Some((user, _)) => Ok(Json(json_with_id(oid, &user))),
        None => Err(ApiError::NotFound(format!("user {id} not found"))),
    }
}

#[utoipa::path(patch, path = "/users/{id}", tag = "users", params(("id" = String, Path)), request_body = UpdateUser, responses((status = 200, description = "emits user.updated", body = User), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<Value>> {
    if let Some(e) = &req.email {
        email("email", e)?;
    }
    if let Some(n) = &req.display_name {
        required("display_name", n, 255)?;
    }
    check_optional(&req.phone, &req.avatar, &req.bio)?;
    let oid = object_id(&id, "user")?;
    let user = app
        .users
        .mutate(oid, "user", |u| {
            if u.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!("user {id} was deleted")));
            }
            if let Some(e) = &req.email {
                u.contact_info.primary_email = e.clone();
            }
            if let Some(p) = &req.phone {
                u.contact_info.phone = Some(p.clone());
            }
            if let Some(n) = &req.display_name {
                u.profile.display_name = n.clone();
            }
            if let Some(a) = &req.avatar {
                u.profile.avatar = Some(a.clone());
            }
            if let Some(b) = &req.bio {
                u.profile.bio = Some(b.clone());
            }
            u.updated_at = now();
            Ok(Mutation::full(EventType::UserUpdated))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &user)))
}

#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = String, Path)), responses((status = 204, description = "soft-deleted; emits user.deleted"), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let oid = object_id(&id, "user")?;
    app.users
        .mutate(oid, "user", |u| {
            if u.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!("user {id} is already deleted")));
            }
            let at = now();
            u.deleted_at = Some(at.clone());
            u.updated_at = at;
            Ok(Mutation::minimal(
                EventType::UserDeleted,
                json!({"user_id": oid.to_hex()}),
            ))
        })
        .await?;
    app.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
