//! Property tests of the state machine: random action sequences, applied through the pure
//! `machine::next_state` and through the real `Store`, never break the invariants — terminal states
//! absorb every action, every transition writes exactly one trajectory event, a deferral takes
//! back the attempt its start counted, and the counts the store keeps match its rows.

use orchestrator::machine::{next_state, Action};
use orchestrator::store::{queries, NewTask, Store, StoreError, TransitionOp};
use orchestrator_proto::task::{TaskKind, TaskState};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Any action; those that move a task forward come more often, so that histories reach the later
/// states (and deferrals and retries find a run to end) rather than mostly being refused early.
fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::Route),
        4 => Just(Action::Start),
        2 => any::<bool>().prop_map(|approval_required| Action::Complete { approval_required }),
        1 => Just(Action::Approve),
        1 => Just(Action::Reject),
        1 => Just(Action::Fail),
        1 => Just(Action::Cancel),
        1 => Just(Action::Expire),
        1 => Just(Action::Requeue),
        2 => Just(Action::Defer),
        2 => Just(Action::Retry),
    ]
}

proptest! {
    #[test]
    fn pure_machine_terminal_states_absorb_and_refusals_name_the_state(
        actions in prop::collection::vec(action(), 0..40)
    ) {
        let mut state = TaskState::Queued;
        for a in actions {
            match next_state(state, a) {
                Ok(to) => {
                    prop_assert!(!state.is_terminal(), "{a} moved terminal {state} to {to}");
                    prop_assert_ne!(to, state, "a transition always changes the state");
                    // Only these actions lead back into the queue or into waiting states.
                    if to == TaskState::Queued {
                        prop_assert!(
                            matches!(a, Action::Requeue | Action::Defer | Action::Retry),
                            "{} put a {} task back in the queue", a, state
                        );
                    }
                    if to == TaskState::AwaitingApproval {
                        prop_assert_eq!(a, Action::Complete { approval_required: true });
                    }
                    state = to;
                }
                Err(r) => {
                    prop_assert_eq!(r.from, state);
                    prop_assert_eq!(r.action, a);
                }
            }
        }
    }
}

/// One step of a random history: a transition of task `task`, at time `at_ms`.
#[derive(Debug, Clone)]
struct Step {
    task: usize,
    action: Action,
    at_ms: i64,
}

fn step(tasks: usize) -> impl Strategy<Value = Step> {
    (0..tasks, action(), 0i64..20_000).prop_map(|(task, action, at_ms)| Step {
        task,
        action,
        at_ms,
    })
}

/// A history: tasks with their expiry times and kinds, and groups of steps; each group is one store
/// job whose steps run in their own savepoints.
fn history() -> impl Strategy<Value = (Vec<(i64, TaskKind)>, Vec<Vec<Step>>)> {
    prop::collection::vec(
        (
            0i64..20_000,
            prop_oneof![
                Just(TaskKind::Synthetic),
                Just(TaskKind::Shadow),
                Just(TaskKind::Live)
            ],
        ),
        1..5,
    )
    .prop_flat_map(|tasks| {
        let n = tasks.len();
        (
            Just(tasks),
            prop::collection::vec(prop::collection::vec(step(n), 1..6), 1..10),
        )
    })
}

fn id(i: usize) -> String {
    // Distinct, well-formed ULIDs.
    ulid::Ulid::from_parts(1_000 + i as u64, 42).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_follows_the_machine_and_keeps_its_invariants((tasks, groups) in history()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        // The model: each task's state, how many events it must have and its attempts (a start
        // counts one, a deferral takes it back).
        let mut model: Vec<(TaskState, usize, u32)> = Vec::new();
        for (i, (expires, kind)) in tasks.iter().enumerate() {
            let t = NewTask {
                id: id(i),
                kind: *kind,
                goal: "fix the bug".into(),
                workspace_dir: None,
                required_capabilities: vec![],
                submitted_by: "prop".into(),
                harness: false,
                created_ms: 0,
                expires_ms: *expires,
            };
            store.write_blocking(move |b| b.insert_task(t, "prop")).unwrap();
            model.push((TaskState::Queued, 1, 0));
        }
        for group in groups {
            let ops: Vec<TransitionOp> = group
                .iter()
                .map(|s| TransitionOp::new(&id(s.task), s.action, "prop", s.at_ms))
                .collect();
            let outcomes: Vec<Result<TaskState, StoreError>> = store
                .write_blocking(move |b| {
                    Ok(ops
                        .into_iter()
                        .map(|op| b.nested(|b| b.transition(op)).map(|t| t.state))
                        .collect())
                })
                .unwrap();
            for (s, got) in group.iter().zip(outcomes) {
                let (state, events, attempts) = &mut model[s.task];
                let expires = tasks[s.task].0;
                let expected = next_state(*state, s.action).ok().filter(|_| {
                    // Expiry also needs expiresAt to have passed.
                    s.action != Action::Expire || expires <= s.at_ms
                });
                match (expected, got) {
                    (Some(to), Ok(actual)) => {
                        prop_assert_eq!(actual, to);
                        *state = to;
                        *events += 1;
                        match s.action {
                            Action::Start => *attempts += 1,
                            Action::Defer => *attempts -= 1,
                            _ => {}
                        }
                    }
                    (None, Err(StoreError::Refused { from, .. })) => prop_assert_eq!(from, *state),
                    (None, Err(StoreError::Rejected(..))) => {
                        prop_assert_eq!(s.action, Action::Expire);
                    }
                    (e, g) => prop_assert!(false, "step {:?}: expected {:?}, store said {:?}", s, e, g),
                }
            }
        }

        // Rows, trajectories and counts agree with the model.
        let mut want_counts: BTreeMap<(TaskKind, TaskState), u64> = BTreeMap::new();
        for (i, (state, events, attempts)) in model.iter().enumerate() {
            let key = id(i);
            let (task, trajectory) = store
                .read_blocking(|c| Ok((queries::get_task(c, &key)?.unwrap(), queries::events_of(c, &key)?)))
                .unwrap();
            prop_assert_eq!(task.state, *state);
            prop_assert_eq!(task.attempts, *attempts, "a start counts, a deferral does not");
            prop_assert_eq!(trajectory.len(), *events, "one event per transition");
            prop_assert_eq!(trajectory[0].from, None);
            prop_assert_eq!(trajectory[0].to, TaskState::Queued);
            for pair in trajectory.windows(2) {
                prop_assert_eq!(pair[1].from, Some(pair[0].to));
            }
            prop_assert_eq!(trajectory.last().unwrap().to, *state);
            prop_assert_eq!(task.completed_at.is_some(), state.is_terminal());
            *want_counts.entry((tasks[i].1, *state)).or_default() += 1;
        }
        let live: BTreeMap<(TaskKind, TaskState), u64> = store
            .counts()
            .entries()
            .into_iter()
            .map(|(k, s, n)| ((k, s), n))
            .collect();
        prop_assert_eq!(&live, &want_counts);
        store.close();
        drop(store);
        // Counts loaded from the rows at the next open agree as well.
        let reopened = Store::open(&path).unwrap();
        let loaded: BTreeMap<(TaskKind, TaskState), u64> = reopened
            .counts()
            .entries()
            .into_iter()
            .map(|(k, s, n)| ((k, s), n))
            .collect();
        prop_assert_eq!(&loaded, &want_counts);
        reopened.close();
    }
}
