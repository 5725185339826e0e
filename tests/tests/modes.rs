//! Issue: reload, gated mode flips, credentials — acceptance points end to end.

use orchestrator_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn effective(d: &TestDaemon) -> String {
    d.ctl_json(&["status"]).1["effectiveMode"]
        .as_str()
        .unwrap()
        .to_string()
}

fn reload(d: &TestDaemon) -> (i32, String) {
    let out = d.ctl(&["reload"]);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// Agents that really run: `ok` succeeds, `boom` exits 3. Code tasks go to `coder` (needs approval).
fn agents(mode: &str, window: &str, min: u32) -> String {
    format!("mode = \"{mode}\"\n{}", agents_in_any_mode(window, min))
}

/// [`agents`] without the mode, for [`TestDaemon::in_mode`].
fn agents_in_any_mode(window: &str, min: u32) -> String {
    format!(
        r#"
[gate]
shadow_window = "{window}"
min_shadow_tasks = {min}

[[routing.rules]]
id = "boom"
pattern = '\bexplode\b'
agent = "boom"
priority = 50

[[routing.rules]]
id = "code-tasks"
pattern = '\b(code|debug|fix)\b'
agent = "coder"
priority = 10

[routing.default]
agent = "ok"

[agents.ok]
command = ["/bin/sh", "-c", "cat >/dev/null; echo fine"]

[agents.coder]
capabilities = ["code", "mutate-external"]
command = ["/bin/sh", "-c", "cat >/dev/null; echo patched"]

[agents.boom]
command = ["/bin/sh", "-c", "cat >/dev/null; exit 3"]
"#
    )
}

#[test]
fn synthetic_to_shadow_needs_a_passed_gate() {
    let d = TestDaemon::with_config("mode = \"synthetic\"\n");
    d.write_config("mode = \"shadow\"\n");
    let (code, text) = reload(&d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("synthetic gate"), "{text}");
    assert_eq!(effective(&d), "synthetic");
    let (_, st) = d.ctl_json(&["status"]);
    assert_eq!(
        st["configuredMode"], "synthetic",
        "the refused config is not applied"
    );
    assert_eq!(st["lastReload"]["outcome"], "refused");

    assert_eq!(d.ctl(&["synthetic-all"]).status.code(), Some(0));
    let (code, text) = reload(&d);
    assert_eq!(code, 0, "{text}");
    assert_eq!(effective(&d), "shadow");
    // New submissions take the new kind.
    let id = d.submit("xyzzy");
    assert_eq!(d.task(&id)["kind"], "shadow");
}

#[test]
fn a_routing_change_invalidates_the_gate() {
    let d = TestDaemon::with_config("mode = \"synthetic\"\n");
    assert_eq!(d.ctl(&["synthetic-all"]).status.code(), Some(0));
    // Rules in a file replace the built-in ones, so change the approval list instead: it is part of
    // the routing fingerprint and keeps every fixture's expectation true.
    let extra = "mode = \"shadow\"\n\n[routing]\napproval_required_capabilities = [\"mutate-external\", \"ops\", \"publish\", \"deploy\", \"gpu\"]\n";
    d.write_config(extra);
    let (code, text) = reload(&d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("fingerprint"), "{text}");
    assert_eq!(effective(&d), "synthetic");
    // The gate runs against the config in force, so apply the routing change first (in synthetic).
    d.write_config(&extra.replace("mode = \"shadow\"", "mode = \"synthetic\""));
    assert_eq!(reload(&d).0, 0);
    assert_eq!(d.ctl(&["synthetic-all"]).status.code(), Some(0));
    d.write_config(extra);
    let (code, text) = reload(&d);
    assert_eq!(code, 0, "{text}");
    assert_eq!(effective(&d), "shadow");
}

#[test]
fn invalid_config_on_reload_exits_5_and_keeps_running() {
    let d = TestDaemon::with_config("mode = \"synthetic\"\n");
    d.write_config("mode = \"bogus\"\n");
    let (code, text) = reload(&d);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains("mode"), "{text}");
    assert_eq!(effective(&d), "synthetic");
    assert!(d.ctl(&["status"]).status.success());
}

