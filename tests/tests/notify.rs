//! Notifications end to end: the real daemon, real sinks — a webhook receiver on loopback written
//! here, and command sinks — and the approval timeout policy.
//!
//! Retries use `retry_initial = "20ms"` so that backoff is exercised without waiting real seconds;
//! every wait is on an observable condition with a bounded deadline.

use hmac::{KeyInit, Mac};
use orchestrator_tests::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// Routed to `coder`, whose results need approval: a synthetic submit rests in awaiting_approval.
const CODE_GOAL: &str = "please debug this function and fix the off-by-one";
const SECRET: &str = "s3cret-for-tests";

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hit {
    event_type: String,
    event_id: String,
    signature: Option<String>,
    body: String,
    status: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }
}

/// A webhook receiver on 127.0.0.1: records every request; `answer` picks the status for the
/// n-th request (0-based), or `None` to hold the request open without ever answering.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn start(answer: impl Fn(usize) -> Option<u16> + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let (log, answer) = (Arc::clone(&hits), Arc::new(answer));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, answer) = (Arc::clone(&log), Arc::clone(&answer));
                std::thread::spawn(move || serve(stream, &log, &*answer));
            }
        });
        Receiver { url, hits }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Requests answered 2xx: what the sink counts as delivered.
    fn delivered(&self) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.status))
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    log: &Mutex<Vec<Hit>>,
    answer: &(dyn Fn(usize) -> Option<u16> + Send + Sync),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            headers.push(line);
        }
        let header = |name: &str| {
            headers.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let n = log.lock().unwrap().len();
        let status = answer(n);
        log.lock().unwrap().push(Hit {
            event_type: header("x-orchestrator-event").unwrap_or_default(),
            event_id: header("x-orchestrator-event-id").unwrap_or_default(),
            signature: header("x-orchestrator-signature"),
            body: String::from_utf8(body).unwrap(),
            status: status.unwrap_or(0),
        });
        let Some(status) = status else {
            // Hung: hold the connection until the sender gives up on it.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            return;
        };
        let mut w = &stream;
        let _ = write!(w, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
    }
}

fn verify(secret: &str, signature: &str, body: &str) -> bool {
    let Some((t, v1)) = signature
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex == v1
}

fn webhook_sink(name: &str, url: &str, events: &str, extra: &str) -> String {
    format!(
        "[[notify]]\nname = \"{name}\"\nevents = {events}\nkinds = [\"synthetic\"]\nwebhook = \"{url}\"\n\
         retry_initial = \"20ms\"\nretry_max = \"100ms\"\n{extra}\n"
    )
}

fn sinks(d: &TestDaemon) -> Value {
    let (code, v) = d.ctl_json(&["notify", "list"]);
    assert_eq!(code, 0, "{v}");
    v
}

fn sink<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

/// The number in an `ev-<seq>` id: the commit order of the transition behind it.
fn seq(id: &str) -> u64 {
    id.trim_start_matches("ev-").parse().unwrap()
}

