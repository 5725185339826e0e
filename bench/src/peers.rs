//! `orchbench peers`: the daemon side by side with queues operators know, on this machine, in one
//! run: pueue (daemon + CLI) for whole-process verbs, procrastinate on PostgreSQL for enqueue
//! throughput and burn-down. Each row runs the peer and then ours back to back, so that both see
//! the same load; each says what the peer promises about durability. Peers are found on PATH or
//! installed into a cache directory by this command alone.

mod install;
mod procrastinate;
mod pueue;
mod table;

use crate::load::Stop;
use crate::proc::Daemon;
use crate::stats::Throughput;
use crate::{fsync, scenarios, sibling};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use table::{latency, ratio, Better, Row, Table};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Where peers are installed and kept between runs (default: ~/.cache/orchbench/peers).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Use only what is on PATH or already in the cache; a missing peer's rows say so.
    #[arg(long)]
    no_install: bool,
    /// Where the daemons' sockets and state go (default: a fresh directory under /var/tmp).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Directory holding orchestratord and orchctl (default: beside orchbench).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Runs of each whole-process command.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Seconds per enqueue-throughput run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Jobs in each burn-down.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Concurrent clients of the throughput and burn-down rows.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
}

/// What our reply promises, for the rows' text.
const OURS: &str = "SQLite WAL, `synchronous = FULL`: the reply leaves after the commit's fsync";

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The disk's own limit where both stores live, for reading the rows against: overwrite 128 B in
/// place and fdatasync, in a loop (`orchbench fsync`).
fn flush_loop(dir: &Path) -> String {
    match fsync::run(
        dir,
        fsync::Place::Overwrite,
        fsync::Flush::Data,
        Duration::from_secs(2),
    ) {
        Ok(t) => format!("{:.0}/s (p50 {:.2} ms)", t.per_sec(), t.latency.median_ms()),
        Err(e) => format!("not measured: {e:#}"),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn rate(t: &Throughput) -> String {
    format!(
        "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
        t.per_sec(),
        t.latency.median_ms(),
        t.latency.pct_ms(99.0)
    )
}

/// Our daemons for this run: each started on a fresh store in synthetic mode, as `orchbench all`.
struct Ours {
    bin: PathBuf,
    pub ctl: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    next: usize,
}

impl Ours {
    fn fresh(&mut self) -> Result<(Daemon, PathBuf)> {
        self.next += 1;
        let socket = self.dir.join(format!("run/o{}.sock", self.next));
        let d = Daemon::start(
            &self.bin,
            &socket,
            &self.dir.join(format!("state{}", self.next)),
            Some(&self.config),
            &self.dir.join("daemon.log"),
        )?;
        Ok((d, socket))
    }
}

pub fn run(o: Options) -> Result<()> {
    if o.clients.contains(&0) {
        bail!("--clients must be at least 1");
    }
    let bin_dir = o.bin_dir.clone().unwrap_or_else(|| {
        sibling("orchestratord")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let mut ours = Ours {
        bin: bin_dir.join("orchestratord"),
        ctl: bin_dir.join("orchctl"),
        dir: PathBuf::new(),
        config: PathBuf::new(),
        next: 0,
    };
    for b in [&ours.bin, &ours.ctl] {
        if !b.exists() {
            bail!(
                "{} not found; build with cargo build --release --workspace",
                b.display()
            );
        }
    }
    let cache = install::cache_dir(o.cache_dir.as_deref())?;
    let base = tempfile::Builder::new()
        .prefix("orchbench-peers-")
        .tempdir_in(o.work_dir.as_deref().unwrap_or(Path::new("/var/tmp")))?;
    let dir = base.path();
    ours.dir = dir.to_path_buf();
    ours.config = dir.join("orchestrator.toml");
    std::fs::write(&ours.config, "mode = \"synthetic\"\n")?;
    let load_before = loadavg();
    let flush_before = flush_loop(dir);
    eprintln!("== peers in {}, cache {}", dir.display(), cache.display());
    let mut t = Table::default();
    let mut versions = Vec::new();

    // --- pueue: whole processes -------------------------------------------------------------------
    let pueue = pueue::locate(&cache, !o.no_install)
        .and_then(|tools| Ok((pueue::Daemon::start(&tools, dir)?, tools)));
    let (d, sock) = ours.fresh()?;
    let submit = ["submit", scenarios::DONE_GOAL];
    match &pueue {
        Ok((p, tools)) => {
            versions.push(tools.version.clone());
            // Paused, so that pueue's add is timed alone rather than beside the `true`s it starts.
            if !p.quiet(&["pause"])? {
                bail!("pueue pause failed");
            }
            let peer = format!("{} — {}", tools.version, pueue::DURABILITY);
            let theirs = p.runs(&["add", "--", "true"], o.runs)?;
            let mine = scenarios::ctl_runs(&ours.ctl, &sock, &submit, o.runs)?;
            t.add(Row {
                figure: format!(
                    "`pueue add -- true` against `orchctl submit GOAL`, whole process ({} runs)",
                    o.runs
                ),
                peer: peer.clone(),
                peer_result: latency(&theirs),
                ours: latency(&mine),
                ratio: ratio(mine.median_ms(), theirs.median_ms(), Better::Lower),
                command: format!("orchbench peers --runs {}", o.runs),
            });
            let theirs = p.runs(&["status"], o.runs)?;
            let mine = scenarios::ctl_runs(&ours.ctl, &sock, &["status"], o.runs)?;
            t.add(Row {
                figure: format!(
                    "`pueue status` against `orchctl status`, whole process, {} tasks held ({} runs)",
                    o.runs, o.runs
                ),
                peer,
                peer_result: latency(&theirs),
                ours: latency(&mine),
                ratio: ratio(mine.median_ms(), theirs.median_ms(), Better::Lower),
                command: format!("orchbench peers --runs {}", o.runs),
            });
        }
        Err(e) => {
            for verb in ["add", "status"] {
                t.add(Row {
                    figure: format!("`pueue {verb}` against `orchctl`"),
                    peer: "pueue".into(),
                    peer_result: format!("not run: {e:#}"),
                    ours: "—".into(),
                    ratio: "—".into(),
                    command: "orchbench peers".into(),
                });
            }
        }
    }
    drop(pueue);
    d.stop()?;

    // --- procrastinate on PostgreSQL: throughput and burn-down ------------------------------------
    let queue = procrastinate::locate(&cache, !o.no_install)
        .and_then(|tools| procrastinate::Queue::start(tools, &dir.join("procrastinate.log")));
    match &queue {
        Ok(q) => {
            versions.push(format!("{} on {}", q.tools_version(), q.server_version));
            let peer = format!("{} — {}", q.tools_version(), procrastinate::DURABILITY);
            for &c in &o.clients {
                let theirs = q.enqueue(c, o.seconds)?;
                let (d, sock) = ours.fresh()?;
                let mine =
                    scenarios::submit(&sock, c, Stop::After(Duration::from_secs_f64(o.seconds)))?;
                d.stop()?;
                t.add(Row {
                    figure: format!(
                        "enqueue, {c} concurrent client{} ({} s): `defer_async` of one job against a synthetic submit",
                        plural(c),
                        o.seconds
                    ),
                    peer: peer.clone(),
                    peer_result: rate(&theirs),
                    ours: rate(&mine),
                    ratio: ratio(mine.per_sec(), theirs.per_sec(), Better::Higher),
                    command: format!("orchbench peers --clients {c} --seconds {}", o.seconds),
                });
            }
            for &c in &o.clients {
                let theirs = q.burn_down(c, o.jobs)?;
                let (d, sock) = ours.fresh()?;
                let mine = scenarios::submit(&sock, c, Stop::Count(o.jobs.div_ceil(c as u64)))?;
                d.stop()?;
                let peer_rate = theirs.jobs as f64 / theirs.elapsed.as_secs_f64();
                t.add(Row {
                    figure: format!(
                        "burn-down of {} no-op jobs, {c} client{} and worker concurrency {c}: first enqueue → last completed",
                        o.jobs,
                        plural(c)
                    ),
                    peer: peer.clone(),
                    peer_result: format!(
                        "{:.1} s, {:.0} jobs/s (its enqueue alone: {:.0}/s)",
                        theirs.elapsed.as_secs_f64(),
                        peer_rate,
                        theirs.enqueue.per_sec()
                    ),
                    ours: format!(
                        "{:.1} s, {:.0} tasks/s ({} tasks)",
                        mine.elapsed.as_secs_f64(),
                        mine.per_sec(),
                        mine.ok
                    ),
                    ratio: ratio(mine.per_sec(), peer_rate, Better::Higher),
                    command: format!("orchbench peers --clients {c} --jobs {}", o.jobs),
                });
            }
        }
        Err(e) => {
            t.add(Row {
                figure: "enqueue and burn-down on PostgreSQL".into(),
                peer: format!("procrastinate {}", procrastinate::VERSION),
                peer_result: format!("not run: {e:#}"),
                ours: "—".into(),
                ratio: "—".into(),
                command: "orchbench peers".into(),
            });
        }
    }
    drop(queue);

    println!("Peers: {}.", versions.join("; "));
    println!("Us: {OURS}.");
    println!(
        "Load average (1, 5, 15 min): {load_before} at the start, {} at the end.",
        loadavg()
    );
    println!(
        "Flush loop on this disk (overwrite 128 B + fdatasync): {flush_before} at the start, {} at the end.",
        flush_loop(dir)
    );
    println!();
    print!("{}", t.markdown());
    Ok(())
}
