//! `orchbench peers`: the daemon side by side with queues operators know, on this machine, in one
//! run: pueue (daemon + CLI) for whole-process verbs; procrastinate and graphile-worker on
//! PostgreSQL for enqueue throughput and the burn-down of N no-op jobs. Each row runs the peer and
//! then ours back to back, so that both see the same load (the burn-downs of ours run once per
//! concurrency, after the first peer's, and serve both PostgreSQL peers); each says what the peer
//! promises about durability. Peers are found on PATH or installed into a cache directory by this
//! command alone. The method is in docs/BENCHMARKS.md, "Side by side with other queues".

mod driver;
mod graphile;
mod install;
mod interrupt;
mod ours;
mod procrastinate;
mod pueue;
mod table;

use crate::load::Stop;
use crate::stats::Throughput;
use crate::{fsync, scenarios, sibling};
use anyhow::{bail, Result};
use ours::{Ours, WorkerBurnDown};
use std::collections::BTreeMap;
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
    /// Concurrent clients of the throughput and burn-down rows (and the workers' concurrency).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Which peers to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pueue,procrastinate,graphile-worker"
    )]
    peers: Vec<Peer>,
    /// Bound of each long phase (an enqueue or completion of a burn-down), in seconds.
    #[arg(long, default_value_t = 7200.0)]
    timeout: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Pueue,
    Procrastinate,
    GraphileWorker,
}

/// What our reply promises, for the rows' text.
const OURS: &str = "SQLite WAL: the reply leaves after the commit's log is flushed (`fdatasync`)";

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