#[test]
fn webhook_events_are_signed_and_retried_after_500s_then_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    // 500 three times, then 200 for everything.
    let rx = Receiver::start(|n| Some(if n < 3 { 500 } else { 200 }));
    let d = TestDaemon::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://orch.example\"\n\n{}",
        webhook_sink(
            "hook",
            &rx.url,
            "[\"approval.requested\", \"approval.decided\"]",
            &format!("secret_file = \"{}\"", secret.display())
        )
    ));
    let id = d.submit(CODE_GOAL);
    let first = wait_for("approval.requested delivered", WAIT, || {
        rx.delivered().into_iter().next()
    });
    let hits = rx.hits();
    assert_eq!(hits.len(), 4, "three 500s, then the 200: {hits:?}");
    assert!(
        hits.iter()
            .all(|h| h.event_id == first.event_id && h.body == first.body),
        "a retry sends the same event"
    );

    let ev = first.json();
    assert_eq!(first.event_type, "approval.requested");
    assert_eq!(ev["type"], "approval.requested");
    assert_eq!(ev["id"], first.event_id.as_str());
    assert_eq!(ev["task"]["id"], id.as_str());
    assert_eq!(ev["task"]["state"], "awaiting_approval");
    assert_eq!(ev["task"]["agent"], "coder");
    assert_eq!(ev["task"]["goal"], CODE_GOAL);
    assert_eq!(ev["rule"], "code-tasks");
    assert!(!ev["reasons"].as_array().unwrap().is_empty(), "{ev}");
    assert!(ev["expiresAt"].is_string() && ev["at"].is_string(), "{ev}");
    assert!(ev["result"].is_string(), "{ev}");
    assert_eq!(
        ev["link"],
        format!("https://orch.example/console/tasks/{id}")
    );
    for h in &hits {
        let sig = h.signature.as_deref().expect("signed");
        assert!(verify(SECRET, sig, &h.body), "{sig}");
        assert!(!verify("another secret", sig, &h.body));
    }

    assert!(d
        .ctl(&["reject", &id, "--reason", "too risky"])
        .status
        .success());
    let decided = wait_for("approval.decided delivered", WAIT, || {
        rx.delivered()
            .into_iter()
            .find(|h| h.event_type == "approval.decided")
    });
    let ev = decided.json();
    assert_eq!(
        (ev["decision"].as_str(), ev["by"].as_str()),
        (Some("rejected"), Some(whoami().as_str()))
    );
    assert_eq!(ev["reason"], "too risky");

    let out = d.ctl(&["notify", "test", "hook"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the test event", WAIT, || {
        rx.delivered().into_iter().find(|h| h.event_type == "test")
    });

    // Every delivered id is one event: never the same id for different bodies, never twice.
    let delivered = rx.delivered();
    let mut ids: Vec<&str> = delivered.iter().map(|h| h.event_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), delivered.len(), "{delivered:?}");
    // The receiver records a request before it answers: wait for the daemon to mark it.
    let list = wait_for("the outbox to drain", WAIT, || {
        let list = sinks(&d);
        (sink(&list, "hook")["pending"] == 0).then_some(list)
    });
    let hook = sink(&list, "hook");
    assert_eq!(hook["dead"], 0, "{list}");
    assert_eq!(hook["delivered"], 3, "{list}");
    assert_eq!(hook["failedAttempts"], 3);
    assert_eq!(hook["lastError"], "HTTP 500 Internal Server Error");
    let metrics = stdout(&d.ctl(&["metrics"]));
    assert!(
        metrics.contains("orchestrator_notify_failed_attempts_total{sink=\"hook\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("orchestrator_notify_delivered_total{sink=\"hook\"} 3"),
        "{metrics}"
    );
}

fn whoami() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

#[test]
fn kill9_with_events_pending_delivers_all_after_restart_in_order() {
    let up = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&up);
    let rx = Receiver::start(move |_| {
        Some(if flag.load(Ordering::SeqCst) {
            200
        } else {
            503
        })
    });
    let mut d = TestDaemon::with_config(&webhook_sink(
        "hook",
        &rx.url,
        "[\"approval.requested\", \"approval.decided\"]",
        "",
    ));
    let ids: Vec<String> = (0..3).map(|_| d.submit(CODE_GOAL)).collect();
    for id in &ids {
        assert!(d.ctl(&["approve", id]).status.success());
    }
    wait_for("a failed attempt", WAIT, || {
        (!rx.hits().is_empty()).then_some(())
    });
    assert!(rx.delivered().is_empty());
    d.kill9();
    up.store(true, Ordering::SeqCst);
    d.start_again();
    // At least once: an attempt in flight at the kill may be answered 200 after the flip and
    // sent again after the restart; the receiver keeps the first of each event id.
    let delivered = wait_for("all six events delivered", WAIT, || {
        let mut seen = std::collections::HashSet::new();
        let got: Vec<Hit> = rx
            .delivered()
            .into_iter()
            .filter(|h| seen.insert(h.event_id.clone()))
            .collect();
        (got.len() >= 6).then_some(got)
    });
    assert_eq!(delivered.len(), 6, "{delivered:?}");
    // In commit order for the sink, hence per task: requested before decided.
    let seqs: Vec<u64> = delivered.iter().map(|h| seq(&h.event_id)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for id in &ids {
        let kinds: Vec<&str> = delivered
            .iter()
            .filter(|h| h.json()["task"]["id"] == id.as_str())
            .map(|h| h.event_type.as_str())
            .collect();
        assert_eq!(kinds, ["approval.requested", "approval.decided"], "{id}");
    }
}

