//! The MySQL pool, with the session settings the sink relies on.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::MySqlPool;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

use crate::settings::redact_url;

/// Connects to MySQL with the session settings the sink relies on.
pub async fn connect_mysql(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    let options: MySqlConnectOptions = url
        .parse()
        .with_context(|| format!("invalid MySQL URL {}", redact_url(url)))?;
    // Strict mode turns truncation into an error (which dead-letters the
    // event) instead of silently storing something else; UTC everywhere;
    // READ COMMITTED (see below).
    let options = options
        .pipes_as_concat(false)
        .timezone(Some("+00:00".to_owned()))
        .charset("utf8mb4")
        .statement_cache_capacity(256);
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', SESSION innodb_lock_wait_timeout = 10")
                    .execute(&mut *conn)
                    .await?;
                // Every write of a domain happens in its own lane, under the
                // lock of its partitions' positions (the fence), so the
                // batches need no gap locks: under REPEATABLE READ the
                // fence's locking read of positions not stored yet took gap
                // locks, and two lanes inserting their first positions
                // deadlocked on each other's gaps.
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("failed to connect to MySQL at {}", redact_url(url)))
}
