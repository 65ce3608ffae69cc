//! What a component's row operations become before any SQL: every
//! identifier checked against the declaration and the live schema, every
//! value converted to a bound parameter.
//!
//! **Allowlist**: an operation may touch only a table and columns its
//! component declared and the schema has ([`validate`]); the event stamp
//! columns are written by the host alone. SQL text holds only quoted
//! [`Ident`]s; every value is a bound parameter.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use flatten::{Column, Info, RowOp, Value};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::mysql::MySqlTypeInfo;
use sqlx::{Encode, MySql, Type};

use super::schema::{ForeignKey, Ident, Schema, TableInfo};

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Timestamp(NaiveDateTime),
    Json(String),
}

/// A `Bind` is bound as the MySQL type of its variant (NULL as a NULL
/// string), so statements bind whole rows of mixed values.
impl Type<MySql> for Bind {
    fn type_info() -> MySqlTypeInfo {
        <str as Type<MySql>>::type_info()
    }

    fn compatible(_: &MySqlTypeInfo) -> bool {
        true
    }
}

impl<'q> Encode<'q, MySql> for Bind {
    fn encode_by_ref(&self, buf: &mut Vec<u8>) -> Result<IsNull, BoxDynError> {
        match self {
            Bind::Null => Ok(IsNull::Yes),
            Bind::Text(s) | Bind::Json(s) => <&str as Encode<MySql>>::encode(s.as_str(), buf),
            Bind::Int(i) => <i64 as Encode<MySql>>::encode_by_ref(i, buf),
            Bind::Float(f) => <f64 as Encode<MySql>>::encode_by_ref(f, buf),
            Bind::Bool(b) => <bool as Encode<MySql>>::encode_by_ref(b, buf),
            Bind::Timestamp(t) => <NaiveDateTime as Encode<MySql>>::encode_by_ref(t, buf),
        }
    }

    fn produces(&self) -> Option<MySqlTypeInfo> {
        Some(match self {
            Bind::Null | Bind::Text(_) | Bind::Json(_) => <str as Type<MySql>>::type_info(),
            Bind::Int(_) => <i64 as Type<MySql>>::type_info(),
            Bind::Float(_) => <f64 as Type<MySql>>::type_info(),
            Bind::Bool(_) => <bool as Type<MySql>>::type_info(),
            Bind::Timestamp(_) => <NaiveDateTime as Type<MySql>>::type_info(),
        })
    }
}

/// Parses an RFC 3339 timestamp into the UTC wall time stored in DATETIME(6).
pub fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).naive_utc())
}

/// Why an operation cannot be executed: it reaches outside what its
/// component declared or the schema allows (`disallowed_op`), or a value does
/// not fit its column (`invalid_op`). Both are decided before any SQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Disallowed(String),
    #[error("{0}")]
    Invalid(String),
}

impl OpError {
    /// The dead-letter class.
    pub fn class(&self) -> &'static str {
        match self {
            OpError::Disallowed(_) => "disallowed_op",
            OpError::Invalid(_) => "invalid_op",
        }
    }
}

impl From<String> for OpError {
    fn from(reason: String) -> OpError {
        OpError::Disallowed(reason)
    }
}

/// The bound form of a value, or why it has none (the caller names the
/// column).
fn to_bind(v: &Value) -> Result<Bind, String> {
    Ok(match v {
        Value::Null => Bind::Null,
        Value::Text(s) => Bind::Text(s.clone()),
        Value::Int(i) => Bind::Int(*i),
        Value::Float(f) if f.is_finite() => Bind::Float(*f),
        Value::Float(f) => return Err(format!("{f} is not a finite number")),
        Value::Boolean(b) => Bind::Bool(*b),
        Value::Timestamp(s) => {
            Bind::Timestamp(parse_timestamp(s).ok_or_else(|| format!("{s:?} is not RFC 3339"))?)
        }
        Value::Json(s) => {
            serde_json::from_str::<serde::de::IgnoredAny>(s)
                .map_err(|e| format!("not valid JSON: {e}"))?;
            Bind::Json(s.clone())
        }
    })
}

/// A validated operation: identifiers checked, values converted.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidOp {
    Upsert {
        table: String,
        key: Vec<(String, Bind)>,
        values: Vec<(String, Bind)>,
    },
    Update {
        table: String,
        key: Vec<(String, Bind)>,
        values: Vec<(String, Bind)>,
    },
    Replace {
        table: String,
        parent: Vec<(String, Bind)>,
        rows: Vec<Vec<(String, Bind)>>,
    },
    SoftDelete {
        table: String,
        key: Vec<(String, Bind)>,
    },
    Delete {
        table: String,
        key: Vec<(String, Bind)>,
    },
}

