//! `orchbench notify`: notification delivery against a healthy webhook receiver on loopback.
//!
//! - Latency: one connection submits tasks one at a time to a daemon whose sink wants each task's
//!   `task.done`; the receiver notes when each event arrives. The figure is measured from the
//!   moment the submit's reply is read (the reply leaves after the COMMIT, so this is at most the
//!   time since the commit), and, as an upper bound, from the moment the submit was sent.
//! - Cost: durable submits/s at N connections on two daemons started side by side, one without
//!   sinks and one with two webhook sinks that both want every submit's `task.done`. The rounds
//!   run A B, B A, A B, … so that both see the same machine, a machine whose speed drifts over the
//!   run included. The backlog a run with sinks leaves is delivered before the next run starts
//!   (delivery yields the CPU to requests, so a backlog left running would slow the next run
//!   without sinks instead); the events left and the time they took are reported for each round.
//!   Before each run both daemons are left to go quiet ([`settle`]): after a run a daemon's
//!   writer indexes the goals it just stored, seconds of CPU that would fall on the next run.
//! - CPU: beside each submit run, the CPU time per submit of the whole daemon and of its store
//!   writer thread (`/proc/PID/stat`, `/proc/PID/task/TID/stat`), and of the receiver's threads,
//!   so that the cost of the sinks can be read on a shared machine, where throughput cannot.
//! - `--receiver refused|paused` points the sinks at a port that refuses connections, or at a
//!   receiver that accepts and never answers: what the sinks are sent is stored and nothing is
//!   delivered, which separates the cost of storing it from the cost of delivering it.

use crate::client::Conn;
use crate::proc::{self, Daemon};
use crate::scenarios::{self, DONE_GOAL};
use crate::stats::{Samples, Throughput};
use anyhow::{anyhow, bail, Context, Result};
use orchestrator::store::sqlite::WRITER_TASK;
use orchestrator_proto::message::{Request, Response};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one event may take before the run is called a failure.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the backlog after the load may take to drain before the run gives up waiting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// An event as the receiver saw it: its task's id and when it arrived.
type Arrival = (String, Instant);

/// What the sinks' webhook address answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiverMode {
    /// 200 to every `POST`, on keep-alive connections.
    Live,
    /// Nothing listens: every connection is refused.
    Refused,
    /// Connections are accepted and never read: every attempt times out.
    Paused,
}

/// How long [`settle`] waits for the daemons to go quiet before it measures anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// The window over which a daemon counts as quiet when it spent at most [`QUIET_CPU`] in it.
const QUIET_WINDOW: Duration = Duration::from_millis(500);
const QUIET_CPU: Duration = Duration::from_millis(20);

/// Wait until every daemon in `pids` is quiet: what a run leaves behind (a daemon's writer
/// indexes the goals of the tasks just submitted once it is idle, seconds of CPU after a run of
/// 50,000 submits) would otherwise weigh on the next run, whichever daemon it belongs to. Answers
/// how long that took.
fn settle(pids: &[u32]) -> Result<Duration> {
    let began = Instant::now();
    loop {
        let before = pids
            .iter()
            .map(|p| proc::cpu_time(*p, None))
            .collect::<Result<Vec<_>>>()?;
        std::thread::sleep(QUIET_WINDOW);
        let mut quiet = true;
        for (p, b) in pids.iter().zip(before) {
            quiet &= proc::cpu_time(*p, None)?.saturating_sub(b) <= QUIET_CPU;
        }
        if quiet || began.elapsed() >= SETTLE_TIMEOUT {
            return Ok(began.elapsed());
        }
    }
}

/// The name of the receiver's threads, whose CPU time is reported.
const RECEIVER_THREAD: &str = "receiver";
/// CPU time of a daemon and of its writer thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub daemon: Duration,
    pub writer: Duration,
}

impl Cpu {
    /// What the daemon `pid` and its store writer thread have spent so far.
    fn of(pid: u32) -> Result<Cpu> {
        Ok(Cpu {
            daemon: proc::cpu_time(pid, None)?,
            writer: proc::cpu_time(pid, Some(WRITER_TASK))?,
        })
    }

    /// What was spent since `before`.
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            daemon: self.daemon.saturating_sub(before.daemon),
            writer: self.writer.saturating_sub(before.writer),
        }
    }
}

/// What the receiver's threads (in this process) have spent so far; nothing if it has none.
fn receiver_spent() -> Result<Duration> {
    Ok(proc::threads_cpu_time(std::process::id(), RECEIVER_THREAD)?.0)
}

