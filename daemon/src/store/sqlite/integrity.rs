//! The integrity check's reading: `PRAGMA quick_check`, stopped when the store closes, and giving
//! way to bulk work.
//!
//! The check reads every page under one snapshot (seconds on a large store). Bulk work (a sweep's
//! expiries and deletions, seconds of the writer's time) beside it would compete for the cores, and
//! the check's snapshot would keep the log from being copied back while the sweep fills it. So
//! when bulk work commits while the check reads, the check stops, waits until the bulk work has
//! paused for [`BULK_QUIET`], and starts again from the beginning — at most [`GIVE_WAY`] times, so
//! that bulk work without end cannot put the check off for ever (docs/BENCHMARKS.md, "The sweep
//! and the integrity check").

use rusqlite::Connection;
use std::ffi::c_int;
use std::time::{Duration, Instant};

/// Most lines of a failed integrity check kept for `status` and the log.
const CHECK_LINES: usize = 10;

/// Times a check starts again after giving way to bulk work; the next start reads through.
pub(super) const GIVE_WAY: u32 = 3;
/// How long bulk work must have paused before a check that gave way starts again.
pub(super) const BULK_QUIET: Duration = Duration::from_millis(500);
/// Longest wait for that pause, each time the check gives way.
pub(super) const MOST_WAIT: Duration = Duration::from_secs(60);
/// How often the waiting check looks at the bulk work.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// What the check watches while it reads.
pub(super) struct Watch<S, B> {
    /// True once the store closes: the check stops and answers the interruption.
    pub stop: S,
    /// Bulk groups committed so far: a change means bulk work is under way.
    pub bulk: B,
    pub quiet: Duration,
    pub most_wait: Duration,
}

/// What a check found (`ok`, or the first lines of its findings) and how many times it started.
pub(super) struct Checked {
    pub found: String,
    pub starts: u32,
}

/// Run `PRAGMA quick_check` on `conn`, looking at `watch` every `steps` steps of its work. An
/// error is SQLite's: an interruption once `stop` holds, or whatever kept the check from reading.
pub(super) fn check<S, B>(
    conn: &mut Connection,
    steps: c_int,
    watch: Watch<S, B>,
) -> rusqlite::Result<Checked>
where
    S: Fn() -> bool + Clone + Send + 'static,
    B: Fn() -> u64 + Clone + Send + 'static,
{
    let mut starts = 0;
    loop {
        starts += 1;
        let gives_way = starts <= GIVE_WAY;
        let at_start = (watch.bulk)();
        let (stop, bulk) = (watch.stop.clone(), watch.bulk.clone());
        conn.progress_handler(
            steps,
            Some(move || stop() || (gives_way && bulk() != at_start)),
        )?;
        let e = match quick_check(conn) {
            Ok(found) => return Ok(Checked { found, starts }),
            Err(e) => e,
        };
        // Only an interruption for bulk work is given way to: a closing store's, the last start's
        // and any other error (a page too damaged to read) are the answer.
        let interrupted = e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted);
        if !interrupted || !gives_way || (watch.stop)() || (watch.bulk)() == at_start {
            return Err(e);
        }
        tracing::debug!("store: the integrity check gives way to bulk work");
        wait_for_quiet(&watch);
        // A store that closed meanwhile gets no new reading.
        if (watch.stop)() {
            return Err(e);
        }
    }
}

/// Until bulk work has committed nothing for `quiet`, or `most_wait` has passed, or `stop` holds.
fn wait_for_quiet<S, B>(watch: &Watch<S, B>)
where
    S: Fn() -> bool,
    B: Fn() -> u64,
{
    let began = Instant::now();
    let mut seen = (watch.bulk)();
    let mut quiet_since = Instant::now();
    while !(watch.stop)() && began.elapsed() < watch.most_wait {
        std::thread::sleep(WAIT_STEP.min(watch.quiet));
        let now = (watch.bulk)();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= watch.quiet {
            return;
        }
    }
}

