//! The machine's own limit: append a small record and flush it to the device, in a loop, in the
//! filesystem the daemon's store lives on. A durable commit cannot be faster than one of these.

use crate::stats::{Samples, Throughput};
use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether each record extends the file or overwrites a region written (and flushed) beforehand, as
/// a WAL does once it wraps: extending also makes the flush write the file's new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Append,
    Overwrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// `fdatasync(2)`: data and the metadata needed to read it back.
    Data,
    /// `fsync(2)`: everything.
    All,
}

/// The four ways of the raw loop, named as the benchmark table shows them.
pub const VARIANTS: [(&str, Place, Flush); 4] = [
    ("append 128 B + fdatasync", Place::Append, Flush::Data),
    ("append 128 B + fsync", Place::Append, Flush::All),
    (
        "overwrite 128 B in place + fdatasync",
        Place::Overwrite,
        Flush::Data,
    ),
    (
        "overwrite 128 B in place + fsync",
        Place::Overwrite,
        Flush::All,
    ),
];

pub fn run(dir: &Path, place: Place, flush: Flush, duration: Duration) -> Result<Throughput> {
    let path = dir.join(format!("orchbench-fsync-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // A record about the size of a small task row in a WAL frame header plus payload.
    let record = [0x5au8; 128];
    const REGION: u64 = 4 * 1024 * 1024;
    if place == Place::Overwrite {
        f.write_all(&vec![0u8; REGION as usize])?;
        f.sync_all()?;
    }
    let mut latency = Samples::default();
    let mut ok = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        match place {
            Place::Append => f.write_all(&record)?,
            Place::Overwrite => f.write_all_at(&record, (ok * 4096) % REGION)?,
        }
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
