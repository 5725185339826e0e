use super::batch::Isolation::{self, Bare, Savepoint};
use super::queries;
use crate::machine::Action;
use crate::store::Backend;
use crate::store::{NewTask, Store, StoreError, TransitionOp};
use orchestrator_proto::task::{TaskKind, TaskState};

pub(super) fn new_task(id: &str) -> NewTask {
    NewTask {
        id: id.to_string(),
        kind: TaskKind::Synthetic,
        goal: "fix the bug".into(),
        workspace_dir: None,
        required_capabilities: vec!["code".into()],
        submitted_by: "alice".into(),
        harness: false,
        created_ms: 1_000,
        expires_ms: 10_000,
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

#[test]
fn insert_then_transition_writes_one_event_each() {
    let (_d, store) = open();
    let t = store
        .write_blocking(|b| b.insert_task(new_task("T1"), "alice"))
        .unwrap();
    assert_eq!(t.state, TaskState::Queued);
    let t = store
        .write_blocking(|b| {
            b.transition(TransitionOp::new("T1", Action::Route, "dispatcher", 2_000))
        })
        .unwrap();
    assert_eq!(t.state, TaskState::Assigned);
    assert!(t.assigned_at.is_some());
    let events = store
        .read_blocking(|c| queries::events_of(c, "T1"))
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].from, Some(TaskState::Queued));
    assert_eq!(events[1].to, TaskState::Assigned);
    assert_eq!(events[1].actor, "dispatcher");
    assert_eq!(
        store.counts().get(TaskKind::Synthetic, TaskState::Assigned),
        1
    );
    assert_eq!(
        store.counts().get(TaskKind::Synthetic, TaskState::Queued),
        0
    );
}

/// A cached statement is used as compiled: reading the events of one task, then of another, does
/// not parse and plan the statement again (see `open_connection`).
#[test]
fn reading_events_again_reuses_the_compiled_statement() {
    let (_d, store) = open();
    for id in ["T1", "T2"] {
        store
            .write_blocking(move |b| {
                b.insert_task(new_task(id), "alice")?;
                b.transition(TransitionOp::new(id, Action::Route, "dispatcher", 2_000))
            })
            .unwrap();
    }
    let (seqs, recompiled) = store
        .read_blocking(|c| {
            let mut seqs = Vec::new();
            for id in ["T1", "T2", "T1", "T2"] {
                seqs.push(
                    queries::events_of(c, id)?
                        .iter()
                        .map(|e| e.seq)
                        .collect::<Vec<_>>(),
                );
            }
            let stmt = c.prepare_cached(&queries::events_of_sql())?;
            Ok((seqs, stmt.get_status(rusqlite::StatementStatus::RePrepare)))
        })
        .unwrap();
    assert_eq!(seqs, [vec![1, 2], vec![3, 4], vec![1, 2], vec![3, 4]]);
    assert_eq!(recompiled, 0, "the statement was compiled again on reuse");
}

#[test]
fn refused_transition_changes_nothing() {
    let (_d, store) = open();
    store
        .write_blocking(|b| b.insert_task(new_task("T1"), "alice"))
        .unwrap();
    let err = store
        .write_blocking(|b| b.transition(TransitionOp::new("T1", Action::Approve, "bob", 2_000)))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Refused {
            from: TaskState::Queued,
            action: "approve"
        }
    );
    let events = store
        .read_blocking(|c| queries::events_of(c, "T1"))
        .unwrap();
    assert_eq!(events.len(), 1);
    let missing = store
        .write_blocking(|b| b.transition(TransitionOp::new("nope", Action::Cancel, "bob", 2_000)));
    assert_eq!(missing.unwrap_err(), StoreError::NotFound("nope".into()));
}

