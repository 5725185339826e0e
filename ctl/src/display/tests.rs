//! Rendering tests: each builds a reply, renders it into memory through [`response`] and reads
//! what a person or a script would.

use super::*;
use orchestrator_core::config::Config;
use orchestrator_proto::message::{
    DurationStats, RouteDecision, ShadowSummary, SinkStatus, StateCount, StatusReport,
};
use orchestrator_proto::task::{
    Mode, Routing, Task, TaskKind, TaskResult, TaskState, TrajectoryEvent,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Render into memory: (exit code, stdout text, stderr text).
fn render(r: &Response, format: Format) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = response(
        r,
        format,
        &mut Output {
            out: &mut out,
            err: &mut err,
        },
    )
    .unwrap();
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn notify_list_shows_queues_and_last_errors() {
    let sinks = vec![
        SinkStatus {
            name: "phone".into(),
            target: Some("webhook https://ntfy.sh/ops".into()),
            events: vec!["*".into()],
            pending: 3,
            dead: 1,
            oldest_pending_secs: Some(42),
            delivered: 10,
            failed_attempts: 4,
            last_error: Some("HTTP 503 Service Unavailable".into()),
        },
        SinkStatus {
            name: "gone".into(),
            target: None,
            events: Vec::new(),
            pending: 0,
            dead: 2,
            oldest_pending_secs: None,
            delivered: 0,
            failed_attempts: 0,
            last_error: None,
        },
    ];
    let (code, out, _) = render(&Response::NotifySinks(sinks.clone()), Format::Table);
    assert_eq!(code, exit::OK);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SINK"));
    assert!(lines[1].starts_with("phone"), "{out}");
    assert!(
        lines[1].contains(" 3 ") && lines[1].contains("42s"),
        "{out}"
    );
    assert!(lines[1].ends_with("webhook https://ntfy.sh/ops"), "{out}");
    assert!(lines[2].contains("last error: HTTP 503"), "{out}");
    assert!(lines[3].contains("(no longer configured)"), "{out}");
    let (_, json, _) = render(&Response::NotifySinks(sinks), Format::Json);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["oldestPendingSecs"], 42);
    assert_eq!(v[1]["dead"], 2);
    let (_, none, _) = render(&Response::NotifySinks(Vec::new()), Format::Table);
    assert_eq!(none, "no [[notify]] sinks configured\n");
}

fn task(id: &str, state: TaskState, goal: &str) -> Task {
    Task {
        schema_version: 1,
        id: id.into(),
        kind: TaskKind::Live,
        state,
        goal: goal.into(),
        workspace_dir: None,
        required_capabilities: Vec::new(),
        routing: None,
        assigned_agent_id: None,
        result: None,
        rejection: None,
        error: None,
        submitted_by: "alice".into(),
        would_require_approval: false,
        created_at: "2025-01-01T00:00:00.000Z".into(),
        assigned_at: None,
        started_at: None,
        completed_at: None,
        expires_at: "2025-01-08T00:00:00.000Z".into(),
        attempts: 0,
        usage: None,
    }
}

fn event(seq: u64, from: Option<TaskState>, to: TaskState, action: &str) -> TrajectoryEvent {
    TrajectoryEvent {
        seq,
        task_id: "01TASK".into(),
        at: format!("2025-01-01T00:00:0{seq}.000Z"),
        actor: "daemon".into(),
        action: action.into(),
        from,
        to,
        details: None,
    }
}

