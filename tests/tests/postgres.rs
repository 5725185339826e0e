//! The daemon on a PostgreSQL store, against a real server started for the test (see
//! `orchestrator::store::postgres::throwaway`). Ignored by default: they need the PostgreSQL 15
//! binaries, which `.ci/run` installs before it runs them with `--ignored`.

use orchestrator::clock::now_ms;
use orchestrator::machine::Action;
use orchestrator::store::postgres::throwaway::TempPostgres;
use orchestrator::store::{NewTask, Patch, Store, SubmitPlan, TransitionOp};
use orchestrator_proto::message::{Request, SubmitRequest};
use orchestrator_proto::task::TaskKind;
use orchestrator_proto::{ErrorCode, Response, ServerMessage, TaskState};
use orchestrator_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const APPROVAL_GOAL: &str = "please debug this function and fix the off-by-one";
const DONE_GOAL: &str = "draft an email reply to the procurement team";
const WORKERS: usize = 4;

fn postgres_config(pg: &TempPostgres) -> String {
    pg.create_database("orch").expect("create the database");
    format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npool_size = 8\n",
        pg.url("orch")
    )
}

/// What one client saw: acknowledged states, transitions sent without a clear answer, and the codes
/// of the errors it got.
#[derive(Default)]
struct Journal {
    acked: HashMap<String, TaskState>,
    in_flight: HashMap<String, TaskState>,
    /// Approvals whose first attempt was answered `store_unavailable` and whose retry was refused
    /// `invalid_transition`: PostgreSQL went down after the COMMIT reached it but before its answer
    /// did, so the first attempt took effect. Each must be `done` afterwards.
    committed_unanswered: Vec<String>,
    errors: BTreeMap<String, u64>,
}

struct Load {
    stop: AtomicBool,
    acked: AtomicU64,
    unavailable: AtomicU64,
}

fn client(socket: &std::path::Path, n: usize, load: &Load) -> Journal {
    let mut j = Journal::default();
    let mut raw = Raw::connect(socket).expect("connect");
    raw.hello().expect("hello");
    let mut waiting: Vec<String> = Vec::new();
    let mut unanswered: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0usize;
    while !load.stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 200_000 {
        i += 1;
        let (req, approving) = match waiting.pop() {
            Some(id) if i.is_multiple_of(2) => (Request::Approve { id: id.clone() }, Some(id)),
            other => {
                waiting.extend(other);
                let goal = if (i + n).is_multiple_of(3) {
                    DONE_GOAL
                } else {
                    APPROVAL_GOAL
                };
                let req = Request::Submit(SubmitRequest {
                    goal: goal.into(),
                    required_capabilities: Vec::new(),
                    workspace_dir: None,
                    ttl_secs: None,
                    wait: false,
                });
                (req, None)
            }
        };
        if let Some(id) = &approving {
            j.in_flight.insert(id.clone(), TaskState::Done);
        }
        match raw.request(req).expect("the daemon answers every request") {
            ServerMessage::Ok(r) => match *r {
                Response::Task(t) => {
                    if let Some(id) = &approving {
                        j.in_flight.remove(id);
                    }
                    if t.state == TaskState::AwaitingApproval {
                        waiting.push(t.id.clone());
                    }
                    j.acked.insert(t.id, t.state);
                    load.acked.fetch_add(1, Ordering::Relaxed);
                }
                other => panic!("unexpected response {other:?}"),
            },
            ServerMessage::Err(e)
                if e.code == ErrorCode::InvalidTransition
                    && approving.as_ref().is_some_and(|id| unanswered.contains(id)) =>
            {
                if let Some(id) = approving {
                    j.committed_unanswered.push(id);
                }
            }
            ServerMessage::Err(e) => {
                *j.errors.entry(e.code.as_str().to_string()).or_default() += 1;
                if e.code == ErrorCode::StoreUnavailable {
                    load.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                // Retry that approval later; its outcome is unknown until then.
                if let Some(id) = approving {
                    if e.code == ErrorCode::StoreUnavailable {
                        unanswered.insert(id.clone());
                    }
                    waiting.insert(0, id);
                }
                // A client's back-off before it retries, not a wait for anything.
                std::thread::sleep(Duration::from_millis(5));
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    j
}

fn wait_acked(load: &Load, at_least: u64, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        (load.acked.load(Ordering::Relaxed) >= at_least).then_some(())
    });
}

/// PostgreSQL crashes and comes back while clients submit and approve: while it is down every
/// request is answered `store_unavailable`, the daemon keeps running and reconnects by itself, and
/// every acknowledged submit and approval is in the database afterwards.
#[test]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
fn postgres_restarted_under_load_loses_no_acknowledged_write() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let mut d = TestDaemon::with_config(&postgres_config(&pg));
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        unavailable: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let (socket, load) = (d.socket.clone(), Arc::clone(&load));
            std::thread::spawn(move || client(&socket, n, &load))
        })
        .collect();

    wait_acked(&load, 200, "200 acknowledged writes before the crash");
    pg.stop_immediate().expect("stop PostgreSQL");
    wait_for(
        "requests answered store_unavailable while PostgreSQL is down",
        Duration::from_secs(30),
        || (load.unavailable.load(Ordering::Relaxed) >= 20).then_some(()),
    );
    // The daemon still answers what it can without the database.
    let out = d.ctl(&["status"]);
    assert!(out.status.success(), "status while down: {}", stderr(&out));
    let before = load.acked.load(Ordering::Relaxed);
    pg.start_again().expect("start PostgreSQL again");
    wait_acked(
        &load,
        before + 200,
        "200 more acknowledged writes after the restart",
    );
    load.stop.store(true, Ordering::Relaxed);
    let journals: Vec<Journal> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for j in &journals {
        for (code, n) in &j.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        ["store_unavailable"],
        "only store_unavailable while the database is down: {errors:?}\n{}",
        d.log_text()
    );

    let mut raw = Raw::connect(&d.socket).unwrap();
    raw.hello().unwrap();
    let mut checked = 0;
    for j in &journals {
        for (id, acked) in &j.acked {
            let task = match raw.request(Request::ShowTask { id: id.clone() }).unwrap() {
                ServerMessage::Ok(r) => match *r {
                    Response::TaskDetail { task, .. } => task,
                    other => panic!("show {id}: {other:?}"),
                },
                other => panic!("acknowledged task {id} ({acked}) is gone: {other:?}"),
            };
            let allowed = [Some(*acked), j.in_flight.get(id).copied()];
            assert!(
                allowed.contains(&Some(task.state)),
                "task {id} was acknowledged {acked} but is {}",
                task.state
            );
            checked += 1;
        }
        for id in &j.committed_unanswered {
            match raw.request(Request::ShowTask { id: id.clone() }).unwrap() {
                ServerMessage::Ok(r) => match *r {
                    Response::TaskDetail { task, .. } => assert_eq!(
                        task.state,
                        TaskState::Done,
                        "{id}: its approval was refused on retry, so the first attempt committed"
                    ),
                    other => panic!("show {id}: {other:?}"),
                },
                other => panic!("approved task {id} is gone: {other:?}"),
            }
        }
    }
    // Approvals re-acknowledge tasks already counted: 400 acknowledgements name fewer tasks.
    assert!(checked >= 200, "{checked} acknowledged tasks checked");
    // The same daemon process served the whole run.
    // `running` reaps: a daemon that exited and became a zombie is not mistaken for a live one.
    assert!(d.running(), "the daemon exited");
}

