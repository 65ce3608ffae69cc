//! Shared helpers for the host's integration tests against the real stack
//! (`scripts/stack up`): connection settings and per-test isolation.

#![allow(dead_code)]

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions as _, MySqlPool};

pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://projector:projector@127.0.0.1:3306/projector".to_owned())
}

/// A unique suffix for databases, topics and groups of one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A fresh, empty database for one test; dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin: MySqlConnectOptions = mysql_url().parse().unwrap();
        let name = unique("projector_test");
        let mut conn = admin
            .clone()
            .connect()
            .await
            .expect("MariaDB of scripts/stack is up");
        sqlx::query(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        let options = admin.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .unwrap();
        TestDb { name, url, pool }
    }

    pub async fn drop_db(self) {
        sqlx::query(&format!("DROP DATABASE `{}`", self.name))
            .execute(&self.pool)
            .await
            .unwrap();
        self.pool.close().await;
    }
}
