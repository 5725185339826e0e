//! `orchbench notify`: notification delivery against a healthy webhook receiver on loopback.
//!
//! - Latency: one connection submits tasks one at a time to a daemon whose sink wants each task's
//!   `task.done`; the receiver notes when each event arrives. The figure is measured from the
//!   moment the submit's reply is read (the reply leaves after the COMMIT, so this is at most the
//!   time since the commit), and, as an upper bound, from the moment the submit was sent.
//! - Cost: durable submits/s at N connections on two daemons started side by side, one without
//!   sinks and one with two webhook sinks that both want every submit's `task.done`, rounds
//!   alternating (A B A B) so that both see the same machine. After the load the two sinks' backlog
//!   drains, and the time it takes is reported.

use crate::client::Conn;
use crate::proc::Daemon;
use crate::scenarios::{self, DONE_GOAL};
use crate::stats::{Samples, Throughput};
use anyhow::{anyhow, bail, Context, Result};
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

/// A webhook receiver: answers every `POST` with 200 on keep-alive connections and reports each
/// event's task id with its arrival time.
fn receiver() -> Result<(String, mpsc::Receiver<Arrival>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("receiver".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let _ = std::thread::Builder::new()
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
    /// (without sinks, with two sinks), per round.
    pub rounds: Vec<(Throughput, Throughput)>,
    /// Events left to deliver when the load ended, and how long they took.
    pub backlog: u64,
    pub drained_in: Duration,
}

pub fn run(
    bin: &Path,
    events: usize,
    connections: usize,
    seconds: f64,
    rounds: usize,
) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let (addr, arrivals) = receiver()?;
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
    for _ in 0..events {
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
    for _ in 0..rounds {
        let without = scenarios::submit(&plain.socket, connections, stop)?;
        let with = scenarios::submit(&notifying.socket, connections, stop)?;
        runs.push((without, with));
    }

    // The backlog the load left, drained.
    let drain_started = Instant::now();
    let backlog = pending(&mut conn)?;
    loop {
        while arrivals.try_recv().is_ok() {}
        if pending(&mut conn)? == 0 {
            break;
        }
        if drain_started.elapsed() > DRAIN_TIMEOUT {
            bail!("the sinks' backlog did not drain within {DRAIN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained_in = drain_started.elapsed();
    plain.daemon.stop()?;
    notifying.daemon.stop()?;
    Ok(Report {
        events,
        after_commit,
        after_request,
        connections,
        rounds: runs,
        backlog,
        drained_in,
    })
}

/// Events waiting in the outbox, over every sink.
fn pending(conn: &mut Conn) -> Result<u64> {
    match conn.ok(Request::NotifyList)? {
        Response::NotifySinks(sinks) => Ok(sinks.iter().map(|s| s.pending).sum()),
        other => bail!("notify list answered {other:?}"),
    }
}

pub fn print(r: &Report) {
    println!(
        "commit → healthy loopback webhook, {} events one at a time: after the reply p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; after the request p50 {:.2} ms, p99 {:.2} ms",
        r.events,
        r.after_commit.median_ms(),
        r.after_commit.pct_ms(99.0),
        r.after_commit.max_ms(),
        r.after_request.median_ms(),
        r.after_request.pct_ms(99.0),
    );
    let mut ratios = Vec::new();
    for (i, (without, with)) in r.rounds.iter().enumerate() {
        let ratio = with.per_sec() / without.per_sec();
        ratios.push(ratio);
        println!(
            "round {}: submits at {} connections without sinks {}; with two sinks {}; ratio {ratio:.3}",
            i + 1,
            r.connections,
            without.describe(),
            with.describe()
        );
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
    println!(
        "backlog when the load ended: {} events, delivered {:.1} s later",
        r.backlog,
        r.drained_in.as_secs_f64()
    );
}
