//! Schema reconciliation: the tables a component declares (WIT `tables`,
//! 1.1.0) against the live database.
//!
//! On every load, reload and deploy, under the migration lock, the host
//! reads the live definition of the declared tables and makes the database
//! able to hold everything the declaration allows, with **additive changes
//! only**: create a missing table, add a nullable column, widen a VARCHAR,
//! relax NOT NULL, add an index or a unique key. Anything else the
//! declaration would need (a type change, a NOT NULL column added to an
//! existing table, a different primary key, a new parent reference on an
//! existing table) is **refused** with the SQL an operator would run, and
//! the component is not loaded; the one serving keeps serving.
//!
//! The host never drops or narrows: a live column the declaration no longer
//! names, or one wider than declared, stays as it is (the plan notes it,
//! with the SQL to drop it by hand), so loading an earlier component again
//! always works.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::Context as _;
use flatten::{ColumnDef, SqlType, TableDef};
use sqlx::{MySqlConnection, MySqlPool, Row as _};

use super::schema::{Ident, lock_migrations, unlock_migrations};

/// A column as the live database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveColumn {
    /// The declared type it is, if it is one of them.
    pub sql_type: Option<SqlType>,
    /// The type as the server shows it (`varchar(255)`).
    pub column_type: String,
    pub nullable: bool,
    pub has_default: bool,
}

/// An index of a live table (the primary key is kept apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveIndex {
    pub columns: Vec<String>,
    pub unique: bool,
}

/// A foreign key of a live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveForeignKey {
    pub columns: Vec<String>,
    pub table: String,
    pub references: Vec<String>,
    pub cascade: bool,
}

/// A table as the live database has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveTable {
    pub columns: BTreeMap<String, LiveColumn>,
    pub primary_key: Vec<String>,
    pub indexes: Vec<LiveIndex>,
    pub foreign_keys: Vec<LiveForeignKey>,
}

/// One statement of a plan and what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: String,
    /// What the change does, or why it is refused.
    pub what: String,
    pub sql: String,
}

/// What loading a set of declarations does to a database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Additive changes the host applies, in order.
    pub apply: Vec<Change>,
    /// Changes the declarations need that the host refuses to make; an
    /// operator may run their SQL after reading why.
    pub refuse: Vec<Change>,
    /// What stays as it is (a live column not declared, one wider than
    /// declared), with the SQL to change it by hand.
    pub keep: Vec<Change>,
}

impl Plan {
    /// Nothing to apply and nothing refused.
    pub fn is_noop(&self) -> bool {
        self.apply.is_empty() && self.refuse.is_empty()
    }
}

/// Refused: what the declarations need and the host will not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused(pub Vec<Change>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the schema change it needs is not additive, so the host will not make it:"
        )?;
        for c in &self.0 {
            write!(
                f,
                "\n  {}: {}\n    {};",
                c.table,
                c.what,
                c.sql.replace('\n', "\n    ")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.apply.is_empty() && self.refuse.is_empty() && self.keep.is_empty() {
            return writeln!(f, "schema: up to date");
        }
        for (label, changes) in [
            ("apply ", &self.apply),
            ("refuse", &self.refuse),
            ("keep  ", &self.keep),
        ] {
            for c in changes {
                writeln!(f, "{label}  {}: {}", c.table, c.what)?;
                writeln!(f, "        {};", c.sql.replace('\n', "\n        "))?;
            }
        }
        Ok(())
    }
}

const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci";

/// The columns the host adds to every table it creates.
const HOST_COLUMN_SQL: [(&str, &str); 2] = [
    ("event_id", "VARCHAR(36) NOT NULL"),
    ("event_timestamp", "DATETIME(6) NOT NULL"),
];

/// `` `name` ``; every name in a plan was checked as an [`Ident`] when the
/// component was loaded, and is checked again here.
fn q(name: &str) -> String {
    match Ident::parse(name) {
        Ok(i) => i.to_string(),
        // Never reached for a checked declaration; still never unquoted.
        Err(_) => format!("`{}`", name.replace('`', "")),
    }
}

fn q_list(names: &[String]) -> String {
    names.iter().map(|n| q(n)).collect::<Vec<_>>().join(", ")
}

