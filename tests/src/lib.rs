//! Test harness: starts the real `orchestratord` on a temporary socket and state directory and drives
//! it with the real `orchctl`, or with raw frames for protocol tests.
//!
//! Waiting is always for a condition (the socket answers, the process exits, a task reaches a state),
//! polled with a bounded deadline — never a bare sleep standing in for synchronisation. Time-based
//! behaviour (TTLs, leases, the shadow window, the sweeper's interval) is reached by moving the
//! daemon's clock with [`TestDaemon::advance`], never by waiting for the wall clock.

pub mod client;
pub mod prometheus;

use orchestrator_proto::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use orchestrator_proto::message::{ClientMessage, Hello, Request, Response, ServerMessage};
use serde_json::Value;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// A directory outside the daemon's for stub specialists and the marks they leave.
pub fn workdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("orch-stubs-")
        .tempdir()
        .expect("tempdir")
}

/// Write an executable `/bin/sh` script; `$DIR` in `body` is the script's directory.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let text = format!(
        "#!/bin/sh\nDIR='{}'\n{}\n",
        dir.display(),
        body.trim_start()
    );
    std::fs::write(&path, text).expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// An `[agents.<id>]` table running `command`, with `extra` lines.
pub fn agent(id: &str, command: &Path, extra: &str) -> String {
    format!(
        "[agents.{id}]\ncommand = [\"{}\"]\n{extra}\n",
        command.display()
    )
}

/// The lines of a file (a stub's log, a sink's), none while it does not exist.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Directory holding the built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target directory")
}

static BUILD: Once = Once::new();

