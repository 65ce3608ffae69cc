//! The WIT contract as the host sees it: which versions of
//! `projector:projection` it accepts, what a component's self-description
//! must say, and the conversion of the generated bindings into the
//! `flatten` types the rest of the host uses.

use std::collections::{BTreeMap, BTreeSet};

use flatten::{
    Column, ColumnDef, Info, Keyed, ParentKey, ProjectionError, Replace, RowOp, SqlType, TableDef,
    TableUse, Upsert, Value,
};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::runtime::{LoadError, WIT_PACKAGE, WIT_VERSION, wit};

/// Refuses a component that names the projection package with another major
/// version, or a minor version newer than this host knows.
pub(super) fn check_version(component: &Component, engine: &Engine) -> Result<(), LoadError> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n.to_owned())
        .chain(ty.exports(engine).map(|(n, _)| n.to_owned()));
    for name in names {
        let Some(rest) = name
            .strip_prefix(WIT_PACKAGE)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        if !version_compatible(version) {
            return Err(LoadError::Version { found: name });
        }
    }
    Ok(())
}

/// Same major version and a minor version not newer than ours.
pub fn version_compatible(version: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(version), parse(WIT_VERSION)) {
        (Some((major, minor)), Some((our_major, our_minor))) => {
            major == our_major && minor <= our_minor
        }
        _ => false,
    }
}

/// Longest domain name and version a component may declare.
const MAX_DOMAIN: usize = 40;
const MAX_VERSION: usize = 64;

/// Checks a component's self-description for what the host relies on.
pub(super) fn check_info(info: &Info) -> Result<(), String> {
    if info.domain.is_empty()
        || !info
            .domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
    {
        return Err(format!(
            "domain {:?} must be a lower-case topic name",
            info.domain
        ));
    }
    // Both go into every `processed_events.component` label
    // (`domain@version+digest12`, at most 128 characters): a label that does
    // not fit would refuse every event of the component.
    if info.domain.len() > MAX_DOMAIN {
        return Err(format!(
            "domain {:?} is longer than {MAX_DOMAIN} characters",
            info.domain
        ));
    }
    if info.version.is_empty()
        || info.version.len() > MAX_VERSION
        || !info.version.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(format!(
            "version {:?} must be 1 to {MAX_VERSION} visible ASCII characters",
            info.version
        ));
    }
    if info.handles.is_empty() {
        return Err("handles no event type".to_owned());
    }
    for handle in &info.handles {
        if handle.split_once('.').map(|(topic, _)| topic) != Some(info.domain.as_str()) {
            return Err(format!(
                "handles {handle:?}, which is not a {}.* event type",
                info.domain
            ));
        }
    }
    if info.writes.is_empty() {
        return Err("declares no table".to_owned());
    }
    for table in &info.writes {
        for column in &table.columns {
            if flatten::HOST_COLUMNS.contains(&column.as_str()) {
                return Err(format!(
                    "declares {}.{column}, which only the host writes",
                    table.table
                ));
            }
        }
    }
    check_tables(info)
}

/// Most columns a declared table may have (MySQL allows 4096 in all).
const MAX_COLUMNS: usize = 1000;
/// Longest VARCHAR a declaration may ask for (in utf8mb4 characters).
const MAX_VARCHAR: u32 = 16_383;

/// Checks a 1.1 component's typed tables: every written table is defined
/// and every written column declared, names are plain identifiers, keys
/// name declared columns, a parent is a table of the same component
/// referenced by its primary key. A 1.0 component defines none.
pub(super) fn check_tables(info: &Info) -> Result<(), String> {
    if info.tables.is_empty() {
        return Ok(());
    }
    let mut defs: BTreeMap<&str, &TableDef> = BTreeMap::new();
    for t in &info.tables {
        if defs.insert(t.name.as_str(), t).is_some() {
            return Err(format!("defines table {:?} twice", t.name));
        }
    }
    for use_ in &info.writes {
        let Some(def) = defs.get(use_.table.as_str()) else {
            return Err(format!(
                "writes table {:?} but tables() does not define it",
                use_.table
            ));
        };
        for column in &use_.columns {
            match def.column(column) {
                None => {
                    return Err(format!(
                        "writes {}.{column}, which tables() does not define",
                        use_.table
                    ));
                }
                Some(c) if c.sql_type == SqlType::Serial => {
                    return Err(format!(
                        "writes {}.{column}, which the database assigns (serial)",
                        use_.table
                    ));
                }
                Some(_) => {}
            }
        }
    }
    for def in &info.tables {
        check_table(def, &defs).map_err(|e| format!("table {:?}: {e}", def.name))?;
        if !info.writes.iter().any(|w| w.table == def.name) {
            return Err(format!(
                "defines table {:?}, which describe() does not write",
                def.name
            ));
        }
    }
    Ok(())
}

