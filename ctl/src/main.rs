//! `orchctl`: the operator's command line for `orchestratord`.
//!
//! [`cli`] defines the verbs and flags; `main` turns them into requests and sends them through
//! [`client`]; [`display`] renders replies as tables or JSON; [`offline`] holds the verbs that need
//! no daemon.

mod cli;
mod client;
mod display;
mod offline;

use clap::Parser;
use cli::{
    AgentCommand, Cli, Command, ConfigCommand, FormatArg, GateCommand, NotifyCommand, TasksCommand,
};
use client::{exit, Client, ClientError};
use display::{Format, Output};
use orchestrator_proto::message::{
    ListQuery, PageQuery, Request, Response, SubmitRequest, TaskPage,
};
use orchestrator_proto::task::{Mode, Task, TaskKind, TaskState};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn usage(msg: String) -> ExitCode {
    eprintln!("orchctl: {msg}");
    ExitCode::from(exit::USAGE)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.format {
        FormatArg::Table => Format::Table,
        FormatArg::Json => Format::Json,
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut err = io::stderr();
    let mut o = Output {
        out: &mut out,
        err: &mut err,
    };
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(orchestrator_core::paths::client_socket);
    let request = match cli.command {
        Command::Config {
            command: ConfigCommand::Check { path },
        } => return finish(offline::config_check(path, format, &mut o)),
        Command::Init {
            force,
            config,
            state_dir,
        } => return finish(offline::init(config, state_dir, force, format, &mut o)),
        Command::RotateToken { state_dir } => {
            let state_dir = match state_dir {
                Some(dir) => Some(dir),
                None => match daemons_state_dir(&socket, cli.socket.is_some()) {
                    Ok(dir) => dir,
                    Err(e) => {
                        let code = fail(e, format, &mut o);
                        eprintln!(
                            "orchctl: to rotate the token of a daemon that is not running, give its --state-dir"
                        );
                        return code;
                    }
                },
            };
            return finish(offline::rotate_token(state_dir, format, &mut o));
        }
        Command::Completions { shell } => return finish(offline::completions(shell, &mut o)),
        Command::Man { dir } => return finish(offline::man(&dir, &mut o)),
        Command::Watch => return watch(&socket, format, &mut o),
        Command::Status => return status(&socket, format, &mut o),
        Command::Nodes => Request::Nodes,
        Command::Submit {
            goal,
            capabilities,
            workspace,
            ttl,
            wait,
        } => {
            let ttl_secs = match ttl
                .map(|t| orchestrator_core::config::parse_duration(&t))
                .transpose()
            {
                Ok(d) => d.map(|d| d.as_secs()),
                Err(e) => return usage(format!("--ttl: {e}")),
            };
            if ttl_secs == Some(0) {
                return usage("--ttl must be at least 1s".into());
            }
            Request::Submit(SubmitRequest {
                goal,
                required_capabilities: capabilities,
                workspace_dir: workspace,
                ttl_secs,
                wait,
            })
        }
        Command::Tasks {
            command:
                TasksCommand::List {
                    state,
                    kind,
                    limit,
                    all,
                    agent,
                    goal,
                    before,
                    after,
                },
        } => {
            let state = match state.map(|s| s.parse::<TaskState>()).transpose() {
                Ok(s) => s,
                Err(e) => return usage(format!("--state: {e}")),
            };
            let kind = match kind.map(|k| k.parse::<TaskKind>()).transpose() {
                Ok(k) => k,
                Err(e) => return usage(format!("--kind: {e}")),
            };
            let q = PageQuery {
                state,
                kind,
                limit,
                include_harness: all,
                agent,
                goal,
                before,
                after,
            };
            let result = Client::connect(&socket).and_then(|mut c| list(&mut c, q));
            return match result {
                Ok(response) => finish(display::response(&response, format, &mut o)),
                Err(e) => fail(e, format, &mut o),
            };
        }
        Command::Tasks {
            command: TasksCommand::Show { id },
        } => Request::ShowTask { id },
        Command::Approve { id } => Request::Approve { id },
        Command::Reject { id, reason } => Request::Reject { id, reason },
        Command::Cancel { id } => Request::Cancel { id },
        Command::Route { goal, capabilities } => Request::Route { goal, capabilities },
        Command::Synthetic { label } => Request::Synthetic { label: Some(label) },
        Command::SyntheticAll => Request::Synthetic { label: None },
        Command::ShadowSummary { window } => Request::ShadowSummary {
            window_hours: window,
        },
        Command::Sweep => Request::Sweep,
        Command::Reload => Request::Reload,
        Command::Gate {
            command: GateCommand::Override { mode, reason },
        } => match mode.parse::<Mode>() {
            Ok(mode) => Request::GateOverride { mode, reason },
            Err(e) => return usage(e),
        },
        Command::Metrics => Request::Metrics,
        Command::Agents => Request::Agents,
        Command::Agent {
            command: AgentCommand::Pause { agent, reason },
        } => Request::AgentPause { agent, reason },
        Command::Agent {
            command: AgentCommand::Resume { agent, reason },
        } => Request::AgentResume { agent, reason },
        Command::Console { open } => return console(&socket, open, format, &mut o),
        Command::Notify { command } => match command {
            NotifyCommand::List => Request::NotifyList,
            NotifyCommand::Test { name } => Request::NotifyTest { name },
            NotifyCommand::Retry { name } => Request::NotifyRetry { name },
        },
    };
    let waited = matches!(&request, Request::Submit(s) if s.wait);
    let result = Client::connect(&socket).and_then(|mut c| c.request(request));
    match result {
        Ok(response) => {
            let rendered = display::response(&response, format, &mut o);
            // `submit --wait` answers for the task: one that rested failed, cancelled or expired
            // is a failed operation to a script.
            match (&response, rendered) {
                (Response::Task(t), Ok(exit::OK)) if waited && came_to_a_bad_end(t.state) => {
                    ExitCode::from(exit::FAILED)
                }
                (_, rendered) => finish(rendered),
            }
        }
        Err(e) => fail(e, format, &mut o),
    }
}

/// Whether a waited-for task came to a bad end: failed, cancelled or expired. One still on its
/// way (the daemon stopped while the wait went on) is not.
fn came_to_a_bad_end(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Failed | TaskState::Cancelled | TaskState::Expired
    )
}

