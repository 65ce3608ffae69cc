//! A count of row writes that an event applied twice makes rise.
//!
//! `processed_events` has `event_id` as its primary key, so counting its
//! distinct ids can never show a duplicate, and applying an event twice
//! leaves the rows as they were (every write is timestamp-guarded), so
//! comparing tables cannot either. Triggers can: every INSERT or UPDATE of a
//! row of the parent tables (users, suppliers, products, orders, posts) adds a
//! row to `audit_writes` (table, row key, the writing event), guard or no
//! guard, inside the writing transaction (a rolled-back batch leaves none).
//!
//! An event applied twice writes the same row with the same event id twice:
//! [`repeated_writes`] counts those repeats. It does not depend on batching,
//! whereas the plain number of writes does: an update whose guard
//! (`WHERE event_timestamp <= ?`) excludes its row touches nothing, and
//! which ones do depends on the order in which a batch's phases run them.
//! So a disturbed run must count as many repeats as a clean run of the same
//! events (normally none), and any surplus is an event applied more than
//! once. A replay, which clears a domain's tables and applies its events
//! again, starts a new generation of those tables ([`new_generation`]): a
//! write repeats only within one. (Child tables are left out: a batch
//! replaces a parent's children once. A hard delete repeated finds no row
//! and writes nothing, so it cannot be seen here.)
//!
//! For test databases only: install it after the migrations.

use sqlx::MySqlPool;

/// The parent tables whose writes are counted, with their key columns.
pub const AUDITED: [(&str, &str); 5] = [
    ("users", "user_id"),
    ("suppliers", "supplier_id"),
    ("products", "product_id"),
    ("orders", "order_id"),
    ("posts", "post_id"),
];

/// Creates `audit_writes` and the triggers (idempotent).
pub async fn install(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    // Triggers cannot be created through prepared statements: text protocol.
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS audit_writes (\
           seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
           table_name VARCHAR(64) NOT NULL, \
           row_key VARCHAR(64) NOT NULL, \
           event_id VARCHAR(64) NOT NULL, \
           generation INT NOT NULL\
         ) ENGINE=InnoDB;\n\
         CREATE TABLE IF NOT EXISTS audit_generations (\
           table_name VARCHAR(64) NOT NULL PRIMARY KEY, \
           generation INT NOT NULL\
         ) ENGINE=InnoDB;\n",
    );
    for (table, key) in AUDITED {
        for (suffix, event) in [("ins", "INSERT"), ("upd", "UPDATE")] {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS audit_{table}_{suffix};\n\
                 CREATE TRIGGER audit_{table}_{suffix} AFTER {event} ON `{table}` FOR EACH ROW \
                 INSERT INTO audit_writes (table_name, row_key, event_id, generation) \
                 VALUES ('{table}', NEW.`{key}`, NEW.event_id, COALESCE(\
                   (SELECT generation FROM audit_generations WHERE table_name = '{table}'), 0));\n"
            ));
        }
    }
    sqlx::raw_sql(&sql).execute(pool).await?;
    Ok(())
}

/// Row writes that repeat an earlier write of the same row by the same
/// event: an event applied more than once.
pub async fn repeated_writes(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(COUNT(*) - COUNT(DISTINCT table_name, row_key, event_id, generation) \
         AS SIGNED) FROM audit_writes",
    )
    .fetch_one(pool)
    .await
}

/// Starts a new generation of `table`'s writes: a replay is about to write
/// its rows again.
pub async fn new_generation(pool: &MySqlPool, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_generations (table_name, generation) VALUES (?, 1) \
         ON DUPLICATE KEY UPDATE generation = generation + 1",
    )
    .bind(table)
    .execute(pool)
    .await?;
    Ok(())
}

/// Row writes counted so far.
pub async fn writes(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_writes")
        .fetch_one(pool)
        .await
}
