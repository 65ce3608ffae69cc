//! Small helpers shared by the domain routers.

use crate::error::{ApiError, ApiResult};

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
