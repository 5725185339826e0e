//! Several nodes on one database, through the shared-store operations (`store::cluster`): claims
//! start each task once and hold `max_concurrent` across nodes; one leader at a time, taken over
//! once its lease lapsed; what a node does to leases at start touches its own only. Ignored by
//! default like the contract suite; `.ci/run` runs them with `--ignored`.

use super::{PostgresBackend, Settings};
use crate::machine::Action;
use crate::store::cluster::{Claim, ClaimLimit, Cluster};
use crate::store::{Backend, NewTask, Patch, SubmitPlan, TransitionOp};
use orchestrator_proto::task::{Task, TaskKind, TaskState};
use std::collections::HashMap;

const T0: i64 = 1_000_000;
const AGENT: &str = "coder";

async fn node(url: &str, id: &str) -> PostgresBackend {
    PostgresBackend::open(&Settings {
        url: url.to_string(),
        pool_size: 4,
        node: id.to_string(),
    })
    .await
    .expect("open the store")
}

/// Two nodes on one fresh database.
async fn two_nodes() -> (PostgresBackend, PostgresBackend) {
    let url = super::throwaway::shared_database().expect("a throwaway PostgreSQL database");
    (node(&url, "node-a").await, node(&url, "node-b").await)
}

/// Submit `n` tasks routed to [`AGENT`] (`assigned`), through `store`.
async fn assigned(store: &PostgresBackend, n: usize) -> Vec<String> {
    assigned_to(store, AGENT, n).await
}

/// Submit `n` tasks routed to `agent` (`assigned`), through `store`.
async fn assigned_to(store: &PostgresBackend, agent: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{agent}-{i:04}");
        let task = NewTask {
            id: id.clone(),
            kind: TaskKind::Live,
            goal: "fix the bug".into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            submitted_by: "alice".into(),
            harness: false,
            created_ms: T0,
            expires_ms: T0 + 3_600_000,
        };
        let route = TransitionOp::new(&id, Action::Route, "tester", T0).patch(Patch {
            agent: Some(agent.into()),
            ..Patch::default()
        });
        store
            .submit(SubmitPlan {
                task,
                actor: "tester".into(),
                steps: vec![route],
            })
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Complete the claimed tasks `tasks` through `node`, each ending `done`: their places free up.
async fn complete_all<'t>(node: &PostgresBackend, tasks: impl Iterator<Item = &'t Task>) {
    let done: Vec<TransitionOp> = tasks
        .map(|t| {
            TransitionOp::new(
                &t.id,
                Action::Complete {
                    approval_required: false,
                },
                "dispatcher",
                T0 + 2,
            )
        })
        .collect();
    for r in node.transitions(done).await.unwrap() {
        assert_eq!(r.unwrap().state, TaskState::Done);
    }
}