/// The SQL type and nullability of a declared column.
pub fn column_sql(c: &ColumnDef) -> String {
    match c.sql_type {
        SqlType::Serial => "BIGINT NOT NULL AUTO_INCREMENT".to_owned(),
        t => format!(
            "{} {}",
            t.sql(),
            if c.nullable { "NULL" } else { "NOT NULL" }
        ),
    }
}

/// A key name from its kind, table and columns, at most 64 characters.
fn key_name(prefix: &str, table: &str, columns: &[String]) -> String {
    let name = format!("{prefix}_{table}_{}", columns.join("_"));
    if name.len() <= 64 {
        return name;
    }
    use sha2::{Digest as _, Sha256};
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{}_{}", &name[..55], &digest[..8])
}

fn parent_sql(def: &TableDef) -> Option<String> {
    def.parent.as_ref().map(|p| {
        format!(
            "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){}",
            q(&key_name("fk", &def.name, std::slice::from_ref(&p.table))),
            q_list(&p.columns),
            q(&p.table),
            q_list(&p.references),
            if p.cascade { " ON DELETE CASCADE" } else { "" }
        )
    })
}

/// `CREATE TABLE` of a declaration, with the host's stamp columns.
pub fn create_table_sql(def: &TableDef) -> String {
    let mut lines: Vec<String> = def
        .columns
        .iter()
        .map(|c| format!("{} {}", q(&c.name), column_sql(c)))
        .collect();
    lines.extend(HOST_COLUMN_SQL.iter().map(|(n, t)| format!("{} {t}", q(n))));
    lines.push(format!("PRIMARY KEY ({})", q_list(&def.primary_key)));
    for k in &def.unique_keys {
        lines.push(format!(
            "UNIQUE KEY {} ({})",
            q(&key_name("uq", &def.name, k)),
            q_list(k)
        ));
    }
    for k in &def.indexes {
        lines.push(format!(
            "KEY {} ({})",
            q(&key_name("idx", &def.name, k)),
            q_list(k)
        ));
    }
    lines.extend(parent_sql(def));
    format!(
        "CREATE TABLE {} (\n  {}\n) {TABLE_OPTIONS}",
        q(&def.name),
        lines.join(",\n  ")
    )
}

/// Whether a live column holds every value a declared type allows.
fn holds(live: SqlType, declared: SqlType) -> bool {
    match (live, declared) {
        (SqlType::Varchar(m), SqlType::Varchar(n)) => m >= n,
        // TEXT holds 65,535 bytes: any VARCHAR up to 16,383 characters.
        (SqlType::Text, SqlType::Varchar(_)) => true,
        (l, d) => l == d,
    }
}

