//! Plain-Rust mirror of the WIT types (`wit/projection.wit`), so the flattening
//! compiles and tests natively and the host can run it without WASM.

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

/// What a projection is and may write; mirrors WIT `info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub domain: String,
    pub version: String,
    pub handles: Vec<String>,
    pub writes: Vec<TableUse>,
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

impl std::fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectionError::InvalidEvent(m) => write!(f, "invalid event: {m}"),
            ProjectionError::Unsupported(m) => write!(f, "unsupported: {m}"),
            ProjectionError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for ProjectionError {}

/// The envelope as the host hands it over; mirrors WIT `envelope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub event_type: &'a str,
    pub event_id: &'a str,
    pub timestamp: &'a str,
    pub entity_id: &'a str,
    pub data: &'a str,
}