/// Approve and reject are one `UPDATE … RETURNING` from `awaiting_approval`: the answer is the row
/// exactly as stored, a task elsewhere is refused with its state, a missing one is not found.
#[test]
fn a_decision_answers_the_row_it_leaves() {
    use crate::store::Patch;
    use orchestrator_proto::task::{Rejection, TaskError};
    let (_d, store) = open();
    for id in ["T1", "T2"] {
        store
            .write_blocking(move |b| {
                b.insert_task(new_task(id), "alice")?;
                for (action, at) in [
                    (Action::Route, 2_000),
                    (Action::Start, 3_000),
                    (
                        Action::Complete {
                            approval_required: true,
                        },
                        4_000,
                    ),
                ] {
                    b.transition(TransitionOp::new(id, action, "dispatcher", at))?;
                }
                Ok(())
            })
            .unwrap();
    }
    let rejected = store
        .write_blocking(|b| {
            b.transition(
                TransitionOp::new("T1", Action::Reject, "bob", 5_000)
                    .patch(Patch {
                        rejection: Some(Rejection {
                            by: "bob".into(),
                            reason: "no".into(),
                            at: "1970-01-01T00:00:05Z".into(),
                        }),
                        error: Some(TaskError {
                            code: "rejected".into(),
                            message: "rejected by bob: no".into(),
                            details: None,
                        }),
                        ..Patch::default()
                    })
                    .detail("reason", "no"),
            )
        })
        .unwrap();
    let stored = store
        .read_blocking(|c| queries::get_task(c, "T1"))
        .unwrap()
        .unwrap();
    assert_eq!(rejected, stored);
    assert_eq!(rejected.state, TaskState::Failed);
    assert_eq!(
        rejected.error.as_ref().map(|e| e.code.as_str()),
        Some("rejected")
    );
    assert!(rejected.completed_at.is_some());
    let approved = store
        .write_blocking(|b| b.transition(TransitionOp::new("T2", Action::Approve, "bob", 5_000)))
        .unwrap();
    assert_eq!(approved.state, TaskState::Done);
    assert_eq!(
        Some(approved),
        store.read_blocking(|c| queries::get_task(c, "T2")).unwrap()
    );
    let events = store
        .read_blocking(|c| queries::events_of(c, "T1"))
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.from, last.to),
        (
            "reject",
            Some(TaskState::AwaitingApproval),
            TaskState::Failed
        )
    );
    assert_eq!(
        last.details
            .as_ref()
            .and_then(|d| d.get("reason"))
            .map(String::as_str),
        Some("no")
    );
    let again = store
        .write_blocking(|b| b.transition(TransitionOp::new("T2", Action::Approve, "carol", 6_000)));
    assert_eq!(
        again.unwrap_err(),
        StoreError::Refused {
            from: TaskState::Done,
            action: "approve"
        }
    );
    let missing = store
        .write_blocking(|b| b.transition(TransitionOp::new("nope", Action::Approve, "bob", 6_000)));
    assert_eq!(missing.unwrap_err(), StoreError::NotFound("nope".into()));
    assert_eq!(
        store
            .counts()
            .get(TaskKind::Synthetic, TaskState::AwaitingApproval),
        0
    );
    assert_eq!(store.counts().get(TaskKind::Synthetic, TaskState::Done), 1);
    assert_eq!(
        store.counts().get(TaskKind::Synthetic, TaskState::Failed),
        1
    );
}

#[test]
fn expire_waits_for_expires_at() {
    let (_d, store) = open();
    store
        .write_blocking(|b| b.insert_task(new_task("T1"), "alice"))
        .unwrap();
    assert!(store
        .write_blocking(|b| b.transition(TransitionOp::new("T1", Action::Expire, "sweeper", 9_999)))
        .is_err());
    let t = store
        .write_blocking(|b| {
            b.transition(TransitionOp::new("T1", Action::Expire, "sweeper", 10_000))
        })
        .unwrap();
    assert_eq!(t.state, TaskState::Expired);
}

#[test]
fn a_failed_job_does_not_spoil_its_group() {
    let (_d, store) = open();
    let s2 = store.clone();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let s = s2.clone();
            std::thread::spawn(move || {
                let id = format!("T{i}");
                s.write_blocking(move |b| {
                    b.insert_task(new_task(&id), "alice")?;
                    if i % 2 == 0 {
                        return Err(StoreError::Sql("forced".into()));
                    }
                    Ok(())
                })
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 25);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 25);
    let listed = store
        .read_blocking(|c| {
            queries::list_tasks(
                c,
                &crate::store::TaskFilter {
                    limit: 1000,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    assert_eq!(listed.len(), 25);
    assert_eq!(store.counts().total(), 25);
}

#[test]
fn committed_tasks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = Store::open(&path).unwrap();
        store
            .write_blocking(|b| b.insert_task(new_task("T1"), "alice"))
            .unwrap();
        store.close();
    }
    let store = Store::open(&path).unwrap();
    let t = store
        .read_blocking(|c| queries::get_task(c, "T1"))
        .unwrap()
        .unwrap();
    assert_eq!(t.goal, "fix the bug");
    assert_eq!(t.required_capabilities, vec!["code".to_string()]);
    assert_eq!(
        store.counts().get(TaskKind::Synthetic, TaskState::Queued),
        1
    );
}

fn counts_of(store: &Store) -> Vec<(TaskKind, TaskState, u64)> {
    store.counts().entries()
}

#[test]
fn counts_loaded_at_open_follow_inserts_transitions_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path).unwrap();
    for id in ["T1", "T2", "T3"] {
        store
            .write_blocking(move |b| b.insert_task(new_task(id), "alice"))
            .unwrap();
    }
    store
        .write_blocking(|b| b.transition(TransitionOp::new("T1", Action::Cancel, "alice", 2_000)))
        .unwrap();
    store
        .write_blocking(|b| {
            b.tx().execute("DELETE FROM tasks WHERE id = 'T2'", [])?;
            b.note_deleted(TaskKind::Synthetic, TaskState::Queued);
            Ok(())
        })
        .unwrap();
    let live = counts_of(&store);
    assert_eq!(
        live,
        vec![
            (TaskKind::Synthetic, TaskState::Queued, 1),
            (TaskKind::Synthetic, TaskState::Cancelled, 1)
        ]
    );
    store.close();
    let reopened = Store::open(&path).unwrap();
    assert_eq!(counts_of(&reopened), live);
}

