//! Reading a request's JSON body (and a console form's): content type, size limit, and typed
//! fields with the socket's error codes. Fields are checked by hand rather than by a derived
//! deserialiser so that each wrong field gets its own code (a numeric `reason` is
//! `invalid_reason`, not a generic parse error), and unknown fields — such as a client's `kind` —
//! are ignored.

use super::error::{code, ApiError};
use super::MAX_BODY_BYTES;
use axum::body::Body;
use axum::extract::{Form, FromRequest, Request};
use axum::http::{header, HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use orchestrator_proto::ErrorCode;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

const FORM: &str = "application/x-www-form-urlencoded";

/// The request's media type, without its parameters (`; charset=…`).
fn mime(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim())
}

fn is_json(headers: &HeaderMap) -> bool {
    mime(headers).is_some_and(|m| {
        m.eq_ignore_ascii_case("application/json") || m.to_ascii_lowercase().ends_with("+json")
    })
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code::REQUEST_TOO_LARGE,
        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    )
    .with("limit", MAX_BODY_BYTES.to_string())
}

/// How much of an oversized body is read and thrown away before answering 413. Closing a
/// connection with unread data makes the kernel reset it, and the reset can destroy the 413 before
/// the client reads it; beyond this much, the connection is closed all the same.
const DRAIN_BYTES: u64 = 1024 * 1024;
/// A body must arrive within this long, so that a slow client cannot hold a request open.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read at most [`MAX_BODY_BYTES`]; past that, drain up to [`DRAIN_BYTES`] and say it was too large.
async fn read_limited(mut body: Body) -> Result<Vec<u8>, ApiError> {
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::wire(
                ErrorCode::MalformedRequest,
                format!("cannot read the body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len() as u64);
        if total <= MAX_BODY_BYTES as u64 {
            kept.extend_from_slice(&data);
        } else if total > DRAIN_BYTES {
            break;
        }
    }
    if total > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    Ok(kept)
}

/// The body as a JSON object: 415 for another content type, 413 beyond the size limit, 400 for
/// anything that is not a JSON object.
pub async fn object(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::MalformedRequest.as_str(),
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    let bytes = bytes(headers, body).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::wire(
            ErrorCode::MalformedRequest,
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::wire(
            ErrorCode::MalformedRequest,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// A console form's fields (`application/x-www-form-urlencoded`), read with the same limits as a
/// JSON body: 415 for another content type, 413 beyond the size limit. A field given twice keeps
/// its last value; bytes that are not UTF-8 are replaced, as a browser's form never sends them.
pub async fn form(headers: &HeaderMap, body: Body) -> Result<HashMap<String, String>, ApiError> {
    if !mime(headers).is_some_and(|m| m.eq_ignore_ascii_case(FORM)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::MalformedRequest.as_str(),
            "the body must be a form (Content-Type: application/x-www-form-urlencoded)",
        ));
    }
    let bytes = bytes(headers, body).await?;
    // Decoded by the web framework's own form reader, now that the body is known to be small.
    let read = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, FORM)
        .body(Body::from(bytes))
        .map_err(|e| ApiError::wire(ErrorCode::MalformedRequest, e.to_string()))?;
    match Form::<HashMap<String, String>>::from_request(read, &()).await {
        Ok(Form(fields)) => Ok(fields),
        Err(e) => Err(ApiError::wire(
            ErrorCode::MalformedRequest,
            format!("the form cannot be read: {}", e.body_text()),
        )),
    }
}

/// The body's bytes: 413 beyond [`MAX_BODY_BYTES`] (at once when the declared length says so),
/// 400 when it does not arrive within [`BODY_TIMEOUT`].
async fn bytes(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_BYTES) {
        // Not worth reading: refuse at once and let the connection close.
        return Err(too_large());
    }
    tokio::time::timeout(BODY_TIMEOUT, read_limited(body))
        .await
        .map_err(|_| {
            ApiError::wire(
                ErrorCode::MalformedRequest,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?
}

/// A field that may be absent or null, and otherwise must be a string; `code` names what is wrong.
pub fn optional_string(
    obj: &Map<String, Value>,
    key: &str,
    code: ErrorCode,
) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::wire(
            code,
            format!("{key} must be a string, not {}", type_name(other)),
        )),
    }
}

/// A field that may be absent or null, and otherwise must be an array of strings.
pub fn optional_strings(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    let wrong = || {
        ApiError::wire(
            ErrorCode::InvalidArgument,
            format!("{key} must be an array of strings"),
        )
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(wrong))
            .collect(),
        Some(_) => Err(wrong()),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn string_fields_are_type_checked_with_the_given_code() {
        let o = obj(json!({"reason": 123, "goal": "x", "none": null}));
        let e = optional_string(&o, "reason", ErrorCode::InvalidReason).unwrap_err();
        assert_eq!(e.code, "invalid_reason");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            optional_string(&o, "goal", ErrorCode::MissingGoal).unwrap(),
            Some("x".into())
        );
        assert_eq!(
            optional_string(&o, "none", ErrorCode::MissingGoal).unwrap(),
            None
        );
        assert_eq!(
            optional_string(&o, "absent", ErrorCode::MissingGoal).unwrap(),
            None
        );
    }

    #[test]
    fn string_arrays_reject_other_shapes() {
        let o = obj(json!({"a": ["x", "y"], "b": ["x", 1], "c": "x"}));
        assert_eq!(optional_strings(&o, "a").unwrap(), vec!["x", "y"]);
        assert_eq!(
            optional_strings(&o, "b").unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(
            optional_strings(&o, "c").unwrap_err().code,
            "invalid_argument"
        );
        assert!(optional_strings(&o, "d").unwrap().is_empty());
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
