//! Issue: agents in the real world — usage reported through `ORCH_META_FILE`, exit 75 deferring a
//! task and pausing its agent, operators pausing and resuming agents, retries with backoff.
//!
//! The specialists are shell scripts written by each test. Waits on the daemon's clock (a pause's
//! `retryAfter`, a retry's backoff) are crossed by moving the test clock, never by sleeping.

use orchestrator_tests::prometheus;
use orchestrator_tests::*;
use serde_json::Value;
use std::time::Duration;

const RESEARCH: &str = "research the literature on prompt caching";
const CODE: &str = "please debug this function and fix the off-by-one";
const WAIT: Duration = Duration::from_secs(20);

fn events<'a>(task: &'a Value, action: &str) -> Vec<&'a Value> {
    task["trajectory"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .collect()
}

fn ms(rfc3339: &Value) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn usage_is_stored_shown_and_summed_and_a_bad_meta_file_is_only_a_warning() {
    let w = workdir();
    let reports = script(
        w.path(),
        "reports.sh",
        r#"
printf '{"usage":{"model":"model-a","inputTokens":1200,"outputTokens":300,"cacheReadTokens":50,"costUsd":0.25}}' > "$ORCH_META_FILE"
echo answer
"#,
    );
    let garbles = script(
        w.path(),
        "garbles.sh",
        r#"
printf '{"usage": not json' > "$ORCH_META_FILE"
echo fine
"#,
    );
    let toml = format!(
        "{}{}",
        agent("researcher", &reports, "max_concurrent = 2"),
        agent("coder", &garbles, "")
    );
    let d = TestDaemon::in_mode(&toml, "shadow");
    let first = d.submit(RESEARCH);
    let second = d.submit(RESEARCH);
    let garbled = d.submit(CODE);

    for id in [&first, &second] {
        let t = d.wait_state(id, "done", WAIT);
        let u = &t["usage"];
        assert_eq!(u["model"], "model-a", "{t}");
        assert_eq!(u["inputTokens"], 1200);
        assert_eq!(u["outputTokens"], 300);
        assert_eq!(u["cacheReadTokens"], 50);
        assert!(u["cacheWriteTokens"].is_null());
        assert_eq!(u["costUsd"], 0.25);
    }
    let shown = stdout(&d.ctl(&["tasks", "show", &first]));
    assert!(
        shown.contains("usage:       model model-a, 1200 in, 300 out, 50 cache read, $0.2500"),
        "{shown}"
    );

    // The malformed file: the task is done as usual; the warning is on its outcome.
    let t = d.wait_state(&garbled, "done", WAIT);
    assert!(t["usage"].is_null(), "{t}");
    assert_eq!(t["result"]["text"], "fine\n");
    let complete = events(&t, "complete");
    let warning = complete[0]["details"]["metaWarning"].as_str().unwrap();
    assert!(warning.contains("not a valid meta object"), "{warning}");

    // Summed per agent for today and this month.
    let a = d.agents();
    assert_eq!(a["researcher"]["costTodayUsd"], 0.5, "{a:?}");
    assert_eq!(a["researcher"]["costMonthUsd"], 0.5);
    assert_eq!(a["coder"]["costTodayUsd"], 0.0);
    assert!(a["researcher"]["paused"].is_null());

    // The shadow summary adds cost and tokens per agent and per model; so do the metrics.
    let (_, s) = d.ctl_json(&["shadow-summary"]);
    assert_eq!(s["usageByAgent"]["researcher"]["costUsd"], 0.5, "{s}");
    assert_eq!(s["usageByAgent"]["researcher"]["inputTokens"], 2400);
    assert_eq!(s["usageByModel"]["model-a"]["outputTokens"], 600);
    assert!(s["usageByAgent"].get("coder").is_none());
    let text = stdout(&d.ctl(&["metrics"]));
    let e = prometheus::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let by = [("agent", "researcher"), ("model", "model-a")];
    assert_eq!(e.sum("orchestrator_cost_usd_total", &by), 0.5);
    let input = [("agent", "researcher"), ("kind", "input")];
    assert_eq!(e.sum("orchestrator_tokens_total", &input), 2400.0);
}

