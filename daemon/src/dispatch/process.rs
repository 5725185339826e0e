//! One child process of the dispatcher — a specialist or the delivery hook — from spawn to its end.
//!
//! The child runs in its own process group, from an argv (never a shell string), with a minimal
//! environment. Its stdin gets one document; its stdout is kept up to a cap in memory and, past the
//! cap, streamed whole to a file, so that the daemon's memory stays bounded however much it prints;
//! the tail of its stderr is kept for error reports. It is stopped by group: SIGTERM, a grace,
//! SIGKILL.
//!
//! The leader is reaped only after the group has been signalled for the last time: until then its
//! pid (and so the group id) cannot be reused, and a signal can never reach a stranger's group.

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use orchestrator_core::agent::DEFAULT_PATH;
use orchestrator_proto::task::Task;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How much of stderr is kept for an error report.
pub const STDERR_TAIL: usize = 4 * 1024;
/// After the group is gone, how long the pipes may take to drain. Only a process that left the
/// group while holding a pipe open makes this wait the full time.
const DRAIN: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;

/// Variables passed through from the daemon's own environment; everything else is left behind,
/// notably systemd's `NOTIFY_SOCKET`, `WATCHDOG_*` and `LISTEN_*`, which belong to the daemon.
const PASSED_THROUGH: [&str; 7] = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ"];

/// Whether a variable must never reach a child, whoever configured it.
pub fn is_reserved(name: &str) -> bool {
    name == "NOTIFY_SOCKET" || name.starts_with("WATCHDOG_") || name.starts_with("LISTEN_")
}

