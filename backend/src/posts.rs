//! Posts: create, update, publish, delete (soft), read.
//!
//! Writing takes a user's token (the author); every change is for the
//! author or an admin. `GET /posts` is the feed: published posts, newest
//! published first.
//!
//! | method | path                  | emits           | payload           |
//! |--------|-----------------------|-----------------|-------------------|
//! | POST   | /posts (a user)       | post.created    | the full document |
//! | PATCH  | /posts/{id}           | post.updated    | the full document |
//! | POST   | /posts/{id}/publish   | post.published  | the full document |
//! | DELETE | /posts/{id}           | post.deleted    | `{"post_id"}`     |
//! | GET    | /posts/{id}           | -               | -                 |

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
pub use events::payload::{Author, LinkPreview, Media, Post, PostStats};

/// What a post is.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PostType {
    Text,
    Image,
    Link,
    Video,
}

impl PostType {
    fn as_str(self) -> &'static str {
        match self {
            PostType::Text => "text",
            PostType::Image => "image",
            PostType::Link => "link",
            PostType::Video => "video",
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePost {
    pub post_type: PostType,
    #[schema(max_length = 60000)]
    pub text_content: Option<String>,
    #[serde(default)]
    #[schema(max_items = 20)]
    pub media: Vec<Media>,
    pub link_preview: Option<LinkPreview>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePost {
    #[schema(max_length = 60000)]
    pub text_content: Option<String>,
    #[schema(max_items = 20)]
    pub media: Option<Vec<Media>>,
    pub link_preview: Option<LinkPreview>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/posts", post(create).get(list))
        .route("/posts/{id}", get(read).patch(update).delete(delete))
        .route("/posts/{id}/publish", post(publish))
}

#[utoipa::path(post, path = "/posts", tag = "posts", params(crate::idempotency::IdempotencyKey), request_body = CreatePost, security(("bearer" = [])), responses((status = 404, description = "the author does not exist", body = crate::error::ErrorBody), (status = 409, description = "the author was deleted", body = crate::error::ErrorBody), (status = 201, description = "emits post.created", body = Post), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not a user account", body = crate::error::ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    caller: Principal,
    new_id: NewId,
    Valid(req): Valid<CreatePost>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let author_id = caller.as_user()?;
    let author = match app.users.get(author_id).await? {
        Some((u, _)) if u.deleted_at.is_none() => u,
        Some(_) => {
            return Err(ApiError::Conflict(format!(
                "author {} was deleted",
                author_id.to_hex()
            )));
        }
        None => {
            return Err(ApiError::NotFound(format!(
                "author {} does not exist",
                author_id.to_hex()
            )));
        }
    };
    let id = new_id.0;
    let (post, _) = app
        .posts
        .insert(id, EventType::PostCreated, |at| Post {
            post_type: req.post_type.as_str().into(),
            author: Author {
                user_id: author_id.to_hex(),
                display_name: author.profile.display_name,
                avatar: author.profile.avatar,
                author_type: "user".into(),
            },
            text_content: req.text_content,
            media: req.media,
            link_preview: req.link_preview,
            stats: PostStats::default(),
            published_at: None,
            deleted_at: None,
            created_at: at.into(),
            updated_at: at.into(),
        })
        .await?;
    app.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json_with_id(id, &post))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PostFilter {
    /// Only this author's published posts.
    #[param(pattern = "^[0-9a-f]{24}$")]
    pub author_id: Option<String>,
}

#[utoipa::path(get, path = "/posts", tag = "posts", params(PostFilter, Paging), responses((status = 200, description = "the feed: published posts that are not deleted, newest published first", body = Page), (status = 422, body = crate::error::ErrorBody)))]
async fn list(
    State(app): State<AppState>,
    ApiQuery(filter): ApiQuery<PostFilter>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<Page>> {
    let mut query = mongodb::bson::doc! {"published_at": {"$ne": null}, "deleted_at": null};
    if let Some(a) = &filter.author_id {
        ObjectId::parse_str(a)
            .map_err(|_| ApiError::Validation("author_id is not a 24-hex ObjectId".into()))?;
        query.insert("author.user_id", a);
    }
    Ok(Json(
        crate::reads::page(&app.posts.collection, query, Some("published_at"), &paging).await?,
    ))
}

#[utoipa::path(get, path = "/posts/{id}", tag = "posts", params(("id" = String, Path)), responses((status = 200, body = Post), (status = 404, body = crate::error::ErrorBody)))]
async fn read(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "post")?;
    match app.posts.get(oid).await? {
        Some((p, _)) if p.deleted_at.is_none() => Ok(Json(json_with_id(oid, &p))),
        Some(_) => Err(ApiError::NotFound(format!("post {id} was deleted"))),
        None => Err(ApiError::NotFound(format!("post {id} not found"))),
    }
}

#[utoipa::path(patch, path = "/posts/{id}", tag = "posts", params(("id" = String, Path)), request_body = UpdatePost, security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits post.updated", body = Post), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
    Valid(req): Valid<UpdatePost>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "post")?;
    let p = app
        .posts
        .mutate(oid, "post", |p, at| {
            caller.owns_or_admin(&p.author.user_id, "post")?;
            if p.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!("post {id} was deleted")));
            }
            if let Some(t) = &req.text_content {
                p.text_content = Some(t.clone());
            }
            if let Some(m) = &req.media {
                p.media = m.clone();
            }
            if let Some(l) = &req.link_preview {
                p.link_preview = Some(l.clone());
            }
            p.updated_at = at.into();
            Ok(Mutation::full(EventType::PostUpdated))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &p)))
}

#[utoipa::path(post, path = "/posts/{id}/publish", tag = "posts", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits post.published", body = Post), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn publish(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let oid = object_id(&id, "post")?;
    let p = app
        .posts
        .mutate(oid, "post", |p, at| {
            caller.owns_or_admin(&p.author.user_id, "post")?;
            if p.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!("post {id} was deleted")));
            }
            if p.published_at.is_some() {
                return Err(ApiError::Conflict(format!(
                    "post {id} is already published"
                )));
            }
            p.published_at = Some(at.into());
            p.updated_at = at.into();
            Ok(Mutation::full(EventType::PostPublished))
        })
        .await?;
    app.wake.notify_one();
    Ok(Json(json_with_id(oid, &p)))
}

#[utoipa::path(delete, path = "/posts/{id}", tag = "posts", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 204, description = "soft-deleted; emits post.deleted"), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn delete(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let oid = object_id(&id, "post")?;
    app.posts
        .mutate(oid, "post", |p, at| {
            caller.owns_or_admin(&p.author.user_id, "post")?;
            if p.deleted_at.is_some() {
                return Err(ApiError::Conflict(format!("post {id} is already deleted")));
            }
            p.deleted_at = Some(at.into());
            p.updated_at = at.into();
            Ok(Mutation::minimal(
                EventType::PostDeleted,
                events::payload::PostDeleted {
                    post_id: oid.to_hex(),
                },
            ))
        })
        .await?;
    app.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
