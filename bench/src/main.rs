//! `orchbench`: a load generator and benchmark suite for `orchestratord`, in the spirit of
//! `redis-benchmark`. It speaks the real protocol over the control socket (its load: many
//! connections driven by one event loop on one thread, `load.rs`) and measures the machine's own
//! limit — a write + fsync loop — in the same run, so that every figure can be read against what the
//! disk allows.
//!
//! Each figure has a subcommand; `orchbench all` starts its own daemons in a temporary directory,
//! runs every figure in turn and prints a markdown table (docs/BENCHMARKS.md is that table).

mod all;
mod client;
mod cluster;
mod console;
mod fsync;
mod load;
mod notify;
mod peers;
mod proc;
mod scenarios;
mod seed;
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "orchbench",
    version,
    about = "Benchmarks and load for orchestratord"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Target {
    /// Control socket of the daemon under test.
    #[arg(long, env = "ORCHCTL_SOCKET", value_name = "PATH")]
    socket: PathBuf,
}

/// The daemon whose CPU time to count around a run (a daemon on this machine).
#[derive(clap::Args, Debug, Clone)]
struct CpuOf {
    /// Also print the CPU time (user + system) the daemon with this pid, and its store writer
    /// thread, spent per operation of the measured run (preparation excluded).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
}

impl CpuOf {
    /// CPU time of the whole daemon, of its store writer thread and of this process, when a pid
    /// was given.
    fn sample(&self) -> Result<Option<[Duration; 3]>> {
        self.pid.map(proc::cpu_sample).transpose()
    }

