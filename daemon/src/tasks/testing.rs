//! What unit tests of the daemon's parts share.

use crate::clock::Clock;
use crate::config::Config;
use crate::daemon::{Daemon, ModeState, Paths};
use crate::store::Store;
use orchestrator_proto::task::TaskKind;
use std::path::Path;

/// A daemon around `store` whose state directory is `dir` (the socket in it), on the built-in
/// config, in effective mode `effective` since 0, with time from `clock`. Nothing is dispatched:
/// the dispatcher's end of the channel is dropped.
pub fn daemon(store: Store, dir: &Path, effective: TaskKind, clock: Clock) -> Daemon {
    let paths = Paths {
        config: None,
        socket: dir.join("sock"),
        state_dir: dir.to_path_buf(),
        socket_from_flag: false,
        state_dir_from_flag: false,
    };
    let (dispatch, _) = crate::dispatch::DispatchHandle::channel();
    let mode = ModeState {
        effective,
        since_ms: 0,
        note: None,
    };
    Daemon::new(store, paths, Config::builtin(), mode, dispatch, clock)
}
