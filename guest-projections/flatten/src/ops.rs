//! Plain-Rust mirror of the WIT types (`wit/projection.wit`), so the flattening
//! compiles and tests natively and the host can run it without WASM.

use crate::prelude::*;
use serde::{Deserialize, Serialize};

/// A column value; mirrors WIT `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "v")]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Boolean(bool),
    /// RFC 3339 in UTC with six fractional digits.
    Timestamp(String),
    /// JSON text.
    Json(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub value: Value,
}

/// Builds a column.
pub fn col(name: &str, value: Value) -> Column {
    Column {
        name: name.to_owned(),
        value,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upsert {
    pub table: String,
    pub key: Vec<Column>,
    pub values: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replace {
    pub table: String,
    pub parent: Vec<Column>,
    pub rows: Vec<Vec<Column>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keyed {
    pub table: String,
    pub key: Vec<Column>,
}

/// One row operation; mirrors WIT `row-op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowOp {
    Upsert(Upsert),
    Update(Upsert),
    Replace(Replace),
    SoftDelete(Keyed),
    Delete(Keyed),
}

impl RowOp {
    /// The table the operation writes.
    pub fn table(&self) -> &str {
        match self {
            RowOp::Upsert(u) | RowOp::Update(u) => &u.table,
            RowOp::Replace(r) => &r.table,
            RowOp::SoftDelete(k) | RowOp::Delete(k) => &k.table,
        }
    }

    /// Every column name the operation writes or matches on.
    pub fn column_names(&self) -> Vec<&str> {
        fn names(cols: &[Column]) -> Vec<&str> {
            cols.iter().map(|c| c.name.as_str()).collect()
        }
        match self {
            RowOp::Upsert(u) | RowOp::Update(u) => [names(&u.key), names(&u.values)].concat(),
            RowOp::Replace(r) => {
                let mut all = names(&r.parent);
                for row in &r.rows {
                    all.extend(names(row));
                }
                all
            }
            RowOp::SoftDelete(k) | RowOp::Delete(k) => names(&k.key),
        }
    }
}

/// A table and the columns a projection may write in it; mirrors WIT `table-use`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableUse {
    pub table: String,
    pub columns: Vec<String>,
}

/// What a projection is and may write; mirrors WIT `info`, plus the typed
/// tables of WIT `tables` (1.1.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub domain: String,
    pub version: String,
    pub handles: Vec<String>,
    pub writes: Vec<TableUse>,
    /// The typed definition of every table in `writes`; empty for a 1.0
    /// component, whose tables must already exist.
    #[serde(default)]
    pub tables: Vec<TableDef>,
}

/// The SQL type of a declared column; mirrors WIT `column-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlType {
    /// VARCHAR(n): at most n characters.
    Varchar(u32),
    Text,
    Bigint,
    Double,
    Boolean,
    /// DATETIME(6), UTC.
    Datetime,
    Json,
    /// BIGINT AUTO_INCREMENT, assigned by the database.
    Serial,
}

impl SqlType {
    /// The SQL text of the type (portable to MySQL 8 and MariaDB).
    pub fn sql(&self) -> String {
        match self {
            SqlType::Varchar(n) => format!("VARCHAR({n})"),
            SqlType::Text => "TEXT".into(),
            SqlType::Bigint => "BIGINT".into(),
            SqlType::Double => "DOUBLE".into(),
            SqlType::Boolean => "BOOLEAN".into(),
            SqlType::Datetime => "DATETIME(6)".into(),
            SqlType::Json => "JSON".into(),
            SqlType::Serial => "BIGINT AUTO_INCREMENT".into(),
        }
    }
}

/// One declared column; mirrors WIT `column-def`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: SqlType,
    pub nullable: bool,
    /// Where the value comes from.
    pub doc: String,
}

/// A child table's reference to its parent; mirrors WIT `parent-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentKey {
    pub columns: Vec<String>,
    pub table: String,
    pub references: Vec<String>,
    pub cascade: bool,
}

/// A typed table definition; mirrors WIT `table-def`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    pub doc: String,
    pub columns: Vec<ColumnDef>,
    pub primary_key: Vec<String>,
    pub unique_keys: Vec<Vec<String>>,
    pub indexes: Vec<Vec<String>>,
    pub parent: Option<ParentKey>,
}

impl TableDef {
    /// The declared column called `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }
}

impl Info {
    /// Whether `op` stays within the declared tables and columns.
    pub fn allows(&self, op: &RowOp) -> bool {
        let Some(table) = self.writes.iter().find(|t| t.table == op.table()) else {
            return false;
        };
        op.column_names()
            .iter()
            .all(|c| table.columns.iter().any(|d| d == c))
    }
}

/// Why an event could not be projected; mirrors WIT `projection-error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionError {
    InvalidEvent(String),
    Unsupported(String),
    Internal(String),
}

impl core::fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProjectionError::InvalidEvent(m) => write!(f, "invalid event: {m}"),
            ProjectionError::Unsupported(m) => write!(f, "unsupported: {m}"),
            ProjectionError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl core::error::Error for ProjectionError {}

/// The envelope as the host hands it over; mirrors WIT `envelope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub event_type: &'a str,
    pub event_id: &'a str,
    pub timestamp: &'a str,
    pub entity_id: &'a str,
    pub data: &'a str,
}
