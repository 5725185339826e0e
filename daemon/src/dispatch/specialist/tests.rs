use super::outcome::outcome;
use super::*;
use crate::dispatch::process::{self, Ended, Ending, Limits};
use crate::machine::Action;
use orchestrator_proto::task::{task_error, Routing, TaskKind, TaskResult, TaskState};
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
    let op = outcome(&t, &c, &LIMITS, ended(Ending::TimedOut), vec![], 1).unwrap();
    let e = op.patch.error.unwrap();
    assert_eq!(e.code, task_error::SPECIALIST_TIMEOUT);
    assert_eq!(e.details.unwrap()["timeout"], "2s");
    assert!(outcome(&t, &c, &LIMITS, ended(Ending::Stopped), vec![], 1).is_none());
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