/// Write `n` live tasks into a new SQLite store, a third each queued, awaiting approval and done,
/// and close it as a daemon would.
fn seed_sqlite(db: &std::path::Path, n: usize) {
    let store = Store::open(db).expect("open the SQLite store");
    // A sink that wants approvals: each task left waiting has an event pending in the outbox.
    let cfg = orchestrator::config::Config::from_toml(
        "[[notify]]\nname = \"phone\"\nevents = [\"approval.requested\"]\ncommand = [\"/bin/true\"]\n",
        None,
    )
    .expect("a config with a sink");
    orchestrator::notify::install_rules(&store, &cfg, None);
    let now = now_ms();
    store
        .write_blocking(move |b| {
            for i in 0..n {
                let id = format!("01SEED{i:020}");
                let step = |action: Action, at: i64| {
                    TransitionOp::new(&id, action, "seed", at).patch(Patch {
                        agent: Some("coder".into()),
                        ..Patch::default()
                    })
                };
                let created = now - 1_000_000 + i as i64;
                let steps = match i % 3 {
                    0 => Vec::new(),
                    _ => vec![
                        step(Action::Route, created + 1),
                        step(Action::Start, created + 2),
                    ],
                };
                b.submit(SubmitPlan {
                    task: NewTask {
                        id: id.clone(),
                        kind: TaskKind::Live,
                        goal: format!("seeded task {i}"),
                        workspace_dir: None,
                        required_capabilities: vec!["code".into()],
                        submitted_by: "seed".into(),
                        harness: false,
                        created_ms: created,
                        expires_ms: now + 365 * 86_400_000,
                    },
                    actor: "seed".into(),
                    steps,
                })?;
                if i % 3 != 0 {
                    // Each run cost a cent, which PostgreSQL derives into `cost_usd` as the copy writes it.
                    let usage = orchestrator_proto::task::Usage {
                        cost_usd: Some(0.01),
                        ..Default::default()
                    };
                    let complete = Action::Complete {
                        approval_required: i % 3 == 1,
                    };
                    b.transition(TransitionOp::new(&id, complete, "seed", created + 3).patch(
                        Patch {
                            usage: Some(usage),
                            ..Patch::default()
                        },
                    ))?;
                }
            }
            Ok(())
        })
        .expect("seed");
    store.close();
}

