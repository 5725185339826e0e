//! Socket activation (`orchestrator.socket`): systemd binds the control socket itself, starts the
//! service on the first connection, and passes the listening socket as file descriptor 3 with
//! `LISTEN_PID` = our pid and `LISTEN_FDS` = 1. The daemon then serves on it instead of binding,
//! and leaves the socket file alone when it exits: systemd owns it and keeps listening.

use super::BindError;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

fn invalid(message: String) -> BindError {
    BindError::Activation(message)
}

/// The listening socket systemd passed us with the path it is bound to, or `None` when this start
/// was not socket-activated.
pub fn passed_listener() -> Result<Option<(UnixListener, Option<PathBuf>)>, BindError> {
    let count = sd_notify::listen_fds()
        .map_err(|e| invalid(format!("LISTEN_FDS/LISTEN_PID: {e}")))?
        .len();
    if count == 0 {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!(
            count,
            "systemd passed several sockets; serving on the first, ignoring the rest"
        );
    }
    // SAFETY: LISTEN_PID names this process and LISTEN_FDS counts at least one descriptor, so by
    // the socket activation protocol fd 3 is open and was handed to us to own; nothing else in
    // this process has taken it (this runs once, at start).
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    // systemd passes it without close-on-exec; specialists must not inherit the control socket.
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| {
        invalid(format!(
            "fd {LISTEN_FDS_START}: cannot set close-on-exec: {e}"
        ))
    })?;
    let ty = getsockopt(&fd, sockopt::SockType)
        .map_err(|e| invalid(format!("fd {LISTEN_FDS_START} is not a socket: {e}")))?;
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
    let addr = getsockname::<UnixAddr>(fd.as_raw_fd()).map_err(|e| {
        invalid(format!(
            "fd {LISTEN_FDS_START} is not a Unix-domain socket: {e}"
        ))
    })?;
    if ty != SockType::Stream || !listening {
        return Err(invalid(format!(
            "fd {LISTEN_FDS_START} is not a listening stream socket (use ListenStream= in the socket unit)"
        )));
    }
    let listener = UnixListener::from(fd);
    listener.set_nonblocking(true).map_err(|e| {
        invalid(format!(
            "fd {LISTEN_FDS_START}: cannot make it non-blocking: {e}"
        ))
    })?;
    Ok(Some((listener, addr.path().map(PathBuf::from))))
}
