//! Time as the daemon sees it: the [`Clock`] every subsystem reads (milliseconds since the Unix
//! epoch, as the store keeps them), and RFC 3339 UTC for display.
//!
//! The daemon holds one [`Clock`] and hands it to everything that stamps or compares times: the
//! application layer, the dispatcher, leases, the sweeper, gates, lifecycle. Pure code (the state
//! machine, routing) takes `at_ms` parameters instead. Production runs on [`Clock::system`], a plain
//! `SystemTime::now()`. Unit tests use a [`ManualClock`]; end-to-end tests run the real binary on an
//! offset clock they move ([`TEST_CLOCK_ENV`]), so nothing waits on the wall clock to see a TTL,
//! a lease or the shadow window pass.
//!
//! Real time stays where real time is meant, and does not go through the clock: log timestamps,
//! the daemon's uptime, how long a sweep took, the `Instant`-measured timeouts and kill graces of
//! specialist and delivery processes (signals are sent in real time), and the HTTP rate limits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Test hook: when set, the daemon's clock is the wall clock plus the offset in milliseconds
/// written (as a decimal integer) in the file this names; a missing file is an offset of 0. The
/// end-to-end tests move it to make TTLs, leases and the shadow window pass without waiting.
/// Not for production: it is read only at start, and only when set.
pub const TEST_CLOCK_ENV: &str = "ORCHESTRATOR_TEST_CLOCK";

/// How often an offset clock looks at its file to wake timers after a move; its readings look at
/// the file every time, so a move is seen by the first request after it.
const POLL: Duration = Duration::from_millis(5);

/// Real wall-clock milliseconds since the epoch. A clock set before 1970 reads as 0 rather than
/// failing. The daemon reads time through its [`Clock`]; this is for tools and the clock itself.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const RFC3339_LAST_MS: i64 = 253_402_300_799_999;

/// RFC 3339 with milliseconds, UTC: `2026-11-23T22:30:11.123Z`. A time past the year 9999 (an
/// expiry of a clock set far ahead plus a long TTL) is written as the last one RFC 3339 has,
/// rather than failing.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, RFC3339_LAST_MS) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the epoch of an RFC 3339 time as [`rfc3339`] writes it.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The daemon's clock. Cheap to clone; every clone reads the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    System,
    Manual(Arc<Manual>),
    Offset(Arc<OffsetFile>),
}

impl Clock {
    /// The wall clock.
    pub fn system() -> Clock {
        Clock {
            inner: Inner::System,
        }
    }

    /// The wall clock, or the test offset clock when [`TEST_CLOCK_ENV`] is set.
    pub fn from_env() -> Clock {
        match std::env::var_os(TEST_CLOCK_ENV) {
            Some(path) if !path.is_empty() => {
                tracing::warn!(
                    file = %Path::new(&path).display(),
                    "test hook {TEST_CLOCK_ENV} is set: the clock is the wall clock plus the offset in that file"
                );
                Clock::offset_file(PathBuf::from(path))
            }
            _ => Clock::system(),
        }
    }

    /// The wall clock plus the offset (milliseconds) in `path`.
    pub fn offset_file(path: PathBuf) -> Clock {
        let (moved, _) = watch::channel(0);
        Clock {
            inner: Inner::Offset(Arc::new(OffsetFile {
                path,
                seen: Mutex::new(Seen::default()),
                moved,
                poller: Once::new(),
            })),
        }
    }

    /// Milliseconds since the epoch.
    #[inline]
    pub fn now_ms(&self) -> i64 {
        match &self.inner {
            Inner::System => now_ms(),
            Inner::Manual(m) => m.now.load(Ordering::SeqCst),
            Inner::Offset(o) => now_ms().saturating_add(o.offset_ms()),
        }
    }

    /// A point in time to measure a wait from, with [`Clock::since`].
    pub fn mark(&self) -> Mark {
        let shift_ms = match &self.inner {
            Inner::System => 0,
            Inner::Manual(m) => m.now.load(Ordering::SeqCst),
            Inner::Offset(o) => o.offset_ms(),
        };
        Mark {
            at: Instant::now(),
            shift_ms,
        }
    }

    /// How long since `mark`: monotonic time on the wall clock (a wall-clock step does not make a
    /// timer fire early or late), plus however far a test clock was moved meanwhile.
    pub fn since(&self, mark: &Mark) -> Duration {
        let moved = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        match &self.inner {
            Inner::System => mark.at.elapsed(),
            Inner::Manual(m) => moved(m.now.load(Ordering::SeqCst) - mark.shift_ms),
            Inner::Offset(o) => mark.at.elapsed() + moved(o.offset_ms() - mark.shift_ms),
        }
    }

    /// Moves of this clock, for timers that sleep until a deadline: they wait on
    /// [`Moves::moved`] besides their sleep and re-check. The wall clock never moves.
    pub fn moves(&self) -> Moves {
        match &self.inner {
            Inner::System => Moves { rx: None },
            Inner::Manual(m) => Moves {
                rx: Some(m.moved.subscribe()),
            },
            Inner::Offset(o) => {
                o.start_poller();
                Moves {
                    rx: Some(o.moved.subscribe()),
                }
            }
        }
    }
}

/// See [`Clock::mark`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    at: Instant,
    shift_ms: i64,
}

