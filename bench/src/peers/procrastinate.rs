//! procrastinate (a PostgreSQL job queue, PyPI) in a virtualenv in the cache, on a throwaway
//! PostgreSQL 15 server with `fsync = on` and `synchronous_commit = on`, driven by
//! `procrastinate_driver.py`: one process per role, started together, one JSON line of result each.

use super::install;
use crate::stats::{Samples, Throughput};
use anyhow::{anyhow, bail, Context, Result};
use orchestrator::store::postgres::throwaway::TempPostgres;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The release this benchmark installs.
pub const VERSION: &str = "3.10.0";

/// What a deferred job is once `defer` returns: the commit of its own transaction.
pub const DURABILITY: &str = "fsync: one PostgreSQL transaction per job, `fsync = on`, \
`synchronous_commit = on` (WAL flushed before `defer` returns)";

const DRIVER: &str = include_str!("procrastinate_driver.py");

pub struct Tools {
    python: PathBuf,
    driver: PathBuf,
    /// `procrastinate 3.10.0, psycopg 3.x, Python 3.x`.
    pub version: String,
}

/// The virtualenv in `cache/venv`, made and filled when it lacks procrastinate.
pub fn locate(cache: &Path, install: bool) -> Result<Tools> {
    let venv = cache.join("venv");
    let python = venv.join("bin/python");
    let check = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import procrastinate, psycopg, psycopg_pool; assert procrastinate.__version__ == '{VERSION}'")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !check(&python) {
        if !install {
            bail!("no procrastinate {VERSION} in {}", venv.display());
        }
        if !python.is_file() {
            let system = install::on_path("python3").context("python3 is not on PATH")?;
            install::step(
                "making a virtualenv for procrastinate",
                Command::new(system).args(["-m", "venv"]).arg(&venv),
            )?;
        }
        install::step(
            "installing procrastinate",
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                &format!("procrastinate=={VERSION}"),
                "psycopg[binary,pool]",
            ]),
        )?;
    }
    let driver = cache.join("procrastinate_driver.py");
    std::fs::write(&driver, DRIVER)?;
    let version = install::first_line(Command::new(&python).args([
        "-c",
        "import importlib.metadata as m, platform; \
         print(f\"procrastinate {m.version('procrastinate')}, psycopg {m.version('psycopg')}, Python {platform.python_version()}\")",
    ]))?;
    Ok(Tools {
        python,
        driver,
        version,
    })
}

/// A throwaway server with procrastinate's schema, and the driver to run against it.
pub struct Queue {
    tools: Tools,
    _server: TempPostgres,
    conninfo: String,
    log: PathBuf,
    /// `postgres --version`.
    pub server_version: String,
}

impl Queue {
    pub fn tools_version(&self) -> &str {
        &self.tools.version
    }

    pub fn start(tools: Tools, log: &Path) -> Result<Queue> {
        let server = TempPostgres::start_with("-c fsync=on -c synchronous_commit=on")
            .map_err(|e| anyhow!("cannot start PostgreSQL: {e}"))?;
        let server_version = install::first_line(
            Command::new(orchestrator::store::postgres::throwaway::bin_dir().join("postgres"))
                .arg("--version"),
        )?;
        let q = Queue {
            conninfo: server.url("postgres"),
            _server: server,
            tools,
            log: log.to_path_buf(),
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
        let mut child = Command::new(&self.tools.python)
            .arg(&self.tools.driver)
            .arg("--conninfo")
            .arg(&self.conninfo)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.tools.python.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Role {
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
                "procrastinate driver {args:?} failed ({status}); see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Enqueuing processes for `clients` concurrent clients: one per core at most, the clients
    /// shared out between them (the driver is one Python process each, bound to one core).
    fn enqueuers(&self, clients: usize, limit: &[String]) -> Result<Vec<Role>> {
        let procs = clients.min(cores());
        split(clients, procs)
            .into_iter()
            .map(|c| {
                let mut args = vec!["enqueue".into(), "--clients".into(), c.to_string()];
                args.extend(limit.iter().cloned());
                self.spawn(&args)
            })
            .collect()
    }

    /// Each client defers one job per call, for `seconds`.
    pub fn enqueue(&self, clients: usize, seconds: f64) -> Result<Throughput> {
        let mut roles = self.enqueuers(clients, &["--seconds".into(), seconds.to_string()])?;
        go(&mut roles)?;
        let mut results = Vec::new();
        for r in &mut roles {
            results.push(r.result()?);
        }
        Ok(combine(&results))
    }

    /// `jobs` no-op jobs deferred by `clients` clients while a worker of that concurrency runs
    /// them: the time from the first defer to no job left todo or doing.
    pub fn burn_down(&self, clients: usize, jobs: u64) -> Result<BurnDown> {
        self.once(&["reset"])?;
        let mut worker =
            self.spawn(&["worker".into(), "--concurrency".into(), clients.to_string()])?;
        let mut watch = self.spawn(&["watch".into()])?;
        let shares = split(jobs as usize, clients.min(cores()));
        let mut enqueuers = Vec::new();
        for (share, c) in shares.iter().zip(split(clients, clients.min(cores()))) {
            enqueuers.push(self.spawn(&[
                "enqueue".into(),
                "--clients".into(),
                c.to_string(),
                "--jobs".into(),
                share.to_string(),
            ])?);
        }
        for r in enqueuers.iter_mut().chain([&mut worker, &mut watch]) {
            r.expect("ready")?;
        }
        for r in enqueuers.iter_mut().chain([&mut worker, &mut watch]) {
            r.send("go")?;
        }
        let mut results = Vec::new();
        for r in &mut enqueuers {
            results.push(r.result()?);
        }
        let enqueued = combine(&results);
        watch.send("enqueued")?;
        let done = watch.result()?;
        worker.stop()?;
        if done.ok != jobs {
            bail!("procrastinate finished {} jobs of {jobs}", done.ok);
        }
        Ok(BurnDown {
            jobs: done.ok,
            elapsed: Duration::from_secs_f64(done.seconds),
            enqueue: enqueued,
        })
    }
}

pub struct BurnDown {
    pub jobs: u64,
    /// From the first defer to the last job done.
    pub elapsed: Duration,
    pub enqueue: Throughput,
}

/// One driver process.
struct Role {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Role {
    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            let status = self.child.wait()?;
            bail!("procrastinate driver exited ({status}) before answering");
        }
        Ok(l.trim_end().to_string())
    }

    fn expect(&mut self, want: &str) -> Result<()> {
        let got = self.line()?;
        if got != want {
            bail!("procrastinate driver said {got:?}, expected {want:?}");
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

    /// SIGTERM: procrastinate's worker finishes the jobs in hand and returns.
    fn stop(&mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the procrastinate worker did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
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

fn cores() -> usize {
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
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("procrastinate driver printed {line:?}"))?;
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
