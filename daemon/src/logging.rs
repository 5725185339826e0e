//! Where log lines go, and the log line every committed transition gets.
//!
//! Started by systemd, the daemon's stderr is a stream into the journal; it then logs through
//! journald's native protocol instead, so that fields arrive as journal fields an operator can
//! filter on (`journalctl -u orchestrator MODE=synthetic`, `TASK_ID=…`). Anywhere else it writes
//! plain or JSON lines to stderr.
//!
//! Transitions are logged from the store's broadcast of committed trajectory events, never from the
//! writer thread, so logging cannot slow a group commit, and on a thread of its own, not on the
//! runtime's workers that answer requests. The stderr lines of the transitions already queued are
//! written together, 64 KiB a write at most, not one write each: a sweep or a burst of submits
//! commits thousands a second. The same follower counts them for `orchctl metrics`, and tells the
//! metrics which tasks wait for approval and since when.

use crate::clock::rfc3339_ms;
use crate::daemon::Daemon;
use crate::gate::synthetic::HARNESS;
use crate::metrics::Metrics;
use orchestrator_proto::task::{TaskState, TrajectoryEvent};
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

mod fields;
mod time;

/// Most tasks in `awaiting_approval` read back at start (newest first) for the approval metrics.
const AWAITING_SEED_LIMIT: u32 = 1000;

/// Most transitions logged in one go, their lines held and written together.
const DRAIN: usize = 1024;

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// The journal when stderr is connected to it (started by systemd), else text on stderr.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// journald's native protocol, with structured fields.
    Journald,
}

/// What [`init`] settled on, for the first log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr,
}

/// True when `JOURNAL_STREAM` (`<device>:<inode>`, set by systemd for a service whose output goes
/// to the journal) names the file that stderr is. Checking the identity, not only the variable,
/// keeps a daemon whose stderr was redirected elsewhere (by `--daemonize`, a shell, a child of a
/// service) on stderr.
pub fn journal_stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&var.to_string_lossy(), st.st_dev, st.st_ino)
}

/// Install the global subscriber. The level comes from `ORCHESTRATOR_LOG` (an `EnvFilter`
/// directive such as `debug` or `orchestrator::sweeper=debug`), `info` by default.
pub fn init(format: LogFormat) -> LogTarget {
    let filter =
        || EnvFilter::try_from_env("ORCHESTRATOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = match format {
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Journald => true,
        LogFormat::Text | LogFormat::Json => false,
    };
    let mut journal_error = None;
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                // No prefix: fields keep their own names (MODE, TASK_ID), not F_MODE, F_TASK_ID.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("orchestratord".into());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return LogTarget::Journald;
            }
            Err(e) => journal_error = Some(e),
        }
    }
    // Colours only for a person at a terminal; files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(ansi)
        .with_writer(|| Lines);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder
            .fmt_fields(fields::Fields)
            .with_timer(time::Utc)
            .init();
    }
    if let Some(e) = journal_error {
        tracing::warn!(error = %e, "cannot reach journald; logging to stderr");
    }
    LogTarget::Stderr
}

/// The writer of stderr lines. A thread that holds its lines ([`hold_lines`]) keeps them and writes
/// them together when the hold ends; every other line is written at once, whole, under stderr's
/// lock.
struct Lines;

/// One thread's held lines.
struct Held {
    on: bool,
    lines: Vec<u8>,
}

thread_local! {
    static HELD: std::cell::RefCell<Held> =
        const { std::cell::RefCell::new(Held { on: false, lines: Vec::new() }) };
}

/// Most bytes held before they are written all the same.
const HELD_BYTES: usize = 64 * 1024;

impl Lines {
    /// Keep `buf` if this thread holds its lines; false if it does not (or its thread-locals are
    /// already gone, as the thread ends).
    fn kept(buf: &[u8]) -> bool {
        HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if !h.on {
                return false;
            }
            h.lines.extend_from_slice(buf);
            if h.lines.len() >= HELD_BYTES {
                write_out(&mut h.lines);
            }
            true
        })
        .unwrap_or(false)
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if Self::kept(buf) {
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    /// A line (the formatter writes each in one call) under one hold of stderr's lock, so that no
    /// other thread's lines land inside it.
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if Self::kept(buf) {
            Ok(())
        } else {
            std::io::stderr().write_all(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        // Lines that cannot be written have nowhere else to go.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), lines);
        lines.clear();
    }
}

/// Keep the stderr lines this thread logs until the returned hold is dropped, then write them in
/// as few writes as they fit in ([`HELD_BYTES`] each). A panic drops the hold too, so nothing
/// formatted is lost. (Lines sent to the journal are sent one by one all the same.)
#[must_use]
fn hold_lines() -> Hold {
    let _ = HELD.try_with(|h| h.borrow_mut().on = true);
    Hold
}

/// This thread's lines are held while it lives.
struct Hold;

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            h.on = false;
            write_out(&mut h.lines);
        });
    }
}

