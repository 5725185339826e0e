//! The store contract: what every [`Backend`](super::Backend) must do, as tests that take a fresh,
//! empty [`Store`] and drive it only through the interface.
//!
//! Each backend runs every case (see `sqlite/contract_tests.rs`), one test per case so that a
//! failure is named. The cases assert observable behaviour only: answers, trajectories, counts and
//! the published events; never the backend's tables.

use super::outbox::{self, Notice, OutboxEntry, OutboxRules};
use super::{
    AttemptLimits, AwaitingCut, Cursor, GateRunRecord, ModeChange, NewEvent, NewOverride, NewTask,
    Patch, Plan, Reclaim, Store, StoreError, StoredMode, SubmitPlan, TaskFilter, TransitionOp,
};
use crate::config::{NotifySink, SinkFilter, SinkTarget};
use crate::machine::Action;
use orchestrator_proto::task::{Mode, Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use std::time::Duration;
use tokio::sync::broadcast;

const T0: i64 = 1_000_000;

fn task(id: &str, kind: TaskKind) -> NewTask {
    NewTask {
        id: id.to_string(),
        kind,
        goal: "fix the bug".into(),
        workspace_dir: Some("/srv/work".into()),
        required_capabilities: vec!["code".into()],
        submitted_by: "alice".into(),
        harness: false,
        created_ms: T0,
        expires_ms: T0 + 10_000,
    }
}

fn op(id: &str, action: Action, at: i64) -> TransitionOp {
    TransitionOp::new(id, action, "tester", at)
}

fn routed(id: &str, at: i64) -> TransitionOp {
    op(id, Action::Route, at).patch(Patch {
        agent: Some("coder".into()),
        ..Patch::default()
    })
}

fn started(id: &str, at: i64, lease: i64) -> TransitionOp {
    op(id, Action::Start, at).patch(Patch {
        lease_until: Some(lease),
        ..Patch::default()
    })
}

fn complete(id: &str, at: i64, approval_required: bool) -> TransitionOp {
    op(id, Action::Complete { approval_required }, at)
}

async fn put(store: &Store, id: &str, kind: TaskKind, steps: Vec<TransitionOp>) {
    put_task(store, task(id, kind), steps).await;
}

/// Submit `task` with `steps` as alice; the task as the submit answers it.
async fn put_task(store: &Store, task: NewTask, steps: Vec<TransitionOp>) -> Task {
    let plan = SubmitPlan {
        task,
        actor: "alice".into(),
        steps,
    };
    store.submit(plan).await.expect("submit")
}

/// The sweeper's reclaim of the leases lapsed by `now`: `coder`'s tasks may run `coder` times,
/// every other agent's `default` times.
fn reclaim_lapsed_at(now: i64, coder: u32, default: u32) -> Reclaim {
    Reclaim {
        now,
        limit: 100,
        reason: "test".into(),
        actor: "sweeper".into(),
        attempts: AttemptLimits {
            by_agent: [("coder".to_string(), coder)].into(),
            default,
        },
    }
}

/// Events published so far, without waiting.
fn drain(rx: &mut broadcast::Receiver<TrajectoryEvent>) -> Vec<TrajectoryEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

/// A submit answers exactly what a later read returns, with or without steps.
pub async fn submit_answers_what_a_read_returns(store: Store) {
    let plain = store
        .submit(SubmitPlan {
            task: task("T1", TaskKind::Live),
            actor: "alice".into(),
            steps: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(plain.state, TaskState::Queued);
    assert_eq!(Some(plain), store.get_task("T1").await.unwrap());

    let steps = vec![
        routed("T2", T0 + 1),
        started("T2", T0 + 2, T0 + 100),
        complete("T2", T0 + 3, false),
    ];
    let mut rx = store.subscribe();
    let done = put_task(&store, task("T2", TaskKind::Synthetic), steps).await;
    assert_eq!(done.state, TaskState::Done);
    assert_eq!(done.attempts, 1);
    assert_eq!(Some(done), store.get_task("T2").await.unwrap());
    let events = store.transitions_of("T2").await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["submit", "route", "start", "complete"]);
    // Each step's event, in order, numbered as stored, and published as stored.
    let path: Vec<_> = events.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        path,
        [
            (None, TaskState::Queued),
            (Some(TaskState::Queued), TaskState::Assigned),
            (Some(TaskState::Assigned), TaskState::InProgress),
            (Some(TaskState::InProgress), TaskState::Done)
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(drain(&mut rx), events);
    assert_eq!(store.counts().get(TaskKind::Synthetic, TaskState::Done), 1);
    assert_eq!(
        store.counts().get(TaskKind::Synthetic, TaskState::Queued),
        0
    );
}

/// A submit's steps keep every field their patches set, as the same steps would one by one: a
/// run's usage written by the step that completes it is read back with the task, and summed into
/// what the budgets read.
pub async fn a_submits_steps_keep_what_their_patches_set(store: Store) {
    let usage = orchestrator_proto::task::Usage {
        model: Some("m".into()),
        cost_usd: Some(0.5),
        ..Default::default()
    };
    let steps = vec![
        routed("T3", T0 + 1),
        started("T3", T0 + 2, T0 + 100),
        complete("T3", T0 + 3, false).patch(Patch {
            usage: Some(usage.clone()),
            ..Patch::default()
        }),
    ];
    let done = put_task(&store, task("T3", TaskKind::Live), steps).await;
    assert_eq!(done.usage.as_ref(), Some(&usage));
    assert_eq!(Some(done), store.get_task("T3").await.unwrap());
    let used = store.usage_since(T0).await.unwrap();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0].usage, usage);
}

/// Every transition writes one event, published after its commit in commit order.
pub async fn one_event_per_transition_in_commit_order(store: Store) {
    let mut rx = store.subscribe();
    put(&store, "T1", TaskKind::Live, Vec::new()).await;
    let t = store.transition(routed("T1", T0 + 1)).await.unwrap();
    assert_eq!(t.state, TaskState::Assigned);
    assert!(t.assigned_at.is_some());
    // A transition answers the task exactly as a later read returns it.
    assert_eq!(Some(t), store.get_task("T1").await.unwrap());
    let t = store
        .transition(started("T1", T0 + 2, T0 + 50))
        .await
        .unwrap();
    assert_eq!(t.attempts, 1);
    assert_eq!(Some(t), store.get_task("T1").await.unwrap());
    let published = drain(&mut rx);
    let stored = store.transitions_of("T1").await.unwrap();
    assert_eq!(published, stored);
    let steps: Vec<_> = stored.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        steps,
        [
            (None, TaskState::Queued),
            (Some(TaskState::Queued), TaskState::Assigned),
            (Some(TaskState::Assigned), TaskState::InProgress)
        ]
    );
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(stored[1].actor, "tester");
}

