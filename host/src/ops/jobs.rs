//! The state of the shadow rebuilds and canaries, which run in processes
//! of their own: one `projector_jobs` row per kind and domain, written by
//! the job, read by every host's status page and metrics.

use serde::Serialize;
use sqlx::{MySqlPool, Row as _};

/// One job's latest state.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// `rebuild` or `canary`.
    pub kind: String,
    pub domain: String,
    /// `catching_up`, `swapping`, `swapped`, `rolled_back`, `failed`,
    /// `comparing`, `promoted`, `refused`, `stopped`.
    pub state: String,
    /// What the job reports (counts, timeline, examples), as JSON.
    pub detail: serde_json::Value,
    pub started_at: String,
    pub updated_at: String,
}

/// Records a job's state (the first record of a kind and domain starts it).
pub async fn record(
    pool: &MySqlPool,
    kind: &str,
    domain: &str,
    state: &str,
    detail: &serde_json::Value,
    fresh: bool,
) -> Result<(), sqlx::Error> {
    let sql = if fresh {
        "INSERT INTO projector_jobs (kind, domain, state, detail, started_at, updated_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE state = VALUES(state), detail = VALUES(detail), \
         started_at = VALUES(started_at), updated_at = VALUES(updated_at)"
    } else {
        "INSERT INTO projector_jobs (kind, domain, state, detail, started_at, updated_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE state = VALUES(state), detail = VALUES(detail), \
         updated_at = VALUES(updated_at)"
    };
    sqlx::query(sql)
        .bind(kind)
        .bind(domain)
        .bind(state)
        .bind(detail.to_string())
        .execute(pool)
        .await?;
    Ok(())
}

/// Every job, the latest first.
pub async fn list(pool: &MySqlPool) -> Result<Vec<Job>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind, domain, state, detail, \
         DATE_FORMAT(started_at, '%Y-%m-%dT%H:%i:%sZ'), DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%sZ') \
         FROM projector_jobs ORDER BY updated_at DESC",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let detail: String = r.try_get(3)?;
            Ok(Job {
                kind: r.try_get(0)?,
                domain: r.try_get(1)?,
                state: r.try_get(2)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                started_at: r.try_get(4)?,
                updated_at: r.try_get(5)?,
            })
        })
        .collect()
}

/// Moves a job to `state`, keeping what its detail held and adding the
/// fields of `extra` (a rollback or a drop keeps the rebuild's timeline).
pub async fn advance(
    pool: &MySqlPool,
    kind: &str,
    domain: &str,
    state: &str,
    extra: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let detail: Option<String> =
        sqlx::query_scalar("SELECT detail FROM projector_jobs WHERE kind = ? AND domain = ?")
            .bind(kind)
            .bind(domain)
            .fetch_optional(pool)
            .await?;
    let mut detail: serde_json::Value = detail
        .and_then(|d| serde_json::from_str(&d).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    if let (Some(into), Some(from)) = (detail.as_object_mut(), extra.as_object()) {
        for (k, v) in from {
            into.insert(k.clone(), v.clone());
        }
    }
    record(pool, kind, domain, state, &detail, false).await
}
