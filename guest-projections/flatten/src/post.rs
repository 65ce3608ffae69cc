//! `post.*` -> `posts` (soft delete).
//!
//! | column           | source                         |
//! |------------------|--------------------------------|
//! | post_id          | entity_id                      |
//! | author_user_id   | data.author.user_id            |
//! | author_name      | data.author.display_name       |
//! | author_avatar    | data.author.avatar             |
//! | author_type      | data.author.author_type        |
//! | post_type        | data.post_type                 |
//! | text_content     | data.text_content              |
//! | media_json       | data.media (JSON)              |
//! | link_url, link_title, link_description, link_image | data.link_preview.{url,title,description,image} |
//! | view_count, like_count, comment_count, share_count | data.stats.* |
//! | published_at     | data.published_at              |
//! | deleted_at       | data.deleted_at; post.deleted sets it to the event time |
//! | created_at / updated_at | data.created_at / data.updated_at, else the event time |

use crate::{
    Domain, Envelope, Event, Info, Keyed, Result, RowOp, TableDef, Upsert, col, make_info,
};

pub(crate) const POSTS: TableDef = TableDef {
    name: "posts",
    columns: &[
        "post_id",
        "author_user_id",
        "author_name",
        "author_avatar",
        "author_type",
        "post_type",
        "text_content",
        "media_json",
        "link_url",
        "link_title",
        "link_description",
        "link_image",
        "view_count",
        "like_count",
        "comment_count",
        "share_count",
        "published_at",
        "deleted_at",
        "created_at",
        "updated_at",
    ],
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