/// One submit run with the CPU it took: the daemon's, and the receiver's threads' (in this
/// process).
fn measured(
    daemon: &Started,
    connections: usize,
    stop: crate::load::Stop,
) -> Result<(Throughput, Cpu, Duration)> {
    let before = Cpu::of(daemon.daemon.pid())?;
    let receiver_before = receiver_spent()?;
    let t = scenarios::submit(&daemon.socket, connections, stop)?;
    let cpu = Cpu::of(daemon.daemon.pid())?.since(before);
    let receiver = receiver_spent()?.saturating_sub(receiver_before);
    Ok((t, cpu, receiver))
}

/// Microseconds of `cpu` per submit of `t`.
fn per_submit(cpu: Duration, t: &Throughput) -> f64 {
    cpu.as_secs_f64() * 1e6 / t.ok.max(1) as f64
}

/// A webhook receiver: answers every `POST` with 200 on keep-alive connections and reports each
/// event's task id with its arrival time.
fn receiver(mode: ReceiverMode) -> Result<(String, mpsc::Receiver<Arrival>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let (tx, rx) = mpsc::channel();
    if mode == ReceiverMode::Refused {
        // The port is free again once the listener is gone: connections to it are refused.
        drop(listener);
        return Ok((addr, rx));
    }
    std::thread::Builder::new()
        .name(RECEIVER_THREAD.into())
        .spawn(move || {
            // Paused: accepted connections are kept open and never read.
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if mode == ReceiverMode::Paused {
                    held.push(stream);
                    continue;
                }
                let tx = tx.clone();
                let _ = std::thread::Builder::new()
                    .name(RECEIVER_THREAD.into())
                    .stack_size(256 * 1024)
                    .spawn(move || serve(stream, tx));
            }
        })
        .map_err(|e| anyhow!("cannot start the receiver: {e}"))?;
    Ok((addr, rx))
}

fn serve(stream: TcpStream, tx: mpsc::Sender<Arrival>) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let at = Instant::now();
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
        writer.flush()?;
        let task = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["task"]["id"].as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = tx.send((task, at));
    }
}

/// A sink that wants every synthetic task's `task.done`, posted to `url`.
fn sink(name: &str, url: &str, secret: &Path) -> String {
    format!(
        "[[notify]]\nname = \"{name}\"\nevents = [\"task.done\"]\nkinds = [\"synthetic\"]\n\
         webhook = \"{url}\"\nsecret_file = \"{}\"\n",
        secret.display()
    )
}

struct Started {
    daemon: Daemon,
    socket: std::path::PathBuf,
}

fn start(bin: &Path, dir: &Path, name: &str, sinks: &str) -> Result<Started> {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("state"))?;
    let config = home.join("orchestrator.toml");
    std::fs::write(&config, format!("[http]\nlisten = \"off\"\n\n{sinks}"))?;
    let socket = home.join("orchestrator.sock");
    let daemon = Daemon::start(
        bin,
        &socket,
        &home.join("state"),
        Some(&config),
        &home.join("daemon.log"),
    )?;
    Ok(Started { daemon, socket })
}

pub struct Report {
    pub events: usize,
    /// From the submit's reply (after its commit) to the event's arrival.
    pub after_commit: Samples,
    /// From the submit's request to the event's arrival.
    pub after_request: Samples,
    pub connections: usize,
    pub receiver: ReceiverMode,
    /// (without sinks, with two sinks), per round.
    pub rounds: Vec<(Throughput, Throughput)>,
    /// The daemons' CPU time in each run: (without, with), per round.
    pub cpu: Vec<(Cpu, Cpu)>,
    /// The receiver's CPU time during each run with sinks, and the events it took in that run.
    pub receiver_cpu: Vec<(Duration, u64)>,
    /// The backlog each round's run with sinks left, drained before the next run.
    pub drains: Vec<Drain>,
    /// How long each round waited for both daemons to go quiet before its runs.
    pub settles: Vec<Duration>,
}

/// Whether round `round` (from 0) runs the daemon with sinks first: every other one, A B, B A, ….
fn sinks_first(round: usize) -> bool {
    round % 2 == 1
}

/// The events a run with sinks left to deliver, and their delivery.
pub struct Drain {
    pub left: u64,
    pub took: Duration,
    /// The daemon with sinks while its backlog drained: its CPU time and the receiver's.
    pub cpu: (Cpu, Duration),
}