/// The base environment of every child, from the daemon's environment as `lookup` reads it.
pub fn base_env(lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = PASSED_THROUGH
        .iter()
        .filter_map(|k| lookup(k).map(|v| (k.to_string(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

/// A child's environment, for specialists and the delivery hook alike: the daemon's basics
/// ([`base_env`]), then `extra` (an agent's `env`; reserved names are dropped), then the contract's
/// variables for `task`, which win over both. `ORCH_ARTEFACT_DIR` is set when the child has one.
pub fn child_env(
    task: &Task,
    extra: &BTreeMap<String, String>,
    artefact_dir: Option<&Path>,
) -> Vec<(String, String)> {
    child_env_from(
        base_env(|k| std::env::var(k).ok()),
        task,
        extra,
        artefact_dir,
    )
}

/// [`child_env`] over a given base, so that tests need not read the daemon's environment.
pub(super) fn child_env_from(
    base: Vec<(String, String)>,
    task: &Task,
    extra: &BTreeMap<String, String>,
    artefact_dir: Option<&Path>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = base.into_iter().collect();
    for (k, v) in extra {
        if !is_reserved(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    env.insert("ORCH_TASK_ID".into(), task.id.clone());
    env.insert("ORCH_TASK_KIND".into(), task.kind.as_str().into());
    env.insert(
        "ORCH_AGENT_ID".into(),
        task.assigned_agent_id.clone().unwrap_or_default(),
    );
    if let Some(dir) = artefact_dir {
        env.insert(
            "ORCH_ARTEFACT_DIR".into(),
            dir.to_string_lossy().into_owned(),
        );
    }
    env.into_iter().collect()
}

/// Where stdout goes: the first `cap` bytes are kept in memory; with `spill`, the whole output is
/// written to that file as soon as it outgrows the cap.
#[derive(Debug, Clone)]
pub struct Capture {
    pub cap: usize,
    pub spill: Option<PathBuf>,
}

/// What was read from stdout.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// The first `cap` bytes, as text (cut at a character boundary).
    pub text: String,
    pub bytes: u64,
    /// The file holding all of it, when it outgrew the cap.
    pub spilled: Option<PathBuf>,
    /// Something went wrong reading or spilling; the output may be incomplete.
    pub error: Option<String>,
}

/// What to run.
pub struct Launch<'a> {
    pub argv: &'a [String],
    pub env: Vec<(String, String)>,
    pub cwd: &'a Path,
    pub stdin: Vec<u8>,
    pub stdout: Capture,
}

/// The time limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL on a timeout or a cancel.
    pub kill_grace: Duration,
    /// Between SIGTERM and SIGKILL when the daemon stops.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It ended by itself.
    Exited(ExitStatus),
    /// It ran past its timeout and was stopped.
    TimedOut,
    /// It was stopped from outside: a cancel, or the daemon stopping.
    Stopped,
}

#[derive(Debug)]
pub struct Ended {
    pub how: Ending,
    pub stdout: Captured,
    pub stderr_tail: String,
    pub elapsed: Duration,
}

/// A child that runs.
pub struct Child {
    child: tokio::process::Child,
    pgid: Pid,
    /// Resolves when the leader has exited; it is not reaped by this.
    exited: Option<JoinHandle<()>>,
    stdin: JoinHandle<()>,
    stdout: JoinHandle<Captured>,
    stderr: JoinHandle<Vec<u8>>,
    started: tokio::time::Instant,
}

/// Start `launch` in a new process group.
pub fn spawn(launch: Launch<'_>) -> std::io::Result<Child> {
    let Some((program, args)) = launch.argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(
            launch
                .env
                .iter()
                .filter(|(k, _)| !is_reserved(k))
                .map(|(k, v)| (k, v)),
        )
        .current_dir(launch.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn()?;
    let Some(pid) = child.id() else {
        return Err(std::io::Error::other("the child has no pid"));
    };
    let pgid = Pid::from_raw(pid as i32);
    let exited = tokio::task::spawn_blocking(move || wait_exited(pgid));
    let stdin = match child.stdin.take() {
        Some(mut pipe) => {
            let doc = launch.stdin;
            tokio::spawn(async move {
                // A child that does not read its stdin is its own business: a broken pipe is fine.
                let _ = pipe.write_all(&doc).await;
                let _ = pipe.shutdown().await;
            })
        }
        None => tokio::spawn(async {}),
    };
    let stdout = match child.stdout.take() {
        Some(pipe) => tokio::spawn(capture(pipe, launch.stdout)),
        None => tokio::spawn(async { Captured::default() }),
    };
    let stderr = match child.stderr.take() {
        Some(pipe) => tokio::spawn(tail(pipe, STDERR_TAIL)),
        None => tokio::spawn(async { Vec::new() }),
    };
    Ok(Child {
        child,
        pgid,
        exited: Some(exited),
        stdin,
        stdout,
        stderr,
        started: tokio::time::Instant::now(),
    })
}

/// Block until `pid` has exited, without reaping it.
fn wait_exited(pid: Pid) {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(Errno::EINTR) => continue,
            // Exited, or no longer ours to wait for (ECHILD): either way it is gone.
            _ => return,
        }
    }
}

fn signal_group(pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw(), signal = %sig, error = %e, "cannot signal a process group")
        }
    }
}

impl Child {
    /// The process group id (= the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Resolves once the leader has exited (cancel-safe: it can be raced and awaited again).
    async fn leader_exited(&mut self) {
        if let Some(h) = self.exited.as_mut() {
            let _ = h.await;
            self.exited = None;
        }
    }

    /// SIGTERM to the group; SIGKILL once `grace` has passed without the leader exiting.
    async fn stop(&mut self, grace: Duration) {
        signal_group(self.pgid, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.leader_exited())
            .await
            .is_err()
        {
            signal_group(self.pgid, Signal::SIGKILL);
            self.leader_exited().await;
        }
    }