/// Plans one declared table against its live definition (`None`: missing).
fn plan_table(def: &TableDef, live: Option<&LiveTable>, plan: &mut Plan) {
    let t = q(&def.name);
    let change = |what: String, sql: String| Change {
        table: def.name.clone(),
        what,
        sql,
    };
    let Some(live) = live else {
        plan.apply
            .push(change("create the table".into(), create_table_sql(def)));
        return;
    };
    for (name, sql) in HOST_COLUMN_SQL {
        if !live.columns.contains_key(name) {
            plan.refuse.push(change(
                format!(
                    "the host's stamp column {name} is missing (a table the host did not create)"
                ),
                format!("ALTER TABLE {t} ADD COLUMN {} {sql}", q(name)),
            ));
        }
    }
    for c in &def.columns {
        let col = q(&c.name);
        let declared = column_sql(c);
        let Some(l) = live.columns.get(&c.name) else {
            let sql = format!("ALTER TABLE {t} ADD COLUMN {col} {declared}");
            if c.nullable {
                plan.apply
                    .push(change(format!("add column {}", c.name), sql));
            } else {
                plan.refuse.push(change(
                    format!(
                        "add column {} NOT NULL without a default: its existing rows have no value (declare it nullable, or add it nullable, fill it, then make it NOT NULL)",
                        c.name
                    ),
                    sql,
                ));
            }
            continue;
        };
        let modify = format!("ALTER TABLE {t} MODIFY COLUMN {col} {declared}");
        match l.sql_type {
            Some(lt) if lt == c.sql_type || holds(lt, c.sql_type) => {
                if lt != c.sql_type {
                    plan.keep.push(change(
                        format!(
                            "column {} is {} in the database, wider than the declared {}; kept",
                            c.name,
                            l.column_type,
                            c.sql_type.sql()
                        ),
                        modify.clone(),
                    ));
                }
                if c.nullable && !l.nullable {
                    plan.apply.push(change(
                        format!("allow NULL in column {}", c.name),
                        format!(
                            "ALTER TABLE {t} MODIFY COLUMN {col} {} NULL",
                            lt_sql(lt, &l.column_type)
                        ),
                    ));
                } else if !c.nullable && l.nullable {
                    plan.keep.push(change(
                        format!(
                            "column {} admits NULL in the database, the declaration says NOT NULL; kept",
                            c.name
                        ),
                        modify,
                    ));
                }
            }
            Some(SqlType::Varchar(m)) if matches!(c.sql_type, SqlType::Varchar(n) if n > m) => {
                // Widening keeps the live nullability unless the
                // declaration relaxes it.
                let null = if c.nullable || l.nullable {
                    "NULL"
                } else {
                    "NOT NULL"
                };
                plan.apply.push(change(
                    format!(
                        "widen column {} from {} to {}",
                        c.name,
                        l.column_type,
                        c.sql_type.sql()
                    ),
                    format!(
                        "ALTER TABLE {t} MODIFY COLUMN {col} {} {null}",
                        c.sql_type.sql()
                    ),
                ));
            }
            _ => plan.refuse.push(change(
                format!(
                    "change the type of column {} from {} to {}",
                    c.name,
                    l.column_type,
                    c.sql_type.sql()
                ),
                modify,
            )),
        }
    }
    let declared: BTreeSet<&str> = def.columns.iter().map(|c| c.name.as_str()).collect();
    for (name, l) in &live.columns {
        if declared.contains(name.as_str()) || flatten::HOST_COLUMNS.contains(&name.as_str()) {
            continue;
        }
        let serial = l.sql_type == Some(SqlType::Serial);
        // Kept either way: the host never drops. One that takes no NULL and
        // has no default makes every insert fail; those events are
        // dead-lettered (a database refusal, redrivable once an operator
        // runs the SQL below), the component's other writes go on.
        let (what, sql) = if !l.nullable && !l.has_default && !serial {
            (
                format!(
                    "column {name} is NOT NULL without a default and not declared: inserts will be refused until it admits NULL"
                ),
                format!(
                    "ALTER TABLE {t} MODIFY COLUMN {} {} NULL",
                    q(name),
                    l.column_type
                ),
            )
        } else {
            (
                format!("column {name} is in the database but not declared; kept"),
                format!("ALTER TABLE {t} DROP COLUMN {}", q(name)),
            )
        };
        plan.keep.push(change(what, sql));
    }
    if live.primary_key != def.primary_key {
        plan.refuse.push(change(
            format!(
                "change the primary key from ({}) to ({})",
                live.primary_key.join(", "),
                def.primary_key.join(", ")
            ),
            format!(
                "ALTER TABLE {t} DROP PRIMARY KEY, ADD PRIMARY KEY ({})",
                q_list(&def.primary_key)
            ),
        ));
    }
    for k in &def.unique_keys {
        if !live.indexes.iter().any(|i| i.unique && i.columns == *k) {
            plan.apply.push(change(
                format!("add unique key ({})", k.join(", ")),
                format!(
                    "CREATE UNIQUE INDEX {} ON {t} ({})",
                    q(&key_name("uq", &def.name, k)),
                    q_list(k)
                ),
            ));
        }
    }
    for k in &def.indexes {
        let covered = live.primary_key == *k || live.indexes.iter().any(|i| i.columns == *k);
        if !covered {
            plan.apply.push(change(
                format!("add index ({})", k.join(", ")),
                format!(
                    "CREATE INDEX {} ON {t} ({})",
                    q(&key_name("idx", &def.name, k)),
                    q_list(k)
                ),
            ));
        }
    }
    for i in live.indexes.iter().filter(|i| i.unique) {
        if !def.unique_keys.contains(&i.columns) && def.primary_key != i.columns {
            plan.keep.push(change(
                format!(
                    "unique key ({}) is in the database but not declared; kept",
                    i.columns.join(", ")
                ),
                format!("SHOW INDEX FROM {t}"),
            ));
        }
    }
    if let Some(p) = &def.parent {
        let same = |fk: &LiveForeignKey| {
            fk.columns == p.columns
                && fk.table == p.table
                && fk.references == p.references
                && fk.cascade == p.cascade
        };
        if !live.foreign_keys.iter().any(same) {
            plan.refuse.push(change(
                format!(
                    "add the parent reference to {} on an existing table (existing rows may not satisfy it)",
                    p.table
                ),
                format!(
                    "ALTER TABLE {t} ADD {}",
                    parent_sql(def).unwrap_or_default()
                ),
            ));
        }
    }
}

