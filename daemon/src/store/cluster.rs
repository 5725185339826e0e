//! What several daemons sharing one store need from it, beyond the [`Backend`](super::Backend)
//! every store offers: each daemon is a node with a heartbeat row; one node at a time holds the
//! leader's lease on the periodic work; a node claims the tasks it runs, exactly once across nodes.
//! Only the PostgreSQL backend implements it; on SQLite the daemon is a node of one and
//! [`Store::cluster`](super::Store::cluster) is `None`.

use super::{StoreFuture, TransitionOp};
use crate::machine::Action;
use orchestrator_proto::message::NodeInfo;
use orchestrator_proto::task::{Task, TaskResult};

/// What a node reports about itself at each heartbeat.
#[derive(Debug, Clone)]
pub struct NodeBeat {
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// Where operators reach it: its HTTP address, else its socket.
    pub address: String,
    /// The agents it runs specialists for.
    pub agents: Vec<String>,
    /// Specialists it runs now.
    pub running: u32,
    pub at_ms: i64,
}

/// A claim of `assigned` tasks of one agent for this node: at most `want`, never more than
/// `max_concurrent` of the agent's tasks `in_progress` across all nodes, and never more than a
/// shared limit's `max_concurrent` tasks of all its agents together.
#[derive(Debug, Clone)]
pub struct Claim {
    pub agent: String,
    pub max_concurrent: u32,
    pub want: u32,
    /// The `[limits.NAME]` the agent counts against, as the claiming node's config defines them
    /// (README "Several daemons on one PostgreSQL": nodes must agree on them).
    pub limits: Vec<ClaimLimit>,
    pub lease_until: i64,
    pub at_ms: i64,
    pub actor: String,
}

/// One shared limit of a [`Claim`]: at most `max_concurrent` tasks of `agents` `in_progress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimLimit {
    pub name: String,
    pub max_concurrent: u32,
    /// Every agent that names the limit, the claimed one included.
    pub agents: Vec<String>,
}

impl ClaimLimit {
    /// The limits `agent` counts against under `cfg`, each with every agent that names it.
    pub fn of(cfg: &crate::config::Config, agent: &str) -> Vec<ClaimLimit> {
        let Some(a) = cfg.agent(agent) else {
            return Vec::new();
        };
        a.limits
            .iter()
            .filter_map(|name| {
                let limit = cfg.limits.get(name)?;
                Some(ClaimLimit {
                    name: name.clone(),
                    max_concurrent: limit.max_concurrent,
                    agents: cfg
                        .agents
                        .iter()
                        .filter(|(_, c)| c.limits.contains(name))
                        .map(|(id, _)| id.clone())
                        .collect(),
                })
            })
            .collect()
    }
}

impl Claim {
    /// The `start` transition of one claimed task that has used `attempts`: `in_progress` with a
    /// lease, and its specialist's session id. The same as a single node's start.
    pub fn start_op(&self, id: &str, attempts: i64) -> TransitionOp {
        let attempt = attempts + 1;
        TransitionOp::new(id, Action::Start, &self.actor, self.at_ms)
            .patch(super::Patch {
                lease_until: Some(self.lease_until),
                result: Some(TaskResult {
                    text: None,
                    text_path: None,
                    artefacts: Vec::new(),
                    specialist_session_id: Some(format!("{}-{id}-{attempt}", self.agent)),
                }),
                ..super::Patch::default()
            })
            .detail("agent", self.agent.clone())
            .detail("attempt", attempt.to_string())
    }
}

/// What the runs of one agent cost, by every node, as the shared store holds it: in the day and
/// in the month that a [`Cluster::spending`] read names (by the tasks' start).
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    pub agent: String,
    pub day_usd: f64,
    pub month_usd: f64,
}

/// The shared-store operations of a node.
pub trait Cluster: Send + Sync {
    /// This node's id.
    fn node(&self) -> &str;
    /// Write this node's heartbeat row.
    fn heartbeat(&self, beat: NodeBeat) -> StoreFuture<'_, ()>;
    /// Remove this node's row (an orderly stop) and give up the leader's lease if it holds it.
    fn leave(&self) -> StoreFuture<'_, ()>;
    /// Every node that has a row, by id, with whether it holds the leader's lease at `now_ms`.
    fn nodes(&self, now_ms: i64) -> StoreFuture<'_, Vec<NodeInfo>>;
    /// Take or renew the leader's lease until `now_ms + lease_ms`; true if this node holds it.
    fn lead(&self, now_ms: i64, lease_ms: i64) -> StoreFuture<'_, bool>;
    /// Start up to `claim.want` of the agent's `assigned` tasks on this node (oldest first),
    /// skipping rows another node is claiming. Answers the tasks as started.
    fn claim(&self, claim: Claim) -> StoreFuture<'_, Vec<Task>>;
    /// Every committed trajectory event of every node: this node's in commit order, the others'
    /// as they are heard of (`orchctl watch`, the console's live stream, `submit --wait`).
    fn subscribe_all(
        &self,
    ) -> tokio::sync::broadcast::Receiver<orchestrator_proto::task::TrajectoryEvent>;
    /// Up to `limit` tasks still `queued` that were created before `before_ms` and are not
    /// waiting out a retry's backoff at `now_ms`, oldest first: what no dispatcher has taken (its
    /// node died, or the store was down meanwhile).
    fn unrouted(&self, before_ms: i64, now_ms: i64, limit: usize) -> StoreFuture<'_, Vec<Task>>;
    /// What each agent's runs cost since `day_start_ms` and since `month_start_ms`, summed over
    /// every node's tasks (an agent with no reported cost is left out).
    fn spending(&self, day_start_ms: i64, month_start_ms: i64) -> StoreFuture<'_, Vec<Spent>>;
    /// Claim the announcement of a budget threshold, named by `key`, for this node: true for the
    /// first node to claim it, false for every later claim. `ends_ms` is the end of its period;
    /// claims of periods that ended before `now_ms` are forgotten on the way.
    fn claim_crossing(&self, key: &str, ends_ms: i64, now_ms: i64) -> StoreFuture<'_, bool>;
}