/// What a specialist wrote reaches the terminal escaped: no control sequence in a result, an error
/// or a file name can act on the operator's terminal. Line breaks and tabs stay text; JSON output
/// is JSON's own escaping.
#[test]
fn task_detail_escapes_control_characters_others_wrote() {
    let mut t = task("01TASK", TaskState::Failed, "fix the build");
    t.result = Some(TaskResult {
        text: Some("line one\r\n\tline two \u{1b}]0;owned\u{7}\u{1b}[2J\rover".into()),
        text_path: None,
        artefacts: Vec::new(),
        specialist_session_id: None,
    });
    t.error = Some(orchestrator_proto::task::TaskError {
        code: "specialist_exit".into(),
        message: "exit 3: \u{1b}[31mred".into(),
        details: Some(BTreeMap::from([(
            "stderrTail".to_string(),
            "\u{8}\u{8}ok".to_string(),
        )])),
    });
    let (_, out, _) = render(
        &Response::TaskDetail {
            task: Box::new(t),
            events: Vec::new(),
        },
        Format::Table,
    );
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{8}'),
        "{out:?}"
    );
    assert!(
        out.contains(
            "result:      line one\r\n\tline two \\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{d}over\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("error:       specialist_exit: exit 3: \\u{1b}[31mred\n"),
        "{out}"
    );
    assert!(out.contains("stderrTail: \\u{8}\\u{8}ok\n"), "{out}");
}

#[test]
fn task_detail_shows_routing_result_and_trajectory() {
    let mut t = task("01TASK", TaskState::Done, "fix the build");
    t.required_capabilities = vec!["code".into()];
    t.assigned_agent_id = Some("coder".into());
    t.routing = Some(Routing {
        matched_rule_id: Some("code-tasks".into()),
        assigned_agent_id: "coder".into(),
        capability_matches: Vec::new(),
        fallback_used: false,
        decided_at: "2025-01-01T00:00:01.000Z".into(),
    });
    t.completed_at = Some("2025-01-01T00:00:03.000Z".into());
    t.result = Some(TaskResult {
        text: Some("fixed".into()),
        text_path: None,
        artefacts: Vec::new(),
        specialist_session_id: None,
    });
    let events = vec![
        event(1, None, TaskState::Queued, "submit"),
        event(2, Some(TaskState::Queued), TaskState::Assigned, "assign"),
    ];
    let (code, out, err) = render(
        &Response::TaskDetail {
            task: Box::new(t),
            events,
        },
        Format::Table,
    );
    assert_eq!(code, exit::OK);
    assert_eq!(err, "");
    let expected = "\
id:          01TASK
kind:        live
state:       done
goal:        fix the build
requires:    code
agent:       coder
rule:        code-tasks
submitted:   2025-01-01T00:00:00.000Z by alice
expires:     2025-01-08T00:00:00.000Z
completed:   2025-01-01T00:00:03.000Z
result:      fixed
trajectory:
  2025-01-01T00:00:01.000Z  submit                    - → queued            by daemon
  2025-01-01T00:00:02.000Z  assign               queued → assigned          by daemon
";
    assert_eq!(out, expected);
}

#[test]
fn task_detail_json_carries_the_trajectory() {
    let events = vec![event(1, None, TaskState::Queued, "submit")];
    let r = Response::TaskDetail {
        task: Box::new(task("01TASK", TaskState::Queued, "x")),
        events,
    };
    let (_, out, _) = render(&r, Format::Json);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], "01TASK");
    assert_eq!(v["trajectory"][0]["action"], "submit");
}

#[test]
fn submitted_task_prints_only_its_id_on_stdout() {
    let (_, out, err) = render(
        &Response::Task(Box::new(task("01TASK", TaskState::Queued, "x"))),
        Format::Table,
    );
    assert_eq!(out, "01TASK\n");
    assert_eq!(err, "live queued agent=-\n");
}

#[test]
fn task_list_is_a_table_with_goals_cut_to_one_short_line() {
    let mut long = task("01B", TaskState::AwaitingApproval, &"a".repeat(70));
    long.assigned_agent_id = Some("helpdesk".into());
    let list = vec![task("01A", TaskState::Queued, "two\nlines"), long];
    let (code, out, _) = render(&Response::Tasks(list), Format::Table);
    assert_eq!(code, exit::OK);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("ID  "), "{out}");
    assert!(lines[0].ends_with("AGENT               GOAL"), "{out}");
    assert!(lines[1].starts_with("01A "), "{out}");
    assert!(
        lines[1].ends_with(" -                   two lines"),
        "{out}"
    );
    assert!(lines[2].contains("awaiting_approval"), "{out}");
    assert!(lines[2].ends_with(&format!("helpdesk            {}", "a".repeat(60))));
}

fn status_report() -> StatusReport {
    StatusReport {
        daemon_version: "0.1.0".into(),
        pid: 42,
        uptime_secs: 7,
        configured_mode: Mode::Shadow,
        effective_mode: Mode::Synthetic,
        mode_since: "2025-01-01T00:00:00.000Z".into(),
        mode_note: Some("no gate run yet".into()),
        config_path: None,
        config_loaded_at: "2025-01-01T00:00:00.000Z".into(),
        config_error: None,
        config_warnings: vec!["agent \"x\" has no command".into()],
        routing_fingerprint: "00ff".into(),
        socket: "/run/o.sock".into(),
        state_dir: "/var/lib/o".into(),
        counts: vec![StateCount {
            kind: TaskKind::Synthetic,
            state: TaskState::Done,
            count: 5,
        }],
        latest_gate: None,
        last_reload: None,
        pending_overrides: Vec::new(),
        last_sweep: None,
        next_sweep_at: None,
        token_problem: None,
        http_listen: None,
        agents: Vec::new(),
    }
}

