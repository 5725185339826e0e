//! Ctrl-C, or a SIGTERM or SIGHUP, during `orchbench peers`: the run stops at its next check as it
//! would on an error, so that every process it started (daemons, `pueued`, PostgreSQL, the
//! drivers) is ended by its guard and its directory removed. Without this the signal's default
//! ended the command alone and left them running. The long phases check at least every 2 s (each
//! progress line, each poll of our daemon), our own submits before each request; a short one runs
//! to its end first.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note(_: libc::c_int) {
    // Only a store: all a signal handler may safely do.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Note SIGINT, SIGTERM and SIGHUP instead of dying of them.
pub fn install() {
    let handler = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

/// Whether a signal has been noted.
pub fn noted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once a signal has been noted.
pub fn check() -> Result<()> {
    if noted() {
        bail!("interrupted by a signal; every process the run started is being ended");
    }
    Ok(())
}
