//! Background threads at a lower scheduling priority, so that requests get most of the CPU while
//! they run (the integrity check, notification delivery). Linux gives each thread its own nice
//! value and its own scheduling policy.

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

/// Put the calling thread under `SCHED_IDLE`: it runs when a core has nothing else to do, and a
/// core that runs only such threads counts as idle when the kernel places a woken thread, which
/// then takes that core at once instead of queueing behind a busy one. At nice 19 a woken
/// `orchctl` could wait for a whole scheduler tick behind the writer while the other core ran the
/// integrity check (docs/BENCHMARKS.md, "The sweep and the integrity check"). Best effort: a thread
/// the kernel refuses it runs at nice [`LOWEST`] instead.
pub fn idle_this_thread(what: &str) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the parameter for the duration of the call; pid 0 is the
    // calling thread, whose scheduling alone it changes.
    let done = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if done != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot run {what} under SCHED_IDLE");
        lower_this_thread(LOWEST, what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_thread_runs_under_sched_idle() {
        let policy = std::thread::spawn(|| {
            idle_this_thread("a test thread");
            // SAFETY: sched_getscheduler takes and returns plain integers.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // Only that thread: the one that spawned it keeps its policy.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
