//! Benchmark of the sweeper: one sweep over a large archive while
//! `status` is asked in a loop, and submits keep arriving.
//!
//! It seeds a store of `--tasks` tasks (through the store's own API, as the daemon writes them) of
//! which `--due` become due for the chosen `--scenario` shortly after the daemon started (so the
//! sweep at start finds nothing), starts the real `orchestratord`, and then, while three loops run —
//! `status` over one kept connection every millisecond, the real `orchctl status` process back to
//! back, and `submit` every 5 ms — runs `orchctl sweep`. It prints the sweep's time and the
//! latencies seen during it, and at idle.
//!
//! ```text
//! cargo build --release --bins --example sweep_bench
//! target/release/examples/sweep_bench --tasks 100000 --due 10000 --scenario expiry
//! target/release/examples/sweep_bench --tasks 100000 --due 10000 --scenario retention
//! target/release/examples/sweep_bench --tasks 100000 --due 100000 --scenario retention
//! target/release/examples/sweep_bench --tasks 100000 --due 100000 --scenario expiry
//! ```
//!
//! Results (release build, 2 shared vCPUs, ext4 on a virtual disk, `synchronous=FULL`; each task
//! has 2–4 trajectory events; latencies p50 / p99 / max while the sweep ran):
//!
//! | tasks / due | sweep | `status` (connection) | `orchctl status` | submit |
//! |---|---|---|---|---|
//! | 100k / 10k expiry | 0.52 s | 0.06 / 2.6 / 3.9 ms | 1.6 / 10.4 / 27.7 ms | 5.3 / 35.7 / 35.7 ms |
//! | 100k / 10k retention | 0.22 s | 0.06 / 2.5 / 4.3 ms | 2.0 / 8.0 / 8.0 ms | 4.4 / 11.6 / 11.6 ms |
//! | 100k / 100k retention | 1.9 s | 0.05 / 1.6 / 4.9 ms | 1.7 / 6.1 / 21.7 ms | 3.2 / 11.9 / 15.0 ms |
//! | 100k / 100k expiry | 5.7 s | 0.09 / 3.8 / 13.2 ms | 1.6 / 7.8 / 12.8 ms | 5.1 / 26.1 / 38.9 ms |
//!
//! At idle the same loops saw `status` 0.05 / 1.1 ms, `orchctl status` 1.8 / 6 ms (mostly process
//! start) and submit 0.8 / 7 ms (p50 / p99); idle maxima reach tens of ms on this shared host.

use orchestrator::clock::now_ms;
use orchestrator::machine::Action;
use orchestrator::store::{NewTask, Patch, Store, TransitionOp};
use orchestrator_proto::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use orchestrator_proto::message::{SubmitRequest, SweepReport};
use orchestrator_proto::{ClientMessage, Hello, Request, Response, ServerMessage, TaskKind};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result as Res};

const DAY: i64 = 86_400_000;
/// How long after seeding the due tasks become due: enough for the daemon to open the store and
/// finish its sweep at start first.
const DUE_MARGIN_MS: i64 = 15_000;
const SEED_JOB: usize = 5_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// `--due` tasks in `awaiting_approval` pass their `expiresAt`.
    Expiry,
    /// `--due` `done` tasks pass the synthetic retention (1 day).
    Retention,
}

struct Args {
    tasks: usize,
    due: usize,
    scenario: Scenario,
    bin_dir: PathBuf,
}

