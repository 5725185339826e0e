//! Error replies of the HTTP API: `{"error": {"code", "message", ...details}}` with an HTTP status
//! that follows from the code. Codes are the control socket's; the few that only HTTP can produce
//! (authentication, body size, routing) are listed in [`code`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orchestrator_proto::{ErrorCode, WireError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Codes that only the HTTP API produces.
pub mod code {
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const NOT_INITIALIZED: &str = "not_initialized";
    pub const TOKEN_INSECURE: &str = "token_insecure";
    pub const TOKEN_UNREADABLE: &str = "token_unreadable";
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: BTreeMap<String, String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: BTreeMap::new(),
        }
    }

    /// A socket error code, with the status it maps to.
    pub fn wire(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::from(WireError::new(code, message))
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> ApiError {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn body(&self) -> Value {
        let mut error = Map::new();
        // Details sit beside code and message (e.g. `from` and `action` of `invalid_transition`),
        // but never replace them.
        for (k, v) in &self.details {
            error.insert(k.clone(), Value::String(v.clone()));
        }
        error.insert("code".into(), Value::String(self.code.to_string()));
        error.insert("message".into(), Value::String(self.message.clone()));
        let mut top = Map::new();
        top.insert("error".into(), Value::Object(error));
        Value::Object(top)
    }
}

/// The HTTP status for a socket error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound | ErrorCode::UnknownFixture => StatusCode::NOT_FOUND,
        ErrorCode::InvalidTransition | ErrorCode::GateRefused => StatusCode::CONFLICT,
        ErrorCode::InvalidReason
        | ErrorCode::MissingGoal
        | ErrorCode::GoalTooLong
        | ErrorCode::InvalidState
        | ErrorCode::InvalidKind
        | ErrorCode::InvalidId
        | ErrorCode::InvalidArgument
        | ErrorCode::MalformedRequest => StatusCode::BAD_REQUEST,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::ShuttingDown
        | ErrorCode::StoreDamaged
        | ErrorCode::HttpOff
        | ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::ReplyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        // Internal, config and protocol errors, and any code added later until it is placed here.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> ApiError {
        ApiError {
            status: status_of(e.code),
            code: e.code.as_str(),
            message: e.message,
            details: e.details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A full disk is logged once per episode by the store, not once per request.
        if self.status.is_server_error()
            && self.status != StatusCode::SERVICE_UNAVAILABLE
            && self.status != StatusCode::INSUFFICIENT_STORAGE
        {
            tracing::error!(code = self.code, "http: {}", self.message);
        }
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orchestrator\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_sit_beside_code_and_message_without_replacing_them() {
        let e = ApiError::wire(
            ErrorCode::InvalidTransition,
            "cannot approve a task that is done",
        )
        .with("from", "done")
        .with("action", "approve")
        .with("code", "spoofed");
        assert_eq!(e.status, StatusCode::CONFLICT);
        let body = e.body();
        assert_eq!(body["error"]["code"], "invalid_transition");
        assert_eq!(body["error"]["from"], "done");
        assert_eq!(body["error"]["action"], "approve");
        assert_eq!(
            body["error"]["message"],
            "cannot approve a task that is done"
        );
    }

    #[test]
    fn socket_codes_map_to_the_statuses_clients_expect() {
        assert_eq!(status_of(ErrorCode::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            status_of(ErrorCode::InvalidTransition),
            StatusCode::CONFLICT
        );
        assert_eq!(status_of(ErrorCode::MissingGoal), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(ErrorCode::InvalidId), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(ErrorCode::InvalidReason), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_of(ErrorCode::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status_of(ErrorCode::StorageFull),
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(
            status_of(ErrorCode::StoreDamaged),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
