//! Background threads at a lower scheduling priority, so that requests get most of the CPU while
//! they run (the integrity check, notification delivery). Linux gives each thread its own nice
//! value.

/// The lowest priority, the one these threads run at.
pub const LOWEST: libc::c_int = 19;

/// Lower the calling thread to nice `nice` ([`LOWEST`] at most). Best effort: a thread that
/// cannot lower itself runs on at the daemon's priority, and the reason is logged at debug level.
pub fn lower_this_thread(nice: libc::c_int, what: &str) {
    // SAFETY: gettid and setpriority take and return plain integers; they change only this
    // thread's scheduling.
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if done != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the priority of {what}");
    }
}