fn args() -> Res<Args> {
    let mut a = Args {
        tasks: 100_000,
        due: 10_000,
        scenario: Scenario::Expiry,
        bin_dir: std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .context("cannot find the target directory")?,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tasks" => a.tasks = value.parse()?,
            "--due" => a.due = value.parse()?,
            "--bin-dir" => a.bin_dir = value.into(),
            "--scenario" => {
                a.scenario = match value.as_str() {
                    "expiry" => Scenario::Expiry,
                    "retention" => Scenario::Retention,
                    other => bail!("unknown scenario {other}"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.due > a.tasks {
        bail!("--due cannot exceed --tasks");
    }
    Ok(a)
}

/// Seed the store: `due` tasks that become due at the returned time, the rest a mix that never is
/// (awaiting approval with a week to live, recently done, recently failed).
fn seed(db: &Path, a: &Args) -> Res<i64> {
    let store = Store::open(db)?;
    let t0 = Instant::now();
    let base = now_ms() - 3_600_000;
    // The bulk first; the due tasks last, so that their due time can be fixed once the bulk is in.
    seed_range(&store, a, a.due, a.tasks, base, None)?;
    let due_at = now_ms() + DUE_MARGIN_MS;
    seed_range(&store, a, 0, a.due, base, Some(due_at))?;
    store.close();
    eprintln!("seeding took {:.1} s", t0.elapsed().as_secs_f64());
    Ok(due_at)
}

/// Seed tasks `start..end`; those below `a.due` become due at `due_at`.
fn seed_range(
    store: &Store,
    a: &Args,
    start: usize,
    end: usize,
    base: i64,
    due_at: Option<i64>,
) -> Res<()> {
    let scenario = a.scenario;
    let mut made = start;
    while made < end {
        let (from, to, due) = (made, (made + SEED_JOB).min(end), a.due);
        store.write_blocking(move |b| {
            for i in from..to {
                let id = ulid::Ulid::generate().to_string();
                let is_due = i < due;
                let approval = match (is_due, scenario) {
                    (true, Scenario::Expiry) => true,
                    (true, Scenario::Retention) => false,
                    (false, _) => i % 3 == 0,
                };
                let expires_ms = match (due_at, scenario) {
                    (Some(at), Scenario::Expiry) => at,
                    _ => base + 7 * DAY,
                };
                let completed = match (due_at, scenario) {
                    (Some(at), Scenario::Retention) => at - 86_400_000,
                    _ => base,
                };
                b.insert_task(
                    NewTask {
                        id: id.clone(),
                        kind: TaskKind::Synthetic,
                        goal: if is_due { "due" } else { "bulk" }.into(),
                        workspace_dir: None,
                        required_capabilities: Vec::new(),
                        submitted_by: "bench".into(),
                        harness: false,
                        created_ms: base,
                        expires_ms,
                    },
                    "bench",
                )?;
                if !is_due && i % 3 == 1 {
                    b.transition(TransitionOp::new(&id, Action::Fail, "bench", base))?;
                    continue;
                }
                let agent = Patch {
                    agent: Some("coder".into()),
                    ..Patch::default()
                };
                b.transition(TransitionOp::new(&id, Action::Route, "bench", base).patch(agent))?;
                b.transition(TransitionOp::new(&id, Action::Start, "bench", base))?;
                let complete = Action::Complete {
                    approval_required: approval,
                };
                b.transition(TransitionOp::new(&id, complete, "bench", completed))?;
            }
            Ok(())
        })?;
        made = to;
        if made.is_multiple_of(20_000) || made == end {
            eprintln!("seeded {made}/{end}");
        }
    }
    Ok(())
}

struct Client {
    stream: UnixStream,
}

impl Client {
    fn connect(socket: &Path) -> Res<Client> {
        let mut c = Client {
            stream: UnixStream::connect(socket)?,
        };
        c.stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        write_frame(
            &mut c.stream,
            &ClientMessage::Hello(Hello::current("sweep-bench")),
        )?;
        let _: ServerMessage = read_frame(&mut c.stream, DEFAULT_MAX_FRAME)?;
        Ok(c)
    }

    fn ask(&mut self, req: Request) -> Res<Response> {
        write_frame(&mut self.stream, &ClientMessage::Request(req))?;
        match read_frame(&mut self.stream, 64 * DEFAULT_MAX_FRAME)? {
            ServerMessage::Ok(r) => Ok(*r),
            other => Err(anyhow!("unexpected reply {other:?}")),
        }
    }
}

/// Latencies in microseconds, with the instant each request was sent.
type Samples = Vec<(Instant, u64)>;

fn status_loop(socket: PathBuf, stop: Arc<AtomicBool>) -> Res<Samples> {
    let mut c = Client::connect(&socket)?;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        c.ask(Request::Status)?;
        out.push((t, t.elapsed().as_micros() as u64));
        // An eager operator's loop, not a flood that would starve the daemon of CPU.
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(out)
}

fn orchctl_loop(orchctl: PathBuf, socket: PathBuf, stop: Arc<AtomicBool>) -> Res<Samples> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let o = Command::new(&orchctl)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .stdout(Stdio::null())
            .status()?;
        if !o.success() {
            bail!("orchctl status failed: {o}");
        }
        out.push((t, t.elapsed().as_micros() as u64));
    }
    Ok(out)
}

fn submit_loop(socket: PathBuf, stop: Arc<AtomicBool>) -> Res<Samples> {
    let mut c = Client::connect(&socket)?;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        c.ask(Request::Submit(SubmitRequest {
            goal: "write a short note".into(),
            required_capabilities: Vec::new(),
            workspace_dir: None,
            ttl_secs: None,
            wait: false,
        }))?;
        out.push((t, t.elapsed().as_micros() as u64));
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(out)
}

fn summary(name: &str, samples: &[(Instant, u64)], from: Instant, to: Instant) {
    let mut v: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, l)| *l)
        .collect();
    if v.is_empty() {
        println!("{name:<38} no samples");
        return;
    }
    v.sort_unstable();
    let pct = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{name:<38} n={:<6} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        v.len(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*v.last().unwrap_or(&0)),
    );
}