#[test]
fn status_table() {
    let (code, out, _) = render(&Response::Status(Box::new(status_report())), Format::Table);
    assert_eq!(code, exit::OK);
    let expected = "\
orchestratord 0.1.0 (pid 42, up 7s)
mode:         synthetic (configured: shadow, since 2025-01-01T00:00:00.000Z)
mode note:    no gate run yet
config:       built-in defaults (loaded 2025-01-01T00:00:00.000Z)
warning:      agent \"x\" has no command
socket:       /run/o.sock
state dir:    /var/lib/o
routing:      fingerprint 00ff
gate:         no synthetic gate run yet
last sweep:   none yet
tasks:
  synthetic  done               5
";
    assert_eq!(out, expected);
}

#[test]
fn route_preview_names_agent_rule_and_approval() {
    let d = RouteDecision {
        matched_rule_id: Some("ops-tasks".into()),
        assigned_agent_id: "helpdesk".into(),
        capability_matches: Vec::new(),
        fallback_used: false,
        requires_approval: true,
        approval_reasons: vec!["agent helpdesk is in approval_required".into()],
        shadowed_rule_ids: vec!["other".into()],
        agent_configured: false,
    };
    let (code, out, _) = render(&Response::Route(d), Format::Table);
    assert_eq!(code, exit::OK);
    let expected = "\
agent:     helpdesk (no [agents] entry)
rule:      ops-tasks
fallback:  no
approval:  required (agent helpdesk is in approval_required)
shadowed:  other (same priority, also matched; file order decided)
";
    assert_eq!(out, expected);
}

fn shadow_summary(passed: bool) -> ShadowSummary {
    ShadowSummary {
        window_hours: 24,
        total: 12,
        by_state: BTreeMap::from([("done".to_string(), 11), ("failed".to_string(), 1)]),
        failures_by_code: BTreeMap::from([("specialist_timeout".to_string(), 1)]),
        duration: Some(DurationStats {
            mean_ms: 10,
            p50_ms: 9,
            p95_ms: 20,
            max_ms: 30,
        }),
        per_agent: BTreeMap::from([("coder".to_string(), 12)]),
        would_require_approval: 3,
        oldest: Some("2025-01-01T00:00:00.000Z".into()),
        newest: Some("2025-01-01T12:00:00.000Z".into()),
        min_tasks: 10,
        passed,
        verdict: if passed { "pass" } else { "fail" }.into(),
        usage_by_agent: BTreeMap::new(),
        usage_by_model: BTreeMap::new(),
    }
}

#[test]
fn shadow_summary_table_and_its_exit_code() {
    let (code, out, _) = render(
        &Response::ShadowSummary(shadow_summary(true)),
        Format::Table,
    );
    assert_eq!(code, exit::OK);
    let expected = "\
shadow summary, last 24 h: 12 tasks
window span:  2025-01-01T00:00:00.000Z → 2025-01-01T12:00:00.000Z
  done               11
  failed             1
failures by code:
  specialist_timeout 1
duration ms:  mean 10  p50 9  p95 20  max 30
per agent:
  coder              12
would require approval in live: 3
minimum tasks for the gate: 10
verdict: pass
";
    assert_eq!(out, expected);
    let (code, _, _) = render(
        &Response::ShadowSummary(shadow_summary(false)),
        Format::Json,
    );
    assert_eq!(code, exit::FAILED);
}

#[test]
fn invalid_config_lists_every_error_on_stderr() {
    let text = "mode = \"prod\"\n[sweeper]\ninterval = \"soon\"\n";
    let result = Config::from_toml(text, Some(Path::new("/etc/o.toml")));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = config_check(
        Path::new("/etc/o.toml"),
        &result,
        Format::Table,
        &mut Output {
            out: &mut out,
            err: &mut err,
        },
    )
    .unwrap();
    assert_eq!(code, exit::CONFIG);
    assert!(out.is_empty());
    let err = String::from_utf8(err).unwrap();
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.starts_with("error: /etc/o.toml: line 1: mode: "),
        "{err}"
    );
}
