//! One daemon per state directory.
//!
//! The state directory holds the store, the token and the specialists' task directories, and a
//! starting daemon takes over what it finds there: it stops the specialists a previous run left
//! and reclaims their tasks. A second daemon started on a directory in use would do that to a
//! daemon that is still running. So each daemon holds an exclusive `flock` on
//! `orchestratord.lock` in its state directory from before it opens the store until it exits; the
//! kernel releases it when the process ends, however it ends, so a killed daemon leaves no stale
//! lock. The file holds the holder's pid, for the refusal's message.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "orchestratord.lock";

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateDirLock {
    _held: Flock<File>,
}

impl StateDirLock {
    /// Take the lock of `state_dir`, or say which daemon holds it.
    pub fn take(state_dir: &Path) -> Result<StateDirLock, String> {
        let path = state_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // As the pidfile of `--daemonize` is locked (`crate::background`).
        let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((mut file, Errno::EWOULDBLOCK)) => return Err(in_use(state_dir, &path, &mut file)),
            Err((_, e)) => return Err(format!("cannot lock {}: {e}", path.display())),
        };
        let pid = std::process::id().to_string();
        held.set_len(0)
            .and_then(|()| held.rewind())
            .and_then(|()| held.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(StateDirLock { _held: held })
    }
}

fn in_use(state_dir: &Path, path: &Path, file: &mut File) -> String {
    let mut holder = String::new();
    let holder = match file.read_to_string(&mut holder) {
        Ok(_) if !holder.trim().is_empty() => format!(" (pid {})", holder.trim()),
        _ => String::new(),
    };
    format!(
        "another orchestratord{holder} is using the state directory {}: stop it first, or give \
         this one a state directory of its own (--state-dir); the lock is {}",
        state_dir.display(),
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDirLock::take(dir.path()).unwrap();
        let refused = StateDirLock::take(dir.path()).unwrap_err();
        assert!(
            refused.contains(&format!("(pid {})", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("--state-dir"), "{refused}");
        drop(first);
        assert!(StateDirLock::take(dir.path()).is_ok());
    }
}
