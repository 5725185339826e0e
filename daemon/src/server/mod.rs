//! The control socket: binding it safely, accepting connections, and handing each
//! connection to [`connection::serve`].

pub mod activation;
mod connection;
pub mod handlers;

use crate::daemon::Daemon;
use nix::sys::stat::Mode as FileMode;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another orchestratord is already serving {0}; stop it first (systemctl stop orchestrator)"
    )]
    AlreadyRunning(String),
    #[error("{path}: {message}")]
    Unsafe { path: String, message: String },
    #[error("cannot bind {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("socket activation: {0}")]
    Activation(String),
}

/// Where the control socket came from. The daemon removes a socket it bound when it stops; one that
/// systemd passed (socket activation) stays, because systemd keeps listening on it.
pub struct Listener {
    pub listener: UnixListener,
    pub activated: bool,
    /// The path the socket is bound to: the configured one, or the one systemd bound.
    pub path: std::path::PathBuf,
}

/// The socket systemd passed, if this start was socket-activated; otherwise bind `path` ([`bind`]).
/// Call inside the tokio runtime.
pub fn listen(path: &Path) -> Result<Listener, BindError> {
    if let Some((std_listener, passed_path)) = activation::passed_listener()? {
        let listener = UnixListener::from_std(std_listener)
            .map_err(|e| BindError::Activation(format!("cannot use the passed socket: {e}")))?;
        let path = match passed_path {
            Some(p) if p != path => {
                tracing::warn!(
                    configured = %path.display(),
                    passed = %p.display(),
                    "the socket unit listens elsewhere than the configured socket; serving on the passed one"
                );
                p
            }
            Some(p) => p,
            None => path.to_path_buf(),
        };
        return Ok(Listener {
            listener,
            activated: true,
            path,
        });
    }
    Ok(Listener {
        listener: bind(path)?,
        activated: false,
        path: path.to_path_buf(),
    })
}

/// Create the socket's directory (mode 0750) if needed, replace a stale socket left by a killed
/// daemon, refuse to start beside a live one, then bind. The directory exists with its final
/// permissions before the socket does, so there is no window in which the socket is reachable by
/// anyone the directory would keep out.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(io_err)?;
        }
        let meta = std::fs::metadata(dir).map_err(io_err)?;
        if meta.permissions().mode() & 0o002 != 0 && meta.permissions().mode() & 0o1000 == 0 {
            return Err(BindError::Unsafe {
                path: dir.display().to_string(),
                message: "the socket directory is world-writable; use a private directory".into(),
            });
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::AlreadyRunning(path.display().to_string()));
            }
            tracing::warn!(socket = %path.display(), "replacing a stale socket left by a previous daemon");
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Ok(_) => {
            return Err(BindError::Unsafe {
                path: path.display().to_string(),
                message: "exists and is not a socket; refusing to replace it".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    // Group members may connect; the peer-credential check decides what they may do.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        FileMode::from_bits_truncate(0o660),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| io_err(io::Error::from(e)))?;
    Ok(listener)
}

/// Accept connections until shutdown, then wait for in-flight requests to finish.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = daemon.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let d = Arc::clone(&daemon);
                    tracker.spawn(connection::serve(d, stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: log, breathe, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still busy after 10 s; closing them");
    }
}