/// Submits on one open connection, one at a time: the latency of each, in order.
fn submit_latencies(socket: &Path, n: usize) -> Vec<Duration> {
    use orchestrator_proto::message::{Request, SubmitRequest};
    let mut conn = Raw::connect(socket).unwrap();
    conn.hello().unwrap();
    (0..n)
        .map(|_| {
            let started = std::time::Instant::now();
            conn.ok(Request::Submit(SubmitRequest {
                goal: CODE_GOAL.into(),
                required_capabilities: Vec::new(),
                workspace_dir: None,
                ttl_secs: None,
                wait: false,
            }));
            started.elapsed()
        })
        .collect()
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

#[test]
fn a_hung_sink_holds_up_neither_submits_nor_other_sinks() {
    let hung = Receiver::start(|_| None);
    let healthy = Receiver::start(|_| Some(200));
    let d = TestDaemon::with_config(&format!(
        "{}{}",
        webhook_sink(
            "hung",
            &hung.url,
            "[\"approval.requested\"]",
            "timeout = \"1h\""
        ),
        webhook_sink("healthy", &healthy.url, "[\"approval.requested\"]", "")
    ));
    let plain = TestDaemon::start();
    let ids: Vec<String> = (0..20).map(|_| d.submit(CODE_GOAL)).collect();
    let got = wait_for("the healthy sink to get all 20", WAIT, || {
        let got = healthy.delivered();
        (got.len() >= 20).then_some(got)
    });
    let mut tasks: Vec<String> = got
        .iter()
        .map(|h| h.json()["task"]["id"].as_str().unwrap().to_string())
        .collect();
    tasks.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(tasks, want);
    // Meanwhile the hung sink still holds its first event, and the rest wait their turn.
    assert_eq!(hung.hits().len(), 1);
    let list = sinks(&d);
    assert_eq!(sink(&list, "hung")["pending"], 20, "{list}");

    // Submit latency with the hung sink against a daemon without sinks, in alternating rounds on
    // the same machine. A submit that waited on the sink would take its 1 h timeout; the bound
    // leaves room for a busy machine and nothing for that.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        with.extend(submit_latencies(&d.socket, 25));
        without.extend(submit_latencies(&plain.socket, 25));
    }
    let (with, without) = (p99(with), p99(without));
    assert!(
        with <= without * 4 + Duration::from_secs(2),
        "p99 submit latency with the hung sink {with:?}, without sinks {without:?}"
    );
    // The hung sink was hung the whole time: still one request, and every new event queued.
    assert_eq!(hung.hits().len(), 1);
    let list = sinks(&d);
    assert_eq!(sink(&list, "hung")["pending"], 120, "{list}");
}

#[test]
fn a_command_sink_gets_the_event_on_stdin_in_the_minimal_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cmd = script(
        dir.path(),
        "notify-me",
        &format!(
            "{{ echo \"$ORCH_EVENT $ORCH_EVENT_ID $1\"; cat; echo; env | cut -d= -f1 | sort | tr '\\n' ' '; echo; }} >> '{}'",
            out.display()
        ),
    );
    let d = TestDaemon::with_config(&format!(
        "[[notify]]\nname = \"cmd\"\nevents = [\"approval.requested\"]\nkinds = [\"synthetic\"]\n\
         command = [\"{}\", \"--flag\"]\ntimeout = \"10s\"\n",
        cmd.display()
    ));
    let id = d.submit(CODE_GOAL);
    let text = wait_for("the command's output", WAIT, || {
        let t = std::fs::read_to_string(&out).ok()?;
        (t.lines().count() >= 3).then_some(t)
    });
    let lines: Vec<&str> = text.lines().collect();
    let head: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(head[0], "approval.requested");
    assert!(head[1].starts_with("ev-"), "{text}");
    assert_eq!(head[2], "--flag");
    let ev: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(ev["task"]["id"], id.as_str());
    assert_eq!(ev["id"], head[1]);
    let env: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(
        env.contains(&"PATH") && env.contains(&"ORCH_EVENT"),
        "{env:?}"
    );
    // The daemon's own environment stays behind (the test harness sets ORCHESTRATOR_LOG).
    assert!(!env.contains(&"ORCHESTRATOR_LOG"), "{env:?}");
}

