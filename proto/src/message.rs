//! Handshake, requests and responses.
//!
//! A connection starts with [`ClientMessage::Hello`]; the daemon answers [`ServerMessage::Hello`] or an
//! error with code `protocol_mismatch`. After that every [`ClientMessage::Request`] gets exactly one
//! [`ServerMessage::Ok`] or [`ServerMessage::Err`], except `Watch`, which is answered by a stream of
//! [`ServerMessage::Event`] frames until the client hangs up.

use crate::error::WireError;
use crate::task::{Mode, Task, TaskKind, TaskState, TrajectoryEvent, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// "ORCH" in ASCII: the first thing a client says, so that a stray connection is recognised at once.
pub const MAGIC: u32 = 0x4F52_4348;
pub const PROTOCOL_MAJOR: u16 = 1;
/// Minor 1 added `ListPage`/`Page`, `StatusWithStorage` and the error codes `reply_too_large`,
/// `storage_full`, `store_damaged` and `http_off`; minor 2 the error code `store_unavailable`;
/// minor 3 `NotifyList`/`NotifySinks`, `NotifyTest`/`NotifyTested`, `NotifyRetry`/`NotifyRetried`,
/// `Task::usage`, `StatusReport::agents` and `StatusReport::node`, and the `Agents`, `AgentPause`,
/// `AgentResume` and `Nodes` requests. The daemon answers each client in the minor it announced.
pub const PROTOCOL_MINOR: u16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub major: u16,
    pub minor: u16,
    pub client_version: String,
}

impl Hello {
    pub fn current(client_version: &str) -> Self {
        Hello {
            magic: MAGIC,
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            client_version: client_version.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloReply {
    pub major: u16,
    pub minor: u16,
    pub daemon_version: String,
    pub mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(Hello),
    Request(Request),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    Hello(HelloReply),
    Ok(Box<Response>),
    Err(WireError),
    Event(TrajectoryEvent),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitRequest {
    pub goal: String,
    pub required_capabilities: Vec<String>,
    pub workspace_dir: Option<String>,
    /// Time to live in seconds; `None` takes the default (7 days).
    pub ttl_secs: Option<u64>,
    /// Answer only once the task rests: `awaiting_approval` or a terminal state.
    pub wait: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub state: Option<TaskState>,
    /// `None` means the daemon's current mode.
    pub kind: Option<TaskKind>,
    pub limit: u32,
    /// Show tasks submitted by the synthetic harness as well.
    pub include_harness: bool,
}

/// One page of a listing (protocol minor 1): the filters of [`ListQuery`] and more, and where the
/// page starts. A page holds at most `limit` tasks, and fewer when more would not fit in one frame;
/// [`TaskPage::next`] then says where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageQuery {
    pub state: Option<TaskState>,
    /// `None` means the daemon's current mode.
    pub kind: Option<TaskKind>,
    pub limit: u32,
    pub include_harness: bool,
    /// Tasks routed to this agent.
    pub agent: Option<String>,
    /// Tasks whose goal contains this text (case-insensitive for ASCII).
    pub goal: Option<String>,
    /// Tasks older than this task id (the next page of a newest-first listing).
    pub before: Option<String>,
    /// Tasks newer than this task id (the previous page), still newest first.
    pub after: Option<String>,
}

/// A page of tasks, newest first. `next` is the id to pass as `before` for the following (older)
/// page; `None` when this page reached the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub next: Option<String>,
}

/// Every verb of `orchctl` that talks to the daemon. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Status,
    Submit(SubmitRequest),
    ListTasks(ListQuery),
    ShowTask {
        id: String,
    },
    Approve {
        id: String,
    },
    Reject {
        id: String,
        reason: String,
    },
    Cancel {
        id: String,
    },
    Route {
        goal: String,
        capabilities: Vec<String>,
    },
    /// `None` runs every fixture (`synthetic-all`).
    Synthetic {
        label: Option<String>,
    },
    ShadowSummary {
        window_hours: u32,
    },
    Sweep,
    Reload,
    GateOverride {
        mode: Mode,
        reason: String,
    },
    Metrics,
    Watch,
    /// Protocol minor 1.
    ListPage(PageQuery),
    /// Protocol minor 1: a single-use link that signs the asking user in to the web console.
    ConsoleLink,
    /// Protocol minor 3: the notification sinks and their outboxes.
    NotifyList,
    /// Protocol minor 3: queue a `test` event for one sink.
    NotifyTest {
        name: String,
    },
    /// Protocol minor 3: put a sink's dead events back in its queue.
    NotifyRetry {
        name: String,
    },
    /// Protocol minor 3: each configured agent, whether it may start specialists, and its load.
    Agents,
    /// Protocol minor 3: stop starting the agent's specialists until resumed.
    AgentPause {
        agent: String,
        reason: String,
    },
    /// Protocol minor 3: lift the agent's pause (a provider limit, a budget or an operator's).
    AgentResume {
        agent: String,
        reason: String,
    },
    /// Protocol minor 3: the daemons sharing this daemon's store (`orchctl nodes`).
    Nodes,
}

impl Request {
    /// Whether the request changes stored data; read-only peers may send only the others.
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Request::Status
                | Request::ListTasks(_)
                | Request::ListPage(_)
                | Request::ShowTask { .. }
                | Request::Route { .. }
                | Request::ShadowSummary { .. }
                | Request::Metrics
                | Request::Watch
                | Request::ConsoleLink
                | Request::NotifyList
                | Request::Agents
                | Request::Nodes
        )
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Submit(_) => "submit",
            Request::ListTasks(_) => "tasks_list",
            Request::ShowTask { .. } => "tasks_show",
            Request::Approve { .. } => "approve",
            Request::Reject { .. } => "reject",
            Request::Cancel { .. } => "cancel",
            Request::Route { .. } => "route",
            Request::Synthetic { .. } => "synthetic",
            Request::ShadowSummary { .. } => "shadow_summary",
            Request::Sweep => "sweep",
            Request::Reload => "reload",
            Request::GateOverride { .. } => "gate_override",
            Request::Metrics => "metrics",
            Request::Watch => "watch",
            Request::ListPage(_) => "tasks_list",
            Request::ConsoleLink => "console_link",
            Request::NotifyList => "notify_list",
            Request::NotifyTest { .. } => "notify_test",
            Request::NotifyRetry { .. } => "notify_retry",
            Request::Agents => "agents",
            Request::AgentPause { .. } => "agent_pause",
            Request::AgentResume { .. } => "agent_resume",
            Request::Nodes => "nodes",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Status(Box<StatusReport>),
    Task(Box<Task>),
    TaskDetail {
        task: Box<Task>,
        events: Vec<TrajectoryEvent>,
    },
    Tasks(Vec<Task>),
    Route(RouteDecision),
    Synthetic(GateRunReport),
    ShadowSummary(ShadowSummary),
    Sweep(SweepReport),
    Reload(ReloadReport),
    GateOverride(OverrideRecord),
    Metrics(String),
    WatchStarted,
    /// Protocol minor 1: the answer to `ListPage`.
    Page(TaskPage),
    /// Protocol minor 1: the answer to `Status` for a client that announced minor 1 or later.
    StatusWithStorage(Box<StatusReport>, StorageStatus),
    /// Protocol minor 1: the answer to `ConsoleLink`.
    ConsoleLink(ConsoleLink),
    /// Protocol minor 3: the answer to `NotifyList`.
    NotifySinks(Vec<SinkStatus>),
    /// Protocol minor 3: the id of the `test` event queued.
    NotifyTested {
        event_id: String,
    },
    /// Protocol minor 3: how many dead events are pending again.
    NotifyRetried {
        count: u64,
    },
    /// Protocol minor 3: the answer to `Agents`, `AgentPause` and `AgentResume`.
    Agents(Vec<AgentStatus>),
    /// Protocol minor 3: the answer to `Nodes`.
    Nodes(NodesReport),
}

