//! Issue: specialists — shadow and live dispatch with real specialist processes, end to end.
//!
//! The specialists are small shell scripts written by each test into its temporary directory.
//! Where a script sleeps, the sleep is the specialist's own work (a slow agent), never the test
//! waiting for the daemon: the tests wait by polling observable conditions.

use orchestrator_tests::prometheus;
use orchestrator_tests::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const RESEARCH: &str = "research the literature on prompt caching";
const CODE: &str = "please debug this function and fix the off-by-one";
const DEPLOY: &str = "deploy the new release to staging";
const WRITE: &str = "draft an email reply to the procurement team";
const AUDIT: &str = "audit the access logs";
const DESIGN: &str = "design a mockup of the settings page";

const WAIT: Duration = Duration::from_secs(20);

fn submit_in(d: &TestDaemon, goal: &str, workspace: &Path) -> String {
    let out = d.ctl(&[
        "submit",
        goal,
        "--workspace",
        &workspace.display().to_string(),
    ]);
    assert!(out.status.success(), "submit: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Live processes (not zombies) whose environment carries `ORCH_TASK_ID=<id>`.
fn processes_of(id: &str) -> Vec<i32> {
    let needle = format!("ORCH_TASK_ID={id}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// The process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim_start())
        .unwrap_or("");
    !stat.is_empty() && !state.starts_with('Z') && !state.starts_with('X')
}

fn wait_file(path: &Path) -> String {
    wait_for(&format!("{}", path.display()), WAIT, || {
        std::fs::read_to_string(path).ok().filter(|s| !s.is_empty())
    })
}

fn actions(task: &Value) -> Vec<String> {
    task["trajectory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

/// A counter of `orchctl metrics`, summed over its labels (by agent, by failure code).
fn metric(d: &TestDaemon, name: &str) -> u64 {
    let text = stdout(&d.ctl(&["metrics"]));
    let e = prometheus::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        e.types.get(name).map(String::as_str),
        Some("counter"),
        "{name}"
    );
    e.sum(name, &[]) as u64
}

// ---- 1. live outcomes ---------------------------------------------------------------------------

#[test]
fn live_outcomes_done_approval_aborted_spawn_failed_timeout_and_no_agent() {
    let w = workdir();
    let ok = script(
        w.path(),
        "ok.sh",
        r#"
cat > "$ORCH_ARTEFACT_DIR/task.json"
printf '# report\n' > "$ORCH_ARTEFACT_DIR/report.md"
echo "ran $ORCH_TASK_ID kind=$ORCH_TASK_KIND agent=$ORCH_AGENT_ID cwd=$(pwd) leaked=${ORCHESTRATOR_LOG:-none}"
"#,
    );
    let fails = script(
        w.path(),
        "fails.sh",
        "echo partial output\necho 'something broke' >&2\nexit 3",
    );
    let sleeper = script(
        w.path(),
        "sleeper.sh",
        r#"
trap '' TERM
sleep 60 &
echo $! > "$DIR/bg.pid"
wait
"#,
    );
    let deliver = script(
        w.path(),
        "deliver.sh",
        r#"cat > "$DIR/delivered.$ORCH_TASK_ID.json"; echo "$ORCH_TASK_ID" >> "$DIR/delivered""#,
    );
    let toml = format!(
        "{}{}{}{}{}[delivery]\ncommand = [\"{}\"]\ntimeout = \"10s\"\n",
        agent("researcher", &ok, ""),
        agent("coder", &ok, ""),
        agent("helpdesk", &fails, ""),
        agent("main", Path::new("/nonexistent/specialist-cli"), ""),
        // Process timeouts are real time (the daemon signals a real process): kept short, and long
        // enough for the script to note its child's pid first.
        agent(
            "overwatch",
            &sleeper,
            "timeout = \"1s\"\nkill_grace = \"300ms\""
        ),
        deliver.display()
    );
    let d = TestDaemon::in_mode(&toml, "live");
    let ws = w.path().join("workspace");
    std::fs::create_dir(&ws).unwrap();

    let research = submit_in(&d, RESEARCH, &ws);
    let code = d.submit(CODE);
    let deploy = d.submit(DEPLOY);
    let write = d.submit(WRITE);
    let audit = d.submit(AUDIT);
    let design = d.submit(DESIGN);

    // A succeeding researcher: done, its stdout as the result, its files as artefacts.
    let t = d.wait_state(&research, "done", WAIT);
    assert_eq!(t["kind"], "live");
    assert_eq!(
        t["result"]["text"],
        format!(
            "ran {research} kind=live agent=researcher cwd={} leaked=none\n",
            ws.display()
        )
    );
    assert!(t["result"]["textPath"].is_null());
    assert!(t["result"]["specialistSessionId"]
        .as_str()
        .unwrap()
        .contains(&research));
    let arts: BTreeMap<String, (String, u64)> = t["result"]["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let name = Path::new(a["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                name,
                (
                    a["mediaType"].as_str().unwrap().to_string(),
                    a["bytes"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(arts["report.md"], ("text/markdown".to_string(), 9));
    assert_eq!(arts["task.json"].0, "application/json");
    // What the specialist read on stdin is the task itself, in progress.
    let json_path = t["result"]["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"].as_str().unwrap().ends_with("task.json"))
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let stdin: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    assert_eq!(stdin["id"], research.as_str());
    assert_eq!(stdin["state"], "in_progress");
    assert_eq!(stdin["goal"], RESEARCH);
    assert_eq!(
        actions(&t)[..4],
        ["submit", "route", "start", "complete"].map(String::from)
    );

    // A succeeding coder waits for approval; approving it delivers it.
    let t = d.wait_state(&code, "awaiting_approval", WAIT);
    assert!(t["result"]["text"].as_str().unwrap().starts_with("ran "));

    // Exit 3: aborted, with the status and stderr's tail.
    let t = d.wait_state(&deploy, "failed", WAIT);
    assert_eq!(t["error"]["code"], "specialist_aborted");
    assert_eq!(t["error"]["details"]["exitStatus"], "3");
    assert!(t["error"]["details"]["stderrTail"]
        .as_str()
        .unwrap()
        .contains("something broke"));

    // A command that does not exist: spawn_failed.
    let t = d.wait_state(&write, "failed", WAIT);
    assert_eq!(t["error"]["code"], "spawn_failed");
    assert!(t["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/specialist-cli"));

    // A route to an agent without an [agents] entry: rule_loaded_no_agent.
    let t = d.wait_state(&design, "failed", WAIT);
    assert_eq!(t["error"]["code"], "rule_loaded_no_agent");

    // A sleeper that ignores SIGTERM, past its timeout: killed with its whole group.
    let t = d.wait_state(&audit, "failed", WAIT);
    assert_eq!(t["error"]["code"], "specialist_timeout");
    assert_eq!(t["error"]["details"]["timeout"], "1s");
    let bg: i32 = std::fs::read_to_string(w.path().join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the timed-out group to be gone", WAIT, || {
        (!alive(bg) && processes_of(&audit).is_empty()).then_some(())
    });

    // Delivery: the done researcher, and the coder once approved; never the failed ones.
    wait_for("the researcher's delivery", WAIT, || {
        lines(&w.path().join("delivered"))
            .contains(&research)
            .then_some(())
    });
    let out = d.ctl(&["approve", &code]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the coder's delivery", WAIT, || {
        lines(&w.path().join("delivered"))
            .contains(&code)
            .then_some(())
    });
    let delivered: Value = serde_json::from_str(
        &std::fs::read_to_string(w.path().join(format!("delivered.{code}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(delivered["state"], "done");
    assert_eq!(
        lines(&w.path().join("delivered")),
        vec![research.clone(), code.clone()]
    );
    let t = wait_for("the deliver event", WAIT, || {
        let t = d.task(&code);
        actions(&t).contains(&"deliver".to_string()).then_some(t)
    });
    let ev = t["trajectory"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(ev["actor"], "delivery");
    assert_eq!(ev["details"]["exitStatus"], "0");

    assert_eq!(metric(&d, "orchestrator_specialist_spawns_total"), 4);
    // Failures by code: aborted, spawn_failed, timeout, and the task routed to an agent without a
    // command (rule_loaded_no_agent).
    assert_eq!(metric(&d, "orchestrator_specialist_failures_total"), 4);
}

// ---- 2. shadow: no approval, never delivered -----------------------------------------------------

#[test]
fn shadow_coder_is_done_with_would_require_approval_and_is_never_delivered() {
    let w = workdir();
    let ok = script(w.path(), "ok.sh", "echo shadow work");
    let deliver = script(
        w.path(),
        "deliver.sh",
        r#"echo "$ORCH_TASK_ID" >> "$DIR/delivered""#,
    );
    let toml = format!(
        "{}{}[delivery]\ncommand = [\"{}\"]\n",
        agent("coder", &ok, ""),
        agent("researcher", &ok, ""),
        deliver.display()
    );
    let d = TestDaemon::in_mode(&toml, "shadow");
    let shadow = d.submit(CODE);
    let t = d.wait_state(&shadow, "done", WAIT);
    assert_eq!(t["kind"], "shadow");
    assert_eq!(t["wouldRequireApproval"], true);
    assert_eq!(t["result"]["text"], "shadow work\n");

    // Deliveries run one at a time in commit order: once a later live task was delivered, a
    // delivery of the shadow task would have run before it.
    d.flip_to("live", &toml);
    let live = d.submit(RESEARCH);
    d.wait_state(&live, "done", WAIT);
    wait_for("the live task's delivery", WAIT, || {
        lines(&w.path().join("delivered"))
            .contains(&live)
            .then_some(())
    });
    assert_eq!(lines(&w.path().join("delivered")), vec![live]);
    assert!(!actions(&d.task(&shadow)).contains(&"deliver".to_string()));
}

// ---- 3. one slot: FIFO, never two alive ------------------------------------------------------------

#[test]
fn one_slot_runs_three_tasks_one_at_a_time_in_submission_order() {
    let w = workdir();
    let one = script(
        w.path(),
        "one.sh",
        r#"
mkdir "$DIR/lock" 2>/dev/null || echo "overlap $ORCH_TASK_ID" >> "$DIR/overlap"
echo "start $ORCH_TASK_ID" >> "$DIR/log"
sleep 0.2
echo "end $ORCH_TASK_ID" >> "$DIR/log"
rmdir "$DIR/lock"
"#,
    );
    let toml = agent("researcher", &one, "max_concurrent = 1");
    let d = TestDaemon::in_mode(&toml, "live");
    let ids: Vec<String> = (0..3).map(|_| d.submit(RESEARCH)).collect();
    for id in &ids {
        d.wait_state(id, "done", WAIT);
    }
    assert!(
        !w.path().join("overlap").exists(),
        "two specialists were alive at once: {:?}",
        lines(&w.path().join("overlap"))
    );
    let want: Vec<String> = ids
        .iter()
        .flat_map(|id| [format!("start {id}"), format!("end {id}")])
        .collect();
    assert_eq!(lines(&w.path().join("log")), want);
}

#[test]
fn a_task_cancelled_while_waiting_for_its_slot_never_runs() {
    let w = workdir();
    let gate = script(
        w.path(),
        "gate.sh",
        r#"
echo "$ORCH_TASK_ID" >> "$DIR/ran"
while [ ! -e "$DIR/release" ]; do sleep 0.02; done
"#,
    );
    let toml = agent("researcher", &gate, "max_concurrent = 1");
    let d = TestDaemon::in_mode(&toml, "live");
    let first = d.submit(RESEARCH);
    let second = d.submit(RESEARCH);
    let third = d.submit(RESEARCH);
    d.wait_state(&first, "in_progress", WAIT);
    d.wait_state(&second, "assigned", WAIT);
    let out = d.ctl(&["cancel", &second]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(w.path().join("release"), "").unwrap();
    d.wait_state(&third, "done", WAIT);
    assert_eq!(d.state_of(&first), "done");
    assert_eq!(d.state_of(&second), "cancelled");
    assert_eq!(lines(&w.path().join("ran")), vec![first, third]);
}

// ---- 4. the daemon killed while a specialist runs -------------------------------------------------

fn sleeper_daemon(w: &TempDir, extra: &str) -> (TestDaemon, String) {
    let sleeper = script(
        w.path(),
        "sleeper.sh",
        r#"
if [ -e "$DIR/attempted.$ORCH_TASK_ID" ]; then echo "second attempt"; exit 0; fi
touch "$DIR/attempted.$ORCH_TASK_ID"
sleep 60 &
wait
"#,
    );
    let d = TestDaemon::in_mode(&agent("researcher", &sleeper, extra), "live");
    let id = d.submit(RESEARCH);
    d.wait_state(&id, "in_progress", WAIT);
    wait_for("the specialist to run", WAIT, || {
        (processes_of(&id).len() >= 2).then_some(())
    });
    (d, id)
}

#[test]
fn kill9_then_restart_fails_the_task_and_leaves_no_orphan() {
    let w = workdir();
    let (mut d, id) = sleeper_daemon(&w, "kill_grace = \"1s\"");
    d.kill9();
    assert!(
        !processes_of(&id).is_empty(),
        "the specialist outlives a killed daemon until the restart"
    );
    d.start_again();
    assert_eq!(
        processes_of(&id),
        Vec::<i32>::new(),
        "an orphan specialist survived the restart"
    );
    let t = d.wait_state(&id, "failed", WAIT);
    assert_eq!(t["error"]["code"], "specialist_aborted");
    assert!(
        t["error"]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("restarted"),
        "{}",
        t["error"]
    );
    let (_, in_progress) = d.ctl_json(&["tasks", "list", "--state", "in_progress"]);
    assert_eq!(in_progress["tasks"].as_array().unwrap().len(), 0);
}

#[test]
fn kill9_then_restart_requeues_while_attempts_remain() {
    let w = workdir();
    let (mut d, id) = sleeper_daemon(&w, "max_attempts = 2\nkill_grace = \"1s\"");
    let first_attempt = processes_of(&id);
    d.kill9();
    d.start_again();
    // The second attempt may already be running under the same task id: only the first attempt's
    // processes must be gone.
    let survivors: Vec<i32> = first_attempt
        .into_iter()
        .filter(|pid| alive(*pid))
        .collect();
    assert!(
        survivors.is_empty(),
        "orphans of the first attempt: {survivors:?}"
    );
    let t = d.wait_state(&id, "done", WAIT);
    assert_eq!(t["attempts"], 2);
    assert_eq!(t["result"]["text"], "second attempt\n");
    let acts = actions(&t);
    assert!(acts.contains(&"requeue".to_string()), "{acts:?}");
}

#[test]
fn sigterm_stops_running_specialists_and_the_next_start_reclaims_them() {
    let w = workdir();
    let (mut d, id) = sleeper_daemon(&w, "kill_grace = \"1s\"");
    let status = d.terminate();
    assert!(status.success(), "{status}");
    assert!(
        processes_of(&id).is_empty(),
        "a specialist outlived the daemon"
    );
    d.start_again();
    let t = d.wait_state(&id, "failed", WAIT);
    assert_eq!(t["error"]["code"], "specialist_aborted");
}

// ---- leases ----------------------------------------------------------------------------------------

/// The `until` of every lease renewal in the daemon's (debug) log.
fn renewed_until(log: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains("leases renewed"))
        .filter_map(|l| l.split("until=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn a_running_specialist_keeps_its_lease_past_the_ttl() {
    let w = workdir();
    let gate = script(
        w.path(),
        "gate.sh",
        r#"while [ ! -e "$DIR/release" ]; do sleep 0.02; done; echo finished"#,
    );
    let toml = format!(
        "{}[sweeper]\nlease_ttl = \"10s\"\n",
        agent("researcher", &gate, "")
    );
    let d = TestDaemon::in_mode(&toml, "live");
    let id = d.submit(RESEARCH);
    d.wait_state(&id, "in_progress", WAIT);
    // Past the first lease by the clock: only a renewal keeps the task from being reclaimed now.
    d.advance(Duration::from_secs(25));
    let moved_to = d.clock_ms();
    wait_for("a lease renewed past the move", WAIT, || {
        renewed_until(&d.log_text())
            .into_iter()
            .any(|until| until > moved_to)
            .then_some(())
    });
    let (code, sweep) = d.ctl_json(&["sweep"]);
    assert_eq!(code, 0, "{sweep}");
    assert_eq!(sweep["reclaimed"], 0, "{sweep}");
    assert_eq!(d.state_of(&id), "in_progress");
    std::fs::write(w.path().join("release"), "").unwrap();
    let t = d.wait_state(&id, "done", WAIT);
    assert_eq!(t["result"]["text"], "finished\n");
}

// ---- 5. cancel ------------------------------------------------------------------------------------

#[test]
fn cancel_stops_a_running_specialist_and_the_task_stays_cancelled() {
    let w = workdir();
    let polite = script(
        w.path(),
        "polite.sh",
        r#"
trap 'echo term > "$DIR/term"; exit 0' TERM
sleep 60 &
wait
"#,
    );
    let d = TestDaemon::in_mode(&agent("researcher", &polite, "kill_grace = \"5s\""), "live");
    let id = d.submit(RESEARCH);
    d.wait_state(&id, "in_progress", WAIT);
    wait_for("the specialist to run", WAIT, || {
        (processes_of(&id).len() >= 2).then_some(())
    });
    let out = d.ctl(&["cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the specialist's group to be gone", WAIT, || {
        processes_of(&id).is_empty().then_some(())
    });
    assert_eq!(wait_file(&w.path().join("term")).trim(), "term");
    // It exited 0 on SIGTERM, yet the task is cancelled and nothing came after the cancel.
    let t = d.task(&id);
    assert_eq!(t["state"], "cancelled");
    assert_eq!(actions(&t).last().unwrap(), "cancel");
}

// ---- 6. a large output --------------------------------------------------------------------------

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn ten_mib_of_output_is_capped_in_the_result_and_kept_whole_in_a_file() {
    const SIZE: usize = 10 * 1024 * 1024;
    let w = workdir();
    let big = script(
        w.path(),
        "big.sh",
        &format!("yes 'a line of specialist output' | head -c {SIZE}"),
    );
    let d = TestDaemon::in_mode(&agent("researcher", &big, ""), "live");
    let before = vm_hwm_kib(d.pid());
    let id = d.submit(RESEARCH);
    let t = d.wait_state(&id, "done", WAIT);
    let after = vm_hwm_kib(d.pid());
    eprintln!(
        "daemon peak RSS (VmHWM): {before} KiB before, {after} KiB after a {SIZE}-byte output"
    );

    let expected: Vec<u8> = b"a line of specialist output\n"
        .iter()
        .copied()
        .cycle()
        .take(SIZE)
        .collect();
    let text = t["result"]["text"].as_str().unwrap();
    assert_eq!(text.len(), 64 * 1024);
    assert_eq!(text.as_bytes(), &expected[..64 * 1024]);
    let path = t["result"]["textPath"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), expected);
    // Bounded: the daemon never held the output; a copy in memory alone would be 10 MiB.
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "the daemon's peak RSS grew by {} KiB",
        after - before
    );
}

// ---- 7. shadow summary ------------------------------------------------------------------------------

/// The figures of the table output, keyed like the JSON: "total", "done", "failed",
/// "specialist_timeout", "agent:<id>", "would", "mean", "p50", "p95", "max".
fn table_figures(text: &str) -> BTreeMap<String, u64> {
    let mut f = BTreeMap::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split_once(" h: ").map(|(_, r)| r) {
            f.insert(
                "total".into(),
                rest.trim_end_matches(" tasks").parse().unwrap(),
            );
        } else if line == "failures by code:" {
            section = "code";
        } else if line == "per agent:" {
            section = "agent";
        } else if let Some(rest) = line.strip_prefix("  ") {
            let mut parts = rest.split_whitespace();
            let (key, n) = (
                parts.next().unwrap(),
                parts.next().unwrap().parse().unwrap(),
            );
            let key = match section {
                "agent" => format!("agent:{key}"),
                "code" => format!("code:{key}"),
                _ => key.to_string(),
            };
            f.insert(key, n);
        } else if let Some(rest) = line.strip_prefix("duration ms:") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            for pair in words.chunks(2) {
                f.insert(pair[0].into(), pair[1].parse().unwrap());
            }
        } else if let Some(rest) = line.strip_prefix("would require approval in live: ") {
            f.insert("would".into(), rest.parse().unwrap());
        }
    }
    f
}

fn json_figures(v: &Value) -> BTreeMap<String, u64> {
    let mut f = BTreeMap::new();
    f.insert("total".into(), v["total"].as_u64().unwrap());
    for (k, n) in v["byState"].as_object().unwrap() {
        f.insert(k.clone(), n.as_u64().unwrap());
    }
    for (k, n) in v["failuresByCode"].as_object().unwrap() {
        f.insert(format!("code:{k}"), n.as_u64().unwrap());
    }
    for (k, n) in v["perAgent"].as_object().unwrap() {
        f.insert(format!("agent:{k}"), n.as_u64().unwrap());
    }
    if let Some(d) = v["duration"].as_object() {
        for (k, name) in [
            ("mean", "meanMs"),
            ("p50", "p50Ms"),
            ("p95", "p95Ms"),
            ("max", "maxMs"),
        ] {
            f.insert(k.into(), d[name].as_u64().unwrap());
        }
    }
    f.insert("would".into(), v["wouldRequireApproval"].as_u64().unwrap());
    f
}

#[test]
fn shadow_summary_no_evidence_then_pass_then_a_timeout_fails_it() {
    let w = workdir();
    let ok = script(w.path(), "ok.sh", "echo fine");
    let sleeper = script(w.path(), "sleeper.sh", "sleep 60");
    let toml = format!(
        "{}{}{}[gate]\nmin_shadow_tasks = 2\n",
        agent("coder", &ok, ""),
        agent("researcher", &ok, ""),
        // A real process timeout, so real time: kept short.
        agent("main", &sleeper, "timeout = \"1s\"\nkill_grace = \"200ms\""),
    );
    let d = TestDaemon::in_mode(&toml, "shadow");

    // Zero tasks in the window: no evidence, exit 1.
    let out = d.ctl(&["shadow-summary", "--window", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("no evidence"), "{}", stdout(&out));
    let (code, v) = d.ctl_json(&["shadow-summary", "--window", "1"]);
    assert_eq!(code, 1);
    assert_eq!(v["total"], 0);
    assert_eq!(v["passed"], false);

    // Only successes, enough of them: exit 0.
    let coder = d.submit(CODE);
    let research = d.submit(RESEARCH);
    d.wait_state(&coder, "done", WAIT);
    d.wait_state(&research, "done", WAIT);
    let out = d.ctl(&["shadow-summary", "--window", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("verdict: PASS"), "{}", stdout(&out));

    // One timed-out task among them: the figures, and exit 1.
    let slow = d.submit(WRITE);
    let t = d.wait_state(&slow, "failed", WAIT);
    assert_eq!(t["error"]["code"], "specialist_timeout");
    let out = d.ctl(&["shadow-summary", "--window", "1"]);
    let table = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let (code, v) = d.ctl_json(&["shadow-summary", "--window", "1"]);
    assert_eq!(code, 1);
    assert_eq!(v["total"], 3);
    assert_eq!(v["byState"]["done"], 2);
    assert_eq!(v["byState"]["failed"], 1);
    assert_eq!(v["failuresByCode"]["specialist_timeout"], 1);
    assert_eq!(v["perAgent"]["coder"], 1);
    assert_eq!(v["perAgent"]["researcher"], 1);
    assert_eq!(v["perAgent"]["main"], 1);
    assert_eq!(v["wouldRequireApproval"], 1);
    let dur = &v["duration"];
    assert!(dur["maxMs"].as_u64().unwrap() >= 1_000, "{dur}");
    assert!(dur["p50Ms"].as_u64().unwrap() <= dur["p95Ms"].as_u64().unwrap());
    assert!(dur["meanMs"].as_u64().unwrap() <= dur["maxMs"].as_u64().unwrap());
    assert!(v["oldest"].is_string() && v["newest"].is_string());
    assert!(v["verdict"].as_str().unwrap().starts_with("FAIL"));
    assert!(
        table.contains(&format!(
            "window span:  {} → {}",
            v["oldest"].as_str().unwrap(),
            v["newest"].as_str().unwrap()
        )),
        "{table}"
    );
    assert_eq!(table_figures(&table), json_figures(&v), "{table}\n{v}");
}
