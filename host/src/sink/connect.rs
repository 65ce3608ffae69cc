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
    // event) instead of silently storing something else; UTC everywhere.
    let options = options
        .pipes_as_concat(false)
        .timezone(Some("+00:00".to_owned()))
        .charset("utf8mb4")
        .statement_cache_capacity(64);
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', SESSION innodb_lock_wait_timeout = 10")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("failed to connect to MySQL at {}", redact_url(url)))
}
