use super::meta::Meta;
use super::outcome::{outcome, retry, retry_delay};
use super::*;
use crate::dispatch::process::{self, Ended, Ending, Limits};
use crate::machine::Action;
use orchestrator_proto::task::{task_error, Routing, TaskKind, TaskResult, TaskState, Usage};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

fn cfg() -> Config {
    Config::from_toml(
        "[agents.coder]\ncommand = [\"true\"]\n[agents.researcher]\ncommand = [\"true\"]\n",
        None,
    )
    .unwrap()
}

fn task(kind: TaskKind, agent: &str) -> Task {
    Task {
        schema_version: 1,
        id: "01TESTTASK0000000000000000".into(),
        kind,
        state: TaskState::InProgress,
        goal: "g".into(),
        workspace_dir: None,
        required_capabilities: Vec::new(),
        routing: Some(Routing {
            matched_rule_id: Some("r".into()),
            assigned_agent_id: agent.into(),
            capability_matches: Vec::new(),
            fallback_used: false,
            decided_at: "t".into(),
        }),
        assigned_agent_id: Some(agent.into()),
        result: Some(TaskResult {
            text: None,
            text_path: None,
            artefacts: Vec::new(),
            specialist_session_id: Some("s-1".into()),
        }),
        rejection: None,
        error: None,
        submitted_by: "u".into(),
        would_require_approval: false,
        created_at: "t".into(),
        assigned_at: None,
        started_at: None,
        completed_at: None,
        expires_at: "t".into(),
        attempts: 1,
        usage: None,
    }
}

fn ended(how: Ending) -> Ended {
    Ended {
        how,
        stdout: process::Captured {
            text: "out".into(),
            bytes: 3,
            spilled: None,
            error: None,
        },
        stderr_tail: "boom".into(),
        elapsed: Duration::from_millis(5),
    }
}

const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(2),
    kill_grace: Duration::from_secs(1),
    shutdown_grace: Duration::from_secs(1),
};

#[test]
fn success_completes_with_approval_by_the_rules_in_live_only() {
    let c = cfg();
    let ok = Ending::Exited(ExitStatus::from_raw(0));
    let live = outcome(
        &task(TaskKind::Live, "coder"),
        &c,
        &LIMITS,
        ended(ok),
        vec![],
        &Meta::default(),
        1,
    )
    .unwrap();
    assert_eq!(
        live.action,
        Action::Complete {
            approval_required: true
        }
    );
    let r = live.patch.result.unwrap();
    assert_eq!(r.text.as_deref(), Some("out"));
    assert_eq!(r.specialist_session_id.as_deref(), Some("s-1"));
    let shadow = outcome(
        &task(TaskKind::Shadow, "coder"),
        &c,
        &LIMITS,
        ended(ok),
        vec![],
        &Meta::default(),
        1,
    )
    .unwrap();
    assert_eq!(
        shadow.action,
        Action::Complete {
            approval_required: false
        }
    );
    let research = outcome(
        &task(TaskKind::Live, "researcher"),
        &c,
        &LIMITS,
        ended(ok),
        vec![],
        &Meta::default(),
        1,
    )
    .unwrap();
    assert_eq!(
        research.action,
        Action::Complete {
            approval_required: false
        }
    );
}

#[test]
fn a_non_zero_exit_or_a_signal_aborts_with_the_status_and_stderr() {
    let c = cfg();
    let t = task(TaskKind::Live, "researcher");
    let op = outcome(
        &t,
        &c,
        &LIMITS,
        ended(Ending::Exited(ExitStatus::from_raw(3 << 8))),
        vec![],
        &Meta::default(),
        1,
    )
    .unwrap();
    let e = op.patch.error.unwrap();
    assert_eq!(e.code, task_error::SPECIALIST_ABORTED);
    let d = e.details.unwrap();
    assert_eq!(d["exitStatus"], "3");
    assert_eq!(d["stderrTail"], "boom");
    let op = outcome(
        &t,
        &c,
        &LIMITS,
        ended(Ending::Exited(ExitStatus::from_raw(9))),
        vec![],
        &Meta::default(),
        1,
    )
    .unwrap();
    assert_eq!(
        op.patch.error.unwrap().details.unwrap()["signal"],
        "SIGKILL"
    );
}

