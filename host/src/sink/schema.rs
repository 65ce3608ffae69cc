//! The MySQL schema: versioned migrations, and what the host learns from the
//! live schema to validate what components may write.
//!
//! Identifiers that reach SQL text are [`Ident`]s: parsed once, checked
//! against a strict pattern and against the live schema, and always quoted.
//! Values never reach SQL text; they are bound parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::Context as _;
use sqlx::{MySqlPool, Row as _};

/// The migrations in `host/migrations`, embedded at compile time: the
/// host's bookkeeping tables only. The seven projection tables were
/// migration 0001 until the components declared them (WIT 1.1.0, see
/// `reconcile`); a database that applied 0001 keeps its record of it, which
/// the migrator ignores.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};

/// The seven projection tables, parents before children.
pub const PROJECTION_TABLES: [&str; 7] = [
    "users",
    "suppliers",
    "products",
    "product_variants",
    "orders",
    "order_items",
    "posts",
];

/// Tables the host keeps for itself; no component may write them.
pub const BOOKKEEPING_TABLES: [&str; 6] = [
    "processed_events",
    "consumer_offsets",
    "dlq_redrives",
    "tombstones",
    "projector_jobs",
    "_sqlx_migrations",
];

/// Applies every migration not applied yet. Idempotent.
/// Hosts starting together serialise on a named lock, so only one of them
/// applies a migration.
pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
    let mut conn = pool
        .acquire()
        .await
        .context("failed to connect for migrations")?;
    lock_migrations(&mut conn).await?;
    let result = async {
        accept_rewritten_migrations(&mut conn).await?;
        MIGRATOR
            .run(&mut *conn)
            .await
            .context("failed to run the schema migrations")
    }
    .await;
    unlock_migrations(&mut conn).await;
    result
}

/// Takes the named lock that serialises schema changes (migrations and
/// reconciliation) across hosts sharing the database.
pub(super) async fn lock_migrations(conn: &mut sqlx::MySqlConnection) -> anyhow::Result<()> {
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT(DATABASE(), '.projector_migrate'), 120)")
            .fetch_one(&mut *conn)
            .await
            .context("failed to take the migration lock")?;
    if locked != Some(1) {
        anyhow::bail!("another process held the migration lock for 120 s");
    }
    Ok(())
}

pub(super) async fn unlock_migrations(conn: &mut sqlx::MySqlConnection) {
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.projector_migrate'))")
        .execute(&mut *conn)
        .await;
}

/// Migrations whose text was rewritten after release, without changing what
/// they do to a database that applied them: (version, the text it had).
/// sqlx refuses to run when an applied migration's checksum differs, so a
/// database that applied the old text has its recorded checksum moved to the
/// new one (and only from exactly the old one).
const REWRITTEN: [(i64, &str); 1] = [
    // 0004 used `DROP INDEX IF EXISTS`, which MySQL 8 rejects.
    (4, include_str!("0004_mariadb_only.sql.txt")),
];

async fn accept_rewritten_migrations(conn: &mut sqlx::MySqlConnection) -> anyhow::Result<()> {
    use sha2::{Digest as _, Sha384};
    let applied: bool = sqlx::query_scalar(
        "SELECT COUNT(*) > 0 FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await
    .context("failed to look for the migrations table")?;
    if !applied {
        return Ok(());
    }
    for (version, old_text) in REWRITTEN {
        let Some(now) = MIGRATOR.iter().find(|m| m.version == version) else {
            continue;
        };
        let old = Sha384::digest(old_text.as_bytes()).to_vec();
        let moved = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = ? WHERE version = ? AND checksum = ?",
        )
        .bind(now.checksum.as_ref())
        .bind(version)
        .bind(old)
        .execute(&mut *conn)
        .await
        .context("failed to record a rewritten migration's checksum")?;
        if moved.rows_affected() > 0 {
            tracing::info!(
                version,
                "migration text rewritten for portability; its recorded checksum is updated"
            );
        }
    }
    Ok(())
}

/// A table or column name that is safe to put into SQL text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ident(String);

/// A name that is not a plain lower-case identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid identifier (lower-case letters, digits and _, at most 64, not starting with a digit)"
)]
pub struct BadIdent(pub String);

impl Ident {
    pub fn parse(name: &str) -> Result<Ident, BadIdent> {
        Ident::check(name).map(|()| Ident(name.to_owned()))
    }

    /// Whether `name` matches the pattern, without making an `Ident`.
    pub fn check(name: &str) -> Result<(), BadIdent> {
        let mut chars = name.chars();
        let ok = name.len() <= 64
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(BadIdent(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Quoted for MySQL: `` `name` ``. The pattern admits no backtick.
impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0)
    }
}

/// A child table's reference to its parent (`ON DELETE CASCADE` in our schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The child's columns, in key order.
    pub columns: Vec<String>,
    pub parent_table: String,
    /// The parent's columns they reference, in the same order.
    pub parent_columns: Vec<String>,
}

