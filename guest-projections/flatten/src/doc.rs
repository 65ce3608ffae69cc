//! Safe, path-aware lookups in a JSON document.
//!
//! The rule for every field, in every domain:
//! - missing or `null` (the field, or any object on the way to it) gives SQL `NULL`;
//! - present with the wrong JSON type (a number where text belongs, an array
//!   where an object belongs, a fraction where an integer belongs, an integer
//!   outside the signed 64-bit range, a string that is not a timestamp) is an
//!   `invalid-event` error naming the path, e.g. `data.customer.email: expected
//!   a string, found number`.
//!
//! Nothing here panics on any input.

use crate::prelude::*;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value as Json};

use crate::ops::{ProjectionError, Value};

type Result<T> = core::result::Result<T, ProjectionError>;

/// An object in the document, or the absence of one, with its path.
#[derive(Clone)]
pub struct Obj<'a> {
    path: String,
    map: Option<&'a Map<String, Json>>,
}

fn type_name(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

impl<'a> Obj<'a> {
    /// The root object, e.g. the event's `data`. Anything but an object is an error.
    pub fn root(path: &str, value: &'a Json) -> Result<Obj<'a>> {
        match value {
            Json::Object(map) => Ok(Obj {
                path: path.to_owned(),
                map: Some(map),
            }),
            other => Err(ProjectionError::InvalidEvent(format!(
                "{path}: expected an object, found {}",
                type_name(other)
            ))),
        }
    }

    /// The full dotted path of this object.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn field_path(&self, field: &str) -> String {
        format!("{}.{field}", self.path)
    }

    fn wrong(&self, field: &str, expected: &str, found: &Json) -> ProjectionError {
        ProjectionError::InvalidEvent(format!(
            "{}: expected {expected}, found {}",
            self.field_path(field),
            type_name(found)
        ))
    }

    /// The raw field, `None` if missing or null.
    pub fn get(&self, field: &str) -> Option<&'a Json> {
        self.map.and_then(|m| m.get(field)).filter(|v| !v.is_null())
    }

    /// Whether the field is present and not null.
    pub fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    /// A nested object; missing or null gives an absent object whose fields are all NULL.
    pub fn obj(&self, field: &str) -> Result<Obj<'a>> {
        match self.get(field) {
            None => Ok(Obj {
                path: self.field_path(field),
                map: None,
            }),
            Some(Json::Object(map)) => Ok(Obj {
                path: self.field_path(field),
                map: Some(map),
            }),
            Some(other) => Err(self.wrong(field, "an object", other)),
        }
    }

    /// The entries of a nested object, sorted by key (so the result does not
    /// depend on how the JSON map happens to be ordered in this build).
    pub fn entries(&self, field: &str) -> Result<Vec<(&'a String, &'a Json)>> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Json::Object(map)) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Ok(entries)
            }
            Some(other) => Err(self.wrong(field, "an object", other)),
        }
    }

    /// An element of an array as an object (e.g. `data.items[2]`).
    pub fn element(&self, field: &str, index: usize, value: &'a Json) -> Result<Obj<'a>> {
        let path = format!("{}[{index}]", self.field_path(field));
        match value {
            Json::Object(map) => Ok(Obj {
                path,
                map: Some(map),
            }),
            other => Err(ProjectionError::InvalidEvent(format!(
                "{path}: expected an object, found {}",
                type_name(other)
            ))),
        }
    }

    /// The elements of a nested array; missing or null is empty.
    pub fn array(&self, field: &str) -> Result<&'a [Json]> {
        match self.get(field) {
            None => Ok(&[]),
            Some(Json::Array(items)) => Ok(items),
            Some(other) => Err(self.wrong(field, "an array", other)),
        }
    }

    /// A string field as text.
    pub fn text(&self, field: &str) -> Result<Value> {
        Ok(self
            .str(field)?
            .map_or(Value::Null, |s| Value::Text(s.to_owned())))
    }

    /// A string field as `&str`.
    pub fn str(&self, field: &str) -> Result<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(field, "a string", other)),
        }
    }

    /// An integer field (signed 64-bit).
    pub fn int(&self, field: &str) -> Result<Value> {
        match self.get(field) {
            None => Ok(Value::Null),
            Some(Json::Number(n)) => n.as_i64().map(Value::Int).ok_or_else(|| {
                ProjectionError::InvalidEvent(format!(
                    "{}: expected an integer in the signed 64-bit range, found {n}",
                    self.field_path(field)
                ))
            }),
            Some(other) => Err(self.wrong(field, "an integer", other)),
        }
    }

    /// A numeric field as a float (integers are accepted).
    pub fn float(&self, field: &str) -> Result<Value> {
        match self.get(field) {
            None => Ok(Value::Null),
            Some(Json::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Value::Float(f)),
                _ => Err(ProjectionError::InvalidEvent(format!(
                    "{}: number {n} is not a finite float",
                    self.field_path(field)
                ))),
            },
            Some(other) => Err(self.wrong(field, "a number", other)),
        }
    }

    /// A boolean field.
    pub fn boolean(&self, field: &str) -> Result<Value> {
        match self.get(field) {
            None => Ok(Value::Null),
            Some(Json::Bool(b)) => Ok(Value::Boolean(*b)),
            Some(other) => Err(self.wrong(field, "a boolean", other)),
        }
    }

    /// A timestamp field: RFC 3339, or an ISO 8601 date-time without offset
    /// (taken as UTC, as Python's `isoformat()` of a naive datetime prints it).
    pub fn timestamp(&self, field: &str) -> Result<Value> {
        match self.str(field)? {
            None => Ok(Value::Null),
            Some(s) => normalize_timestamp(s).map(Value::Timestamp).ok_or_else(|| {
                ProjectionError::InvalidEvent(format!(
                    "{}: {s:?} is not an ISO 8601 / RFC 3339 timestamp",
                    self.field_path(field)
                ))
            }),
        }
    }

    /// Any JSON value kept as JSON text (`null` stays NULL), in canonical
    /// form (object keys sorted), see [`canonical_json`].
    pub fn json(&self, field: &str) -> Result<Value> {
        Ok(self
            .get(field)
            .map_or(Value::Null, |v| Value::Json(canonical_json(v))))
    }
}