    /// Watch the child to its end: by itself, past `limits.timeout`, or stopped by `cancel` or
    /// `shutdown`. Whatever the ending, no process of its group is left when this returns.
    pub async fn watch(
        mut self,
        limits: Limits,
        cancel: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Ended {
        let how = tokio::select! {
            _ = self.leader_exited() => None,
            _ = tokio::time::sleep(limits.timeout) => {
                self.stop(limits.kill_grace).await;
                Some(Ending::TimedOut)
            }
            _ = cancel.cancelled() => {
                self.stop(limits.kill_grace).await;
                Some(Ending::Stopped)
            }
            _ = shutdown.cancelled() => {
                self.stop(limits.shutdown_grace).await;
                Some(Ending::Stopped)
            }
        };
        // The leader is gone but not reaped, so the group id is still ours: clear out whatever it
        // left behind, then reap.
        signal_group(self.pgid, Signal::SIGKILL);
        let status = match self.child.wait().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pgid = self.pgid.as_raw(), error = %e, "cannot reap a child");
                ExitStatus::from_raw(0xff00)
            }
        };
        let elapsed = self.started.elapsed();
        self.stdin.abort();
        let stdout = match tokio::time::timeout(DRAIN, &mut self.stdout).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => Captured {
                error: Some(format!("reading stdout failed: {e}")),
                ..Captured::default()
            },
            Err(_) => {
                self.stdout.abort();
                Captured {
                    error: Some("stdout was still held open by a process outside the group".into()),
                    ..Captured::default()
                }
            }
        };
        let stderr = match tokio::time::timeout(DRAIN, &mut self.stderr).await {
            Ok(Ok(bytes)) => bytes,
            _ => {
                self.stderr.abort();
                Vec::new()
            }
        };
        Ended {
            how: how.unwrap_or(Ending::Exited(status)),
            stdout,
            stderr_tail: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed,
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Dropped while its leader may still run (the watcher itself was dropped): never leave the
        // group behind. Once the leader was seen to exit, the group was already cleared in `watch`.
        if self.exited.is_some() {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// `exitStatus`/`signal` details and a sentence for an exit status.
pub fn describe_exit(status: ExitStatus) -> (Vec<(&'static str, String)>, String) {
    if let Some(code) = status.code() {
        (
            vec![("exitStatus", code.to_string())],
            format!("the specialist exited with status {code}"),
        )
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| sig.to_string());
        (
            vec![("signal", name.clone())],
            format!("the specialist was killed by {name}"),
        )
    } else {
        (Vec::new(), format!("the specialist ended with {status}"))
    }
}

/// The longest prefix of `bytes` that is whole UTF-8, as text (invalid bytes inside become U+FFFD).
fn text_prefix(mut bytes: Vec<u8>) -> String {
    match std::str::from_utf8(&bytes) {
        Ok(_) => {}
        // A character cut in half by the cap: drop its first bytes.
        Err(e) if e.error_len().is_none() => bytes.truncate(e.valid_up_to()),
        Err(_) => return String::from_utf8_lossy(&bytes).into_owned(),
    }
    String::from_utf8(bytes).unwrap_or_default()
}

async fn capture(mut pipe: impl AsyncRead + Unpin, how: Capture) -> Captured {
    let mut head: Vec<u8> = Vec::with_capacity(how.cap.min(READ_CHUNK));
    let mut spill: Option<tokio::fs::File> = None;
    let mut out = Captured::default();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.error = Some(format!("reading stdout failed: {e}"));
                break;
            }
        };
        let chunk = &buf[..n];
        out.bytes += n as u64;
        let room = how.cap.saturating_sub(head.len());
        let overflow = n > room;
        if overflow && spill.is_none() && out.spilled.is_none() && out.error.is_none() {
            if let Some(path) = &how.spill {
                match open_spill(path, &head).await {
                    Ok(f) => {
                        spill = Some(f);
                        out.spilled = Some(path.clone());
                    }
                    Err(e) => out.error = Some(format!("cannot write {}: {e}", path.display())),
                }
            }
        }
        head.extend_from_slice(&chunk[..room.min(n)]);
        if let Some(f) = spill.as_mut() {
            if let Err(e) = f.write_all(chunk).await {
                // Keep draining the pipe (the child must not block on it), but stop claiming a file.
                out.error = Some(format!("writing the output file failed: {e}"));
                out.spilled = None;
                spill = None;
            }
        }
    }
    if let Some(mut f) = spill {
        let flushed = match f.flush().await {
            Ok(()) => f.sync_all().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            out.error = Some(format!("writing the output file failed: {e}"));
            out.spilled = None;
        }
    }
    out.text = text_prefix(head);
    out
}

