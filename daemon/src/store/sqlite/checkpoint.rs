//! Checkpoints beside the writer instead of inside its commits.
//!
//! In WAL mode every committed page goes to the log first and is copied back into the database
//! file by a checkpoint. SQLite's automatic checkpoint runs inside the commit that takes the log
//! past 1,000 frames, on the writer's thread, with a flush of the database file: a third of the
//! writer's time in a large sweep and 8 % of it under a submit load (docs/BENCHMARKS.md,
//! "Checkpoints beside the writer"). Here the writer's commit only wakes a thread of its own, which
//! checkpoints on a connection of its own (`PASSIVE`: it never blocks the writer or a reader) while
//! the writer goes on with the next group.
//!
//! A sweep's commits are no exception. They once checkpointed in their own commit, for fear of the
//! thread taking the second core for seconds; once commits were flushed beside the writer, that
//! checkpoint was what the sweep waited on (the database file's flush), while the thread copied
//! with a tenth of a core (docs/BENCHMARKS.md, "The sweep's checkpoints beside the writer").
//!
//! Durability does not move: a commit is durable once its frames are flushed to the log, before
//! any checkpoint. When the checkpoint thread falls far behind (a reader holds an old snapshot, or
//! the thread gets no CPU) or is gone, the writer checkpoints itself as SQLite would, so that the
//! log stays bounded.

use super::open_connection;
use crate::store::StoreError;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Frames in the log past which a commit wakes the checkpoint thread (SQLite's own threshold for
/// its automatic checkpoint).
pub(super) const WAKE_FRAMES: c_int = 1000;
/// Frames past which the writer checkpoints itself after a commit (about 16 MiB of log), so that
/// the log starts over: SQLite does so only once every frame was copied before a write begins,
/// which under a steady load the thread alone never achieves.
pub(super) const WRITER_FRAMES: c_int = 4 * WAKE_FRAMES;
/// How long the thread rests after a checkpoint that could not copy every frame (a reader still
/// needs the older ones), so that commits waking it again do not make it spin.
const HELD_BACK_REST: Duration = Duration::from_millis(5);

/// The checkpoint thread. Owned by the writer thread, which stops it before its last checkpoint.
pub(super) struct Checkpointer {
    wake: SyncSender<()>,
    /// The log's size in frames after the last commit, written by the hook, read by the thread.
    latest: Arc<AtomicI32>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Start the thread for the store at `path`. It opens its connection when first woken, so that
    /// a daemon that writes nothing keeps no connection (nor its memory) for it.
    pub(super) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let path = path.to_path_buf();
        let (wake, woken) = mpsc::sync_channel(1);
        let latest = Arc::new(AtomicI32::new(0));
        let read = Arc::clone(&latest);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&path, &woken, &read))
            .map_err(|e| StoreError::Sql(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            wake,
            latest,
            thread,
        })
    }

    /// Make `writer`'s commits wake the thread instead of checkpointing themselves.
    pub(super) fn install(&self, writer: &mut Connection) -> Result<(), StoreError> {
        writer.wal_hook(Some(hook(self.wake.clone(), Arc::clone(&self.latest))))?;
        Ok(())
    }

    /// Take the hook off `writer` and end the thread once its checkpoint under way is done.
    pub(super) fn stop(self, writer: &mut Connection) {
        let _ = writer.wal_hook(None::<fn(&mut Wal, c_int) -> rusqlite::Result<()>>);
        let Checkpointer { wake, thread, .. } = self;
        // The hook's copy went with it: this was the last sender, and the thread's wait ends.
        drop(wake);
        let _ = thread.join();
    }
}

/// What the writer does after each commit, with the log's `frames`: note them in `latest`, wake the
/// thread past [`WAKE_FRAMES`], checkpoint itself past [`WRITER_FRAMES`] or when the thread is
/// gone.
///
/// The wake-up carries nothing: a wake-up still queued from an earlier commit is as good as a new
/// one, because the thread reads the log's size from `latest` once it runs. (Were the size in the
/// wake-up, a thread that ran late would see the size of that earlier commit, and might leave the
/// rest of a burst uncopied until the next commit.)
fn hook(
    wake: SyncSender<()>,
    latest: Arc<AtomicI32>,
) -> impl FnMut(&mut Wal, c_int) -> rusqlite::Result<()> + Send {
    let mut gone = false;
    move |wal: &mut Wal, frames: c_int| {
        latest.store(frames, Ordering::Release);
        let by_the_writer = if frames < WAKE_FRAMES {
            false
        } else if frames >= WRITER_FRAMES {
            true
        } else {
            // Already woken (the channel is full) is as good as woken now.
            let lost = matches!(wake.try_send(()), Err(TrySendError::Disconnected(_)));
            if lost && !gone {
                gone = true;
                tracing::error!(
                    "store: the checkpoint thread has ended; the writer checkpoints the log itself"
                );
            }
            lost
        };
        if by_the_writer {
            // Errors are left as SQLite leaves those of its automatic checkpoint: the commit has
            // happened, and the next one tries again.
            let _ = wal.checkpoint();
        }
        Ok(())
    }
}

