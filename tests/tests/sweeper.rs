//! Issue: expiry sweeper and retention — acceptance points 1, 3 and 5 end to end, plus the
//! timer's reaction to a reload and the sweeper fields of `orchctl status`. Acceptance 2 is the
//! property test in daemon/src/sweeper/tests.rs; acceptance 4 is the benchmark in
//! daemon/examples/sweep_bench.rs.

use orchestrator::clock::now_ms;
use orchestrator::machine::Action;
use orchestrator::store::{queries, Batch, NewTask, Patch, Store, StoreError, TransitionOp};
use orchestrator_proto::task::TaskKind;
use orchestrator_tests::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const CODE_GOAL: &str = "please debug this function and fix the off-by-one";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// What a seeded task looks like when the daemon starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seed {
    Done,
    Failed,
    Cancelled,
    Expired,
    AwaitingApproval,
}

impl Seed {
    fn state(self) -> &'static str {
        match self {
            Seed::Done => "done",
            Seed::Failed => "failed",
            Seed::Cancelled => "cancelled",
            Seed::Expired => "expired",
            Seed::AwaitingApproval => "awaiting_approval",
        }
    }
}

/// A valid ULID that sorts with nothing the daemon makes.
fn seed_id(n: usize) -> String {
    format!("01HSEED{n:019}")
}

/// Put one task into `b`, created well before `ended_ms` and reaching `seed` at `ended_ms`.
fn put(
    b: &mut Batch<'_>,
    id: &str,
    kind: TaskKind,
    seed: Seed,
    ended_ms: i64,
) -> Result<(), StoreError> {
    let created = ended_ms - HOUR;
    // Waiting tasks must not expire under the sweeper: their TTL runs a year past now.
    let expires = if seed == Seed::Expired {
        created + 1_000
    } else {
        now_ms() + 365 * DAY
    };
    b.insert_task(
        NewTask {
            id: id.to_string(),
            kind,
            goal: "seeded".into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            submitted_by: "seed".into(),
            harness: false,
            created_ms: created,
            expires_ms: expires,
        },
        "seed",
    )?;
    let mut step = |action: Action, at: i64| {
        b.transition(TransitionOp::new(id, action, "seed", at).patch(Patch {
            agent: Some("coder".into()),
            ..Patch::default()
        }))
        .map(|_| ())
    };
    match seed {
        Seed::Done | Seed::AwaitingApproval => {
            step(Action::Route, created)?;
            step(Action::Start, created)?;
            let approval_required = seed == Seed::AwaitingApproval;
            step(Action::Complete { approval_required }, ended_ms)?;
        }
        Seed::Failed => step(Action::Fail, ended_ms)?,
        Seed::Cancelled => step(Action::Cancel, ended_ms)?,
        Seed::Expired => step(Action::Expire, ended_ms)?,
    }
    Ok(())
}

/// Write tasks straight into the store of a stopped daemon.
fn seed(state_dir: &Path, tasks: Vec<(String, TaskKind, Seed, i64)>) {
    let store = Store::open(&state_dir.join("orchestrator.db")).expect("open the store");
    store
        .write_blocking(move |b| {
            for (id, kind, seed, ended) in &tasks {
                put(b, id, *kind, *seed, *ended)?;
            }
            Ok(())
        })
        .expect("seed tasks");
    store.close();
}

/// Leave a result file and an artefact in the task's directory, as a specialist run would.
fn give_files(state_dir: &Path, id: &str) {
    let dir = state_dir.join("tasks").join(id);
    std::fs::create_dir_all(dir.join("artefacts")).unwrap();
    std::fs::write(dir.join("result.txt"), "a long result").unwrap();
    std::fs::write(dir.join("artefacts").join("patch.diff"), "+1").unwrap();
}

fn status(d: &TestDaemon) -> Value {
    let (code, v) = d.ctl_json(&["status"]);
    assert_eq!(code, 0, "status: {v}");
    v
}

/// Wait for a sweep to be reported by `status` that satisfies `ok`, and return `status`.
fn wait_sweep(d: &TestDaemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(20), || {
        let s = status(d);
        (!s["lastSweep"].is_null() && ok(&s)).then_some(s)
    })
}

