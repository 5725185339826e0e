//! The PostgreSQL peers (procrastinate, graphile-worker) on a throwaway PostgreSQL 15 server with
//! `fsync = on` and `synchronous_commit = on`, each driven by a small script of its own language
//! that speaks one protocol: one process per role, each connects, prints `ready` and waits for `go`
//! on stdin, prints `progress …` lines while it works (echoed on our stderr) and one JSON line of
//! result at the end. See docs/BENCHMARKS.md, "Side by side with other queues".
//!
//! Roles: `schema`, `reset`, `enqueue --clients C (--seconds S | --jobs N) --timeout T`,
//! `worker --concurrency C` (until SIGTERM; then its result: jobs it ran), `watch --timeout T`
//! (after a second line, `go`, until no job is left to run).

use crate::stats::{Samples, Throughput};
use anyhow::{anyhow, bail, Context, Result};
use orchestrator::store::postgres::throwaway::TempPostgres;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How to run one peer's driver.
pub struct Tools {
    /// `procrastinate` or `graphile-worker`, for messages.
    pub name: &'static str,
    /// The interpreter (the virtualenv's python, node).
    pub program: PathBuf,
    pub script: PathBuf,
    /// Set on every role (e.g. `NODE_PATH`).
    pub env: Vec<(String, PathBuf)>,
    /// The peer's, its client library's and its runtime's versions.
    pub version: String,
}

/// A throwaway server with the peer's schema, and its driver to run against it.
pub struct Queue {
    tools: Tools,
    _server: TempPostgres,
    conninfo: String,
    log: PathBuf,
    /// Bound of every long phase (enqueue, burn-down), in seconds.
    timeout: f64,
    /// `postgres --version`.
    pub server_version: String,
}

/// A burn-down: N jobs enqueued with no worker running, then workers started until none is left.
pub struct BurnDown {
    /// Jobs the workers ran (and the watcher saw finished).
    pub jobs: u64,
    pub enqueue: Throughput,
    /// From the workers' start to the last job finished.
    pub completion: Duration,
    /// Worker processes and the concurrency of each.
    pub workers: Vec<usize>,
}

impl BurnDown {
    /// First enqueue → last job finished.
    pub fn total(&self) -> Duration {
        self.enqueue.elapsed + self.completion
    }
}

impl Queue {
    pub fn tools_version(&self) -> &str {
        &self.tools.version
    }

    pub fn start(tools: Tools, log: &Path, timeout: f64) -> Result<Queue> {
        let server = TempPostgres::start_with("-c fsync=on -c synchronous_commit=on")
            .map_err(|e| anyhow!("cannot start PostgreSQL: {e}"))?;
        let server_version = super::install::first_line(
            Command::new(orchestrator::store::postgres::throwaway::bin_dir().join("postgres"))
                .arg("--version"),
        )?;
        let q = Queue {
            conninfo: server.url("postgres"),
            _server: server,
            tools,
            log: log.to_path_buf(),
            timeout,
            server_version,
        };
        q.once(&["schema"])?;
        Ok(q)
    }

