//! `orchctl`: the operator's command line for `orchestratord`.
//!
//! Commands are defined here and turned into requests; [`display`] renders replies as tables or
//! JSON; [`offline`] holds the verbs that need no daemon.

mod client;
mod display;
mod offline;

use clap::{Parser, Subcommand, ValueEnum};
use client::{exit, Client, ClientError};
use display::Format;
use orchestrator_proto::message::{ListQuery, Request, SubmitRequest};
use orchestrator_proto::task::{Mode, TaskKind, TaskState};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "orchctl",
    version,
    about = "Control orchestratord: submit, inspect, approve, gate and operate"
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "ORCHCTL_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: FormatArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mode, config, task counts, gates and sweeper of the running daemon.
    Status,
    /// Submit a task; prints its id.
    Submit {
        /// What the task should achieve, in plain text.
        goal: String,
        /// A capability the task requires (repeatable).
        #[arg(long = "capability", value_name = "C")]
        capabilities: Vec<String>,
        /// Working directory for the specialist.
        #[arg(long = "workspace", value_name = "DIR")]
        workspace: Option<String>,
        /// Time to live, e.g. 90s, 30m, 24h, 7d (default 7d).
        #[arg(long, value_name = "DUR")]
        ttl: Option<String>,
        /// Wait until the task rests (awaiting approval or finished) and print it.
        #[arg(long)]
        wait: bool,
    },
    /// List and show tasks.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Approve a task awaiting approval.
    Approve { id: String },
    /// Reject a task awaiting approval, with a reason.
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Cancel a task (a running specialist is stopped).
    Cancel { id: String },
    /// Show how a goal would be routed, without submitting anything.
    Route {
        goal: String,
        #[arg(long = "capability", value_name = "C")]
        capabilities: Vec<String>,
    },
    /// Run one synthetic gate fixture.
    Synthetic { label: String },
    /// Run every synthetic gate fixture (the data-plane gate).
    SyntheticAll,
    /// Summarise shadow tasks in a window (the live-flip gate).
    ShadowSummary {
        /// Window in hours.
        #[arg(long, default_value_t = 24)]
        window: u32,
    },
    /// Run the sweeper now.
    Sweep,
    /// Reload the config file (as SIGHUP), and report what changed or why nothing did.
    Reload,
    /// Config file tools (no daemon needed).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Gate tools.
    Gate {
        #[command(subcommand)]
        command: GateCommand,
    },
    /// Create what is missing: config file, state directory, bearer token.
    Init {
        /// Replace the token even if one exists.
        #[arg(long)]
        force: bool,
        /// Config file to create.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// State directory to create.
        #[arg(long, value_name = "PATH")]
        state_dir: Option<PathBuf>,
    },
    /// Write a new bearer token.
    RotateToken {
        #[arg(long, value_name = "PATH")]
        state_dir: Option<PathBuf>,
    },
    /// Stream trajectory events as they happen.
    Watch,
    /// Counters in Prometheus text format.
    Metrics,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Write man pages into a directory.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum TasksCommand {
    /// List tasks, newest first (default: the current mode's kind, harness tasks hidden).
    List {
        #[arg(long, value_name = "S")]
        state: Option<String>,
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Include tasks of the synthetic harness.
        #[arg(long)]
        all: bool,
    },
    /// Show one task with its trajectory.
    Show { id: String },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a config file with the daemon's own validator: exit 0 valid, 5 invalid.
    Check { path: Option<PathBuf> },
}

#[derive(Subcommand, Debug)]
enum GateCommand {
    /// Record a one-time override that the next reload to MODE consumes.
    Override {
        mode: String,
        #[arg(long)]
        reason: String,
    },
}

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
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(orchestrator_core::paths::client_socket);
    let request = match cli.command {
        Command::Config {
            command: ConfigCommand::Check { path },
        } => return offline::config_check(path, format),
        Command::Init {
            force,
            config,
            state_dir,
        } => return offline::init(config, state_dir, force, format),
        Command::RotateToken { state_dir } => return offline::rotate_token(state_dir, format),
        Command::Completions { shell } => return offline::completions(shell),
        Command::Man { dir } => return offline::man(&dir),
        Command::Watch => return watch(&socket, format),
        Command::Status => Request::Status,
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
            Request::ListTasks(ListQuery {
                state,
                kind,
                limit,
                include_harness: all,
            })
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
    };
    let result = Client::connect(&socket).and_then(|mut c| c.request(request));
    match result {
        Ok(response) => ExitCode::from(display::response(&response, format)),
        Err(e) => fail(e, format),
    }
}

fn fail(e: ClientError, format: Format) -> ExitCode {
    if let (Format::Json, ClientError::Reply(err)) = (format, &e) {
        display::json_error(err);
    }
    eprintln!("orchctl: {}", e.message());
    ExitCode::from(e.exit_code())
}

fn watch(socket: &std::path::Path, format: Format) -> ExitCode {
    let result = Client::connect(socket).and_then(|c| {
        c.watch(
            // On stderr, so that stdout stays one event per line; scripts may wait for it.
            || eprintln!("orchctl: watching {}", socket.display()),
            |ev| display::event(ev, format),
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e, format),
    }
}

/// Exposed for man page and completion generation.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
