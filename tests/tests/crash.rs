//! Crash test: concurrent submits and transitions, `kill -9` at a random moment, restart, and prove
//! that nothing acknowledged was lost and nothing stored is impossible.
//!
//! Repeated `ORCH_CRASH_ITERATIONS` times (default 50; 1,000 for the record in
//! docs/BENCHMARKS.md). A failing iteration prints its seed; `ORCH_CRASH_SEED` replays it.

use orchestrator_proto::message::{Request, SubmitRequest};
use orchestrator_proto::{Response, ServerMessage, TaskState};
use orchestrator_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 4;
/// A fresh daemon and store every this many iterations, so that verification stays fast.
const ITERATIONS_PER_STORE: usize = 10;
const APPROVAL_GOAL: &str = "please debug this function and fix the off-by-one";
const DONE_GOAL: &str = "draft an email reply to the procurement team";
/// Agents that wait for approval under the built-in routing.
const APPROVAL_AGENTS: [&str; 2] = ["coder", "helpdesk"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one worker saw acknowledged, and what it sent without an answer.
#[derive(Default)]
struct Journal {
    /// Task id → the state its last acknowledged reply showed.
    acked: HashMap<String, TaskState>,
    /// Task id → the state a transition sent but never answered would have taken it to.
    in_flight: HashMap<String, TaskState>,
    submits: u64,
    transitions: u64,
}

fn task_of(reply: ServerMessage, what: &str) -> orchestrator_proto::Task {
    match reply {
        ServerMessage::Ok(r) => match *r {
            Response::Task(t) => *t,
            other => panic!("{what}: unexpected response {other:?}"),
        },
        other => panic!("{what}: unexpected reply {other:?}"),
    }
}

/// Submit and decide tasks until the daemon goes away.
fn worker(socket: &std::path::Path, seed: u64, stop: &AtomicBool) -> Journal {
    let mut j = Journal::default();
    let mut rng = Rng(seed | 1);
    let Ok(mut raw) = Raw::connect(socket) else {
        return j;
    };
    if raw.hello().is_err() {
        return j;
    }
    let mut waiting: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let decide = !waiting.is_empty() && rng.below(2) == 0;
        if decide {
            let id = waiting.swap_remove(rng.below(waiting.len() as u64) as usize);
            let (req, to) = match rng.below(3) {
                0 => (Request::Approve { id: id.clone() }, TaskState::Done),
                1 => (
                    Request::Reject {
                        id: id.clone(),
                        reason: "crash test".into(),
                    },
                    TaskState::Failed,
                ),
                _ => (Request::Cancel { id: id.clone() }, TaskState::Cancelled),
            };
            j.in_flight.insert(id.clone(), to);
            let Ok(reply) = raw.request(req) else { break };
            let t = task_of(reply, "transition");
            assert_eq!(t.state, to, "acknowledged transition of {id}");
            j.in_flight.remove(&id);
            j.acked.insert(id, t.state);
            j.transitions += 1;
        } else {
            let goal = if rng.below(3) == 0 {
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
            let Ok(reply) = raw.request(req) else { break };
            let t = task_of(reply, "submit");
            if t.state == TaskState::AwaitingApproval {
                waiting.push(t.id.clone());
            }
            j.acked.insert(t.id, t.state);
            j.submits += 1;
        }
    }
    j
}

/// Every acknowledged write is there, at the acknowledged state or at the one a transition in
/// flight would have taken it to.
fn check_acknowledged(d: &TestDaemon, journals: &[Journal], seed: u64) {
    let mut raw = Raw::connect(&d.socket).unwrap();
    raw.hello().unwrap();
    for j in journals {
        for (id, acked) in &j.acked {
            let reply = raw.request(Request::ShowTask { id: id.clone() }).unwrap();
            let task = match reply {
                ServerMessage::Ok(r) => match *r {
                    Response::TaskDetail { task, .. } => task,
                    other => panic!("seed {seed}: show {id}: {other:?}"),
                },
                ServerMessage::Err(e) => {
                    panic!("seed {seed}: acknowledged task {id} ({acked}) was lost: {e}")
                }
                other => panic!("seed {seed}: {other:?}"),
            };
            let allowed: HashSet<TaskState> = [Some(*acked), j.in_flight.get(id).copied()]
                .into_iter()
                .flatten()
                .collect();
            assert!(
                allowed.contains(&task.state),
                "seed {seed}: task {id} was acknowledged {acked} but is {}",
                task.state
            );
        }
    }
}

/// A task row as the checks need it: state, agent, completed_at, error code.
type StoredTask = (String, Option<String>, Option<i64>, Option<String>);

/// No task in an impossible state, and every trajectory is one unbroken chain that ends where the
/// task is; the counts `status` reports match the rows.
fn check_store(d: &TestDaemon, seed: u64) {
    let db = d.state_dir.join("orchestrator.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "seed {seed}: integrity");

    let mut tasks: HashMap<String, StoredTask> = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT id, state, agent, completed_at, error_code FROM tasks")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            ))
        })
        .unwrap();
    for row in rows {
        let (id, v) = row.unwrap();
        tasks.insert(id, v);
    }
    for (id, (state, agent, completed, error_code)) in &tasks {
        let state: TaskState = state.parse().unwrap();
        // The synthetic pipeline commits a submit at rest: nothing may be left half-way.
        assert!(
            state == TaskState::AwaitingApproval || state.is_terminal(),
            "seed {seed}: task {id} is {state}"
        );
        if state == TaskState::AwaitingApproval {
            let agent = agent.as_deref().unwrap_or("");
            assert!(
                APPROVAL_AGENTS.contains(&agent),
                "seed {seed}: task {id} awaits approval for agent {agent:?}, which needs none"
            );
        }
        assert_eq!(
            completed.is_some(),
            state.is_terminal(),
            "seed {seed}: task {id} ({state}) completed_at {completed:?}"
        );
        if state == TaskState::Failed {
            assert_eq!(error_code.as_deref(), Some("rejected"), "seed {seed}: {id}");
        }
    }

    let mut chains: BTreeMap<String, Vec<(Option<String>, String)>> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT task_id, from_state, to_state FROM events ORDER BY task_id, seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    for row in rows {
        let (id, from, to) = row.unwrap();
        chains.entry(id).or_default().push((from, to));
    }
    assert_eq!(
        chains.len(),
        tasks.len(),
        "seed {seed}: events of tasks that do not exist, or tasks without events"
    );
    for (id, chain) in &chains {
        let (state, ..) = tasks
            .get(id)
            .unwrap_or_else(|| panic!("seed {seed}: events of unknown task {id}"));
        assert_eq!(
            chain[0],
            (None, "queued".to_string()),
            "seed {seed}: {id} starts with {:?}",
            chain[0]
        );
        for pair in chain.windows(2) {
            assert_eq!(
                pair[1].0.as_deref(),
                Some(pair[0].1.as_str()),
                "seed {seed}: broken chain of {id}: {chain:?}"
            );
        }
        assert_eq!(
            &chain[chain.len() - 1].1,
            state,
            "seed {seed}: the last event of {id} does not end where the task is"
        );
    }

    let mut by_db: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT kind, state, count(*) FROM tasks GROUP BY kind, state")
        .unwrap();
    for row in stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
    {
        let (k, s, n): (String, String, i64) = row.unwrap();
        by_db.insert((k, s), n as u64);
    }
    let (_, status) = d.ctl_json(&["status"]);
    let mut by_status: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in status["counts"].as_array().unwrap() {
        let key = (
            c["kind"].as_str().unwrap().to_string(),
            c["state"].as_str().unwrap().to_string(),
        );
        by_status.insert(key, c["count"].as_u64().unwrap());
    }
    assert_eq!(
        by_status, by_db,
        "seed {seed}: status counts against the rows"
    );
}