/// The live type's SQL for a MODIFY that keeps it.
fn lt_sql(t: SqlType, column_type: &str) -> String {
    match t {
        SqlType::Serial => column_type.to_owned(),
        t => t.sql(),
    }
}

/// Orders declarations parents first.
fn parents_first(defs: &[TableDef]) -> Vec<&TableDef> {
    let mut out: Vec<&TableDef> = Vec::with_capacity(defs.len());
    let mut left: Vec<&TableDef> = defs.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|d| {
            let ready = d.parent.as_ref().is_none_or(|p| {
                out.iter().any(|o| o.name == p.table) || !defs.iter().any(|o| o.name == p.table)
            });
            if ready {
                out.push(d);
            }
            !ready
        });
        if left.len() == before {
            // A cycle (refused when the component was loaded): keep order.
            out.append(&mut left);
        }
    }
    out
}

/// Plans `defs` against the live tables.
pub fn plan(defs: &[TableDef], live: &BTreeMap<String, LiveTable>) -> Plan {
    let mut plan = Plan::default();
    for def in parents_first(defs) {
        plan_table(def, live.get(&def.name), &mut plan);
    }
    plan
}

/// The live type of a column, from `information_schema.COLUMNS`.
fn live_type(
    data_type: &str,
    column_type: &str,
    max_chars: Option<u64>,
    auto_increment: bool,
    json: bool,
) -> Option<SqlType> {
    let column_type = column_type.to_ascii_lowercase();
    let unsigned = column_type.contains("unsigned");
    Some(match data_type.to_ascii_lowercase().as_str() {
        "varchar" => SqlType::Varchar(u32::try_from(max_chars?).ok()?),
        "text" => SqlType::Text,
        "longtext" if json => SqlType::Json,
        "json" => SqlType::Json,
        "bigint" if !unsigned && auto_increment => SqlType::Serial,
        "bigint" if !unsigned => SqlType::Bigint,
        "double" => SqlType::Double,
        "tinyint" if column_type.starts_with("tinyint(1)") => SqlType::Boolean,
        "datetime" if column_type == "datetime(6)" => SqlType::Datetime,
        _ => return None,
    })
}

fn text(row: &sqlx::mysql::MySqlRow, i: usize) -> anyhow::Result<String> {
    // information_schema text may come back as bytes.
    Ok(row.try_get::<String, _>(i).or_else(|_| {
        row.try_get::<Vec<u8>, _>(i)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    })?)
}

fn opt_text(row: &sqlx::mysql::MySqlRow, i: usize) -> anyhow::Result<Option<String>> {
    Ok(match row.try_get::<Option<String>, _>(i) {
        Ok(v) => v,
        Err(_) => row
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
    })
}

/// `(table, column)` of every column MariaDB stores as JSON (LONGTEXT with
/// `CHECK (json_valid(col))`).
pub(super) async fn json_columns(
    conn: &mut MySqlConnection,
) -> anyhow::Result<BTreeSet<(String, String)>> {
    let checks = sqlx::query(
        "SELECT tc.TABLE_NAME, cc.CHECK_CLAUSE \
         FROM information_schema.TABLE_CONSTRAINTS tc \
         JOIN information_schema.CHECK_CONSTRAINTS cc \
           ON cc.CONSTRAINT_SCHEMA = tc.CONSTRAINT_SCHEMA \
          AND cc.CONSTRAINT_NAME = tc.CONSTRAINT_NAME \
         WHERE tc.TABLE_SCHEMA = DATABASE() AND tc.CONSTRAINT_TYPE = 'CHECK'",
    )
    .fetch_all(&mut *conn)
    .await
    .context("failed to read the schema's check constraints")?;
    let mut out = BTreeSet::new();
    for row in checks {
        let table = text(&row, 0)?;
        let clause = text(&row, 1)?;
        if let Some(column) = clause
            .trim()
            .strip_prefix("json_valid(`")
            .and_then(|c| c.strip_suffix("`)"))
        {
            out.insert((table, column.to_owned()));
        }
    }
    Ok(out)
}