    fn spawn(&self, args: &[String]) -> Result<Role> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.tools.program)
            .arg(&self.tools.script)
            .arg("--conninfo")
            .arg(&self.conninfo)
            .args(args)
            .envs(self.tools.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.tools.program.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Role {
            name: self.tools.name,
            role: args.first().cloned().unwrap_or_default(),
            log: self.log.clone(),
            child,
            stdin,
            stdout,
        })
    }

    fn once(&self, args: &[&str]) -> Result<()> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut r = self.spawn(&args)?;
        let status = r.child.wait()?;
        if !status.success() {
            bail!(
                "{} driver {args:?} failed ({status}); its log ends: {}",
                self.tools.name,
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Enqueuing processes for `clients` concurrent clients: one per core at most, the clients
    /// shared out between them (each driver is one process bound to one core).
    fn enqueuers(
        &self,
        clients: usize,
        jobs: Option<u64>,
        seconds: Option<f64>,
    ) -> Result<Vec<Role>> {
        let procs = clients.min(cores());
        let shares = jobs.map(|n| split(n as usize, procs));
        split(clients, procs)
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                let mut args = vec![
                    "enqueue".into(),
                    "--clients".into(),
                    c.to_string(),
                    "--timeout".into(),
                    self.timeout.to_string(),
                ];
                if let Some(s) = &shares {
                    args.extend(["--jobs".into(), s[k].to_string()]);
                }
                if let Some(s) = seconds {
                    args.extend(["--seconds".into(), s.to_string()]);
                }
                self.spawn(&args)
            })
            .collect()
    }

    /// Each client enqueues one job per call, for `seconds`.
    pub fn enqueue(&self, clients: usize, seconds: f64) -> Result<Throughput> {
        let mut roles = self.enqueuers(clients, None, Some(seconds))?;
        go(&mut roles)?;
        let mut results = Vec::new();
        for r in &mut roles {
            results.push(r.result()?);
        }
        Ok(combine(&results))
    }

    /// `jobs` no-op jobs enqueued by `clients` clients with no worker running; then worker
    /// processes (one per core at most, `clients` concurrency shared out between them) run them
    /// until none is left. The workers connect while the jobs are enqueued and start together.
    pub fn burn_down(&self, clients: usize, jobs: u64) -> Result<BurnDown> {
        self.once(&["reset"])?;
        let procs = clients.min(cores());
        let concurrency = split(clients, procs);
        let mut workers = concurrency
            .iter()
            .map(|c| self.spawn(&["worker".into(), "--concurrency".into(), c.to_string()]))
            .collect::<Result<Vec<_>>>()?;
        let mut watch =
            self.spawn(&["watch".into(), "--timeout".into(), self.timeout.to_string()])?;
        let mut enqueuers = self.enqueuers(clients, Some(jobs), None)?;
        for r in workers.iter_mut().chain([&mut watch]) {
            r.expect("ready")?;
        }
        eprintln!(
            "  {}: enqueuing {jobs} jobs, {clients} clients",
            self.tools.name
        );
        go(&mut enqueuers)?;
        let mut results = Vec::new();
        for r in &mut enqueuers {
            results.push(r.result()?);
        }
        let enqueue = combine(&results);
        if enqueue.ok != jobs {
            bail!(
                "{} enqueued {} jobs of {jobs} within {} s",
                self.tools.name,
                enqueue.ok,
                self.timeout
            );
        }
        eprintln!(
            "  {}: {jobs} enqueued in {:.1} s; workers {concurrency:?} running them",
            self.tools.name,
            enqueue.elapsed.as_secs_f64()
        );
        for r in workers.iter_mut().chain([&mut watch]) {
            r.send("go")?;
        }
        let done = watch.result()?;
        let mut ran = 0;
        for w in &mut workers {
            ran += w.stop()?;
        }
        // Both sides must agree: the jobs the workers ran, and the jobs the watcher saw finished
        // successfully (procrastinate keeps them as `succeeded`; graphile-worker deletes them).
        if ran != jobs || done.ok != jobs {
            bail!(
                "{}: the workers ran {ran} jobs of {jobs}, {} finished successfully (bound {} s)",
                self.tools.name,
                done.ok,
                self.timeout
            );
        }
        Ok(BurnDown {
            jobs: ran,
            enqueue,
            completion: Duration::from_secs_f64(done.seconds),
            workers: concurrency,
        })
    }
}

/// One driver process; killed if still running when dropped (on an error).
struct Role {
    name: &'static str,
    role: String,
    log: PathBuf,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Role {
    /// The next line that is not progress; progress goes to our stderr.
    fn line(&mut self) -> Result<String> {
        loop {
            super::interrupt::check()?;
            let mut l = String::new();
            if self.stdout.read_line(&mut l)? == 0 {
                let status = self.child.wait()?;
                bail!(
                    "{} {} exited ({status}) before answering; its log ends: {}",
                    self.name,
                    self.role,
                    log_tail(&self.log)
                );
            }
            match l.trim_end().strip_prefix("progress ") {
                Some(p) => eprintln!("  {} {}: {p}", self.name, self.role),
                None => return Ok(l.trim_end().to_string()),
            }
        }
    }

    fn expect(&mut self, want: &str) -> Result<()> {
        let got = self.line()?;
        if got != want {
            bail!(
                "{} {} said {got:?}, expected {want:?}",
                self.name,
                self.role
            );
        }
        Ok(())
    }

    fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn result(&mut self) -> Result<DriverResult> {
        let r = parse_result(&self.line()?)?;
        self.child.wait()?;
        Ok(r)
    }

    /// SIGTERM: the worker finishes the jobs in hand and prints how many it ran.
    fn stop(&mut self) -> Result<u64> {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the {} worker did not stop within 30 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut rest = String::new();
        let mut ran = 0;
        while self.stdout.read_line(&mut rest)? > 0 {
            if let Ok(r) = parse_result(rest.trim_end()) {
                ran = r.ok;
            }
            rest.clear();
        }
        Ok(ran)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of the drivers' log (it is removed with the run's directory), for an error.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" / ")
}