#[test]
fn events_dead_after_give_up_raise_one_alarm_and_retry_brings_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let alarms = dir.path().join("alarms");
    let pager = script(
        dir.path(),
        "pager",
        &format!(
            "cat >> '{}'; echo >> '{}'",
            alarms.display(),
            alarms.display()
        ),
    );
    // A port nobody listens on: every attempt is refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = TestDaemon::with_config(&format!(
        "{}[[notify]]\nname = \"pager\"\nevents = [\"daemon.alarm\"]\ncommand = [\"{}\"]\n",
        webhook_sink(
            "down",
            &format!("http://{closed}/hook"),
            "[\"approval.requested\"]",
            "give_up_after = \"1h\""
        ),
        pager.display()
    ));
    for _ in 0..3 {
        d.submit(CODE_GOAL);
    }
    // Retried, not given up on, until an hour has passed on the daemon's clock.
    wait_for("a failed attempt", WAIT, || {
        let list = sinks(&d);
        let down = sink(&list, "down");
        (down["failedAttempts"].as_u64() >= Some(2)).then_some(())
    });
    let list = sinks(&d);
    assert_eq!(
        (
            &sink(&list, "down")["pending"],
            &sink(&list, "down")["dead"]
        ),
        (&Value::from(3), &Value::from(0)),
        "{list}"
    );
    d.advance(Duration::from_secs(3601));
    let list = wait_for("three dead events and the alarm delivered", WAIT, || {
        let list = sinks(&d);
        let (down, pager) = (sink(&list, "down"), sink(&list, "pager"));
        (down["dead"] == 3
            && down["pending"] == 0
            && pager["pending"] == 0
            && pager["delivered"].as_u64() >= Some(1))
        .then_some(list)
    });
    assert!(
        sink(&list, "down")["lastError"]
            .as_str()
            .unwrap()
            .contains("POST failed"),
        "{list}"
    );
    let text = std::fs::read_to_string(&alarms).unwrap();
    let got: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 1, "one alarm for the sink: {text}");
    assert_eq!(got[0]["type"], "daemon.alarm");
    assert_eq!(got[0]["sink"], "down");
    assert_eq!(sink(&list, "pager")["delivered"], 1);

    let (code, v) = d.ctl_json(&["notify", "retry", "down"]);
    assert_eq!((code, &v["retried"]), (0, &Value::from(3)));
    let (code, v) = d.ctl_json(&["notify", "retry", "nobody"]);
    assert_eq!(code, 1, "{v}");
}

#[test]
fn approval_timeout_warns_then_rejects_as_its_own_actor() {
    let rx = Receiver::start(|_| Some(200));
    let d = TestDaemon::with_config(&format!(
        "[routing]\napproval_timeout = \"4h\"\non_approval_timeout = \"reject\"\napproval_warning = \"1h\"\n\n{}",
        webhook_sink("hook", &rx.url, "[\"approval.expiring\", \"approval.decided\"]", "")
    ));
    let id = d.submit(CODE_GOAL);
    // Long before the deadline: nothing to say yet.
    d.advance(Duration::from_secs(2 * 3600));
    assert!(d.ctl(&["sweep"]).status.success());
    let trajectory = d.task(&id)["trajectory"].clone();
    assert!(
        !trajectory.to_string().contains("approval_warning"),
        "{trajectory}"
    );
    // Within `approval_warning` of it: warned, still waiting.
    d.advance(Duration::from_secs(3600 + 60));
    assert!(d.ctl(&["sweep"]).status.success());
    let warned = wait_for("approval.expiring", WAIT, || {
        rx.delivered()
            .into_iter()
            .find(|h| h.event_type == "approval.expiring")
    });
    let w = warned.json();
    assert_eq!(w["task"]["id"], id.as_str());
    assert_eq!(w["onExpiry"], "reject");
    assert_eq!(d.state_of(&id), "awaiting_approval");
    // Past it: rejected by the policy.
    d.advance(Duration::from_secs(3600));
    assert!(d.ctl(&["sweep"]).status.success());
    let t = d.task(&id);
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "approval_timeout");
    assert_eq!(t["rejection"]["by"], "approval-timeout");
    let last = t["trajectory"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["actor"].as_str(), last["action"].as_str()),
        (Some("approval-timeout"), Some("reject"))
    );
    let decided = wait_for("approval.decided", WAIT, || {
        rx.delivered()
            .into_iter()
            .find(|h| h.event_type == "approval.decided")
    });
    let ev = decided.json();
    assert_eq!(
        (ev["decision"].as_str(), ev["by"].as_str()),
        (Some("timed_out"), Some("approval-timeout"))
    );
    assert_eq!(ev["error"]["code"], "approval_timeout");
    // The warning came first, once.
    let types: Vec<String> = rx
        .delivered()
        .iter()
        .map(|h| h.event_type.clone())
        .collect();
    assert_eq!(types, ["approval.expiring", "approval.decided"]);
}

#[test]
fn a_synthetic_gate_run_is_announced_with_its_verdict() {
    let rx = Receiver::start(|_| Some(200));
    let d = TestDaemon::with_config(&webhook_sink("hook", &rx.url, "[\"gate.synthetic\"]", ""));
    let (code, report) = d.ctl_json(&["synthetic-all"]);
    assert_eq!(code, 0, "{report}");
    let hit = wait_for("gate.synthetic", WAIT, || rx.delivered().into_iter().next());
    let ev = hit.json();
    assert_eq!(ev["type"], "gate.synthetic");
    assert_eq!(ev["passed"], report["passed"]);
    assert_eq!(ev["total"], report["total"]);
    assert_eq!(ev["ok"], true);
}

