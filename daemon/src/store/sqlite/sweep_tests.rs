//! Property tests of the sweeper's statements on SQLite: expiry, reclaim and retention take
//! exactly the tasks they should, leave no orphan events, and keep the counts equal to the table.

use super::queries;
use crate::machine::Action;
use crate::store::{
    AttemptLimits, Batch, NewTask, Patch, Reclaim, Reclaimed, Store, StoreError, TransitionOp,
};
use orchestrator_proto::task::{TaskKind, TaskState};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

const ACTOR: &str = "sweeper";

const NOW: i64 = 1_000_000_000;
const LEASE_FRESH: i64 = NOW + 30_000;
const LEASE_LAPSED: i64 = NOW - 1;

/// Where a generated task is put before the sweeper runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Queued,
    Assigned,
    AwaitingApproval,
    InProgressHealthy,
    InProgressLapsed,
    Done,
    Failed,
    Cancelled,
    Expired,
}

impl Setup {
    const ALL: [Setup; 9] = [
        Setup::Queued,
        Setup::Assigned,
        Setup::AwaitingApproval,
        Setup::InProgressHealthy,
        Setup::InProgressLapsed,
        Setup::Done,
        Setup::Failed,
        Setup::Cancelled,
        Setup::Expired,
    ];

    fn state(self) -> TaskState {
        match self {
            Setup::Queued => TaskState::Queued,
            Setup::Assigned => TaskState::Assigned,
            Setup::AwaitingApproval => TaskState::AwaitingApproval,
            Setup::InProgressHealthy | Setup::InProgressLapsed => TaskState::InProgress,
            Setup::Done => TaskState::Done,
            Setup::Failed => TaskState::Failed,
            Setup::Cancelled => TaskState::Cancelled,
            Setup::Expired => TaskState::Expired,
        }
    }
}

#[derive(Debug, Clone)]
struct Spec {
    setup: Setup,
    kind: TaskKind,
    /// `expiresAt` relative to [`NOW`].
    expires_in: i64,
    /// When a terminal task reached its state, relative to [`NOW`].
    completed_in: i64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(Setup::ALL.to_vec()),
        prop::sample::select(TaskKind::ALL.to_vec()),
        -3i64..=3,
        -5i64..=0,
    )
        .prop_map(|(setup, kind, e, c)| Spec {
            setup,
            kind,
            // Around NOW, including exactly NOW (due: expiry is `expires_at <= now`).
            expires_in: e * 1_000,
            completed_in: c * 10_000,
        })
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

fn id_of(i: usize) -> String {
    format!("T{i:04}")
}

/// Store `spec` as task `id` through the same transitions the daemon makes.
fn put(b: &mut Batch<'_>, id: &str, s: &Spec) -> Result<(), StoreError> {
    let expires = NOW + s.expires_in;
    let created = NOW - 100_000;
    b.insert_task(
        NewTask {
            id: id.to_string(),
            kind: s.kind,
            goal: "fix the bug".into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            submitted_by: "alice".into(),
            harness: false,
            created_ms: created,
            expires_ms: expires,
        },
        "alice",
    )?;
    let step = |b: &mut Batch<'_>, action: Action, at: i64, patch: Patch| {
        b.transition(TransitionOp::new(id, action, "test", at).patch(patch))
            .map(|_| ())
    };
    let routed = Patch {
        agent: Some("coder".into()),
        ..Patch::default()
    };
    let leased = |until| Patch {
        lease_until: Some(until),
        ..Patch::default()
    };
    let at = created + 1;
    let end = NOW + s.completed_in;
    match s.setup {
        Setup::Queued => {}
        Setup::Assigned => step(b, Action::Route, at, routed)?,
        Setup::AwaitingApproval | Setup::Done => {
            step(b, Action::Route, at, routed)?;
            step(b, Action::Start, at, leased(LEASE_FRESH))?;
            let approval_required = s.setup == Setup::AwaitingApproval;
            step(
                b,
                Action::Complete { approval_required },
                end,
                Patch::default(),
            )?;
        }
        Setup::InProgressHealthy | Setup::InProgressLapsed => {
            step(b, Action::Route, at, routed)?;
            let lease = if s.setup == Setup::InProgressHealthy {
                LEASE_FRESH
            } else {
                LEASE_LAPSED
            };
            step(b, Action::Start, at, leased(lease))?;
        }
        Setup::Failed => step(b, Action::Fail, end, Patch::default())?,
        Setup::Cancelled => step(b, Action::Cancel, end, Patch::default())?,
        // An expired task reached its state once its own expiresAt had passed.
        Setup::Expired => step(b, Action::Expire, expires.max(end), Patch::default())?,
    }
    Ok(())
}

