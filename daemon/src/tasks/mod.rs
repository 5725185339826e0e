//! The application layer: every operation on tasks, gates and the sweeper that a front end offers.
//!
//! The control socket (`server::handlers`), the HTTP API (`http`) and the synthetic harness
//! ([`gate::run_synthetic`]) are front ends over these functions; none of them calls another front end.
//! Each operation takes the daemon, the [`Actor`] it acts for where it records one, and plain
//! arguments, and answers a result or a [`WireError`](orchestrator_proto::WireError) with a stable
//! code. Validation lives here, so every front end refuses the same input the same way.
//!
//! - [`submit`]: validate and store a task; synthetic tasks run their whole pipeline in that write.
//! - [`transition`]: approve, reject, cancel.
//! - [`query`]: list and show.
//! - [`route`]: the routing decision a submit would take, without writing.
//! - [`gate`]: synthetic gate runs, the shadow summary, gate overrides.
//! - [`sweep`]: a sweep now, and the sweeper's timer.
//! - [`reload`]: re-read the config and apply it, or nothing (SIGHUP and `orchctl reload`).
//! - [`status`]: the daemon in a line, for systemd.
//! - [`notify`]: notification sinks: list, test, retry dead events.
//! - [`agents`]: each agent paused or not, its load and costs; pause and resume by hand.

pub mod agents;
pub mod gate;
pub mod notify;
pub mod query;
pub mod reload;
pub mod route;
pub mod status;
pub mod submit;
pub mod sweep;
#[cfg(test)]
pub mod testing;
pub mod transition;

use crate::access::Peer;
use orchestrator_proto::{ErrorCode, WireError};

/// The front ends an operator can act through, as recorded in the trajectory's `via` detail.
pub mod via {
    pub const SOCKET: &str = "socket";
    pub const HTTP: &str = "http";
    pub const CONSOLE: &str = "console";
}

/// Who an operation acts for, as recorded in the trajectory (`actor`) and on overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The peer's uid, when the front end knows one (the control socket does).
    pub uid: Option<u32>,
    /// The front end an operator acted through (`socket`, `http`, `console`), recorded as the
    /// `via` detail of the transitions they make; `None` for the daemon's own parts.
    pub via: Option<&'static str>,
}

impl Actor {
    /// A peer of the control socket, by its user name.
    pub fn peer(p: &Peer) -> Actor {
        Actor {
            name: p.user().to_string(),
            uid: Some(p.uid),
            via: Some(via::SOCKET),
        }
    }

    /// An actor known by name only: an HTTP token (`http:<token id>`), or a part of the daemon.
    pub fn named(name: impl Into<String>) -> Actor {
        Actor {
            name: name.into(),
            uid: None,
            via: None,
        }
    }

    /// The same actor, acting through `channel` (one of [`via`]).
    pub fn via(self, channel: &'static str) -> Actor {
        Actor {
            via: Some(channel),
            ..self
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

/// Task ids are ULIDs: 26 Crockford base32 characters. Checking first gives a clear error instead of
/// a `not_found` for what is plainly not an id. The id must be canonical (the form the daemon hands
/// out): the decoder alone would accept values past the 128-bit range by dropping their top bits.
pub fn check_id(id: &str) -> Result<(), WireError> {
    let canonical = ulid::Ulid::from_string(id).is_ok_and(|u| u.to_string() == id);
    if !canonical {
        let shown: String = id.chars().take(40).collect();
        return Err(WireError::new(
            ErrorCode::InvalidId,
            format!("{shown:?} is not a task id (expected a 26-character ULID)"),
        ));
    }
    Ok(())
}