/// A refused transition changes nothing and names the state the task is in; an unknown id is
/// `NotFound`.
pub async fn refused_transition_changes_nothing(store: Store) {
    put(&store, "T1", TaskKind::Live, Vec::new()).await;
    let mut rx = store.subscribe();
    let err = store
        .transition(op("T1", Action::Approve, T0 + 1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Refused {
            from: TaskState::Queued,
            action: "approve"
        }
    );
    assert_eq!(store.transitions_of("T1").await.unwrap().len(), 1);
    assert!(drain(&mut rx).is_empty());
    let missing = store.transition(op("nope", Action::Cancel, T0)).await;
    assert_eq!(missing.unwrap_err(), StoreError::NotFound("nope".into()));
}

/// Approve and reject racing on one task: exactly one wins, the other is refused.
pub async fn concurrent_approve_and_reject_one_wins(store: Store) {
    for i in 0..20 {
        let id = format!("T{i}");
        let steps = vec![
            routed(&id, T0 + 1),
            started(&id, T0 + 2, T0 + 50),
            complete(&id, T0 + 3, true),
        ];
        put(&store, &id, TaskKind::Live, steps).await;
        let (a, b) = (store.clone(), store.clone());
        let (approve, reject) = (
            op(&id, Action::Approve, T0 + 4),
            op(&id, Action::Reject, T0 + 4),
        );
        let (x, y) = tokio::join!(
            tokio::spawn(async move { a.transition(approve).await }),
            tokio::spawn(async move { b.transition(reject).await }),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x.is_ok() != y.is_ok(), "{id}: {x:?} / {y:?}");
        let loser = if x.is_ok() { y } else { x };
        assert!(
            matches!(loser, Err(StoreError::Refused { .. })),
            "{loser:?}"
        );
        let events = store.transitions_of(&id).await.unwrap();
        assert_eq!(events.len(), 5, "one decision only");
    }
}

/// Counts move with commits; a refused step rolls back its whole plan, counts and events included.
pub async fn counts_follow_commits_only(store: Store) {
    let mut rx = store.subscribe();
    put(&store, "T1", TaskKind::Live, Vec::new()).await;
    put(&store, "T2", TaskKind::Live, vec![routed("T2", T0 + 1)]).await;
    let before = drain(&mut rx).len();
    assert_eq!(before, 3);
    // Approving a queued task is refused: the insert before it is undone too.
    let bad = store
        .submit(SubmitPlan {
            task: task("T3", TaskKind::Live),
            actor: "alice".into(),
            steps: vec![op("T3", Action::Approve, T0 + 1)],
        })
        .await;
    assert!(matches!(bad, Err(StoreError::Refused { .. })), "{bad:?}");
    assert_eq!(store.get_task("T3").await.unwrap(), None);
    assert!(drain(&mut rx).is_empty());
    let counts = store.counts();
    assert_eq!(counts.get(TaskKind::Live, TaskState::Queued), 1);
    assert_eq!(counts.get(TaskKind::Live, TaskState::Assigned), 1);
    assert_eq!(counts.total(), 2);
    // A batch of transitions: the refusal is its item's answer, the rest commit.
    let out = store
        .transitions(vec![
            op("T1", Action::Cancel, T0 + 2),
            op("T2", Action::Approve, T0 + 2),
        ])
        .await
        .unwrap();
    assert!(out[0].is_ok() && out[1].is_err(), "{out:?}");
    let counts = store.counts();
    assert_eq!(counts.get(TaskKind::Live, TaskState::Cancelled), 1);
    assert_eq!(counts.get(TaskKind::Live, TaskState::Queued), 0);
    assert_eq!(drain(&mut rx).len(), 1);
}

/// Plans on stored tasks: each atomic, a refused one does not undo the others.
pub async fn advance_runs_each_plan_on_its_own(store: Store) {
    put(&store, "T1", TaskKind::Synthetic, Vec::new()).await;
    put(&store, "T2", TaskKind::Synthetic, Vec::new()).await;
    store
        .transition(op("T2", Action::Cancel, T0 + 1))
        .await
        .unwrap();
    let plan = |id: &str| Plan {
        id: id.into(),
        kind: TaskKind::Synthetic,
        from: TaskState::Queued,
        steps: vec![
            routed(id, T0 + 2),
            started(id, T0 + 2, T0 + 50),
            complete(id, T0 + 2, false),
        ],
    };
    let out = store.advance(vec![plan("T1"), plan("T2")]).await.unwrap();
    assert_eq!(out[0], Ok(TaskState::Done));
    assert!(matches!(out[1], Err(StoreError::Refused { .. })));
    assert_eq!(store.transitions_of("T2").await.unwrap().len(), 2);
}

/// Expiry waits for `expiresAt`; `expire_due` takes exactly the stale-eligible tasks past it.
pub async fn expiry_takes_only_due_waiting_tasks(store: Store) {
    let early = store.transition(op("X", Action::Expire, T0)).await;
    assert!(matches!(early, Err(StoreError::NotFound(_))));
    put(&store, "Q", TaskKind::Live, Vec::new()).await;
    put(&store, "A", TaskKind::Live, vec![routed("A", T0 + 1)]).await;
    let running = vec![routed("R", T0 + 1), started("R", T0 + 1, T0 + 99_999)];
    put(&store, "R", TaskKind::Live, running).await;
    let not_yet = store.transition(op("Q", Action::Expire, T0 + 9_999)).await;
    assert!(
        matches!(not_yet, Err(StoreError::Rejected(..))),
        "{not_yet:?}"
    );
    assert!(store
        .expire_due(T0 + 9_999, 10, "sweeper")
        .await
        .unwrap()
        .is_empty());
    let first = store.expire_due(T0 + 10_000, 1, "sweeper").await.unwrap();
    assert_eq!(first.len(), 1);
    let rest = store.expire_due(T0 + 10_000, 10, "sweeper").await.unwrap();
    let mut all: Vec<String> = first.into_iter().chain(rest).collect();
    all.sort();
    assert_eq!(all, ["A", "Q"]);
    let q = store.get_task("Q").await.unwrap().unwrap();
    assert_eq!(q.state, TaskState::Expired);
    let last = store.transitions_of("Q").await.unwrap().pop().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str()),
        ("sweeper", "expire")
    );
    assert_eq!(
        store.get_task("R").await.unwrap().unwrap().state,
        TaskState::InProgress
    );
}

/// The steps that leave task `id` waiting for approval.
fn waiting(id: &str) -> Vec<TransitionOp> {
    vec![
        routed(id, T0 + 1),
        started(id, T0 + 2, T0 + 50),
        complete(id, T0 + 3, true),
    ]
}

/// A batch of expiries writes, for each task, what one expiry would: the compare-and-set from
/// the state it was in (`completedAt` at the sweep, no lease), exactly one `expire` event from
/// that state, published after the commit in sequence order, the counts, and the outbox row of a
/// decided approval for the sinks that want it; tasks not due, or not stale-eligible, stay.
pub async fn expiry_batch_writes_what_each_expiry_would(store: Store) {
    store.set_outbox_rules(rules(vec![sink("phone", &["*"])]));
    put(&store, "Q", TaskKind::Live, Vec::new()).await;
    put(&store, "A", TaskKind::Shadow, vec![routed("A", T0 + 1)]).await;
    put(&store, "W1", TaskKind::Live, waiting("W1")).await;
    put(&store, "W2", TaskKind::Live, waiting("W2")).await;
    let running = vec![routed("R", T0 + 1), started("R", T0 + 1, T0 + 99_999)];
    put(&store, "R", TaskKind::Live, running).await;
    let before = store.outbox_pending("phone", 10).await.unwrap().len();
    let mut rx = store.subscribe();
    let at = T0 + 10_000;
    let mut ids = store.expire_due(at, 10, "sweeper").await.unwrap();
    ids.sort();
    assert_eq!(ids, ["A", "Q", "W1", "W2"]);
    let published = drain(&mut rx);
    assert_eq!(published.len(), 4, "{published:?}");
    assert!(published.windows(2).all(|w| w[0].seq < w[1].seq));
    for (id, from) in [
        ("Q", TaskState::Queued),
        ("A", TaskState::Assigned),
        ("W1", TaskState::AwaitingApproval),
        ("W2", TaskState::AwaitingApproval),
    ] {
        let t = store.get_task(id).await.unwrap().unwrap();
        assert_eq!(t.state, TaskState::Expired, "{id}");
        assert_eq!(t.completed_at.as_deref(), Some(&*crate::clock::rfc3339(at)));
        let trail = store.transitions_of(id).await.unwrap();
        let expiries: Vec<_> = trail.iter().filter(|e| e.action == "expire").collect();
        assert_eq!(expiries.len(), 1, "{id}: {trail:?}");
        let last = trail.last().unwrap();
        assert_eq!(
            (
                last.actor.as_str(),
                last.action.as_str(),
                last.from,
                last.to
            ),
            ("sweeper", "expire", Some(from), TaskState::Expired),
            "{id}"
        );
        assert_eq!(last.at, crate::clock::rfc3339(at));
        assert!(published.contains(last), "{id}: published as stored");
    }
    let counts = store.counts();
    assert_eq!(counts.get(TaskKind::Live, TaskState::Expired), 3);
    assert_eq!(counts.get(TaskKind::Shadow, TaskState::Expired), 1);
    assert_eq!(counts.get(TaskKind::Live, TaskState::AwaitingApproval), 0);
    assert_eq!(counts.get(TaskKind::Live, TaskState::InProgress), 1);
    let decided: Vec<_> = store
        .outbox_pending("phone", 10)
        .await
        .unwrap()
        .into_iter()
        .skip(before)
        .map(|e| (body(&e)["task"]["id"].clone(), e.event_type))
        .collect();
    assert_eq!(decided.len(), 2, "{decided:?}");
    for (id, kind) in &decided {
        assert_eq!(kind, "approval.decided");
        assert!(id == "W1" || id == "W2", "{id}");
    }
    assert!(store
        .expire_due(at, 10, "sweeper")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.get_task("R").await.unwrap().unwrap().state,
        TaskState::InProgress
    );
}

