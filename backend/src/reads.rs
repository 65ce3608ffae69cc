//! List endpoints: filters and keyset paging.
//!
//! A page answers `{"items": [...], "next": "<cursor>" | null}`; the next
//! page is asked with `?after=<cursor>` and the same filters. The cursor is
//! the sort key of the page's last item, so a page costs one index range
//! scan however deep it is, and items written meanwhile neither repeat nor
//! shift the pages.

use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 20;
/// The largest `limit`.
pub const MAX_LIMIT: u32 = 100;

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub items: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// The paging parameters every list takes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(pattern = "^[0-9a-f]{24}(_[0-9]{1,19})?$")]
    pub after: Option<String>,
}

impl Paging {
    /// The page size (its range is checked against the document).
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// A position in a list sorted by (`field` descending, `_id` descending),
/// or by `_id` descending alone: the last item's id, and its `field` (a
/// stored time) as microseconds since the epoch. Every string of the
/// documented pattern (`<24 hex>` or `<24 hex>_<digits>`) is a position.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub key: Option<String>,
    pub id: ObjectId,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let micros = self.key.as_deref().and_then(|k| {
            chrono::DateTime::parse_from_rfc3339(k)
                .ok()
                .map(|t| t.timestamp_micros())
        });
        match micros {
            Some(us) => format!("{}_{}", self.id.to_hex(), us.max(0)),
            None => self.id.to_hex(),
        }
    }

    pub fn decode(text: &str) -> ApiResult<Cursor> {
        let bad = || ApiError::Validation("after is not a cursor this list returned".into());
        let (id, micros) = match text.split_once('_') {
            Some((id, us)) => (id, Some(us)),
            None => (text, None),
        };
        let key = match micros {
            None => None,
            Some(us) => {
                let us: i64 = us.parse().unwrap_or(i64::MAX);
                let t = chrono::DateTime::from_timestamp_micros(us)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
                Some(events::format_timestamp(&t))
            }
        };
        Ok(Cursor {
            key,
            id: ObjectId::parse_str(id).map_err(|_| bad())?,
        })
    }

    /// The filter for items after this cursor in a list sorted by
    /// (`field` desc, `_id` desc), or `_id` desc when `field` is `None`.
    pub fn after(&self, field: Option<&str>) -> Document {
        match (field, &self.key) {
            (Some(f), Some(key)) => doc! {"$or": [
                {f: {"$lt": key}},
                {f: key, "_id": {"$lt": self.id}},
            ]},
            _ => doc! {"_id": {"$lt": self.id}},
        }
    }
}

/// Runs a list query: `filter` plus the cursor's, sorted newest first by
/// `field` (then `_id`), `limit` items; the page and its next cursor.
pub async fn page(
    collection: &mongodb::Collection<Document>,
    mut filter: Document,
    field: Option<&str>,
    paging: &Paging,
) -> ApiResult<Page> {
    use futures_util::TryStreamExt as _;
    let limit = paging.limit();
    if let Some(after) = &paging.after {
        let cursor = Cursor::decode(after)?;
        let extra = cursor.after(field);
        filter = doc! {"$and": [filter, extra]};
    }
    let sort = match field {
        Some(f) => doc! {f: -1, "_id": -1},
        None => doc! {"_id": -1},
    };
    let docs: Vec<Document> = collection
        .find(filter)
        .sort(sort)
        .limit(i64::from(limit) + 1)
        .await?
        .try_collect()
        .await?;
    let more = docs.len() > limit as usize;
    let mut items = Vec::with_capacity(limit as usize);
    let mut last = None;
    for mut d in docs.into_iter().take(limit as usize) {
        let id = d
            .get_object_id("_id")
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("a stored document has no id: {e}")))?;
        last = Some(Cursor {
            key: field.and_then(|f| match d.get(f) {
                Some(Bson::String(s)) => Some(s.clone()),
                _ => None,
            }),
            id,
        });
        for f in crate::store::INTERNAL_FIELDS {
            d.remove(f);
        }
        items.push(crate::store::to_json(&d));
    }
    Ok(Page {
        items,
        next: if more { last.map(|c| c.encode()) } else { None },
    })
}

/// Creates the indexes the lists page through. Failure is logged: a list
/// still answers, only slower.
pub async fn ensure_indexes(db: &mongodb::Database) {
    let wanted: [(&str, Document); 4] = [
        ("orders", doc! {"customer.user_id": 1, "_id": -1}),
        ("products", doc! {"supplier_id": 1, "status": 1, "_id": -1}),
        ("posts", doc! {"published_at": -1, "_id": -1}),
        ("posts", doc! {"author.user_id": 1, "_id": -1}),
    ];
    for (collection, keys) in wanted {
        let index = mongodb::IndexModel::builder().keys(keys).build();
        if let Err(e) = db
            .collection::<Document>(collection)
            .create_index(index)
            .await
        {
            tracing::warn!(error = %e, collection, "could not create a list index");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let c = Cursor {
            key: Some("2025-01-10T14:15:16.100000Z".into()),
            id: ObjectId::new(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        let bare = Cursor {
            key: None,
            id: ObjectId::new(),
        };
        assert_eq!(Cursor::decode(&bare.encode()).unwrap(), bare);
        // Any string of the documented pattern is a position.
        let far = Cursor::decode("0123456789abcdef01234567_9999999999999999999").unwrap();
        assert!(far.key.is_some());
    }
}
