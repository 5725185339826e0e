//! The blocking client side of the control socket: connect, hello, one request, one reply.

use orchestrator_proto::compat::with_peer_minor;
use orchestrator_proto::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use orchestrator_proto::message::{ClientMessage, Hello, Request, Response, ServerMessage};
use orchestrator_proto::task::TrajectoryEvent;
use orchestrator_proto::{ErrorCode, WireError};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Exit codes, one per kind of failure so scripts can tell them apart (listed in the README).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const PROTOCOL: u8 = 4;
    pub const CONFIG: u8 = 5;
    pub const DENIED: u8 = 6;
}

/// Why a request did not produce a response.
#[derive(Debug)]
pub enum ClientError {
    Unreachable {
        socket: PathBuf,
        cause: io::Error,
    },
    Denied(String),
    Reply(WireError),
    Broken(String),
    /// What answered does not speak the daemon's protocol (another program's socket).
    Foreign(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => exit::UNREACHABLE,
            ClientError::Denied(_) => exit::DENIED,
            ClientError::Broken(_) => exit::FAILED,
            ClientError::Foreign(_) => exit::PROTOCOL,
            ClientError::Reply(e) => match e.code {
                ErrorCode::PermissionDenied => exit::DENIED,
                ErrorCode::ProtocolMismatch => exit::PROTOCOL,
                ErrorCode::ConfigInvalid => exit::CONFIG,
                _ => exit::FAILED,
            },
        }
    }

    pub fn message(&self) -> String {
        match self {
            ClientError::Unreachable { socket, cause } => format!(
                "cannot reach orchestratord at {}: {cause}\nis the daemon running? try: systemctl start orchestrator",
                socket.display()
            ),
            ClientError::Denied(m) => m.clone(),
            ClientError::Broken(m) | ClientError::Foreign(m) => m.clone(),
            ClientError::Reply(e) => {
                let mut s = format!("error: {}: {}", e.code, e.message);
                for (k, v) in &e.details {
                    s.push_str(&format!("\n  {k}: {v}"));
                }
                s
            }
        }
    }
}

pub struct Client {
    stream: UnixStream,
    /// The protocol minor the daemon answered the hello with: what it can be asked.
    pub daemon_minor: u16,
}

fn broken(e: io::Error) -> ClientError {
    ClientError::Broken(format!(
        "the daemon closed the connection unexpectedly: {e}"
    ))
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let mut stream = UnixStream::connect(socket).map_err(|cause| {
            if cause.kind() == io::ErrorKind::PermissionDenied {
                ClientError::Denied(format!(
                    "permission denied on {}: your user may not use this socket (ask for the orchestrator group)",
                    socket.display()
                ))
            } else {
                ClientError::Unreachable { socket: socket.to_path_buf(), cause }
            }
        })?;
        let hello = write_frame(
            &mut stream,
            &ClientMessage::Hello(Hello::current(env!("CARGO_PKG_VERSION"))),
        );
        // A daemon that refuses a peer answers before reading anything and closes, so the hello
        // can meet a closed socket; the refusal is still waiting to be read.
        let reply = read_frame::<_, ServerMessage>(&mut stream, DEFAULT_MAX_FRAME);
        let reply = match (hello, reply) {
            (_, Ok(reply)) => reply,
            // Bytes came back that are no frame of ours: not an orchestratord.
            (_, Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(ClientError::Foreign(format!(
                    "{} does not answer in orchestratord's protocol ({e}): another program's \
                     socket, or a daemon this orchctl cannot read",
                    socket.display()
                )))
            }
            (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(broken(e)),
        };
        match reply {
            ServerMessage::Hello(h) => Ok(Client {
                stream,
                daemon_minor: h.minor,
            }),
            ServerMessage::Err(e) => Err(ClientError::Reply(e)),
            other => Err(ClientError::Broken(format!(
                "unexpected reply to hello: {other:?}"
            ))),
        }
    }

    pub fn request(&mut self, req: Request) -> Result<Response, ClientError> {
        write_frame(&mut self.stream, &ClientMessage::Request(req)).map_err(broken)?;
        // An older daemon writes the shapes of its own minor.
        let reply = with_peer_minor(self.daemon_minor, || {
            read_frame::<_, ServerMessage>(&mut self.stream, 64 * DEFAULT_MAX_FRAME)
        });
        match reply.map_err(broken)? {
            ServerMessage::Ok(resp) => Ok(*resp),
            ServerMessage::Err(e) => Err(ClientError::Reply(e)),
            other => Err(ClientError::Broken(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Start `watch`, call `started` once the daemon streams, then `each` for every event until the
    /// daemon goes away or `each` returns false.
    pub fn watch(
        mut self,
        started: impl FnOnce(),
        mut each: impl FnMut(&TrajectoryEvent) -> bool,
    ) -> Result<(), ClientError> {
        self.request(Request::Watch)?;
        started();
        loop {
            match read_frame::<_, ServerMessage>(&mut self.stream, DEFAULT_MAX_FRAME) {
                Ok(ServerMessage::Event(ev)) => {
                    if !each(&ev) {
                        return Ok(());
                    }
                }
                Ok(ServerMessage::Err(e)) => return Err(ClientError::Reply(e)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(broken(e)),
            }
        }
    }
}