/// `PRAGMA quick_check`: `ok`, or the first lines of what it found.
fn quick_check(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let mut rows = stmt.query([])?;
    let mut lines = Vec::new();
    while let Some(row) = rows.next()? {
        if lines.len() == CHECK_LINES {
            lines.push("…".to_string());
            break;
        }
        lines.push(row.get::<_, String>(0)?);
    }
    Ok(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// A store whose check takes many more than a few steps.
    fn store() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT); CREATE INDEX t_b ON t (b);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO t SELECT i, printf('row %d', i) FROM n;",
        )
        .unwrap();
        conn
    }

    fn never() -> impl Fn() -> bool + Clone + Send + 'static {
        || false
    }

    fn watch<S, B>(stop: S, bulk: B) -> Watch<S, B> {
        Watch {
            stop,
            bulk,
            quiet: Duration::ZERO,
            most_wait: Duration::ZERO,
        }
    }

    #[test]
    fn without_bulk_work_the_check_reads_through_once() {
        let checked = check(&mut store(), 100, watch(never(), || 7)).unwrap();
        assert_eq!(checked.found, "ok");
        assert_eq!(checked.starts, 1);
    }

    /// Bulk work that commits all the time: the check gives way [`GIVE_WAY`] times, then reads
    /// through all the same.
    #[test]
    fn endless_bulk_work_puts_the_check_off_a_bounded_number_of_times() {
        let commits = Arc::new(AtomicU64::new(0));
        let bulk = move || commits.fetch_add(1, Ordering::Relaxed);
        let checked = check(&mut store(), 100, watch(never(), bulk)).unwrap();
        assert_eq!(checked.found, "ok");
        assert_eq!(checked.starts, GIVE_WAY + 1);
    }

    /// Bulk work that commits once while the check reads, then stops: one start again.
    #[test]
    fn the_check_starts_again_once_bulk_work_pauses() {
        let calls = Arc::new(AtomicU64::new(0));
        // The first start reads 0; its first look at the bulk work sees a commit (1); from then
        // on nothing more is committed.
        let bulk = move || calls.fetch_add(1, Ordering::Relaxed).min(1);
        let checked = check(&mut store(), 100, watch(never(), bulk)).unwrap();
        assert_eq!(checked.found, "ok");
        assert_eq!(checked.starts, 2);
    }

    /// The store closes while the check waits for bulk work to pause: it does not read again.
    #[test]
    fn a_store_closed_during_the_wait_is_not_read_again() {
        let closing = Arc::new(AtomicBool::new(false));
        let (stop, close) = (Arc::clone(&closing), Arc::clone(&closing));
        let looks = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&looks);
        // Each look at the bulk work sees a new commit. The looks: the start's, its progress
        // callback's, the one after the interruption (which closes the store), the wait's. A
        // fifth would be a new start's.
        let bulk = move || {
            let n = counted.fetch_add(1, Ordering::Relaxed);
            if n == 2 {
                close.store(true, Ordering::Relaxed);
            }
            n
        };
        let mut w = watch(move || stop.load(Ordering::Relaxed), bulk);
        w.most_wait = Duration::from_secs(60);
        let e = check(&mut store(), 100, w)
            .err()
            .expect("the check went on");
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        assert_eq!(looks.load(Ordering::Relaxed), 4, "the check read again");
    }

    /// An error that is not an interruption (here: the file is no database) is the answer at once,
    /// bulk work or not.
    #[test]
    fn another_error_is_answered_without_giving_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let mut conn = Connection::open(&path).unwrap();
        let looks = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&looks);
        // Every look at the bulk work sees a new commit.
        let bulk = move || counted.fetch_add(1, Ordering::Relaxed);
        let e = check(&mut conn, 100, watch(never(), bulk))
            .err()
            .expect("a file that is no database was checked");
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase)
        );
        // The start's own look, and no other: the check did not give way.
        assert_eq!(looks.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_closing_store_stops_the_check() {
        let closing = Arc::new(AtomicBool::new(true));
        let stop = move || closing.load(Ordering::Relaxed);
        let e = check(&mut store(), 100, watch(stop, || 0))
            .err()
            .expect("the check was not stopped");
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
    }
}
