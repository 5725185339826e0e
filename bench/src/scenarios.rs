//! Each figure of the benchmark as a function: the subcommands print one, `all` runs them in turn.

use crate::client::{submit_request, Conn, Reply};
use crate::load::{self, Outcome, Stop};
use crate::stats::{Samples, Throughput};
use anyhow::{bail, Context, Result};
use orchestrator_proto::message::Request;
use orchestrator_proto::{Response, TaskState};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lands in `done` with the built-in routing (writing-tasks → main, no approval).
pub const DONE_GOAL: &str = "draft an email reply to the procurement team";
/// Lands in `awaiting_approval` (code-tasks → coder, approval required).
pub const APPROVAL_GOAL: &str = "please debug this function and fix the off-by-one";

fn outcome(reply: Reply) -> Outcome {
    match reply {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

/// The store's writes and the commits that held them so far, from the daemon's metrics.
#[derive(Debug, Clone, Copy)]
pub struct Grouping {
    writes: u64,
    commits: u64,
}

impl Grouping {
    /// Before a measured run: `None` from a daemon older than these counters, for which
    /// [`Grouping::print_since`] then prints nothing.
    pub fn before(socket: &Path) -> Option<Grouping> {
        Grouping::read(socket).ok()
    }

    /// After the run: print how its writes shared commits.
    pub fn print_since(before: Option<Grouping>, socket: &Path) -> Result<()> {
        let Some(before) = before else {
            return Ok(());
        };
        if let Some(line) = Grouping::read(socket)?.since(&before) {
            println!("{line}");
        }
        Ok(())
    }

    fn read(socket: &Path) -> Result<Grouping> {
        let text = match Conn::open(socket)?.ok(Request::Metrics)? {
            Response::Metrics(text) => text,
            other => bail!("metrics answered {other:?}"),
        };
        let counter = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .map(|v| v as u64)
                .with_context(|| format!("no {name} in the daemon's metrics"))
        };
        Ok(Grouping {
            writes: counter("orchestrator_store_writes_total")?,
            commits: counter("orchestrator_store_commits_total")?,
        })
    }

    /// How the writes since `before` were grouped, as one line; `None` when the backend does not
    /// group them (no commits counted).
    fn since(&self, before: &Grouping) -> Option<String> {
        let writes = self.writes.saturating_sub(before.writes);
        let commits = self.commits.saturating_sub(before.commits);
        (commits > 0).then(|| {
            format!(
                "store writes per commit: {:.1} ({writes} writes in {commits} commits)",
                writes as f64 / commits as f64
            )
        })
    }
}

/// Durable submits: every reply comes after the task's commit.
pub fn submit(socket: &Path, conns: usize, stop: Stop) -> Result<Throughput> {
    let (t, errors) = load::run(
        socket,
        conns,
        stop,
        |_, _| submit_request(DONE_GOAL),
        |_, _, reply| Ok(outcome(reply)),
    )?;
    if let Some(e) = errors.first() {
        bail!("submit failed: {e}");
    }
    Ok(t)
}

/// Create `n` tasks waiting for approval, on `conns` connections.
pub fn precreate_awaiting(socket: &Path, conns: usize, n: u64) -> Result<Vec<String>> {
    let ids = Mutex::new(Vec::with_capacity(n as usize));
    let per = n.div_ceil(conns as u64);
    let (_, errors) = load::run(
        socket,
        conns,
        Stop::Count(per),
        |_, _| submit_request(APPROVAL_GOAL),
        |_, _, reply| match reply {
            Ok(Response::Task(t)) if t.state == TaskState::AwaitingApproval => {
                ids.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(t.id);
                Ok(Outcome::Ok)
            }
            Ok(Response::Task(t)) => Ok(Outcome::Refused(format!(
                "task {} is {}, not awaiting_approval",
                t.id, t.state
            ))),
            Ok(other) => Ok(Outcome::Refused(format!("submit answered {other:?}"))),
            Err(e) => Ok(Outcome::Refused(e.to_string())),
        },
    )?;
    if let Some(e) = errors.first() {
        bail!("pre-creating tasks failed: {e}");
    }
    ids.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))
}

/// Approve even-numbered and reject odd-numbered tasks of `ids` (in the order they were created),
/// spread over `conns` connections. Each connection decides a block of its own (`oldest_first`
/// false: the decisions that meet in one commit are of tasks created far apart), or all of them
/// take the oldest task still waiting, in turn (`oldest_first`: they are of tasks created together).
pub fn transitions(
    socket: &Path,
    conns: usize,
    ids: &[String],
    oldest_first: bool,
) -> Result<Throughput> {
    let per = ids.len() / conns;
    if per == 0 {
        bail!("fewer tasks ({}) than connections ({conns})", ids.len());
    }
    let request = |c: usize, i: u64| {
        let k = if oldest_first {
            i as usize * conns + c
        } else {
            c * per + i as usize
        };
        let id = ids[k].clone();
        if k & 1 == 0 {
            Request::Approve { id }
        } else {
            Request::Reject {
                id,
                reason: "benchmark: not this time".into(),
            }
        }
    };
    let (t, errors) = load::run(
        socket,
        conns,
        Stop::Count(per as u64),
        request,
        |_, _, reply| Ok(outcome(reply)),
    )?;
    if let Some(e) = errors.first() {
        bail!("a transition failed: {e}");
    }
    Ok(t)
}

