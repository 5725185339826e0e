//! The machine's own limit: append a small record and flush it to the device, in a loop, in the
//! filesystem the daemon's store lives on. A durable commit cannot be faster than one of these.

use crate::stats::{Samples, Throughput};
use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// `fdatasync(2)`: data and the metadata needed to read it back.
    Data,
    /// `fsync(2)`: everything.
    All,
}

pub fn run(dir: &Path, flush: Flush, duration: Duration) -> Result<Throughput> {
    let path = dir.join(format!("orchbench-fsync-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // A record about the size of a small task row in a WAL frame header plus payload.
    let record = [0x5au8; 128];
    let mut latency = Samples::default();
    let mut ok = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        f.write_all(&record)?;
        match flush {
            Flush::Data => f.sync_data()?,
            Flush::All => f.sync_all()?,
        }
        latency.push(t.elapsed());
        ok += 1;
    }
    let elapsed = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(Throughput {
        ok,
        errors: 0,
        elapsed,
        latency,
    })
}