/// One log line per committed trajectory event, with the journal fields `TASK_ID`, `ACTION`,
/// `FROM` (absent for the event that creates the task), `TO`, `ACTOR` and `MODE` (the daemon's
/// mode when the event was logged); and the transitions counter of `orchctl metrics`.
///
/// Runs until `stop`, then logs what is still queued. Cancel `stop` only after the store has
/// closed, so that the last transitions of a shutdown are logged too.
///
/// The approval metrics are read from the store once `ready` is cancelled (the daemon is ready):
/// with many tasks waiting the read takes tens of milliseconds, which the start need not wait for
/// (docs/BENCHMARKS.md, "Ready on 1,000,000 tasks"). Transitions before it are logged as they come;
/// the read then replaces what they told the metrics with the store's state, and the transitions
/// committed meanwhile, followed after it, agree with it.
pub async fn follow_transitions(
    d: Arc<Daemon>,
    mut events: broadcast::Receiver<TrajectoryEvent>,
    ready: CancellationToken,
    stop: CancellationToken,
) {
    let mut seeded = false;
    loop {
        tokio::select! {
            biased;
            _ = ready.cancelled(), if !seeded => {
                seeded = true;
                awaiting_approval(&d).await;
            }
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let hold = hold_lines();
                    record(&d, &ev);
                    let lagged = drain(&d, &mut events);
                    drop(hold);
                    if lagged && seeded {
                        awaiting_approval(&d).await;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    missed_events(&d, missed);
                    if seeded {
                        awaiting_approval(&d).await;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = stop.cancelled() => break,
        }
    }
    loop {
        match events.try_recv() {
            Ok(ev) => record(&d, &ev),
            Err(TryRecvError::Lagged(missed)) => missed_events(&d, missed),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return,
        }
    }
}

/// Run `fut` (the transition follower) on a thread of its own named `name`, driven by the runtime's
/// timers and I/O but off its worker threads, so that formatting and writing a line per transition
/// never holds a worker that a request needs (docs/BENCHMARKS.md, "The transition log lines").
/// Resolves when `fut` does; a panic in it is raised again here, so the supervisor reports it.
/// Where no thread can be started, `fut` runs here instead.
pub async fn on_own_thread<F>(name: &'static str, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let slot = Arc::new(std::sync::Mutex::new(Some(fut)));
    let (done, ended) = tokio::sync::oneshot::channel();
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let fut = theirs.lock().ok().and_then(|mut f| f.take());
            if let Some(fut) = fut {
                let run = std::panic::AssertUnwindSafe(|| runtime.block_on(fut));
                let _ = done.send(std::panic::catch_unwind(run));
            }
        });
    match spawned {
        Ok(_) => match ended.await {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The thread ended without a word: only a panic while sending can do that.
            Err(_) => panic!("the {name} thread ended without a verdict"),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the {name} thread; running it on the runtime");
            let fut = slot.lock().ok().and_then(|mut f| f.take());
            if let Some(fut) = fut {
                fut.await;
            }
        }
    }
}