/// Reads the live definition of every table of the connected database.
pub async fn read_live(conn: &mut MySqlConnection) -> anyhow::Result<BTreeMap<String, LiveTable>> {
    let json = json_columns(conn).await?;
    let columns = sqlx::query(
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, \
                CAST(CHARACTER_MAXIMUM_LENGTH AS UNSIGNED), IS_NULLABLE, EXTRA, \
                COLUMN_DEFAULT IS NOT NULL \
         FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION",
    )
    .fetch_all(&mut *conn)
    .await
    .context("failed to read the schema's columns")?;
    let mut tables: BTreeMap<String, LiveTable> = BTreeMap::new();
    for row in columns {
        let (table, column) = (text(&row, 0)?, text(&row, 1)?);
        let column_type = text(&row, 3)?;
        let extra = text(&row, 6)?.to_ascii_lowercase();
        let is_json = json.contains(&(table.clone(), column.clone()));
        let live = LiveColumn {
            sql_type: live_type(
                &text(&row, 2)?,
                &column_type,
                row.try_get::<Option<u64>, _>(4)?,
                extra.contains("auto_increment"),
                is_json,
            ),
            column_type: if is_json { "json".into() } else { column_type },
            nullable: text(&row, 5)? == "YES",
            // MariaDB reports the text "NULL" as the default of a nullable
            // column; nullable columns need no default anyway.
            has_default: row.try_get::<i64, _>(7)? != 0,
        };
        tables
            .entry(table)
            .or_default()
            .columns
            .insert(column, live);
    }
    let stats = sqlx::query(
        "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME, NON_UNIQUE \
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
    )
    .fetch_all(&mut *conn)
    .await
    .context("failed to read the schema's indexes")?;
    let mut indexes: BTreeMap<(String, String), LiveIndex> = BTreeMap::new();
    let mut functional = BTreeSet::new();
    for row in stats {
        let (table, index) = (text(&row, 0)?, text(&row, 1)?);
        // A functional key part (MySQL 8) has no column: the index is not
        // one a declaration can name.
        let Some(column) = opt_text(&row, 2)? else {
            functional.insert((table, index));
            continue;
        };
        let non_unique: i64 = row.try_get(3)?;
        indexes
            .entry((table, index))
            .or_insert_with(|| LiveIndex {
                columns: vec![],
                unique: non_unique == 0,
            })
            .columns
            .push(column);
    }
    for ((table, name), index) in indexes {
        if functional.contains(&(table.clone(), name.clone())) {
            continue;
        }
        if let Some(t) = tables.get_mut(&table) {
            if name == "PRIMARY" {
                t.primary_key = index.columns;
            } else {
                t.indexes.push(index);
            }
        }
    }
    let fks = sqlx::query(
        "SELECT k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, k.REFERENCED_TABLE_NAME, \
                k.REFERENCED_COLUMN_NAME, r.DELETE_RULE \
         FROM information_schema.KEY_COLUMN_USAGE k \
         JOIN information_schema.REFERENTIAL_CONSTRAINTS r \
           ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME \
          AND r.TABLE_NAME = k.TABLE_NAME \
         WHERE k.TABLE_SCHEMA = DATABASE() AND k.REFERENCED_TABLE_NAME IS NOT NULL \
         ORDER BY k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION",
    )
    .fetch_all(&mut *conn)
    .await
    .context("failed to read the schema's foreign keys")?;
    let mut foreign: BTreeMap<(String, String), LiveForeignKey> = BTreeMap::new();
    for row in fks {
        let (table, name) = (text(&row, 0)?, text(&row, 1)?);
        let fk = foreign
            .entry((table, name))
            .or_insert_with(|| LiveForeignKey {
                columns: vec![],
                table: String::new(),
                references: vec![],
                cascade: false,
            });
        fk.columns.push(text(&row, 2)?);
        fk.table = opt_text(&row, 3)?.unwrap_or_default();
        fk.references.push(opt_text(&row, 4)?.unwrap_or_default());
        fk.cascade = text(&row, 5)? == "CASCADE";
    }
    for ((table, _), fk) in foreign {
        if let Some(t) = tables.get_mut(&table) {
            t.foreign_keys.push(fk);
        }
    }
    Ok(tables)
}

/// The plan `defs` would have against the database, without changing it.
pub async fn plan_against(pool: &MySqlPool, defs: &[TableDef]) -> anyhow::Result<Plan> {
    let mut conn = pool.acquire().await.context("failed to connect")?;
    Ok(plan(defs, &read_live(&mut conn).await?))
}

