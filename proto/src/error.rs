//! Stable error codes. The snake_case names are a contract: scripts match on them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Every error a request can end with. New codes are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    InvalidTransition,
    InvalidReason,
    MissingGoal,
    GoalTooLong,
    InvalidState,
    InvalidKind,
    PermissionDenied,
    ProtocolMismatch,
    FrameTooLarge,
    MalformedRequest,
    ConfigInvalid,
    GateRefused,
    Internal,
    InvalidId,
    InvalidArgument,
    UnknownFixture,
    ShuttingDown,
    /// A reply larger than the frame limit; nothing was sent but this.
    ReplyTooLarge,
    /// The store's disk is full; writes fail until space returns.
    StorageFull,
    /// The integrity check found the store damaged; writes are refused from then on.
    StoreDamaged,
    /// The HTTP listener is off, so there is no console to sign in to.
    HttpOff,
    /// The store (PostgreSQL) cannot be reached; the request changed nothing it acknowledged.
    StoreUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::NotFound,
        ErrorCode::InvalidTransition,
        ErrorCode::InvalidReason,
        ErrorCode::MissingGoal,
        ErrorCode::GoalTooLong,
        ErrorCode::InvalidState,
        ErrorCode::InvalidKind,
        ErrorCode::PermissionDenied,
        ErrorCode::ProtocolMismatch,
        ErrorCode::FrameTooLarge,
        ErrorCode::MalformedRequest,
        ErrorCode::ConfigInvalid,
        ErrorCode::GateRefused,
        ErrorCode::Internal,
        ErrorCode::InvalidId,
        ErrorCode::InvalidArgument,
        ErrorCode::UnknownFixture,
        ErrorCode::ShuttingDown,
        ErrorCode::ReplyTooLarge,
        ErrorCode::StorageFull,
        ErrorCode::StoreDamaged,
        ErrorCode::HttpOff,
        ErrorCode::StoreUnavailable,
    ];

    /// The protocol minor that introduced this code: a client that said an older minor in its hello
    /// cannot decode it and is sent `internal` instead (with the code in the details).
    pub fn since_minor(self) -> u16 {
        match self {
            ErrorCode::ReplyTooLarge
            | ErrorCode::StorageFull
            | ErrorCode::StoreDamaged
            | ErrorCode::HttpOff => 1,
            ErrorCode::StoreUnavailable => 2,
            _ => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::InvalidReason => "invalid_reason",
            ErrorCode::MissingGoal => "missing_goal",
            ErrorCode::GoalTooLong => "goal_too_long",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::InvalidKind => "invalid_kind",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ProtocolMismatch => "protocol_mismatch",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::ConfigInvalid => "config_invalid",
            ErrorCode::GateRefused => "gate_refused",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::UnknownFixture => "unknown_fixture",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::ReplyTooLarge => "reply_too_large",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::StoreDamaged => "store_damaged",
            ErrorCode::HttpOff => "http_off",
            ErrorCode::StoreUnavailable => "store_unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply: a stable code, a human message and optional string details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    pub details: BTreeMap<String, String>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            details: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// This error as a client speaking protocol minor `minor` can decode it: a code newer than
    /// that client becomes `internal`, keeping its name in the `code` detail.
    pub fn for_minor(self, minor: u16) -> Self {
        if self.code.since_minor() <= minor {
            return self;
        }
        let code = self.code.as_str();
        let mut e = self.with("code", code);
        e.code = ErrorCode::Internal;
        e
    }
}
