//! Users: register, update, delete (soft), read.
//!
//! | method | path          | who            | emits         | payload             |
//! |--------|---------------|----------------|---------------|---------------------|
//! | POST   | /users        | anyone         | user.created  | the full document   |
//! | PATCH  | /users/{id}   | the user, admin | user.updated | the full document   |
//! | DELETE | /users/{id}   | the user, admin | user.deleted | `{"user_id"}`       |
//! | GET    | /users/{id}   | anyone         | -             | -                   |
//! | GET    | /users?email= | signed in      | -             | -                   |
//!
//! Registering takes a password (stored as a hash in `accounts`, never in
//! the document); the email must be free. Changing the email moves the
//! login to it; deleting the user frees it.

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
use crate::validate::{ApiQuery, Valid};
pub use events::payload::{Profile, User, UserContact};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    #[schema(pattern = r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$", max_length = 254)]
    pub email: String,
    /// 8 to 128 characters; log in with it at `POST /auth/login`.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 255)]
    pub display_name: String,
    #[schema(max_length = 64)]
    pub phone: Option<String>,
    #[schema(max_length = 1024)]
    pub avatar: Option<String>,
    #[schema(max_length = 10000)]
    pub bio: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[schema(pattern = r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$", max_length = 254)]
    pub email: Option<String>,
    #[schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 255)]
    pub display_name: Option<String>,
    #[schema(max_length = 64)]
    pub phone: Option<String>,
    #[schema(max_length = 1024)]
    pub avatar: Option<String>,
    #[schema(max_length = 10000)]
    pub bio: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(register).get(by_email))
        .route("/users/{id}", get(read).patch(update).delete(delete))
}

#[utoipa::path(post, path = "/users", tag = "users", params(crate::idempotency::IdempotencyKey), request_body = RegisterUser, responses((status = 201, description = "registered; emits user.created", body = User), (status = 400, body = crate::error::ErrorBody), (status = 409, description = "the email is taken", body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn register(
    State(app): State<AppState>,
    new_id: NewId,
    Valid(req): Valid<RegisterUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = new_id.0;
    let hash = hash_password(req.password).await?;
    app.accounts
        .claim(&req.email, id, Role::User, &hash)
        .await?;
    let (user, _) = app
        .users
        .insert(id, EventType::UserCreated, |at| User {
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
            created_at: at.into(),
            updated_at: at.into(),
        })
        .await?;
    app.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json_with_id(id, &user))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ByEmail {
    /// The user's email (case-insensitive).
    #[param(max_length = 254)]
    pub email: String,
}

#[utoipa::path(get, path = "/users", tag = "users", params(ByEmail), security(("bearer" = [])), responses((status = 200, description = "the users with this email (none or one)", body = crate::reads::Page), (status = 401, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn by_email(
    State(app): State<AppState>,
    _caller: Principal,
    ApiQuery(q): ApiQuery<ByEmail>,
) -> ApiResult<Json<crate::reads::Page>> {
    let mut items = Vec::new();
    if let Some((id, Role::User)) = app.accounts.lookup(&q.email).await?
        && let Some((user, _)) = app.users.get(id).await?
        && user.deleted_at.is_none()
    {
        items.push(json_with_id(id, &user));
    }
    Ok(Json(crate::reads::Page { items, next: None }))
}

#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = String, Path)), responses((status = 200, body = User), (status = 404, body = crate::error::ErrorBody)))]
async fn read(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "user")?;
    match app.users.get(oid).await? {
        Some((user, _)) if user.deleted_at.is_none() => Ok(Json(json_with_id(oid, &user))),
        Some(_) => Err(ApiError::NotFound(format!("user {id} was deleted"))),
        None => Err(ApiError::NotFound(format!("user {id} not found"))),
    }
}

#[utoipa::path(patch, path = "/users/{id}", tag = "users", params(("id" = String, Path)), request_body = UpdateUser, security(("bearer" = [])), responses((status = 200, description = "emits user.updated", body = User), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
    Valid(req): Valid<UpdateUser>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "user")?;
    caller.owns_or_admin(&id, "user")?;
    let old_email = match &req.email {
        Some(_) => app
            .users
            .get(oid)
            .await?
            .map(|(u, _)| u.contact_info.primary_email),
        None => None,
    };
    let write = app.users.mutate(oid, "user", |u, at| {
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
        u.updated_at = at.into();
        Ok(Mutation::full(EventType::UserUpdated))
    });
    let result = app
        .accounts
        .with_email_change(oid, old_email, req.email.as_deref(), write)
        .await;
    let user = result?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &user)))
}

#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "soft-deleted; emits user.deleted"), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
async fn delete(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let oid = object_id(&id, "user")?;
    caller.owns_or_admin(&id, "user")?;
    let user = app
        .users
        .mutate(oid, "user", |u, at| {
            if u.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!("user {id} is already deleted")));
            }
            u.deleted_at = Some(at.into());
            u.updated_at = at.into();
            Ok(Mutation::minimal(
                EventType::UserDeleted,
                events::payload::UserDeleted {
                    user_id: oid.to_hex(),
                },
            ))
        })
        .await?;
    app.accounts
        .release(&user.contact_info.primary_email, oid)
        .await?;
    app.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
