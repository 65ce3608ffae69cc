//! `post.*` -> `posts` (soft delete). The columns and their sources are
//! declared in [`POSTS`].

use crate::SqlType::*;
use crate::prelude::*;
use crate::table::{CREATED_AT, Table, UPDATED_AT, not_null, nullable};
use crate::{Domain, Envelope, Event, Info, Keyed, Result, RowOp, Upsert, col, make_info};

pub(crate) const POSTS: Table = Table {
    name: "posts",
    doc: "One row per post; `post.deleted` sets `deleted_at` (soft delete).",
    columns: &[
        not_null("post_id", Varchar(24), "entity_id"),
        nullable("author_user_id", Varchar(24), "data.author.user_id"),
        nullable("author_name", Varchar(255), "data.author.display_name"),
        nullable("author_avatar", Varchar(1024), "data.author.avatar"),
        nullable("author_type", Varchar(32), "data.author.author_type"),
        nullable("post_type", Varchar(32), "data.post_type"),
        nullable("text_content", Text, "data.text_content"),
        nullable("media_json", Json, "data.media (JSON)"),
        nullable("link_url", Varchar(2048), "data.link_preview.url"),
        nullable("link_title", Varchar(512), "data.link_preview.title"),
        nullable("link_description", Text, "data.link_preview.description"),
        nullable("link_image", Varchar(2048), "data.link_preview.image"),
        nullable("view_count", Bigint, "data.stats.view_count"),
        nullable("like_count", Bigint, "data.stats.like_count"),
        nullable("comment_count", Bigint, "data.stats.comment_count"),
        nullable("share_count", Bigint, "data.stats.share_count"),
        nullable("published_at", Datetime, "data.published_at"),
        nullable(
            "deleted_at",
            Datetime,
            "data.deleted_at; post.deleted sets the event time",
        ),
        CREATED_AT,
        UPDATED_AT,
    ],
    primary_key: &["post_id"],
    unique_keys: &[],
    indexes: &[&["author_user_id"], &["post_type"], &["published_at"]],
    parent: None,
};

const HANDLES: [&str; 4] = [
    "post.created",
    "post.updated",
    "post.published",
    "post.deleted",
];

pub(crate) const DOMAIN: Domain = Domain {
    name: "post",
    info,
    project,
};

fn info() -> Info {
    make_info("post", &HANDLES, &[&POSTS])
}

fn project(env: &Envelope<'_>) -> Result<Vec<RowOp>> {
    let ev = Event::parse(env)?;
    match ev.event_type {
        "post.created" | "post.updated" | "post.published" => upsert(&ev),
        "post.deleted" => {
            ev.check_payload_id("post_id")?;
            Ok(vec![RowOp::SoftDelete(Keyed {
                table: POSTS.name.into(),
                key: vec![col("post_id", ev.id())],
            })])
        }
        _ => Err(ev.unsupported("post")),
    }
}

fn upsert(ev: &Event<'_>) -> Result<Vec<RowOp>> {
    let data = ev.data()?;
    let author = data.obj("author")?;
    let link = data.obj("link_preview")?;
    let stats = data.obj("stats")?;
    let [created_at, updated_at] = ev.record_times(&data)?;
    Ok(vec![RowOp::Upsert(Upsert {
        table: POSTS.name.into(),
        key: vec![col("post_id", ev.id())],
        values: vec![
            col("author_user_id", author.text("user_id")?),
            col("author_name", author.text("display_name")?),
            col("author_avatar", author.text("avatar")?),
            col("author_type", author.text("author_type")?),
            col("post_type", data.text("post_type")?),
            col("text_content", data.text("text_content")?),
            col("media_json", data.json("media")?),
            col("link_url", link.text("url")?),
            col("link_title", link.text("title")?),
            col("link_description", link.text("description")?),
            col("link_image", link.text("image")?),
            col("view_count", stats.int("view_count")?),
            col("like_count", stats.int("like_count")?),
            col("comment_count", stats.int("comment_count")?),
            col("share_count", stats.int("share_count")?),
            col("published_at", data.timestamp("published_at")?),
            col("deleted_at", data.timestamp("deleted_at")?),
            created_at,
            updated_at,
        ],
    })])
}