fn check_table(def: &TableDef, defs: &BTreeMap<&str, &TableDef>) -> Result<(), String> {
    use crate::sink::schema::Ident;
    Ident::parse(&def.name).map_err(|e| e.to_string())?;
    if def.columns.is_empty() || def.columns.len() > MAX_COLUMNS {
        return Err(format!("must have 1 to {MAX_COLUMNS} columns"));
    }
    let mut names = BTreeSet::new();
    for c in &def.columns {
        Ident::parse(&c.name).map_err(|e| e.to_string())?;
        if flatten::HOST_COLUMNS.contains(&c.name.as_str()) {
            return Err(format!("defines {}, which the host adds itself", c.name));
        }
        if !names.insert(c.name.as_str()) {
            return Err(format!("defines column {} twice", c.name));
        }
        match c.sql_type {
            SqlType::Varchar(n) if n == 0 || n > MAX_VARCHAR => {
                return Err(format!(
                    "{} is VARCHAR({n}); a VARCHAR holds 1 to {MAX_VARCHAR} characters",
                    c.name
                ));
            }
            SqlType::Serial if c.nullable || def.primary_key != [c.name.clone()] => {
                return Err(format!(
                    "{} is serial, which must be NOT NULL and the whole primary key",
                    c.name
                ));
            }
            _ => {}
        }
    }
    let key = |what: &str, cols: &[String]| -> Result<(), String> {
        if cols.is_empty() {
            return Err(format!("the {what} has no column"));
        }
        for col in cols {
            let Some(c) = def.column(col) else {
                return Err(format!("the {what} names {col}, which is not a column"));
            };
            if matches!(c.sql_type, SqlType::Text | SqlType::Json) {
                return Err(format!(
                    "the {what} names {col}, a {} column, which MySQL cannot index whole",
                    c.sql_type.sql()
                ));
            }
        }
        Ok(())
    };
    key("primary key", &def.primary_key)?;
    if let Some(c) = def
        .primary_key
        .iter()
        .filter_map(|k| def.column(k))
        .find(|c| c.nullable)
    {
        return Err(format!(
            "primary key column {} must not be nullable",
            c.name
        ));
    }
    for k in &def.unique_keys {
        key("unique key", k)?;
    }
    for k in &def.indexes {
        key("index", k)?;
    }
    if let Some(p) = &def.parent {
        key("parent key", &p.columns)?;
        let Some(parent) = defs.get(p.table.as_str()) else {
            return Err(format!(
                "its parent {:?} is not a table this component defines",
                p.table
            ));
        };
        if parent.name == def.name {
            return Err("is its own parent".into());
        }
        if p.references != parent.primary_key || p.columns.len() != p.references.len() {
            return Err(format!(
                "its parent key must reference {}'s primary key ({})",
                parent.name,
                parent.primary_key.join(", ")
            ));
        }
    }
    Ok(())
}

pub(super) fn tables_from_wit(tables: Vec<wit::TableDef>) -> Vec<TableDef> {
    tables
        .into_iter()
        .map(|t| TableDef {
            name: t.name,
            doc: t.doc,
            columns: t
                .columns
                .into_iter()
                .map(|c| ColumnDef {
                    name: c.name,
                    sql_type: match c.sql_type {
                        wit::ColumnType::Varchar(n) => SqlType::Varchar(n),
                        wit::ColumnType::Text => SqlType::Text,
                        wit::ColumnType::Bigint => SqlType::Bigint,
                        wit::ColumnType::Double => SqlType::Double,
                        wit::ColumnType::Boolean => SqlType::Boolean,
                        wit::ColumnType::Datetime => SqlType::Datetime,
                        wit::ColumnType::Json => SqlType::Json,
                        wit::ColumnType::Serial => SqlType::Serial,
                    },
                    nullable: c.nullable,
                    doc: c.doc,
                })
                .collect(),
            primary_key: t.primary_key,
            unique_keys: t.unique_keys,
            indexes: t.indexes,
            parent: t.parent.map(|p| ParentKey {
                columns: p.columns,
                table: p.table,
                references: p.references,
                cascade: p.cascade,
            }),
        })
        .collect()
}