/// The SQL type family of a column, as far as checking a value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CHAR, VARCHAR, the TEXTs, ENUM, SET (MariaDB reports JSON as LONGTEXT).
    Text,
    /// TINYINT … BIGINT, with their range.
    Int { min: i128, max: i128 },
    /// DECIMAL(p, s): |value rounded to s places| < 10^(p - s).
    Decimal { integer_digits: u32, scale: u32 },
    /// FLOAT, DOUBLE.
    Float,
    /// DATETIME and DATE (years 1000 to 9999), TIMESTAMP (1970 to 2038).
    Time { timestamp: bool },
    /// JSON (MySQL 8).
    Json,
    /// Anything else: values are not checked before SQL.
    Other,
}

/// What a value written to a column must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnType {
    pub kind: Kind,
    /// The SQL type as the server shows it (`varchar(255)`), for messages.
    pub sql: String,
    /// Longest text in characters (CHAR/VARCHAR/TEXT).
    pub max_chars: Option<u64>,
    pub nullable: bool,
    /// The collation of a text column (a plain identifier, or none).
    pub collation: Option<String>,
}

impl ColumnType {
    /// From `information_schema.COLUMNS`' DATA_TYPE, COLUMN_TYPE,
    /// CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE and
    /// IS_NULLABLE.
    pub fn from_information_schema(
        data_type: &str,
        column_type: &str,
        max_chars: Option<u64>,
        precision: Option<u64>,
        scale: Option<u64>,
        nullable: bool,
    ) -> ColumnType {
        let unsigned = column_type.contains("unsigned");
        let int = |bits: u32| {
            if unsigned {
                Kind::Int {
                    min: 0,
                    max: (1i128 << bits) - 1,
                }
            } else {
                Kind::Int {
                    min: -(1i128 << (bits - 1)),
                    max: (1i128 << (bits - 1)) - 1,
                }
            }
        };
        let kind = match data_type.to_ascii_lowercase().as_str() {
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum"
            | "set" => Kind::Text,
            "tinyint" => int(8),
            "smallint" => int(16),
            "mediumint" => int(24),
            "int" | "integer" => int(32),
            "bigint" => int(64),
            "decimal" | "numeric" => Kind::Decimal {
                integer_digits: precision.unwrap_or(10).saturating_sub(scale.unwrap_or(0)) as u32,
                scale: scale.unwrap_or(0) as u32,
            },
            "float" | "double" | "real" => Kind::Float,
            "datetime" | "date" => Kind::Time { timestamp: false },
            "timestamp" => Kind::Time { timestamp: true },
            "json" => Kind::Json,
            _ => Kind::Other,
        };
        ColumnType {
            kind,
            sql: column_type.to_owned(),
            max_chars: max_chars.filter(|_| kind == Kind::Text),
            nullable,
            collation: None,
        }
    }

    /// Why `value` cannot be written to this column, if it cannot.
    pub fn check(&self, value: &flatten::Value) -> Result<(), String> {
        use flatten::Value as V;
        let sql = &self.sql;
        let refuse = |what: &str| Err(format!("{what} does not fit {sql}"));
        match (value, self.kind) {
            (V::Null, _) if !self.nullable => Err(format!("NULL in a NOT NULL {sql} column")),
            (V::Null, _) | (_, Kind::Other) => Ok(()),
            // A text no longer in bytes than the limit in characters fits
            // without counting them.
            (V::Text(s), Kind::Text) => match self.max_chars {
                Some(max) if s.len() as u64 > max && s.chars().count() as u64 > max => Err(
                    format!("{} characters, longer than {sql}", s.chars().count()),
                ),
                _ => Ok(()),
            },
            (V::Json(s), Kind::Text | Kind::Json) => match self.max_chars {
                Some(max) if s.chars().count() as u64 > max => Err(format!(
                    "{} characters of JSON, longer than {sql}",
                    s.chars().count()
                )),
                _ => Ok(()),
            },
            (V::Int(i), Kind::Int { min, max }) => {
                if (min..=max).contains(&i128::from(*i)) {
                    Ok(())
                } else {
                    Err(format!("{i} is out of the range of {sql}"))
                }
            }
            (V::Boolean(_), Kind::Int { .. }) => Ok(()),
            (V::Int(_) | V::Float(_), Kind::Float) => Ok(()),
            (
                V::Int(_) | V::Float(_),
                Kind::Decimal {
                    integer_digits,
                    scale,
                },
            ) => {
                let x = match value {
                    V::Int(i) => *i as f64,
                    V::Float(f) => *f,
                    _ => 0.0,
                };
                let places = 10f64.powi(scale as i32);
                let rounded = (x * places).round() / places;
                if rounded.abs() < 10f64.powi(integer_digits as i32) {
                    Ok(())
                } else {
                    Err(format!("{x} is out of the range of {sql}"))
                }
            }
            (V::Timestamp(t), Kind::Time { timestamp }) => {
                let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) else {
                    return Err(format!("{t:?} is not RFC 3339"));
                };
                let at = at.with_timezone(&chrono::Utc);
                let fits = if timestamp {
                    (1..=i64::from(i32::MAX)).contains(&at.timestamp())
                } else {
                    (1000..=9999).contains(&chrono::Datelike::year(&at))
                };
                if fits {
                    Ok(())
                } else {
                    Err(format!("{t} is out of the range of {sql}"))
                }
            }
            (V::Text(_), _) => refuse("a text value"),
            (V::Int(_), _) => refuse("an integer"),
            (V::Float(_), _) => refuse("a number"),
            (V::Boolean(_), _) => refuse("a boolean"),
            (V::Timestamp(_), _) => refuse("a timestamp"),
            (V::Json(_), _) => refuse("a JSON value"),
        }
    }
}

