//! The machine's own limit: append a small record and flush it to the device, in a loop, in the
//! filesystem the daemon's store lives on. A durable commit cannot be faster than one of these.
//!
//! [`served`] puts the same flush behind a socket: one client sends a request and waits for its
//! answer, and a server that does nothing else overwrites 128 bytes, flushes them and answers. That
//! is the floor of any daemon answering one connection after a flush of its own. A third server
//! writes, before its flush, as many log frames as one durable submit's commit does: the floor of
//! a daemon whose commit is as large as ours. What a durable submit adds on top of it is the
//! daemon's work (see docs/BENCHMARKS.md, "One connection against a server that only flushes" and
//! "… that writes a commit").

use crate::stats::{Samples, Throughput};
use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
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

/// Where the server of [`served`] flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// On the thread that reads the request.
    Alone,
    /// On a second thread, handed the request and handing back its answer, as a daemon's socket
    /// task hands a write to its store writer.
    HandOff,
    /// As [`Server::HandOff`], but the second thread writes what one durable submit's commit writes
    /// to the store's write-ahead log before the flush: [`COMMIT_FRAMES`] frames, each a header and
    /// a page written apart, one after the other.
    Commit,
}

/// The log frames one submit's commit writes at one connection: the task's row, its three index
/// entries, its events, the counts and the events' sequence (7), and now and then a page split or
/// the file's header. Read from a daemon's log after a run (docs/BENCHMARKS.md, "One connection
/// against a server that writes a commit"): 1,965 frames in 242 commits, 8.1 each.
pub const COMMIT_FRAMES: u64 = 8;
/// A log frame's header, and the page that follows it (SQLite's default page size).
const FRAME_HEADER: usize = 24;
const PAGE: usize = 4096;

/// The three ways of [`served`], named as the benchmark table shows them.
pub const SERVERS: [(&str, Server); 3] = [
    (
        "one client, a server that only overwrites 128 B + fdatasync",
        Server::Alone,
    ),
    (
        "one client, a server that hands each request to a flushing thread",
        Server::HandOff,
    ),
    (
        "one client, a server that hands each request to a thread writing a submit's 8 log frames + fdatasync",
        Server::Commit,
    ),
];

/// The size of a request of [`served`]: about that of a small submit's frame.
const REQUEST: usize = 64;
/// Its answer.
const ANSWER: [u8; 8] = [0xa5; 8];
/// The region the records rotate through, written and flushed beforehand, as a WAL once it wraps.
const REGION: u64 = 4 * 1024 * 1024;

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

/// One client over a Unix socket in `dir`, one request at a time for `duration`, each answered by
/// a server thread after it has overwritten 128 bytes of a file in `dir` (or a commit's frames,
/// for [`Server::Commit`]) and flushed them (`fdatasync`). Threads of this process stand for the
/// two processes: the same socket, the same wake-ups, no address space switched, so the figure is
/// if anything a little better than two processes would get.
pub fn served(dir: &Path, server: Server, duration: Duration) -> Result<Throughput> {
    let run = tempfile::Builder::new()
        .prefix("orchbench-served-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot make a directory in {}", dir.display()))?;
    let socket = run.path().join("s.sock");
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(run.path().join("records"))?;
    file.write_all_at(&vec![0u8; REGION as usize], 0)?;
    file.sync_all()?;
    let serving =
        std::thread::Builder::new()
            .name("served".into())
            .spawn(move || -> Result<()> {
                let (conn, _) = listener.accept()?;
                serve(conn, file, server)
            })?;
    let client = || -> Result<Throughput> {
        let mut conn = UnixStream::connect(&socket)?;
        let mut request = [0x3cu8; 4 + REQUEST];
        request[..4].copy_from_slice(&(REQUEST as u32).to_le_bytes());
        let mut answer = [0u8; ANSWER.len()];
        let mut latency = Samples::default();
        let mut ok = 0u64;
        let start = Instant::now();
        while start.elapsed() < duration {
            let t = Instant::now();
            conn.write_all(&request)?;
            conn.read_exact(&mut answer)?;
            latency.push(t.elapsed());
            ok += 1;
        }
        Ok(Throughput {
            ok,
            errors: 0,
            elapsed: start.elapsed(),
            latency,
        })
        // The connection closes here, which ends the server.
    };
    let measured = client();
    let served = serving
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))?;
    let measured = measured?;
    served?;
    Ok(measured)
}