pub(super) fn info_from_wit(info: wit::Info) -> Info {
    Info {
        domain: info.domain,
        version: info.version,
        handles: info.handles,
        writes: info
            .writes
            .into_iter()
            .map(|t| TableUse {
                table: t.table,
                columns: t.columns,
            })
            .collect(),
        tables: vec![],
    }
}

fn value_from_wit(v: wit::Value) -> Value {
    match v {
        wit::Value::Null => Value::Null,
        wit::Value::Text(s) => Value::Text(s),
        wit::Value::Int(i) => Value::Int(i),
        wit::Value::Float(f) => Value::Float(f),
        wit::Value::Boolean(b) => Value::Boolean(b),
        wit::Value::Timestamp(s) => Value::Timestamp(s),
        wit::Value::Json(s) => Value::Json(s),
    }
}

fn columns_from_wit(cols: Vec<wit::Column>) -> Vec<Column> {
    cols.into_iter()
        .map(|c| Column {
            name: c.name,
            value: value_from_wit(c.value),
        })
        .collect()
}

fn upsert_from_wit(u: wit::Upsert) -> Upsert {
    Upsert {
        table: u.table,
        key: columns_from_wit(u.key),
        values: columns_from_wit(u.values),
    }
}

fn keyed_from_wit(k: wit::Keyed) -> Keyed {
    Keyed {
        table: k.table,
        key: columns_from_wit(k.key),
    }
}

pub(super) fn op_from_wit(op: wit::RowOp) -> RowOp {
    match op {
        wit::RowOp::Upsert(u) => RowOp::Upsert(upsert_from_wit(u)),
        wit::RowOp::Update(u) => RowOp::Update(upsert_from_wit(u)),
        wit::RowOp::Replace(r) => RowOp::Replace(Replace {
            table: r.table,
            parent: columns_from_wit(r.parent),
            rows: r.rows.into_iter().map(columns_from_wit).collect(),
        }),
        wit::RowOp::SoftDelete(k) => RowOp::SoftDelete(keyed_from_wit(k)),
        wit::RowOp::Delete(k) => RowOp::Delete(keyed_from_wit(k)),
    }
}

pub(super) fn error_from_wit(e: wit::ProjectionError) -> ProjectionError {
    match e {
        wit::ProjectionError::InvalidEvent(m) => ProjectionError::InvalidEvent(m),
        wit::ProjectionError::Unsupported(m) => ProjectionError::Unsupported(m),
        wit::ProjectionError::Internal(m) => ProjectionError::Internal(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_the_same_major_and_no_newer_minor_are_compatible() {
        assert!(version_compatible("1.0.0"));
        assert!(version_compatible("1.1.0"));
        assert!(!version_compatible("2.0.0"));
        assert!(!version_compatible("1.2.0"));
        assert!(!version_compatible("0.9.0"));
        assert!(!version_compatible(""));
    }

    #[test]
    fn a_self_description_must_match_its_domain_and_leave_host_columns_alone() {
        let good = Info {
            domain: "user".into(),
            version: "1.0.0".into(),
            handles: vec!["user.created".into()],
            writes: vec![TableUse {
                table: "users".into(),
                columns: vec!["user_id".into()],
            }],
            tables: vec![],
        };
        assert_eq!(check_info(&good), Ok(()));
        let mut foreign = good.clone();
        foreign.handles.push("order.created".into());
        assert!(check_info(&foreign).unwrap_err().contains("order.created"));
        let mut stamps = good.clone();
        stamps.writes[0].columns.push("event_timestamp".into());
        assert!(
            check_info(&stamps)
                .unwrap_err()
                .contains("only the host writes")
        );
        let mut long_version = good.clone();
        long_version.version = format!("1.0.0-{}", "x".repeat(100));
        assert!(check_info(&long_version).unwrap_err().contains("version"));
        let mut spaced = good.clone();
        spaced.version = "1.0 beta".into();
        assert!(check_info(&spaced).unwrap_err().contains("version"));
        let mut empty = good;
        empty.writes.clear();
        assert!(check_info(&empty).is_err());
    }
}
