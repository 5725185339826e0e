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
//! - [`compat`]: fields a struct gained within the protocol major, written only for peers that
//!   know them.
//!
//! Compatibility rule: enums only ever gain variants at the end, and structs only gain fields at
//! the end, each marked with the minor that added it (see [`compat`]), so that a peer of an older
//! minor reads the shape it knows. The golden-byte tests in `tests/golden.rs` pin the encoding.

pub mod compat;
pub mod error;
pub mod frame;
pub mod message;
pub mod task;

pub use error::{ErrorCode, WireError};
pub use message::{ClientMessage, Hello, HelloReply, Request, Response, ServerMessage};
pub use task::{Task, TaskKind, TaskState, TrajectoryEvent};