fn columns(
    cols: &[Column],
    table: &TableInfo,
    seen: &mut HashSet<String>,
) -> Result<Vec<(String, Bind)>, OpError> {
    cols.iter()
        .map(|c| {
            Ident::parse(&c.name).map_err(|e| OpError::Disallowed(e.to_string()))?;
            if flatten::HOST_COLUMNS.contains(&c.name.as_str()) {
                return Err(OpError::Disallowed(format!(
                    "{}.{} is written by the host only",
                    table.name.as_str(),
                    c.name
                )));
            }
            if !table.columns.contains(&c.name) {
                return Err(OpError::Disallowed(format!(
                    "{}.{} does not exist in the schema",
                    table.name.as_str(),
                    c.name
                )));
            }
            if !seen.insert(c.name.clone()) {
                return Err(format!("{}.{} appears twice", table.name.as_str(), c.name).into());
            }
            // Named only when refused: nothing is formatted on the way through.
            let invalid = |e: String| {
                OpError::Invalid(format!("column {}.{}: {e}", table.name.as_str(), c.name))
            };
            if let Some(ty) = table.types.get(&c.name) {
                ty.check(&c.value).map_err(invalid)?;
            }
            Ok((c.name.clone(), to_bind(&c.value).map_err(invalid)?))
        })
        .collect()
}

fn key_names(key: &[(String, Bind)]) -> BTreeSet<&str> {
    key.iter().map(|(n, _)| n.as_str()).collect()
}

/// Checks one operation against what the component declared and what the
/// schema has. The error says why the operation is not allowed.
pub fn validate(op: &RowOp, declared: &Info, schema: &Schema) -> Result<ValidOp, OpError> {
    if !declared.allows(op) {
        return Err(OpError::Disallowed(format!(
            "writes {} columns {:?}, which {} did not declare",
            op.table(),
            op.column_names(),
            declared.domain
        )));
    }
    let table = schema
        .tables
        .get(op.table())
        .filter(|t| t.stamped)
        .ok_or_else(|| {
            format!(
                "table {:?} is not a projection table of the schema",
                op.table()
            )
        })?;
    let name = table.name.as_str().to_owned();
    let nonempty_key = |key: &[(String, Bind)]| {
        if key.iter().any(|(_, v)| *v == Bind::Null) {
            Err(OpError::Invalid(format!("{name}: a key column is NULL")))
        } else {
            Ok(())
        }
    };
    match op {
        RowOp::Upsert(u) | RowOp::Update(u) => {
            let mut seen = HashSet::new();
            let key = columns(&u.key, table, &mut seen)?;
            let values = columns(&u.values, table, &mut seen)?;
            nonempty_key(&key)?;
            if matches!(op, RowOp::Upsert(_)) {
                let pk: BTreeSet<&str> = table.primary_key.iter().map(String::as_str).collect();
                if key_names(&key) != pk {
                    return Err(format!(
                        "upsert on {name} must be keyed by its primary key {pk:?}"
                    )
                    .into());
                }
                Ok(ValidOp::Upsert {
                    table: name,
                    key,
                    values,
                })
            } else {
                if !table.is_unique_key(&key_names(&key)) {
                    return Err(format!("update on {name} must be keyed by a unique key").into());
                }
                if values.is_empty() {
                    return Err(format!("update on {name} sets nothing").into());
                }
                Ok(ValidOp::Update {
                    table: name,
                    key,
                    values,
                })
            }
        }
        RowOp::Replace(r) => {
            let Some(ForeignKey {
                columns: fk_cols, ..
            }) = &table.parent
            else {
                return Err(format!("replace on {name}, which has no parent table").into());
            };
            let mut seen = HashSet::new();
            let parent = columns(&r.parent, table, &mut seen)?;
            nonempty_key(&parent)?;
            let fk: BTreeSet<&str> = fk_cols.iter().map(String::as_str).collect();
            if key_names(&parent) != fk {
                return Err(format!("replace on {name} must name its parent by {fk:?}").into());
            }
            let rows = r
                .rows
                .iter()
                .map(|row| columns(row, table, &mut seen.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ValidOp::Replace {
                table: name,
                parent,
                rows,
            })
        }
        RowOp::SoftDelete(k) | RowOp::Delete(k) => {
            let key = columns(&k.key, table, &mut HashSet::new())?;
            nonempty_key(&key)?;
            if !table.is_unique_key(&key_names(&key)) {
                return Err(format!("delete on {name} must be keyed by a unique key").into());
            }
            if matches!(op, RowOp::SoftDelete(_)) {
                if !table.columns.contains("deleted_at") {
                    return Err(
                        format!("soft delete on {name}, which has no deleted_at column").into(),
                    );
                }
                Ok(ValidOp::SoftDelete { table: name, key })
            } else {
                Ok(ValidOp::Delete { table: name, key })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_converted_and_checked() {
        assert_eq!(
            to_bind(&Value::Timestamp("2025-01-02T03:04:05.000006Z".into())).unwrap(),
            Bind::Timestamp(parse_timestamp("2025-01-02T03:04:05.000006+00:00").unwrap())
        );
        assert!(to_bind(&Value::Timestamp("yesterday".into())).is_err());
        assert!(to_bind(&Value::Json("{not json".into())).is_err());
        assert!(to_bind(&Value::Float(f64::NAN)).is_err());
        assert_eq!(
            to_bind(&Value::Json("[1]".into())).unwrap(),
            Bind::Json("[1]".into())
        );
    }
}