/// The migrations and the tables of the five built-in projections, as a
/// host serving the shipped components has them after it starts: for tools
/// and tests that write before (or without) a host.
pub async fn migrate_with_builtin_tables(pool: &MySqlPool) -> anyhow::Result<()> {
    super::migrate(pool).await?;
    for domain in flatten::DOMAINS {
        reconcile(pool, &(domain.info)().tables)
            .await
            .map_err(|e| anyhow::anyhow!("the {} tables: {e}", domain.name))?;
    }
    Ok(())
}

/// Why reconciliation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Refused(Refused),
    /// The database refused an additive change (a unique key over
    /// duplicate values, a lock wait past its limit); the changes before it
    /// stay applied (each one is additive).
    #[error("failed to apply `{sql}`: {error}")]
    Apply { sql: String, error: String },
    #[error("{0:#}")]
    Database(anyhow::Error),
}

async fn plan_and_apply(
    conn: &mut MySqlConnection,
    defs: &[TableDef],
) -> Result<Vec<Change>, ReconcileError> {
    let live = read_live(conn).await.map_err(ReconcileError::Database)?;
    let plan = plan(defs, &live);
    if !plan.refuse.is_empty() {
        return Err(ReconcileError::Refused(Refused(plan.refuse)));
    }
    for keep in &plan.keep {
        tracing::warn!(table = %keep.table, note = %keep.what, sql = %keep.sql, "schema left as it is");
    }
    let timeout = format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECS}");
    sqlx::query(&timeout)
        .execute(&mut *conn)
        .await
        .map_err(|e| ReconcileError::Database(e.into()))?;
    for change in &plan.apply {
        let applied = sqlx::query(&change.sql).execute(&mut *conn).await;
        if let Err(e) = applied {
            return Err(ReconcileError::Apply {
                sql: change.sql.clone(),
                error: e.to_string(),
            });
        }
        tracing::info!(table = %change.table, change = %change.what, "schema change applied");
    }
    Ok(plan.apply)
}

/// How long a schema change waits for the tables' metadata locks (the
/// batches writing them hold them for one transaction).
const LOCK_WAIT_SECS: u32 = 30;

