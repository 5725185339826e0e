//! `reload`: the same reload path as SIGHUP, answered synchronously.

use crate::daemon::Daemon;
use crate::lifecycle::ReloadTrigger;
use crate::tasks::reload::reload;
use orchestrator_proto::{Response, WireError};
use std::sync::Arc;

pub async fn handle(d: &Arc<Daemon>) -> Result<Response, WireError> {
    let report = reload(d, ReloadTrigger::Orchctl).await?;
    Ok(Response::Reload(report))
}