#[test]
fn exit_75_defers_without_an_attempt_and_pauses_the_agent_until_retry_after() {
    let w = workdir();
    let runs = w.path().join("runs.log");
    // The first run hits the provider's limit; later runs work and report their usage.
    let limited = script(
        w.path(),
        "limited.sh",
        r#"
echo "$ORCH_TASK_ID" >> "$DIR/runs.log"
if [ ! -e "$DIR/limit-hit" ]; then
  : > "$DIR/limit-hit"
  printf '{"retryAfter":3600,"reason":"usage limit reached","usage":{"model":"m","costUsd":0.1}}' > "$ORCH_META_FILE"
  exit 75
fi
printf '{"usage":{"model":"m","costUsd":0.2}}' > "$ORCH_META_FILE"
echo done
"#,
    );
    let d = TestDaemon::in_mode(&agent("researcher", &limited, ""), "shadow");
    let a = d.submit(RESEARCH);

    let deferred = wait_for("the deferral", WAIT, || {
        let t = d.task(&a);
        (!events(&t, "defer").is_empty()).then_some(t)
    });
    let defer = events(&deferred, "defer")[0].clone();
    assert_eq!(defer["from"], "in_progress");
    assert_eq!(defer["to"], "queued");
    assert_eq!(defer["details"]["reason"], "usage limit reached");
    let until = ms(&defer["details"]["retryAfter"]);
    assert_eq!(until, ms(&defer["at"]) + 3_600_000);
    assert_eq!(deferred["attempts"], 0, "a deferral is not an attempt");
    assert_eq!(deferred["usage"]["costUsd"], 0.1);

    // The agent is paused until then, and shows it; a second task waits behind the pause.
    let paused = &d.agents()["researcher"]["paused"];
    assert_eq!(paused["cause"], "provider_limit", "{paused}");
    assert_eq!(paused["reason"], "usage limit reached");
    assert_eq!(ms(&paused["until"]), until);
    let (_, status) = d.ctl_json(&["status"]);
    let listed = status["agents"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|a| a["agent"] == "researcher" && a["paused"]["until"].is_string()),
        "{status}"
    );
    let shown = stdout(&d.ctl(&["agents"]));
    assert!(shown.contains("paused until"), "{shown}");
    let b = d.submit(RESEARCH);

    // Past retryAfter, both run.
    d.advance(Duration::from_secs(3600));
    let ta = d.wait_state(&a, "done", WAIT);
    let tb = d.wait_state(&b, "done", WAIT);
    assert_eq!(ta["attempts"], 1);
    assert_eq!(
        ta["usage"]["costUsd"].as_f64().unwrap(),
        0.1 + 0.2,
        "summed over runs"
    );
    // Nothing of that agent started before the pause ended.
    for t in [&ta, &tb] {
        let starts = events(t, "start");
        let last = starts.last().unwrap();
        assert!(ms(&last["at"]) >= until, "started during the pause: {t}");
    }
    // The deferred task went back to the queue ahead of the one submitted after it.
    assert_eq!(lines(&runs), vec![a.clone(), a, b]);
    assert!(d.agents()["researcher"]["paused"].is_null());
}

