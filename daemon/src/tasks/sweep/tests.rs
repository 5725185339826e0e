use super::*;
use crate::clock::ManualClock;
use crate::store::{NewTask, Store, SubmitPlan, TaskFilter};
use crate::tasks::testing::completed;
use orchestrator_proto::task::TaskState;
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

/// Submit every plan at once; the states the tasks came to rest in.
fn submit_all(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    plans: Vec<SubmitPlan>,
) -> Vec<orchestrator_proto::task::TaskState> {
    rt.block_on(async {
        let submits = plans.into_iter().map(|plan| store.submit(plan));
        futures_util::future::join_all(submits)
            .await
            .into_iter()
            .map(|done| done.unwrap().state)
            .collect()
    })
}

/// `n` synthetic tasks done long ago, task `i` completed at `i` ms past the epoch: far past the
/// synthetic retention, the last one completed last.
fn seed_done(rt: &tokio::runtime::Runtime, store: &Store, n: usize) {
    let plans = (0..n)
        .map(|i| completed(&id_of(i), 0, i as i64, false, 0, NOW))
        .collect();
    submit_all(rt, store, plans);
}

/// The ids of the tasks `filter` lists, however many.
fn listed_ids(rt: &tokio::runtime::Runtime, store: &Store, filter: TaskFilter) -> BTreeSet<String> {
    let filter = TaskFilter {
        limit: u32::MAX,
        ..filter
    };
    rt.block_on(store.list_tasks(filter))
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// The ids of the tasks stored.
fn stored_ids(rt: &tokio::runtime::Runtime, store: &Store) -> BTreeSet<String> {
    let every = TaskFilter {
        include_harness: true,
        ..TaskFilter::default()
    };
    listed_ids(rt, store, every)
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

/// A daemon around `store` whose state directory is `dir`, on the built-in config and `clock`.
fn daemon_at(store: Store, dir: &std::path::Path, clock: &ManualClock) -> Arc<Daemon> {
    Arc::new(crate::daemon::Daemon::for_test(
        store,
        dir,
        TaskKind::Synthetic,
        clock.clock(),
    ))
}

/// A daemon whose clock stands at [`NOW`].
fn daemon_on(store: Store, dir: &std::path::Path) -> Arc<Daemon> {
    daemon_at(store, dir, &ManualClock::new(NOW))
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
        d.sweeper.last_sweep().as_ref().map(|r| r.deleted),
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
    let clock = ManualClock::new(NOW);
    let d = daemon_at(store, dir.path(), &clock);
    runtime().block_on(async {
        let under_way = d.sweeper.lock.lock().await;
        let d2 = Arc::clone(&d);
        let mut asked = tokio::spawn(async move { sweep_now(&d2).await });
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut asked).await;
        assert!(waited.is_err(), "ran alongside the sweep under way");
        clock.advance(Duration::from_secs(1));
        drop(under_way);
        let report = asked.await.unwrap().unwrap();
        assert_eq!(report.started_at, rfc3339(NOW + 1_000), "{report:?}");
    });
}

/// Wait (bounded) until the last sweep `status` would show started at `at`.
async fn swept_at(d: &Daemon, at: i64) -> SweepReport {
    let want = rfc3339(at);
    let poll = async {
        loop {
            if let Some(r) = d.sweeper.last_sweep().filter(|r| r.started_at == want) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .unwrap_or_else(|_| panic!("no sweep started at {want}: {:?}", d.sweeper.last_sweep()))
}

/// The timer sweeps at start, then once the interval has passed on the daemon's clock, and shows
/// when the next sweep is due; a task past its TTL by then is expired by that sweep.
#[test]
fn the_timer_sweeps_again_when_the_interval_has_passed_on_the_clock() {
    let (dir, store) = open();
    let rt = runtime();
    let clock = ManualClock::new(NOW);
    let d = daemon_at(store.clone(), dir.path(), &clock);
    let interval = d.config().sweeper.interval;
    rt.block_on(async {
        let task = NewTask {
            id: "T-ttl".into(),
            kind: TaskKind::Live,
            goal: "fix the bug".into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            submitted_by: "alice".into(),
            harness: false,
            created_ms: NOW,
            expires_ms: NOW + duration_ms(interval) / 2,
        };
        store
            .submit(SubmitPlan {
                task,
                actor: "alice".into(),
                steps: Vec::new(),
            })
            .await
            .unwrap();
        let timer = tokio::spawn(run(Arc::clone(&d)));
        let first = swept_at(&d, NOW).await;
        assert_eq!(first.expired, 0, "not due yet: {first:?}");
        let next = NOW + duration_ms(interval);
        // The timer sets its next sweep after the sweep's report is out: wait for it.
        let planned = async {
            while d.sweeper.next_sweep_ms() != Some(next) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), planned)
            .await
            .unwrap_or_else(|_| panic!("next sweep {:?}", d.sweeper.next_sweep_ms()));

        clock.advance(interval);
        let second = swept_at(&d, next).await;
        assert_eq!(second.expired, 1, "{second:?}");
        assert_eq!(
            store.get_task("T-ttl").await.unwrap().unwrap().state,
            orchestrator_proto::task::TaskState::Expired
        );
        d.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), timer)
            .await
            .expect("the timer stops at shutdown")
            .unwrap();
    });
}

