//! Schema and migrations. `PRAGMA user_version` records the schema version; each migration moves it
//! up by one inside a transaction. A store written by a newer daemon is refused rather than guessed at.

use rusqlite::Connection;
use sd_notify::NotifyState;
use std::time::{Duration, Instant};

/// The states a task waits in, as the partial index `tasks_waiting_expires` names them. A query
/// reaches that index only through a term the planner can prove implies this one: `state =
/// '<one of them>'` with the literal written out, or this very text (`AND (waiting_states!())`)
/// where the query reads several states (see migration 9).
macro_rules! waiting_states {
    () => {
        "state = 'queued' OR state = 'assigned' OR state = 'in_progress' \
         OR state = 'awaiting_approval'"
    };
}
pub(super) use waiting_states;

/// A task's events, found through the numbers its row lists (`event_seqs`, migration 11), for a
/// subquery about the task aliased `$task`: `SELECT … FROM listed_events!("t") WHERE e.…`, the
/// events being `e`. Each is reached by its number, the table's own key.
macro_rules! listed_events {
    ($task:literal) => {
        concat!(
            "json_each(",
            $task,
            ".event_seqs) AS listed JOIN events e ON e.seq = listed.value"
        )
    };
}
pub(super) use listed_events;

/// Migrations in order; index `i` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: tasks, their trajectory, gate runs, overrides and daemon metadata.
    r#"
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        goal TEXT NOT NULL,
        workspace_dir TEXT,
        required_caps TEXT NOT NULL,
        routing TEXT,
        agent TEXT,
        result TEXT,
        rejection TEXT,
        error TEXT,
        error_code TEXT,
        submitted_by TEXT NOT NULL,
        harness INTEGER NOT NULL DEFAULT 0,
        would_require_approval INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        assigned_at INTEGER,
        started_at INTEGER,
        completed_at INTEGER,
        expires_at INTEGER NOT NULL,
        lease_until INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        specialist_pid INTEGER
    );
    CREATE INDEX tasks_state_expires ON tasks(state, expires_at);
    CREATE INDEX tasks_kind_created ON tasks(kind, created_at, state, error_code, agent, completed_at, would_require_approval);
    CREATE INDEX tasks_terminal_completed ON tasks(kind, completed_at) WHERE completed_at IS NOT NULL;
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        details TEXT
    );
    CREATE INDEX events_task ON events(task_id, seq);
    CREATE TABLE gate_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        label TEXT,
        fingerprint TEXT NOT NULL,
        passed INTEGER NOT NULL,
        total INTEGER NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE overrides (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mode TEXT NOT NULL,
        reason TEXT NOT NULL,
        by_user TEXT NOT NULL,
        uid INTEGER NOT NULL,
        at INTEGER NOT NULL,
        consumed_at INTEGER
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
    "#,
    // 2: task counts by kind and state, so that a start reads a handful of rows instead of counting
    // the whole archive. The writer moves them in the same transaction as the rows they count (see
    // `persist_counts` in store/mod.rs); this migration counts what is already there.
    r#"
    CREATE TABLE task_counts (
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (kind, state)
    ) WITHOUT ROWID;
    INSERT INTO task_counts (kind, state, n) SELECT kind, state, count(*) FROM tasks GROUP BY kind, state;
    "#,
    // 3: listings page newest first on (created_at, id) without sorting the archive. None of these
    // columns ever changes, so a transition never touches this index; only an insert does.
    r#"
    CREATE INDEX tasks_kind_created_id ON tasks(kind, created_at, id);
    "#,
    // 4: a trigram index of goals for the console's text filter (see `goal_index.rs`). Rows are
    // indexed by the writer when it is idle, not by the insert, so `upto` starts at 0 and the
    // archive already stored is indexed in the background after the upgrade. A delete forgets the
    // row's entry; deleting the newest rows lowers `upto`, so that a reused rowid counts as new.
    r#"
    CREATE VIRTUAL TABLE tasks_goal USING fts5(goal, content='', contentless_delete=1, tokenize='trigram');
    CREATE TABLE goal_index (id INTEGER PRIMARY KEY CHECK (id = 1), upto INTEGER NOT NULL);
    INSERT INTO goal_index (id, upto) VALUES (1, 0);
    CREATE TRIGGER tasks_goal_forget AFTER DELETE ON tasks
    WHEN old.rowid <= (SELECT upto FROM goal_index)
    BEGIN
        DELETE FROM tasks_goal WHERE rowid = old.rowid;
        UPDATE goal_index SET upto = ifnull((SELECT max(rowid) FROM tasks), 0)
        WHERE upto > ifnull((SELECT max(rowid) FROM tasks), 0);
    END;
    "#,
    // 5: the notification outbox: one row per event and sink, written in the transaction of the
    // transition that causes it (store/outbox.rs). A delivered row is deleted; a dead one stays
    // until `orchctl notify retry`. Each sink's last delivery error outlives the row it was about.
    r#"
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sink TEXT NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        task_id TEXT,
        payload TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        pending_since INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        dead_at INTEGER
    );
    CREATE INDEX outbox_sink ON outbox(sink, state, seq);
    CREATE TABLE outbox_sinks (
        sink TEXT PRIMARY KEY NOT NULL,
        last_error TEXT
    ) WITHOUT ROWID;
    "#,
    // 6: what a task's specialist runs reported they used (JSON `Usage`), for costs and budgets.
    r#"
    ALTER TABLE tasks ADD COLUMN usage TEXT;
    "#,
    // 7: the runs that reported usage, by start (budgets at start, the shadow summary's costs). Only
    // rows with usage are in it, so a synthetic submit pays nothing for it.
    r#"
    CREATE INDEX tasks_usage_started ON tasks (started_at, id) WHERE usage IS NOT NULL;
    "#,
    // 8: the event log is the outbox (store/sqlite/outbox.rs): each configured sink keeps its place
    // in it (the last event it was sent or passed), the filter it was installed with, and the
    // failed attempts on its next event. The `outbox` table keeps notices, and events given up on
    // or sent again. A place is set when the sink is first installed, at the newest event.
    r#"
    ALTER TABLE outbox_sinks ADD COLUMN cursor INTEGER;
    ALTER TABLE outbox_sinks ADD COLUMN filter TEXT;
    ALTER TABLE outbox_sinks ADD COLUMN head_seq INTEGER;
    ALTER TABLE outbox_sinks ADD COLUMN head_attempts INTEGER NOT NULL DEFAULT 0;
    "#,
    // 9: the two indexes whose keys hold a task's state keep only the tasks their readers read, so
    // a transition into an end state moves no entry in the one and a live or synthetic task has
    // none in the other (docs/BENCHMARKS.md, "Indexes of the tasks that are read"):
    // - `tasks_waiting_expires` holds the waiting states only: the sweeper, the lease check, the
    //   approval policy, the dispatcher's start and listings of a waiting state read it;
    // - `tasks_shadow_created` holds shadow tasks only: the shadow summary reads it.
    concat!(
        "DROP INDEX tasks_state_expires; \
         CREATE INDEX tasks_waiting_expires ON tasks(state, expires_at) WHERE ",
        waiting_states!(),
        "; DROP INDEX tasks_kind_created; \
         CREATE INDEX tasks_shadow_created ON tasks(created_at, state, error_code, agent, \
         completed_at, would_require_approval) WHERE kind = 'shadow';"
    ),
    // 10: a retried task waits out its backoff in `queued`: the time before which it must not be
    // dispatched is stored with it, so that a restart keeps the wait.
    r#"
    ALTER TABLE tasks ADD COLUMN not_before INTEGER;
    "#,
    // 11: a task's trajectory is found through the sequence numbers its row lists (`event_seqs`, a
    // JSON array in order), not through an index of events by task: each event's entry in
    // `events_task` was a page of its own to rewrite for a decision or an expiry of an old task,
    // and four index entries to insert for a synthetic submit, while the row is rewritten by the
    // same write anyway (docs/BENCHMARKS.md, "A task's events listed in its row"). The writer
    // numbers events itself (`Batch::take_seqs`) so that the row and its events are written in one
    // pass. This migration lists what is already there, then drops the index. `OR FAIL`: an
    // `UPDATE` of every row that may abort would first copy each page it touches into a statement
    // journal, which is kept in memory (`temp_store`), hundreds of MiB on a large store.
    r#"
    ALTER TABLE tasks ADD COLUMN event_seqs TEXT NOT NULL DEFAULT '[]';
    UPDATE OR FAIL tasks SET event_seqs = (SELECT json_group_array(seq ORDER BY seq) FROM events WHERE task_id = tasks.id)
    WHERE EXISTS (SELECT 1 FROM events WHERE task_id = tasks.id);
    DROP INDEX events_task;
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("cannot read schema version: {e}"))?;
    if current > SCHEMA_VERSION {
        return Err(format!(
            "the store has schema version {current}, newer than this daemon's {SCHEMA_VERSION}; \
             run a newer orchestratord"
        ));
    }
    let Ok(done) = usize::try_from(current) else {
        return Err(format!(
            "the store has schema version {current}, which no orchestratord writes: \
             the file is damaged or belongs to another program"
        ));
    };
    // An upgrade can rewrite every task (migration 11 takes about 8 s on 1,000,000 tasks): say so
    // before, while it runs and after, so that a start that takes longer once is explained, and
    // keep systemd from giving up on the start meanwhile. A new store is created quietly.
    if current == 0 || current == SCHEMA_VERSION {
        return run_migrations(conn, done);
    }
    let started = Instant::now();
    tracing::info!(
        from = current,
        to = SCHEMA_VERSION,
        "store: upgrading the schema"
    );
    notify(&[
        NotifyState::Status("upgrading the store's schema"),
        NotifyState::ExtendTimeoutUsec(EXTEND_START.as_micros() as u32),
    ]);
    let progress = while_running(conn, PROGRESS_EVERY, move |elapsed| {
        tracing::info!(
            from = current,
            to = SCHEMA_VERSION,
            elapsed_s = elapsed.as_secs(),
            "store: still upgrading the schema"
        );
        notify(&[NotifyState::ExtendTimeoutUsec(
            EXTEND_START.as_micros() as u32
        )]);
    });
    if let Err(e) = progress {
        tracing::warn!(error = %e, "store: the upgrade cannot report its progress");
    }
    let migrated = run_migrations(conn, done);
    if let Err(e) = conn.progress_handler(0, None::<fn() -> bool>) {
        tracing::warn!(error = %e, "store: cannot stop the upgrade's progress reports");
    }
    migrated?;
    tracing::info!(
        from = current,
        to = SCHEMA_VERSION,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store: schema upgraded"
    );
    Ok(())
}

