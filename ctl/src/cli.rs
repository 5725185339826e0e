//! The command line: every verb and flag `orchctl` accepts, as clap types. Turning them into
//! requests is `main`'s job; rendering replies is [`crate::display`]'s.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "orchctl",
    version,
    about = "Control orchestratord: submit, inspect, approve, gate and operate"
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "ORCHCTL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub format: FormatArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// Wait until the task rests (awaiting approval or finished) and print it; exit 1 if it
        /// failed, was cancelled or expired.
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
        /// Window in hours (1 to 8784, a leap year).
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
    /// Write a new bearer token: the token of the daemon on the socket, or the one in --state-dir.
    RotateToken {
        #[arg(long, value_name = "PATH")]
        state_dir: Option<PathBuf>,
    },
    /// Notification sinks: their queues, a test event, dead events sent again.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Stream trajectory events as they happen.
    Watch,
    /// Counters in Prometheus text format.
    Metrics,
    /// Each agent: active or paused (until when, why), running and queued, today's and this
    /// month's cost.
    Agents,
    /// Pause or resume one agent.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The daemons that share this daemon's store: id, address, last heartbeat, leader, agents,
    /// specialists running.
    Nodes,
    /// Print a single-use link (valid 5 minutes) that signs you in to the web console.
    Console {
        /// Open the link in the desktop's browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Write man pages into a directory.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// List tasks, newest first (default: the current mode's kind, harness tasks hidden).
    List {
        #[arg(long, value_name = "S")]
        state: Option<String>,
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        /// How many tasks to list (1 to 10000; fetched a page at a time).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Include tasks of the synthetic harness.
        #[arg(long)]
        all: bool,
        /// Tasks routed to this agent.
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// Tasks whose goal contains this text (ASCII letters in either case).
        #[arg(long, value_name = "TEXT")]
        goal: Option<String>,
        /// Tasks older than this task (the page after one that printed `next` ID).
        #[arg(long, value_name = "ID", conflicts_with = "after")]
        before: Option<String>,
        /// Tasks newer than this task, still listed newest first.
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// Show one task with its trajectory.
    Show { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file with the daemon's own validator: exit 0 valid, 5 invalid.
    Check { path: Option<PathBuf> },
}

#[derive(Subcommand, Debug)]
pub enum GateCommand {
    /// Record a one-time override that the next reload to MODE consumes.
    Override {
        mode: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NotifyCommand {
    /// Each sink with its pending and dead events and last error.
    List,
    /// Queue a `test` event for the sink NAME.
    Test { name: String },
    /// Put the dead events of the sink NAME back in its queue.
    Retry { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Start nothing more of AGENT until resumed; running specialists finish.
    Pause {
        agent: String,
        #[arg(long)]
        reason: String,
    },
    /// Lift AGENT's pause, whatever set it (a provider's limit, a budget, an operator).
    Resume {
        agent: String,
        #[arg(long)]
        reason: String,
    },
}

/// Exposed for man page and completion generation.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