fn claim(max: u32, want: u32) -> Claim {
    Claim {
        agent: AGENT.into(),
        max_concurrent: max,
        want,
        limits: Vec::new(),
        lease_until: T0 + 60_000,
        at_ms: T0 + 1,
        actor: "dispatcher".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn claims_hold_shared_limits_across_agents_and_nodes() {
    const SHARED: u32 = 2;
    let (a, b) = two_nodes().await;
    let mut ids = assigned_to(&a, "coder", 12).await;
    ids.extend(assigned_to(&b, "researcher", 12).await);
    let limit = |name: &str, max| ClaimLimit {
        name: name.into(),
        max_concurrent: max,
        agents: vec!["coder".into(), "researcher".into()],
    };
    // Each agent lists the two limits in another order: the claims still take them in one order.
    let shared_claim = |agent: &str| Claim {
        agent: agent.into(),
        limits: if agent == "coder" {
            vec![limit("acme", SHARED), limit("zeta", 5)]
        } else {
            vec![limit("zeta", 5), limit("acme", SHARED)]
        },
        ..claim(5, 5)
    };
    let mut started: HashMap<String, usize> = HashMap::new();
    for _round in 0..100 {
        // Both nodes claim for both agents at the same moment: four claims over one limit.
        let (ac, ar, bc, br) = tokio::join!(
            a.claim(shared_claim("coder")),
            a.claim(shared_claim("researcher")),
            b.claim(shared_claim("coder")),
            b.claim(shared_claim("researcher")),
        );
        let got: Vec<_> = [ac, ar, bc, br]
            .into_iter()
            .flat_map(|r| r.unwrap())
            .collect();
        assert!(
            got.len() <= SHARED as usize,
            "{} started under a shared limit of {SHARED}",
            got.len()
        );
        if got.is_empty() {
            break;
        }
        // A claim for either agent starts nothing while the limit is full.
        if got.len() == SHARED as usize {
            assert!(b.claim(shared_claim("coder")).await.unwrap().is_empty());
            assert!(a
                .claim(shared_claim("researcher"))
                .await
                .unwrap()
                .is_empty());
        }
        for t in &got {
            *started.entry(t.id.clone()).or_default() += 1;
        }
        complete_all(&b, got.iter()).await;
    }
    assert_eq!(started.len(), ids.len(), "every task started");
    assert!(started.values().all(|n| *n == 1), "{started:?}");
    // Without the limit the agent runs up to its own max_concurrent.
    assigned_to(&a, "helpdesk", 4).await;
    let free = Claim {
        agent: "helpdesk".into(),
        ..claim(3, 5)
    };
    assert_eq!(a.claim(free).await.unwrap().len(), 3);
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn claims_start_each_task_once_within_max_concurrent_across_nodes() {
    const MAX: u32 = 3;
    let (a, b) = two_nodes().await;
    let ids = assigned(&a, 30).await;
    let mut started_by: HashMap<String, Vec<&str>> = HashMap::new();
    // One after the other: the second node sees the first one's running task and starts only the
    // room left, so the agent's tasks run on both nodes and max_concurrent holds across them.
    let first = a.claim(claim(MAX, 1)).await.unwrap();
    let rest = b.claim(claim(MAX, 5)).await.unwrap();
    assert_eq!((first.len(), rest.len()), (1, MAX as usize - 1));
    for (who, got) in [("node-a", &first), ("node-b", &rest)] {
        for t in got.iter() {
            started_by.entry(t.id.clone()).or_default().push(who);
        }
    }
    assert!(b.claim(claim(MAX, 5)).await.unwrap().is_empty());
    complete_all(&a, first.iter().chain(rest.iter())).await;
    // Then at the same moment, round after round; which node wins a round is the database's
    // choice.
    for _round in 0..100 {
        // Both nodes ask for more than the agent may run, at the same moment.
        let (got_a, got_b) = tokio::join!(a.claim(claim(MAX, 5)), b.claim(claim(MAX, 5)));
        let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
        assert!(
            got_a.len() + got_b.len() <= MAX as usize,
            "{} + {} started with max_concurrent {MAX}",
            got_a.len(),
            got_b.len()
        );
        for (who, got) in [("node-a", &got_a), ("node-b", &got_b)] {
            for t in got.iter() {
                assert_eq!(t.state, TaskState::InProgress);
                assert_eq!(t.attempts, 1);
                started_by.entry(t.id.clone()).or_default().push(who);
            }
        }
        // Nothing frees a slot until a task ends: a further claim starts nothing.
        assert!(b.claim(claim(MAX, 5)).await.unwrap().is_empty());
        if got_a.is_empty() && got_b.is_empty() {
            break;
        }
        complete_all(&a, got_a.iter().chain(got_b.iter())).await;
    }
    assert_eq!(started_by.len(), ids.len(), "every task started");
    for (id, by) in &started_by {
        assert_eq!(by.len(), 1, "{id} started by {by:?}");
    }
    let nodes: Vec<&str> = started_by.values().map(|v| v[0]).collect();
    assert!(nodes.contains(&"node-a") && nodes.contains(&"node-b"));
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn leases_name_their_node_and_a_start_touches_its_own() {
    let (a, b) = two_nodes().await;
    let ids = assigned(&a, 2).await;
    let on_a = a.claim(claim(1, 1)).await.unwrap();
    let on_b = b.claim(claim(2, 1)).await.unwrap();
    assert_eq!((on_a.len(), on_b.len()), (1, 1));
    let (ta, tb) = (on_a[0].id.clone(), on_b[0].id.clone());
    assert_ne!(ta, tb);
    // A renews its own lease; B's task is not A's to keep alive.
    let lost = a.renew_leases(ids.clone(), T0 + 120_000).await.unwrap();
    assert_eq!(lost, vec![tb.clone()]);
    assert!(a.set_specialist_pid(&ta, 4242).await.unwrap());
    assert!(!a.set_specialist_pid(&tb, 4242).await.unwrap());
    // A restarting voids and reaps its own leases only.
    let left: Vec<String> = a
        .orphan_leftovers()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(left, vec![ta.clone()]);
    assert_eq!(a.void_leases().await.unwrap(), 1);
    let reclaim = crate::store::Reclaim {
        now: T0 + 2,
        limit: 100,
        reason: "restarted".into(),
        actor: "sweeper".into(),
        attempts: crate::store::AttemptLimits::default(),
    };
    let reclaimed = a.reclaim_lapsed(reclaim).await.unwrap();
    let moved: Vec<&String> = reclaimed
        .requeued
        .iter()
        .chain(reclaimed.failed.iter())
        .collect();
    assert_eq!(moved, vec![&ta]);
    assert_eq!(
        b.get_task(&tb).await.unwrap().unwrap().state,
        TaskState::InProgress
    );
    a.close();
    b.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn one_leader_at_a_time_until_its_lease_lapses() {
    const LEASE: i64 = 1_000;
    let (a, b) = two_nodes().await;
    assert!(a.lead(T0, LEASE).await.unwrap());
    assert!(!b.lead(T0 + 500, LEASE).await.unwrap());
    // Renewed before it lapsed: still A's.
    assert!(a.lead(T0 + 900, LEASE).await.unwrap());
    assert!(!b.lead(T0 + 1_800, LEASE).await.unwrap());
    // A stopped renewing: B takes over once the lease has lapsed, and A cannot take it back.
    assert!(b.lead(T0 + 2_000, LEASE).await.unwrap());
    assert!(!a.lead(T0 + 2_100, LEASE).await.unwrap());
    for (n, id) in [(&a, "node-a"), (&b, "node-b")] {
        n.heartbeat(crate::store::cluster::NodeBeat {
            host: "h".into(),
            pid: 1,
            version: "v".into(),
            address: format!("/run/{id}.sock"),
            agents: vec![AGENT.into()],
            running: 0,
            at_ms: T0 + 2_100,
        })
        .await
        .unwrap();
    }
    let nodes = a.nodes(T0 + 2_200).await.unwrap();
    let leaders: Vec<(&str, bool)> = nodes.iter().map(|n| (n.id.as_str(), n.leader)).collect();
    assert_eq!(leaders, vec![("node-a", false), ("node-b", true)]);
    assert_eq!(nodes[1].agents, vec![AGENT.to_string()]);
    // A leader that leaves gives the lease up at once.
    b.leave().await.unwrap();
    assert!(a.lead(T0 + 2_300, LEASE).await.unwrap());
    assert_eq!(a.nodes(T0 + 2_300).await.unwrap().len(), 1);
    a.close();
    b.close();
}

/// A task one node retried waits out its backoff on every node: the look for tasks left queued
/// leaves it until its time, then finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn a_retried_task_is_left_queued_on_every_node_until_its_time() {
    let (a, b) = two_nodes().await;
    let ids = assigned(&a, 2).await;
    let run = a.claim(claim(2, 2)).await.unwrap();
    assert_eq!(run.len(), 2);
    let (retried, failed) = (&ids[0], &ids[1]);
    let retry = TransitionOp::new(retried, Action::Retry, "dispatcher", T0 + 5).patch(Patch {
        not_before: Some(T0 + 60_000),
        ..Patch::default()
    });
    // The other one is queued again without a wait (as the sweeper requeues a lapsed lease).
    let requeue = TransitionOp::new(failed, Action::Retry, "dispatcher", T0 + 5);
    for r in a.transitions(vec![retry, requeue]).await.unwrap() {
        assert_eq!(r.unwrap().state, TaskState::Queued);
    }
    let left = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let early = b.unrouted(T0 + 10, T0 + 59_999, 100).await.unwrap();
    assert_eq!(left(early), vec![failed.clone()]);
    let due = b.unrouted(T0 + 10, T0 + 60_000, 100).await.unwrap();
    assert_eq!(left(due), vec![retried.clone(), failed.clone()]);
    a.close();
    b.close();
}

/// Complete `task` through `node` with a run that cost `cost_usd`.
async fn complete_costing(node: &PostgresBackend, task: &Task, cost_usd: Option<f64>) {
    let op = TransitionOp::new(
        &task.id,
        Action::Complete {
            approval_required: false,
        },
        "dispatcher",
        T0 + 200,
    )
    .patch(Patch {
        usage: Some(orchestrator_proto::task::Usage {
            model: Some("m".into()),
            cost_usd,
            ..Default::default()
        }),
        ..Patch::default()
    });
    let done = node.transitions(vec![op]).await.unwrap();
    assert_eq!(done[0].as_ref().unwrap().state, TaskState::Done);
}

/// Every node reads the same sums of what every node's runs cost, by agent, in the day and the
/// month asked for (by the runs' start); a run that reported no cost adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn spending_sums_every_nodes_runs_by_agent_and_period() {
    let (a, b) = two_nodes().await;
    assigned(&a, 2).await;
    assigned_to(&b, "writer", 2).await;
    let on_a = a.claim(claim(1, 1)).await.unwrap();
    let on_b = b.claim(claim(2, 1)).await.unwrap();
    complete_costing(&a, &on_a[0], Some(0.4)).await;
    complete_costing(&b, &on_b[0], Some(0.5)).await;
    // The writer's runs start later, in the day asked for; one of them reports no cost.
    let later = Claim {
        agent: "writer".into(),
        at_ms: T0 + 100,
        ..claim(2, 2)
    };
    let writers = b.claim(later).await.unwrap();
    assert_eq!(writers.len(), 2);
    complete_costing(&b, &writers[0], Some(0.25)).await;
    complete_costing(&a, &writers[1], None).await;

    let expected = vec![
        crate::store::cluster::Spent {
            agent: AGENT.into(),
            day_usd: 0.0,
            month_usd: 0.9,
        },
        crate::store::cluster::Spent {
            agent: "writer".into(),
            day_usd: 0.25,
            month_usd: 0.25,
        },
    ];
    for node in [&a, &b] {
        let mut got = node.spending(T0 + 50, T0).await.unwrap();
        for s in &mut got {
            // Sums of floats: compared to the cent.
            s.day_usd = (s.day_usd * 100.0).round() / 100.0;
            s.month_usd = (s.month_usd * 100.0).round() / 100.0;
        }
        assert_eq!(got, expected);
    }
    // A month that starts after every run: nothing.
    assert!(a.spending(T0 + 500, T0 + 500).await.unwrap().is_empty());
    a.close();
    b.close();
}

/// The first node to claim a threshold's announcement gets it, every later claim (by any node)
/// does not; a claim of a period that has ended is forgotten by the next claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn a_thresholds_announcement_is_claimed_by_one_node() {
    let (a, b) = two_nodes().await;
    let today = T0 + 86_400_000;
    assert!(a
        .claim_crossing("coder:daily:D:warning", today, T0)
        .await
        .unwrap());
    assert!(!b
        .claim_crossing("coder:daily:D:warning", today, T0)
        .await
        .unwrap());
    assert!(!a
        .claim_crossing("coder:daily:D:warning", today, T0)
        .await
        .unwrap());
    assert!(b
        .claim_crossing("coder:daily:D:exhausted", today, T0)
        .await
        .unwrap());
    // Once its day has ended, a claim is dropped by the next one, whatever it names.
    assert!(a
        .claim_crossing("*:monthly:M:warning", today + 10, today + 5)
        .await
        .unwrap());
    assert!(b
        .claim_crossing("coder:daily:D:warning", today, today + 1)
        .await
        .unwrap());
    assert!(!a
        .claim_crossing("*:monthly:M:warning", today + 10, today + 1)
        .await
        .unwrap());
    a.close();
    b.close();
}

/// A database from before the cost column (schema 7) gets each run's cost at the upgrade, and the
/// spending read sums it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
async fn the_upgrade_to_the_cost_column_fills_it_from_each_runs_usage() {
    let url = super::throwaway::shared_database().expect("a throwaway PostgreSQL database");
    let a = node(&url, "node-a").await;
    assigned(&a, 2).await;
    let on_a = a.claim(claim(2, 2)).await.unwrap();
    complete_costing(&a, &on_a[0], Some(0.4)).await;
    complete_costing(&a, &on_a[1], Some(0.5)).await;
    a.close();
    drop(a);
    // Back to schema 7, as the release before the column left the database.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(connection);
    client
        .batch_execute(
            "DROP INDEX tasks_cost_started; ALTER TABLE tasks DROP COLUMN cost_usd; \
             DELETE FROM schema_version; INSERT INTO schema_version (version) VALUES (7);",
        )
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;

    let upgraded = node(&url, "node-a").await;
    let spent = upgraded.spending(T0, T0).await.unwrap();
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!(spent[0].agent, AGENT);
    assert!((spent[0].month_usd - 0.9).abs() < 1e-9, "{spent:?}");
    upgraded.close();
}