/// All processes connected, then all started at once.
fn go(roles: &mut [Role]) -> Result<()> {
    for r in roles.iter_mut() {
        r.expect("ready")?;
    }
    for r in roles.iter_mut() {
        r.send("go")?;
    }
    Ok(())
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `n` shared out over `parts` as evenly as possible (the first ones take the remainder).
pub fn split(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|k| n / parts + usize::from(k < n % parts))
        .collect()
}

/// One role's result line.
#[derive(Debug, PartialEq)]
pub struct DriverResult {
    pub ok: u64,
    pub seconds: f64,
    pub latencies_us: Vec<u64>,
}

pub fn parse_result(line: &str) -> Result<DriverResult> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("a driver printed {line:?}"))?;
    let ok = v["ok"]
        .as_u64()
        .context("no ok count in the driver's result")?;
    let seconds = v["seconds"]
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0)
        .context("no positive seconds in the driver's result")?;
    let latencies_us = match v.get("latencies_us") {
        None => Vec::new(),
        Some(l) => l
            .as_array()
            .context("latencies_us is not a list")?
            .iter()
            .map(|x| x.as_u64().context("a latency is not a whole number"))
            .collect::<Result<_>>()?,
    };
    Ok(DriverResult {
        ok,
        seconds,
        latencies_us,
    })
}

/// Processes that ran side by side as one run: their counts add up, the slowest one's time counts.
pub fn combine(results: &[DriverResult]) -> Throughput {
    let seconds = results.iter().map(|r| r.seconds).fold(0.0, f64::max);
    Throughput {
        ok: results.iter().map(|r| r.ok).sum(),
        errors: 0,
        elapsed: Duration::from_secs_f64(seconds),
        latency: Samples(
            results
                .iter()
                .flat_map(|r| r.latencies_us.iter().copied())
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_gives_its_count_time_and_latencies() {
        let r = parse_result(
            r#"{"role": "enqueue", "ok": 3, "seconds": 0.5, "latencies_us": [10, 2000, 30]}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            DriverResult {
                ok: 3,
                seconds: 0.5,
                latencies_us: vec![10, 2000, 30]
            }
        );
        let w = parse_result(r#"{"role": "watch", "ok": 100000, "seconds": 12.5, "polls": 9}"#)
            .unwrap();
        assert_eq!((w.ok, w.latencies_us.len()), (100_000, 0));
    }

    #[test]
    fn a_broken_result_line_is_an_error_not_a_zero() {
        for bad in [
            "ready",
            r#"{"ok": 3}"#,
            r#"{"ok": 3, "seconds": 0}"#,
            r#"{"ok": -1, "seconds": 1.0}"#,
            r#"{"ok": 3, "seconds": 1.0, "latencies_us": [1.5]}"#,
        ] {
            assert!(parse_result(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn processes_side_by_side_add_their_counts_and_take_the_slowest_time() {
        let t = combine(&[
            DriverResult {
                ok: 100,
                seconds: 1.0,
                latencies_us: vec![1000; 100],
            },
            DriverResult {
                ok: 300,
                seconds: 2.0,
                latencies_us: vec![3000; 300],
            },
        ]);
        assert_eq!(t.ok, 400);
        assert_eq!(t.per_sec(), 200.0);
        assert_eq!(t.latency.len(), 400);
        assert_eq!(t.latency.median_ms(), 3.0);
    }

    #[test]
    fn work_is_shared_out_evenly_and_completely() {
        assert_eq!(split(100_000, 2), vec![50_000, 50_000]);
        assert_eq!(split(64, 2), vec![32, 32]);
        assert_eq!(split(7, 3), vec![3, 2, 2]);
        assert_eq!(split(1, 1), vec![1]);
        assert_eq!(split(5, 0), vec![5]);
    }
}
