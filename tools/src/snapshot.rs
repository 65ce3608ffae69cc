//! The projection's content as comparable data: every table's rows as text,
//! for the tests, the drills and the benchmark (which must end with equal
//! tables whatever the mode).

use std::collections::BTreeMap;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions as _, MySqlPool, Row as _};

/// The projection tables, each as rows of column -> text (NULL as None),
/// without surrogate `id` columns, sorted.
pub type Dump = BTreeMap<String, Vec<BTreeMap<String, Option<String>>>>;

/// The projection tables, parents before children.
pub use projector_host::sink::schema::PROJECTION_TABLES as TABLES;

async fn columns(pool: &MySqlPool, table: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
         AND COLUMN_NAME <> 'id' ORDER BY COLUMN_NAME",
    )
    .bind(table)
    .fetch_all(pool)
    .await
}

/// Every projection table (without surrogate `id` columns), rows sorted.
/// For small tables (tests, drills); see [`checksum`] for large ones.
pub async fn dump(pool: &MySqlPool) -> Result<Dump, sqlx::Error> {
    let mut out = Dump::new();
    for table in TABLES {
        let cols = columns(pool, table).await?;
        let select: Vec<String> = cols
            .iter()
            .map(|c| format!("CAST(`{c}` AS CHAR)"))
            .collect();
        let sql = format!("SELECT {} FROM `{table}`", select.join(", "));
        let mut rows: Vec<BTreeMap<String, Option<String>>> = sqlx::query(&sql)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                cols.iter()
                    .enumerate()
                    .map(|(i, c)| (c.clone(), r.get::<Option<String>, _>(i)))
                    .collect()
            })
            .collect();
        rows.sort_by_key(|r| format!("{r:?}"));
        out.insert(table.to_owned(), rows);
    }
    Ok(out)
}

/// A checksum of every projection table's content (without surrogate `id`
/// columns), computed in the database so it scales to millions of rows:
/// per table the row count, and the sum and XOR of each row's CRC32 over
/// its columns in name order (tables created by different host versions
/// may order their columns differently).
pub async fn checksum(pool: &MySqlPool) -> Result<String, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    checksum_of(&mut conn, &TABLES).await
}

/// [`checksum`] of some tables, read on `conn` (inside its transaction, if
/// one is open: a reader's consistent snapshot).
pub async fn checksum_of(
    conn: &mut sqlx::MySqlConnection,
    tables: &[&str],
) -> Result<String, sqlx::Error> {
    let mut columns = Vec::new();
    for table in tables {
        columns.push((*table, columns_of(conn, table).await?));
    }
    checksum_with(conn, &columns).await
}

/// The columns [`checksum`] covers (all but a surrogate `id`), by name.
pub async fn columns_of(
    conn: &mut sqlx::MySqlConnection,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
         AND COLUMN_NAME <> 'id' ORDER BY COLUMN_NAME",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
}

/// [`checksum_of`] with the columns known (a reader that names its
/// columns, as queries do, rather than reading the catalog each time).
pub async fn checksum_with(
    conn: &mut sqlx::MySqlConnection,
    tables: &[(&str, Vec<String>)],
) -> Result<String, sqlx::Error> {
    let mut parts = Vec::new();
    for (table, cols) in tables {
        let row: Vec<String> = cols
            .iter()
            .map(|c| format!("IFNULL(CAST(`{c}` AS CHAR), '\\N')"))
            .collect();
        let sql = format!(
            "SELECT COUNT(*), CAST(IFNULL(SUM(CRC32(CONCAT_WS('|', {cols}))), 0) AS CHAR), \
             CAST(IFNULL(BIT_XOR(CRC32(CONCAT_WS('|', {cols}))), 0) AS CHAR) FROM `{table}`",
            cols = row.join(", ")
        );
        let r = sqlx::query(&sql).fetch_one(&mut *conn).await?;
        parts.push(format!(
            "{table}:{}:{}:{}",
            r.try_get::<i64, _>(0)?,
            r.try_get::<String, _>(1)?,
            r.try_get::<String, _>(2)?
        ));
    }
    Ok(parts.join(" "))
}

/// Creates an empty database `name` (dropped first if it exists) on the
/// server of `mysql_url`; returns its URL and a small pool. For the drills
/// and the benchmark, which each work in a fresh database.
pub async fn create_database(mysql_url: &str, name: &str) -> anyhow::Result<(String, MySqlPool)> {
    use anyhow::Context as _;
    let admin: MySqlConnectOptions = mysql_url.parse()?;
    let mut conn = admin.clone().connect().await.context("MariaDB is up")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .execute(&mut conn)
    .await?;
    let options = admin.database(name);
    let url = options.to_url_lossy().to_string();
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await?;
    Ok((url, pool))
}
