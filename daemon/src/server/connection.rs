//! One client connection: peer check, hello, then one reply per request.
//!
//! Every reply is encoded first and measured against the frame limit: one that would not fit is
//! replaced by a `reply_too_large` error (and a log line) rather than dropped with the connection.
//! Replies are given in the protocol minor the client announced in its hello.

use super::handlers;
use crate::access::{Access, Peer};
use crate::daemon::Daemon;
use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use orchestrator_proto::compat::encode_for_minor;
use orchestrator_proto::frame::{codec, decode, encode};
use orchestrator_proto::message::{
    ClientMessage, HelloReply, Request, MAGIC, PROTOCOL_MAJOR, PROTOCOL_MINOR,
};
use orchestrator_proto::{ErrorCode, ServerMessage, WireError};
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

type Conn = Framed<UnixStream, LengthDelimitedCodec>;

async fn send(conn: &mut Conn, msg: &ServerMessage) -> bool {
    send_to(conn, msg, PROTOCOL_MINOR).await
}

/// Send to a client that announced protocol minor `minor`.
async fn send_to(conn: &mut Conn, msg: &ServerMessage, minor: u16) -> bool {
    let bytes = match encode_for_minor(msg, minor) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a reply");
            return false;
        }
    };
    let max = conn.codec().max_frame_length();
    if bytes.len() > max {
        return send_too_large(conn, bytes.len(), max, minor).await;
    }
    conn.send(Bytes::from(bytes)).await.is_ok()
}

/// Say why a reply was not sent. The error names the sizes and what to ask for instead.
async fn send_too_large(conn: &mut Conn, size: usize, max: usize, minor: u16) -> bool {
    tracing::warn!(
        size,
        max,
        "a reply was larger than the frame limit; answered reply_too_large instead"
    );
    let err = WireError::new(
        ErrorCode::ReplyTooLarge,
        format!(
            "the reply would be {size} bytes, over the frame limit of {max}: ask for less \
             (tasks list: use --limit N or page with --before ID), or raise [socket] max_frame"
        ),
    )
    .with("size", size.to_string())
    .with("max", max.to_string())
    .for_minor(minor);
    match encode(&ServerMessage::Err(err)) {
        Ok(bytes) => conn.send(Bytes::from(bytes)).await.is_ok(),
        Err(_) => false,
    }
}

async fn refuse(d: &Daemon, conn: &mut Conn, err: WireError) {
    Metrics::inc(&d.metrics.protocol_errors);
    tracing::debug!(code = %err.code, message = %err.message, "closing connection after a protocol error");
    let _ = send(conn, &ServerMessage::Err(err)).await;
    let _ = SinkExt::<Bytes>::close(conn).await;
}

enum Next {
    Message(ClientMessage),
    Closed,
    Bad(WireError),
}

async fn next(conn: &mut Conn, max_frame: usize) -> Next {
    match conn.next().await {
        None => Next::Closed,
        Some(Err(e)) => match e.kind() {
            std::io::ErrorKind::InvalidData => Next::Bad(
                WireError::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame exceeds the limit of {max_frame} bytes"),
                )
                .with("max", max_frame.to_string()),
            ),
            // The codec's "bytes remaining on stream": the peer stopped sending inside a frame. It
            // may still be reading (a half-closed socket), so it is told why before the close.
            std::io::ErrorKind::Other => Next::Bad(WireError::new(
                ErrorCode::MalformedRequest,
                "truncated frame: the connection ended inside a frame",
            )),
            _ => Next::Closed,
        },
        Some(Ok(frame)) => match decode::<ClientMessage>(&frame) {
            Ok(msg) => Next::Message(msg),
            Err(e) => Next::Bad(WireError::new(
                ErrorCode::MalformedRequest,
                format!("undecodable frame: {e}"),
            )),
        },
    }
}

