//! Supervision: every long-lived task of the daemon is watched. Made to fail by the test-only hook
//! `ORCHESTRATOR_TEST_FAULT=<task>[:panic|:exit|:hang][@signal]`, the daemon must exit non-zero on
//! its own, promptly, naming the task; wedged, it must stop feeding systemd's watchdog. `@signal`
//! holds the fault until the test sends SIGUSR2, once it has seen the daemon up.

use orchestrator_tests::*;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HTTP_CONFIG: &str = "[http]\nlisten = \"127.0.0.1:0\"\n";

/// Start with the fault `spec` (and `env`), and check that the daemon exits non-zero by itself with
/// an error line naming `task`.
fn fails_by_itself(task: &str, spec: &str, toml: Option<&str>, env: &[(&str, &str)]) {
    let mut all = vec![("ORCHESTRATOR_TEST_FAULT", spec)];
    all.extend_from_slice(env);
    let mut d = TestDaemon::launch_with_env(toml, &all);
    if spec.ends_with("@signal") {
        release(&d);
    }
    d.assert_stopped_by_failure_of(task);
}

/// Release an `@signal` fault: the daemon answered `status`, so it is up.
fn release(d: &TestDaemon) {
    // Launched without waiting for the socket: wait (bounded) for the first answer.
    wait_for(
        "the daemon to answer status",
        Duration::from_secs(20),
        || d.ctl(&["status"]).status.success().then_some(()),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
}

macro_rules! supervised {
    ($($test:ident: $task:literal, $how:literal;)*) => {
        $(
            #[test]
            fn $test() {
                fails_by_itself($task, &format!("{}:{}", $task, $how), None, &[]);
            }
        )*
    };
}

supervised! {
    dispatcher_panics: "dispatcher", "panic";
    dispatcher_ends_early: "dispatcher", "exit";
    specialist_executor_panics: "specialist-executor", "panic";
    lease_renewal_panics: "lease-renewal", "panic";
    delivery_ends_early: "delivery", "exit";
    sweeper_panics: "sweeper", "panic";
    sweeper_ends_early: "sweeper", "exit";
    signals_panics: "signals", "panic";
    socket_server_ends_early: "socket-server", "exit";
    transition_log_panics: "transition-log", "panic";
    agent_pauses_panics: "agent-pauses", "panic";
    notify_panics: "notify", "panic";
    integrity_check_panics: "integrity-check", "panic";
}

#[test]
fn store_writer_panics() {
    // The writer thread starts before supervision does, so its fault waits for the daemon to be up.
    fails_by_itself("store-writer", "store-writer:panic@signal", None, &[]);
}

#[test]
fn store_writer_ends_early() {
    fails_by_itself("store-writer", "store-writer:exit@signal", None, &[]);
}

#[test]
fn http_server_panics() {
    fails_by_itself("http-server", "http-server:panic", Some(HTTP_CONFIG), &[]);
}

/// A datagram socket standing in for systemd's notify socket. A thread drains it at once, as
/// systemd does: the daemon's notifications block once the socket's queue is full.
struct Notify {
    _dir: TempDir,
    path: std::path::PathBuf,
    messages: mpsc::Receiver<String>,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test (and with it the receiver) is gone.
            while let Ok(n) = sock.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        Notify {
            _dir: dir,
            path,
            messages,
        }
    }

    fn env<'a>(&'a self, watchdog_usec: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("NOTIFY_SOCKET", self.path.to_str().unwrap()),
            ("WATCHDOG_USEC", watchdog_usec),
        ]
    }

    /// The next message, waiting at most `timeout`.
    fn next(&self, timeout: Duration) -> String {
        self.messages
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no notify message within {timeout:?}: {e}"))
    }

    /// Messages until one satisfies `f`, within `timeout` overall.
    fn until(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            let m = self.next(left);
            if f(&m) {
                return m;
            }
        }
    }
}

fn is_ping(m: &str) -> bool {
    m.lines().any(|l| l == "WATCHDOG=1")
}

#[test]
fn watchdog_panics() {
    let n = Notify::new();
    fails_by_itself("watchdog", "watchdog:panic", None, &n.env("2000000"));
}

#[test]
fn a_healthy_daemon_feeds_the_watchdog_keeps_running_and_answers_status() {
    let n = Notify::new();
    let mut d = TestDaemon::launch_with_env(None, &n.env("2000000"));
    n.until("READY=1", Duration::from_secs(20), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    for _ in 0..3 {
        n.until("WATCHDOG=1", Duration::from_secs(20), is_ping);
    }
    let (code, status) = d.ctl_json(&["status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["effectiveMode"], "synthetic", "{status}");
    let id = d.submit("please debug this function and fix the off-by-one");
    d.wait_state(&id, "awaiting_approval", Duration::from_secs(20));
    assert!(d.running(), "the daemon must still run");
    assert!(
        !d.log_text().contains("supervised task"),
        "{}",
        d.log_text()
    );
    assert!(d.terminate().success());
}

/// Wedge `task` after the daemon came up; the watchdog must stop being fed, naming why.
fn wedged_stops_the_watchdog(task: &str, reason: &str) {
    let n = Notify::new();
    let spec = format!("{task}:hang@signal");
    let mut env = n.env("1000000");
    env.push(("ORCHESTRATOR_TEST_FAULT", &spec));
    let mut d = TestDaemon::launch_with_env(None, &env);
    n.until("a first WATCHDOG=1", Duration::from_secs(20), is_ping);
    release(&d);
    // The probe that names the wedged task (a scheduling stall on a loaded machine may first
    // make a healthy one miss its 250 ms bound).
    let failed = n.until("a failed liveness probe", Duration::from_secs(20), |m| {
        m.contains("STATUS=liveness probe failed") && m.contains(reason)
    });
    assert!(!is_ping(&failed), "{failed}");
    // The watchdog goes on probing: its next reports are failures too, and none feeds systemd.
    for _ in 0..2 {
        let m = n.next(Duration::from_secs(20));
        assert!(!is_ping(&m), "fed the watchdog while wedged: {m}");
        assert!(m.contains("STATUS=liveness probe failed"), "{m}");
    }
    assert!(d.running(), "a wedged daemon is systemd's to kill");
    assert!(
        d.log_text().contains("no longer feeding the watchdog"),
        "{}",
        d.log_text()
    );
    d.kill9();
}

#[test]
fn a_wedged_store_writer_stops_the_watchdog() {
    wedged_stops_the_watchdog("store-writer", "the store writer did not commit");
}

#[test]
fn a_wedged_dispatcher_stops_the_watchdog() {
    wedged_stops_the_watchdog("dispatcher", "the dispatcher did not answer");
}