/// `gate.shadow` tells of the shadow gate's verdict moving: a summary over the gate's window
/// announces its verdict the first time and when it changes. Looking again (the console's rollout
/// page, scripts, read-only users) or over another window announces nothing.
#[test]
fn a_shadow_summary_is_announced_when_the_gate_verdict_moves_and_not_when_looked_at_again() {
    let rx = Receiver::start(|_| Some(200));
    let w = workdir();
    let answers = script(w.path(), "answers.sh", "echo answer");
    let toml = format!(
        "[gate]\nmin_shadow_tasks = 1\n\n{}{}",
        agent("researcher", &answers, ""),
        webhook_sink("hook", &rx.url, "[\"gate.shadow\"]", "")
            .replace("kinds = [\"synthetic\"]", "kinds = [\"shadow\"]")
    );
    let d = TestDaemon::in_mode(&toml, "shadow");
    let summary = |args: &[&str]| {
        let (code, v) = d.ctl_json(&[&["shadow-summary"], args].concat());
        assert!(code == 0 || code == 1, "{v}");
        v["passed"].as_bool().unwrap()
    };
    assert!(!summary(&[]), "no shadow task yet");
    assert!(!summary(&[]));
    assert!(!summary(&["--window", "48"]));
    let id = d.submit("research the literature on prompt caching");
    d.wait_state(&id, "done", WAIT);
    assert!(summary(&["--window", "48"]));
    assert!(summary(&[]));
    assert!(summary(&[]));

    // Delivered in order: once the test event is in, every gate.shadow before it is too.
    let (code, v) = d.ctl_json(&["notify", "test", "hook"]);
    assert_eq!(code, 0, "{v}");
    wait_for("the test event", WAIT, || {
        rx.delivered()
            .iter()
            .any(|h| h.event_type == "test")
            .then_some(())
    });
    let verdicts: Vec<(Value, Value)> = rx
        .delivered()
        .iter()
        .filter(|h| h.event_type == "gate.shadow")
        .map(|h| (h.json()["passed"].clone(), h.json()["windowHours"].clone()))
        .collect();
    assert_eq!(
        verdicts,
        [
            (Value::from(false), Value::from(24)),
            (Value::from(true), Value::from(24))
        ]
    );
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_alarm_reaches_a_sink_once_space_is_back() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a small tmpfs to fill the store's disk: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let alarms = dir.path().join("alarms");
    let pager = script(
        dir.path(),
        "pager",
        &format!(
            "cat >> '{}'; echo >> '{}'",
            alarms.display(),
            alarms.display()
        ),
    );
    let mut d = TestDaemon::with_config(&format!(
        "[[notify]]\nname = \"pager\"\nevents = [\"daemon.alarm\"]\ncommand = [\"{}\"]\n",
        pager.display()
    ));
    assert!(d.terminate().success());
    std::fs::create_dir_all(&d.state_dir).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&d.state_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount: {}", stderr(&out));
    let _tmpfs = Tmpfs(d.state_dir.clone());
    d.start_again();
    d.submit("before");

    // Fill the file system, bounded: the tmpfs is 8 MiB.
    let filler = d.state_dir.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        for _ in 0..10_000 {
            if f.write_all(&chunk[..4096]).is_err() {
                break;
            }
        }
    }
    wait_for("a submit refused with storage_full", WAIT, || {
        let out = d.ctl(&["submit", "while full"]);
        (!out.status.success() && stderr(&out).contains("storage_full")).then_some(())
    });
    wait_for("the notifier to see the full disk", WAIT, || {
        d.log_text()
            .contains("notify: the store cannot write")
            .then_some(())
    });
    assert!(
        !alarms.exists(),
        "nothing can be queued while the disk is full"
    );

    std::fs::remove_file(&filler).unwrap();
    d.submit("after");
    let text = wait_for("the alarm delivered", WAIT, || {
        let t = std::fs::read_to_string(&alarms).ok()?;
        (!t.trim().is_empty()).then_some(t)
    });
    let alarm: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(alarm["type"], "daemon.alarm");
    assert_eq!(alarm["alarm"], "storage_full");
    assert!(alarm["since"].as_str().unwrap().ends_with('Z'), "{alarm}");
}