/// JSON text with object keys sorted at every level, so the same document
/// gives the same bytes whatever the map order of the JSON library build
/// (serde_json's `preserve_order` is a workspace-wide feature).
pub fn canonical_json(v: &Json) -> String {
    fn write(v: &Json, out: &mut String) {
        match v {
            Json::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Json::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            leaf => out.push_str(&leaf.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// Parses an RFC 3339 or offset-less ISO 8601 timestamp and prints it as
/// RFC 3339 UTC with microseconds; `None` if it is neither, or outside the
/// range a DATETIME(6) column holds (years 1000 to 9999).
pub fn normalize_timestamp(s: &str) -> Option<String> {
    let utc: DateTime<Utc> = match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())?
            .and_utc(),
    };
    let year = chrono::Datelike::year(&utc);
    if !(1000..=9999).contains(&year) {
        return None;
    }
    Some(utc.to_rfc3339_opts(SecondsFormat::Micros, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(r: Result<Value>) -> String {
        match r {
            Err(ProjectionError::InvalidEvent(m)) => m,
            other => panic!("expected an invalid-event error, got {other:?}"),
        }
    }

    #[test]
    fn missing_and_null_objects_give_null_columns() {
        let doc = json!({"a": null});
        let root = Obj::root("data", &doc).unwrap();
        let a = root.obj("a").unwrap();
        let b = root.obj("b").unwrap();
        let deep = b.obj("c").unwrap();
        assert_eq!(a.text("x").unwrap(), Value::Null);
        assert_eq!(deep.int("y").unwrap(), Value::Null);
        assert_eq!(root.array("items").unwrap().len(), 0);
    }

    #[test]
    fn wrong_types_name_the_full_path() {
        let doc = json!({"customer": {"email": 5, "address": []}, "n": 1.5, "big": 18446744073709551615u64});
        let root = Obj::root("data", &doc).unwrap();
        let customer = root.obj("customer").unwrap();
        assert_eq!(
            err(customer.text("email")),
            "data.customer.email: expected a string, found number"
        );
        assert!(
            matches!(customer.obj("address"), Err(ProjectionError::InvalidEvent(m)) if m == "data.customer.address: expected an object, found array")
        );
        assert!(err(root.int("n")).contains("data.n: expected an integer"));
        assert!(err(root.int("big")).contains("signed 64-bit"));
        assert!(matches!(
            Obj::root("data", &json!([1])),
            Err(ProjectionError::InvalidEvent(_))
        ));
    }

    #[test]
    fn timestamps_are_normalised_to_utc_microseconds() {
        assert_eq!(
            normalize_timestamp("2025-03-04T05:06:07Z").unwrap(),
            "2025-03-04T05:06:07.000000Z"
        );
        assert_eq!(
            normalize_timestamp("2025-03-04T05:06:07.123456+02:00").unwrap(),
            "2025-03-04T03:06:07.123456Z"
        );
        assert_eq!(
            normalize_timestamp("2025-03-04T05:06:07.5").unwrap(),
            "2025-03-04T05:06:07.500000Z"
        );
        assert_eq!(normalize_timestamp("not a time"), None);
        assert_eq!(normalize_timestamp("0099-01-01T00:00:00Z"), None);
        let doc = json!({"at": "tuesday"});
        assert!(err(Obj::root("data", &doc).unwrap().timestamp("at")).contains("data.at"));
    }

    #[test]
    fn json_fields_keep_their_json_text() {
        let doc: Json =
            serde_json::from_str(r#"{"media": [{"url": "a", "type": "image"}], "none": null}"#)
                .unwrap();
        let root = Obj::root("data", &doc).unwrap();
        assert_eq!(
            root.json("media").unwrap(),
            Value::Json(r#"[{"type":"image","url":"a"}]"#.to_owned())
        );
        assert_eq!(root.json("none").unwrap(), Value::Null);
        let unordered: Json =
            serde_json::from_str(r#"{"b": {"z": 1, "a": [{"y": 2, "x": null}]}, "a": "é"}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&unordered),
            r#"{"a":"é","b":{"a":[{"x":null,"y":2}],"z":1}}"#
        );
    }
}