/// The daemons that share a store: the one that answered, and every node with a heartbeat row
/// (on SQLite, the one that answered alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesReport {
    /// The id of the node that answered.
    pub this: String,
    /// Whether the store is shared (PostgreSQL) or this node's own (SQLite).
    pub shared: bool,
    pub nodes: Vec<NodeInfo>,
}

/// One node, as its last heartbeat left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// Its HTTP address, else its socket.
    pub address: String,
    /// The agents it runs specialists for.
    pub agents: Vec<String>,
    /// Specialists running there at its last heartbeat.
    pub running: u32,
    /// RFC 3339.
    pub last_heartbeat: String,
    /// Whether it holds the leader's lease (periodic work runs there).
    pub leader: bool,
}

/// Why an agent starts nothing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// Its specialist exited 75: the provider said "not now".
    ProviderLimit,
    /// Its budget (or the global one) is spent for the day or the month.
    Budget,
    /// `orchctl agent pause`.
    Operator,
}

/// An agent's pause, as stored: it lasts until `until` (or until resumed, when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPause {
    pub cause: PauseCause,
    pub until: Option<String>,
    pub reason: String,
    pub by: String,
    pub at: String,
}

/// One agent as `orchctl agents` and `status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub agent: String,
    /// `None` while the agent may start specialists.
    pub paused: Option<AgentPause>,
    pub running: u32,
    pub queued: u32,
    /// Cost reported by its tasks today and this month, in the daemon's timezone.
    pub cost_today_usd: f64,
    pub cost_month_usd: f64,
    pub budget_daily_usd: Option<f64>,
    pub budget_monthly_usd: Option<f64>,
}

// Costs are sums of finite, non-negative reported costs.
impl Eq for AgentStatus {}

