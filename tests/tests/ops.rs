//! Issue: operations — `orchctl metrics` as Prometheus text whose counters follow the work,
//! `orchctl watch`, `orchestratord --daemonize`, and the generated man pages and completions.
//! (What needs a real systemd — journald, watchdog, socket activation — is in tests/systemd/run.sh.)

use orchestrator_tests::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CODE_GOAL: &str = "please debug this function and fix the off-by-one";
const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text exposition format (version 0.0.4).

/// Label names and values, in the order written.
type Labels = Vec<(String, String)>;
/// One series: metric name plus its labels, e.g. `orchestrator_tasks{kind="live",…}`.
type Series = (String, Labels);

#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<Series, f64>,
}

impl Exposition {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = (
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }

    fn counter(&self, name: &str) -> u64 {
        assert_eq!(self.types.get(name).map(String::as_str), Some("counter"));
        self.get(name, &[]) as u64
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}")),
    }
}

/// `{a="x",b="y\"z"}` → labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} repeated"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// Parses the whole text or says which line breaks the format. Every family must have HELP and
/// TYPE before its samples, its samples must be contiguous, and no series may repeat.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.ends_with('\n') {
        return Err("the text must end with a newline".into());
    }
    let mut out = Exposition::default();
    let mut helped = BTreeMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next(), parts.next(), parts.next());
            let name = name.ok_or_else(|| err("comment without a metric name".into()))?;
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            match kw {
                Some("HELP") => {
                    if helped.insert(name.to_string(), ()).is_some() {
                        return Err(err("second HELP".into()));
                    }
                    if arg.unwrap_or("").trim().is_empty() {
                        return Err(err("empty HELP".into()));
                    }
                }
                Some("TYPE") => {
                    let ty = arg.ok_or_else(|| err("TYPE without a type".into()))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        return Err(err(format!("unknown type {ty}")));
                    }
                    if out.types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(err("second TYPE".into()));
                    }
                    if out.samples.keys().any(|(m, _)| m == name) {
                        return Err(err("TYPE after samples".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("expected a space before the value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| err(format!("timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let ty = out
            .types
            .get(name)
            .ok_or_else(|| err(format!("sample of {name} before its TYPE")))?;
        if !helped.contains_key(name) {
            return Err(err(format!("{name} has no HELP")));
        }
        if ty == "counter" && (value < 0.0 || !name.ends_with("_total")) {
            return Err(err("a counter is non-negative and named *_total".into()));
        }
        if current.as_deref() != Some(name) {
            if finished.iter().any(|f| f == name) {
                return Err(err(format!("samples of {name} are not contiguous")));
            }
            if let Some(prev) = current.replace(name.to_string()) {
                finished.push(prev);
            }
        }
        if out
            .samples
            .insert((name.to_string(), labels), value)
            .is_some()
        {
            return Err(err("series repeated".into()));
        }
    }
    Ok(out)
}

#[test]
fn the_exposition_reader_rejects_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
                # HELP g G.\n# TYPE g gauge\ng{k=\"v\\\"w\",l=\"x\"} 1.5\ng{k=\"z\",l=\"x\"} -2\n";
    let e = parse_exposition(good).unwrap();
    assert_eq!(e.counter("a_total"), 3);
    assert_eq!(e.get("g", &[("k", "v\"w"), ("l", "x")]), 1.5);
    for bad in [
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3",
        "# TYPE a_total counter\na_total 3\n",
        "# HELP a_total A.\na_total 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total three\n",
        "# HELP a A.\n# TYPE a counter\na 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n",
        "# HELP g G.\n# TYPE g gauge\ng{k=\"v} 1\n",
        "# HELP g G.\n# TYPE g gauge\ng{k=\"v\",k=\"w\"} 1\n",
        "# HELP g G.\n# TYPE g gauge\ng 1\ng 2\n",
        "# HELP g G.\n# TYPE g wat\ng 1\n",
        "# HELP g G.\n# TYPE g gauge\n# HELP h H.\n# TYPE h gauge\ng{a=\"1\"} 1\nh 1\ng{a=\"2\"} 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

fn metrics(d: &TestDaemon) -> Exposition {
    let out = d.ctl(&["metrics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    parse_exposition(&stdout(&out)).unwrap_or_else(|e| panic!("{e}\n{}", stdout(&out)))
}

fn trajectory_len(d: &TestDaemon, id: &str) -> u64 {
    d.task(id)["trajectory"].as_array().unwrap().len() as u64
}

#[test]
fn metrics_parse_as_prometheus_text_and_their_counters_follow_the_work() {
    let d = TestDaemon::with_config("mode = \"synthetic\"\n");
    let before = metrics(&d);
    for name in [
        "orchestrator_transitions_total",
        "orchestrator_reclaims_total",
        "orchestrator_expiries_total",
        "orchestrator_reloads_ok_total",
        "orchestrator_reloads_failed_total",
        "orchestrator_protocol_errors_total",
        "orchestrator_specialist_spawns_total",
        "orchestrator_specialist_failures_total",
    ] {
        before.counter(name);
    }
    for kind in ["synthetic", "shadow", "live"] {
        for state in [
            "queued",
            "assigned",
            "in_progress",
            "awaiting_approval",
            "done",
            "failed",
            "cancelled",
            "expired",
        ] {
            assert_eq!(
                before.get("orchestrator_tasks", &[("kind", kind), ("state", state)]),
                0.0
            );
        }
    }
    assert_eq!(
        before.get("orchestrator_mode", &[("mode", "synthetic")]),
        1.0
    );

    // Work: a task that waits for approval and is approved, one routed by default, one cancelled.
    let coder = d.submit(CODE_GOAL);
    d.wait_state(&coder, "awaiting_approval", WAIT);
    let out = d.ctl(&["approve", &coder]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = d.submit("xyzzy nothing matches here");
    d.wait_state(&plain, "done", WAIT);
    let held = d.submit("deploy the new release to staging");
    d.wait_state(&held, "awaiting_approval", WAIT);
    let out = d.ctl(&["cancel", &held]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Every trajectory event is one counted transition: no more, no fewer.
    let events =
        trajectory_len(&d, &coder) + trajectory_len(&d, &plain) + trajectory_len(&d, &held);
    let start = before.counter("orchestrator_transitions_total");
    let after = wait_for("the transitions counter to catch up", WAIT, || {
        let m = metrics(&d);
        (m.counter("orchestrator_transitions_total") >= start + events).then_some(m)
    });
    assert_eq!(
        after.counter("orchestrator_transitions_total"),
        start + events
    );
    let synthetic = |state| {
        after.get(
            "orchestrator_tasks",
            &[("kind", "synthetic"), ("state", state)],
        )
    };
    assert_eq!(synthetic("done"), 2.0);
    assert_eq!(synthetic("cancelled"), 1.0);
    assert_eq!(synthetic("awaiting_approval"), 0.0);

    // Reloads: one that applies, one refused as invalid.
    let out = d.ctl(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    d.write_config("mode = \"bogus\"\n");
    assert_eq!(d.ctl(&["reload"]).status.code(), Some(5));
    // A protocol error: a frame that is not a message.
    let mut raw = Raw::connect(&d.socket).unwrap();
    raw.write_raw(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
        .unwrap();
    assert!(raw.closed());

    let last = metrics(&d);
    let delta = |name| last.counter(name) - after.counter(name);
    assert_eq!(delta("orchestrator_reloads_ok_total"), 1);
    assert_eq!(delta("orchestrator_reloads_failed_total"), 1);
    assert_eq!(delta("orchestrator_protocol_errors_total"), 1);
    assert_eq!(delta("orchestrator_transitions_total"), 0);
    assert_eq!(last.counter("orchestrator_specialist_spawns_total"), 0);
}

// ------------------------------------------------------------------------------------------------
// watch

/// Lines of a child's pipe, delivered through a channel so that reads can have a deadline.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

struct Watcher {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(d: &TestDaemon, format: &str) -> Watcher {
        let mut child = Command::new(bin("orchctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["--format", format, "watch"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        // It says so on stderr once the daemon streams; events committed after that are seen.
        let first = stderr.recv_timeout(WAIT).expect("orchctl watch started");
        assert!(first.contains("watching"), "{first}");
        Watcher { child, stdout }
    }

    /// Lines up to and including the first one that `last` accepts.
    fn until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .stdout
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no more watch output after {seen:?}"));
            let done = last(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_prints_each_transition_as_it_commits_as_json_lines_with_format_json() {
    let mut d = TestDaemon::start();
    let json = Watcher::start(&d, "json");
    let table = Watcher::start(&d, "table");

    let id = d.submit(CODE_GOAL);
    d.wait_state(&id, "awaiting_approval", WAIT);
    assert!(d.ctl(&["approve", &id]).status.success());

    let events: Vec<Value> = json
        .until(|l| l.contains(&id) && l.contains("\"to\":\"done\""))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|ev: &Value| ev["taskId"] == id.as_str())
        .collect();
    // Exactly the task's trajectory, in order, with the schema's field names.
    let trajectory = d.task(&id)["trajectory"].as_array().unwrap().clone();
    assert_eq!(events.len(), trajectory.len());
    for (ev, stored) in events.iter().zip(&trajectory) {
        for field in ["seq", "at", "actor", "action", "from", "to"] {
            assert_eq!(ev[field], stored[field], "{field} of {ev}");
        }
    }
    assert_eq!(events.last().unwrap()["action"], "approve");

    let lines = table.until(|l| l.contains(&id) && l.contains("→ done"));
    let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&id)).collect();
    assert_eq!(mine.len(), trajectory.len(), "{lines:?}");
    assert!(mine[0].contains("- → queued"), "{}", mine[0]);

    // A daemon that stops ends the stream, and the watcher with success.
    assert_eq!(d.terminate().code(), Some(0));
    let mut table = table;
    let status = wait_for("orchctl watch to exit", WAIT, || {
        table.child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0));
}

// ------------------------------------------------------------------------------------------------
// --daemonize

fn alive(pid: i32) -> bool {
    // A dead daemon that nobody has reaped yet counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Kills the daemonized process if the test fails before stopping it.
struct Background(i32);

impl Drop for Background {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn read_pid(pidfile: &Path) -> i32 {
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Signal the daemonized process and wait until it is gone.
fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    wait_for("the daemon to exit", WAIT, || (!alive(pid)).then_some(()));
}

fn daemonized(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("orchestratord"))
        .current_dir(dir)
        .arg("--daemonize")
        .args(args)
        .env("ORCHESTRATOR_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("LISTEN_FDS")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn daemonize_returns_once_ready_holds_its_pidfile_and_removes_it_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    // Relative paths: the daemon moves to / but must keep meaning these.
    let args = [
        "--pidfile",
        "orch.pid",
        "--log-file",
        "orch.log",
        "--socket",
        "run/orch.sock",
        "--state-dir",
        "state",
    ];
    let out = daemonized(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let pidfile = dir.path().join("orch.pid");
    let pid = read_pid(&pidfile);
    let _guard = Background(pid);
    assert!(alive(pid));
    assert_ne!(pid as u32, std::process::id());
    // Ready when the command returned: no waiting needed.
    let socket = dir.path().join("run/orch.sock");
    let status = ctl_at(&socket, &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));

    // A second instance with the same pidfile refuses, naming the holder.
    let second = daemonized(
        dir.path(),
        &[
            "--pidfile",
            "orch.pid",
            "--socket",
            "run/other.sock",
            "--state-dir",
            "other-state",
        ],
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains(&format!("pid {pid}")),
        "{}",
        stderr(&second)
    );
    assert!(!dir.path().join("run/other.sock").exists());

    // A start-up failure in the background reaches the terminal, with the daemon's exit code.
    std::fs::write(dir.path().join("bad.toml"), "mode = \"bogus\"\n").unwrap();
    let bad = daemonized(
        dir.path(),
        &[
            "--pidfile",
            "bad.pid",
            "--config",
            "bad.toml",
            "--socket",
            "run/bad.sock",
            "--state-dir",
            "bad-state",
        ],
    );
    assert_eq!(bad.status.code(), Some(5), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("bogus"), "{}", stderr(&bad));

    // A pidfile left by a killed daemon is not held by anyone: the next start takes it over.
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    assert!(pidfile.exists());
    let out = daemonized(dir.path(), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = read_pid(&pidfile);
    let _guard = Background(pid);
    assert!(ctl_at(&socket, &["status"]).status.success());

    kill(pid, nix::sys::signal::Signal::SIGTERM);
    assert!(!pidfile.exists(), "pidfile removed at a clean stop");
    assert!(!socket.exists(), "socket removed at a clean stop");
    let log = std::fs::read_to_string(dir.path().join("orch.log")).unwrap();
    assert!(
        log.contains("orchestratord ready") && log.contains("orchestratord stopped"),
        "{log}"
    );
}

#[test]
fn pidfile_and_log_file_need_daemonize() {
    let out = Command::new(bin("orchestratord"))
        .args(["--pidfile", "/nonexistent/x.pid"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = Command::new(bin("orchestratord"))
        .arg("--daemonize")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

// ------------------------------------------------------------------------------------------------
// Man pages and completions, as the package builds them.

#[test]
fn man_pages_and_completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("orchestratord"))
        .arg("--man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(dir.path().join("orchestratord.1")).unwrap();
    assert!(page.contains(".TH orchestratord 1"), "{page}");
    assert!(page.contains("daemonize"), "documents --daemonize");

    let out = ctl_at(dir.path(), &["man", &dir.path().display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "orchctl.1",
        "orchctl-status.1",
        "orchctl-metrics.1",
        "orchctl-watch.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page}");
    }

    for shell in ["bash", "zsh", "fish"] {
        let out = ctl_at(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("orchctl") && text.contains("shadow-summary"),
            "{shell}"
        );
    }
}