async fn open_spill(path: &Path, head: &[u8]) -> std::io::Result<tokio::fs::File> {
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(path)
        .await?;
    f.write_all(head).await?;
    Ok(f)
}

/// Read `pipe` to its end, keeping only the last `keep` bytes.
pub(crate) async fn tail(mut pipe: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut kept: Vec<u8> = Vec::with_capacity(keep * 2);
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > keep * 2 {
                    kept.drain(..kept.len() - keep);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_env_passes_only_the_basics() {
        let env = base_env(|k| match k {
            "HOME" => Some("/home/x".into()),
            "LANG" => Some("C.UTF-8".into()),
            _ => None,
        });
        assert_eq!(
            env,
            vec![
                ("HOME".to_string(), "/home/x".to_string()),
                ("LANG".to_string(), "C.UTF-8".to_string()),
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ]
        );
        assert!(is_reserved("NOTIFY_SOCKET"));
        assert!(is_reserved("WATCHDOG_USEC"));
        assert!(is_reserved("LISTEN_FDS"));
        assert!(!is_reserved("HOME"));
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped() {
        let mut bytes = "ab€".as_bytes().to_vec();
        bytes.pop();
        assert_eq!(text_prefix(bytes), "ab");
        assert_eq!(text_prefix(b"ok".to_vec()), "ok");
    }

    #[tokio::test]
    async fn output_past_the_cap_is_spilled_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let got = capture(
            &data[..],
            Capture {
                cap: 1000,
                spill: Some(path.clone()),
            },
        )
        .await;
        assert_eq!(got.bytes, 300_000);
        assert_eq!(got.text.as_bytes(), &data[..1000]);
        assert_eq!(got.spilled.as_deref(), Some(path.as_path()));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(got.error.is_none());
    }

    #[tokio::test]
    async fn output_within_the_cap_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let got = capture(
            &b"hello"[..],
            Capture {
                cap: 5,
                spill: Some(path.clone()),
            },
        )
        .await;
        assert_eq!(got.text, "hello");
        assert!(got.spilled.is_none());
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn stderr_keeps_only_its_tail() {
        let data: Vec<u8> = (0..50_000u32).map(|i| b'0' + (i % 10) as u8).collect();
        let got = tail(&data[..], 100).await;
        assert_eq!(got, &data[data.len() - 100..]);
    }

    #[tokio::test]
    async fn a_sleeper_is_stopped_at_its_timeout_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "trap '' TERM; sleep 30 & echo $! > {p}; wait",
            p = pids.display()
        );
        let argv = vec!["sh".to_string(), "-c".to_string(), script];
        let child = spawn(Launch {
            argv: &argv,
            env: base_env(|k| std::env::var(k).ok()),
            cwd: dir.path(),
            stdin: Vec::new(),
            stdout: Capture {
                cap: 1024,
                spill: None,
            },
        })
        .unwrap();
        let never = CancellationToken::new();
        let ended = child
            .watch(
                Limits {
                    timeout: Duration::from_millis(300),
                    kill_grace: Duration::from_millis(100),
                    shutdown_grace: Duration::from_millis(100),
                },
                &never,
                &never,
            )
            .await;
        assert_eq!(ended.how, Ending::TimedOut);
        let bg: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleeper was in the group, so it got the SIGKILL: soon gone or a zombie.
        let gone = || {
            let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            stat.is_empty() || state.starts_with('Z')
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {bg} outlived its group's SIGKILL"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let argv = vec!["/nonexistent/specialist".to_string()];
        let err = spawn(Launch {
            argv: &argv,
            env: Vec::new(),
            cwd: Path::new("/"),
            stdin: Vec::new(),
            stdout: Capture {
                cap: 1,
                spill: None,
            },
        })
        .err()
        .unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
