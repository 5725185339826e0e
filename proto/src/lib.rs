//! The wire contract between `orchestratord` and `orchctl`.
//!
//! Everything that crosses the control socket lives here:
//!
//! - [`task`]: the task, its states, kinds, results and trajectory events. The same types
//!   serialise to postcard on the wire and to camelCase JSON for `--format json` and the HTTP API.
//! - [`message`]: the hello handshake, requests and responses.
//! - [`error`]: stable error codes carried by error replies.
//! - [`frame`]: the length-delimited framing (4-byte big-endian length, postcard payload).
//!
//! Compatibility rule: enums only ever gain variants at the end, and structs never change shape
//! within a protocol major. The golden-byte tests in `tests/golden.rs` pin the encoding.

pub mod error;
pub mod frame;
pub mod message;
pub mod task;

pub use error::{ErrorCode, WireError};
pub use message::{ClientMessage, Hello, HelloReply, Request, Response, ServerMessage};
pub use task::{Task, TaskKind, TaskState, TrajectoryEvent};