pub fn run(o: Options) -> Result<()> {
    if o.clients.contains(&0) {
        bail!("--clients must be at least 1");
    }
    if o.jobs == 0 || !(o.timeout.is_finite() && o.timeout > 0.0) {
        bail!("--jobs and --timeout must be positive");
    }
    let bin_dir = o.bin_dir.clone().unwrap_or_else(|| {
        sibling("orchestratord")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    });
    let (bin, ctl) = (bin_dir.join("orchestratord"), bin_dir.join("orchctl"));
    for b in [&bin, &ctl] {
        if !b.exists() {
            bail!(
                "{} not found; build with cargo build --release --workspace",
                b.display()
            );
        }
    }
    let cache = install::cache_dir(o.cache_dir.as_deref())?;
    interrupt::install();
    let base = tempfile::Builder::new()
        .prefix("orchbench-peers-")
        .tempdir_in(o.work_dir.as_deref().unwrap_or(Path::new("/var/tmp")))?;
    let dir = base.path();
    let mut ours = Ours::new(bin, ctl, dir.to_path_buf());
    let load_before = loadavg();
    let flush_before = flush_loop(dir);
    eprintln!("== peers in {}, cache {}", dir.display(), cache.display());
    let mut t = Table::default();
    let mut versions = Vec::new();

    // --- pueue: whole processes -------------------------------------------------------------------
    if o.peers.contains(&Peer::Pueue) {
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
        interrupt::check()?;
    }

    // --- PostgreSQL queues: throughput and burn-down ----------------------------------------------
    let mut mine = Bursts::default();
    let pg: [(Peer, &str, &str, Locate); 2] = [
        (
            Peer::Procrastinate,
            procrastinate::VERSION,
            procrastinate::DURABILITY,
            procrastinate::locate,
        ),
        (
            Peer::GraphileWorker,
            graphile::VERSION,
            graphile::DURABILITY,
            graphile::locate,
        ),
    ];
    for (peer, version, durability, locate) in pg {
        if !o.peers.contains(&peer) {
            continue;
        }
        interrupt::check()?;
        let name = match peer {
            Peer::GraphileWorker => "graphile-worker",
            _ => "procrastinate",
        };
        eprintln!("== {name}");
        let queue = locate(&cache, !o.no_install).and_then(|tools| {
            driver::Queue::start(tools, &dir.join(format!("{name}.log")), o.timeout)
        });
        match &queue {
            Ok(q) => {
                versions.push(format!("{} on {}", q.tools_version(), q.server_version));
                let label = format!("{} — {durability}", q.tools_version());
                // A row that fails (a phase past --timeout) ends this peer's rows, not the run.
                if let Err(e) = pg_rows(&o, q, &label, &mut ours, &mut mine, &mut t) {
                    t.add(Row {
                        figure: "this peer's remaining rows".into(),
                        peer: label,
                        peer_result: format!("failed: {e:#}"),
                        ours: "—".into(),
                        ratio: "—".into(),
                        command: "orchbench peers".into(),
                    });
                }
            }
            Err(e) => {
                t.add(Row {
                    figure: "enqueue and burn-down on PostgreSQL".into(),
                    peer: format!("{name} {version}"),
                    peer_result: format!("not run: {e:#}"),
                    ours: "—".into(),
                    ratio: "—".into(),
                    command: "orchbench peers".into(),
                });
            }
        }
    }

    interrupt::check()?;
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

/// Finds or installs a PostgreSQL peer's driver (cache directory, whether to install).
type Locate = fn(&Path, bool) -> Result<driver::Tools>;

/// Our burn-downs, run once per concurrency after the first PostgreSQL peer's and reused for the
/// second.
#[derive(Default)]
struct Bursts {
    synthetic: BTreeMap<usize, Throughput>,
    worker: BTreeMap<usize, WorkerBurnDown>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One PostgreSQL peer's rows: enqueue at each concurrency, then the burn-downs.
fn pg_rows(
    o: &Options,
    q: &driver::Queue,
    label: &str,
    ours: &mut Ours,
    mine: &mut Bursts,
    t: &mut Table,
) -> Result<()> {
    for &c in &o.clients {
        let theirs = q.enqueue(c, o.seconds)?;
        let (d, sock) = ours.fresh()?;
        let us = scenarios::submit(&sock, c, Stop::After(Duration::from_secs_f64(o.seconds)))?;
        d.stop()?;
        t.add(Row {
            figure: format!(
                "enqueue, {c} concurrent client{} ({} s): one job per call against a synthetic submit",
                plural(c),
                o.seconds
            ),
            peer: label.into(),
            peer_result: rate(&theirs),
            ours: rate(&us),
            ratio: ratio(us.per_sec(), theirs.per_sec(), Better::Higher),
            command: format!("orchbench peers --clients {c} --seconds {}", o.seconds),
        });
    }
    let timeout = Duration::from_secs_f64(o.timeout);
    for &c in &o.clients {
        let theirs = q.burn_down(c, o.jobs)?;
        let peer_rate = theirs.jobs as f64 / secs(theirs.total());
        let peer_run_rate = theirs.jobs as f64 / secs(theirs.completion);
        let workers = format!(
            "{} worker process{} of concurrency {}",
            theirs.workers.len(),
            if theirs.workers.len() == 1 { "" } else { "es" },
            theirs
                .workers
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(" + ")
        );
        if let std::collections::btree_map::Entry::Vacant(e) = mine.worker.entry(c) {
            e.insert(ours.worker_burn_down(c, o.jobs, timeout)?);
        }
        if let std::collections::btree_map::Entry::Vacant(e) = mine.synthetic.entry(c) {
            let (d, sock) = ours.fresh()?;
            eprintln!("  us: {} synthetic submits, {c} clients", o.jobs);
            let s = ours::submit_all(&sock, "done", c, o.jobs)?;
            d.stop()?;
            e.insert(s);
        }
        let (Some(w), Some(s)) = (mine.worker.get(&c), mine.synthetic.get(&c)) else {
            bail!("our burn-down at {c} clients is missing");
        };
        let w_rate = w.tasks as f64 / secs(w.total());
        let w_run_rate = w.tasks as f64 / secs(w.completion);
        let command = format!("orchbench peers --clients {c} --jobs {}", o.jobs);
        let peer_total = format!(
            "{:.1} s, {:.0} jobs/s (enqueue {:.1} s at {:.0}/s, then run {:.1} s at {:.0}/s)",
            secs(theirs.total()),
            peer_rate,
            secs(theirs.enqueue.elapsed),
            theirs.enqueue.per_sec(),
            secs(theirs.completion),
            peer_run_rate
        );
        t.add(Row {
            figure: format!(
                "burn-down of {} no-op jobs, {c} client{}, then {workers}; us: shadow tasks run by `{}`, at most {c} at once: first enqueue → last completed",
                o.jobs,
                plural(c),
                w.command.display()
            ),
            peer: label.into(),
            peer_result: peer_total.clone(),
            ours: format!(
                "{:.1} s, {:.0} tasks/s (submit {:.1} s at {:.0}/s, then run {:.1} s at {:.0}/s; {} tasks)",
                secs(w.total()),
                w_rate,
                secs(w.enqueue.elapsed),
                w.enqueue.per_sec(),
                secs(w.completion),
                w_run_rate,
                w.tasks
            ),
            ratio: ratio(w_rate, peer_rate, Better::Higher),
            command: command.clone(),
        });
        t.add(Row {
            figure: "the same burn-down, run phase alone: workers started (us: agent resumed) → last completed".into(),
            peer: label.into(),
            peer_result: format!(
                "{:.1} s, {peer_run_rate:.0} jobs/s",
                secs(theirs.completion)
            ),
            ours: format!("{:.1} s, {w_run_rate:.0} tasks/s", secs(w.completion)),
            ratio: ratio(w_run_rate, peer_run_rate, Better::Higher),
            command: command.clone(),
        });
        t.add(Row {
            figure: format!(
                "the same burn-down against {} synthetic submits on {c} connection{} (each completed in its commit)",
                o.jobs,
                plural(c)
            ),
            peer: label.into(),
            peer_result: peer_total,
            ours: format!(
                "{:.1} s, {:.0} tasks/s ({} tasks)",
                secs(s.elapsed),
                s.per_sec(),
                s.ok
            ),
            ratio: ratio(s.per_sec(), peer_rate, Better::Higher),
            command,
        });
    }
    Ok(())
}