fn submit_wait(d: &TestDaemon, goal: &str) -> serde_json::Value {
    let (code, v) = d.ctl_json(&["submit", goal, "--wait"]);
    assert_eq!(code, 0, "{v}");
    v
}

#[test]
fn shadow_to_live_needs_window_evidence_and_no_failures() {
    let d = TestDaemon::with_config(&agents("synthetic", "1h", 2));
    let past_the_window = Duration::from_secs(3_601);
    // These agents do not satisfy the built-in fixtures; the synthetic gate is not what this test is about.
    assert!(d
        .ctl(&["gate", "override", "shadow", "--reason", "test"])
        .status
        .success());
    d.write_config(&agents("shadow", "1h", 2));
    assert_eq!(reload(&d).0, 0);

    // Too early.
    d.write_config(&agents("live", "1h", 2));
    let (code, text) = reload(&d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("shadow_window"), "{text}");

    // Window elapsed but no evidence: refused for the missing shadow tasks, not for the window.
    d.advance(past_the_window);
    let (code, text) = reload(&d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no shadow tasks"), "{text}");
    assert!(!text.contains("shadow_window"), "{text}");
    assert_eq!(effective(&d), "shadow");

    // A failure inside the window.
    assert_eq!(submit_wait(&d, "xyzzy one")["state"], "done");
    // `submit --wait` answers for the task: one that failed exits 1, printed all the same.
    let (code, failed) = d.ctl_json(&["submit", "explode now", "--wait"]);
    assert_eq!(code, 1, "{failed}");
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"]["code"], "specialist_aborted");
    let (code, text) = reload(&d);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("failed"), "{text}");

    // Let the failure leave the window, then two successes: accepted.
    d.advance(past_the_window);
    let coder = submit_wait(&d, "fix the bug");
    assert_eq!(coder["state"], "done", "shadow never waits for approval");
    assert_eq!(coder["wouldRequireApproval"], true);
    submit_wait(&d, "xyzzy two");
    let (code, text) = reload(&d);
    assert_eq!(code, 0, "{text}");
    assert_eq!(effective(&d), "live");
}

#[test]
fn override_lets_one_flip_through_and_going_back_is_always_allowed() {
    let d = TestDaemon::with_config(&agents("synthetic", "24h", 10));
    let out = d.ctl(&["gate", "override", "live", "--reason", "staging cut-over"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, st) = d.ctl_json(&["status"]);
    let pending = st["pendingOverrides"].as_array().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["mode"], "live");
    assert_eq!(pending[0]["reason"], "staging cut-over");
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap()
        .name;
    assert_eq!(pending[0]["by"], me.as_str());

    d.write_config(&agents("live", "24h", 10));
    let (code, text) = reload(&d);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("override"), "{text}");
    assert_eq!(effective(&d), "live");
    let (_, st) = d.ctl_json(&["status"]);
    assert_eq!(
        st["pendingOverrides"].as_array().unwrap().len(),
        0,
        "consumed"
    );

    // A live task waiting for approval survives the flip back and stays actionable.
    let waiting = submit_wait(&d, "fix the bug");
    assert_eq!(waiting["state"], "awaiting_approval", "{waiting}");
    d.write_config(&agents("synthetic", "24h", 10));
    let (code, text) = reload(&d);
    assert_eq!(code, 0, "{text}");
    assert_eq!(effective(&d), "synthetic");
    let id = waiting["id"].as_str().unwrap();
    assert!(d.ctl(&["approve", id]).status.success());
    assert_eq!(d.state_of(id), "done");

    // A second flip to live needs a new override.
    d.write_config(&agents("live", "24h", 10));
    assert_eq!(reload(&d).0, 1);
}