fn count(status: &serde_json::Value, kind: &str, state: &str) -> u64 {
    status["counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["state"] == state)
        .map(|c| c["count"].as_u64().unwrap())
        .unwrap_or(0)
}

/// `orchestratord --copy-store-to` moves a stopped 10,000-task SQLite store into an empty
/// PostgreSQL database, tasks and trajectories whole; a daemon on PostgreSQL then serves them and
/// takes new work; a second copy into the now full database is refused.
#[test]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
fn store_copy_moves_a_stopped_sqlite_store_that_is_then_served() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let config = postgres_config(&pg);
    let old = tempfile::tempdir().unwrap();
    let db = old.path().join("orchestrator.db");
    seed_sqlite(&db, 10_000);
    let copy = || {
        std::process::Command::new(bin("orchestratord"))
            .arg("--state-dir")
            .arg(old.path())
            .arg("--copy-store-to")
            .arg(pg.url("orch"))
            .output()
            .unwrap()
    };
    let out = copy();
    assert!(out.status.success(), "copy: {}", stderr(&out));
    // One event per queued task, four per task that went on.
    let printed = stdout(&out);
    assert!(
        printed.contains("29998 events")
            && printed.contains("10000 tasks")
            && printed.contains("3333 outbox,"),
        "{printed}"
    );

    // Each run's cost is in its column, which every node's read of the spending sums.
    let costs = pg
        .psql(
            "orch",
            "SELECT count(*) || ' ' || round(sum(cost_usd)::numeric, 2) FROM tasks \
             WHERE cost_usd IS NOT NULL",
        )
        .unwrap();
    assert_eq!(costs.trim(), "6666 66.66");

    let d = TestDaemon::with_config(&config);
    let (_, status) = d.ctl_json(&["status"]);
    assert_eq!(count(&status, "live", "queued"), 3_334, "{status}");
    assert_eq!(
        count(&status, "live", "awaiting_approval"),
        3_333,
        "{status}"
    );
    assert_eq!(count(&status, "live", "done"), 3_333, "{status}");
    let seeded = d.task("01SEED00000000000000000001");
    assert_eq!(seeded["state"], "awaiting_approval", "{seeded}");
    let actions: Vec<&str> = seeded["trajectory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["submit", "route", "start", "complete"]);
    // New work on the copied store: sequences continue past the copied rows.
    let out = d.ctl(&["approve", "01SEED00000000000000000001"]);
    assert!(out.status.success(), "approve: {}", stderr(&out));
    let approved = d.task("01SEED00000000000000000001");
    let seqs: Vec<u64> = approved["trajectory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(*seqs.last().unwrap() > 29_998, "{seqs:?}");

    let again = copy();
    assert_eq!(again.status.code(), Some(1), "{}", stdout(&again));
    assert!(stderr(&again).contains("empty"), "{}", stderr(&again));
}

/// Several daemons share a database, each a node of its own: a second daemon that would be the
/// same node (the same `[node] id`) is refused at start with a message that says why, and the
/// first goes on serving.
#[test]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
fn a_second_daemon_with_the_same_node_id_is_refused() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let config = format!("{}[node]\nid = \"one\"\n", postgres_config(&pg));
    let first = TestDaemon::with_config(&config);
    let other = tempfile::tempdir().unwrap();
    let config_file = other.path().join("orchestrator.toml");
    std::fs::write(&config_file, &config).unwrap();
    let out = std::process::Command::new(bin("orchestratord"))
        .arg("--config")
        .arg(&config_file)
        .arg("--socket")
        .arg(other.path().join("orchestrator.sock"))
        .arg("--state-dir")
        .arg(other.path().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("another orchestratord runs as node \"one\" on this PostgreSQL database"),
        "{}",
        stderr(&out)
    );
    let id = first.submit("draft an email reply to the procurement team");
    assert_eq!(first.state_of(&id), "done");
}

/// The node heartbeat runs only on a shared store, so its supervision is tested here (the others
/// are in `supervision.rs`): made to panic, it stops the daemon, non-zero, naming it first.
#[test]
#[ignore = "needs PostgreSQL 15 binaries; .ci/run runs them"]
fn a_panicking_node_heartbeat_stops_the_daemon_naming_it() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let config = postgres_config(&pg);
    let mut d = TestDaemon::launch_with_env(
        Some(&config),
        &[("ORCHESTRATOR_TEST_FAULT", "node-heartbeat:panic")],
    );
    d.assert_stopped_by_failure_of("node-heartbeat");
}
