//! Many connections at once, each with one request in flight at a time, timed from the request to
//! its reply. All of them are driven by one event loop on one thread (tokio's current-thread
//! runtime), the way `redis-benchmark` drives a server.
//!
//! The load generator shares this machine's cores with the daemon under test. A thread per
//! connection cost 7–15 µs of CPU per request in thread switches and wake-ups, and its 64 runnable
//! threads took turns on the cores with the daemon's store writer; one loop costs about 4 µs and is
//! one thread (docs/BENCHMARKS.md, "One load generator thread").

use crate::client::Reply;
use crate::stats::{Samples, Throughput};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use orchestrator_proto::frame::{codec, decode, encode, DEFAULT_MAX_FRAME};
use orchestrator_proto::message::{ClientMessage, Hello, Request};
use orchestrator_proto::ServerMessage;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// When each connection stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many requests per connection.
    Count(u64),
    /// The same, or before a connection's next request once `cut` answers true (a signal
    /// noted, say): the caller tells a cut run from a whole one.
    CountUnless(u64, fn() -> bool),
    /// When this much time has passed since all connections were open.
    After(Duration),
}

/// Outcome of one request as the workload sees it.
pub enum Outcome {
    Ok,
    /// The daemon answered with an error.
    Refused(String),
}

/// The longest wait for one reply before the run fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What one connection did: requests answered, requests refused, latencies, first error messages.
type ConnResult = (u64, u64, Samples, Vec<String>);

/// Run `conns` connections. Connection `c` sends `request(c, i)` as its `i`th request, and
/// `judge(c, i, reply)` says how that went. Connections open first; the clock starts when all of
/// them are open. Transport failures end the run with an error; the daemon's errors are counted.
pub fn run<R, J>(
    socket: &Path,
    conns: usize,
    stop: Stop,
    request: R,
    judge: J,
) -> Result<(Throughput, Vec<String>)>
where
    R: Fn(usize, u64) -> Request,
    J: Fn(usize, u64, Reply) -> Result<Outcome>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the load generator's event loop")?;
    runtime.block_on(async {
        let opened = join_all((0..conns).map(|_| Conn::open(socket))).await;
        let opened: Vec<Conn> = opened.into_iter().collect::<Result<_>>()?;
        let start = Instant::now();
        let deadline = match stop {
            Stop::After(d) => Some(start + d),
            Stop::Count(_) | Stop::CountUnless(..) => None,
        };
        let (request, judge) = (&request, &judge);
        let runs = opened
            .into_iter()
            .enumerate()
            .map(|(c, mut conn)| async move {
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut latency = Samples::default();
                let mut messages = Vec::new();
                let mut i = 0u64;
                loop {
                    match (stop, deadline) {
                        (Stop::Count(n), _) if i >= n => break,
                        (Stop::CountUnless(n, cut), _) if i >= n || cut() => break,
                        (_, Some(end)) if Instant::now() >= end => break,
                        _ => {}
                    }
                    let req = request(c, i);
                    let t = Instant::now();
                    let reply = conn.call(req).await?;
                    latency.push(t.elapsed());
                    match judge(c, i, reply)? {
                        Outcome::Ok => ok += 1,
                        Outcome::Refused(m) => {
                            errors += 1;
                            if messages.len() < 5 {
                                messages.push(m);
                            }
                        }
                    }
                    i += 1;
                }
                Ok::<ConnResult, anyhow::Error>((ok, errors, latency, messages))
            });
        let results = join_all(runs).await;
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
    })
}

/// One connection of the event loop, speaking the real protocol (the daemon's own framing,
/// [`codec`]): hello, then one reply per request.
struct Conn(Framed<UnixStream, LengthDelimitedCodec>);