#[test]
fn sighup_follows_the_same_rules_and_logs_refusals() {
    let d = TestDaemon::with_config("mode = \"synthetic\"\n");
    d.write_config("mode = \"shadow\"\n");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let st = wait_for(
        "the refused reload in status",
        Duration::from_secs(10),
        || {
            let (_, v) = d.ctl_json(&["status"]);
            (v["lastReload"]["outcome"] == "refused").then_some(v)
        },
    );
    assert_eq!(st["effectiveMode"], "synthetic");
    assert_eq!(st["lastReload"]["trigger"], "sighup");
    assert!(
        st["modeNote"]
            .as_str()
            .unwrap_or_default()
            .contains("synthetic gate"),
        "{st}"
    );
    assert!(d.log_text().contains("refused"), "logged");
}

#[test]
fn restart_with_an_ungated_mode_keeps_the_effective_one() {
    let mut d = TestDaemon::with_config("mode = \"synthetic\"\n");
    d.write_config("mode = \"live\"\n");
    d.restart();
    let (_, st) = d.ctl_json(&["status"]);
    assert_eq!(st["configuredMode"], "live");
    assert_eq!(st["effectiveMode"], "synthetic");
    assert!(!st["modeNote"].is_null());
}

#[test]
fn init_rotate_and_token_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("etc/orchestrator.toml");
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        std::process::Command::new(bin("orchctl"))
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let first = run(&["init"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(stdout(&first).contains("created"));
    let token = state.join("token");
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let t1 = std::fs::read_to_string(&token).unwrap();
    assert_eq!(t1.trim().len(), 64);
    assert!(t1.trim().chars().all(|c| c.is_ascii_hexdigit()));
    // The config written is valid and loadable.
    let check = std::process::Command::new(bin("orchctl"))
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));

    let second = run(&["init"]);
    assert_eq!(second.status.code(), Some(0));
    assert!(stdout(&second).contains("exists"), "{}", stdout(&second));
    assert_eq!(std::fs::read_to_string(&token).unwrap(), t1);

    assert_eq!(run(&["init", "--force"]).status.code(), Some(0));
    let t2 = std::fs::read_to_string(&token).unwrap();
    assert_ne!(t2, t1);
    let rot = std::process::Command::new(bin("orchctl"))
        .args(["rotate-token", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(rot.status.code(), Some(0));
    assert_ne!(std::fs::read_to_string(&token).unwrap(), t2);

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bad = run(&["init"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("0644"), "{}", stdout(&bad));
}

#[test]
fn status_reports_a_readable_token_file() {
    let d = TestDaemon::start();
    let token = d.state_dir.join("token");
    std::fs::write(&token, "abc\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, st) = d.ctl_json(&["status"]);
    assert!(
        st["tokenProblem"].as_str().unwrap().contains("0644"),
        "{st}"
    );
    let out = d.ctl(&["status"]);
    assert!(
        stdout(&out).contains("token:        ERROR"),
        "{}",
        stdout(&out)
    );
}

/// After a start the daemon reads the gate's window once, in the background, and keeps its
/// settled time for the summaries; the first summary asked for counts what was there before.
#[test]
fn after_a_start_the_windows_settled_time_is_read_before_any_summary() {
    let mut d = TestDaemon::in_mode(&agents_in_any_mode("24h", 1), "shadow");
    for goal in ["xyzzy one", "xyzzy two", "xyzzy three"] {
        assert_eq!(submit_wait(&d, goal)["state"], "done");
    }
    // Their ten minutes of creation time settle ten minutes after they end.
    d.advance(Duration::from_secs(30 * 60));
    d.restart();
    let line = wait_for(
        "the window read after the start",
        Duration::from_secs(20),
        || {
            d.log_text()
                .lines()
                .find(|l| {
                    l.contains("the window's settled time read after the start")
                        && l.contains("tasks=3")
                })
                .map(str::to_string)
        },
    );
    assert!(line.contains("window_hours=24"), "{line}");
    assert!(!line.contains("kept_buckets=0"), "{line}");
    let (code, s) = d.ctl_json(&["shadow-summary"]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["total"], 3, "{s}");
}