/// The store's health, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    /// Since when commits fail because the disk is full (RFC 3339); `None` while writable.
    pub full_since: Option<String>,
    /// Why writes are refused after a failed integrity check; `None` while the store is sound.
    pub damaged: Option<String>,
    /// The outcome of the last integrity check: `ok`, or what it found.
    pub last_check: Option<String>,
    /// When the last integrity check finished (RFC 3339).
    pub last_check_at: Option<String>,
    /// Whether a check is running now.
    pub checking: bool,
}

/// A login link for the web console, minted for the peer that asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleLink {
    pub url: String,
    pub expires_at: String,
    /// The user the link signs in as.
    pub user: String,
    /// Whether that user may only look (a read-only peer in `[socket]`).
    pub read_only: bool,
}

/// One notification sink as `orchctl notify list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    pub name: String,
    /// `webhook <url>` or `command <argv0>`; `None` for a sink no longer configured that still
    /// has events in the outbox.
    pub target: Option<String>,
    pub events: Vec<String>,
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending_secs: Option<u64>,
    /// Since the daemon started.
    pub delivered: u64,
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateCount {
    pub kind: TaskKind,
    pub state: TaskState,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateRunSummary {
    pub at: String,
    pub label: Option<String>,
    pub passed: u32,
    pub total: u32,
    pub fingerprint: String,
    pub matches_current: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub daemon_version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub configured_mode: Mode,
    pub effective_mode: Mode,
    pub mode_since: String,
    /// Why the effective mode differs from the configured one, when it does.
    pub mode_note: Option<String>,
    pub config_path: Option<String>,
    pub config_loaded_at: String,
    /// The error of the last reload that failed, while the old config keeps running.
    pub config_error: Option<String>,
    pub config_warnings: Vec<String>,
    pub routing_fingerprint: String,
    pub socket: String,
    pub state_dir: String,
    pub counts: Vec<StateCount>,
    pub latest_gate: Option<GateRunSummary>,
    pub last_reload: Option<ReloadReport>,
    pub pending_overrides: Vec<OverrideRecord>,
    pub last_sweep: Option<SweepReport>,
    pub next_sweep_at: Option<String>,
    pub token_problem: Option<String>,
    pub http_listen: Option<String>,
    /// Protocol minor 3: each configured agent, paused or not.
    #[serde(
        default,
        serialize_with = "crate::compat::since_3",
        deserialize_with = "crate::compat::since_3_de"
    )]
    pub agents: Vec<AgentStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDecision {
    pub matched_rule_id: Option<String>,
    pub assigned_agent_id: String,
    pub capability_matches: Vec<String>,
    pub fallback_used: bool,
    pub requires_approval: bool,
    /// Why approval is (or would be) required: agent listed, capability listed, default route.
    pub approval_reasons: Vec<String>,
    /// Rules of the winning priority that also matched and lost on file order.
    pub shadowed_rule_ids: Vec<String>,
    /// Whether the agent has an `[agents]` entry in the config.
    pub agent_configured: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureOutcome {
    pub label: String,
    pub goal: String,
    pub expected_agent_id: String,
    pub expected_rule_id: Option<String>,
    pub expected_terminal_state: TaskState,
    pub task_id: Option<String>,
    pub actual_agent_id: Option<String>,
    pub actual_rule_id: Option<String>,
    pub actual_state: Option<TaskState>,
    pub ok: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateRunReport {
    pub at: String,
    pub fingerprint: String,
    pub label: Option<String>,
    pub passed: u32,
    pub total: u32,
    pub fixtures: Vec<FixtureOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurationStats {
    pub mean_ms: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub max_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSummary {
    pub window_hours: u32,
    pub total: u64,
    pub by_state: BTreeMap<String, u64>,
    pub failures_by_code: BTreeMap<String, u64>,
    pub duration: Option<DurationStats>,
    pub per_agent: BTreeMap<String, u64>,
    pub would_require_approval: u64,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub min_tasks: u64,
    pub passed: bool,
    pub verdict: String,
    /// Protocol minor 3: what the window's specialists reported they used, summed per agent.
    #[serde(
        default,
        serialize_with = "crate::compat::since_3",
        deserialize_with = "crate::compat::since_3_de"
    )]
    pub usage_by_agent: BTreeMap<String, Usage>,
    /// Protocol minor 3: the same, per model (`""` when none was named).
    #[serde(
        default,
        serialize_with = "crate::compat::since_3",
        deserialize_with = "crate::compat::since_3_de"
    )]
    pub usage_by_model: BTreeMap<String, Usage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub started_at: String,
    pub duration_ms: u64,
    pub expired: u64,
    pub reclaimed: u64,
    pub requeued: u64,
    pub deleted: u64,
    pub deleted_files: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    Applied,
    Unchanged,
    Refused,
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub at: String,
    /// `sighup`, `orchctl` or `start`.
    pub trigger: String,
    pub outcome: ReloadOutcome,
    pub previous_mode: Mode,
    pub mode: Mode,
    pub changes: Vec<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideRecord {
    pub mode: Mode,
    pub reason: String,
    pub by: String,
    pub uid: u32,
    pub at: String,
    pub consumed_at: Option<String>,
}