/// Wait for what the sinks have pending to be delivered (when the receiver takes events), with
/// the CPU it took.
fn drained(
    conn: &mut Conn,
    notifying: &Started,
    arrivals: &mpsc::Receiver<Arrival>,
    mode: ReceiverMode,
) -> Result<Drain> {
    let before = Cpu::of(notifying.daemon.pid())?;
    let receiver_before = receiver_spent()?;
    let left = pending(conn)?;
    let took = drain(conn, arrivals, mode)?;
    let cpu = (
        Cpu::of(notifying.daemon.pid())?.since(before),
        receiver_spent()?.saturating_sub(receiver_before),
    );
    Ok(Drain { left, took, cpu })
}

pub fn run(
    bin: &Path,
    events: usize,
    connections: usize,
    seconds: f64,
    rounds: usize,
    mode: ReceiverMode,
) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let (addr, arrivals) = receiver(mode)?;
    let plain = start(bin, dir.path(), "plain", "")?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "benchmark secret")?;
    let sinks = format!(
        "{}\n{}",
        sink("first", &format!("http://{addr}/first"), &secret),
        sink("second", &format!("http://{addr}/second"), &secret)
    );
    let notifying = start(bin, dir.path(), "notifying", &sinks)?;

    // Latency, on a quiet daemon: one submit at a time, each waited for at the receiver (both sinks
    // deliver it; the first arrival counts).
    let mut conn = Conn::open(&notifying.socket)?;
    let (mut after_commit, mut after_request) = (Samples::default(), Samples::default());
    // Nothing arrives from a receiver that refuses or never answers: no latency to time.
    let timed = if mode == ReceiverMode::Live {
        events
    } else {
        0
    };
    for _ in 0..timed {
        let sent = Instant::now();
        let task = match conn.submit(DONE_GOAL)? {
            Ok(t) => t,
            Err(e) => bail!("submit failed: {e}"),
        };
        let replied = Instant::now();
        let deadline = sent + DELIVERY_TIMEOUT;
        let arrived = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (id, at) = arrivals
                .recv_timeout(left)
                .with_context(|| format!("task {}'s event did not arrive", task.id))?;
            if id == task.id {
                break at;
            }
        };
        after_commit.push(arrived.saturating_duration_since(replied));
        after_request.push(arrived.saturating_duration_since(sent));
    }

    let stop = crate::load::Stop::After(Duration::from_secs_f64(seconds));
    let mut runs = Vec::with_capacity(rounds);
    let (mut cpu, mut receiver_cpu) = (Vec::new(), Vec::new());
    let (mut drains, mut settles) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    let pids = [plain.daemon.pid(), notifying.daemon.pid()];
    for round in 0..rounds {
        let mut plain_run = None;
        let mut settled = Duration::ZERO;
        if !sinks_first(round) {
            settled += settle(&pids)?;
            plain_run = Some(measured(&plain, connections, stop)?);
        }
        settled += settle(&pids)?;
        while arrivals.try_recv().is_ok() {}
        let (with, notifying_cpu, receiver) = measured(&notifying, connections, stop)?;
        let arrived = std::iter::from_fn(|| arrivals.try_recv().ok()).count() as u64;
        // Every run starts on a quiet machine: the backlog is delivered before the next run,
        // which it would otherwise share the cores with.
        drains.push(drained(&mut conn, &notifying, &arrivals, mode)?);
        let (without, plain_cpu, _) = match plain_run {
            Some(run) => run,
            None => {
                settled += settle(&pids)?;
                measured(&plain, connections, stop)?
            }
        };
        settles.push(settled);
        runs.push((without, with));
        cpu.push((plain_cpu, notifying_cpu));
        receiver_cpu.push((receiver, arrived));
    }
    plain.daemon.stop()?;
    notifying.daemon.stop()?;
    Ok(Report {
        events,
        after_commit,
        after_request,
        connections,
        receiver: mode,
        rounds: runs,
        cpu,
        receiver_cpu,
        drains,
        settles,
    })
}