#[test]
fn a_timeout_fails_and_a_stop_writes_nothing() {
    let c = cfg();
    let t = task(TaskKind::Shadow, "researcher");
    let op = outcome(
        &t,
        &c,
        &LIMITS,
        ended(Ending::TimedOut),
        vec![],
        &Meta::default(),
        1,
    )
    .unwrap();
    let e = op.patch.error.unwrap();
    assert_eq!(e.code, task_error::SPECIALIST_TIMEOUT);
    assert_eq!(e.details.unwrap()["timeout"], "2s");
    assert!(outcome(
        &t,
        &c,
        &LIMITS,
        ended(Ending::Stopped),
        vec![],
        &Meta::default(),
        1
    )
    .is_none());
}

fn used(model: &str, input: u64, cost: f64) -> Usage {
    Usage {
        model: Some(model.into()),
        input_tokens: Some(input),
        cost_usd: Some(cost),
        ..Usage::default()
    }
}

#[test]
fn exit_75_defers_with_the_reason_and_the_retry_time() {
    let c = cfg();
    let t = task(TaskKind::Shadow, "researcher");
    let meta = Meta {
        retry_after_ms: Some(3_000),
        reason: Some("usage limit reached".into()),
        ..Meta::default()
    };
    let op = outcome(
        &t,
        &c,
        &LIMITS,
        ended(Ending::Exited(ExitStatus::from_raw(75 << 8))),
        vec![],
        &meta,
        1,
    )
    .unwrap();
    assert_eq!(op.action, Action::Defer);
    let d = op.details.unwrap();
    assert_eq!(d["reason"], "usage limit reached");
    assert_eq!(d["retryAfter"], "1970-01-01T00:00:03.000Z");
    assert!(op.patch.error.is_none());
}

#[test]
fn usage_adds_to_earlier_runs_and_a_bad_meta_file_is_a_warning() {
    let c = cfg();
    let mut t = task(TaskKind::Shadow, "researcher");
    t.usage = Some(used("m1", 10, 0.5));
    let meta = Meta {
        usage: Some(used("m2", 5, 0.25)),
        ..Meta::default()
    };
    let ok = Ending::Exited(ExitStatus::from_raw(0));
    let op = outcome(&t, &c, &LIMITS, ended(ok), vec![], &meta, 1).unwrap();
    let u = op.patch.usage.unwrap();
    assert_eq!(
        (u.model.as_deref(), u.input_tokens, u.cost_usd),
        (Some("m2"), Some(15), Some(0.75))
    );
    let meta = Meta {
        warning: Some("ORCH_META_FILE is not a valid meta object".into()),
        ..Meta::default()
    };
    let op = outcome(&t, &c, &LIMITS, ended(ok), vec![], &meta, 1).unwrap();
    assert!(matches!(op.action, Action::Complete { .. }));
    assert!(op.patch.usage.is_none());
    assert!(op.details.unwrap()["metaWarning"].contains("not a valid"));
}

#[test]
fn a_failure_is_retried_while_attempts_are_left_for_the_listed_codes_only() {
    let c = cfg();
    let mut agent = c.agent("researcher").unwrap().clone();
    agent.retry_on = vec![task_error::SPECIALIST_ABORTED.to_string()];
    agent.max_attempts = 2;
    let mut t = task(TaskKind::Shadow, "researcher");
    let aborted = || {
        outcome(
            &task(TaskKind::Shadow, "researcher"),
            &c,
            &LIMITS,
            ended(Ending::Exited(ExitStatus::from_raw(3 << 8))),
            vec![],
            &Meta::default(),
            1,
        )
        .unwrap()
    };
    let op = retry(aborted(), &t, &agent);
    assert_eq!(op.action, Action::Retry);
    let d = op.details.unwrap();
    assert_eq!(
        (d["attempt"].as_str(), d["error"].as_str()),
        ("1", "specialist_aborted")
    );
    t.attempts = 2;
    assert_eq!(retry(aborted(), &t, &agent).action, Action::Fail);
    t.attempts = 1;
    let timed_out = outcome(
        &t,
        &c,
        &LIMITS,
        ended(Ending::TimedOut),
        vec![],
        &Meta::default(),
        1,
    )
    .unwrap();
    assert_eq!(retry(timed_out, &t, &agent).action, Action::Fail);
}

#[test]
fn retry_delays_double_with_jitter_and_stop_at_an_hour() {
    let base = Duration::from_secs(30);
    assert_eq!(retry_delay(base, 1, 0.5), Duration::from_secs(30));
    assert_eq!(retry_delay(base, 3, 0.5), Duration::from_secs(120));
    assert_eq!(retry_delay(base, 3, 0.0), Duration::from_secs(96));
    assert_eq!(retry_delay(base, 3, 1.0), Duration::from_secs(144));
    assert_eq!(retry_delay(base, 30, 1.0), Duration::from_secs(3600));
}

