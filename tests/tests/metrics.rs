//! Issue: operations — metrics that Prometheus can scrape and people can alert on. A live daemon's
//! `GET /metrics` is scraped over loopback, checked by `promtool check metrics` (where promtool is
//! installed; `.ci/run` sets `PROMTOOL`) and by the format checker of the test harness, and its
//! counters and histograms are shown to follow the work.

use orchestrator_tests::client::Client;
use orchestrator_tests::prometheus::{check, promtool_check, Exposition};
use orchestrator_tests::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HTTP: &str = "[http]\nlisten = \"127.0.0.1:0\"\n";
const WRITING_GOAL: &str = "draft an email reply to the procurement team";
const CODE_GOAL: &str = "please debug this function and fix the off-by-one";
const RESEARCH: &str = "research the literature on prompt caching";
const WAIT: Duration = Duration::from_secs(20);

/// Scrape `/metrics` and check the exposition; panics on anything a scraper would refuse.
fn scrape(c: &Client, token: Option<&str>) -> (String, Exposition) {
    let a = c.get("/metrics", token);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        a.content_type
    );
    let e = check(&a.body).unwrap_or_else(|e| panic!("{e}\n{}", a.body));
    (a.body, e)
}

fn moved(before: &Exposition, after: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

#[test]
fn the_scrape_passes_promtool_and_matches_orchctl_metrics() {
    let d = TestDaemon::with_config(HTTP);
    let c = Client::of(&d);
    // Some of everything first, so that labelled series and histograms are in the scrape.
    d.submit(WRITING_GOAL);
    let (text, e) = scrape(&c, None);
    let ran = promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    if !ran {
        eprintln!("the exposition was checked by the built-in checker only");
    }

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        e.value("orchestrator_build_info", &[("version", version)]),
        Some(1.0)
    );
    assert_eq!(
        e.value("orchestrator_mode", &[("mode", "synthetic")]),
        Some(1.0)
    );
    for (name, kind) in [
        ("orchestrator_queue_wait_seconds", "histogram"),
        ("orchestrator_specialist_run_seconds", "histogram"),
        ("orchestrator_approval_wait_seconds", "histogram"),
        ("orchestrator_request_duration_seconds", "histogram"),
        ("orchestrator_dispatches_total", "counter"),
        ("orchestrator_specialist_failures_total", "counter"),
        ("orchestrator_store_errors_total", "counter"),
        ("orchestrator_store_writes_total", "counter"),
        ("orchestrator_store_commits_total", "counter"),
        ("orchestrator_oldest_awaiting_approval_seconds", "gauge"),
        ("orchestrator_console_streams", "gauge"),
        ("orchestrator_tasks", "gauge"),
        ("process_cpu_seconds_total", "counter"),
    ] {
        assert_eq!(e.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = e.value("process_start_time_seconds", &[]).unwrap();
    assert!(
        started <= now && started > now - 600.0,
        "started {started}, now {now}"
    );
    assert!(e.value("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(e.value("process_open_fds", &[]).unwrap() >= 3.0);
    assert!(e.value("process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    assert_eq!(e.value("orchestrator_store_errors_total", &[]), Some(0.0));

    // The control socket's `metrics` is the same exposition.
    let out = d.ctl(&["metrics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let via_socket = check(&stdout(&out)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(via_socket.types, e.types);
    // Both name the series, with the one dispatch made before either read.
    assert_eq!(
        via_socket.value("orchestrator_dispatches_total", &[("agent", "main")]),
        Some(1.0)
    );
    assert_eq!(
        e.value("orchestrator_dispatches_total", &[("agent", "main")]),
        Some(1.0)
    );
}

#[test]
fn submitted_and_approved_tasks_move_the_counters_and_histograms() {
    let d = TestDaemon::with_config(HTTP);
    let c = Client::of(&d);
    let (_, before) = scrape(&c, None);
    const N: usize = 5;
    for _ in 0..N {
        assert_eq!(d.state_of(&d.submit(WRITING_GOAL)), "done");
    }
    let held = d.submit(CODE_GOAL);
    assert_eq!(d.state_of(&held), "awaiting_approval");
    let (_, after) = scrape(&c, None);

    let n = N as f64;
    // Each submit waited for its reply before the next was sent, so none shared a commit.
    let writes = moved(&before, &after, "orchestrator_store_writes_total", &[]);
    let commits = moved(&before, &after, "orchestrator_store_commits_total", &[]);
    assert!(
        commits >= n + 1.0 && writes >= commits,
        "{writes} writes in {commits} commits for {} submits",
        N + 1
    );
    assert_eq!(
        moved(&before, &after, "orchestrator_dispatches_total", &[]),
        n + 1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_dispatches_total",
            &[("agent", "main")]
        ),
        n
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_dispatches_total",
            &[("agent", "coder")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_queue_wait_seconds_count",
            &[]
        ),
        n + 1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_tasks",
            &[("kind", "synthetic"), ("state", "done")]
        ),
        n
    );
    assert_eq!(
        after.value(
            "orchestrator_tasks",
            &[("kind", "synthetic"), ("state", "awaiting_approval")]
        ),
        Some(1.0)
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_request_duration_seconds_count",
            &[("transport", "socket"), ("verb", "submit")]
        ),
        n + 1.0
    );
    // Each submit commits the task and its synthetic route, start and complete: four transitions.
    assert_eq!(
        moved(&before, &after, "orchestrator_transitions_total", &[]),
        4.0 * (n + 1.0)
    );
    assert!(
        after
            .value(
                "orchestrator_request_duration_seconds_count",
                &[("transport", "http"), ("verb", "GET /metrics")]
            )
            .unwrap_or(0.0)
            >= 1.0,
        "the first scrape is timed"
    );
    // The held task is the one waiting; the gauge counts from when it began to wait, on the
    // daemon's clock: moved on by 90 s, the wait is at least that long.
    let waiting = || {
        let (_, e) = scrape(&c, None);
        e.value("orchestrator_oldest_awaiting_approval_seconds", &[])
    };
    d.advance(Duration::from_secs(90));
    let waited = wait_for("the approval wait to be tracked", WAIT, || {
        waiting().filter(|s| *s >= 90.0)
    });
    assert!(waited < 90.0 + WAIT.as_secs_f64(), "{waited}");

    let out = d.ctl(&["approve", &held]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The approval is followed from the committed transition, so the scrape may trail it briefly.
    let approved = wait_for("the approval wait histogram to move", WAIT, || {
        let (_, e) = scrape(&c, None);
        (moved(&before, &e, "orchestrator_approval_wait_seconds_count", &[]) == 1.0).then_some(e)
    });
    let sum = moved(
        &before,
        &approved,
        "orchestrator_approval_wait_seconds_sum",
        &[],
    );
    assert!(sum >= 90.0 && sum < 90.0 + WAIT.as_secs_f64(), "{sum}");
    assert_eq!(
        approved.value("orchestrator_oldest_awaiting_approval_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        approved.value(
            "orchestrator_tasks",
            &[("kind", "synthetic"), ("state", "awaiting_approval")]
        ),
        Some(0.0)
    );
}

#[test]
fn a_task_waiting_for_approval_across_a_restart_is_still_counted_from_its_wait() {
    let mut d = TestDaemon::with_config(HTTP);
    let held = d.submit(CODE_GOAL);
    assert_eq!(d.state_of(&held), "awaiting_approval");
    let waited_before = wait_for("the approval wait to be tracked", WAIT, || {
        let (_, e) = scrape(&Client::of(&d), None);
        e.value("orchestrator_oldest_awaiting_approval_seconds", &[])
            .filter(|s| *s > 0.0)
    });
    d.restart();
    // Read back from the store at start: the wait goes on from when the task began to wait.
    let (_, e) = scrape(&Client::of(&d), None);
    let waited = e
        .value("orchestrator_oldest_awaiting_approval_seconds", &[])
        .unwrap();
    assert!(
        waited >= waited_before,
        "{waited} after the restart, {waited_before} before"
    );
}

#[test]
fn metrics_token_true_requires_the_bearer_token() {
    let d = TestDaemon::with_config(&format!("{HTTP}metrics_token = true\n"));
    let c = Client::of(&d);
    let token = d.init_token();
    let refused = c.get("/metrics", None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "unauthorized");
    let wrong = c.get("/metrics", Some("not-the-token"));
    assert_eq!(wrong.status, 401);
    let (_, e) = scrape(&c, Some(&token));
    assert_eq!(
        e.value("orchestrator_mode", &[("mode", "synthetic")]),
        Some(1.0)
    );
}

#[test]
fn on_loopback_metrics_need_no_token_even_before_init() {
    let d = TestDaemon::with_config(HTTP);
    let c = Client::of(&d);
    scrape(&c, None);
    // The rest of the API still does.
    assert_eq!(c.get("/orchestrator/tasks", None).status, 503);
}

#[test]
fn specialists_are_counted_by_agent_and_failure_code() {
    let w = tempfile::Builder::new()
        .prefix("orch-metrics-")
        .tempdir()
        .unwrap();
    let ok = script(w.path(), "ok.sh", "echo fine");
    let fails = script(w.path(), "fails.sh", "echo broken >&2; exit 3");
    let sleeper = script(w.path(), "sleeper.sh", "exec sleep 60");
    let toml = format!(
        "{HTTP}[agents.researcher]\ncommand = [\"{}\"]\n[agents.main]\ncommand = [\"{}\"]\n\
         [agents.overwatch]\ncommand = [\"{}\"]\ntimeout = \"1s\"\nkill_grace = \"300ms\"\n",
        ok.display(),
        fails.display(),
        sleeper.display()
    );
    let d = TestDaemon::in_mode(&toml, "live");
    let c = Client::of(&d);
    let (_, before) = scrape(&c, None);
    let research = d.submit(RESEARCH);
    let write = d.submit(WRITING_GOAL);
    let audit = d.submit("audit the access logs");
    assert_eq!(
        d.wait_state(&research, "done", WAIT)["assignedAgentId"],
        "researcher"
    );
    let t = d.wait_state(&write, "failed", WAIT);
    assert_eq!(t["assignedAgentId"], "main");
    assert_eq!(t["error"]["code"], "specialist_aborted");
    let t = d.wait_state(&audit, "failed", WAIT);
    assert_eq!(t["assignedAgentId"], "overwatch");
    assert_eq!(t["error"]["code"], "specialist_timeout");

    let (_, after) = scrape(&c, None);
    for agent in ["researcher", "main", "overwatch"] {
        let a = [("agent", agent)];
        assert_eq!(
            moved(&before, &after, "orchestrator_dispatches_total", &a),
            1.0,
            "{agent}"
        );
        assert_eq!(
            moved(&before, &after, "orchestrator_specialist_spawns_total", &a),
            1.0,
            "{agent}"
        );
    }
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_specialist_failures_total",
            &[("agent", "main"), ("code", "specialist_aborted")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_specialist_failures_total",
            &[("agent", "overwatch"), ("code", "specialist_timeout")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_specialist_failures_total",
            &[("agent", "researcher")]
        ),
        0.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_specialist_timeouts_total",
            &[("agent", "overwatch")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_specialist_run_seconds_count",
            &[]
        ),
        3.0
    );
    // The timed-out run lasted at least its timeout.
    assert!(
        moved(
            &before,
            &after,
            "orchestrator_specialist_run_seconds_sum",
            &[]
        ) >= 1.0
    );
    assert_eq!(
        moved(
            &before,
            &after,
            "orchestrator_queue_wait_seconds_count",
            &[]
        ),
        3.0
    );
    promtool_check(&c.get("/metrics", None).body).unwrap_or_else(|e| panic!("{e}"));
}
