//! The WIT contract as the host sees it: which versions of
//! `projector:projection` it accepts, what a component's self-description
//! must say, and the conversion of the generated bindings into the
//! `flatten` types the rest of the host uses.

use flatten::{Column, Info, Keyed, ProjectionError, Replace, RowOp, TableUse, Upsert, Value};
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
    Ok(())
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
        assert!(!version_compatible("2.0.0"));
        assert!(!version_compatible("1.1.0"));
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