fn count(status: &Value, kind: &str, state: &str) -> u64 {
    status["counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["state"] == state)
        .map(|c| c["count"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn acceptance_1_a_task_past_its_ttl_is_expired_by_the_sweeper_and_cannot_be_approved() {
    // The timer stays out of it: this is about the sweep the operator asks for.
    let d = TestDaemon::with_config("[sweeper]\ninterval = \"24h\"\n");
    let out = d.ctl(&["submit", CODE_GOAL, "--ttl", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    d.wait_state(&id, "awaiting_approval", Duration::from_secs(10));

    // Not yet due: the sweep leaves it alone.
    let (code, report) = d.ctl_json(&["sweep"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["expired"], 0, "{report}");
    assert_eq!(d.state_of(&id), "awaiting_approval");

    d.advance(Duration::from_secs(3_601));
    let (code, report) = d.ctl_json(&["sweep"]);
    assert_eq!(code, 0, "{report}");
    assert!(report["expired"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["errors"], serde_json::json!([]));

    let t = d.task(&id);
    assert_eq!(t["state"], "expired");
    let last = t["trajectory"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "sweeper", "{last}");
    assert_eq!(last["action"], "expire");
    assert_eq!(last["from"], "awaiting_approval");
    assert_eq!(last["to"], "expired");

    let approve = d.ctl(&["approve", &id]);
    assert_eq!(approve.status.code(), Some(1), "{}", stderr(&approve));
    assert!(
        stderr(&approve).contains("invalid_transition"),
        "{}",
        stderr(&approve)
    );
}

#[test]
fn acceptance_3_retention_deletes_old_terminal_tasks_with_events_and_files() {
    // synthetic and shadow keep their defaults (1 d, 7 d); live is kept forever.
    let mut d = TestDaemon::with_config("[sweeper.retention]\nlive = \"0\"\n");
    d.terminate();
    let now = now_ms();
    use Seed::*;
    use TaskKind::{Live, Shadow, Synthetic};
    let plan = [
        // (kind, seed, ended how long ago, should be gone)
        (Synthetic, Done, 2 * DAY, true),
        (Synthetic, Failed, 2 * DAY, true),
        (Synthetic, Cancelled, 25 * HOUR, true),
        (Synthetic, Expired, 3 * DAY, true),
        (Synthetic, Done, 23 * HOUR, false),
        (Shadow, Done, 8 * DAY, true),
        (Shadow, Failed, 6 * DAY, false),
        (Live, Done, 400 * DAY, false),
        (Synthetic, AwaitingApproval, 30 * DAY, false),
        (Live, AwaitingApproval, 200 * DAY, false),
    ];
    let tasks: Vec<_> = plan
        .iter()
        .enumerate()
        .map(|(i, (kind, s, ago, _))| (seed_id(i), *kind, *s, now - ago))
        .collect();
    seed(&d.state_dir, tasks);
    let (old_with_files, young_with_files) = (seed_id(0), seed_id(4));
    give_files(&d.state_dir, &old_with_files);
    give_files(&d.state_dir, &young_with_files);

    // The timer sweeps once at start.
    d.start_again();
    let s = wait_sweep(&d, "the sweep at start", |s| {
        s["nextSweepAt"].as_str() > s["lastSweep"]["startedAt"].as_str()
    });
    let last = &s["lastSweep"];
    assert_eq!(last["deleted"], 5, "{last}");
    assert_eq!(last["deletedFiles"], 1, "{last}");
    assert_eq!(last["expired"], 0, "{last}");
    assert_eq!(last["reclaimed"], 0, "{last}");
    assert_eq!(last["requeued"], 0, "{last}");
    assert_eq!(last["errors"], serde_json::json!([]));
    assert!(last["durationMs"].is_u64(), "{last}");
    assert!(last["startedAt"].as_str().unwrap().ends_with('Z'), "{last}");
    // The counts `status` keeps in memory follow the deletions.
    assert_eq!(count(&s, "synthetic", "done"), 1, "{s}");
    assert_eq!(count(&s, "synthetic", "failed"), 0, "{s}");
    assert_eq!(count(&s, "shadow", "done"), 0, "{s}");
    assert_eq!(count(&s, "live", "done"), 1, "{s}");
    let table = stdout(&d.ctl(&["status"]));
    assert!(
        table.contains("last sweep:")
            && table.contains("5 deleted")
            && table.contains("next sweep:"),
        "{table}"
    );

    // Nothing is left to do: an explicit sweep deletes nothing more.
    let (code, again) = d.ctl_json(&["sweep"]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["deleted"], 0, "{again}");

    for (i, (_, seed, _, gone)) in plan.iter().enumerate() {
        let id = seed_id(i);
        let out = d.ctl(&["tasks", "show", &id]);
        if *gone {
            assert_eq!(out.status.code(), Some(1), "{id} should be gone");
            assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
        } else {
            assert!(out.status.success(), "{id} should remain: {}", stderr(&out));
            assert_eq!(d.state_of(&id), seed.state());
        }
    }
    assert!(!d.state_dir.join("tasks").join(&old_with_files).exists());
    assert!(d
        .state_dir
        .join("tasks")
        .join(&young_with_files)
        .join("result.txt")
        .exists());

    // The trajectories of deleted tasks are gone too; the others keep theirs.
    d.terminate();
    let store = Store::open(&d.state_dir.join("orchestrator.db")).unwrap();
    for (i, (_, _, _, gone)) in plan.iter().enumerate() {
        let id = seed_id(i);
        let events = store.read_blocking(|c| queries::events_of(c, &id)).unwrap();
        assert_eq!(events.is_empty(), *gone, "{id}: {events:?}");
    }
    let orphans: i64 = store
        .read_blocking(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM events WHERE task_id NOT IN (SELECT id FROM tasks)",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn acceptance_5_a_failing_sweep_is_logged_and_later_sweeps_still_run() {
    let mut d = TestDaemon::with_config("[sweeper]\ninterval = \"1h\"\n");
    d.terminate();
    let now = now_ms();
    let (a, b) = (seed_id(0), seed_id(1));
    seed(
        &d.state_dir,
        vec![
            (a.clone(), TaskKind::Synthetic, Seed::Done, now - 2 * DAY),
            (b.clone(), TaskKind::Synthetic, Seed::Failed, now - 2 * DAY),
        ],
    );
    // The task directories' parent is a regular file: removing anything below it fails with
    // ENOTDIR, whoever runs the daemon (permission bits would not stop root).
    let tasks_dir = d.state_dir.join("tasks");
    std::fs::write(&tasks_dir, "in the way").unwrap();
    d.start_again();

    let s = wait_sweep(&d, "a sweep that failed", |s| {
        s["lastSweep"]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    let errors = s["lastSweep"]["errors"].to_string();
    assert!(
        errors.contains("cannot remove") && errors.contains(&a),
        "{errors}"
    );
    assert_eq!(s["lastSweep"]["deleted"], 0);

    let out = d.ctl(&["sweep"]);
    assert_eq!(out.status.code(), Some(1), "a sweep with errors exits 1");
    assert!(
        stdout(&out).contains("error: retention: cannot remove"),
        "{}",
        stdout(&out)
    );
    // A task whose files could not be removed is kept, to be retried.
    assert_eq!(d.state_of(&a), "done");
    let log = d.log_text();
    assert!(
        log.contains("sweep error") && log.contains("cannot remove"),
        "{log}"
    );

    // Clear the obstacle: the timer's next sweep, an interval later, goes on and finishes the job.
    std::fs::remove_file(&tasks_dir).unwrap();
    d.advance(Duration::from_secs(3_600));
    let s = wait_sweep(&d, "a clean sweep by the timer", |s| {
        s["lastSweep"]["errors"] == serde_json::json!([]) && count(s, "synthetic", "done") == 0
    });
    assert_eq!(count(&s, "synthetic", "failed"), 0, "{s}");
    for id in [&a, &b] {
        let out = d.ctl(&["tasks", "show", id]);
        assert_eq!(out.status.code(), Some(1), "{id} should be gone");
    }
    let (code, report) = d.ctl_json(&["sweep"]);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn a_reload_that_shortens_the_interval_takes_effect_without_waiting_out_the_old_one() {
    let d = TestDaemon::with_config("[sweeper]\ninterval = \"1h\"\n");
    let first = wait_sweep(&d, "the sweep at start", |s| {
        s["nextSweepAt"].as_str() > s["lastSweep"]["startedAt"].as_str()
    });
    let started = first["lastSweep"]["startedAt"].clone();

    d.write_config("[sweeper]\ninterval = \"1m\"\n");
    let out = d.ctl(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A minute on, the new interval is due; the old one would wait another 59 minutes.
    d.advance(Duration::from_secs(60));
    wait_sweep(&d, "a timer sweep on the new interval", |s| {
        s["lastSweep"]["startedAt"] != started
    });
}
