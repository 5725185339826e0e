//! Our side of the rows: daemons started on a fresh store each, in synthetic mode (as `orchbench
//! all`), or in shadow mode with a no-op specialist for the worker burn-down.

use super::{install, interrupt};
use crate::client::Conn;
use crate::load::Stop;
use crate::proc::Daemon;
use crate::scenarios;
use crate::stats::Throughput;
use anyhow::{bail, Context, Result};
use orchestrator_proto::message::{ReloadOutcome, Request, Response};
use orchestrator_proto::{TaskKind, TaskState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The agent every bench goal is routed to (`scenarios::DONE_GOAL`, the built-in writing rule).
const AGENT: &str = "main";

pub struct Ours {
    pub bin: PathBuf,
    pub ctl: PathBuf,
    pub dir: PathBuf,
    next: usize,
}

/// N shadow tasks submitted while their agent is paused, then run by a no-op specialist.
pub struct WorkerBurnDown {
    pub tasks: u64,
    pub enqueue: Throughput,
    /// From the resume to the last task terminal.
    pub completion: Duration,
    /// The specialist's command.
    pub command: PathBuf,
}

impl WorkerBurnDown {
    pub fn total(&self) -> Duration {
        self.enqueue.elapsed + self.completion
    }
}

impl Ours {
    pub fn new(bin: PathBuf, ctl: PathBuf, dir: PathBuf) -> Ours {
        Ours {
            bin,
            ctl,
            dir,
            next: 0,
        }
    }

    fn start(&mut self, config: &str) -> Result<(Daemon, PathBuf, PathBuf)> {
        self.next += 1;
        let socket = self.dir.join(format!("run/o{}.sock", self.next));
        let path = self.dir.join(format!("orchestrator{}.toml", self.next));
        std::fs::write(&path, config)?;
        let d = Daemon::start(
            &self.bin,
            &socket,
            &self.dir.join(format!("state{}", self.next)),
            Some(&path),
            &self.dir.join("daemon.log"),
        )?;
        Ok((d, socket, path))
    }

    /// A synthetic daemon on a fresh store.
    pub fn fresh(&mut self) -> Result<(Daemon, PathBuf)> {
        let (d, socket, _) = self.start("mode = \"synthetic\"\n")?;
        Ok((d, socket))
    }

    /// `jobs` shadow tasks (rounded up to a multiple of `clients`) submitted on `clients`
    /// connections while agent `main` is paused; then resumed, its specialist (`true`, at most
    /// `clients` alive) runs each, until every task is terminal or `timeout` has passed.
    pub fn worker_burn_down(
        &mut self,
        clients: usize,
        jobs: u64,
        timeout: Duration,
    ) -> Result<WorkerBurnDown> {
        let command = ["/bin/true", "/usr/bin/true"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| install::on_path("true"))
            .context("no `true` program")?;
        let tables = format!(
            "[agents.{AGENT}]\ncommand = [\"{}\"]\nmax_concurrent = {clients}\n\n[http]\nlisten = \"off\"\n",
            command.display()
        );
        let (d, socket, config) = self.start(&tables)?;
        let mut conn = Conn::open(&socket)?;
        // To shadow the way an operator may on a fresh store: a recorded override, then the mode.
        conn.ok(Request::GateOverride {
            mode: TaskKind::Shadow,
            reason: "orchbench peers".into(),
        })?;
        std::fs::write(&config, format!("mode = \"shadow\"\n{tables}"))?;
        match conn.ok(Request::Reload)? {
            Response::Reload(r)
                if r.outcome == ReloadOutcome::Applied && r.mode == TaskKind::Shadow => {}
            other => bail!("the daemon did not move to shadow mode: {other:?}"),
        }
        conn.ok(Request::AgentPause {
            agent: AGENT.into(),
            reason: "orchbench peers: burn-down enqueue".into(),
        })?;
        eprintln!("  us: submitting {jobs} shadow tasks, {clients} clients, agent {AGENT} paused");
        let enqueue = submit_all(&socket, "submitted", clients, jobs)?;
        eprintln!(
            "  us: {} submitted in {:.1} s; {} running them, at most {clients} at once",
            enqueue.ok,
            enqueue.elapsed.as_secs_f64(),
            command.display()
        );
        let started = Instant::now();
        conn.ok(Request::AgentResume {
            agent: AGENT.into(),
            reason: "orchbench peers: burn-down run".into(),
        })?;
        let mut shown = started;
        let counts = loop {
            interrupt::check()?;
            let counts = shadow_counts(&mut conn)?;
            let left: u64 = counts
                .iter()
                .filter(|(s, _)| !s.is_terminal())
                .map(|(_, n)| n)
                .sum();
            if left == 0 {
                break counts;
            }
            if started.elapsed() > timeout {
                bail!("{left} shadow tasks were not terminal after {timeout:?}: {counts:?}");
            }
            if shown.elapsed() >= Duration::from_secs(2) {
                eprintln!(
                    "  us: {left} left after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                shown = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let completion = started.elapsed();
        let done: u64 = counts
            .iter()
            .filter(|(s, _)| *s == TaskState::Done)
            .map(|(_, n)| n)
            .sum();
        if done != enqueue.ok {
            bail!(
                "{done} of {} shadow tasks done: {counts:?}; see {}",
                enqueue.ok,
                self.dir.join("daemon.log").display()
            );
        }
        drop(conn);
        d.stop()?;
        Ok(WorkerBurnDown {
            tasks: done,
            enqueue,
            completion,
            command,
        })
    }
}

/// The shadow tasks by state.
fn shadow_counts(conn: &mut Conn) -> Result<Vec<(TaskState, u64)>> {
    match conn.ok(Request::Status)? {
        Response::Status(s) | Response::StatusWithStorage(s, _) => Ok(s
            .counts
            .iter()
            .filter(|c| c.kind == TaskKind::Shadow)
            .map(|c| (c.state, c.count))
            .collect()),
        other => bail!("status answered {other:?}"),
    }
}

/// `jobs` submits (rounded up to a multiple of `clients`) on `clients` connections, with progress
/// lines of what `status` counts as `what`; cut short, as an error, by Ctrl-C or SIGTERM.
pub fn submit_all(socket: &Path, what: &str, clients: usize, jobs: u64) -> Result<Throughput> {
    let per = jobs.div_ceil(clients as u64);
    let done = with_progress(socket, what, || {
        scenarios::submit(socket, clients, Stop::CountUnless(per, interrupt::noted))
    })?;
    interrupt::check()?;
    Ok(done)
}

/// Run `f` while a second connection prints every 2 s how many tasks the daemon holds.
fn with_progress<T>(socket: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let Ok(mut conn) = Conn::open(socket) else {
                return;
            };
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if last.elapsed() < Duration::from_secs(2) {
                    continue;
                }
                last = Instant::now();
                if let Ok(Response::Status(st) | Response::StatusWithStorage(st, _)) =
                    conn.ok(Request::Status)
                {
                    let n: u64 = st.counts.iter().map(|c| c.count).sum();
                    eprintln!("  us: {n} {what}");
                }
            }
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    })
}