/// What the host knows of one table of the live schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: Ident,
    pub columns: BTreeSet<String>,
    /// The type of each column in `columns`.
    pub types: BTreeMap<String, ColumnType>,
    /// Primary key columns, in key order.
    pub primary_key: Vec<String>,
    /// Unique keys (besides the primary key), each in key order.
    pub unique_keys: Vec<Vec<String>>,
    /// The parent of a child table.
    pub parent: Option<ForeignKey>,
    /// Whether the table carries the host's event stamp columns.
    pub stamped: bool,
}

impl TableInfo {
    /// Whether `cols` (in any order) are exactly the primary key or a unique key.
    pub fn is_unique_key(&self, cols: &BTreeSet<&str>) -> bool {
        let same = |key: &Vec<String>| {
            key.len() == cols.len() && key.iter().all(|k| cols.contains(k.as_str()))
        };
        same(&self.primary_key) || self.unique_keys.iter().any(same)
    }
}

/// The tables of the live schema the projection may write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub tables: BTreeMap<String, TableInfo>,
}

/// The schema a running host validates and writes against. It is read at
/// start and again before every reload, so a migration applied while the
/// host runs is seen by the next reload without a restart. Readers take a
/// snapshot per batch; a newer snapshot only ever adds to what a batch
/// validated against an older one needs (columns are never dropped under a
/// running host).
#[derive(Debug)]
pub struct SchemaCell(std::sync::RwLock<std::sync::Arc<Schema>>);

impl SchemaCell {
    pub fn new(schema: Schema) -> SchemaCell {
        SchemaCell(std::sync::RwLock::new(std::sync::Arc::new(schema)))
    }

    /// The schema in force.
    pub fn get(&self) -> std::sync::Arc<Schema> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the schema in force.
    pub fn set(&self, schema: Schema) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(schema);
    }
}