    fn report(&self, before: Option<[Duration; 3]>, ops: u64) -> Result<()> {
        let (Some([d0, w0, g0]), Some([d1, w1, g1])) = (before, self.sample()?) else {
            return Ok(());
        };
        let per =
            |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() * 1e6 / ops.max(1) as f64;
        println!(
            "CPU per operation: daemon {:.1} µs, store writer {:.1} µs, load generator {:.1} µs ({ops} operations; /proc/PID/stat, clock ticks of {} ms; getrusage)",
            per(d0, d1),
            per(w0, w1),
            per(g0, g1),
            1000 / proc::clock_ticks_per_sec().max(1)
        );
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Durable submit throughput with p50/p99 latency.
    Submit {
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'c', default_value_t = 64)]
        connections: usize,
        /// Run for this many seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[command(flatten)]
        cpu: CpuOf,
    },
    /// Approve/reject throughput: pre-creates tasks awaiting approval, then decides them.
    Transitions {
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'c', default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 32_000)]
        tasks: u64,
        /// All connections decide the oldest task still waiting, in turn, instead of each a block
        /// of its own.
        #[arg(long)]
        oldest_first: bool,
        #[command(flatten)]
        cpu: CpuOf,
    },
    /// Round trip of `status` on one open connection.
    Roundtrip {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
    },
    /// The machine's limit: append a small record and flush it, in a loop, in DIR; then the same
    /// flush behind a Unix socket, answering one client that waits for each answer.
    Fsync {
        /// A directory on the filesystem of the daemon's state directory.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// `orchctl ARGS…` as a whole process, N times: median and p99.
    Ctl {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        ctl: Option<PathBuf>,
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// The orchctl arguments (default: status).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Write an archive straight into the SQLite store of a stopped daemon.
    Seed {
        /// The database file (`<state dir>/orchestrator.db`).
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
        /// Shadow tasks created inside the last 24 h.
        #[arg(long, default_value_t = 100_000)]
        in_window: u64,
        /// Tasks that fall due for expiry `--due-in` seconds from now.
        #[arg(long, default_value_t = 100_000)]
        due: u64,
        #[arg(long, default_value_t = 60)]
        due_in: u64,
        /// The due tasks are one in N of a stretch of live tasks created in order, the others
        /// decided; 1 puts them next to each other.
        #[arg(long, default_value_t = 1)]
        due_among: u64,
        /// Leave out the trajectory events.
        #[arg(long)]
        no_events: bool,
        /// Leave the store as the release before the last migration left it, so that the next
        /// start upgrades it (a slow upgrade: every task with events is rewritten).
        #[arg(long)]
        before_last_migration: bool,
    },
    /// `shadow-summary --window 24` over the wire, N times.
    ShadowSummary {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Run a sweep now and measure `status` (whole `orchctl` process and on the wire) while it runs.
    Sweep {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        ctl: Option<PathBuf>,
    },
    /// `reload` over the wire, N times.
    Reload {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Many connections × many mixed requests (submit, show, status, route); counts every error.
    Load {
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'c', default_value_t = 200)]
        connections: usize,
        #[arg(long, short = 'n', default_value_t = 500)]
        requests: u64,
    },
    /// Resident memory of a process (VmRSS and VmHWM from /proc).
    Memory {
        #[arg(long)]
        pid: u32,
    },
    /// Start a daemon on STATE_DIR N times: time to ready and resident memory.
    Startup {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        daemon: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The web console over a seeded store: each page's time (p50/p99) and commit → event stream.
    Console {
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
        /// Requests per page.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// State changes timed to the event stream.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        #[arg(long)]
        daemon: Option<PathBuf>,
    },
    /// Notifications: commit → healthy loopback webhook latency, and durable submits/s with two
    /// sinks configured against none (two daemons; rounds A B, B A, A B, …).
    Notify {
        /// Events timed one at a time.
        #[arg(long, default_value_t = 500)]
        events: usize,
        #[arg(long, short = 'c', default_value_t = 64)]
        connections: usize,
        /// Seconds per submit run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds of two submit runs, without and with sinks (every other round with sinks first).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// What the sinks' webhook answers: `refused` and `paused` deliver nothing, so that only
        /// the outbox rows cost.
        #[arg(long, value_enum, default_value = "live")]
        receiver: notify::ReceiverMode,
        #[arg(long)]
        daemon: Option<PathBuf>,
    },
    /// Several daemons on one PostgreSQL (1, 2, 3 nodes) beside one on SQLite: submits/s, p50/p99.
    Cluster(cluster::Options),
    /// Everything above in one run, each against daemons it starts itself; prints a markdown table.
    All(all::Options),
    /// Side by side with other queues (pueue; procrastinate on PostgreSQL), installing them if
    /// needed; prints a markdown table.
    Peers(peers::Options),
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Submit {
            target,
            connections,
            seconds,
            cpu,
        } => {
            let grouped = scenarios::Grouping::before(&target.socket);
            let before = cpu.sample()?;
            let t = scenarios::submit(
                &target.socket,
                connections,
                load::Stop::After(Duration::from_secs_f64(seconds)),
            )?;
            println!("submit, {connections} connections: {}", t.describe());
            cpu.report(before, t.ok)?;
            scenarios::Grouping::print_since(grouped, &target.socket)?;
        }
        Cmd::Transitions {
            target,
            connections,
            tasks,
            oldest_first,
            cpu,
        } => {
            let ids = scenarios::precreate_awaiting(&target.socket, connections, tasks)?;
            let grouped = scenarios::Grouping::before(&target.socket);
            let before = cpu.sample()?;
            let t = scenarios::transitions(&target.socket, connections, &ids, oldest_first)?;
            println!(
                "approve/reject, {connections} connections: {}",
                t.describe()
            );
            cpu.report(before, t.ok)?;
            scenarios::Grouping::print_since(grouped, &target.socket)?;
        }
        Cmd::Roundtrip { target, requests } => {
            let t = scenarios::roundtrip(&target.socket, requests)?;
            println!("status round trip, open connection: {}", t.describe());
        }
        Cmd::Fsync { dir, seconds } => {
            let seconds = Duration::from_secs_f64(seconds);
            for (name, place, flush) in fsync::VARIANTS {
                let t = fsync::run(&dir, place, flush, seconds)?;
                println!("{name}: {}", t.describe());
            }
            for (name, server) in fsync::SERVERS {
                let t = fsync::served(&dir, server, seconds)?;
                println!("{name}: {}", t.describe());
            }
        }
        Cmd::Ctl {
            target,
            ctl,
            runs,
            args,
        } => {
            let ctl = ctl.unwrap_or_else(|| sibling("orchctl"));
            let args: Vec<&str> = if args.is_empty() {
                vec!["status"]
            } else {
                args.iter().map(String::as_str).collect()
            };
            let s = scenarios::ctl_runs(&ctl, &target.socket, &args, runs)?;
            println!(
                "orchctl {}: median {:.2} ms, p99 {:.2} ms over {} runs",
                args.join(" "),
                s.median_ms(),
                s.pct_ms(99.0),
                s.len()
            );
        }
        Cmd::Seed {
            db,
            tasks,
            in_window,
            due,
            due_in,
            due_among,
            no_events,
            before_last_migration,
        } => {
            let plan = seed::Plan {
                tasks,
                in_window,
                due,
                due_at_ms: orchestrator::clock::now_ms() + (due_in as i64) * 1000,
                due_among,
                events: !no_events,
                before_last_migration,
            };
            let s = seed::seed(&db, plan)?;
            println!(
                "seeded {} tasks and {} events in {:.1} s",
                s.tasks, s.events, s.seconds
            );
            let (indexed, secs) = seed::index_goals(&db)?;
            println!("indexed {indexed} goals in {secs:.1} s");
        }
        Cmd::ShadowSummary { target, runs } => {
            let (s, total) = scenarios::shadow_summary(&target.socket, runs)?;
            println!(
                "shadow-summary --window 24 ({total} tasks in the window): median {:.2} ms, max {:.2} ms over {runs} runs (the first {:.2} ms)",
                s.median_ms(),
                s.max_ms(),
                s.first_ms()
            );
        }
        Cmd::Sweep { target, ctl } => {
            let ctl = ctl.unwrap_or_else(|| sibling("orchctl"));
            let r = scenarios::sweep(&target.socket, &ctl)?;
            println!(
                "sweep: {:.2} s, {} expired, {} deleted; orchctl status during it: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} runs); on the wire: p50 {:.2} ms, p99 {:.2} ms ({} requests)",
                r.elapsed.as_secs_f64(),
                r.expired,
                r.deleted,
                r.ctl_status.median_ms(),
                r.ctl_status.pct_ms(99.0),
                r.ctl_status.max_ms(),
                r.ctl_status.len(),
                r.wire_status.median_ms(),
                r.wire_status.pct_ms(99.0),
                r.wire_status.len()
            );
        }
        Cmd::Reload { target, runs } => {
            let s = scenarios::reload(&target.socket, runs)?;
            println!(
                "reload: median {:.2} ms, p99 {:.2} ms over {runs} runs",
                s.median_ms(),
                s.pct_ms(99.0)
            );
        }
        Cmd::Load {
            target,
            connections,
            requests,
        } => {
            let (t, errors) = scenarios::mixed_load(&target.socket, connections, requests)?;
            println!(
                "{connections} connections × {requests} requests: {}",
                t.describe()
            );
            for e in errors {
                println!("  error: {e}");
            }
            if t.errors > 0 {
                anyhow::bail!("{} requests failed", t.errors);
            }
        }
        Cmd::Memory { pid } => {
            let (rss, hwm) = proc::memory_kib(pid)?;
            println!(
                "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            );
        }
        Cmd::Startup {
            state_dir,
            daemon,
            runs,
        } => {
            let daemon = daemon.unwrap_or_else(|| sibling("orchestratord"));
            let dir = tempfile::tempdir()?;
            for _ in 0..runs {
                let d = proc::Daemon::start(
                    &daemon,
                    &dir.path().join("orchestrator.sock"),
                    &state_dir,
                    None,
                    &dir.path().join("daemon.log"),
                )?;
                let (rss, hwm) = d.memory_kib()?;
                println!(
                    "ready after {:.1} ms; VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                    d.ready_after.as_secs_f64() * 1000.0,
                    rss as f64 / 1024.0,
                    hwm as f64 / 1024.0
                );
                d.stop()?;
            }
        }
        Cmd::Console {
            tasks,
            runs,
            changes,
            daemon,
        } => {
            let bin = daemon.unwrap_or_else(|| sibling("orchestratord"));
            console::print(&console::run(&bin, tasks, runs, changes)?);
        }
        Cmd::Cluster(opts) => {
            let bin = opts
                .daemon
                .clone()
                .unwrap_or_else(|| sibling("orchestratord"));
            cluster::print(&opts, &cluster::run(&opts, &bin)?);
        }
        Cmd::Peers(opts) => peers::run(opts)?,
        Cmd::Notify {
            events,
            connections,
            seconds,
            rounds,
            receiver,
            daemon,
        } => {
            let bin = daemon.unwrap_or_else(|| sibling("orchestratord"));
            notify::print(&notify::run(
                &bin,
                events,
                connections,
                seconds,
                rounds,
                receiver,
            )?);
        }
        Cmd::All(opts) => all::run(opts)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
