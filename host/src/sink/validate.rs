//! What a component's row operations become before any SQL: every
//! identifier checked against the declaration and the live schema, every
//! value converted to a bound parameter.
//!
//! **Allowlist**: an operation may touch only a table and columns its
//! component declared and the schema has ([`validate`]); the event stamp
//! columns are written by the host alone. SQL text holds only quoted
//! [`Ident`]s; every value is a bound parameter.

use std::collections::BTreeSet;

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
fn to_bind(v: Value) -> Result<Bind, String> {
    Ok(match v {
        Value::Null => Bind::Null,
        Value::Text(s) => Bind::Text(s),
        Value::Int(i) => Bind::Int(i),
        Value::Float(f) if f.is_finite() => Bind::Float(f),
        Value::Float(f) => return Err(format!("{f} is not a finite number")),
        Value::Boolean(b) => Bind::Bool(b),
        Value::Timestamp(s) => {
            Bind::Timestamp(parse_timestamp(&s).ok_or_else(|| format!("{s:?} is not RFC 3339"))?)
        }
        Value::Json(s) => {
            serde_json::from_str::<serde::de::IgnoredAny>(&s)
                .map_err(|e| format!("not valid JSON: {e}"))?;
            Bind::Json(s)
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

/// The columns of one row, checked and bound. `before` holds the columns
/// the same row already has (a key's, a parent's): a name may appear once.
/// Takes the columns by value: names and values move into the result.
fn columns(
    cols: Vec<Column>,
    table: &TableInfo,
    before: &[(String, Bind)],
) -> Result<Vec<(String, Bind)>, OpError> {
    let mut out: Vec<(String, Bind)> = Vec::with_capacity(cols.len());
    for c in cols {
        Ident::check(&c.name).map_err(|e| OpError::Disallowed(e.to_string()))?;
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
        if before.iter().chain(&out).any(|(n, _)| *n == c.name) {
            return Err(format!("{}.{} appears twice", table.name.as_str(), c.name).into());
        }
        // Named only when refused: nothing is formatted on the way through.
        let invalid =
            |e: String| OpError::Invalid(format!("column {}.{}: {e}", table.name.as_str(), c.name));
        if let Some(ty) = table.types.get(&c.name) {
            ty.check(&c.value).map_err(invalid)?;
        }
        let bind = to_bind(c.value).map_err(invalid)?;
        out.push((c.name, bind));
    }
    Ok(out)
}

fn key_names(key: &[(String, Bind)]) -> BTreeSet<&str> {
    key.iter().map(|(n, _)| n.as_str()).collect()
}

/// Checks one operation against what the component declared and what the
/// schema has. The error says why the operation is not allowed.
pub fn validate(op: &RowOp, declared: &Info, schema: &Schema) -> Result<ValidOp, OpError> {
    validate_owned(op.clone(), declared, schema)
}

/// [`validate`] taking the operation by value (its names and values move
/// into the result instead of being copied): the hot path's form.
pub fn validate_owned(op: RowOp, declared: &Info, schema: &Schema) -> Result<ValidOp, OpError> {
    if !declared.allows(&op) {
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
    // Which of the kinds that share a payload type `op` is (the match
    // below moves the payload out).
    let (upsert, soft_delete) = (
        matches!(op, RowOp::Upsert(_)),
        matches!(op, RowOp::SoftDelete(_)),
    );
    let nonempty_key = |key: &[(String, Bind)]| {
        if key.iter().any(|(_, v)| *v == Bind::Null) {
            Err(OpError::Invalid(format!("{name}: a key column is NULL")))
        } else {
            Ok(())
        }
    };
    match op {
        RowOp::Upsert(u) | RowOp::Update(u) => {
            let key = columns(u.key, table, &[])?;
            let values = columns(u.values, table, &key)?;
            nonempty_key(&key)?;
            if upsert {
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
            let parent = columns(r.parent, table, &[])?;
            nonempty_key(&parent)?;
            let fk: BTreeSet<&str> = fk_cols.iter().map(String::as_str).collect();
            if key_names(&parent) != fk {
                return Err(format!("replace on {name} must name its parent by {fk:?}").into());
            }
            let rows = r
                .rows
                .into_iter()
                .map(|row| columns(row, table, &parent))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ValidOp::Replace {
                table: name,
                parent,
                rows,
            })
        }
        RowOp::SoftDelete(k) | RowOp::Delete(k) => {
            let key = columns(k.key, table, &[])?;
            nonempty_key(&key)?;
            if !table.is_unique_key(&key_names(&key)) {
                return Err(format!("delete on {name} must be keyed by a unique key").into());
            }
            if soft_delete {
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
            to_bind(Value::Timestamp("2025-01-02T03:04:05.000006Z".into())).unwrap(),
            Bind::Timestamp(parse_timestamp("2025-01-02T03:04:05.000006+00:00").unwrap())
        );
        assert!(to_bind(Value::Timestamp("yesterday".into())).is_err());
        assert!(to_bind(Value::Json("{not json".into())).is_err());
        assert!(to_bind(Value::Float(f64::NAN)).is_err());
        assert_eq!(
            to_bind(Value::Json("[1]".into())).unwrap(),
            Bind::Json("[1]".into())
        );
    }
}
