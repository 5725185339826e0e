//! Default locations: system paths for root or under systemd, XDG paths otherwise.

use std::path::PathBuf;

pub const SYSTEM_SOCKET: &str = "/run/orchestrator/orchestrator.sock";
pub const SYSTEM_STATE_DIR: &str = "/var/lib/orchestrator";

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The socket path when neither a flag nor the config names one.
pub fn default_socket() -> PathBuf {
    // systemd's RuntimeDirectory= tells us where it made our directory.
    if let Some(dir) = env_dir("RUNTIME_DIRECTORY") {
        return dir.join("orchestrator.sock");
    }
    if is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    match env_dir("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("orchestrator").join("orchestrator.sock"),
        None => std::env::temp_dir()
            .join(format!("orchestrator-{}", nix::unistd::Uid::effective()))
            .join("orchestrator.sock"),
    }
}

/// The state directory when neither a flag nor the config names one.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = env_dir("STATE_DIRECTORY") {
        return dir;
    }
    if is_root() {
        return PathBuf::from(SYSTEM_STATE_DIR);
    }
    if let Some(dir) = env_dir("XDG_STATE_HOME") {
        return dir.join("orchestrator");
    }
    match env_dir("HOME") {
        Some(home) => home.join(".local/state/orchestrator"),
        None => std::env::temp_dir().join(format!(
            "orchestrator-state-{}",
            nix::unistd::Uid::effective()
        )),
    }
}

/// Where `orchctl` looks when given no `--socket` and no `ORCHCTL_SOCKET`: the system daemon's
/// socket if its directory exists, else the per-user one.
pub fn client_socket() -> PathBuf {
    let system = PathBuf::from(SYSTEM_SOCKET);
    if is_root() || system.parent().is_some_and(|d| d.exists()) {
        return system;
    }
    default_socket()
}