#[test]
fn acknowledged_writes_survive_kill_9_at_random_moments() {
    let iterations: usize = std::env::var("ORCH_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let base_seed: u64 = std::env::var("ORCH_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {iterations} iterations, base seed {base_seed} (ORCH_CRASH_SEED)");
    let started = Instant::now();
    let (mut submits, mut transitions) = (0u64, 0u64);
    let mut d: Option<TestDaemon> = None;
    for i in 0..iterations {
        let seed = base_seed.wrapping_add(i as u64);
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut daemon = match d.take() {
            Some(mut daemon) if i % ITERATIONS_PER_STORE != 0 => {
                daemon.start_again();
                daemon
            }
            _ => TestDaemon::start(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let socket = daemon.socket.clone();
                let stop = Arc::clone(&stop);
                let wseed = rng.next() ^ w as u64;
                std::thread::spawn(move || worker(&socket, wseed, &stop))
            })
            .collect();
        // Kill at a random moment: sometimes before the first commit, usually in the middle of work.
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        let journals: Vec<Journal> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        submits += journals.iter().map(|j| j.submits).sum::<u64>();
        transitions += journals.iter().map(|j| j.transitions).sum::<u64>();

        daemon.start_again();
        check_acknowledged(&daemon, &journals, seed);
        check_store(&daemon, seed);
        daemon.kill9();
        d = Some(daemon);
    }
    eprintln!(
        "crash test: {iterations} kills, {submits} acknowledged submits and {transitions} acknowledged \
         transitions verified, 0 lost, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
