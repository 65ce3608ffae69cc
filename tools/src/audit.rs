//! A count of row writes that an event applied twice makes rise.
//!
//! `processed_events` has `event_id` as its primary key, so counting its
//! distinct ids can never show a duplicate, and applying an event twice
//! leaves the rows as they were (every write is timestamp-guarded), so
//! comparing tables cannot either. Triggers can: every INSERT or UPDATE of a
//! row of the parent tables (users, suppliers, products, orders, posts) adds a
//! row to `audit_writes`, guard or no guard, inside the writing transaction
//! (a rolled-back batch leaves none).
//!
//! For a stream delivered in order, the number of such writes is the number
//! of upsert, update and soft-delete operations on existing or new parent rows,
//! whatever the batching: a clean run and a disturbed run of the same events
//! must count the same, and any surplus is an event applied more than once.
//! (Child tables are left out: a batch replaces a parent's children once
//! however many of its events carry them. A hard delete repeated finds no row
//! and writes nothing, so it cannot be seen here.)
//!
//! For test databases only: install it after the migrations.

use sqlx::MySqlPool;

/// The parent tables whose writes are counted.
pub const AUDITED: [&str; 5] = ["users", "suppliers", "products", "orders", "posts"];

/// Creates `audit_writes` and the triggers (idempotent).
pub async fn install(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    // Triggers cannot be created through prepared statements: text protocol.
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS audit_writes (\
           seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
           table_name VARCHAR(64) NOT NULL, \
           event_id VARCHAR(64) NULL\
         ) ENGINE=InnoDB;\n",
    );
    for table in AUDITED {
        for (suffix, event) in [("ins", "INSERT"), ("upd", "UPDATE")] {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS audit_{table}_{suffix};\n\
                 CREATE TRIGGER audit_{table}_{suffix} AFTER {event} ON `{table}` FOR EACH ROW \
                 INSERT INTO audit_writes (table_name, event_id) VALUES ('{table}', NEW.event_id);\n"
            ));
        }
    }
    sqlx::raw_sql(&sql).execute(pool).await?;
    Ok(())
}

/// Row writes counted so far.
pub async fn writes(pool: &MySqlPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_writes")
        .fetch_one(pool)
        .await
}