fn seed(store: &Store, specs: &[Spec]) {
    let specs = specs.to_vec();
    store
        .write_blocking(move |b| {
            for (i, s) in specs.iter().enumerate() {
                put(b, &id_of(i), s)?;
            }
            Ok(())
        })
        .unwrap();
}

/// id → (state, number of trajectory events, completed_at).
fn snapshot(store: &Store) -> BTreeMap<String, (TaskState, i64, Option<i64>)> {
    store
        .read_blocking(|c| {
            let mut stmt = c.prepare(
                "SELECT t.id, t.state, t.completed_at, \
                 (SELECT count(*) FROM events e WHERE e.task_id = t.id) FROM tasks t",
            )?;
            let rows = stmt.query_map([], |r| {
                let state: String = r.get(1)?;
                Ok((r.get::<_, String>(0)?, state, r.get(2)?, r.get(3)?))
            })?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (id, state, completed, events) = row?;
                out.insert(
                    id,
                    (state.parse().map_err(StoreError::Sql)?, events, completed),
                );
            }
            Ok(out)
        })
        .unwrap()
}

fn orphan_events(store: &Store) -> i64 {
    store
        .read_blocking(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM events WHERE task_id NOT IN (SELECT id FROM tasks)",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap()
}

/// The in-memory counts agree with the table.
fn assert_counts_match(store: &Store) {
    let mut want: HashMap<(TaskKind, TaskState), u64> = HashMap::new();
    let rows: Vec<(String, String)> = store
        .read_blocking(|c| {
            let mut stmt = c.prepare("SELECT kind, state FROM tasks")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .unwrap();
    for (k, s) in rows {
        *want
            .entry((k.parse().unwrap(), s.parse().unwrap()))
            .or_default() += 1;
    }
    let counts = store.counts();
    for kind in TaskKind::ALL {
        for state in TaskState::ALL {
            let w = want.get(&(kind, state)).copied().unwrap_or(0);
            assert_eq!(counts.get(kind, state), w, "count of {kind} {state}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Stale-eligible tasks past `expiresAt` are always expired by the
    /// sweeper; `done`, `failed`, `cancelled` and healthy `in_progress` tasks never change.
    #[test]
    fn expiry_takes_exactly_the_stale_eligible_tasks_past_ttl(
        specs in prop::collection::vec(spec(), 0..40),
        limit in 1usize..6,
    ) {
        let (_dir, store) = open();
        seed(&store, &specs);
        let before = snapshot(&store);
        for (state, _, completed) in before.values() {
            prop_assert_eq!(state.is_terminal(), completed.is_some(), "terminal ⇔ completed_at");
        }

        let mut expired = Vec::new();
        let mut batches = 0;
        loop {
            let ids = store.write_blocking(move |b| b.expire_due(NOW, limit, ACTOR)).unwrap();
            batches += 1;
            prop_assert!(batches <= specs.len() + 1, "expiry does not terminate");
            let last = ids.len() < limit;
            expired.extend(ids);
            if last {
                break;
            }
        }
        let no_attempts = Reclaim {
            now: NOW,
            limit: usize::MAX >> 1,
            reason: "test".into(),
            actor: ACTOR.into(),
            attempts: AttemptLimits::default(),
        };
        let Reclaimed { failed, requeued } = store
            .write_blocking(move |b| b.reclaim_lapsed(&no_attempts))
            .unwrap();
        prop_assert!(requeued.is_empty());

        let after = snapshot(&store);
        for (i, s) in specs.iter().enumerate() {
            let id = id_of(i);
            let (was, events_before, _) = before[&id];
            let (now_state, events_after, completed) = after[&id];
            prop_assert_eq!(was, s.setup.state());
            let due = s.expires_in <= 0;
            match s.setup {
                Setup::Queued | Setup::Assigned | Setup::AwaitingApproval if due => {
                    prop_assert_eq!(now_state, TaskState::Expired, "{} {:?}", id, s);
                    prop_assert_eq!(events_after, events_before + 1);
                    prop_assert_eq!(completed, Some(NOW));
                    prop_assert!(expired.contains(&id));
                }
                Setup::InProgressLapsed => {
                    prop_assert_eq!(now_state, TaskState::Failed, "{} {:?}", id, s);
                    prop_assert!(failed.contains(&id));
                }
                _ => {
                    prop_assert_eq!(now_state, was, "{} {:?} must not change", id, s);
                    prop_assert_eq!(events_after, events_before);
                    prop_assert!(!expired.contains(&id) && !failed.contains(&id));
                }
            }
        }
        for id in &expired {
            let events = store.read_blocking(|c| queries::events_of(c, id)).unwrap();
            let last = events.last().unwrap();
            prop_assert_eq!(&last.actor, ACTOR);
            prop_assert_eq!(&last.action, "expire");
        }
        assert_counts_match(&store);
    }

    /// Acceptance 3: retention deletes exactly the terminal tasks completed before the cut-off,
    /// with their events; younger terminal tasks and every non-terminal task remain whole.
    #[test]
    fn retention_deletes_exactly_the_old_terminal_tasks(
        specs in prop::collection::vec(spec(), 0..40),
        cutoff_in in -6i64..=1,
        limit in 1usize..6,
        kind in prop::sample::select(TaskKind::ALL.to_vec()),
    ) {
        let (_dir, store) = open();
        seed(&store, &specs);
        let before_all = snapshot(&store);
        let cutoff = NOW + cutoff_in * 10_000;
        let mut after = None;
        let mut deleted = Vec::new();
        loop {
            let batch = store.read_blocking(|c| queries::retired(c, kind, cutoff, after, limit)).unwrap();
            let Some(last) = batch.last() else { break };
            after = Some(last.cursor);
            let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
            deleted.extend(store.write_blocking(move |b| b.delete_tasks(&ids)).unwrap());
            if batch.len() < limit {
                break;
            }
        }
        let left = snapshot(&store);
        for (id, (state, events, completed)) in &before_all {
            let s = &specs[id[1..].parse::<usize>().unwrap()];
            let old = state.is_terminal() && s.kind == kind && completed.is_some_and(|c| c < cutoff);
            if old {
                prop_assert!(!left.contains_key(id), "{} {:?} should be gone", id, s);
                prop_assert!(deleted.contains(id));
            } else {
                prop_assert_eq!(left.get(id), Some(&(*state, *events, *completed)), "{} {:?} must remain", id, s);
            }
        }
        prop_assert_eq!(orphan_events(&store), 0);
        assert_counts_match(&store);
    }
}

#[test]
fn delete_tasks_leaves_non_terminal_tasks_alone() {
    let (_dir, store) = open();
    let specs = [
        Setup::Done,
        Setup::Queued,
        Setup::AwaitingApproval,
        Setup::InProgressHealthy,
    ]
    .map(|setup| Spec {
        setup,
        kind: TaskKind::Synthetic,
        expires_in: 1_000,
        completed_in: 0,
    });
    seed(&store, &specs);
    let ids: Vec<String> = (0..5).map(id_of).collect(); // T0004 does not exist.
    let deleted = store.write_blocking(move |b| b.delete_tasks(&ids)).unwrap();
    assert_eq!(deleted, vec![id_of(0)]);
    let left = snapshot(&store);
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        [id_of(1), id_of(2), id_of(3)]
    );
    assert_eq!(orphan_events(&store), 0);
}