/// The shadow tally of a window: counts by state, failure code and agent, the durations of the
/// finished tasks, the approvals they would have needed; live tasks and older ones left out.
pub async fn shadow_tally_counts_the_window(store: Store) {
    put(
        &store,
        "S1",
        TaskKind::Shadow,
        vec![op("S1", Action::Fail, T0 + 5)],
    )
    .await;
    let done = |id: &str, approval| {
        vec![
            routed(id, T0 + 1),
            started(id, T0 + 2, T0 + 50),
            complete(id, T0 + 7, approval).patch(Patch {
                would_require_approval: Some(approval),
                ..Patch::default()
            }),
        ]
    };
    put(&store, "S2", TaskKind::Shadow, done("S2", false)).await;
    put(&store, "S3", TaskKind::Shadow, done("S3", true)).await;
    put(&store, "S4", TaskKind::Shadow, vec![routed("S4", T0 + 1)]).await;
    put(&store, "L1", TaskKind::Live, done("L1", false)).await;
    let mut got = store.shadow_tally_since(T0).await.unwrap();
    // Folded in the order the backend reads the rows: compare without it.
    got.durations_ms.sort_unstable();
    got.per_agent.sort();
    let mut by_state = [0; TaskState::ALL.len()];
    for s in [
        TaskState::Failed,
        TaskState::Done,
        TaskState::AwaitingApproval,
        TaskState::Assigned,
    ] {
        by_state[s as usize] = 1;
    }
    let expected = super::ShadowTally {
        total: 4,
        by_state,
        failures_by_code: vec![(None, 1)],
        per_agent: vec![(None, 1), (Some("coder".into()), 3)],
        durations_ms: vec![5, 7],
        would_require_approval: 1,
        oldest_ms: Some(T0),
        newest_ms: Some(T0),
    };
    assert_eq!(got, expected);
    assert_eq!(store.shadow_tally_since(T0 + 1).await.unwrap().total, 0);
}

/// The shadow tallies of a range of creation times, one per bucket keyed by its start: the range's
/// end is left out, buckets with no task are not answered, and the buckets add up to the whole.
pub async fn shadow_tallies_split_the_range_into_buckets(store: Store) {
    // Created at T0 + 0, 100, 150, 250 and 300 (the last outside the range below).
    for (id, at) in [
        ("B0", 0),
        ("B1", 100),
        ("B2", 150),
        ("B3", 250),
        ("B4", 300),
    ] {
        let mut t = task(id, TaskKind::Shadow);
        t.created_ms = T0 + at;
        put_task(&store, t, vec![op(id, Action::Fail, T0 + at + 5)]).await;
    }
    let mut live = task("L", TaskKind::Live);
    live.created_ms = T0 + 100;
    put_task(&store, live, Vec::new()).await;

    let got = store.shadow_tallies(T0, T0 + 300, 100).await.unwrap();
    let starts: Vec<i64> = got.iter().map(|(at, _)| *at).collect();
    assert_eq!(starts, [T0, T0 + 100, T0 + 200]);
    let totals: Vec<u64> = got.iter().map(|(_, t)| t.total).collect();
    assert_eq!(totals, [1, 2, 1]);
    assert_eq!(got[1].1.oldest_ms, Some(T0 + 100));
    assert_eq!(got[1].1.newest_ms, Some(T0 + 150));
    assert_eq!(got[1].1.durations_ms, [5, 5]);

    // A range that starts inside a bucket answers that bucket by its start, with what is in range.
    let got = store.shadow_tallies(T0 + 120, T0 + 400, 100).await.unwrap();
    let parts: Vec<(i64, u64)> = got.iter().map(|(at, t)| (*at, t.total)).collect();
    assert_eq!(parts, [(T0 + 100, 1), (T0 + 200, 1), (T0 + 300, 1)]);

    // The parts merged are the one tally of the whole range.
    let mut merged = super::ShadowTally::default();
    for (_, t) in &store.shadow_tallies(T0, i64::MAX, 100).await.unwrap() {
        merged.merge(t);
    }
    let whole = store.shadow_tally_since(T0).await.unwrap();
    assert_eq!(merged, whole);
    assert_eq!(whole.total, 5);
    assert_eq!(whole.failures_by_code, [(None, 5)]);
    assert!(whole.all_terminal());
}

/// Leases: renewal keeps a task from lapsing, reports tasks no longer running; voiding makes every
/// lease lapse; a lapsed task is re-queued while attempts remain, then failed.
pub async fn leases_renew_void_and_lapse(store: Store) {
    for id in ["L1", "L2"] {
        put(
            &store,
            id,
            TaskKind::Live,
            vec![routed(id, T0), started(id, T0, T0 + 100)],
        )
        .await;
    }
    put(&store, "Q", TaskKind::Live, Vec::new()).await;
    let lost = store
        .renew_leases(vec!["L1".into(), "Q".into()], T0 + 1_000)
        .await
        .unwrap();
    assert_eq!(lost, ["Q"]);
    assert!(store.set_specialist_pid("L1", 4242).await.unwrap());
    assert!(!store.set_specialist_pid("Q", 4242).await.unwrap());
    let left = store.orphan_leftovers().await.unwrap();
    let pids: Vec<_> = left.iter().map(|l| (l.id.as_str(), l.pgid)).collect();
    assert_eq!(pids, [("L1", Some(4242)), ("L2", None)]);
    let reclaim = |now: i64, allowed: u32| reclaim_lapsed_at(now, allowed, 1);
    // At T0 + 500 only L2's lease (T0 + 100) has lapsed; it may run twice.
    let r = store.reclaim_lapsed(reclaim(T0 + 500, 2)).await.unwrap();
    assert_eq!(
        (r.failed.as_slice(), r.requeued.as_slice()),
        (&[][..], &["L2".to_string()][..])
    );
    assert_eq!(store.void_leases().await.unwrap(), 1);
    let r = store.reclaim_lapsed(reclaim(T0 + 500, 1)).await.unwrap();
    assert_eq!(r.failed, ["L1"]);
    let l1 = store.get_task("L1").await.unwrap().unwrap();
    assert_eq!(l1.state, TaskState::Failed);
    assert_eq!(
        l1.error.map(|e| e.code),
        Some(orchestrator_proto::task::task_error::SPECIALIST_ABORTED.to_string())
    );
    assert!(store.orphan_leftovers().await.unwrap().is_empty());
}

