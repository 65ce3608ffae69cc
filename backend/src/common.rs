//! Small helpers shared by the domain routers.

use axum::http::HeaderMap;
use mongodb::bson::oid::ObjectId;

use crate::error::{ApiError, ApiResult};

/// Now, as RFC 3339 UTC with microseconds (how documents store time).
pub fn now() -> String {
    events::format_timestamp(&chrono::Utc::now())
}

/// The acting user from the `X-User-ID` header (a 24-hex ObjectId), as the
/// reference design passes it. Required where an action has an actor.
pub fn acting_user(headers: &HeaderMap) -> ApiResult<ObjectId> {
    let value = headers
        .get("x-user-id")
        .ok_or_else(|| ApiError::Unauthorized("the X-User-ID header is required".into()))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("X-User-ID is not text".into()))?;
    ObjectId::parse_str(text.trim())
        .map_err(|_| ApiError::BadRequest(format!("X-User-ID {text:?} is not a 24-hex ObjectId")))
}

/// Checks a required text field: trimmed length between 1 and `max` characters.
pub fn required(field: &str, value: &str, max: usize) -> ApiResult<()> {
    let n = value.trim().chars().count();
    if n == 0 {
        return Err(ApiError::Validation(format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::Validation(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

/// Checks an optional text field's length.
pub fn optional(field: &str, value: &Option<String>, max: usize) -> ApiResult<()> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::Validation(format!(
            "{field} is longer than {max} characters"
        ))),
        _ => Ok(()),
    }
}

/// Checks an email address (loosely: one `@` with text on both sides).
pub fn email(field: &str, value: &str) -> ApiResult<()> {
    required(field, value, 254)?;
    match value.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@') =>
        {
            Ok(())
        }
        _ => Err(ApiError::Validation(format!(
            "{field} {value:?} is not an email address"
        ))),
    }
}

/// Checks a count or amount in cents.
pub fn non_negative(field: &str, value: i64) -> ApiResult<()> {
    if value < 0 {
        return Err(ApiError::Validation(format!(
            "{field} must not be negative"
        )));
    }
    Ok(())
}