/// Log the transitions already queued, [`DRAIN`] at most, without waiting for more. True if some
/// were missed.
fn drain(d: &Daemon, events: &mut broadcast::Receiver<TrajectoryEvent>) -> bool {
    for _ in 0..DRAIN {
        match events.try_recv() {
            Ok(ev) => record(d, &ev),
            Err(TryRecvError::Lagged(missed)) => {
                missed_events(d, missed);
                return true;
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    false
}

/// Tell the metrics which tasks are in `awaiting_approval` now and since when: at start, and after
/// the follower fell behind and may have missed some of their transitions. One read, of the newest
/// [`AWAITING_SEED_LIMIT`].
async fn awaiting_approval(d: &Daemon) {
    match d.store.awaiting_since(AWAITING_SEED_LIMIT).await {
        Ok(since) => d.metrics.reset_awaiting(since),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the tasks awaiting approval for the metrics")
        }
    }
    d.metrics.awaiting_known();
}

fn record(d: &Daemon, ev: &TrajectoryEvent) {
    Metrics::inc(&d.metrics.transitions);
    if ev.from.is_none() && ev.actor == HARNESS {
        d.metrics.not_for_approval(&ev.task_id);
    }
    // Only entering or leaving `awaiting_approval` needs the time; most events leave it unread.
    let waits =
        ev.to == TaskState::AwaitingApproval || ev.from == Some(TaskState::AwaitingApproval);
    let at = if waits { rfc3339_ms(&ev.at) } else { Some(0) };
    if let Some(at) = at {
        d.metrics
            .approval_transition(&ev.task_id, ev.from, ev.to, &ev.action, at);
    }
    let from = ev.from.map(|s| s.as_str());
    tracing::info!(
        TASK_ID = %ev.task_id,
        ACTION = %ev.action,
        FROM = from,
        TO = %ev.to,
        ACTOR = %ev.actor,
        MODE = %d.mode().effective,
        "task {} {}: {} → {} by {}",
        ev.task_id,
        ev.action,
        from.unwrap_or("(new)"),
        ev.to,
        ev.actor,
    );
}

fn missed_events(d: &Daemon, missed: u64) {
    // Still counted: the counter says what was committed, not what was logged.
    Metrics::add(&d.metrics.transitions, missed);
    tracing::warn!(
        missed,
        "transition logging fell behind; some transitions were not logged"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::Store;
    use orchestrator_proto::task::TaskKind;

    /// The tasks waiting for approval are read from the store once the daemon is ready, and a
    /// scrape waits for that read: right after a start it counts a wait that began before it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_scrape_right_after_ready_counts_the_waits_read_from_the_store() {
        const NOW: i64 = 1_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let since = NOW - 60_000;
        let plan = crate::tasks::testing::completed("W", since, since, true, since, NOW + 1);
        assert_eq!(
            store.submit(plan).await.unwrap().state,
            TaskState::AwaitingApproval
        );
        let clock = ManualClock::new(NOW);
        let d = Arc::new(crate::daemon::Daemon::for_test(
            store.clone(),
            dir.path(),
            TaskKind::Synthetic,
            clock.clock(),
        ));
        let (ready, stop) = (CancellationToken::new(), CancellationToken::new());
        let follower = tokio::spawn(follow_transitions(
            Arc::clone(&d),
            store.subscribe(),
            ready.clone(),
            stop.clone(),
        ));
        ready.cancel();
        let text = d.metrics_text().await;
        assert!(
            text.contains("\norchestrator_oldest_awaiting_approval_seconds 60\n"),
            "{text}"
        );
        stop.cancel();
        follower.await.unwrap();
    }

    /// The follower runs on a thread of its own, with the runtime's timers at hand there, and a
    /// panic in it reaches whoever awaits it, with its message, as the supervisor needs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_its_own_thread_the_follower_keeps_the_runtime_and_its_panics() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        on_own_thread("test-follower", async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        })
        .await;
        assert_eq!(rx.await.unwrap().as_deref(), Some("test-follower"));

        let failed = tokio::spawn(on_own_thread("test-follower", async {
            panic!("a test panic");
        }))
        .await
        .unwrap_err();
        assert!(failed.is_panic());
        assert_eq!(
            crate::supervisor::panic_message(failed.into_panic()),
            "a test panic"
        );
    }

    /// While a hold lives a thread's lines stay with it, and leave together when it ends (by a
    /// panic too); before and after, and on other threads, nothing is held.
    #[test]
    fn held_lines_leave_together_when_the_hold_ends() {
        use std::io::Write;
        fn held() -> (bool, Vec<u8>) {
            HELD.with(|h| (h.borrow().on, h.borrow().lines.clone()))
        }
        std::thread::spawn(|| {
            Lines
                .write_all(b"(a test line, written at once)\n")
                .unwrap();
            assert_eq!(held(), (false, Vec::new()));
            let hold = hold_lines();
            Lines.write_all(b"(a held test line)\n").unwrap();
            Lines.write_all(b"(another held test line)\n").unwrap();
            assert_eq!(
                held(),
                (
                    true,
                    b"(a held test line)\n(another held test line)\n".to_vec()
                )
            );
            std::thread::spawn(|| assert_eq!(held(), (false, Vec::new())))
                .join()
                .unwrap();
            drop(hold);
            assert_eq!(held(), (false, Vec::new()));
            // A panic while lines are held writes them on its way out.
            let unwound = std::panic::catch_unwind(|| {
                let _hold = hold_lines();
                Lines
                    .write_all(b"(a held test line before a panic)\n")
                    .unwrap();
                panic!("a test panic");
            });
            assert!(unwound.is_err());
            assert_eq!(held(), (false, Vec::new()));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn journal_stream_must_name_stderr_exactly() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("", 8, 1234));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }
}