/// The state directory of the daemon on `socket`, whose token `rotate-token` rotates when no
/// `--state-dir` is given. A socket named (`--socket`, `ORCHCTL_SOCKET`) must answer: its daemon's
/// token is the one meant. Without one, a default daemon that does not answer leaves the default
/// state directory (`None`).
fn daemons_state_dir(socket: &Path, named: bool) -> Result<Option<PathBuf>, ClientError> {
    match Client::connect(socket).and_then(|mut c| c.request(Request::Status)) {
        Ok(Response::Status(s) | Response::StatusWithStorage(s, _)) => {
            Ok(Some(PathBuf::from(&s.state_dir)))
        }
        Ok(_) => Err(ClientError::Broken(
            "the daemon answered status with something else".into(),
        )),
        Err(e) if named => Err(e),
        Err(_) => Ok(None),
    }
}

/// `status`, with the node that answered (from a daemon that knows nodes).
fn status(socket: &Path, format: Format, o: &mut Output) -> ExitCode {
    let result = Client::connect(socket).and_then(|mut c| {
        let status = c.request(Request::Status)?;
        // The node line needs the store (the nodes table); status answers without it.
        let node = match c.daemon_minor >= 3 {
            true => match c.request(Request::Nodes) {
                Ok(Response::Nodes(n)) => Some(n),
                Ok(_) | Err(ClientError::Reply(_)) => None,
                Err(e) => return Err(e),
            },
            false => None,
        };
        Ok((status, node))
    });
    match result {
        Ok((status, node)) => finish(display::status_response(&status, node.as_ref(), format, o)),
        Err(e) => fail(e, format, o),
    }
}