fn last_sweep(socket: &Path) -> Res<Option<SweepReport>> {
    match Client::connect(socket)?.ask(Request::Status)? {
        Response::Status(s) => Ok(s.last_sweep),
        other => Err(anyhow!("unexpected {other:?}")),
    }
}

/// Run the three loops while `body` runs; returns when `body` started and ended, and the samples of
/// each loop.
fn with_loops(
    socket: &Path,
    orchctl: &Path,
    body: impl FnOnce() -> Res<()>,
) -> Res<(Instant, Instant, Vec<Samples>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let loops = [
        {
            let (s, st) = (socket.to_path_buf(), Arc::clone(&stop));
            std::thread::spawn(move || status_loop(s, st))
        },
        {
            let (o, s) = (orchctl.to_path_buf(), socket.to_path_buf());
            let st = Arc::clone(&stop);
            std::thread::spawn(move || orchctl_loop(o, s, st))
        },
        {
            let (s, st) = (socket.to_path_buf(), Arc::clone(&stop));
            std::thread::spawn(move || submit_loop(s, st))
        },
    ];
    std::thread::sleep(Duration::from_millis(300));
    let from = Instant::now();
    let ran = body();
    let to = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for l in loops {
        samples.push(l.join().map_err(|_| anyhow!("a loop panicked"))??);
    }
    ran?;
    Ok((from, to, samples))
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn main() -> Res<()> {
    let a = args()?;
    let dir = tempfile::Builder::new().prefix("sweep-bench-").tempdir()?;
    let state = dir.path().join("state");
    let socket = dir.path().join("run").join("orchestrator.sock");
    let config = dir.path().join("orchestrator.toml");
    std::fs::create_dir_all(&state)?;
    std::fs::write(&config, "[sweeper]\ninterval = \"24h\"\n")?;
    println!(
        "scenario {:?}: {} tasks, {} due",
        a.scenario, a.tasks, a.due
    );
    let due_at = seed(&state.join("orchestrator.db"), &a)?;

    let log = std::fs::File::create(dir.path().join("daemon.log"))?;
    let child = Command::new(a.bin_dir.join("orchestratord"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&config)
        .env("ORCHESTRATOR_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let _daemon = Daemon(child);
    let started = Instant::now();
    let at_start = loop {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the daemon did not finish its sweep at start within 60 s");
        }
        if let Ok(Some(r)) = last_sweep(&socket) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if at_start.expired + at_start.deleted > 0 {
        bail!("the sweep at start already found due tasks: {at_start:?}");
    }
    println!(
        "daemon up and swept at start in {:.1} s; waiting for the due tasks to fall due",
        started.elapsed().as_secs_f64()
    );
    while now_ms() <= due_at + 100 {
        std::thread::sleep(Duration::from_millis(50));
    }

    let orchctl = a.bin_dir.join("orchctl");
    // The same loops first at idle, for comparison, then around the sweep.
    let (idle_from, idle_to, idle) = with_loops(&socket, &orchctl, || {
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    })?;
    let mut out = None;
    let (from, to, during) = with_loops(&socket, &orchctl, || {
        out = Some(
            Command::new(&orchctl)
                .arg("--socket")
                .arg(&socket)
                .args(["--format", "json", "sweep"])
                .output()?,
        );
        Ok(())
    })?;
    let out = out.context("the sweep did not run")?;
    let report: SweepReport = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("orchctl sweep: {}", String::from_utf8_lossy(&out.stderr)))?;

    println!(
        "sweep: {} ms in the daemon, {} ms for `orchctl sweep`; expired {}, deleted {}, errors {}",
        report.duration_ms,
        (to - from).as_millis(),
        report.expired,
        report.deleted,
        report.errors.len()
    );
    let names = [
        "status (kept connection)",
        "`orchctl status` (process)",
        "submit (kept connection)",
    ];
    for (i, name) in names.iter().enumerate() {
        summary(&format!("{name}, idle"), &idle[i], idle_from, idle_to);
        summary(&format!("{name}, sweeping"), &during[i], from, to);
    }
    Ok(())
}
