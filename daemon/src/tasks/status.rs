//! What the daemon is doing, in a line: for systemd's status and the watchdog.

use crate::daemon::Daemon;

/// The mode and the task counts, for `systemctl status`.
pub fn status_line(d: &Daemon) -> String {
    let counts = d.store.counts();
    let mode = d.mode().effective;
    let open: u64 = counts
        .entries()
        .iter()
        .filter(|(_, s, _)| !s.is_terminal())
        .map(|(_, _, n)| n)
        .sum();
    format!("mode {mode}; {open} open tasks, {} stored", counts.total())
}
