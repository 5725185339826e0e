//! `orchbench console`: the web console against a large store — the server time of each page
//! (measured at the client over loopback, so an upper bound), and how long a committed state change
//! takes to reach an open page's event stream.
//!
//! It seeds a store, starts the daemon with HTTP on an ephemeral loopback port, signs in with a
//! login link from the socket, and speaks plain HTTP/1.1 over a `TcpStream`.

use crate::client::Conn;
use crate::proc::Daemon;
use crate::seed::{self, Plan};
use crate::stats::Samples;
use anyhow::{anyhow, bail, Context, Result};
use orchestrator_proto::message::{Request, Response};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// One GET on a fresh connection; the status and the body.
fn get(addr: &str, path: &str, cookie: &str) -> Result<(u16, Vec<String>, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status line from {path}"))?;
    let cookies = head
        .lines()
        .filter_map(|l| l.strip_prefix("set-cookie: "))
        .map(str::to_string)
        .collect();
    Ok((status, cookies, body.to_string()))
}

pub struct Report {
    pub tasks: u64,
    pub pages: Vec<(String, Samples)>,
    pub sse: Samples,
}

pub fn run(daemon_bin: &Path, tasks: u64, runs: usize, changes: usize) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state)?;
    let plan = Plan {
        tasks,
        in_window: tasks / 10,
        due: 0,
        due_at_ms: 0,
        due_among: 1,
        events: true,
        before_last_migration: false,
    };
    let seeded = seed::seed(&state.join("orchestrator.db"), plan)?;
    eprintln!("seeded {} tasks in {:.1} s", seeded.tasks, seeded.seconds);
    // A daemon indexes goals for the text filter while idle; index them all before timing, as a
    // daemon that has run for a while would have.
    let (indexed, secs) = seed::index_goals(&state.join("orchestrator.db"))?;
    eprintln!("indexed {indexed} goals in {secs:.1} s");
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:0\"\n")?;
    let socket = dir.path().join("orchestrator.sock");
    let daemon = Daemon::start(
        daemon_bin,
        &socket,
        &state,
        Some(&config),
        &dir.path().join("daemon.log"),
    )?;
    let mut conn = Conn::open(&socket)?;
    let url = match conn.ok(Request::ConsoleLink)? {
        Response::ConsoleLink(link) => link.url,
        other => bail!("console link answered {other:?}"),
    };
    let rest = url.strip_prefix("http://").context("link is not http")?;
    let (addr, login) = rest.split_once('/').context("link has no path")?;
    let (_, cookies, _) = get(addr, &format!("/{login}"), "")?;
    let cookie = cookies
        .iter()
        .find(|c| c.starts_with("orch_session=") && !c.starts_with("orch_session=;"))
        .and_then(|c| c.split(';').next())
        .context("no session cookie")?
        .to_string();

    // A task id to show: the newest in the listing.
    let (_, _, pipeline) = get(addr, "/console/pipeline?kind=live", &cookie)?;
    let id = pipeline
        .split("data-id=\"")
        .nth(1)
        .and_then(|s| s.get(..26))
        .context("no task on the pipeline page")?
        .to_string();
    let paths = [
        "/console/approvals".to_string(),
        "/console/pipeline".to_string(),
        "/console/pipeline?kind=live&state=done".to_string(),
        format!("/console/pipeline?kind=live&before={id}"),
        // Goal text found nowhere, in one task, and in every task.
        "/console/pipeline?kind=live&q=debug".to_string(),
        "/console/pipeline?kind=live&q=task%20123457%3A".to_string(),
        "/console/pipeline?kind=live&q=quarterly".to_string(),
        format!("/console/tasks/{id}"),
        "/console/rollout?window=24".to_string(),
        "/console/agents".to_string(),
    ];
    let mut pages = Vec::new();
    for path in paths {
        let mut samples = Samples::default();
        for _ in 0..runs {
            let t = Instant::now();
            let (status, _, _) = get(addr, &path, &cookie)?;
            samples.push(t.elapsed());
            if status != 200 {
                bail!("{path} answered {status}");
            }
        }
        pages.push((path, samples));
    }

    // Commit → event stream: from sending a submit to reading its event on an open stream.
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET /console/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n"
    )?;
    let mut events = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        events.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut sse = Samples::default();
    for i in 0..changes {
        let t = Instant::now();
        let task = conn
            .submit(&format!("console latency probe {i}"))?
            .map_err(|e| anyhow!("{e}"))?;
        loop {
            line.clear();
            if events.read_line(&mut line)? == 0 {
                bail!("the event stream ended");
            }
            if line.contains(&task.id) {
                sse.push(t.elapsed());
                break;
            }
        }
    }
    daemon.stop()?;
    Ok(Report {
        tasks: seeded.tasks,
        pages,
        sse,
    })
}

pub fn print(r: &Report) {
    println!("console with {} stored tasks", r.tasks);
    println!("| page | runs | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (path, s) in &r.pages {
        println!(
            "| `{path}` | {} | {:.2} | {:.2} | {:.2} |",
            s.len(),
            s.median_ms(),
            s.pct_ms(99.0),
            s.max_ms()
        );
    }
    println!(
        "| submit → event on an open stream | {} | {:.2} | {:.2} | {:.2} |",
        r.sse.len(),
        r.sse.median_ms(),
        r.sse.pct_ms(99.0),
        r.sse.max_ms()
    );
}