/// Tell systemd something; outside systemd this does nothing. (The store does not depend on
/// `lifecycle`, whose `notify` is the same call.)
fn notify(states: &[NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

/// How often a long upgrade says it is still running.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How much longer systemd is asked to wait for the start, at the upgrade's start and at each of
/// its progress lines: a stuck upgrade still fails the start, a working one never does.
const EXTEND_START: Duration = Duration::from_secs(30);

/// Call `tick` with the time since now, every `every`, while statements run on `conn` (SQLite's
/// progress handler, looked at every few thousand virtual-machine steps). Never interrupts them.
fn while_running(
    conn: &mut Connection,
    every: Duration,
    mut tick: impl FnMut(Duration) + Send + 'static,
) -> rusqlite::Result<()> {
    let started = Instant::now();
    let mut next = every;
    conn.progress_handler(
        10_000,
        Some(move || {
            let elapsed = started.elapsed();
            if elapsed >= next {
                tick(elapsed);
                next = elapsed + every;
            }
            false
        }),
    )
}

/// Run the migrations after the first `done`.
fn run_migrations(conn: &mut Connection, done: usize) -> Result<(), String> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(sql)
            .map_err(|e| format!("migration {} failed: {e}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(|e| e.to_string())?;
        tx.commit()
            .map_err(|e| format!("migration {} failed to commit: {e}", i + 1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{migrate, while_running};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Count to `n` in one statement, long enough for several ticks of a short interval.
    fn count_to(conn: &rusqlite::Connection, n: i64) -> i64 {
        conn.query_row(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1) \
             SELECT count(*) FROM c",
            [n],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// A schema version below zero is no release's: the file is refused as it is, not taken for
    /// an empty store (which skipped every migration and then failed on a missing table).
    #[test]
    fn a_negative_schema_version_is_refused_and_the_file_left_alone() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", -1i64).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(
            err.contains("schema version -1, which no orchestratord writes"),
            "{err}"
        );
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, -1);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }

    /// A long statement ticks at each interval, with the time since the start, and runs to its
    /// end; with an interval longer than the statement nothing ticks.
    #[test]
    fn a_long_statement_ticks_and_is_never_interrupted() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&ticks);
        let every = Duration::from_millis(2);
        while_running(&mut conn, every, move |elapsed| {
            seen.lock().unwrap().push(elapsed)
        })
        .unwrap();
        let started = std::time::Instant::now();
        assert_eq!(count_to(&conn, 3_000_000), 3_000_000);
        let took = started.elapsed();
        let ticks = ticks.lock().unwrap().clone();
        assert!(!ticks.is_empty(), "no tick in {took:?}");
        assert!(ticks.windows(2).all(|w| w[1] >= w[0] + every), "{ticks:?}");
        assert!(
            ticks.iter().all(|t| *t >= every && *t <= took),
            "{ticks:?} in {took:?}"
        );

        let quiet = Arc::new(Mutex::new(0));
        let seen = Arc::clone(&quiet);
        while_running(&mut conn, Duration::from_secs(3600), move |_| {
            *seen.lock().unwrap() += 1
        })
        .unwrap();
        assert_eq!(count_to(&conn, 300_000), 300_000);
        assert_eq!(*quiet.lock().unwrap(), 0);
    }
}