/// A run's outcome is held to its attempt: once a lapsed lease was reclaimed and the task started
/// again, the first run's outcome is refused and changes nothing; the later run's lands.
pub async fn an_outcome_lands_only_on_its_own_attempt(store: Store) {
    put(
        &store,
        "A",
        TaskKind::Live,
        vec![routed("A", T0), started("A", T0, T0 + 100)],
    )
    .await;
    let first = store.get_task("A").await.unwrap().unwrap().attempts;
    let r = store
        .reclaim_lapsed(reclaim_lapsed_at(T0 + 500, 3, 3))
        .await
        .unwrap();
    assert_eq!(r.requeued, ["A"]);
    store.transition(routed("A", T0 + 550)).await.unwrap();
    store
        .transition(started("A", T0 + 600, T0 + 10_000))
        .await
        .unwrap();
    let second = store.get_task("A").await.unwrap().unwrap().attempts;
    assert_eq!(second, first + 1);
    let events = store.transitions_of("A").await.unwrap().len();

    let stale = complete("A", T0 + 700, false).of_attempt(first);
    match store.transition(stale).await {
        Err(StoreError::Refused { from, .. }) => assert_eq!(from, TaskState::InProgress),
        other => panic!("the first run's outcome must be refused, got {other:?}"),
    }
    let a = store.get_task("A").await.unwrap().unwrap();
    assert_eq!((a.state, a.attempts), (TaskState::InProgress, second));
    assert_eq!(store.transitions_of("A").await.unwrap().len(), events);

    let done = store
        .transition(complete("A", T0 + 800, false).of_attempt(second))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Done);
    assert_eq!(store.transitions_of("A").await.unwrap().len(), events + 1);
}

/// A retry's wait is stored with the task: the dispatcher's read at start answers it and routing
/// keeps it; a task queued again without one (the sweeper requeuing a lapsed lease, a deferral)
/// has none, whatever wait it had before.
pub async fn a_retry_keeps_its_wait_until_the_task_starts_again(store: Store) {
    let run = vec![routed("R", T0), started("R", T0, T0 + 100)];
    put(&store, "R", TaskKind::Live, run).await;
    let waits = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .pending_dispatch()
                .await
                .unwrap()
                .into_iter()
                .map(|p| (p.task.id, p.not_before))
                .collect::<Vec<_>>()
        }
    };
    let retry = op("R", Action::Retry, T0 + 10).patch(Patch {
        not_before: Some(T0 + 5_000),
        ..Patch::default()
    });
    store.transition(retry).await.unwrap();
    assert_eq!(waits(&store).await, [("R".to_string(), Some(T0 + 5_000))]);
    store.transition(routed("R", T0 + 5_000)).await.unwrap();
    assert_eq!(waits(&store).await, [("R".to_string(), Some(T0 + 5_000))]);
    store
        .transition(started("R", T0 + 5_001, T0 + 9_000))
        .await
        .unwrap();
    assert!(waits(&store).await.is_empty());
    let reclaim = reclaim_lapsed_at(T0 + 9_500, 3, 3);
    assert_eq!(store.reclaim_lapsed(reclaim).await.unwrap().requeued, ["R"]);
    assert_eq!(waits(&store).await, [("R".to_string(), None)]);
    store.transition(routed("R", T0 + 9_600)).await.unwrap();
    store
        .transition(started("R", T0 + 9_700, T0 + 20_000))
        .await
        .unwrap();
    store
        .transition(op("R", Action::Defer, T0 + 9_800))
        .await
        .unwrap();
    assert_eq!(waits(&store).await, [("R".to_string(), None)]);
}

/// A write, once begun, is not the caller's to stop: a caller that goes away after the first poll
/// (a client hanging up) leaves a write that still commits and is published to the watchers, as
/// every committed write is.
pub async fn a_write_whose_caller_goes_away_still_commits_and_is_published(store: Store) {
    put(&store, "W", TaskKind::Live, Vec::new()).await;
    let mut rx = store.subscribe();
    {
        let write = store.transition(routed("W", T0 + 1));
        tokio::pin!(write);
        tokio::select! {
            biased;
            _ = &mut write => {}
            _ = std::future::ready(()) => {}
        }
    }
    let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the write is published")
        .expect("an event");
    assert_eq!((ev.task_id.as_str(), ev.action.as_str()), ("W", "route"));
    let w = store.get_task("W").await.unwrap().unwrap();
    assert_eq!(w.state, TaskState::Assigned);
}