/// One queued task whose row cannot be read (here its capabilities are not JSON) does not keep the
/// others from being resumed after a start.
#[test]
fn an_unreadable_pending_task_is_left_and_the_others_are_resumed() {
    let (_d, store) = open();
    for id in ["T1", "T2", "T3"] {
        store
            .write_blocking(move |b| b.insert_task(new_task(id), "alice"))
            .unwrap();
    }
    store
        .write_blocking(|b| {
            b.tx().execute(
                "UPDATE tasks SET required_caps = 'not json' WHERE id = 'T2'",
                [],
            )?;
            Ok(())
        })
        .unwrap();
    let pending = store.read_blocking(queries::pending_dispatch).unwrap();
    let ids: Vec<&str> = pending.iter().map(|p| p.task.id.as_str()).collect();
    assert_eq!(ids, ["T1", "T3"]);
}

#[test]
fn an_orderly_close_is_remembered_and_a_crash_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let marker = |store: &Store| {
        store
            .read_blocking(|c| queries::get_meta(c, "store_closed_cleanly"))
            .unwrap()
    };
    let store = Store::open(&path).unwrap();
    // Open: not closed cleanly, before anything else happens (flushed to disk with the first write
    // after it).
    assert_eq!(marker(&store).as_deref(), Some("0"));
    store.close();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'store_closed_cleanly'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, "1");
    drop(conn);
    let again = Store::open(&path).unwrap();
    assert_eq!(marker(&again).as_deref(), Some("0"));
}

#[test]
fn insert_answers_exactly_what_a_read_returns() {
    let (_d, store) = open();
    let mut t = new_task("T1");
    t.workspace_dir = Some("/srv/work".into());
    t.required_capabilities = vec!["code".into(), "ops".into()];
    t.harness = true;
    let answered = store
        .write_blocking(move |b| b.insert_task(t, "alice"))
        .unwrap();
    let read = store
        .read_blocking(|c| queries::get_task(c, "T1"))
        .unwrap()
        .unwrap();
    assert_eq!(answered, read);
}

#[test]
fn apply_from_is_still_a_compare_and_set_and_names_the_real_state() {
    let (_d, store) = open();
    store
        .write_blocking(|b| b.insert_task(new_task("T1"), "alice"))
        .unwrap();
    store
        .write_blocking(|b| b.transition(TransitionOp::new("T1", Action::Cancel, "bob", 2_000)))
        .unwrap();
    // The caller believes the task is still queued; the store knows better.
    let err = store
        .write_blocking(|b| {
            b.apply_from(
                &TransitionOp::new("T1", Action::Route, "dispatcher", 3_000),
                TaskKind::Synthetic,
                TaskState::Queued,
            )
        })
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Refused {
            from: TaskState::Cancelled,
            action: "route"
        }
    );
    let events = store
        .read_blocking(|c| queries::events_of(c, "T1"))
        .unwrap();
    assert_eq!(events.len(), 2, "nothing written by the refused step");
    let to = store
        .write_blocking(|b| {
            b.insert_task(new_task("T2"), "alice")?;
            b.apply_from(
                &TransitionOp::new("T2", Action::Route, "dispatcher", 3_000),
                TaskKind::Synthetic,
                TaskState::Queued,
            )
        })
        .unwrap();
    assert_eq!(to, TaskState::Assigned);
    assert_eq!(
        store.counts().get(TaskKind::Synthetic, TaskState::Assigned),
        1
    );
}

mod sweeper_queries {
    use super::super::outbox::{AWAITING_EXPIRING, AWAITING_EXPIRING_OR_CREATED};
    use super::super::queries::{events_of_sql, PENDING_DISPATCH, SHADOW_ROWS};
    use super::super::writes::{
        DELETE_EVENTS, DELETE_TASKS, EXPIRE_DUE, EXPIRE_ROWS, LAPSED, RETIRED,
    };
    use crate::store::Store;