#[test]
fn the_contract_variables_win_over_the_agent_env() {
    let t = task(TaskKind::Live, "coder");
    let agent_env = BTreeMap::from([
        ("API_KEY".to_string(), "k".to_string()),
        ("ORCH_TASK_ID".to_string(), "forged".to_string()),
        ("NOTIFY_SOCKET".to_string(), "/run/x".to_string()),
    ]);
    let base = || vec![("PATH".to_string(), "/bin".to_string())];
    let env: BTreeMap<String, String> =
        process::child_env_from(base(), &t, &agent_env, Some(Path::new("/a")))
            .into_iter()
            .collect();
    assert_eq!(env["ORCH_TASK_ID"], t.id);
    assert_eq!(env["ORCH_TASK_KIND"], "live");
    assert_eq!(env["ORCH_AGENT_ID"], "coder");
    assert_eq!(env["ORCH_ARTEFACT_DIR"], "/a");
    assert_eq!(env["API_KEY"], "k");
    assert_eq!(env["PATH"], "/bin");
    assert!(!env.contains_key("NOTIFY_SOCKET"));
}

#[test]
fn the_delivery_hook_gets_the_contract_variables_without_an_artefact_dir() {
    let t = task(TaskKind::Live, "coder");
    let base = vec![("PATH".to_string(), "/bin".to_string())];
    let env: BTreeMap<String, String> = process::child_env_from(base, &t, &BTreeMap::new(), None)
        .into_iter()
        .collect();
    assert_eq!(env["ORCH_TASK_ID"], t.id);
    assert_eq!(env["ORCH_TASK_KIND"], "live");
    assert_eq!(env["ORCH_AGENT_ID"], "coder");
    assert_eq!(env["PATH"], "/bin");
    assert!(!env.contains_key("ORCH_ARTEFACT_DIR"));
}

/// A daemon of `kind` on a fresh store in a directory of its own, its clock standing still.
fn test_daemon(kind: TaskKind) -> (tempfile::TempDir, Arc<Daemon>) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("state.db")).unwrap();
    let clock = crate::clock::ManualClock::new(0).clock();
    let d = Arc::new(Daemon::for_test(store, dir.path(), kind, clock));
    (dir, d)
}

/// When the dispatcher ends, the executor it owns is dropped: the intake must not report a failure
/// of its own, which would race the dispatcher's and could name the wrong task in the log.
#[tokio::test(start_paused = true)]
async fn the_intake_outlives_a_dropped_executor_until_shutdown() {
    let (_dir, d) = test_daemon(TaskKind::Synthetic);
    let (sup, mut failures) = crate::supervisor::Supervisor::new(d.shutdown.clone());
    drop(Executor::new(Arc::clone(&d), &sup));
    // Time is paused: this sleep ends only once every task has run until it waits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(failures.try_next(), None);
    d.shutdown.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(failures.try_next(), None);
}

/// A task handed over again (at start, or by the sweep after a store error) is known when it waits
/// or runs here, or was routed earlier in the same burst, however late in the burst; no other is.
#[tokio::test]
async fn a_task_waiting_running_or_routed_in_the_burst_is_known_and_no_other() {
    let (_dir, d) = test_daemon(TaskKind::Live);
    let shared = Shared {
        d,
        slots: Mutex::default(),
        leases: Arc::default(),
        tracker: TaskTracker::new(),
    };
    let with_id = |id: &str| Task {
        id: id.into(),
        state: TaskState::Assigned,
        ..task(TaskKind::Live, "coder")
    };
    {
        let mut slots = shared.slots();
        slots
            .running
            .insert("RUNNING".into(), tokio_util::sync::CancellationToken::new());
        let coder = slots.agents.entry("coder".into()).or_default();
        coder.waiting.push_back((0, with_id("WAITING")));
    }
    let mut here = None;
    let mut routed = vec![with_id("ROUTED-1")];
    for id in ["RUNNING", "WAITING", "ROUTED-1"] {
        assert!(shared.known(&mut here, id, &routed), "{id}");
    }
    assert!(!shared.known(&mut here, "ROUTED-2", &routed));
    routed.push(with_id("ROUTED-2"));
    routed.push(with_id("ROUTED-3"));
    assert!(shared.known(&mut here, "ROUTED-3", &routed));
    assert!(shared.known(&mut here, "ROUTED-2", &routed));
    assert!(!shared.known(&mut here, "ELSEWHERE", &routed));
}