/// Retention: terminal tasks of a kind completed before a time, walked by cursor, deleted with
/// their trajectories; other tasks stay whole.
pub async fn retention_walks_and_deletes_terminal_tasks(store: Store) {
    for (i, id) in ["D1", "D2", "D3"].into_iter().enumerate() {
        let end = T0 + 10 * i as i64;
        let steps = vec![
            routed(id, T0),
            started(id, T0, T0),
            complete(id, end, false),
        ];
        put(&store, id, TaskKind::Shadow, steps).await;
    }
    put(&store, "Q", TaskKind::Shadow, Vec::new()).await;
    put(
        &store,
        "O",
        TaskKind::Live,
        vec![op("O", Action::Cancel, T0)],
    )
    .await;
    let first = store
        .retired(TaskKind::Shadow, T0 + 15, None, 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let next = store
        .retired(TaskKind::Shadow, T0 + 15, Some(first[0].cursor), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = first.iter().chain(&next).map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["D1", "D2"]);
    let deleted = store
        .delete_tasks(vec!["D1".into(), "Q".into(), "missing".into()])
        .await
        .unwrap();
    assert_eq!(deleted, ["D1"]);
    assert_eq!(store.get_task("D1").await.unwrap(), None);
    assert!(store.transitions_of("D1").await.unwrap().is_empty());
    assert!(store.get_task("Q").await.unwrap().is_some());
    assert_eq!(store.counts().get(TaskKind::Shadow, TaskState::Done), 2);
    let all = store
        .list_tasks(TaskFilter {
            limit: 100,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
}

/// Gate runs: the latest is reported; a pass counts only for a full run of that fingerprint.
pub async fn gate_runs_are_recorded(store: Store) {
    assert_eq!(store.latest_gate_run().await.unwrap(), None);
    assert!(!store.gate_passed_for("fp1").await.unwrap());
    let run = |label: Option<&str>, fp: &str, passed: u32| GateRunRecord {
        at_ms: T0,
        label: label.map(str::to_string),
        fingerprint: fp.into(),
        passed,
        total: 5,
        report: "{}".into(),
    };
    store.record_gate_run(run(None, "fp1", 5)).await.unwrap();
    assert!(store.gate_passed_for("fp1").await.unwrap());
    store
        .record_gate_run(run(Some("code-1"), "fp1", 1))
        .await
        .unwrap();
    assert!(
        store.gate_passed_for("fp1").await.unwrap(),
        "a labelled run does not count"
    );
    store.record_gate_run(run(None, "fp1", 4)).await.unwrap();
    assert!(
        !store.gate_passed_for("fp1").await.unwrap(),
        "the latest full run counts"
    );
    assert!(!store.gate_passed_for("fp2").await.unwrap());
    let latest = store.latest_gate_run().await.unwrap().unwrap();
    assert_eq!((latest.passed, latest.label), (4, None));
    // The history, newest first and as long as asked.
    let history: Vec<(u32, Option<String>)> = store
        .gate_runs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.passed, g.label))
        .collect();
    assert_eq!(
        history,
        [(4, None), (1, Some("code-1".to_string())), (5, None)]
    );
    assert_eq!(store.gate_runs(2).await.unwrap().len(), 2);
}

/// The mode round-trips; an override is pending until a mode change consumes it.
pub async fn mode_and_overrides(store: Store) {
    assert_eq!(store.load_mode().await.unwrap(), None);
    let change = |mode, at, consume| ModeChange {
        mode,
        since_ms: at,
        consume_override: consume,
    };
    store
        .save_mode(change(Mode::Shadow, T0, None))
        .await
        .unwrap();
    assert_eq!(
        store.load_mode().await.unwrap(),
        Some(StoredMode {
            mode: Mode::Shadow,
            since_ms: Some(T0)
        })
    );
    for reason in ["first", "second"] {
        let o = NewOverride {
            mode: Mode::Live,
            reason: reason.into(),
            by: "alice".into(),
            uid: 1000,
            at_ms: T0,
        };
        store.insert_override(o).await.unwrap();
    }
    assert_eq!(store.pending_override(Mode::Shadow).await.unwrap(), None);
    let (id, rec) = store.pending_override(Mode::Live).await.unwrap().unwrap();
    assert_eq!(
        (rec.reason.as_str(), rec.by.as_str(), rec.uid),
        ("first", "alice", 1000)
    );
    assert_eq!(store.pending_overrides().await.unwrap().len(), 1);
    store
        .save_mode(change(Mode::Live, T0 + 1, Some(id)))
        .await
        .unwrap();
    let (_, next) = store.pending_override(Mode::Live).await.unwrap().unwrap();
    assert_eq!(next.reason, "second", "the oldest is consumed first");
    assert_eq!(
        store.load_mode().await.unwrap().map(|m| m.mode),
        Some(Mode::Live)
    );
    // An override is used once: a second change naming it (another node's reload that read it
    // before the first consumed it) is refused and changes nothing, the mode included.
    let again = store
        .save_mode(change(Mode::Shadow, T0 + 2, Some(id)))
        .await;
    assert!(
        matches!(again, Err(StoreError::Rejected(ErrorCode::GateRefused, _))),
        "{again:?}"
    );
    assert_eq!(
        store.load_mode().await.unwrap(),
        Some(StoredMode {
            mode: Mode::Live,
            since_ms: Some(T0 + 1)
        })
    );
}

/// The liveness probe goes through the writer and changes nothing a reader can see.
pub async fn probe_commits_nothing(store: Store) {
    put(&store, "P1", TaskKind::Live, vec![routed("P1", T0 + 1)]).await;
    let before = (
        store.get_task("P1").await.expect("read"),
        store.transitions_of("P1").await.expect("read"),
        store.counts().entries(),
    );
    let mut events = store.subscribe();
    store.probe().await.expect("probe");
    store.probe().await.expect("probe");
    let after = (
        store.get_task("P1").await.expect("read"),
        store.transitions_of("P1").await.expect("read"),
        store.counts().entries(),
    );
    assert_eq!(before, after);
    assert!(matches!(
        events.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    let all = store
        .list_tasks(TaskFilter {
            limit: 10,
            ..TaskFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
}

/// Shadow rows, pending dispatch, undelivered tasks and state-keeping events.
pub async fn reads_for_gates_dispatch_and_delivery(store: Store) {
    put(
        &store,
        "S1",
        TaskKind::Shadow,
        vec![op("S1", Action::Fail, T0 + 5)],
    )
    .await;
    put(&store, "Q", TaskKind::Live, Vec::new()).await;
    put(&store, "A", TaskKind::Live, vec![routed("A", T0)]).await;
    let done = vec![
        routed("D", T0),
        started("D", T0, T0),
        complete("D", T0 + 1, false),
    ];
    put(&store, "D", TaskKind::Live, done).await;
    let shadow = store.shadow_tally_since(T0).await.unwrap();
    assert_eq!(shadow.total, 1);
    assert_eq!(shadow.by_state[TaskState::Failed as usize], 1);
    // Completed at T0 + 5, created at T0.
    assert_eq!(shadow.durations_ms, [5]);
    assert_eq!(store.shadow_tally_since(T0 + 1).await.unwrap().total, 0);
    let pending: Vec<String> = store
        .pending_dispatch()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.task.id)
        .collect();
    assert_eq!(pending.len(), 2);
    assert!(pending.contains(&"Q".to_string()) && pending.contains(&"A".to_string()));
    let undelivered = store.undelivered_since(T0, "deliver").await.unwrap();
    assert_eq!(
        undelivered
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["D"]
    );
    let mut rx = store.subscribe();
    store
        .append_event(NewEvent {
            task_id: "D".into(),
            kind: TaskKind::Live,
            state: TaskState::Done,
            at_ms: T0 + 2,
            actor: "delivery".into(),
            action: "deliver".into(),
            details: Some([("exitStatus".to_string(), "0".to_string())].into()),
        })
        .await
        .unwrap();
    assert_eq!(drain(&mut rx).len(), 1);
    assert!(store
        .undelivered_since(T0, "deliver")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.counts().get(TaskKind::Live, TaskState::Done), 1);
    let (task, events) = store.task_detail("D").await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Done);
    assert_eq!(events.last().map(|e| e.action.as_str()), Some("deliver"));
    assert_eq!(store.task_detail("none").await.unwrap(), None);
}

/// The goal-text filter matches the text as typed (ASCII case aside): `%`, `_`, `\\` and quotes are
/// plain characters, a text shorter than a trigram works, and it combines with the other filters
/// and the cursor. (On SQLite, goals are found whether or not the writer has indexed them yet.)
pub async fn goal_text_filter_matches_as_typed(store: Store) {
    let goals = [
        ("G0", TaskKind::Live, "Deploy the release"),
        ("G1", TaskKind::Shadow, "deploy in shadow"),
        ("G2", TaskKind::Live, "50% off_sale on C:\\tmp"),
        ("G3", TaskKind::Live, "50 percent offsale on C:tmp"),
        ("G4", TaskKind::Live, "say \"hi\" to the team"),
        ("G5", TaskKind::Live, "redeploy after the fix"),
    ];
    for (i, (id, kind, goal)) in goals.iter().enumerate() {
        let mut t = task(id, *kind);
        t.created_ms = T0 + i as i64;
        t.goal = goal.to_string();
        store
            .submit(SubmitPlan {
                task: t,
                actor: "alice".into(),
                steps: Vec::new(),
            })
            .await
            .unwrap();
    }
    let find = |text: &str, kind: Option<TaskKind>, cursor: Option<Cursor>| {
        let store = store.clone();
        let f = TaskFilter {
            kind,
            goal_contains: Some(text.to_string()),
            cursor,
            limit: 100,
            ..TaskFilter::default()
        };
        async move {
            let tasks = store.list_tasks(f).await.unwrap();
            tasks.into_iter().map(|t| t.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        find("DEPLOY", Some(TaskKind::Live), None).await,
        ["G5", "G0"]
    );
    assert_eq!(find("deploy", None, None).await, ["G5", "G1", "G0"]);
    assert_eq!(
        find("deploy", None, Some(Cursor::Before("G5".into()))).await,
        ["G1", "G0"]
    );
    assert_eq!(find("50%", None, None).await, ["G2"]);
    assert_eq!(find("f_s", None, None).await, ["G2"]);
    assert_eq!(find("c:\\t", None, None).await, ["G2"]);
    assert_eq!(find("\"hi\"", None, None).await, ["G4"]);
    assert_eq!(find("% of", None, None).await, ["G2"]);
    assert_eq!(find("de", None, None).await, ["G5", "G1", "G0"]);
    assert!(find("nowhere to be found", None, None).await.is_empty());
}

/// Listings: filters by state, agent and goal text; pages newest first by cursor visit every task
/// exactly once while new tasks arrive, also among tasks created in the same millisecond.
pub async fn listing_filters_and_pages_each_task_once(store: Store) {
    let mut expected = Vec::new();
    for i in 0..25 {
        let id = format!("L{i:03}");
        let mut t = task(&id, TaskKind::Live);
        // Three tasks per millisecond, so page boundaries fall inside one.
        t.created_ms = T0 + i / 3;
        t.goal = if i % 5 == 0 {
            "Deploy the release".into()
        } else {
            "fix the bug".into()
        };
        let steps = if i % 2 == 0 {
            vec![routed(&id, T0 + 100)]
        } else {
            Vec::new()
        };
        store
            .submit(SubmitPlan {
                task: t,
                actor: "alice".into(),
                steps,
            })
            .await
            .unwrap();
        expected.push(id);
    }
    expected.reverse();
    let page = |cursor: Option<Cursor>| TaskFilter {
        kind: Some(TaskKind::Live),
        cursor,
        limit: 7,
        ..TaskFilter::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut late = 0;
    loop {
        let tasks = store.list_tasks(page(cursor.clone())).await.unwrap();
        // New tasks arrive between pages; a newest-first walk must neither repeat nor skip.
        late += 1;
        let mut t = task(&format!("N{late:03}"), TaskKind::Live);
        t.created_ms = T0 + 1_000 + late;
        store
            .submit(SubmitPlan {
                task: t,
                actor: "alice".into(),
                steps: Vec::new(),
            })
            .await
            .unwrap();
        let Some(last) = tasks.last() else { break };
        cursor = Some(Cursor::Before(last.id.clone()));
        seen.extend(tasks.iter().map(|t| t.id.clone()));
    }
    assert_eq!(seen, expected);

    // Backwards from the oldest: the newer neighbours, still newest first.
    let newer = store
        .list_tasks(page(Some(Cursor::After("L000".into()))))
        .await
        .unwrap();
    let ids: Vec<&str> = newer.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        ["L007", "L006", "L005", "L004", "L003", "L002", "L001"]
    );

    let filtered = |f: TaskFilter| async {
        let tasks = store.list_tasks(f).await.unwrap();
        tasks.into_iter().map(|t| t.id).collect::<Vec<_>>()
    };
    // Every listing below is of live tasks, 100 at most.
    let live = TaskFilter {
        kind: Some(TaskKind::Live),
        limit: 100,
        ..TaskFilter::default()
    };
    let deploy = filtered(TaskFilter {
        goal_contains: Some("deploy".into()),
        ..live.clone()
    })
    .await;
    assert_eq!(deploy, ["L020", "L015", "L010", "L005", "L000"]);
    let assigned = filtered(TaskFilter {
        state: Some(TaskState::Assigned),
        agent: Some("coder".into()),
        ..live.clone()
    })
    .await;
    assert_eq!(assigned.len(), 13);
    assert!(assigned.windows(2).all(|w| w[0] > w[1]), "{assigned:?}");
    // A waiting state with the text filter, and each state against the unfiltered listing: a
    // waiting state is read through the state index, an end state is not.
    let assigned_deploy = filtered(TaskFilter {
        state: Some(TaskState::Assigned),
        goal_contains: Some("deploy".into()),
        ..live.clone()
    })
    .await;
    assert_eq!(assigned_deploy, ["L020", "L010", "L000"]);
    let all = store.list_tasks(live.clone()).await.unwrap();
    for state in TaskState::ALL {
        let listed = filtered(TaskFilter {
            state: Some(state),
            ..live.clone()
        })
        .await;
        let expected: Vec<String> = all
            .iter()
            .filter(|t| t.state == state)
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(listed, expected, "{state:?}");
    }
    let nobody = filtered(TaskFilter {
        agent: Some("nobody".into()),
        ..live
    })
    .await;
    assert!(nobody.is_empty());

    // A cursor naming no task is an error, not an empty page that looks like the end.
    let err = store
        .list_tasks(page(Some(Cursor::Before("MISSING".into()))))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Rejected(orchestrator_proto::ErrorCode::NotFound, _)
        ),
        "{err:?}"
    );
}

// ---- the notification outbox --------------------------------------------------------------------

pub(crate) fn sink(name: &str, events: &[&str]) -> NotifySink {
    NotifySink {
        name: name.into(),
        filter: SinkFilter {
            events: events.iter().map(|e| e.to_string()).collect(),
            kinds: [TaskKind::Shadow, TaskKind::Live].into(),
            agents: Default::default(),
        },
        target: SinkTarget::Command(vec!["/bin/true".into()]),
        secret_file: None,
        timeout: Duration::from_secs(1),
        give_up_after: Duration::from_secs(60),
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(100),
    }
}

pub(crate) fn rules(sinks: Vec<NotifySink>) -> OutboxRules {
    OutboxRules {
        sinks,
        approval: Default::default(),
        public_url: "http://127.0.0.1:7419".into(),
    }
}

fn body(e: &OutboxEntry) -> serde_json::Value {
    serde_json::from_str(&e.body).expect("an event body is JSON")
}

/// A transition a sink wants writes its outbox row with it, once per sink that wants it, with a
/// stable event id; kinds no sink asked for, and refused transitions, write nothing.
pub async fn outbox_is_written_with_the_transition(store: Store) {
    store.set_outbox_rules(rules(vec![
        sink("phone", &["*"]),
        sink("audit", &["task.done", "approval.requested"]),
    ]));
    let signal = store.outbox_signal();
    let steps = |id: &str| {
        vec![
            routed(id, T0 + 1),
            started(id, T0 + 2, T0 + 50),
            complete(id, T0 + 3, true).detail("approval", "risky; costly"),
        ]
    };
    put(&store, "T1", TaskKind::Live, steps("T1")).await;
    assert!(
        signal.has_changed().unwrap(),
        "a commit with outbox rows wakes delivery"
    );
    put(&store, "S1", TaskKind::Synthetic, steps("S1")).await;
    let refused = store.transition(op("T1", Action::Start, T0 + 4)).await;
    assert!(refused.is_err());

    for name in ["phone", "audit"] {
        let rows = store.outbox_pending(name, 10).await.unwrap();
        assert_eq!(rows.len(), 1, "{name}: {rows:?}");
        let b = body(&rows[0]);
        assert_eq!(b["type"], "approval.requested");
        assert_eq!(b["task"]["id"], "T1");
        assert_eq!(b["task"]["agent"], "coder");
        assert_eq!(b["reasons"], serde_json::json!(["risky", "costly"]));
        assert_eq!(b["link"], "http://127.0.0.1:7419/console/tasks/T1");
        assert_eq!(rows[0].event_id, b["id"].as_str().unwrap());
    }
    let ids: Vec<String> = store
        .outbox_pending("phone", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let again: Vec<String> = store
        .outbox_pending("audit", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, again, "one event, one id, whatever the sink");

    // `*` leaves task.done out; the sink that names it gets it.
    store
        .transition(op("T1", Action::Approve, T0 + 5))
        .await
        .unwrap();
    let phone: Vec<String> = store
        .outbox_pending("phone", 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(phone, ["approval.requested", "approval.decided"]);
    let audit: Vec<String> = store
        .outbox_pending("audit", 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(
        audit,
        ["approval.requested"],
        "approval.decided is not task.done"
    );
}

/// A plan that is refused part-way rolls back the outbox rows its earlier steps wrote.
pub async fn rolled_back_job_writes_no_outbox_row(store: Store) {
    store.set_outbox_rules(rules(vec![sink("phone", &["*"])]));
    put(
        &store,
        "T1",
        TaskKind::Live,
        vec![routed("T1", T0 + 1), started("T1", T0 + 2, T0 + 50)],
    )
    .await;
    let plan = Plan {
        id: "T1".into(),
        kind: TaskKind::Live,
        from: TaskState::InProgress,
        steps: vec![
            complete("T1", T0 + 3, true),
            // Refused: the task is awaiting approval by then.
            op("T1", Action::Start, T0 + 4),
        ],
    };
    let out = store.advance(vec![plan]).await.unwrap();
    assert!(out[0].is_err());
    assert!(store.outbox_pending("phone", 10).await.unwrap().is_empty());
    assert_eq!(
        store.get_task("T1").await.unwrap().unwrap().state,
        TaskState::InProgress
    );
    assert!(store.outbox_stats().await.unwrap().is_empty());
}

/// A sink's rows come back in commit order per task; marks move them on: delivered rows leave,
/// failed attempts count, dead rows stay until retried, and the alarm is written with them.
pub async fn outbox_order_and_marks(store: Store) {
    store.set_outbox_rules(rules(vec![
        sink("phone", &["*"]),
        sink("pager", &["daemon.alarm"]),
    ]));
    for id in ["A", "B"] {
        put(
            &store,
            id,
            TaskKind::Live,
            vec![routed(id, T0 + 1), started(id, T0 + 2, T0 + 50)],
        )
        .await;
    }
    store.transition(complete("A", T0 + 3, true)).await.unwrap();
    store.transition(complete("B", T0 + 4, true)).await.unwrap();
    store
        .transition(op("A", Action::Reject, T0 + 5))
        .await
        .unwrap();
    store
        .transition(op("B", Action::Cancel, T0 + 6))
        .await
        .unwrap();
    let rows = store.outbox_pending("phone", 10).await.unwrap();
    let seen: Vec<(Option<&str>, &str)> = rows
        .iter()
        .map(|e| (e.task_id.as_deref(), e.event_type.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("A"), "approval.requested"),
            (Some("B"), "approval.requested"),
            (Some("A"), "approval.decided"),
            (Some("B"), "task.cancelled"),
        ]
    );
    assert!(rows.windows(2).all(|w| w[0].key < w[1].key));
    // Read after A was rejected, its request still says what the commit said.
    assert_eq!(body(&rows[0])["task"]["state"], "awaiting_approval");
    assert_eq!(body(&rows[2])["task"]["state"], "failed");
    assert_eq!(body(&rows[2])["decision"], "rejected");
    assert!(store.outbox_pending("pager", 10).await.unwrap().is_empty());

    store
        .mark_delivered(vec![rows[0].key.clone()])
        .await
        .unwrap();
    store
        .mark_attempt_failed(rows[1].key.clone(), "HTTP 500".into())
        .await
        .unwrap();
    let left = store.outbox_pending("phone", 10).await.unwrap();
    assert_eq!(left.len(), 3);
    assert_eq!((&left[0].key, left[0].attempts), (&rows[1].key, 1));

    let alarm = Notice::new("daemon.alarm", T0 + 7).field("sink", "phone");
    let alarm = Notice {
        except_sink: Some("phone".into()),
        ..alarm
    };
    store
        .mark_dead(vec![rows[1].clone(), rows[2].clone()], T0 + 7, Some(alarm))
        .await
        .unwrap();
    let stats = store.outbox_stats().await.unwrap();
    let phone = stats.iter().find(|s| s.sink == "phone").unwrap();
    assert_eq!((phone.pending, phone.dead), (1, 2));
    assert_eq!(phone.last_error.as_deref(), Some("HTTP 500"));
    let pager = store.outbox_pending("pager", 10).await.unwrap();
    assert_eq!(pager.len(), 1);
    assert_eq!(body(&pager[0])["sink"], "phone");

    assert_eq!(store.retry_dead("phone", T0 + 8).await.unwrap(), 2);
    let back = store.outbox_pending("phone", 10).await.unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back[0].pending_since_ms, T0 + 8);
    assert_eq!(back[0].attempts, 0);

    // Several deliveries marked in one write: exactly those rows leave, the rest keep their order.
    store
        .mark_delivered(vec![back[0].key.clone(), back[2].key.clone()])
        .await
        .unwrap();
    let left = store.outbox_pending("phone", 10).await.unwrap();
    assert_eq!(
        left.iter().map(|e| &e.key).collect::<Vec<_>>(),
        [&back[1].key]
    );
    store.mark_delivered(Vec::new()).await.unwrap();
    assert_eq!(store.outbox_pending("phone", 10).await.unwrap(), left);
}

/// A sink added by new rules is sent what commits from then on, not what was stored before; the
/// sinks it joins keep what they had.
pub async fn a_sink_added_later_is_sent_what_commits_after(store: Store) {
    store.set_outbox_rules(rules(vec![sink("phone", &["*"])]));
    put(&store, "T1", TaskKind::Live, waiting("T1")).await;
    store.set_outbox_rules(rules(vec![
        sink("phone", &["*"]),
        sink("pager", &["approval.requested"]),
    ]));
    put(&store, "T2", TaskKind::Live, waiting("T2")).await;
    let tasks = |entries: Vec<OutboxEntry>| -> Vec<String> {
        entries
            .iter()
            .map(|e| e.task_id.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(
        tasks(store.outbox_pending("phone", 10).await.unwrap()),
        ["T1", "T2"]
    );
    assert_eq!(
        tasks(store.outbox_pending("pager", 10).await.unwrap()),
        ["T2"]
    );
}

/// A notice goes to the sinks that want it, or only to the one it names.
pub async fn notices_follow_the_filters(store: Store) {
    store.set_outbox_rules(rules(vec![
        sink("phone", &["mode.changed"]),
        sink("pager", &["daemon.alarm"]),
    ]));
    let n = store
        .enqueue_notice(Notice::new("mode.changed", T0).field("to", "live"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let test = Notice {
        only_sink: Some("pager".into()),
        ..Notice::new("test", T0)
    };
    assert_eq!(store.enqueue_notice(test).await.unwrap(), 1);
    // No sink wants a shadow verdict: nothing is written.
    let unwanted = Notice::new("gate.shadow", T0).field("passed", true);
    assert_eq!(store.enqueue_notice(unwanted).await.unwrap(), 0);
    let phone = store.outbox_pending("phone", 10).await.unwrap();
    assert_eq!(phone.len(), 1);
    assert_eq!(body(&phone[0])["to"], "live");
    let pager = store.outbox_pending("pager", 10).await.unwrap();
    assert_eq!(pager[0].event_type, "test");
}

/// Tasks waiting for approval come back with since when they wait and whether they were warned.
pub async fn awaiting_approval_lists_waiting_tasks(store: Store) {
    put(&store, "W", TaskKind::Live, waiting("W")).await;
    put(&store, "Q", TaskKind::Live, Vec::new()).await;
    let waiting = store.awaiting_approval(AwaitingCut::ALL).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (
            waiting[0].id.as_str(),
            waiting[0].since_ms,
            waiting[0].warned
        ),
        ("W", T0 + 3, false)
    );
    assert_eq!(waiting[0].expires_ms, T0 + 10_000);
    store
        .append_event(NewEvent {
            task_id: "W".into(),
            kind: TaskKind::Live,
            state: TaskState::AwaitingApproval,
            at_ms: T0 + 4,
            actor: "sweeper".into(),
            action: outbox::APPROVAL_WARNING_ACTION.into(),
            details: None,
        })
        .await
        .unwrap();
    assert!(store.awaiting_approval(AwaitingCut::ALL).await.unwrap()[0].warned);
    // A task no longer in the state an event names gets no event: Q is queued, not waiting.
    let before = store.transitions_of("Q").await.unwrap();
    store
        .append_event(NewEvent {
            task_id: "Q".into(),
            kind: TaskKind::Live,
            state: TaskState::AwaitingApproval,
            at_ms: T0 + 5,
            actor: "sweeper".into(),
            action: outbox::APPROVAL_WARNING_ACTION.into(),
            details: None,
        })
        .await
        .unwrap();
    assert_eq!(store.transitions_of("Q").await.unwrap(), before);
}

/// The approval metrics' read: the newest waiting tasks up to the limit, harness tasks left out,
/// each with when it entered the state (a warning recorded later does not move that).
pub async fn awaiting_since_reads_the_newest_waiting_tasks(store: Store) {
    for (id, created, harness) in [
        ("W1", T0, false),
        ("W2", T0 + 1, false),
        ("H", T0 + 2, true),
    ] {
        let mut t = task(id, TaskKind::Live);
        t.created_ms = created;
        t.harness = harness;
        let steps = vec![
            routed(id, created + 10),
            started(id, created + 20, created + 90),
            complete(id, created + 30, true),
        ];
        put_task(&store, t, steps).await;
    }
    put(&store, "Q", TaskKind::Live, Vec::new()).await;
    store
        .append_event(NewEvent {
            task_id: "W1".into(),
            kind: TaskKind::Live,
            state: TaskState::AwaitingApproval,
            at_ms: T0 + 500,
            actor: "sweeper".into(),
            action: outbox::APPROVAL_WARNING_ACTION.into(),
            details: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store.awaiting_since(10).await.unwrap(),
        vec![("W2".to_string(), T0 + 31), ("W1".to_string(), T0 + 30)]
    );
    assert_eq!(
        store.awaiting_since(1).await.unwrap(),
        vec![("W2".to_string(), T0 + 31)]
    );
}

/// A cut reads the waiting tasks that expire by its bound, or were created by its other one, and
/// no other.
pub async fn awaiting_approval_reads_only_what_the_cut_admits(store: Store) {
    // Created at T0, expiring at T0 + 10 s.
    put(&store, "W", TaskKind::Live, waiting("W")).await;
    let ids = |cut: AwaitingCut| {
        let store = store.clone();
        async move {
            let read = store.awaiting_approval(cut).await.unwrap();
            read.into_iter().map(|w| w.id).collect::<Vec<_>>()
        }
    };
    let expiring = |by: i64| AwaitingCut {
        expires_by_ms: by,
        created_by_ms: None,
    };
    assert_eq!(ids(expiring(T0 + 10_000)).await, ["W"]);
    assert!(ids(expiring(T0 + 9_999)).await.is_empty());
    let created = |by: i64| AwaitingCut {
        expires_by_ms: T0,
        created_by_ms: Some(by),
    };
    assert_eq!(ids(created(T0)).await, ["W"]);
    assert!(ids(created(T0 - 1)).await.is_empty());
}

/// Usage is stored with the transition that carries it, kept by those that do not, and read back
/// per task; a deferral gives back the attempt its start counted, a retry keeps it.
pub async fn usage_is_stored_and_a_deferral_counts_no_attempt(store: Store) {
    use orchestrator_proto::task::Usage;
    let used = Usage {
        model: Some("m1".into()),
        input_tokens: Some(100),
        cost_usd: Some(0.5),
        ..Usage::default()
    };
    put(&store, "T1", TaskKind::Shadow, vec![routed("T1", T0 + 1)]).await;
    store
        .transition(started("T1", T0 + 2, T0 + 100))
        .await
        .unwrap();
    let deferred = store
        .transition(op("T1", Action::Defer, T0 + 3).patch(Patch {
            usage: Some(used.clone()),
            ..Patch::default()
        }))
        .await
        .unwrap();
    assert_eq!(deferred.state, TaskState::Queued);
    assert_eq!(deferred.attempts, 0);
    assert_eq!(deferred.usage.as_ref(), Some(&used));
    assert_eq!(Some(deferred), store.get_task("T1").await.unwrap());

    store.transition(routed("T1", T0 + 4)).await.unwrap();
    store
        .transition(started("T1", T0 + 5, T0 + 100))
        .await
        .unwrap();
    let retried = store
        .transition(op("T1", Action::Retry, T0 + 6))
        .await
        .unwrap();
    assert_eq!((retried.state, retried.attempts), (TaskState::Queued, 1));
    assert_eq!(retried.usage.as_ref(), Some(&used), "kept when not patched");

    put(&store, "T2", TaskKind::Live, Vec::new()).await;
    let rows = store.usage_since(T0 + 5).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].agent.as_deref(), Some("coder"));
    assert_eq!(
        (rows[0].kind, rows[0].started_ms),
        (TaskKind::Shadow, T0 + 5)
    );
    assert_eq!(rows[0].usage, used);
    assert!(store.usage_since(T0 + 6).await.unwrap().is_empty());
}

/// An operator's lift of a budget pause is stored per agent; a later lift replaces the earlier
/// one, and lifts are neither pauses nor seen by the pauses' read.
pub async fn budget_lifts_are_stored_and_replaced(store: Store) {
    use super::BudgetLift;
    let lift = |agent: &str, day: i64| BudgetLift {
        agent: agent.into(),
        day_start: day,
        month_start: T0,
    };
    assert!(store.budget_lifts().await.unwrap().is_empty());
    store.set_budget_lift(lift("coder", T0)).await.unwrap();
    store.set_budget_lift(lift("researcher", T0)).await.unwrap();
    store
        .set_budget_lift(lift("coder", T0 + 86_400_000))
        .await
        .unwrap();
    let mut all = store.budget_lifts().await.unwrap();
    all.sort_by(|a, b| a.agent.cmp(&b.agent));
    assert_eq!(
        all,
        vec![lift("coder", T0 + 86_400_000), lift("researcher", T0)]
    );
    assert!(store.agent_pauses().await.unwrap().is_empty());
}

/// Agents' pauses are stored, replaced, read back and cleared, each agent on its own.
pub async fn agent_pauses_are_stored_and_cleared(store: Store) {
    use super::StoredPause;
    use orchestrator_proto::message::PauseCause;
    let pause = |agent: &str, until_ms: Option<i64>| StoredPause {
        agent: agent.into(),
        cause: PauseCause::ProviderLimit,
        until_ms,
        reason: "usage limit reached".into(),
        by: "dispatcher".into(),
        at_ms: T0,
    };
    assert!(store.agent_pauses().await.unwrap().is_empty());
    store
        .set_agent_pause("coder".into(), Some(pause("coder", Some(T0 + 5))))
        .await
        .unwrap();
    store
        .set_agent_pause("researcher".into(), Some(pause("researcher", None)))
        .await
        .unwrap();
    let mut replaced = pause("coder", None);
    replaced.cause = PauseCause::Operator;
    store
        .set_agent_pause("coder".into(), Some(replaced.clone()))
        .await
        .unwrap();
    let mut all = store.agent_pauses().await.unwrap();
    all.sort_by(|a, b| a.agent.cmp(&b.agent));
    assert_eq!(all, vec![replaced, pause("researcher", None)]);
    store.set_agent_pause("coder".into(), None).await.unwrap();
    store.set_agent_pause("nobody".into(), None).await.unwrap();
    assert_eq!(
        store.agent_pauses().await.unwrap(),
        vec![pause("researcher", None)]
    );
    // The mode shares the metadata table and is not a pause.
    store
        .save_mode(ModeChange {
            mode: Mode::Shadow,
            since_ms: T0,
            consume_override: None,
        })
        .await
        .unwrap();
    assert_eq!(store.agent_pauses().await.unwrap().len(), 1);
}