/// Wait until the sinks have nothing pending (at once unless the receiver takes events); answers
/// how long that took.
fn drain(
    conn: &mut Conn,
    arrivals: &mpsc::Receiver<Arrival>,
    mode: ReceiverMode,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        while arrivals.try_recv().is_ok() {}
        if mode != ReceiverMode::Live || pending(conn)? == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!("the sinks' backlog did not drain within {DRAIN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Events waiting in the outbox, over every sink.
fn pending(conn: &mut Conn) -> Result<u64> {
    match conn.ok(Request::NotifyList)? {
        Response::NotifySinks(sinks) => Ok(sinks.iter().map(|s| s.pending).sum()),
        other => bail!("notify list answered {other:?}"),
    }
}

pub fn print(r: &Report) {
    if r.receiver != ReceiverMode::Live {
        println!(
            "receiver {:?}: the sinks' rows are written and nothing is delivered; no latency timed",
            r.receiver
        );
    } else {
        println!(
        "commit → healthy loopback webhook, {} events one at a time: after the reply p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; after the request p50 {:.2} ms, p99 {:.2} ms",
        r.events,
        r.after_commit.median_ms(),
        r.after_commit.pct_ms(99.0),
        r.after_commit.max_ms(),
        r.after_request.median_ms(),
        r.after_request.pct_ms(99.0),
    );
    }
    let mut ratios = Vec::new();
    for (i, (without, with)) in r.rounds.iter().enumerate() {
        let ratio = with.per_sec() / without.per_sec();
        ratios.push(ratio);
        let order = if sinks_first(i) {
            "with sinks first"
        } else {
            "without sinks first"
        };
        println!(
            "round {} ({order}): submits at {} connections without sinks {}; with two sinks {}; ratio {ratio:.3}",
            i + 1,
            r.connections,
            without.describe(),
            with.describe()
        );
        if let (Some((a, b)), Some((rcv, arrived))) = (r.cpu.get(i), r.receiver_cpu.get(i)) {
            println!(
                "round {}: CPU per submit without sinks daemon {:.1} µs (writer {:.1} µs); with two sinks daemon {:.1} µs (writer {:.1} µs); receiver {:.1} µs per submit, {arrived} events received during the run",
                i + 1,
                per_submit(a.daemon, without),
                per_submit(a.writer, without),
                per_submit(b.daemon, with),
                per_submit(b.writer, with),
                per_submit(*rcv, with),
            );
        }
        match r.drains.get(i) {
            Some(d) if r.receiver == ReceiverMode::Live => println!(
                "round {}: the run with sinks left {} events to deliver, delivered {:.1} s later, before the next run",
                i + 1,
                d.left,
                d.took.as_secs_f64()
            ),
            Some(d) => println!("round {}: {} events pending, left undelivered", i + 1, d.left),
            None => {}
        }
        if let Some(t) = r.settles.get(i) {
            println!(
                "round {}: waited {:.1} s in all for both daemons to go quiet before its runs",
                i + 1,
                t.as_secs_f64()
            );
        }
    }
    let total = |f: fn(&(Throughput, Throughput)) -> &Throughput| -> f64 {
        let (ok, secs) = r.rounds.iter().map(f).fold((0u64, 0f64), |(o, s), t| {
            (o + t.ok, s + t.elapsed.as_secs_f64())
        });
        ok as f64 / secs
    };
    let (without, with) = (total(|p| &p.0), total(|p| &p.1));
    println!(
        "over all rounds: without sinks {without:.0}/s, with two sinks {with:.0}/s, ratio {:.3}",
        with / without
    );
    let cpu_total = |with: bool| -> (f64, f64) {
        let (mut d, mut w, mut n) = (0f64, 0f64, 0u64);
        for ((a, b), (ta, tb)) in r.cpu.iter().zip(&r.rounds) {
            let (c, t) = if with { (b, tb) } else { (a, ta) };
            d += c.daemon.as_secs_f64();
            w += c.writer.as_secs_f64();
            n += t.ok;
        }
        let n = n.max(1) as f64;
        (d * 1e6 / n, w * 1e6 / n)
    };
    let ((da, wa), (db, wb)) = (cpu_total(false), cpu_total(true));
    println!(
        "CPU per submit over all rounds: without sinks daemon {da:.1} µs (writer {wa:.1} µs); with two sinks daemon {db:.1} µs (writer {wb:.1} µs); ratio without / with: daemon {:.3}, writer {:.3}",
        da / db.max(f64::MIN_POSITIVE),
        wa / wb.max(f64::MIN_POSITIVE)
    );
    let left: u64 = r.drains.iter().map(|d| d.left).sum();
    if r.receiver == ReceiverMode::Live {
        let took: f64 = r.drains.iter().map(|d| d.took.as_secs_f64()).sum();
        let spent = |f: fn(&Drain) -> Duration| -> f64 {
            r.drains.iter().map(|d| f(d).as_secs_f64()).sum::<f64>() * 1e6 / left.max(1) as f64
        };
        println!(
            "backlogs over all rounds: {left} events, delivered in {took:.1} s; daemon {:.1} µs (writer {:.1} µs), receiver {:.1} µs of CPU per event delivered",
            spent(|d| d.cpu.0.daemon),
            spent(|d| d.cpu.0.writer),
            spent(|d| d.cpu.1)
        );
    } else {
        println!("backlogs over all rounds: {left} events, left undelivered");
    }
}