/// `n` synthetic tasks waiting for approval since just before [`NOW`], each expiring within the
/// built-in approval warning (an hour) of it.
fn seed_awaiting(rt: &tokio::runtime::Runtime, store: &Store, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(id_of).collect();
    let at = NOW - 1_000;
    let plans = ids
        .iter()
        .map(|id| completed(id, at, at, true, at, NOW + 1_800_000))
        .collect();
    for state in submit_all(rt, store, plans) {
        assert_eq!(state, orchestrator_proto::task::TaskState::AwaitingApproval);
    }
    ids
}

/// How many of `ids` were warned that their deadline is near.
fn warned(rt: &tokio::runtime::Runtime, store: &Store, ids: &[String]) -> usize {
    rt.block_on(async {
        let mut n = 0;
        for id in ids {
            let events = store.transitions_of(id).await.unwrap();
            n += events
                .iter()
                .filter(|e| e.action == crate::store::outbox::APPROVAL_WARNING_ACTION)
                .count();
        }
        n
    })
}

/// More waiting tasks than one batch of the approval step, near their deadline, and a daemon at
/// [`NOW`] around their store: (its directory, the store, a runtime, the tasks, the daemon).
fn awaiting_batches() -> (
    tempfile::TempDir,
    Store,
    tokio::runtime::Runtime,
    Vec<String>,
    Arc<Daemon>,
) {
    let (dir, store) = open();
    let rt = runtime();
    let ids = seed_awaiting(&rt, &store, 2 * BATCH + 50);
    let d = daemon_on(store.clone(), dir.path());
    (dir, store, rt, ids, d)
}

/// Each waiting task near its deadline is warned once, and a second sweep warns none again.
#[test]
fn every_task_near_its_deadline_is_warned_once() {
    let (_dir, store, rt, ids, d) = awaiting_batches();
    sweep_once(&d);
    assert_eq!(warned(&rt, &store, &ids), ids.len());
    sweep_once(&d);
    assert_eq!(warned(&rt, &store, &ids), ids.len());
}

/// A shutdown stops the approval step between batches: the daemon does not hold its stop for
/// every waiting task (the next start's sweep warns them).
#[test]
fn a_shutdown_stops_the_approval_step() {
    let (_dir, store, rt, ids, d) = awaiting_batches();
    d.shutdown.cancel();
    sweep_once(&d);
    assert_eq!(warned(&rt, &store, &ids), 0);
}

/// The ids of the tasks in `state`.
fn ids_in(rt: &tokio::runtime::Runtime, store: &Store, state: TaskState) -> BTreeSet<String> {
    let in_state = TaskFilter {
        state: Some(state),
        ..TaskFilter::default()
    };
    listed_ids(rt, store, in_state)
}

/// More tasks due than two of the expiry step's batches, which the sweep queues ahead of each
/// other: one sweep expires every due task and no other, counts each once, and a second sweep
/// finds none left.
#[test]
fn one_sweep_expires_every_due_task_across_its_batches() {
    let (dir, store) = open();
    let rt = runtime();
    let (due, later) = (2 * EXPIRE_BATCH + 300, 50);
    let at = NOW - 10_000;
    let plans = (0..due + later)
        .map(|i| {
            let expires = if i < due { NOW - 1 } else { NOW + 7_200_000 };
            completed(&id_of(i), at, at, true, at, expires)
        })
        .collect();
    for state in submit_all(&rt, &store, plans) {
        assert_eq!(state, TaskState::AwaitingApproval);
    }
    let d = daemon_on(store.clone(), dir.path());

    let report = sweep_once(&d);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.expired, due as u64, "{report:?}");
    let expired: BTreeSet<String> = (0..due).map(id_of).collect();
    let waiting: BTreeSet<String> = (due..due + later).map(id_of).collect();
    assert_eq!(ids_in(&rt, &store, TaskState::Expired), expired);
    assert_eq!(ids_in(&rt, &store, TaskState::AwaitingApproval), waiting);
    assert_eq!(
        store.counts().get(TaskKind::Synthetic, TaskState::Expired),
        due as u64
    );
    // Each expired task got exactly one expiry event, and a waiting task none.
    for (i, id) in (0..due + later).map(|i| (i, id_of(i))) {
        let events = rt.block_on(store.transitions_of(&id)).unwrap();
        let expiries = events.iter().filter(|e| e.to == TaskState::Expired).count();
        assert_eq!(expiries, usize::from(i < due), "{id}: {events:?}");
    }

    let again = sweep_once(&d);
    assert_eq!(again.expired, 0, "{again:?}");
}