#[test]
fn an_operator_pause_holds_across_a_restart_until_resumed() {
    let w = workdir();
    let runs = w.path().join("runs.log");
    let ok = script(
        w.path(),
        "ok.sh",
        r#"
echo "$ORCH_TASK_ID" >> "$DIR/runs.log"
echo ok
"#,
    );
    let mut d = TestDaemon::in_mode(&agent("researcher", &ok, ""), "shadow");
    let out = d.ctl(&[
        "agent",
        "pause",
        "researcher",
        "--reason",
        "provider incident",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, err) = d.ctl_json(&["agent", "pause", "nobody", "--reason", "x"]);
    assert_eq!(code, 1);
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    let (code, err) = d.ctl_json(&["agent", "pause", "researcher", "--reason", "   "]);
    assert_eq!(code, 1);
    assert_eq!(err["error"]["code"], "invalid_reason", "{err}");

    d.restart();
    let paused = &d.agents()["researcher"]["paused"];
    assert_eq!(paused["cause"], "operator", "{paused}");
    assert_eq!(paused["reason"], "provider incident");
    assert!(paused["until"].is_null());

    let id = d.submit(RESEARCH);
    let t = d.wait_state(&id, "assigned", WAIT);
    assert!(events(&t, "start").is_empty());
    // A day later it still waits: the pause holds on the daemon's clock (an expiry would show
    // here, read at the moment of the request), and the task has not started.
    d.advance(Duration::from_secs(86_400));
    let out = d.ctl(&["sweep"]);
    assert!(out.status.success());
    assert_eq!(d.agents()["researcher"]["paused"]["cause"], "operator");
    assert_eq!(d.state_of(&id), "assigned");
    assert!(lines(&runs).is_empty());

    let out = d.ctl(&["agent", "resume", "researcher", "--reason", "incident over"]);
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_state(&id, "done", WAIT);
    assert_eq!(lines(&runs), vec![id]);
    assert!(d.log_text().contains("agent resumed by an operator"));
}

#[test]
fn retries_back_off_then_the_last_attempt_fails() {
    let w = workdir();
    let runs = w.path().join("runs.log");
    let fails = script(
        w.path(),
        "fails.sh",
        r#"
echo "$ORCH_TASK_ID" >> "$DIR/runs.log"
echo "quota glitch" >&2
exit 1
"#,
    );
    let extra = "max_attempts = 3\nretry_on = [\"specialist_aborted\"]\nretry_backoff = \"10m\"";
    let mut d = TestDaemon::in_mode(&agent("researcher", &fails, extra), "shadow");
    let id = d.submit(RESEARCH);

    let retried = |d: &TestDaemon, n: usize| {
        wait_for(&format!("retry {n}"), WAIT, || {
            let t = d.task(&id);
            (events(&t, "retry").len() == n).then_some(t)
        })
    };
    let t = retried(&d, 1);
    let r = events(&t, "retry")[0];
    assert_eq!(r["details"]["attempt"], "1");
    assert_eq!(r["details"]["error"], "specialist_aborted");
    assert_eq!(r["to"], "queued");
    assert_eq!(t["attempts"], 1);
    // The backoff (10 min ± 20 %) is on the daemon's clock, and the event says when it ends.
    let first_wait = ms(&r["details"]["retryAt"]) - ms(&r["at"]);
    assert!((480_000..=720_000).contains(&first_wait), "{r}");
    let first_retry_at = ms(&r["details"]["retryAt"]);
    assert_eq!(d.state_of(&id), "queued");
    assert_eq!(lines(&runs).len(), 1);
    // The wait is stored with the task: a daemon started again (here after a kill -9) waits out
    // what is left of it instead of running the task at once.
    d.restart();
    wait_for("the stored wait taken up again", WAIT, || {
        d.log_text()
            .contains("task waits out its retry's backoff")
            .then_some(())
    });
    assert_eq!(d.state_of(&id), "queued");
    assert_eq!(lines(&runs).len(), 1);

    d.advance(Duration::from_secs(12 * 60));
    let t = retried(&d, 2);
    let r = events(&t, "retry")[1];
    assert_eq!(r["details"]["attempt"], "2");
    assert_eq!(lines(&runs).len(), 2);
    // The second wait doubles: 20 min ± 20 %.
    let second_wait = ms(&r["details"]["retryAt"]) - ms(&r["at"]);
    assert!((960_000..=1_440_000).contains(&second_wait), "{r}");
    let second_retry_at = ms(&r["details"]["retryAt"]);
    // The clock moves in two steps of 12 min: a run started before the end of the second wait
    // would carry the time of the first step.
    d.advance(Duration::from_secs(12 * 60));
    d.advance(Duration::from_secs(12 * 60));

    let t = d.wait_state(&id, "failed", WAIT);
    assert_eq!(t["attempts"], 3);
    assert_eq!(t["error"]["code"], "specialist_aborted");
    assert_eq!(events(&t, "retry").len(), 2);
    assert_eq!(lines(&runs).len(), 3);
    // Each run after a retry started once its wait was over, not before.
    let starts: Vec<i64> = events(&t, "start").iter().map(|e| ms(&e["at"])).collect();
    assert_eq!(starts.len(), 3, "{t}");
    assert!(
        starts[1] >= first_retry_at,
        "{starts:?}, first wait to {first_retry_at}"
    );
    assert!(
        starts[2] >= second_retry_at,
        "{starts:?}, second wait to {second_retry_at}"
    );
}

#[test]
fn a_shared_limit_caps_specialists_across_agents() {
    let w = workdir();
    let log = w.path().join("runs.log");
    // Each run notes its start and its end; appends of short lines land whole and in order.
    let work = script(
        w.path(),
        "work.sh",
        r#"
echo "start $ORCH_AGENT_ID $ORCH_TASK_ID" >> "$DIR/runs.log"
sleep 0.2
echo "end $ORCH_AGENT_ID $ORCH_TASK_ID" >> "$DIR/runs.log"
"#,
    );
    let shared = "max_concurrent = 3\nlimits = [\"acme\"]";
    let toml = format!(
        "[limits.acme]\nmax_concurrent = 2\n\n{}{}{}",
        agent("researcher", &work, shared),
        agent("coder", &work, shared),
        agent("helpdesk", &work, shared)
    );
    let d = TestDaemon::in_mode(&toml, "shadow");
    let goals = [RESEARCH, CODE, "deploy the new release to staging"];
    let ids: Vec<String> = (0..30).map(|i| d.submit(goals[i % 3])).collect();
    for id in &ids {
        d.wait_state(id, "done", Duration::from_secs(120));
    }

    let mut alive = 0i32;
    let mut most = 0;
    let mut agents_seen = std::collections::BTreeSet::new();
    let entries = lines(&log);
    for line in &entries {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("start") => {
                alive += 1;
                agents_seen.insert(parts.next().unwrap().to_string());
            }
            Some("end") => alive -= 1,
            other => panic!("unexpected line {other:?}"),
        }
        most = most.max(alive);
    }
    assert_eq!(entries.len(), 60, "one start and one end per task");
    assert!(
        most <= 2,
        "{most} specialists ran together under a limit of 2"
    );
    assert_eq!(most, 2, "the limit lets two run together");
    assert_eq!(agents_seen.len(), 3);
}