    const NOW: i64 = 1_000_000_000;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, store)
    }

    /// The sweeper's statements use the indexes their comments name; a full scan would make every
    /// batch cost the size of the archive.
    #[test]
    fn sweeper_queries_use_their_indexes() {
        let (_dir, store) = open();
        let plan = |sql: &str, args: Vec<rusqlite::types::Value>| {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            store
                .read_blocking(move |c| {
                    let mut stmt = c.prepare(&explain)?;
                    let rows = stmt
                        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?.join("\n"))
                })
                .unwrap()
        };
        use rusqlite::types::Value::{Integer, Text};
        let p = plan(EXPIRE_DUE, vec![Integer(NOW), Integer(10)]);
        assert!(
            p.contains("INDEX tasks_waiting_expires (state=? AND expires_at<?)"),
            "{p}"
        );
        let p = plan(
            EXPIRE_ROWS,
            vec![
                Integer(NOW),
                Text("[1,2]".into()),
                Text("awaiting_approval".into()),
                Integer(7),
            ],
        );
        assert!(p.contains("INTEGER PRIMARY KEY (rowid=?)"), "{p}");
        let p = plan(AWAITING_EXPIRING, vec![Integer(NOW)]);
        assert!(
            p.contains("INDEX tasks_waiting_expires (state=? AND expires_at<?)"),
            "{p}"
        );
        let p = plan(
            AWAITING_EXPIRING_OR_CREATED,
            vec![Integer(NOW), Integer(NOW)],
        );
        assert!(p.contains("INDEX tasks_waiting_expires (state=?)"), "{p}");
        let p = plan(LAPSED, vec![Integer(NOW), Integer(10)]);
        assert!(p.contains("INDEX tasks_waiting_expires (state=?)"), "{p}");
        let p = plan(
            RETIRED,
            vec![
                Text("live".into()),
                Integer(NOW),
                Integer(0),
                Integer(0),
                Integer(10),
            ],
        );
        assert!(p.contains("INDEX tasks_terminal_completed (kind=?"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "the index gives the order: {p}");
        let p = plan(DELETE_TASKS, vec![Text("[\"A\"]".into())]);
        assert!(p.contains("INDEX sqlite_autoindex_tasks_1 (id=?)"), "{p}");
        let p = plan(DELETE_EVENTS, vec![Text("[\"[1,2]\"]".into())]);
        assert!(
            p.contains("SEARCH events USING INTEGER PRIMARY KEY (rowid=?)"),
            "{p}"
        );
        // A task's trajectory, and the approval policy's look at it, go through the numbers its
        // row lists (migration 11): no index of events by task, and no scan of them.
        let p = plan(&events_of_sql(), vec![Text("A".into())]);
        assert!(p.contains("INDEX sqlite_autoindex_tasks_1 (id=?)"), "{p}");
        assert!(
            p.contains("SEARCH events USING INTEGER PRIMARY KEY (rowid=?)"),
            "{p}"
        );
        for (sql, args) in [
            (AWAITING_EXPIRING, vec![Integer(NOW)]),
            (
                AWAITING_EXPIRING_OR_CREATED,
                vec![Integer(NOW), Integer(NOW)],
            ),
        ] {
            let p = plan(sql, args);
            assert!(
                p.contains("SEARCH e USING INTEGER PRIMARY KEY (rowid=?)"),
                "{p}"
            );
            assert!(!p.contains("SCAN e\n") && !p.ends_with("SCAN e"), "{p}");
        }
        // The two partial indexes (migration 9) serve the dispatcher's start and the summary.
        let p = plan(
            &format!("SELECT id FROM tasks WHERE {PENDING_DISPATCH} ORDER BY created_at, id"),
            vec![],
        );
        assert!(p.contains("INDEX tasks_waiting_expires (state=?)"), "{p}");
        let p = plan(SHADOW_ROWS, vec![Integer(0), Integer(NOW)]);
        assert!(
            p.contains("COVERING INDEX tasks_shadow_created (created_at>? AND created_at<?)"),
            "{p}"
        );
        for sql in [
            EXPIRE_DUE,
            EXPIRE_ROWS,
            LAPSED,
            RETIRED,
            DELETE_TASKS,
            DELETE_EVENTS,
        ] {
            // Numbered parameters, some used twice: as many arguments as the highest number.
            let n = (1..=9)
                .rev()
                .find(|i| sql.contains(&format!("?{i}")))
                .unwrap_or(0);
            let args = (0..n).map(|_| Integer(0)).collect();
            let p = plan(sql, args);
            assert!(
                !p.contains("SCAN tasks") && !p.contains("SCAN events"),
                "{sql}: {p}"
            );
        }
    }
}

#[test]
fn a_panicking_job_fails_alone_and_the_writer_goes_on() {
    let (_d, store) = open();
    let panicked = store.write_blocking(|b| -> Result<(), StoreError> {
        b.insert_task(new_task("T1"), "alice")?;
        panic!("a bug in a job")
    });
    match panicked {
        Err(StoreError::Sql(m)) => assert!(m.contains("a bug in a job"), "{m}"),
        other => panic!("expected a failed job, got {other:?}"),
    }
    // The panicking job's insert was rolled back; the writer still commits.
    let t = store
        .write_blocking(|b| b.insert_task(new_task("T1"), "alice"))
        .unwrap();
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(store.counts().total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_reports_its_end_after_close() {
    let (_d, store) = open();
    store.probe().await.unwrap();
    let ended = {
        let s = store.clone();
        tokio::spawn(async move { s.writer_ended().await })
    };
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap();
    assert_eq!(ended.await.unwrap(), "the writer thread ended");
    assert_eq!(store.probe().await, Err(StoreError::Closed));
}

/// Field `n` of a `/proc/.../stat` line (the fields after the command's closing parenthesis start
/// at field 3).
fn stat_field(stat: &str, n: usize) -> Option<i64> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n - 3)?
        .parse()
        .ok()
}

/// The scheduling policy (field 41) of this process's thread named `name`.
fn thread_policy(name: &str) -> Option<i64> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = entry.path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == name) {
            return stat_field(&std::fs::read_to_string(dir.join("stat")).ok()?, 41);
        }
    }
    None
}

/// The scheduling policy of the calling thread.
fn own_policy() -> Option<i64> {
    stat_field(&std::fs::read_to_string("/proc/thread-self/stat").ok()?, 41)
}

