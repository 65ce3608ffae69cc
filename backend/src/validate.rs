//! Requests are validated against the OpenAPI document itself.
//!
//! The constraints of a request (lengths, patterns, formats, ranges, enums,
//! which fields are required and that no others are allowed) are declared
//! once, as `#[schema(...)]`/`#[param(...)]` attributes on the request
//! types; utoipa writes them into `/openapi.json` and this module checks
//! every body ([`Valid`]) and query ([`ApiQuery`]) against that very
//! document with a JSON Schema validator. A client that follows the
//! document is never refused for a shape the document allows, and the
//! document cannot promise less than the server checks.
//!
//! What no schema can say (an email already taken, a product that does not
//! exist, a transition the current status forbids) is checked by the
//! handlers and answered 409 or 404.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiJson};

/// The document's component schemas, as JSON.
static COMPONENTS: LazyLock<Value> = LazyLock::new(|| {
    crate::openapi::document()
        .get("components")
        .cloned()
        .unwrap_or_else(|| json!({}))
});

/// One compiled validator per schema, made on first use.
static VALIDATORS: LazyLock<
    std::sync::Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
> = LazyLock::new(Default::default);

fn compile(schema: &Value) -> std::sync::Arc<jsonschema::Validator> {
    let mut root = schema.clone();
    if let Some(map) = root.as_object_mut() {
        map.insert("components".into(), COMPONENTS.clone());
    }
    std::sync::Arc::new(
        jsonschema::options()
            .should_validate_formats(false)
            .build(&root)
            // The document is generated from our own types.
            .expect("the OpenAPI document's schemas compile"),
    )
}

fn validator(key: &str, schema: impl FnOnce() -> Value) -> std::sync::Arc<jsonschema::Validator> {
    let mut cache = VALIDATORS.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(key.to_owned())
        .or_insert_with(|| compile(&schema()))
        .clone()
}

/// Checks `value` against `validator`; the first problems as a 422.
fn check(validator: &jsonschema::Validator, value: &Value, prefix: &str) -> Result<(), ApiError> {
    let problems: Vec<String> = validator
        .iter_errors(value)
        .take(5)
        .map(|e| {
            let path = e.instance_path.to_string();
            let e = shorten(&e.to_string());
            let at = path.trim_start_matches('/').replace('/', ".");
            if at.is_empty() && prefix.is_empty() {
                e.to_string()
            } else if at.is_empty() {
                format!("{prefix}: {e}")
            } else {
                format!("{prefix}{at}: {e}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(problems.join("; ")))
    }
}

/// An error quoting a long value keeps its start and end.
fn shorten(message: &str) -> String {
    const KEEP: usize = 80;
    let chars: Vec<char> = message.chars().collect();
    if chars.len() <= 3 * KEEP {
        return message.to_owned();
    }
    let head: String = chars[..KEEP].iter().collect();
    let tail: String = chars[chars.len() - KEEP..].iter().collect();
    format!("{head}…{tail}")
}

/// Checks a JSON body against the document's schema named `name`.
pub fn check_body(name: &str, value: &Value) -> Result<(), ApiError> {
    let v = validator(
        name,
        || json!({"$ref": format!("#/components/schemas/{name}")}),
    );
    check(&v, value, "")
}

/// A JSON body valid against the document's schema of `T`.
pub struct Valid<T>(pub T);

impl<S, T> FromRequest<S> for Valid<T>
where
    T: DeserializeOwned + utoipa::ToSchema,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiJson(mut value) = ApiJson::<Value>::from_request(req, state).await?;
        whole_numbers(&mut value);
        check_body(&T::name(), &value)?;
        serde_json::from_value(value)
            .map(Valid)
            .map_err(|e| ApiError::Validation(e.to_string()))
    }
}

/// JSON Schema counts `3.0` as an integer; serde (and the validator) do
/// not: whole floats become integers before the body is checked.
fn whole_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                // Strictly inside: a literal past i64 rounds to its bounds.
                && f > i64::MIN as f64
                && f < i64::MAX as f64
            {
                *value = json!(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// The JSON Schema of a parameter list: an object of the parameters.
fn params_schema(params: Vec<utoipa::openapi::path::Parameter>) -> Value {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for p in params {
        let p = serde_json::to_value(&p).expect("a parameter serialises");
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        if p["required"] == json!(true) {
            required.push(json!(name));
        }
        let mut schema = p.get("schema").cloned().unwrap_or_else(|| json!({}));
        crate::openapi::forbid_nul(&mut schema);
        properties.insert(name, schema);
    }
    json!({"type": "object", "properties": properties, "required": required})
}

/// Query values as JSON: a parameter whose schema is a number, integer or
/// boolean is read as one (so the schema's ranges apply), others as text.
fn typed(schema: &Value, raw: &HashMap<String, String>) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in raw {
        let ty = &schema["properties"][k]["type"];
        let is = |t: &str| ty == t || ty.as_array().is_some_and(|a| a.iter().any(|x| x == t));
        let value = if is("integer") || is("number") {
            serde_json::from_str::<serde_json::Number>(v)
                .map(Value::Number)
                .unwrap_or_else(|_| json!(v))
        } else if is("boolean") {
            v.parse::<bool>()
                .map(Value::Bool)
                .unwrap_or_else(|_| json!(v))
        } else {
            json!(v)
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

/// Checks raw parameters (query or headers) against the parameters `T`
/// declares in the document.
pub fn check_params<T: utoipa::IntoParams>(
    key: &str,
    raw: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let schema = params_schema(T::into_params(|| None));
    let v = validator(key, || schema.clone());
    let value = typed(&schema, raw);
    check(&v, &value, "")?;
    Ok(value)
}

/// A query string valid against the parameters `T` declares.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + utoipa::IntoParams,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let raw: HashMap<String, String> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or_default())
                .map_err(|e| ApiError::Validation(format!("the query string: {e}")))?;
        let value = check_params::<T>(std::any::type_name::<T>(), &raw)?;
        serde_json::from_value(value)
            .map(ApiQuery)
            .map_err(|e| ApiError::Validation(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_read_as_the_integers_they_are() {
        // A client (Python's json) may write an integer as `N.0`; near 2^51
        // a best-effort float parse lands a quarter off and would be refused.
        let mut v: Value =
            serde_json::from_str(r#"{"a": 2251799813685247.0, "b": 3.0, "c": 1.5, "d": [7.0]}"#)
                .unwrap();
        whole_numbers(&mut v);
        assert_eq!(
            v,
            json!({"a": 2251799813685247i64, "b": 3, "c": 1.5, "d": [7]})
        );
    }
}
