//! A test-only fault hook: `ORCHESTRATOR_TEST_FAULT=<task>[:panic|:exit|:hang][@<ms>]` makes one
//! supervised task (see the `supervisor` module) fail on purpose, so the end-to-end tests can show
//! that every task is watched. Unset (the only setting in production) it does nothing.
//!
//! - `panic` (the default): the task panics;
//! - `exit`: the task returns as if its work were done;
//! - `hang`: the task stops working but does not end (the store writer holds its jobs unanswered,
//!   the others stop answering), for the watchdog's liveness probe to notice.
//!
//! `@<ms>` delays the fault by that long after the task started (default 0); `@signal` holds it
//! until the daemon receives `SIGUSR2` (installed only then), so a test can fail a task exactly when
//! the daemon is up instead of guessing how long the start takes. The variable is read once, at
//! start; a value that does not parse stops the start, so a mistyped test cannot pass by injecting
//! nothing. See `docs/ARCHITECTURE.md`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Notify;

pub const VARIABLE: &str = "ORCHESTRATOR_TEST_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Panic,
    Exit,
    Hang,
}

/// When the fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long after the task started.
    After(Duration),
    /// When the daemon receives `SIGUSR2`.
    Signal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub task: String,
    pub how: How,
    pub when: When,
}

impl Fault {
    /// Parse `<task>[:panic|:exit|:hang][@<ms>|@signal]`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let (head, when) = match s.split_once('@') {
            Some((h, "signal")) => (h, When::Signal),
            Some((h, ms)) => {
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("{VARIABLE}: `{ms}` is neither `signal` nor a number of milliseconds")
                })?;
                (h, When::After(Duration::from_millis(ms)))
            }
            None => (s, When::After(Duration::ZERO)),
        };
        let (task, how) = match head.split_once(':') {
            Some((t, "panic")) => (t, How::Panic),
            Some((t, "exit")) => (t, How::Exit),
            Some((t, "hang")) => (t, How::Hang),
            Some((_, other)) => {
                return Err(format!(
                    "{VARIABLE}: `{other}` is not one of panic, exit, hang"
                ))
            }
            None => (head, How::Panic),
        };
        if task.is_empty() {
            return Err(format!("{VARIABLE}: no task named"));
        }
        Ok(Fault {
            task: task.to_string(),
            how,
            when,
        })
    }
}

static ARMED: AtomicBool = AtomicBool::new(false);

fn armed_notify() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(Notify::new)
}

/// Whether an `@signal` fault has been released by `SIGUSR2`.
pub fn armed() -> bool {
    ARMED.load(Ordering::SeqCst)
}

/// Wait until `SIGUSR2` released the fault.
pub async fn until_armed() {
    let notified = armed_notify().notified();
    if armed() {
        return;
    }
    notified.await;
}

/// Install the `SIGUSR2` listener when the hook asks for one (inside the runtime, before READY).
pub fn listen_for_signal() -> std::io::Result<()> {
    if !matches!(load(), Ok(Some(f)) if f.when == When::Signal) {
        return Ok(());
    }
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    tokio::spawn(async move {
        if usr2.recv().await.is_some() {
            ARMED.store(true, Ordering::SeqCst);
            armed_notify().notify_waiters();
        }
    });
    Ok(())
}

static FAULT: OnceLock<Option<Fault>> = OnceLock::new();

/// Read the variable (once; later calls return the first answer).
pub fn load() -> Result<Option<&'static Fault>, String> {
    if let Some(f) = FAULT.get() {
        return Ok(f.as_ref());
    }
    let parsed = match std::env::var(VARIABLE) {
        Ok(v) if !v.is_empty() => Some(Fault::parse(&v)?),
        _ => None,
    };
    if let Some(f) = &parsed {
        tracing::warn!(task = %f.task, how = ?f.how, when = ?f.when, "{VARIABLE} is set: this daemon fails on purpose (a test hook)");
    }
    Ok(FAULT.get_or_init(|| parsed).as_ref())
}

/// The fault injected into `task`, if the hook names it.
pub fn injected(task: &str) -> Option<&'static Fault> {
    load().ok().flatten().filter(|f| f.task == task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_kind_and_delay() {
        let f = Fault::parse("dispatcher:exit@250").unwrap();
        assert_eq!(f.task, "dispatcher");
        assert_eq!(f.how, How::Exit);
        assert_eq!(f.when, When::After(Duration::from_millis(250)));
        let f = Fault::parse("sweeper").unwrap();
        assert_eq!((f.how, f.when), (How::Panic, When::After(Duration::ZERO)));
        let f = Fault::parse("store-writer:hang@signal").unwrap();
        assert_eq!((f.how, f.when), (How::Hang, When::Signal));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(Fault::parse("dispatcher:explode").is_err());
        assert!(Fault::parse("dispatcher@soon").is_err());
        assert!(Fault::parse("dispatcher@Signal").is_err());
        assert!(Fault::parse(":panic").is_err());
    }
}
