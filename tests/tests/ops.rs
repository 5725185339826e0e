//! Issue: operations — `orchctl metrics` as Prometheus text whose counters follow the work,
//! `orchctl watch`, `orchestratord --daemonize`, and the generated man pages and completions.
//! (What needs a real systemd — journald, watchdog, socket activation — is in tests/systemd/run.sh.)

use orchestrator_proto::message::{Request, SubmitRequest};
use orchestrator_proto::Response;
use orchestrator_tests::prometheus::{self, Exposition};
use orchestrator_tests::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CODE_GOAL: &str = "please debug this function and fix the off-by-one";
const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------------------------------------
// metrics (read with the harness's checker of the text format, `orchestrator_tests::prometheus`)

fn metrics(d: &TestDaemon) -> Exposition {
    let out = d.ctl(&["metrics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    prometheus::check(&stdout(&out)).unwrap_or_else(|e| panic!("{e}\n{}", stdout(&out)))
}

/// A counter's value, summed over its labels (0 before the first of a labelled one).
fn counter(e: &Exposition, name: &str) -> u64 {
    assert_eq!(
        e.types.get(name).map(String::as_str),
        Some("counter"),
        "{name}"
    );
    e.sum(name, &[]) as u64
}

fn gauge(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.value(name, labels)
        .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
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
        counter(&before, name);
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
                gauge(
                    &before,
                    "orchestrator_tasks",
                    &[("kind", kind), ("state", state)]
                ),
                0.0
            );
        }
    }
    assert_eq!(
        gauge(&before, "orchestrator_mode", &[("mode", "synthetic")]),
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
    let start = counter(&before, "orchestrator_transitions_total");
    let after = wait_for("the transitions counter to catch up", WAIT, || {
        let m = metrics(&d);
        (counter(&m, "orchestrator_transitions_total") >= start + events).then_some(m)
    });
    assert_eq!(
        counter(&after, "orchestrator_transitions_total"),
        start + events
    );
    let synthetic = |state| {
        gauge(
            &after,
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
    let delta = |name| counter(&last, name) - counter(&after, name);
    assert_eq!(delta("orchestrator_reloads_ok_total"), 1);
    assert_eq!(delta("orchestrator_reloads_failed_total"), 1);
    assert_eq!(delta("orchestrator_protocol_errors_total"), 1);
    assert_eq!(delta("orchestrator_transitions_total"), 0);
    assert_eq!(counter(&last, "orchestrator_specialist_spawns_total"), 0);
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
// the transition log

/// Transitions that commit in bursts (many connections submitting at once) are logged one whole
/// line each, none lost, each task's lines in the order of its trajectory, by a thread of their
/// own that writes a burst's lines together (README, "Journal").
#[test]
fn a_burst_of_transitions_is_logged_whole_and_in_order() {
    const CONNECTIONS: usize = 8;
    const EACH: usize = 40;
    let mut d = TestDaemon::with_config("");
    let socket = d.socket.clone();
    let submitters: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut raw = Raw::connect(&socket).unwrap();
                raw.hello().unwrap();
                (0..EACH)
                    .map(|_| {
                        let req = Request::Submit(SubmitRequest {
                            goal: CODE_GOAL.into(),
                            required_capabilities: Vec::new(),
                            workspace_dir: None,
                            ttl_secs: None,
                            wait: false,
                        });
                        match raw.ok(req) {
                            Response::Task(t) => t.id,
                            other => panic!("submit: {other:?}"),
                        }
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let ids: Vec<String> = submitters
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    let mut raw = Raw::connect(&d.socket).unwrap();
    raw.hello().unwrap();
    let trajectories: Vec<(String, Vec<String>)> = ids
        .iter()
        .map(|id| match raw.ok(Request::ShowTask { id: id.clone() }) {
            Response::TaskDetail { events, .. } => {
                (id.clone(), events.into_iter().map(|e| e.action).collect())
            }
            other => panic!("show {id}: {other:?}"),
        })
        .collect();
    // The lines are formatted on a thread of their own, not on the runtime's workers.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "transition-log"), "{threads:?}");
    // A stop logs what is still queued before the daemon exits.
    assert_eq!(d.terminate().code(), Some(0));
    let log = d.log_text();
    for line in log.lines() {
        assert!(line.starts_with("20"), "a line that is not whole: {line:?}");
    }
    let mut logged = 0;
    for (id, actions) in &trajectories {
        let prefix = format!("orchestrator::logging: task {id} ");
        let mine: Vec<&str> = log
            .lines()
            .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
            .map(|rest| rest.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(&mine, actions, "the lines of {id}");
        logged += mine.len();
    }
    assert!(logged >= CONNECTIONS * EACH * 2, "{logged} lines");
    assert!(!log.contains("fell behind"), "{log}");
}

// ------------------------------------------------------------------------------------------------
// --daemonize

fn alive(pid: i32) -> bool {
    // A dead daemon that nobody has reaped yet counts as gone, once its last thread has exited: a
    // killed daemon's main thread turns zombie before the others have ended, and its files (the
    // pidfile's lock among them) are closed only with the last of them.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .starts_with('Z');
    !zombie
        || std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|threads| threads.count() > 1)
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