/// Path of a workspace binary. The first call in a test process brings the binaries up to date
/// (`cargo test -p orchestrator-tests` alone would otherwise run stale ones); a no-op build is quick.
pub fn bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    BUILD.call_once(|| {
        if std::env::var_os("ORCH_TEST_NO_BUILD").is_some() {
            return;
        }
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--bins", "--workspace"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    dir.join(name)
}

/// Poll `f` until it returns `Some`, or panic after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct TestDaemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub log: PathBuf,
    /// The daemon's clock offset in milliseconds (the `ORCHESTRATOR_TEST_CLOCK` test hook).
    pub clock_file: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl TestDaemon {
    /// Start on built-in defaults.
    pub fn start() -> TestDaemon {
        Self::launch(None, Vec::new())
    }

    /// Start with a config file holding `toml`.
    pub fn with_config(toml: &str) -> TestDaemon {
        Self::launch(Some(toml), Vec::new())
    }

    /// Start with `toml` (which must not set `mode`) and bring the daemon to `mode` the way an
    /// operator may: a recorded gate override, then the mode in the file and a reload.
    pub fn in_mode(toml: &str, mode: &str) -> TestDaemon {
        let d = Self::with_config(toml);
        if mode != "synthetic" {
            d.flip_to(mode, toml);
        }
        d
    }

    /// Move to `mode` by override + config (`toml` without `mode`) + reload; panics if refused.
    pub fn flip_to(&self, mode: &str, toml: &str) {
        let out = self.ctl(&["gate", "override", mode, "--reason", "test set-up"]);
        assert!(out.status.success(), "gate override: {}", stderr(&out));
        self.write_config(&format!("mode = \"{mode}\"\n{toml}"));
        let out = self.ctl(&["reload"]);
        assert!(out.status.success(), "reload to {mode}: {}", stderr(&out));
        let (_, status) = self.ctl_json(&["status"]);
        assert_eq!(status["effectiveMode"], mode, "{status}");
    }

    /// Start with `toml` (or defaults) and the given extra arguments. The daemon's HTTP listener
    /// is on by default on a fixed port, so unless `toml` has an `[http]` section of its own the
    /// test daemon gets `listen = "off"`: daemons of parallel tests never fight over the port.
    pub fn launch(toml: Option<&str>, extra_args: Vec<String>) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("orch-test-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("run").join("orchestrator.sock");
        let state_dir = dir.path().join("state");
        let config = {
            let p = dir.path().join("orchestrator.toml");
            std::fs::write(&p, http_off_unless_set(toml.unwrap_or_default()))
                .expect("write config");
            Some(p)
        };
        let log = dir.path().join("daemon.log");
        let clock_file = dir.path().join("clock-offset-ms");
        let mut d = TestDaemon {
            dir,
            socket,
            state_dir,
            config,
            log,
            clock_file,
            child: None,
            extra_args,
            env: Vec::new(),
        };
        d.spawn();
        d
    }

    /// Start with extra environment variables (the fault hook, systemd's notify variables) and
    /// without waiting for the socket: such a daemon may be meant to fail at once.
    pub fn launch_with_env(toml: Option<&str>, env: &[(&str, &str)]) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("orch-test-")
            .tempdir()
            .expect("tempdir");
        let config = toml.map(|t| {
            let p = dir.path().join("orchestrator.toml");
            std::fs::write(&p, t).expect("write config");
            p
        });
        let mut d = TestDaemon {
            socket: dir.path().join("run").join("orchestrator.sock"),
            state_dir: dir.path().join("state"),
            log: dir.path().join("daemon.log"),
            clock_file: dir.path().join("clock-offset-ms"),
            dir,
            config,
            child: None,
            extra_args: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn_only();
        d
    }

    /// Wait (at most `timeout`) for the daemon to exit by itself, and reap it.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        wait_for("the daemon to exit", timeout, || {
            child.try_wait().ok().flatten()
        })
    }

    /// Wait for the daemon to stop by itself because the supervised task `task` failed: it exits
    /// non-zero (not by a signal) within 30 s (the daemon bounds its own shutdown after a failure
    /// at 10 s), and `task` is the first failure in its log.
    pub fn assert_stopped_by_failure_of(&mut self, task: &str) {
        let status = self.wait_exit(Duration::from_secs(30));
        let log = self.log_text();
        assert!(
            !status.success() && status.code().is_some(),
            "expected a non-zero exit, got {status}; log:\n{log}"
        );
        let line = format!("supervised task \"{task}\" failed");
        assert!(log.contains(&line), "no `{line}` in the log:\n{log}");
        // The cause comes first: no other task's failure is reported before it.
        let first = log.find("supervised task \"").map(|at| &log[at..]);
        assert!(
            first.is_some_and(|f| f.starts_with(&line)),
            "another task's failure is logged before `{line}`:\n{log}"
        );
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        self.try_exit().is_none() && self.child.is_some()
    }

    fn spawn(&mut self) {
        self.spawn_only();
        let socket = self.socket.clone();
        let pid = self.pid();
        wait_for(
            "the daemon to answer on its socket",
            Duration::from_secs(20),
            || {
                if let Some(status) = self.try_exit() {
                    panic!(
                        "orchestratord {pid} exited early with {status}; log:\n{}",
                        self.log_text()
                    );
                }
                Raw::connect(&socket)
                    .ok()
                    .and_then(|mut r| r.hello().ok())
                    .map(|_| ())
            },
        );
    }

    fn spawn_only(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(bin("orchestratord"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(&self.extra_args);
        cmd.env("ORCHESTRATOR_LOG", "debug")
            .env("ORCHESTRATOR_TEST_CLOCK", &self.clock_file)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("ORCHESTRATOR_TEST_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().expect("spawn orchestratord");
        self.child = Some(child);
    }

    /// How far the daemon's clock is ahead of the wall clock. It survives restarts.
    pub fn clock_offset(&self) -> Duration {
        match std::fs::read_to_string(&self.clock_file) {
            Ok(text) => Duration::from_millis(text.trim().parse().expect("clock offset")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Duration::ZERO,
            Err(e) => panic!("read {}: {e}", self.clock_file.display()),
        }
    }

    /// Move the daemon's clock forward by `by`. The daemon sees it from its next reading on, and
    /// its timers (sweeper interval, lease renewal) re-check at once. The file is replaced by a
    /// rename, so that the daemon never reads it half-written.
    pub fn advance(&self, by: Duration) {
        let offset = self.clock_offset() + by;
        let tmp = self.clock_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", offset.as_millis())).expect("write clock offset");
        std::fs::rename(&tmp, &self.clock_file).expect("move the clock");
    }

    /// The daemon's time now, in milliseconds since the epoch: the wall clock plus the offset.
    pub fn clock_ms(&self) -> i64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970");
        (wall + self.clock_offset()).as_millis() as i64
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run `orchctl` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.socket, args)
    }

    /// `orchctl agents` as JSON, by agent id.
    pub fn agents(&self) -> std::collections::BTreeMap<String, Value> {
        let (code, v) = self.ctl_json(&["agents"]);
        assert_eq!(code, 0, "{v}");
        v.as_array()
            .expect("orchctl agents answers a list")
            .iter()
            .map(|a| {
                (
                    a["agent"].as_str().unwrap_or_default().to_string(),
                    a.clone(),
                )
            })
            .collect()
    }

    /// Run `orchctl --format json` and parse its stdout.
    pub fn ctl_json(&self, args: &[&str]) -> (i32, Value) {
        let mut full = vec!["--format", "json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        let code = out.status.code().unwrap_or(-1);
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "orchctl {args:?} did not print JSON ({e}): {text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, v)
    }

    /// `orchctl submit GOAL`, returning the id it prints.
    pub fn submit(&self, goal: &str) -> String {
        let out = self.ctl(&["submit", goal]);
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The task as JSON (`tasks show`), including its `trajectory`.
    pub fn task(&self, id: &str) -> Value {
        let (code, v) = self.ctl_json(&["tasks", "show", id]);
        assert_eq!(code, 0, "tasks show {id}: {v}");
        v
    }

    pub fn state_of(&self, id: &str) -> String {
        self.task(id)["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Wait until the task is in `state`.
    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        wait_for(&format!("task {id} to reach {state}"), timeout, || {
            let t = self.task(id);
            (t["state"] == state).then_some(t)
        })
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal the daemon");
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().expect("daemon running");
        wait_for("the daemon to exit", Duration::from_secs(20), || {
            child.try_wait().ok().flatten()
        })
    }

    /// Start again on the same socket, state and config.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Start again after a clean or killed exit (the child must already be gone).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        self.spawn();
    }

    /// Replace the config file's contents (with HTTP off unless `toml` has `[http]`, as at start).
    pub fn write_config(&self, toml: &str) {
        let p = self
            .config
            .as_ref()
            .expect("daemon started with a config file");
        std::fs::write(p, http_off_unless_set(toml)).expect("write config");
    }

    /// `http://ADDR` of the daemon's HTTP listener, as `status` reports it.
    pub fn http_base(&self) -> String {
        let (_, status) = self.ctl_json(&["status"]);
        let listen = status["httpListen"]
            .as_str()
            .unwrap_or_else(|| panic!("the daemon has no HTTP listener: {status}"));
        format!("http://{listen}")
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `toml` with `[http] listen = "off"` appended when it says nothing about HTTP.
pub fn http_off_unless_set(toml: &str) -> String {
    if toml.contains("[http]") {
        toml.to_string()
    } else {
        format!("{toml}\n[http]\nlisten = \"off\"\n")
    }
}

pub fn ctl_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("orchctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("ORCHCTL_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run orchctl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A raw protocol connection for tests that speak frames directly.
pub struct Raw {
    pub stream: UnixStream,
}

impl Raw {
    pub fn connect(socket: &Path) -> std::io::Result<Raw> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Raw { stream })
    }

    pub fn send(&mut self, msg: &ClientMessage) -> std::io::Result<()> {
        write_frame(&mut self.stream, msg)
    }

    pub fn recv(&mut self) -> std::io::Result<ServerMessage> {
        read_frame(&mut self.stream, 64 * DEFAULT_MAX_FRAME)
    }

    pub fn hello(&mut self) -> std::io::Result<ServerMessage> {
        self.send(&ClientMessage::Hello(Hello::current("test")))?;
        self.recv()
    }

    pub fn request(&mut self, req: Request) -> std::io::Result<ServerMessage> {
        self.send(&ClientMessage::Request(req))?;
        self.recv()
    }

    /// Send a request and expect an `Ok` response.
    pub fn ok(&mut self, req: Request) -> Response {
        match self.request(req).expect("request") {
            ServerMessage::Ok(r) => *r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(bytes)
    }

    /// True when the daemon closed the connection (EOF, or a reset when it left some of what was
    /// sent unread), reading and discarding anything before it.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                // The daemon closed with some of what was sent still unread (a frame refused for
                // its announced size): Linux then resets the peer instead of ending its stream.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
