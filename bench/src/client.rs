//! A blocking connection speaking the real protocol: hello, then one reply per request.

use anyhow::{anyhow, bail, Context, Result};
use orchestrator_proto::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
use orchestrator_proto::message::{ClientMessage, Hello, Request, Response, SubmitRequest};
use orchestrator_proto::{ServerMessage, Task, WireError};
use std::io::{BufReader, BufWriter};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
}

/// What one request came back with: a response, or the daemon's error.
pub type Reply = std::result::Result<Response, WireError>;

impl Conn {
    pub fn open(socket: &Path) -> Result<Conn> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut conn = Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
        };
        write_frame(
            &mut conn.writer,
            &ClientMessage::Hello(Hello::current("orchbench")),
        )?;
        match read_frame(&mut conn.reader, 64 * DEFAULT_MAX_FRAME)? {
            ServerMessage::Hello(_) => Ok(conn),
            ServerMessage::Err(e) => bail!("hello refused: {e}"),
            other => bail!("unexpected hello reply: {other:?}"),
        }
    }

    /// One request, one reply. Transport failures are `Err`; daemon errors are `Ok(Err(_))`.
    pub fn call(&mut self, request: Request) -> Result<Reply> {
        write_frame(&mut self.writer, &ClientMessage::Request(request))?;
        match read_frame(&mut self.reader, 64 * DEFAULT_MAX_FRAME)? {
            ServerMessage::Ok(r) => Ok(Ok(*r)),
            ServerMessage::Err(e) => Ok(Err(e)),
            other => Err(anyhow!("unexpected reply: {other:?}")),
        }
    }

    /// A call whose daemon error is a failure too.
    pub fn ok(&mut self, request: Request) -> Result<Response> {
        self.call(request)?.map_err(|e| anyhow!("{e}"))
    }

    pub fn submit(&mut self, goal: &str) -> Result<std::result::Result<Task, WireError>> {
        Ok(self.call(submit_request(goal))?.and_then(|r| match r {
            Response::Task(t) => Ok(*t),
            other => Err(WireError::new(
                orchestrator_proto::ErrorCode::Internal,
                format!("submit answered {other:?}"),
            )),
        }))
    }
}

pub fn submit_request(goal: &str) -> Request {
    Request::Submit(SubmitRequest {
        goal: goal.to_string(),
        required_capabilities: Vec::new(),
        workspace_dir: None,
        ttl_secs: None,
        wait: false,
    })
}
