//! `route`: the routing decision for a goal, without writing anything.

use crate::daemon::Daemon;
use crate::tasks::route;
use orchestrator_proto::{Response, WireError};

pub fn handle(d: &Daemon, goal: &str, capabilities: &[String]) -> Result<Response, WireError> {
    route::preview(d, goal, capabilities).map(Response::Route)
}
