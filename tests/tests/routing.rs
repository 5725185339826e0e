//! Issue: routing configuration and the synthetic gate — acceptance points end to end.

use orchestrator_tests::*;
use std::time::Duration;

const MAIN_FOR_CODE: &str = r#"
[[routing.rules]]
id = "code-tasks"
pattern = '\b(code|debug|refactor|test|fix|implement|build|lint|typecheck)\b'
agent = "main"
priority = 10

[[routing.rules]]
id = "research-tasks"
pattern = '\b(research|find out|investigate|summarize|paper|literature)\b'
agent = "researcher"
priority = 5
"#;

fn task_count(d: &TestDaemon) -> u64 {
    let (_, v) = d.ctl_json(&["status"]);
    v["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn builtin_synthetic_all_passes_five_of_five_and_is_recorded() {
    let d = TestDaemon::start();
    let out = d.ctl(&["synthetic-all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().next(),
        Some("synthetic harness: 5/5 fixtures passed")
    );
    for label in ["code-1", "ops-1", "research-1", "writing-1", "fallback-1"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(label)),
            "{label}: {text}"
        );
    }
    let (_, st) = d.ctl_json(&["status"]);
    assert_eq!(st["latestGate"]["passed"], 5);
    assert_eq!(st["latestGate"]["total"], 5);
    assert_eq!(st["latestGate"]["matchesCurrent"], true);
    assert_eq!(st["latestGate"]["fingerprint"], st["routingFingerprint"]);
    // Harness tasks are kind synthetic, submitted by the harness, and hidden from a plain list.
    let (_, listed) = d.ctl_json(&["tasks", "list"]);
    assert_eq!(
        listed["tasks"].as_array().unwrap().len(),
        0,
        "harness tasks hidden: {listed}"
    );
    let (_, all) = d.ctl_json(&["tasks", "list", "--all"]);
    let all = all["tasks"].as_array().unwrap();
    assert_eq!(all.len(), 5);
    assert!(all
        .iter()
        .all(|t| t["submittedBy"] == "synthetic-harness" && t["kind"] == "synthetic"));
    // Those that stopped for approval (as their fixtures expect) were judged, then cancelled by
    // the harness: none is left waiting, in the listings or in the counts.
    let states: Vec<&str> = all.iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert!(!states.contains(&"awaiting_approval"), "{states:?}");
    let cancelled: Vec<_> = all.iter().filter(|t| t["state"] == "cancelled").collect();
    assert!(!cancelled.is_empty(), "{states:?}");
    for t in cancelled {
        let shown = d.task(t["id"].as_str().unwrap());
        let trajectory = shown["trajectory"].as_array().unwrap();
        let last = &trajectory[trajectory.len() - 1];
        assert_eq!(last["from"], "awaiting_approval", "{shown}");
        assert_eq!(last["actor"], "synthetic-harness", "{shown}");
    }
    let (_, st) = d.ctl_json(&["status"]);
    let counted: Vec<&str> = st["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert!(!counted.contains(&"awaiting_approval"), "{st}");
}

#[test]
fn code_tasks_routed_to_main_fails_the_gate_after_sighup() {
    let d = TestDaemon::with_config("mode = \"synthetic\"\n");
    let before = d.ctl_json(&["status"]).1["routingFingerprint"].clone();
    d.write_config(MAIN_FOR_CODE);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(
        "the new routing to be in force",
        Duration::from_secs(10),
        || {
            let (_, v) = d.ctl_json(&["status"]);
            (v["routingFingerprint"] != before).then_some(())
        },
    );
    let out = d.ctl(&["synthetic-all"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let code_line = text.lines().find(|l| l.contains("code-1")).unwrap();
    assert!(code_line.starts_with("FAIL"), "{code_line}");
    assert!(
        code_line.contains("expected agent=coder, got main"),
        "{code_line}"
    );
    assert_eq!(d.ctl(&["synthetic", "code-1"]).status.code(), Some(1));
    assert_eq!(d.ctl(&["synthetic", "research-1"]).status.code(), Some(0));
    let (_, st) = d.ctl_json(&["status"]);
    assert_eq!(st["latestGate"]["label"], "research-1");
}

#[test]
fn unknown_fixture_label_lists_the_available_ones() {
    let d = TestDaemon::start();
    let out = d.ctl(&["synthetic", "nope-9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("unknown_fixture"), "{err}");
    for label in ["code-1", "ops-1", "research-1", "writing-1", "fallback-1"] {
        assert!(err.contains(label), "{err}");
    }
}

#[test]
fn route_preview_names_agent_rule_and_approval_without_writing() {
    let d = TestDaemon::start();
    d.submit("xyzzy");
    let before = task_count(&d);
    let out = d.ctl(&["route", "deploy the new release"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("helpdesk")
            && text.contains("ops-tasks")
            && text.contains("approval:  required"),
        "{text}"
    );
    let (_, v) = d.ctl_json(&["route", "deploy the new release"]);
    assert_eq!(v["assignedAgentId"], "helpdesk");
    assert_eq!(v["matchedRuleId"], "ops-tasks");
    assert_eq!(v["requiresApproval"], true);
    assert_eq!(v["fallbackUsed"], false);
    assert_eq!(task_count(&d), before, "route writes nothing");
    let (_, fb) = d.ctl_json(&["route", "xyzzy nothing matches"]);
    assert_eq!(fb["fallbackUsed"], true);
    assert!(fb["matchedRuleId"].is_null());
}

const GPU_AND_PUBLISH: &str = r#"
[routing]
approval_required = []
approval_required_capabilities = ["publish"]

[[routing.rules]]
id = "gpu-train"
pattern = '\btrain\b'
capabilities = ["gpu"]
agent = "trainer"
priority = 20

[[routing.rules]]
id = "publish"
pattern = '\bpublish\b'
agent = "publisher"
priority = 10

[agents.trainer]
capabilities = ["gpu"]

[agents.publisher]
capabilities = ["publish"]
"#;

#[test]
fn capability_rules_and_capability_approval() {
    let d = TestDaemon::with_config(GPU_AND_PUBLISH);
    let (_, with_gpu) = d.ctl_json(&["route", "train the model", "--capability", "gpu"]);
    assert_eq!(with_gpu["matchedRuleId"], "gpu-train");
    assert_eq!(with_gpu["capabilityMatches"], serde_json::json!(["gpu"]));
    let (_, without) = d.ctl_json(&["route", "train the model"]);
    assert!(without["matchedRuleId"].is_null(), "{without}");
    assert_eq!(without["assignedAgentId"], "main");
    let (_, publish) = d.ctl_json(&["route", "publish the post"]);
    assert_eq!(publish["assignedAgentId"], "publisher");
    assert_eq!(publish["requiresApproval"], true, "{publish}");
    // And the real pipeline agrees.
    let out = d.ctl(&["submit", "publish the post"]);
    let id = stdout(&out).trim().to_string();
    assert_eq!(d.state_of(&id), "awaiting_approval");
}

#[test]
fn invalid_regex_fails_config_check_and_sighup_keeps_the_old_config() {
    let bad =
        "[[routing.rules]]\nid = \"broken-rule\"\npattern = \"(unclosed\"\nagent = \"main\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = std::process::Command::new(bin("orchctl"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = stderr(&out);
    assert!(
        err.contains("broken-rule") && err.contains("line 3"),
        "{err}"
    );
    let out = std::process::Command::new(bin("orchestratord"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("broken-rule"));

    let d = TestDaemon::with_config(GPU_AND_PUBLISH);
    let fp = d.ctl_json(&["status"]).1["routingFingerprint"].clone();
    d.write_config(bad);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let st = wait_for(
        "the reload error in status",
        Duration::from_secs(10),
        || {
            let (_, v) = d.ctl_json(&["status"]);
            v["configError"].as_str().map(|_| v.clone())
        },
    );
    assert_eq!(st["routingFingerprint"], fp, "old routing still in force");
    assert!(st["configError"].as_str().unwrap().contains("broken-rule"));
    let (_, publish) = d.ctl_json(&["route", "publish the post"]);
    assert_eq!(publish["assignedAgentId"], "publisher");
}

#[test]
fn config_check_reports_every_kind_of_error_and_warning() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[sweeper]\nintervall = \"1m\"\n", "intervall"),
        ("[[routing.rules]]\nid = \"a\"\npattern = \"x\"\nagent = \"main\"\n[[routing.rules]]\nid = \"a\"\npattern = \"y\"\nagent = \"main\"\n", "duplicate"),
        ("[routing]\nrules = []\n", "empty"),
        ("[agents.coder]\ntimeout = \"soon\"\n", "agents.coder.timeout"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = std::process::Command::new(bin("orchctl"))
            .args(["config", "check"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5), "{text}");
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("line "),
            "names the line: {}",
            stderr(&out)
        );
    }
    let ok = dir.path().join("ok.toml");
    std::fs::write(
        &ok,
        "[[routing.rules]]\nid = \"r\"\npattern = \"x\"\nagent = \"ghost\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin("orchctl"))
        .args(["config", "check"])
        .arg(&ok)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("warning") && stdout(&out).contains("ghost"),
        "{}",
        stdout(&out)
    );
}
