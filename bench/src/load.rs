//! Many connections at once, each on its own thread, each sending one request at a time and timing
//! it — the way `redis-benchmark` drives a server.

use crate::client::Conn;
use crate::stats::{Samples, Throughput};
use anyhow::{anyhow, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// When each connection stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many requests per connection.
    Count(u64),
    /// When this much time has passed since all connections were open.
    After(Duration),
}

/// Outcome of one request as the workload sees it.
pub enum Outcome {
    Ok,
    /// The daemon answered with an error.
    Refused(String),
}

/// What one connection did: requests answered, requests refused, latencies, first error messages.
type ConnResult = (u64, u64, Samples, Vec<String>);

/// Run `conns` connections; `work(conn_index, request_index, conn)` sends one request.
/// Connections open first; the clock starts when all of them are ready.
pub fn run<W>(socket: &Path, conns: usize, stop: Stop, work: W) -> Result<(Throughput, Vec<String>)>
where
    W: Fn(usize, u64, &mut Conn) -> Result<Outcome> + Sync,
{
    let barrier = Barrier::new(conns + 1);
    let stop_flag = AtomicBool::new(false);
    let mut start = Instant::now();
    let results: Vec<Result<ConnResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|c| {
                let (barrier, stop_flag, work) = (&barrier, &stop_flag, &work);
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let conn = Conn::open(socket);
                        barrier.wait();
                        let mut conn = conn?;
                        let (mut ok, mut errors) = (0u64, 0u64);
                        let mut latency = Samples::default();
                        let mut messages = Vec::new();
                        let mut i = 0u64;
                        loop {
                            match stop {
                                Stop::Count(n) if i >= n => break,
                                Stop::After(_) if stop_flag.load(Ordering::Relaxed) => break,
                                _ => {}
                            }
                            let t = Instant::now();
                            match work(c, i, &mut conn)? {
                                Outcome::Ok => ok += 1,
                                Outcome::Refused(m) => {
                                    errors += 1;
                                    if messages.len() < 5 {
                                        messages.push(m);
                                    }
                                }
                            }
                            latency.push(t.elapsed());
                            i += 1;
                        }
                        Ok((ok, errors, latency, messages))
                    })
                    .map_err(|e| anyhow!("cannot start a client thread: {e}"))
            })
            .collect();
        barrier.wait();
        start = Instant::now();
        if let Stop::After(d) = stop {
            std::thread::sleep(d);
            stop_flag.store(true, Ordering::Relaxed);
        }
        handles
            .into_iter()
            .map(|h| h.and_then(|h| h.join().map_err(|_| anyhow!("a client thread panicked"))?))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut total = Throughput {
        ok: 0,
        errors: 0,
        elapsed,
        latency: Samples::default(),
    };
    let mut messages = Vec::new();
    for r in results {
        let (ok, errors, latency, m) = r?;
        total.ok += ok;
        total.errors += errors;
        total.latency.merge(latency);
        messages.extend(m);
    }
    Ok((total, messages))
}