/// See [`Clock::moves`].
pub struct Moves {
    rx: Option<watch::Receiver<i64>>,
}

impl Moves {
    /// Resolves when the clock was moved since the last call (or since [`Clock::moves`]); never
    /// for the wall clock.
    pub async fn moved(&mut self) {
        match &mut self.rx {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The clock is gone; nothing will move it again.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// A clock that stands still until told, for unit tests.
#[derive(Debug)]
struct Manual {
    now: AtomicI64,
    moved: watch::Sender<i64>,
}

/// The handle that moves a manual [`Clock`].
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        let (moved, _) = watch::channel(start_ms);
        ManualClock {
            inner: Arc::new(Manual {
                now: AtomicI64::new(start_ms),
                moved,
            }),
        }
    }

    pub fn clock(&self) -> Clock {
        Clock {
            inner: Inner::Manual(Arc::clone(&self.inner)),
        }
    }

    pub fn advance(&self, by: Duration) {
        let now = self
            .inner
            .now
            .fetch_add(duration_ms(by), Ordering::SeqCst)
            .saturating_add(duration_ms(by));
        self.inner.moved.send_replace(now);
    }
}

/// The test hook's clock: the offset lives in a file the tests rewrite (by rename).
#[derive(Debug)]
struct OffsetFile {
    path: PathBuf,
    seen: Mutex<Seen>,
    moved: watch::Sender<i64>,
    poller: Once,
}

/// The file as last read: which file it was, and the offset it held.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Seen {
    identity: Option<(u64, u64, i64, i64, u64)>,
    offset_ms: i64,
}

impl OffsetFile {
    /// The current offset: a `stat` every call, a read when the file changed.
    fn offset_ms(&self) -> i64 {
        use std::os::unix::fs::MetadataExt;
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let identity = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()));
        if identity != seen.identity {
            let offset = match identity {
                None => Some(0),
                Some(_) => std::fs::read_to_string(&self.path)
                    .ok()
                    .and_then(|t| t.trim().parse::<i64>().ok()),
            };
            match offset {
                Some(ms) => {
                    *seen = Seen {
                        identity,
                        offset_ms: ms,
                    };
                    self.moved.send_if_modified(|v| {
                        let changed = *v != ms;
                        *v = ms;
                        changed
                    });
                }
                // Half-written or garbled: keep the last offset and look again next time.
                None => {
                    tracing::warn!(file = %self.path.display(), "test clock: unreadable offset")
                }
            }
        }
        seen.offset_ms
    }

    /// A thread that looks at the file every [`POLL`], so that timers wake when a test moves the
    /// clock even while nothing else reads it. It ends with the clock.
    fn start_poller(self: &Arc<Self>) {
        self.poller.call_once(|| {
            let weak: Weak<OffsetFile> = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("test-clock".into())
                .spawn(move || {
                    while let Some(clock) = weak.upgrade() {
                        clock.offset_ms();
                        drop(clock);
                        std::thread::sleep(POLL);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "test clock: cannot start its poller; timers wake on their own schedule");
            }
        });
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn store_times_parse_back_to_milliseconds() {
        assert_eq!(
            rfc3339_ms(&rfc3339(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            rfc3339_ms("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(rfc3339_ms("yesterday"), None);
    }

    use super::*;

    #[test]
    fn rfc3339_writes_the_ends_of_its_range() {
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(RFC3339_LAST_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(&rfc3339(i64::MAX)), Some(RFC3339_LAST_MS));
    }

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let manual = ManualClock::new(1_000);
        let clock = manual.clock();
        let mark = clock.mark();
        assert_eq!(clock.now_ms(), 1_000);
        manual.advance(Duration::from_millis(2_500));
        assert_eq!(clock.now_ms(), 3_500);
        assert_eq!(clock.clone().now_ms(), 3_500, "clones share the time");
        assert_eq!(clock.since(&mark), Duration::from_millis(2_500));
    }

    #[test]
    fn an_offset_clock_follows_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        let clock = Clock::offset_file(path.clone());
        let mark = clock.mark();
        let before = now_ms();
        let read = clock.now_ms();
        assert!(
            read >= before && read <= now_ms(),
            "no file: the wall clock"
        );

        let tmp = dir.path().join("offset.tmp");
        std::fs::write(&tmp, "3600000\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let read = clock.now_ms();
        assert!(read >= before + 3_600_000, "{read} vs {before}");
        assert!(clock.since(&mark) >= Duration::from_secs(3_600));

        // A garbled file keeps the last offset.
        std::fs::write(&path, "soon").unwrap();
        assert!(clock.now_ms() >= before + 3_600_000);
    }

    #[test]
    fn moves_wake_a_timer_waiting_on_the_clock() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let manual = ManualClock::new(0);
            let mut moves = manual.clock().moves();
            manual.advance(Duration::from_secs(1));
            tokio::time::timeout(Duration::from_secs(10), moves.moved())
                .await
                .expect("a move wakes the waiter, even one made before it waited");

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("offset");
            let clock = Clock::offset_file(path.clone());
            let mut moves = clock.moves();
            std::fs::write(&path, "5000").unwrap();
            tokio::time::timeout(Duration::from_secs(10), moves.moved())
                .await
                .expect("the poller sees the file change");
        });
    }
}