/// Answer each request on `conn` after overwriting 128 bytes of `file` (or, for
/// [`Server::Commit`], a commit's frames) and flushing them, until the client closes the
/// connection.
fn serve(mut conn: UnixStream, file: std::fs::File, server: Server) -> Result<()> {
    let record = [0x5au8; 128];
    let header = [0x6bu8; FRAME_HEADER];
    let page = [0x7cu8; PAGE];
    let frame = (FRAME_HEADER + PAGE) as u64;
    let flush = move |n: u64| -> std::io::Result<()> {
        if server == Server::Commit {
            // The frames follow each other through the region, as a log's do until it wraps.
            let first = n * COMMIT_FRAMES;
            for i in first..first + COMMIT_FRAMES {
                let at = (i * frame) % (REGION - frame);
                file.write_all_at(&header, at)?;
                file.write_all_at(&page, at + FRAME_HEADER as u64)?;
            }
        } else {
            file.write_all_at(&record, (n * 4096) % REGION)?;
        }
        file.sync_data()
    };
    let mut flushing = match server {
        Server::Alone => Flushing::Here(Box::new(flush)),
        Server::HandOff | Server::Commit => {
            let (to, requests) = mpsc::channel::<u64>();
            let (done, results) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("flusher".into())
                .spawn(move || {
                    for n in requests {
                        if done.send(flush(n)).is_err() {
                            break;
                        }
                    }
                })?;
            Flushing::Handed(to, results, thread)
        }
    };
    let mut frame = [0u8; REQUEST];
    let mut len = [0u8; 4];
    for n in 0u64.. {
        match conn.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let size = u32::from_le_bytes(len) as usize;
        anyhow::ensure!(size == REQUEST, "a request of {size} bytes");
        conn.read_exact(&mut frame)?;
        match &mut flushing {
            Flushing::Here(flush) => flush(n)?,
            Flushing::Handed(to, results, _) => {
                to.send(n)?;
                results.recv()??;
            }
        }
        conn.write_all(&ANSWER)?;
    }
    if let Flushing::Handed(to, _, thread) = flushing {
        drop(to);
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the flushing thread panicked"))?;
    }
    Ok(())
}

/// Where [`serve`] flushes: on its own thread, or on a thread it hands each request to.
enum Flushing {
    Here(Box<dyn Fn(u64) -> std::io::Result<()> + Send>),
    Handed(
        mpsc::Sender<u64>,
        mpsc::Receiver<std::io::Result<()>>,
        std::thread::JoinHandle<()>,
    ),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way of the served floor answers its client, one request at a time, and ends when the
    /// client is done: every answered request has its latency, and the socket's directory is gone.
    #[test]
    fn a_served_flush_answers_each_request_and_ends_with_its_client() {
        let dir = tempfile::tempdir().unwrap();
        for (name, server) in SERVERS {
            let t = served(dir.path(), server, Duration::from_millis(200)).unwrap();
            assert!(t.ok > 0, "{name}: nothing answered");
            assert_eq!(t.latency.len() as u64, t.ok, "{name}");
            assert!(t.elapsed >= Duration::from_millis(200), "{name}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The commit-sized server writes a submit's frames for each request, one after the other,
    /// each a header and then a page, before it answers.
    #[test]
    fn the_commit_sized_server_writes_a_submits_frames_for_each_request() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let records = dir.path().join("records");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&records)
            .unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            serve(conn, file, Server::Commit)
        });
        let mut conn = UnixStream::connect(&socket).unwrap();
        let mut request = [0u8; 4 + REQUEST];
        request[..4].copy_from_slice(&(REQUEST as u32).to_le_bytes());
        for _ in 0..2 {
            conn.write_all(&request).unwrap();
            let mut answer = [0u8; ANSWER.len()];
            conn.read_exact(&mut answer).unwrap();
            assert_eq!(answer, ANSWER);
        }
        drop(conn);
        server.join().unwrap().unwrap();
        let written = std::fs::read(&records).unwrap();
        let frame = FRAME_HEADER + PAGE;
        assert_eq!(written.len(), 2 * COMMIT_FRAMES as usize * frame);
        for (i, f) in written.chunks(frame).enumerate() {
            assert!(
                f[..FRAME_HEADER].iter().all(|&b| b == 0x6b),
                "frame {i}'s header"
            );
            assert!(
                f[FRAME_HEADER..].iter().all(|&b| b == 0x7c),
                "frame {i}'s page"
            );
        }
    }

    /// A request of another size is refused by the server, and the client sees the connection end.
    #[test]
    fn a_request_of_another_size_ends_the_server_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.path().join("records"))
            .unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            serve(conn, file, Server::Alone)
        });
        let mut conn = UnixStream::connect(&socket).unwrap();
        // The announced size alone: the server refuses it before reading anything more, so the
        // connection ends with nothing of ours unread (which would make it a reset).
        conn.write_all(&3u32.to_le_bytes()).unwrap();
        let err = server.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("a request of 3 bytes"), "{err}");
        let mut rest = Vec::new();
        assert_eq!(conn.read_to_end(&mut rest).unwrap(), 0);
    }
}