/// `tasks list`: as many pages as it takes to reach the limit (a page stops short of it when more
/// would not fit in one frame), answered as one page whose `next` continues where it stopped.
fn list(c: &mut Client, q: PageQuery) -> Result<Response, ClientError> {
    if c.daemon_minor < 1 {
        // A daemon of protocol 1.0 lists in one reply and knows no filters or cursors.
        if q.agent.is_some() || q.goal.is_some() || q.before.is_some() || q.after.is_some() {
            return Err(ClientError::Broken(
                "this daemon is too old for --agent, --goal, --before and --after (it speaks protocol 1.0)".into(),
            ));
        }
        return c.request(Request::ListTasks(ListQuery {
            state: q.state,
            kind: q.kind,
            limit: q.limit,
            include_harness: q.include_harness,
        }));
    }
    let newer = q.after.is_some();
    let mut pages: Vec<Vec<Task>> = Vec::new();
    let mut got = 0u32;
    let mut query = q.clone();
    let next = loop {
        query.limit = q.limit - got;
        let page = match c.request(Request::ListPage(query.clone()))? {
            Response::Page(p) => p,
            other => {
                return Err(ClientError::Broken(format!(
                    "unexpected reply to a listing: {other:?}"
                )))
            }
        };
        got += page.tasks.len() as u32;
        pages.push(page.tasks);
        match page.next {
            Some(next) if got < q.limit => {
                if newer {
                    query.after = Some(next);
                } else {
                    query.before = Some(next);
                }
            }
            next => break next,
        }
    };
    // Pages of newer tasks come oldest page first; each page is newest first.
    if newer {
        pages.reverse();
    }
    Ok(Response::Page(TaskPage {
        tasks: pages.into_iter().flatten().collect(),
        next,
    }))
}

/// The exit code a rendering asked for; failing to write the output is a failure of its own.
fn finish(rendered: io::Result<u8>) -> ExitCode {
    match rendered {
        Ok(code) => ExitCode::from(code),
        // The reader stopped early (`| head`): it has what it wanted; nothing to tell it.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(exit::FAILED),
        Err(e) => {
            eprintln!("orchctl: cannot write output: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn fail(e: ClientError, format: Format, o: &mut Output) -> ExitCode {
    if let (Format::Json, ClientError::Reply(err)) = (format, &e) {
        if let Err(io) = display::json_error(err, o) {
            return finish(Err(io));
        }
    }
    eprintln!("orchctl: {}", e.message());
    ExitCode::from(e.exit_code())
}

/// `console [--open]`: ask for a login link, print it, and with `--open` hand it to the browser.
fn console(socket: &Path, open: bool, format: Format, o: &mut Output) -> ExitCode {
    let response = match Client::connect(socket).and_then(|mut c| c.request(Request::ConsoleLink)) {
        Ok(r) => r,
        Err(e) => return fail(e, format, o),
    };
    let rendered = display::response(&response, format, o);
    if let (true, Response::ConsoleLink(link)) = (open, &response) {
        // The browser outlives us; its output is not ours to show.
        let started = std::process::Command::new("xdg-open")
            .arg(&link.url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = started {
            eprintln!("orchctl: cannot start xdg-open ({e}); open the link above yourself");
            return ExitCode::from(exit::FAILED);
        }
    }
    finish(rendered)
}

fn watch(socket: &Path, format: Format, o: &mut Output) -> ExitCode {
    let mut write_error = None;
    let result = Client::connect(socket).and_then(|c| {
        c.watch(
            // On stderr, so that stdout stays one event per line; scripts may wait for it.
            || eprintln!("orchctl: watching {}", socket.display()),
            |ev| match display::event(ev, format, o) {
                Ok(()) => true,
                Err(e) => {
                    write_error = Some(e);
                    false
                }
            },
        )
    });
    match (result, write_error) {
        (Err(e), _) => fail(e, format, o),
        (Ok(()), Some(e)) => finish(Err(e)),
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}