/// Closing the store stops an integrity check that is still reading (its snapshot would hold the
/// writer's last checkpoint back for the busy timeout), and no check starts after it. The stopped
/// check records nothing and counts as no store error. It reads at the lowest priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_stops_the_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let backend = super::SqliteBackend::open(&dir.path().join("state.db")).unwrap();
    // Megabytes of goals: the check walks them (and their text index) for far longer than the
    // close below takes to begin.
    backend
        .write(|b| {
            for i in 0..5_000 {
                let mut t = new_task(&format!("T{i:05}"));
                t.goal = format!("{i} {}", "a long goal for the check to read ".repeat(60));
                b.insert_task(t, "alice")?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let errors = || {
        backend
            .inner
            .errors
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let errors_before = errors();
    // Read before the check starts, so that a check that lowered this thread instead shows.
    let own = own_policy();
    let check = {
        let b = backend.clone();
        tokio::spawn(async move { b.run_integrity_check().await })
    };
    // Close while it reads, not before it starts (the second check below is the one refused).
    while !backend.health_now().checking {
        assert!(
            !check.is_finished(),
            "the check ended before it was seen running"
        );
        tokio::task::yield_now().await;
    }
    // It reads under SCHED_IDLE, on a thread of its own, and lowers only that thread (unless the
    // tests themselves run under SCHED_IDLE).
    let idle = Some(i64::from(libc::SCHED_IDLE));
    if own != idle {
        assert_eq!(thread_policy("integrity-check"), idle);
        assert_eq!(own_policy(), own);
    }
    let closing = backend.clone();
    tokio::task::spawn_blocking(move || closing.shut())
        .await
        .unwrap();
    assert_eq!(check.await.unwrap(), Err(StoreError::Closed));
    assert_eq!(backend.run_integrity_check().await, Err(StoreError::Closed));
    assert_eq!(errors(), errors_before);
    assert!(backend.health_now().last_check.is_none());
    assert!(!backend.health_now().checking);
}

/// The sweep's expiries and deletions count as bulk work (the integrity check gives way to them)
/// when they change something; other writes, and a sweep
/// with nothing due, do not.
#[tokio::test]
async fn expiries_and_deletions_are_bulk_work() {
    let dir = tempfile::tempdir().unwrap();
    let backend = super::SqliteBackend::open(&dir.path().join("state.db")).unwrap();
    let bulk = || {
        backend
            .inner
            .outbox
            .bulk_groups
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    backend
        .write(|b| b.insert_task(new_task("T1"), "alice"))
        .await
        .unwrap();
    assert_eq!(bulk(), 0);
    // Nothing due yet, nothing to delete: no bulk work.
    backend
        .write(|b| b.expire_due(0, 10, "sweeper"))
        .await
        .unwrap();
    backend
        .write(|b| b.delete_tasks(&["T1".to_string()]))
        .await
        .unwrap();
    assert_eq!(bulk(), 0);
    backend
        // Ten years on: whatever the task's expiry, it is due.
        .write(|b| {
            b.expire_due(
                crate::clock::now_ms() + 10 * 365 * 86_400_000,
                10,
                "sweeper",
            )
        })
        .await
        .unwrap();
    assert_eq!(bulk(), 1);
    backend
        .write(|b| b.delete_tasks(&["T1".to_string()]))
        .await
        .unwrap();
    assert_eq!(bulk(), 2);
}

/// A store written before the partial indexes (schema 8) opens migrated: both indexes are there
/// and hold its tasks, its waiting task is still listed by its state and expired by the sweeper,
/// and its shadow task still tallied.
#[test]
fn a_store_of_schema_8_keeps_its_readers_after_the_partial_indexes() {
    use crate::store::{ShadowTally, TaskFilter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in &super::schema::MIGRATIONS[..8] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 8).unwrap();
        conn.execute_batch(
            "INSERT INTO tasks (id, kind, state, goal, required_caps, submitted_by, created_at, \
               expires_at, completed_at) VALUES \
             ('W', 'live', 'awaiting_approval', 'g', '[]', 'alice', 1000, 5000, NULL), \
             ('D', 'live', 'done', 'g', '[]', 'alice', 1000, 5000, 2000), \
             ('S', 'shadow', 'done', 'g', '[]', 'alice', 1000, 5000, 3000); \
             INSERT INTO task_counts (kind, state, n) VALUES ('live', 'awaiting_approval', 1), \
               ('live', 'done', 1), ('shadow', 'done', 1);",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let filter = TaskFilter {
        state: Some(TaskState::AwaitingApproval),
        limit: 10,
        ..TaskFilter::default()
    };
    let listed = store
        .read_blocking(move |c| queries::list_tasks(c, &filter))
        .unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["W"]
    );
    let tallies = store
        .read_blocking(|c| queries::shadow_tallies(c, 0, 10_000, 10_000))
        .unwrap();
    let tally: ShadowTally = tallies.into_iter().map(|(_, t)| t).next().unwrap();
    assert_eq!(tally.total, 1);
    assert_eq!(tally.durations_ms, [2000]);
    let entries = store
        .read_blocking(|c| {
            let n = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
            Ok((
                n(
                    "SELECT count(*) FROM tasks INDEXED BY tasks_waiting_expires \
                   WHERE state = 'awaiting_approval'",
                )?,
                n(
                    "SELECT count(*) FROM tasks INDEXED BY tasks_shadow_created \
                   WHERE kind = 'shadow'",
                )?,
            ))
        })
        .unwrap();
    assert_eq!(entries, (1, 1));
    let expired = store
        .write_blocking(|b| b.expire_due(6_000, 10, "sweeper"))
        .unwrap();
    assert_eq!(expired, ["W"]);
    assert_eq!(store.counts().get(TaskKind::Live, TaskState::Expired), 1);
}

type TestJob = Box<dyn FnOnce(&mut super::Batch<'_>) -> Result<(), StoreError> + Send>;

/// Run `jobs` (each bare or in a savepoint) as one group, in the order given: they are queued
/// while the writer is held inside a job of its own, and the writer takes everything waiting into
/// its next group.
fn one_group(
    store: &super::SqliteBackend,
    jobs: Vec<(Isolation, TestJob)>,
) -> Vec<Result<(), StoreError>> {
    let (inside_tx, inside_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    store
        .submit_job(
            move |_b| {
                let _ = inside_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            },
            held_tx,
            Isolation::Savepoint,
        )
        .unwrap();
    inside_rx.recv().unwrap();
    let answers: Vec<_> = jobs
        .into_iter()
        .map(|(isolation, f)| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            store.submit_job(f, tx, isolation).unwrap();
            rx
        })
        .collect();
    release_tx.send(()).unwrap();
    held_rx.blocking_recv().unwrap().unwrap();
    answers
        .into_iter()
        .map(|rx| rx.blocking_recv().unwrap())
        .collect()
}

fn insert(id: &'static str) -> TestJob {
    Box::new(move |b| b.insert_task(new_task(id), "alice").map(|_| ()))
}

/// A job that inserts `id`, then fails with `why`: its insert must be taken back.
fn fails_after_inserting(id: &'static str, why: &'static str) -> TestJob {
    Box::new(move |b| {
        b.insert_task(new_task(id), "alice")?;
        Err(StoreError::Sql(why.into()))
    })
}

fn stored_ids(store: &super::SqliteBackend) -> Vec<String> {
    let filter = crate::store::TaskFilter {
        limit: 1000,
        ..Default::default()
    };
    let mut ids: Vec<String> = store
        .read_blocking(|c| queries::list_tasks(c, &filter))
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    ids
}

fn events_of(store: &super::SqliteBackend, id: &'static str) -> usize {
    store
        .read_blocking(|c| queries::events_of(c, id))
        .unwrap()
        .len()
}

fn open_backend() -> (tempfile::TempDir, super::SqliteBackend) {
    let dir = tempfile::tempdir().unwrap();
    let store = super::SqliteBackend::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

#[test]
fn a_bare_job_that_fails_after_writing_takes_its_commit_back_and_the_rest_go_on() {
    let (_d, store) = open_backend();
    let fails_after_writing = fails_after_inserting("T3", "forced after a write");
    let answers = one_group(
        &store,
        vec![
            (Bare, insert("T1")),
            (Savepoint, insert("T2")),
            (Bare, fails_after_writing),
            (Bare, insert("T4")),
            (Savepoint, insert("T5")),
        ],
    );
    // Everything that ran in the broken transaction is answered with the failure, savepointed
    // jobs included; nothing of it is stored, counted or published.
    for (i, answer) in answers.iter().take(3).enumerate() {
        match answer {
            Err(StoreError::Sql(m)) => assert!(m.contains("forced after a write"), "job {i}: {m}"),
            other => panic!("job {i}: expected the group's failure, got {other:?}"),
        }
    }
    assert!(answers[3].is_ok() && answers[4].is_ok(), "{answers:?}");
    assert_eq!(stored_ids(&store), ["T4", "T5"]);
    assert_eq!(store.counts().total(), 2);
    for id in ["T1", "T2", "T3"] {
        assert_eq!(events_of(&store, id), 0, "{id}");
    }
    assert_eq!(events_of(&store, "T4"), 1);
}

#[test]
fn a_bare_job_refused_before_writing_leaves_its_group_alone() {
    let (_d, store) = open_backend();
    store
        .write_blocking(|b| b.insert_task(new_task("T0"), "alice"))
        .unwrap();
    // A queued task cannot be approved: the compare-and-set changes no row.
    let refused: TestJob = Box::new(|b| {
        b.transition(TransitionOp::new("T0", Action::Approve, "bob", 2_000))
            .map(|_| ())
    });
    let checked_only: TestJob = Box::new(|_| Err(StoreError::Sql("refused before writing".into())));
    let answers = one_group(
        &store,
        vec![
            (Bare, insert("T1")),
            (Bare, refused),
            (Bare, checked_only),
            (Bare, insert("T2")),
        ],
    );
    assert!(answers[0].is_ok() && answers[3].is_ok(), "{answers:?}");
    assert!(
        matches!(
            answers[1],
            Err(StoreError::Refused {
                from: TaskState::Queued,
                ..
            })
        ),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[2], Err(StoreError::Sql(m)) if m == "refused before writing"),
        "{:?}",
        answers[2]
    );
    assert_eq!(stored_ids(&store), ["T0", "T1", "T2"]);
    assert_eq!(store.counts().total(), 3);
    assert_eq!(events_of(&store, "T0"), 1);
}

#[test]
fn a_bare_step_that_fails_after_writing_breaks_the_job_that_carried_on() {
    let (_d, store) = open_backend();
    // The job swallows its step's failure, as a batch of transitions does with a refusal; the
    // step's write cannot be undone alone, so the commit is taken back all the same.
    // What the job saw of its step, told outside: a panic in the job would fail it all the same.
    let (step_tx, step_rx) = std::sync::mpsc::channel();
    let carries_on: TestJob = Box::new(move |b| {
        let step = b.nested(|b| -> Result<(), StoreError> {
            b.insert_task(new_task("T2"), "alice")?;
            Err(StoreError::Sql("a step failed after its write".into()))
        });
        let _ = step_tx.send(step);
        b.insert_task(new_task("T3"), "alice").map(|_| ())
    });
    let answers = one_group(
        &store,
        vec![
            (Bare, insert("T1")),
            (Bare, carries_on),
            (Bare, insert("T4")),
        ],
    );
    assert!(
        matches!(step_rx.recv().unwrap(), Err(StoreError::Sql(m)) if m == "a step failed after its write")
    );
    for answer in &answers[..2] {
        assert!(
            matches!(answer, Err(StoreError::Sql(m)) if m.contains("a step failed after its write")),
            "{answer:?}"
        );
    }
    assert!(answers[2].is_ok(), "{answers:?}");
    assert_eq!(stored_ids(&store), ["T4"]);
    assert_eq!(store.counts().total(), 1);
}

#[test]
fn a_bare_job_that_panics_after_writing_fails_its_commit_and_the_writer_goes_on() {
    let (_d, store) = open_backend();
    let panics: TestJob = Box::new(|b| {
        b.insert_task(new_task("T2"), "alice")?;
        panic!("a bug in a bare job")
    });
    let answers = one_group(
        &store,
        vec![(Bare, insert("T1")), (Bare, panics), (Bare, insert("T3"))],
    );
    for answer in &answers[..2] {
        assert!(
            matches!(answer, Err(StoreError::Sql(m)) if m.contains("a bug in a bare job")),
            "{answer:?}"
        );
    }
    assert!(answers[2].is_ok(), "{answers:?}");
    assert_eq!(stored_ids(&store), ["T3"]);
    store
        .write_blocking(|b| b.insert_task(new_task("T4"), "alice"))
        .unwrap();
    assert_eq!(stored_ids(&store), ["T3", "T4"]);
}

/// The numbers a task's row lists (`event_seqs`, migration 11), and the numbers of the events
/// stored for it, found by their task id (a scan, apart from the list); the trajectory as read
/// through the list must be those events.
fn listed_and_stored(store: &super::SqliteBackend, id: &'static str) -> (Vec<i64>, Vec<i64>) {
    store
        .read_blocking(move |c| {
            let listed: String =
                c.query_row("SELECT event_seqs FROM tasks WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            let listed: Vec<i64> =
                serde_json::from_str(&listed).map_err(|e| StoreError::Sql(e.to_string()))?;
            let stored: Vec<i64> = c
                .prepare("SELECT seq FROM events WHERE task_id = ?1 ORDER BY seq")?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let read: Vec<i64> = queries::events_of(c, id)?
                .into_iter()
                .map(|e| e.seq as i64)
                .collect();
            assert_eq!(read, stored, "{id}: the trajectory read through its list");
            Ok((listed, stored))
        })
        .unwrap()
}

/// A task's row lists exactly its events, in order, whatever wrote them (an insert, a transition,
/// a step from a known state, an event written only in a state, the sweeper's set-based expiry),
/// and a refused transition, an event for a state the task has left, or a job rolled back in its
/// savepoint lists nothing. No number is given twice: not to a job after one rolled back in the
/// same transaction, and not after the newest events were deleted with their task.
#[test]
fn a_tasks_row_lists_its_events_and_no_number_is_given_twice() {
    let (_d, store) = open_backend();
    let routed: TestJob = Box::new(|b| {
        b.insert_task(new_task("T1"), "alice")?;
        b.transition(TransitionOp::new("T1", Action::Route, "dispatcher", 2_000))
            .map(|_| ())
    });
    let refused: TestJob = Box::new(|b| {
        b.transition(TransitionOp::new("T1", Action::Approve, "bob", 2_000))
            .map(|_| ())
    });
    let rolled_back = fails_after_inserting("T2", "rolled back after a write");
    let stepped: TestJob = Box::new(|b| {
        b.insert_task(new_task("T3"), "alice")?;
        b.apply_from(
            &TransitionOp::new("T3", Action::Route, "dispatcher", 2_000),
            TaskKind::Synthetic,
            TaskState::Queued,
        )
        .map(|_| ())
    });
    let answers = one_group(
        &store,
        vec![
            (Savepoint, routed),
            (Savepoint, refused),
            (Savepoint, rolled_back),
            (Savepoint, stepped),
        ],
    );
    assert!(answers[0].is_ok() && answers[3].is_ok(), "{answers:?}");
    assert!(
        matches!(answers[1], Err(StoreError::Refused { .. })),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[2], Err(StoreError::Sql(m)) if m == "rolled back after a write"),
        "{answers:?}"
    );
    assert_eq!(stored_ids(&store), ["T1", "T3"]);
    assert_eq!(events_of(&store, "T2"), 0);
    let (t1, stored) = listed_and_stored(&store, "T1");
    assert_eq!(t1.len(), 2, "{t1:?}");
    assert_eq!(t1, stored);
    let (t3, stored) = listed_and_stored(&store, "T3");
    assert_eq!(t3.len(), 2, "{t3:?}");
    assert_eq!(t3, stored);
    assert!(t3[0] > t1[1], "{t1:?} {t3:?}");

    // An event written only while its task is in a state: listed for the task that is (T1,
    // assigned), neither written nor listed for one asked about a state it has left (T3).
    let note = |id: &'static str, state: TaskState| {
        store
            .write_blocking(move |b| {
                b.append_event_in_state(crate::store::EventDraft {
                    task_id: id,
                    kind: TaskKind::Synthetic,
                    at_ms: 2_500,
                    actor: "sweeper",
                    action: "note",
                    from: Some(state),
                    to: state,
                    details: None,
                })
            })
            .unwrap()
    };
    note("T1", TaskState::Assigned);
    note("T3", TaskState::Queued);
    let (t1_noted, stored) = listed_and_stored(&store, "T1");
    assert_eq!(t1_noted.len(), 3, "{t1_noted:?}");
    assert_eq!(&t1_noted[..2], &t1[..]);
    assert_eq!(t1_noted, stored);
    assert_eq!(listed_and_stored(&store, "T3"), (t3.clone(), t3.clone()));

    // The sweeper's expiry of both lists each one's own event.
    let expired = store
        .write_blocking(|b| b.expire_due(20_000, 10, "sweeper"))
        .unwrap();
    assert_eq!(expired.len(), 2, "{expired:?}");
    let (t1_after, stored) = listed_and_stored(&store, "T1");
    assert_eq!(t1_after.len(), 4, "{t1_after:?}");
    assert_eq!(&t1_after[..3], &t1_noted[..]);
    assert_eq!(t1_after, stored);
    let (t3_after, stored) = listed_and_stored(&store, "T3");
    assert_eq!(t3_after.len(), 3, "{t3_after:?}");
    assert_eq!(&t3_after[..2], &t3[..]);
    assert_eq!(t3_after, stored);
    let actions: Vec<String> = store
        .read_blocking(|c| queries::events_of(c, "T3"))
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["submit", "route", "expire"]);
    let newest = t1_after[3].max(t3_after[2]);

    // Deleting both takes their events with them; the next event is still numbered past them.
    let deleted = store
        .write_blocking(|b| b.delete_tasks(&["T1".to_string(), "T3".to_string()]))
        .unwrap();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    let left: i64 = store
        .read_blocking(|c| Ok(c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(left, 0);
    store
        .write_blocking(|b| b.insert_task(new_task("T4"), "alice"))
        .unwrap();
    let (t4, stored) = listed_and_stored(&store, "T4");
    assert_eq!(t4, stored);
    assert!(t4[0] > newest, "{t4:?} after {newest}");
}

/// A transaction that grew the log far past its usual size leaves no such file behind: once the
/// writer idles and the log has been copied into the store, the file is cut back, and the store
/// goes on as before.
#[test]
fn a_log_grown_by_one_large_commit_is_cut_back_when_the_writer_idles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = super::SqliteBackend::open(&path).unwrap();
    let log = dir.path().join("state.db-wal");
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let run = |job: TestJob| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.submit_job(job, tx, Savepoint).unwrap();
        rx.blocking_recv().unwrap()
    };
    // 80 MiB in one commit: the log holds every page of it.
    let big = run(Box::new(|b| {
        b.tx().execute_batch(
            "CREATE TABLE bulk (b BLOB); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 80) \
             INSERT INTO bulk SELECT zeroblob(1048576) FROM n;",
        )?;
        Ok(())
    }));
    assert_eq!(big, Ok(()));
    let grown = size();
    assert!(grown > 80 << 20, "the log holds {grown} bytes");
    // Bounded: the writer idles 50 ms after its last job.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() > super::LOG_SIZE_LIMIT {
        assert!(
            std::time::Instant::now() < deadline,
            "the log still holds {} bytes",
            size()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(run(insert("T1")), Ok(()));
    assert_eq!(stored_ids(&store), vec!["T1".to_string()]);
    let blobs = store
        .read_blocking(
            |c| Ok(c.query_row("SELECT count(*) FROM bulk", [], |r| r.get::<_, i64>(0))?),
        )
        .unwrap();
    assert_eq!(blobs, 80, "the large commit is in the store");
    assert!(
        size() <= super::LOG_SIZE_LIMIT,
        "the log holds {} bytes",
        size()
    );
}