impl Schema {
    /// Reads tables, columns, keys and foreign keys of the connected database.
    pub async fn load(pool: &MySqlPool) -> anyhow::Result<Schema> {
        let columns = sqlx::query(
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, \
                    CAST(CHARACTER_MAXIMUM_LENGTH AS UNSIGNED), CAST(NUMERIC_PRECISION AS UNSIGNED), \
                    CAST(NUMERIC_SCALE AS UNSIGNED), IS_NULLABLE, COLLATION_NAME \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION",
        )
        .fetch_all(pool)
        .await
        .context("failed to read the schema's columns")?;
        let keys = sqlx::query(
            "SELECT k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, k.REFERENCED_TABLE_NAME, \
                    k.REFERENCED_COLUMN_NAME, c.CONSTRAINT_TYPE \
             FROM information_schema.KEY_COLUMN_USAGE k \
             JOIN information_schema.TABLE_CONSTRAINTS c \
               ON c.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND c.TABLE_NAME = k.TABLE_NAME \
              AND c.CONSTRAINT_NAME = k.CONSTRAINT_NAME \
             WHERE k.TABLE_SCHEMA = DATABASE() \
             ORDER BY k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION",
        )
        .fetch_all(pool)
        .await
        .context("failed to read the schema's keys")?;

        let mut tables: BTreeMap<String, TableInfo> = BTreeMap::new();
        for row in columns {
            let table: String = row.try_get(0)?;
            let column: String = row.try_get(1)?;
            if BOOKKEEPING_TABLES.contains(&table.as_str()) {
                continue;
            }
            let Ok(name) = Ident::parse(&table) else {
                continue;
            };
            let info = tables.entry(table).or_insert_with(|| TableInfo {
                name,
                columns: BTreeSet::new(),
                types: BTreeMap::new(),
                primary_key: vec![],
                unique_keys: vec![],
                parent: None,
                stamped: false,
            });
            if Ident::parse(&column).is_ok() {
                let text = |i: usize| -> anyhow::Result<String> {
                    // information_schema text may come back as bytes.
                    Ok(row.try_get::<String, _>(i).or_else(|_| {
                        row.try_get::<Vec<u8>, _>(i)
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    })?)
                };
                let mut ty = ColumnType::from_information_schema(
                    &text(2)?,
                    &text(3)?,
                    row.try_get::<Option<u64>, _>(4)?,
                    row.try_get::<Option<u64>, _>(5)?,
                    row.try_get::<Option<u64>, _>(6)?,
                    text(7)? == "YES",
                );
                // Written into statements: only a plain name is kept.
                ty.collation = text(8).ok().filter(|c| {
                    !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
                info.types.insert(column.clone(), ty);
                info.columns.insert(column);
            }
        }
        // MariaDB stores JSON as LONGTEXT with CHECK (json_valid(`col`)).
        let mut conn = pool.acquire().await.context("failed to connect")?;
        for (table, column) in super::reconcile::json_columns(&mut conn).await? {
            if let Some(info) = tables.get_mut(&table)
                && let Some(ty) = info.types.get_mut(&column)
                && ty.kind == Kind::Text
            {
                ty.kind = Kind::Json;
                ty.sql = "json".into();
                ty.max_chars = None;
            }
        }
        let mut uniques: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut fks: BTreeMap<(String, String), ForeignKey> = BTreeMap::new();
        for row in keys {
            let table: String = row.try_get(0)?;
            let constraint: String = row.try_get(1)?;
            let column: String = row.try_get(2)?;
            let ref_table: Option<String> = row.try_get(3)?;
            let ref_column: Option<String> = row.try_get(4)?;
            let kind: String = row.try_get(5)?;
            let Some(info) = tables.get_mut(&table) else {
                continue;
            };
            match kind.as_str() {
                "PRIMARY KEY" => info.primary_key.push(column),
                "UNIQUE" => uniques.entry((table, constraint)).or_default().push(column),
                "FOREIGN KEY" => {
                    if let (Some(rt), Some(rc)) = (ref_table, ref_column) {
                        let fk = fks
                            .entry((table, constraint))
                            .or_insert_with(|| ForeignKey {
                                columns: vec![],
                                parent_table: rt,
                                parent_columns: vec![],
                            });
                        fk.columns.push(column);
                        fk.parent_columns.push(rc);
                    }
                }
                _ => {}
            }
        }
        for ((table, _), cols) in uniques {
            if let Some(info) = tables.get_mut(&table) {
                info.unique_keys.push(cols);
            }
        }
        for ((table, _), fk) in fks {
            if let Some(info) = tables.get_mut(&table) {
                info.parent = Some(fk);
            }
        }
        for info in tables.values_mut() {
            info.stamped = flatten::HOST_COLUMNS
                .iter()
                .all(|c| info.columns.contains(*c));
        }
        Ok(Schema { tables })
    }

    /// Checks a component's declared writes against the schema: every table
    /// exists, carries the event stamp and has a primary key, and every
    /// declared column exists.
    pub fn check_declaration(&self, info: &flatten::Info) -> Result<(), String> {
        for use_ in &info.writes {
            Ident::parse(&use_.table).map_err(|e| e.to_string())?;
            let Some(table) = self.tables.get(&use_.table) else {
                return Err(format!(
                    "declares table {:?}, which the schema does not have",
                    use_.table
                ));
            };
            if !table.stamped || table.primary_key.is_empty() {
                return Err(format!(
                    "declares table {:?}, which lacks a primary key or the event_id/event_timestamp columns",
                    use_.table
                ));
            }
            for column in &use_.columns {
                Ident::parse(column).map_err(|e| e.to_string())?;
                if !table.columns.contains(column) {
                    return Err(format!(
                        "declares column {}.{column}, which the schema does not have",
                        use_.table
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain_lower_case_names() {
        assert_eq!(
            Ident::parse("order_items").unwrap().to_string(),
            "`order_items`"
        );
        assert_eq!(Ident::parse("_x1").unwrap().as_str(), "_x1");
        for bad in [
            "",
            "1abc",
            "Users",
            "users;drop",
            "a`b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Ident::parse(bad).is_err(), "{bad:?}");
        }
    }
}