impl Conn {
    async fn open(socket: &Path) -> Result<Conn> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let mut conn = Conn(Framed::new(stream, codec(64 * DEFAULT_MAX_FRAME)));
        match conn
            .exchange(&ClientMessage::Hello(Hello::current("orchbench")))
            .await?
        {
            ServerMessage::Hello(_) => Ok(conn),
            ServerMessage::Err(e) => bail!("hello refused: {e}"),
            other => bail!("unexpected hello reply: {other:?}"),
        }
    }

    /// One request, one reply. Transport failures are `Err`; daemon errors are `Ok(Err(_))`.
    async fn call(&mut self, request: Request) -> Result<Reply> {
        match self.exchange(&ClientMessage::Request(request)).await? {
            ServerMessage::Ok(r) => Ok(Ok(*r)),
            ServerMessage::Err(e) => Ok(Err(e)),
            other => Err(anyhow!("unexpected reply: {other:?}")),
        }
    }

    /// Send one frame and read the one that answers it.
    async fn exchange(&mut self, msg: &ClientMessage) -> Result<ServerMessage> {
        let payload = encode(msg).context("cannot encode a request")?;
        self.0
            .send(Bytes::from(payload))
            .await
            .context("cannot send a request")?;
        match tokio::time::timeout(REPLY_TIMEOUT, self.0.next()).await {
            Ok(Some(Ok(frame))) => decode(&frame).context("cannot decode a reply"),
            Ok(Some(Err(e))) => Err(e).context("cannot read a reply"),
            Ok(None) => bail!("cannot read a reply: the daemon closed the connection"),
            Err(_) => bail!("no reply within {REPLY_TIMEOUT:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_proto::frame::{read_frame, write_frame};
    use orchestrator_proto::message::{HelloReply, Response};
    use orchestrator_proto::{ErrorCode, TaskKind, WireError};
    use std::os::unix::net::{UnixListener, UnixStream};

    /// A server on `socket` that answers `ShowTask { id }` with the id as its metrics text, refuses
    /// ids ending in `!` with that id as the message, and closes the connection at an id of `close`.
    /// Each connection's ids, in the order they came, are sent to `seen` when it ends.
    fn server(listener: UnixListener, seen: std::sync::mpsc::Sender<Vec<String>>) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || serve(stream, seen));
        }
    }

    fn serve(stream: UnixStream, seen: std::sync::mpsc::Sender<Vec<String>>) {
        let (mut r, mut w) = (stream.try_clone().unwrap(), stream);
        let mut ids = Vec::new();
        loop {
            let answer = match read_frame::<_, ClientMessage>(&mut r, DEFAULT_MAX_FRAME) {
                Ok(ClientMessage::Hello(_)) => ServerMessage::Hello(HelloReply {
                    major: 1,
                    minor: 0,
                    daemon_version: "test".into(),
                    mode: TaskKind::Synthetic,
                }),
                Ok(ClientMessage::Request(Request::ShowTask { id })) => {
                    ids.push(id.clone());
                    if id == "close" {
                        break;
                    } else if id.ends_with('!') {
                        ServerMessage::Err(WireError::new(ErrorCode::NotFound, id))
                    } else {
                        ServerMessage::Ok(Box::new(Response::Metrics(id)))
                    }
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            };
            if write_frame(&mut w, &answer).is_err() {
                break;
            }
        }
        let _ = seen.send(ids);
    }

    fn listening() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::sync::mpsc::Receiver<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || server(listener, tx));
        (dir, socket, rx)
    }

    /// Every connection sends its requests in order, each reply is judged with the request it
    /// answers, and refusals are counted apart with their messages.
    #[test]
    fn each_connection_sends_its_requests_in_turn_and_each_reply_meets_its_request() {
        let (_dir, socket, seen) = listening();
        let (conns, per) = (8usize, 25u64);
        let id = |c: usize, i: u64| {
            let refused = i % 10 == 9;
            format!("{c}-{i}{}", if refused { "!" } else { "" })
        };
        let (t, messages) = run(
            &socket,
            conns,
            Stop::Count(per),
            |c, i| Request::ShowTask { id: id(c, i) },
            |c, i, reply| match reply {
                Ok(Response::Metrics(text)) if text == id(c, i) => Ok(Outcome::Ok),
                Err(e) if e.message == id(c, i) => Ok(Outcome::Refused(e.message)),
                other => Err(anyhow!("connection {c}, request {i} got {other:?}")),
            },
        )
        .unwrap();
        assert_eq!((t.ok, t.errors), (8 * 23, 8 * 2));
        assert_eq!(t.latency.len(), 8 * 25);
        let mut refused = messages.clone();
        refused.sort();
        let mut expected: Vec<String> = (0..conns).flat_map(|c| [id(c, 9), id(c, 19)]).collect();
        expected.sort();
        assert_eq!(refused, expected);
        // Hello aside, each connection's server saw its ids in order, and nothing else.
        let mut all: Vec<Vec<String>> = (0..conns).map(|_| seen.recv().unwrap()).collect();
        all.sort_by_key(|ids| ids.first().cloned());
        for (c, ids) in all.iter().enumerate() {
            assert_eq!(*ids, (0..per).map(|i| id(c, i)).collect::<Vec<_>>());
        }
    }

    /// A connection the daemon closes ends the run with an error, not with fewer requests counted.
    #[test]
    fn a_closed_connection_fails_the_run() {
        let (_dir, socket, _seen) = listening();
        let failed = run(
            &socket,
            4,
            Stop::Count(10),
            |c, i| {
                let id = if c == 2 && i == 5 {
                    "close".into()
                } else {
                    format!("{c}-{i}")
                };
                Request::ShowTask { id }
            },
            |_, _, _| Ok(Outcome::Ok),
        )
        .unwrap_err();
        assert!(
            format!("{failed:#}").contains("cannot read a reply"),
            "{failed:#}"
        );
    }

    /// With a time to stop, connections keep sending until it has passed, and the run's time
    /// covers it.
    #[test]
    fn a_timed_run_lasts_its_time() {
        let (_dir, socket, _seen) = listening();
        let (t, _) = run(
            &socket,
            2,
            Stop::After(Duration::from_millis(200)),
            |c, i| Request::ShowTask {
                id: format!("{c}-{i}"),
            },
            |_, _, _| Ok(Outcome::Ok),
        )
        .unwrap();
        assert!(t.elapsed >= Duration::from_millis(200), "{:?}", t.elapsed);
        assert!(t.ok > 0);
        assert_eq!(t.latency.len() as u64, t.ok);
    }

    /// A run that may be cut stops each connection before its next request once the cut answers
    /// true, well short of its count. The first connection to have its fifth answer cuts: by
    /// then the other has had at most five answers and one request in flight.
    #[test]
    fn a_cut_run_stops_before_the_next_request() {
        static CUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        fn cut() -> bool {
            CUT.load(std::sync::atomic::Ordering::SeqCst)
        }
        let (_dir, socket, seen) = listening();
        let (t, _) = run(
            &socket,
            2,
            Stop::CountUnless(1_000, cut),
            |c, i| Request::ShowTask {
                id: format!("{c}-{i}"),
            },
            |_, i, _| {
                if i == 4 {
                    CUT.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(Outcome::Ok)
            },
        )
        .unwrap();
        let sent: Vec<usize> = (0..2).map(|_| seen.recv().unwrap().len()).collect();
        assert!(sent.contains(&5), "{sent:?}");
        assert!(sent.iter().all(|n| *n <= 6), "{sent:?}");
        assert_eq!(t.ok, sent.iter().sum::<usize>() as u64);
    }
}
