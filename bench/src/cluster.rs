//! `orchbench cluster`: several daemons on one PostgreSQL beside one daemon on SQLite, in one run
//! on one machine. For 1, 2 and 3 nodes (each a daemon of its own on a fresh database of one
//! throwaway server) and for SQLite, the client connections are spread evenly over the daemons'
//! sockets and submit for a fixed time.
//!
//! In synthetic mode a submit is also the task's dispatch: the reply leaves after the one commit
//! that holds the task, its routing, start and completion. So submits/s here are durable submits
//! and dispatched synthetic tasks alike; p50/p99 are per submit as the client saw it.

use crate::load::Stop;
use crate::proc::Daemon;
use crate::scenarios;
use crate::stats::{Samples, Throughput};
use anyhow::{Context, Result};
use orchestrator::store::postgres::throwaway::TempPostgres;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the run needs.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Client connections in all, spread over the daemons.
    #[arg(long, short = 'c', default_value_t = 48)]
    pub connections: usize,
    /// Seconds per configuration.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Largest number of nodes on PostgreSQL (from 1 up).
    #[arg(long, default_value_t = 3)]
    pub max_nodes: usize,
    /// Each daemon's connection pool.
    #[arg(long, default_value_t = 16)]
    pub pool_size: usize,
    #[arg(long)]
    pub daemon: Option<PathBuf>,
}

/// One configuration's outcome.
pub struct Row {
    pub store: String,
    pub nodes: usize,
    pub t: Throughput,
}

fn start_nodes(bin: &Path, dir: &Path, configs: &[String]) -> Result<Vec<(Daemon, PathBuf)>> {
    configs
        .iter()
        .enumerate()
        .map(|(i, toml)| {
            let node = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node)?;
            let config = node.join("orchestrator.toml");
            std::fs::write(&config, toml)?;
            let socket = node.join("orchestrator.sock");
            let d = Daemon::start(
                bin,
                &socket,
                &node.join("state"),
                Some(&config),
                &node.join("daemon.log"),
            )?;
            Ok((d, socket))
        })
        .collect()
}

/// Submit through every socket at once for `seconds`, `conns` connections in all.
fn submit_spread(sockets: &[PathBuf], conns: usize, seconds: f64) -> Result<Throughput> {
    let per = (conns / sockets.len()).max(1);
    let runs: Vec<Result<Throughput>> = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|socket| {
                s.spawn(move || {
                    scenarios::submit(socket, per, Stop::After(Duration::from_secs_f64(seconds)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let mut total = Throughput {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Samples::default(),
    };
    for r in runs {
        let t = r?;
        total.ok += t.ok;
        total.errors += t.errors;
        total.elapsed = total.elapsed.max(t.elapsed);
        total.latency.merge(t.latency);
    }
    Ok(total)
}

pub fn run(opts: &Options, bin: &Path) -> Result<Vec<Row>> {
    let dir = tempfile::Builder::new()
        .prefix("orchbench-cluster-")
        .tempdir()?;
    let mut rows = Vec::new();

    // SQLite, one node: the reference.
    let sqlite = start_nodes(
        bin,
        &dir.path().join("sqlite"),
        &["[http]\nlisten = \"off\"\n".to_string()],
    )?;
    let sockets: Vec<PathBuf> = sqlite.iter().map(|(_, s)| s.clone()).collect();
    let t = submit_spread(&sockets, opts.connections, opts.seconds)?;
    rows.push(Row {
        store: "SQLite".into(),
        nodes: 1,
        t,
    });
    for (d, _) in sqlite {
        d.stop()?;
    }

    let pg = TempPostgres::start().context("start PostgreSQL (apt-get install postgresql)")?;
    for n in 1..=opts.max_nodes.max(1) {
        let db = format!("nodes{n}");
        pg.create_database(&db)?;
        let configs: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npool_size = {}\n\
                     [node]\nid = \"bench-{i}\"\n[http]\nlisten = \"off\"\n",
                    pg.url(&db),
                    opts.pool_size
                )
            })
            .collect();
        let nodes = start_nodes(bin, &dir.path().join(&db), &configs)?;
        let sockets: Vec<PathBuf> = nodes.iter().map(|(_, s)| s.clone()).collect();
        let t = submit_spread(&sockets, opts.connections, opts.seconds)?;
        rows.push(Row {
            store: "PostgreSQL".into(),
            nodes: n,
            t,
        });
        for (d, _) in nodes {
            d.stop()?;
        }
    }
    Ok(rows)
}

pub fn print(opts: &Options, rows: &[Row]) {
    println!(
        "| store | nodes | submits/s (= dispatched synthetic tasks/s) | p50 ms | p99 ms | vs SQLite |"
    );
    println!("|---|---|---|---|---|---|");
    let base = rows.first().map(|r| r.t.per_sec()).unwrap_or(f64::NAN);
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2}× |",
            r.store,
            r.nodes,
            r.t.per_sec(),
            r.t.latency.pct_ms(50.0),
            r.t.latency.pct_ms(99.0),
            r.t.per_sec() / base
        );
    }
    println!(
        "\n{} connections in all, spread evenly over the nodes; {:.0} s per row; pool_size {}.",
        opts.connections, opts.seconds, opts.pool_size
    );
}