/// Until the writer drops its end: a checkpoint whenever [`WAKE_FRAMES`] frames were added since the
/// last one. A connection that cannot be opened ends the thread, and the writer checkpoints itself.
fn run(path: &Path, woken: &Receiver<()>, latest: &AtomicI32) {
    let mut conn: Option<Connection> = None;
    let mut last_error: Option<String> = None;
    // Frames of the log copied by the last checkpoint; the log starts again from its beginning
    // once a checkpoint has copied all of it.
    let mut copied_before: c_int = 0;
    while let Ok(()) = woken.recv() {
        let frames = latest.load(Ordering::Acquire);
        if frames < copied_before {
            copied_before = 0;
        }
        if frames - copied_before < WAKE_FRAMES {
            continue;
        }
        let conn = match &mut conn {
            Some(c) => c,
            None => match open_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::error!(error = %e, "store: the checkpoint thread cannot open the store");
                    return;
                }
            },
        };
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((frames, copied)) => {
                last_error = None;
                copied_before = copied;
                if copied < frames {
                    std::thread::sleep(HELD_BACK_REST);
                }
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "store: a checkpoint failed; the next commit tries again");
                }
                last_error = Some(e);
                std::thread::sleep(HELD_BACK_REST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const PAGE: u64 = 4096;
    /// Rows of about a page each, written by [`fill`].
    const ROWS: usize = 3 * WAKE_FRAMES as usize;

    /// The database file holds the rows [`fill`] wrote, but for at most two commits' worth still
    /// in the log: their pages were copied.
    fn copied(dir: &Path) -> bool {
        size(&dir.join("t.db")) >= (ROWS as u64 - 2 * 100) * PAGE
    }

    /// A [`writer`] whose commits run [`hook`] with `wake` and `latest`.
    fn hooked(dir: &Path, wake: SyncSender<()>, latest: Arc<AtomicI32>) -> Connection {
        let mut conn = writer(dir);
        conn.wal_hook(Some(hook(wake, latest))).unwrap();
        conn
    }

    fn writer(dir: &Path) -> Connection {
        let conn = open_connection(
            &dir.join("t.db"),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        conn
    }

    /// [`ROWS`] rows of nearly a page each, 100 to a commit.
    fn fill(conn: &Connection) {
        for _ in 0..ROWS / 100 {
            conn.execute_batch(
                "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
                 INSERT INTO t SELECT zeroblob(3900) FROM n; COMMIT;",
            )
            .unwrap();
        }
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn the_thread_copies_the_log_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer(dir.path());
        let checkpointer = Checkpointer::start(&dir.path().join("t.db")).unwrap();
        checkpointer.install(&mut conn).unwrap();
        fill(&conn);
        // The pages reach the database file only through a checkpoint.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !copied(dir.path()) {
            assert!(Instant::now() < deadline, "no checkpoint copied the log");
            std::thread::sleep(Duration::from_millis(10));
        }
        checkpointer.stop(&mut conn);
    }

    /// A thread that runs only after a whole burst was committed (its one wake-up queued since the
    /// burst's first commits past the threshold) copies all of the burst, not what the log held
    /// when the wake-up was queued.
    #[test]
    fn a_late_thread_copies_the_whole_burst() {
        let dir = tempfile::tempdir().unwrap();
        let (wake, woken) = mpsc::sync_channel(1);
        let latest = Arc::new(AtomicI32::new(0));
        let mut conn = hooked(dir.path(), wake, Arc::clone(&latest));
        fill(&conn);
        // The wake-up of the first commit past the threshold is still queued: the burst is over.
        let path = dir.path().join("t.db");
        let late = std::thread::spawn(move || run(&path, &woken, &latest));
        // Taking the hook off drops the last sender: the thread's wait ends once it has run. (Not by
        // closing the writer: the last connection to close checkpoints the log itself.)
        conn.wal_hook(None::<fn(&mut Wal, c_int) -> rusqlite::Result<()>>)
            .unwrap();
        late.join().unwrap();
        assert!(copied(dir.path()));
    }

    #[test]
    fn a_writer_whose_thread_is_gone_checkpoints_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (wake, woken) = mpsc::sync_channel(1);
        drop(woken);
        let conn = hooked(dir.path(), wake, Arc::default());
        fill(&conn);
        // Nothing else copies the log: every commit past the threshold did, before it returned.
        assert!(copied(dir.path()));
    }

    #[test]
    fn the_log_stays_bounded_when_the_thread_falls_behind() {
        let dir = tempfile::tempdir().unwrap();
        // A thread that never takes its wake-up: the channel stays full.
        let (wake, _woken) = mpsc::sync_channel(1);
        wake.try_send(()).unwrap();
        let conn = hooked(dir.path(), wake, Arc::default());
        for _ in 0..3 {
            fill(&conn);
        }
        // The writer's checkpoint past WRITER_FRAMES lets the log start again from its beginning.
        let frame = PAGE + 24;
        let most = (WRITER_FRAMES as u64 + 2 * 100) * frame + 32;
        let wal = size(&dir.path().join("t.db-wal"));
        assert!(wal <= most, "the log grew to {wal} bytes");
    }
}