pub async fn serve(d: Arc<Daemon>, stream: UnixStream) {
    Metrics::inc(&d.metrics.connections);
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let max_frame = d.config().socket.max_frame;
    let mut conn = Framed::new(stream, codec(max_frame));
    let access = d.access().check(&peer);
    if access == Access::Denied {
        tracing::info!(uid = peer.uid, user = %peer.user(), "refused a connection from a peer that is not allowed");
        let err = WireError::new(
            ErrorCode::PermissionDenied,
            format!("user {} may not use this socket", peer.user()),
        )
        .with("uid", peer.uid.to_string());
        refuse(&d, &mut conn, err).await;
        return;
    }

    // The handshake comes first; the client's minor says which replies it can decode.
    let minor = match next(&mut conn, max_frame).await {
        Next::Closed => return,
        Next::Bad(err) => return refuse(&d, &mut conn, err).await,
        Next::Message(ClientMessage::Request(_)) => {
            let err = WireError::new(
                ErrorCode::ProtocolMismatch,
                "the first frame must be a hello",
            );
            return refuse(&d, &mut conn, err).await;
        }
        Next::Message(ClientMessage::Hello(h)) => {
            if h.magic != MAGIC || h.major != PROTOCOL_MAJOR {
                let err = WireError::new(
                    ErrorCode::ProtocolMismatch,
                    format!(
                        "client speaks protocol {}.{} (magic {:#x}); daemon speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
                        h.major, h.minor, h.magic
                    ),
                )
                .with("client", format!("{}.{}", h.major, h.minor))
                .with("daemon", format!("{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"));
                return refuse(&d, &mut conn, err).await;
            }
            let reply = ServerMessage::Hello(HelloReply {
                major: PROTOCOL_MAJOR,
                minor: PROTOCOL_MINOR,
                daemon_version: env!("CARGO_PKG_VERSION").to_string(),
                mode: d.mode().effective,
            });
            if !send(&mut conn, &reply).await {
                return;
            }
            h.minor
        }
    };

    loop {
        let request = tokio::select! {
            _ = d.shutdown.cancelled() => return,
            n = next(&mut conn, max_frame) => n,
        };
        let request = match request {
            Next::Closed => return,
            Next::Bad(err) => return refuse(&d, &mut conn, err).await,
            Next::Message(ClientMessage::Hello(_)) => {
                let err = WireError::new(ErrorCode::MalformedRequest, "hello was already received");
                return refuse(&d, &mut conn, err).await;
            }
            Next::Message(ClientMessage::Request(r)) => r,
        };
        Metrics::inc(&d.metrics.requests);
        if access == Access::ReadOnly && request.is_mutating() {
            let err = WireError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "user {} may only use read verbs; {} changes state",
                    peer.user(),
                    request.verb()
                ),
            );
            if !send(&mut conn, &ServerMessage::Err(err)).await {
                return;
            }
            continue;
        }
        if minor < 1 && matches!(request, Request::ListPage(_)) {
            let err = WireError::new(
                ErrorCode::MalformedRequest,
                "this request needs protocol 1.1; the hello announced an older minor",
            );
            if !send(&mut conn, &ServerMessage::Err(err)).await {
                return;
            }
            continue;
        }
        if request == Request::Watch {
            return watch(&d, conn, minor).await;
        }
        let verb = request.verb();
        let began = std::time::Instant::now();
        let reply = match handlers::handle(&d, &peer, minor, request).await {
            Ok(resp) => ServerMessage::Ok(Box::new(resp)),
            Err(err) => ServerMessage::Err(err.for_minor(minor)),
        };
        let took = began.elapsed().as_secs_f64();
        d.metrics.request_duration.observe(&["socket", verb], took);
        if !send_to(&mut conn, &reply, minor).await {
            return;
        }
    }
}

/// Stream every committed trajectory event until the client hangs up or the daemon stops.
async fn watch(d: &Daemon, mut conn: Conn, minor: u16) {
    let mut events = d.store.watch_events();
    if !send(
        &mut conn,
        &ServerMessage::Ok(Box::new(orchestrator_proto::Response::WatchStarted)),
    )
    .await
    {
        return;
    }
    loop {
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            // A client that sends anything or hangs up ends the stream.
            n = conn.next() => if n.is_none() { return },
            ev = events.recv() => match ev {
                Ok(ev) => if !send_to(&mut conn, &ServerMessage::Event(ev), minor).await { return },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "a watch client fell behind; events were skipped");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
