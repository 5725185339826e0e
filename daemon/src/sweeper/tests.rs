use super::*;
use crate::machine::Action;
use crate::store::{NewTask, Patch, Store, SubmitPlan, TaskFilter, TransitionOp};
use std::collections::BTreeSet;

const NOW: i64 = 1_000_000_000;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

fn id_of(i: usize) -> String {
    format!("T{i:04}")
}

/// `n` synthetic tasks done long ago, task `i` completed at `i` ms past the epoch: far past the
/// synthetic retention, the last one completed last.
fn seed_done(rt: &tokio::runtime::Runtime, store: &Store, n: usize) {
    rt.block_on(async {
        let submits = (0..n).map(|i| {
            let id = id_of(i);
            let step = |action, at| {
                TransitionOp::new(&id, action, "test", at).patch(Patch {
                    agent: Some("coder".into()),
                    ..Patch::default()
                })
            };
            let steps = vec![
                step(Action::Route, 0),
                step(Action::Start, 0),
                step(
                    Action::Complete {
                        approval_required: false,
                    },
                    i as i64,
                ),
            ];
            let task = NewTask {
                id: id.clone(),
                kind: TaskKind::Synthetic,
                goal: "fix the bug".into(),
                workspace_dir: None,
                required_capabilities: Vec::new(),
                submitted_by: "alice".into(),
                harness: false,
                created_ms: 0,
                expires_ms: NOW,
            };
            store.submit(SubmitPlan {
                task,
                actor: "alice".into(),
                steps,
            })
        });
        for done in futures_util::future::join_all(submits).await {
            done.unwrap();
        }
    });
}

/// The ids of the tasks stored.
fn stored_ids(rt: &tokio::runtime::Runtime, store: &Store) -> BTreeSet<String> {
    let filter = TaskFilter {
        include_harness: true,
        limit: u32::MAX,
        ..TaskFilter::default()
    };
    rt.block_on(store.list_tasks(filter))
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// Tasks among `ids` that are gone but left trajectory events behind.
fn orphan_events(rt: &tokio::runtime::Runtime, store: &Store, ids: &[String]) -> usize {
    let left = stored_ids(rt, store);
    ids.iter()
        .filter(|id| !left.contains(*id))
        .filter(|id| !rt.block_on(store.transitions_of(id)).unwrap().is_empty())
        .count()
}

#[test]
fn a_task_dir_that_cannot_be_removed_keeps_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths {
        config: None,
        socket: dir.path().join("sock"),
        state_dir: dir.path().to_path_buf(),
        socket_from_flag: false,
        state_dir_from_flag: false,
    };
    // `tasks` is a regular file: nothing below it can be removed, not even by root.
    std::fs::write(dir.path().join("tasks"), "not a directory").unwrap();
    let (gone, removed, errors) = remove_task_dirs(&paths, vec!["A".into()]);
    assert!(gone.is_empty());
    assert_eq!(removed, 0);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("task A is kept"), "{}", errors[0]);

    std::fs::remove_file(dir.path().join("tasks")).unwrap();
    std::fs::create_dir_all(paths.task_dir("A").join("artefacts")).unwrap();
    std::fs::write(paths.task_dir("A").join("artefacts/out.txt"), "x").unwrap();
    let (gone, removed, errors) = remove_task_dirs(&paths, vec!["A".into(), "B".into()]);
    assert_eq!(gone, ["A", "B"], "B never had files");
    assert_eq!(removed, 1);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!paths.task_dir("A").exists());
}

/// A daemon around `store` whose state directory is `dir`, on the built-in config.
fn daemon_on(store: Store, dir: &std::path::Path) -> Arc<Daemon> {
    let paths = Paths {
        config: None,
        socket: dir.join("sock"),
        state_dir: dir.to_path_buf(),
        socket_from_flag: false,
        state_dir_from_flag: false,
    };
    // Nothing here is re-queued, so the dispatcher's end of the channel can go.
    let (dispatch, _) = crate::dispatch::DispatchHandle::channel();
    let mode = crate::daemon::ModeState {
        effective: TaskKind::Synthetic,
        since_ms: 0,
        note: None,
    };
    Arc::new(Daemon::new(
        store,
        paths,
        crate::config::Config::builtin(),
        mode,
        dispatch,
    ))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One sweep, bounded: a sweep that never ends fails the test rather than hanging it.
fn sweep_once(d: &Arc<Daemon>) -> SweepReport {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), sweep(d))
            .await
            .expect("the sweep ends")
    })
}

/// A task whose files cannot be removed is kept and reported, and the sweep walks on past it —
/// even past a whole batch of such tasks — to delete the others; a later sweep retries it.
#[test]
fn retention_steps_past_tasks_it_must_keep() {
    let (dir, store) = open();
    let rt = runtime();
    let stuck = BATCH + 1;
    seed_done(&rt, &store, stuck + 1);
    let ids: Vec<String> = (0..=stuck).map(id_of).collect();
    // A regular file where a task directory belongs cannot be removed as one, even by root.
    std::fs::create_dir_all(dir.path().join("tasks")).unwrap();
    for i in 0..stuck {
        std::fs::write(dir.path().join("tasks").join(id_of(i)), "in the way").unwrap();
    }
    let last = id_of(stuck);
    std::fs::create_dir_all(dir.path().join("tasks").join(&last)).unwrap();

    let d = daemon_on(store.clone(), dir.path());
    let report = sweep_once(&d);
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(report.deleted_files, 1);
    assert_eq!(report.errors.len(), MAX_REPORTED_ERRORS + 1, "capped");
    assert!(report.errors[0].contains("cannot remove"), "{report:?}");
    assert_eq!(
        report.errors[MAX_REPORTED_ERRORS],
        format!("... and {} more errors", stuck - MAX_REPORTED_ERRORS)
    );
    let left = stored_ids(&rt, &store);
    assert_eq!(left.len(), stuck);
    assert!(!left.contains(&last));
    assert_eq!(
        d.notes().last_sweep.as_ref().map(|r| r.deleted),
        Some(1),
        "status shows the last sweep"
    );

    for i in 0..stuck {
        std::fs::remove_file(dir.path().join("tasks").join(id_of(i))).unwrap();
    }
    let report = sweep_once(&d);
    assert_eq!(report.deleted, stuck as u64, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(stored_ids(&rt, &store).is_empty());
    assert_eq!(orphan_events(&rt, &store, &ids), 0);
}

/// `orchctl sweep` during the timer's sweep waits for it to end, then runs its own.
#[test]
fn sweep_now_waits_for_the_sweep_under_way() {
    let (dir, store) = open();
    let d = daemon_on(store, dir.path());
    runtime().block_on(async {
        let under_way = d.sweep_lock.lock().await;
        let d2 = Arc::clone(&d);
        let mut asked = tokio::spawn(async move { run_now(&d2).await });
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut asked).await;
        assert!(waited.is_err(), "ran alongside the sweep under way");
        let released = now_ms();
        drop(under_way);
        let report = asked.await.unwrap().unwrap();
        assert!(report.started_at >= rfc3339(released), "{report:?}");
    });
}
