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
use crate::common::{optional, required};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::idempotency::NewId;
use crate::reads::{Page, Paging};
use crate::store::{Mutation, json_with_id, object_id};
pub use events::payload::{Author, LinkPreview, Media, Post, PostStats};

const POST_TYPES: [&str; 4] = ["text", "image", "link", "video"];

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePost {
    pub post_type: String,
    pub text_content: Option<String>,
    #[serde(default)]
    pub media: Vec<Media>,
    pub link_preview: Option<LinkPreview>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePost {
    pub text_content: Option<String>,
    pub media: Option<Vec<Media>>,
    pub link_preview: Option<LinkPreview>,
}

fn check_content(
    text: &Option<String>,
    media: Option<&Vec<Media>>,
    link: &Option<LinkPreview>,
) -> ApiResult<()> {
    optional("text_content", text, 60_000)?;
    if let Some(media) = media {
        if media.len() > 20 {
            return Err(ApiError::Validation("at most 20 media".into()));
        }
        for (i, m) in media.iter().enumerate() {
            required(&format!("media[{i}].type"), &m.kind, 32)?;
            required(&format!("media[{i}].url"), &m.url, 2048)?;
        }
    }
    if let Some(l) = link {
        required("link_preview.url", &l.url, 2048)?;
        optional("link_preview.title", &l.title, 512)?;
        optional("link_preview.description", &l.description, 10_000)?;
        optional("link_preview.image", &l.image, 2048)?;
    }
    Ok(())
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/posts", post(create).get(list))
        .route("/posts/{id}", get(read).patch(update).delete(delete))
        .route("/posts/{id}/publish", post(publish))
}

#[utoipa::path(post, path = "/posts", tag = "posts", params(("Idempotency-Key" = Option<String>, Header, description = "a retry with the same key answers the first response")), request_body = CreatePost, security(("bearer" = [])), responses((status = 201, description = "emits post.created", body = Post), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 403, description = "not a user account", body = crate::error::ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    caller: Principal,
    new_id: NewId,
    ApiJson(req): ApiJson<CreatePost>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let author_id = caller.as_user()?;
    if !POST_TYPES.contains(&req.post_type.as_str()) {
        return Err(ApiError::Validation(format!(
            "post_type must be one of {}",
            POST_TYPES.join(", ")
        )));
    }
    check_content(&req.text_content, Some(&req.media), &req.link_preview)?;
    let author = match app.users.get(author_id).await? {
        Some((u, _)) if u.deleted_at.is_none() => u,
        Some(_) => {
            return Err(ApiError::Validation(format!(
                "author {} was deleted",
                author_id.to_hex()
            )));
        }
        None => {
            return Err(ApiError::Validation(format!(
                "author {} does not exist",
                author_id.to_hex()
            )));
        }
    };
    let id = new_id.0;
    let (post, _) = app
        .posts
        .insert(id, EventType::PostCreated, |at| Post {
            post_type: req.post_type,
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
        Some((p, _)) => Ok(Json(json_with_id(oid, &p))),
        None => Err(ApiError::NotFound(format!("post {id} not found"))),
    }
}

#[utoipa::path(patch, path = "/posts/{id}", tag = "posts", params(("id" = String, Path)), request_body = UpdatePost, security(("bearer" = [])), responses((status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody), (status = 200, description = "emits post.updated", body = Post), (status = 400, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdatePost>,
) -> ApiResult<Json<Value>> {
    check_content(&req.text_content, req.media.as_ref(), &req.link_preview)?;
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