/// Reconciles the database with `defs` under the migration lock: reads the
/// live tables, refuses if any needed change is not additive (changing
/// nothing), else applies the additive ones. Returns what it applied.
pub async fn reconcile(pool: &MySqlPool, defs: &[TableDef]) -> Result<Vec<Change>, ReconcileError> {
    if defs.is_empty() {
        return Ok(vec![]);
    }
    let mut conn = pool
        .acquire()
        .await
        .context("failed to connect to reconcile the schema")
        .map_err(ReconcileError::Database)?;
    lock_migrations(&mut conn)
        .await
        .map_err(ReconcileError::Database)?;
    let result = plan_and_apply(&mut conn, defs).await;
    unlock_migrations(&mut conn).await;
    // The session's lock_wait_timeout goes with the connection.
    if let Ok(applied) = &result
        && !applied.is_empty()
    {
        conn.close_on_drop();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatten::ParentKey;

    fn col(name: &str, sql_type: SqlType, nullable: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            sql_type,
            nullable,
            doc: String::new(),
        }
    }

    fn users() -> TableDef {
        TableDef {
            name: "users".into(),
            doc: String::new(),
            columns: vec![
                col("user_id", SqlType::Varchar(24), false),
                col("email", SqlType::Varchar(255), true),
            ],
            primary_key: vec!["user_id".into()],
            unique_keys: vec![],
            indexes: vec![vec!["email".into()]],
            parent: None,
        }
    }

    fn live_of(def: &TableDef) -> LiveTable {
        let mut columns: BTreeMap<String, LiveColumn> = def
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    LiveColumn {
                        sql_type: Some(c.sql_type),
                        column_type: c.sql_type.sql().to_lowercase(),
                        nullable: c.nullable,
                        has_default: false,
                    },
                )
            })
            .collect();
        for (n, t) in [
            ("event_id", SqlType::Varchar(36)),
            ("event_timestamp", SqlType::Datetime),
        ] {
            columns.insert(
                n.into(),
                LiveColumn {
                    sql_type: Some(t),
                    column_type: t.sql(),
                    nullable: false,
                    has_default: false,
                },
            );
        }
        LiveTable {
            columns,
            primary_key: def.primary_key.clone(),
            indexes: def
                .indexes
                .iter()
                .map(|k| LiveIndex {
                    columns: k.clone(),
                    unique: false,
                })
                .collect(),
            foreign_keys: vec![],
        }
    }

    #[test]
    fn a_declaration_equal_to_the_live_table_plans_nothing() {
        let live = BTreeMap::from([("users".to_owned(), live_of(&users()))]);
        assert_eq!(plan(&[users()], &live), Plan::default());
    }

    #[test]
    fn additive_changes_are_applied_and_the_rest_refused_with_sql() {
        let live = BTreeMap::from([("users".to_owned(), live_of(&users()))]);
        let mut next = users();
        next.columns
            .push(col("verified_at", SqlType::Datetime, true));
        next.columns[1].sql_type = SqlType::Varchar(512);
        next.indexes.push(vec!["verified_at".into()]);
        let p = plan(&[next.clone()], &live);
        assert!(p.refuse.is_empty(), "{p}");
        let sql: Vec<&str> = p.apply.iter().map(|c| c.sql.as_str()).collect();
        assert_eq!(
            sql,
            [
                "ALTER TABLE `users` MODIFY COLUMN `email` VARCHAR(512) NULL",
                "ALTER TABLE `users` ADD COLUMN `verified_at` DATETIME(6) NULL",
                "CREATE INDEX `idx_users_verified_at` ON `users` (`verified_at`)",
            ]
        );

        let mut bad = users();
        bad.columns[1].sql_type = SqlType::Bigint;
        bad.columns.push(col("score", SqlType::Bigint, false));
        let p = plan(&[bad], &live);
        let sql: Vec<&str> = p.refuse.iter().map(|c| c.sql.as_str()).collect();
        assert_eq!(
            sql,
            [
                "ALTER TABLE `users` MODIFY COLUMN `email` BIGINT NULL",
                "ALTER TABLE `users` ADD COLUMN `score` BIGINT NOT NULL",
            ]
        );
    }

    #[test]
    fn a_narrower_declaration_keeps_the_live_column() {
        let mut wide = users();
        wide.columns[1].sql_type = SqlType::Varchar(1024);
        let live = BTreeMap::from([("users".to_owned(), live_of(&wide))]);
        let p = plan(&[users()], &live);
        assert!(p.is_noop(), "{p}");
        assert_eq!(p.keep.len(), 1, "{p}");
        let mut fewer = users();
        fewer.columns.pop();
        fewer.indexes.clear();
        let p = plan(&[fewer], &live);
        assert!(p.is_noop(), "{p}");
        assert!(p.keep[0].sql.contains("DROP COLUMN `email`"), "{p}");
    }

    #[test]
    fn missing_tables_are_created_parents_first() {
        let child = TableDef {
            name: "user_tags".into(),
            doc: String::new(),
            columns: vec![
                col("id", SqlType::Serial, false),
                col("user_id", SqlType::Varchar(24), false),
                col("tag", SqlType::Varchar(64), false),
            ],
            primary_key: vec!["id".into()],
            unique_keys: vec![vec!["user_id".into(), "tag".into()]],
            indexes: vec![],
            parent: Some(ParentKey {
                columns: vec!["user_id".into()],
                table: "users".into(),
                references: vec!["user_id".into()],
                cascade: true,
            }),
        };
        let p = plan(&[child, users()], &BTreeMap::new());
        assert_eq!(p.apply.len(), 2);
        assert_eq!(p.apply[0].table, "users");
        assert!(
            p.apply[1].sql.contains(
                "CONSTRAINT `fk_user_tags_users` FOREIGN KEY (`user_id`) REFERENCES `users` (`user_id`) ON DELETE CASCADE"
            ),
            "{}",
            p.apply[1].sql
        );
        assert!(
            p.apply[1]
                .sql
                .contains("`id` BIGINT NOT NULL AUTO_INCREMENT")
        );
    }

    #[test]
    fn long_key_names_stay_within_64_characters() {
        let cols: Vec<String> = (0..8)
            .map(|i| format!("a_rather_long_column_{i}"))
            .collect();
        let name = key_name("idx", "a_table", &cols);
        assert_eq!(name.len(), 64);
        assert_ne!(name, key_name("idx", "a_table", &cols[..7]));
    }
}