#[test]
fn a_spent_budget_pauses_the_agent_until_an_operator_resumes_it() {
    let w = workdir();
    let runs = w.path().join("runs.log");
    let costly = script(
        w.path(),
        "costly.sh",
        r#"
echo "$ORCH_TASK_ID" >> "$DIR/runs.log"
printf '{"usage":{"model":"m","costUsd":0.45}}' > "$ORCH_META_FILE"
echo ok
"#,
    );
    let events = w.path().join("events.log");
    let sink = script(
        w.path(),
        "sink.sh",
        &format!("{{ cat; echo; }} >> '{}'", events.display()),
    );
    let budget = "budget = { daily_usd = 1.0, monthly_usd = 50 }";
    let mut d = TestDaemon::in_mode(
        &format!(
            "timezone = \"Europe/Paris\"\n[[notify]]\nname = \"money\"\n\
             events = [\"budget.warning\", \"budget.exhausted\"]\ncommand = [\"{}\"]\n{}",
            sink.display(),
            agent("researcher", &costly, budget)
        ),
        "shadow",
    );
    // 0.45, 0.90 (past 80 %: a warning), 1.35 (past 100 %: exhausted, paused).
    let ids: Vec<String> = (0..3).map(|_| d.submit(RESEARCH)).collect();
    for id in &ids {
        d.wait_state(id, "done", WAIT);
    }
    let a = &d.agents()["researcher"];
    assert_eq!(a["budgetDailyUsd"], 1.0, "{a}");
    assert!((a["costTodayUsd"].as_f64().unwrap() - 1.35).abs() < 1e-9);
    assert_eq!(a["paused"]["cause"], "budget", "{a}");
    assert!(a["paused"]["reason"]
        .as_str()
        .unwrap()
        .contains("daily budget spent"));
    let log = d.log_text();
    assert!(log.contains("budget.warning"), "{log}");
    assert!(log.contains("budget.exhausted"));
    // The same two reach a notification sink, in order, each once.
    let sent: Vec<serde_json::Value> = wait_for("the budget events at the sink", WAIT, || {
        let v: Vec<serde_json::Value> = lines(&events)
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (v.len() >= 2).then_some(v)
    });
    let types: Vec<&str> = sent.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["budget.warning", "budget.exhausted"], "{sent:?}");
    let exhausted = &sent[1];
    assert_eq!(exhausted["agent"], "researcher", "{exhausted}");
    assert_eq!(exhausted["period"], "daily");
    assert_eq!(exhausted["capUsd"], 1.0);
    assert!((exhausted["spentUsd"].as_f64().unwrap() - 1.35).abs() < 1e-9);

    // Queued work waits; the operator's resume lets it run.
    let waiting = d.submit(RESEARCH);
    d.wait_state(&waiting, "assigned", WAIT);
    assert_eq!(lines(&runs).len(), 3);
    let out = d.ctl(&[
        "agent",
        "resume",
        "researcher",
        "--reason",
        "approved overspend",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_state(&waiting, "done", WAIT);
    // Lifted for the rest of the day: spending on does not pause it again.
    assert!(d.agents()["researcher"]["paused"].is_null());
    assert_eq!(lines(&runs).len(), 4);
    // The lift is stored: after a restart the next run's cost does not pause it either (the
    // charge, and any pause it makes, comes before the outcome is written).
    d.restart();
    let after = d.submit(RESEARCH);
    d.wait_state(&after, "done", WAIT);
    assert_eq!(lines(&runs).len(), 5);
    let a = &d.agents()["researcher"];
    assert!(a["paused"].is_null(), "{a}");
}