/// `status` round trips on one open connection.
pub fn roundtrip(socket: &Path, requests: u64) -> Result<Throughput> {
    let (t, errors) = load::run(
        socket,
        1,
        Stop::Count(requests),
        |_, _| Request::Status,
        |_, _, reply| Ok(outcome(reply)),
    )?;
    if let Some(e) = errors.first() {
        bail!("status failed: {e}");
    }
    Ok(t)
}

/// Run `orchctl ARGS` as a whole process `runs` times; the wall time of each.
pub fn ctl_runs(ctl: &Path, socket: &Path, args: &[&str], runs: usize) -> Result<Samples> {
    let mut s = Samples::default();
    for _ in 0..runs {
        let t = Instant::now();
        let status = ctl_once(ctl, socket, args)?;
        s.push(t.elapsed());
        if !status {
            bail!("orchctl {args:?} failed");
        }
    }
    Ok(s)
}

fn ctl_once(ctl: &Path, socket: &Path, args: &[&str]) -> Result<bool> {
    let status = Command::new(ctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", ctl.display()))?;
    Ok(status.success())
}

/// `shadow-summary --window 24` over the wire, `runs` times; returns the latencies and the total the
/// daemon counted.
pub fn shadow_summary(socket: &Path, runs: usize) -> Result<(Samples, u64)> {
    let mut conn = Conn::open(socket)?;
    let mut s = Samples::default();
    let mut total = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let r = conn.ok(Request::ShadowSummary { window_hours: 24 })?;
        s.push(t.elapsed());
        if let Response::ShadowSummary(sum) = r {
            total = sum.total;
        }
    }
    Ok((s, total))
}

/// `reload` over the wire, `runs` times.
pub fn reload(socket: &Path, runs: usize) -> Result<Samples> {
    let mut conn = Conn::open(socket)?;
    let mut s = Samples::default();
    for _ in 0..runs {
        let t = Instant::now();
        conn.ok(Request::Reload)?;
        s.push(t.elapsed());
    }
    Ok(s)
}

#[derive(Debug)]
pub struct SweepRun {
    pub elapsed: Duration,
    pub expired: u64,
    pub deleted: u64,
    /// `orchctl status` as a whole process, back to back while the sweep ran.
    pub ctl_status: Samples,
    /// `status` on an open connection every 2 ms while the sweep ran.
    pub wire_status: Samples,
}

/// Run a sweep and measure `status` while it runs.
pub fn sweep(socket: &Path, ctl: &Path) -> Result<SweepRun> {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let ctl_thread = s.spawn(|| -> Result<Samples> {
            let mut samples = Samples::default();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                if !ctl_once(ctl, socket, &["status"])? {
                    bail!("orchctl status failed during the sweep");
                }
                samples.push(t.elapsed());
            }
            Ok(samples)
        });
        let wire_thread = s.spawn(|| -> Result<Samples> {
            let mut conn = Conn::open(socket)?;
            let mut samples = Samples::default();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                conn.ok(Request::Status)?;
                samples.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(samples)
        });
        let swept = (|| -> Result<(Duration, u64, u64)> {
            let mut conn = Conn::open(socket)?;
            let t = Instant::now();
            let r = conn.ok(Request::Sweep)?;
            let elapsed = t.elapsed();
            match r {
                Response::Sweep(rep) => Ok((elapsed, rep.expired, rep.deleted)),
                other => bail!("sweep answered {other:?}"),
            }
        })();
        done.store(true, Ordering::Relaxed);
        let ctl_status = ctl_thread
            .join()
            .map_err(|_| anyhow::anyhow!("panicked"))??;
        let wire_status = wire_thread
            .join()
            .map_err(|_| anyhow::anyhow!("panicked"))??;
        let (elapsed, expired, deleted) = swept?;
        Ok(SweepRun {
            elapsed,
            expired,
            deleted,
            ctl_status,
            wire_status,
        })
    })
}

/// `conns` connections × `requests` each, cycling submit, show (of that submit), status and route.
/// Returns the run and the first few error messages.
pub fn mixed_load(socket: &Path, conns: usize, requests: u64) -> Result<(Throughput, Vec<String>)> {
    let last: Vec<Mutex<String>> = (0..conns).map(|_| Mutex::new(String::new())).collect();
    let request = |c: usize, i: u64| match i % 4 {
        0 => submit_request(DONE_GOAL),
        1 => Request::ShowTask {
            id: last[c].lock().map(|l| l.clone()).unwrap_or_default(),
        },
        2 => Request::Status,
        _ => Request::Route {
            goal: APPROVAL_GOAL.into(),
            capabilities: vec!["code".into()],
        },
    };
    let judge = |c: usize, i: u64, reply: Reply| {
        if i.is_multiple_of(4) {
            match &reply {
                Ok(Response::Task(t)) => {
                    if let Ok(mut l) = last[c].lock() {
                        l.clone_from(&t.id);
                    }
                }
                Ok(other) => return Ok(Outcome::Refused(format!("submit answered {other:?}"))),
                Err(_) => {}
            }
        }
        Ok(outcome(reply))
    };
    load::run(socket, conns, Stop::Count(requests), request, judge)
}
