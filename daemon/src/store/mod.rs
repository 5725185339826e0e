//! The durable task store, behind one interface.
//!
//! The rest of the daemon talks to a [`Store`]: a cloneable handle over a [`Backend`], the set of
//! typed operations the daemon needs (submit, transitions, the sweeper's queries, leases, gate
//! records, the mode, overrides). No SQL and no database type crosses this boundary, so another
//! backend can be added without touching the dispatcher, the server, the gates or the sweeper;
//! [`contract`] is the suite every backend must pass.
//!
//! What every backend promises:
//!
//! - A write resolves only once it is durable (committed and synced).
//! - Every transition is a compare-and-set on the task's current state, written together with its
//!   trajectory event; a refused one changes nothing.
//! - Composite writes ([`SubmitPlan`], [`Plan`]) are data the store executes atomically, never
//!   callbacks into the layers above.
//! - [`Backend::subscribe`] delivers every committed trajectory event in commit order, and
//!   [`Backend::counts`] moves with commits only.
//!
//! [`sqlite`] is the default backend: one group-committing writer thread and a pool of readers.
//! [`postgres`] keeps the store in a PostgreSQL database, one that several daemons may share.

pub mod cluster;
pub mod contract;
pub mod copy;
pub mod outbox;
pub mod postgres;
pub mod sqlite;
mod types;

// Raw SQLite access for offline tools and tests; see [`Store::write_blocking`].
#[doc(hidden)]
pub use sqlite::{queries, Batch};

pub use outbox::{Notice, OutboxEntry, OutboxKey, OutboxRules, OutboxStats};

/// Writes taken and the commits that held them, since the store opened (see [`Backend::writes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteLoad {
    pub writes: u64,
    pub commits: u64,
}
pub use types::{
    absorb, AttemptLimits, BudgetLift, Cursor, EventDraft, GateRunRecord, Health, Leftover,
    ModeChange, NewEvent, NewOverride, NewTask, Patch, PendingTask, Plan, Reclaimed, Retired,
    RetiredCursor, RowChange, ShadowRow, ShadowTally, StoredMode, StoredPause, SubmitPlan,
    TallyBuckets, TaskFilter, TransitionOp, UsageRow, LIFT_KEY_PREFIX, PAUSE_KEY_PREFIX,
};

use orchestrator_proto::message::{GateRunSummary, OverrideRecord};
use orchestrator_proto::task::{Mode, Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::{ErrorCode, WireError};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no task with id {0}")]
    NotFound(String),
    #[error("invalid transition: cannot {action} a task that is {from}")]
    Refused {
        from: TaskState,
        action: &'static str,
    },
    #[error("{1}")]
    Rejected(ErrorCode, String),
    #[error("store error: {0}")]
    Sql(String),
    /// The disk holding the store is full: nothing was written.
    #[error("the store's disk is full: {0}")]
    Full(String),
    #[error("the store is closed")]
    Closed,
    /// The database cannot be reached (down, restarting, network); the daemon retries on its own.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A refusal about one task (it moved on, or is gone), as opposed to a failure of the store.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound(_) | StoreError::Refused { .. } | StoreError::Rejected(..)
        )
    }
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => {
                WireError::new(ErrorCode::NotFound, format!("no task with id {id}")).with("id", id)
            }
            StoreError::Refused { from, action } => WireError::new(
                ErrorCode::InvalidTransition,
                format!("cannot {action} a task that is {from}"),
            )
            .with("from", from.as_str())
            .with("action", action),
            StoreError::Rejected(code, msg) => WireError::new(code, msg),
            StoreError::Sql(msg) => {
                WireError::new(ErrorCode::Internal, format!("store error: {msg}"))
            }
            StoreError::Full(msg) => WireError::new(
                ErrorCode::StorageFull,
                format!(
                    "the store's disk is full ({msg}); nothing was written. Free space on the \
                     state directory's file system: writes resume by themselves"
                ),
            ),
            StoreError::Closed => {
                WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
            }
            StoreError::Unavailable(msg) => WireError::new(
                ErrorCode::StoreUnavailable,
                format!("the store is unavailable, try again: {msg}"),
            ),
        }
    }
}

/// Task counts by kind and state, kept in memory and moved by every commit, so `status` never scans.
#[derive(Debug, Default, Clone)]
pub struct Counts(HashMap<(TaskKind, TaskState), u64>);

impl Counts {
    pub fn get(&self, kind: TaskKind, state: TaskState) -> u64 {
        self.0.get(&(kind, state)).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Tasks of `kind`, in any state.
    pub fn of_kind(&self, kind: TaskKind) -> u64 {
        self.0
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn entries(&self) -> Vec<(TaskKind, TaskState, u64)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((k, s), n)| (*k, *s, *n))
            .collect();
        v.sort();
        v
    }

    pub fn set(&mut self, kind: TaskKind, state: TaskState, n: u64) {
        self.0.insert((kind, state), n);
    }

    /// Move one task from `from` to `to` (`None`: inserted, or deleted).
    pub fn apply(&mut self, kind: TaskKind, from: Option<TaskState>, to: Option<TaskState>) {
        if let Some(from) = from {
            let n = self.0.entry((kind, from)).or_default();
            *n = n.saturating_sub(1);
        }
        if let Some(to) = to {
            *self.0.entry((kind, to)).or_default() += 1;
        }
    }
}

/// What every store operation returns: a boxed future, so that [`Backend`] stays object-safe and an
/// async driver can implement it as naturally as a thread-backed one.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One store operation's outcome per item of a batch: refusals per item, failures for the batch.
pub type Outcomes<T> = Vec<Result<T, StoreError>>;

/// The operations the daemon needs from a store. Writes resolve once durable.
pub trait Backend: Send + Sync {
    // Tasks and transitions.

    /// Insert a task in `queued` and run the plan's steps after it, atomically. Answers the task as
    /// written, without reading it back.
    fn submit(&self, plan: SubmitPlan) -> StoreFuture<'_, Task>;
    /// Run each plan's steps on a stored task, each plan atomic on its own; a refused plan changes
    /// nothing and does not stop the others. Answers each plan's final state.
    fn advance(&self, plans: Vec<Plan>) -> StoreFuture<'_, Outcomes<TaskState>>;
    /// One transition (compare-and-set on the current state); answers the task after it.
    fn transition(&self, op: TransitionOp) -> StoreFuture<'_, Task>;
    /// Several transitions in one durable write, each on its own: a refusal (`is_refusal`) is
    /// that item's answer; any other failure fails the whole write.
    fn transitions(&self, ops: Vec<TransitionOp>) -> StoreFuture<'_, Outcomes<Task>>;
    /// An event that records something about a task without changing its state: written only
    /// while the task is in `event.state` (a warning about a task decided meanwhile, or a task
    /// retention removed, writes nothing).
    fn append_event(&self, event: NewEvent) -> StoreFuture<'_, ()>;

    /// A write that changes nothing: resolves once it went through a commit like any other
    /// write (the watchdog's liveness probe).
    fn probe(&self) -> StoreFuture<'_, ()>;
    /// Resolves when the backend's writer has stopped, with why: after [`Backend::close`], or
    /// because it died (the supervisor then stops the daemon).
    fn writer_ended(&self) -> Pin<Box<dyn Future<Output = String> + Send + '_>>;
    fn get_task<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>>;
    /// A task with its trajectory, oldest event first, both as of the same commit.
    fn task_detail<'a>(
        &'a self,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(Task, Vec<TrajectoryEvent>)>>;
    /// A task's trajectory, oldest event first.
    fn transitions_of<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Vec<TrajectoryEvent>>;
    /// Newest first.
    fn list_tasks(&self, filter: TaskFilter) -> StoreFuture<'_, Vec<Task>>;
    /// `queued` and `assigned` tasks, oldest first, each with the time before which it must not
    /// run (a retry's backoff): what the dispatcher picks up at start.
    fn pending_dispatch(&self) -> StoreFuture<'_, Vec<PendingTask>>;
    /// Live `done` tasks completed since `since_ms` without an event of `action`, oldest first.
    fn undelivered_since<'a>(
        &'a self,
        since_ms: i64,
        action: &'a str,
    ) -> StoreFuture<'a, Vec<Task>>;

    // The sweeper.

    /// Expire up to `limit` stale-eligible tasks whose `expiresAt` is at or before `now`, as
    /// `actor`. Answers their ids; fewer than `limit` means none are left.
    fn expire_due<'a>(
        &'a self,
        now: i64,
        limit: usize,
        actor: &'a str,
    ) -> StoreFuture<'a, Vec<String>>;
    /// Reclaim up to `limit` `in_progress` tasks whose lease lapsed before `now`: re-queue while
    /// attempts remain, else fail with `specialist_aborted`.
    fn reclaim_lapsed(&self, reclaim: Reclaim) -> StoreFuture<'_, Reclaimed>;
    /// Up to `limit` terminal tasks of `kind` completed before `before`, oldest first, after the
    /// cursor `after`.
    fn retired(
        &self,
        kind: TaskKind,
        before: i64,
        after: Option<RetiredCursor>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Retired>>;
    /// Delete the given tasks that are terminal, with their trajectories. Answers the ids deleted.
    fn delete_tasks(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>>;

    // Leases and specialists.

    /// Extend the leases of the `in_progress` tasks among `ids`; answers the ids that are not.
    fn renew_leases(&self, ids: Vec<String>, until: i64) -> StoreFuture<'_, Vec<String>>;
    /// End every lease (at start: the previous run's watchers are gone). Answers how many.
    fn void_leases(&self) -> StoreFuture<'_, usize>;
    /// Record a running specialist's process group; false when the task is not `in_progress`.
    fn set_specialist_pid<'a>(&'a self, id: &'a str, pgid: i32) -> StoreFuture<'a, bool>;
    /// The `in_progress` tasks with their recorded process groups.
    fn orphan_leftovers(&self) -> StoreFuture<'_, Vec<Leftover>>;

    // Gates, mode and overrides.

    fn record_gate_run(&self, run: GateRunRecord) -> StoreFuture<'_, ()>;
    /// The latest gate run (`matches_current` is left false for the caller to decide).
    fn latest_gate_run(&self) -> StoreFuture<'_, Option<GateRunSummary>>;
    /// The newest `limit` gate runs, newest first (`matches_current` left false, as above).
    fn gate_runs(&self, limit: usize) -> StoreFuture<'_, Vec<GateRunSummary>>;
    /// Whether the latest full run for `fingerprint` passed every fixture.
    fn gate_passed_for<'a>(&'a self, fingerprint: &'a str) -> StoreFuture<'a, bool>;
    fn insert_override(&self, o: NewOverride) -> StoreFuture<'_, ()>;
    /// The oldest unconsumed override for `mode`, with its id.
    fn pending_override(&self, mode: Mode) -> StoreFuture<'_, Option<(i64, OverrideRecord)>>;
    /// The oldest unconsumed override of each mode.
    fn pending_overrides(&self) -> StoreFuture<'_, Vec<OverrideRecord>>;
    fn load_mode(&self) -> StoreFuture<'_, Option<StoredMode>>;
    /// Save the mode, consuming an override in the same write if one is named.
    fn save_mode(&self, change: ModeChange) -> StoreFuture<'_, ()>;
    /// Shadow tasks created in `from_ms..until_ms`, folded for the shadow summary as they are
    /// read, one tally per bucket of `bucket_ms` of creation time (see [`TallyBuckets`]).
    fn shadow_tallies(
        &self,
        from_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> StoreFuture<'_, Vec<(i64, ShadowTally)>>;

    // The notification outbox (see [`outbox`]). What a sink is sent is stored by the transitions
    // above, in their transactions, for the sinks in the rules last installed.

    /// Install the sinks' filters (at start and on reload); later commits are sent by them. A sink
    /// new to the store is sent the events committed from then on.
    fn set_outbox_rules(&self, rules: OutboxRules);
    /// Changes after every commit that stored an event some sink wants (or made dead ones
    /// pending again).
    fn outbox_signal(&self) -> watch::Receiver<u64>;
    /// Write a notice (an event no transition causes) for the sinks that want it; answers how many
    /// rows. When no sink of the installed rules wants it, answers 0 without a write.
    fn enqueue_notice(&self, notice: Notice) -> StoreFuture<'_, usize>;
    /// Up to `limit` of a sink's pending events, in outbox order.
    fn outbox_pending<'a>(
        &'a self,
        sink: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<OutboxEntry>>;
    /// Delivered: the events are done with. A worker marks the events a sink accepted together,
    /// in one write, rather than one write per event.
    fn mark_delivered(&self, keys: Vec<OutboxKey>) -> StoreFuture<'_, ()>;
    fn mark_attempt_failed(&self, key: OutboxKey, error: String) -> StoreFuture<'_, ()>;
    /// Given up on: the events become dead rows and `alarm`, if any, is written in the same
    /// transaction.
    fn mark_dead(
        &self,
        entries: Vec<OutboxEntry>,
        at_ms: i64,
        alarm: Option<Notice>,
    ) -> StoreFuture<'_, ()>;
    /// A sink's dead events back to pending (waiting from `now_ms`); answers how many.
    fn retry_dead<'a>(&'a self, sink: &'a str, now_ms: i64) -> StoreFuture<'a, u64>;
    /// Pending and dead counts per sink with an event pending or dead, or a last error.
    fn outbox_stats(&self) -> StoreFuture<'_, Vec<OutboxStats>>;
    /// Tasks waiting for approval that `cut` admits, for the approval policy.
    fn awaiting_approval(&self, cut: AwaitingCut) -> StoreFuture<'_, Vec<Awaiting>>;
    /// The newest `limit` tasks waiting for approval, harness tasks left out, each with since
    /// when it waits (its last entry into `awaiting_approval`): what the approval metrics start
    /// from. One read however many wait.
    fn awaiting_since(&self, limit: u32) -> StoreFuture<'_, Vec<(String, i64)>>;

    // Agents.

    /// Every agent's stored pause.
    fn agent_pauses(&self) -> StoreFuture<'_, Vec<StoredPause>>;
    /// Store the agent's pause, or clear it (`None`).
    fn set_agent_pause(&self, agent: String, pause: Option<StoredPause>) -> StoreFuture<'_, ()>;
    /// Every agent's stored budget lift.
    fn budget_lifts(&self) -> StoreFuture<'_, Vec<BudgetLift>>;
    /// Store an agent's budget lift, replacing the agent's earlier one.
    fn set_budget_lift(&self, lift: BudgetLift) -> StoreFuture<'_, ()>;
    /// The usage of every task whose latest run started at or after `since_ms`.
    fn usage_since(&self, since_ms: i64) -> StoreFuture<'_, Vec<UsageRow>>;

    // In memory.

    /// Counts by kind and state, as of the last commit.
    fn counts(&self) -> Counts;
    /// How many operations have failed (refusals and a closed store aside) since the store opened.
    fn errors(&self) -> u64;
    /// How many writes have been taken since the store opened, and in how many commits: how
    /// busy it is, for work that yields to requests (notification delivery). A backend that does
    /// not group writes into shared commits answers nothing, and is never found busy.
    fn writes(&self) -> WriteLoad {
        WriteLoad::default()
    }
    /// Every committed trajectory event, in commit order (for `watch`, logs, metrics, delivery).
    fn subscribe(&self) -> broadcast::Receiver<TrajectoryEvent>;
    /// Disk-full episodes and integrity-check outcomes, as of now.
    fn health(&self) -> Health;
    /// Run the integrity check on a read connection while writes go on, and record its outcome in
    /// [`Backend::health`]; a store found damaged refuses writes (`store_damaged`) from then on.
    /// Answers the outcome: `ok`, or what the check found.
    fn check_integrity(&self) -> StoreFuture<'_, String>;
    /// Stop accepting writes, finish what was accepted, and wait for it.
    fn close(&self);
}

/// Which tasks waiting for approval a read returns: those that expire by `expires_by_ms`, or
/// (when set) were created by `created_by_ms`. The approval policy asks only for the tasks it may
/// act on now (`sweeper::approvals::cut`), so that a sweep over a large backlog of waiting tasks
/// reads the few near a deadline, through the state index, rather than all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwaitingCut {
    pub expires_by_ms: i64,
    pub created_by_ms: Option<i64>,
}

impl AwaitingCut {
    /// Every waiting task.
    pub const ALL: AwaitingCut = AwaitingCut {
        expires_by_ms: i64::MAX,
        created_by_ms: None,
    };

    /// Whether a task created at `created_ms` that expires at `expires_ms` is read: what the
    /// backends' queries select, for the policy's tests.
    #[cfg(test)]
    pub fn admits(&self, created_ms: i64, expires_ms: i64) -> bool {
        expires_ms <= self.expires_by_ms || self.created_by_ms.is_some_and(|c| created_ms <= c)
    }
}

/// A task waiting for approval, as the approval policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    pub id: String,
    pub kind: TaskKind,
    pub agent: Option<String>,
    /// When it entered `awaiting_approval`.
    pub since_ms: i64,
    pub expires_ms: i64,
    /// Whether `approval.expiring` was already recorded for it.
    pub warned: bool,
}

/// What [`Backend::reclaim_lapsed`] needs.
#[derive(Debug, Clone)]
pub struct Reclaim {
    pub now: i64,
    pub limit: usize,
    pub reason: String,
    pub actor: String,
    pub attempts: AttemptLimits,
}

impl Reclaim {
    /// What a lapsed lease does to a task that has used `attempts`: back to the queue while its
    /// agent allows more, failed `specialist_aborted` after. The same rule for every backend.
    pub fn op_for(&self, id: &str, agent: Option<&str>, attempts: i64) -> TransitionOp {
        use orchestrator_proto::task::{task_error, TaskError};
        let why = self.reason.as_str();
        let allowed = i64::from(self.attempts.for_agent(agent.unwrap_or("")));
        if attempts < allowed {
            return TransitionOp::new(id, crate::machine::Action::Requeue, &self.actor, self.now)
                .detail("reason", why)
                .detail("attempts", attempts.to_string());
        }
        let error = TaskError {
            code: task_error::SPECIALIST_ABORTED.into(),
            message: format!("the specialist's lease lapsed: {why}"),
            details: Some(
                [
                    ("reason".to_string(), why.to_string()),
                    ("attempts".to_string(), attempts.to_string()),
                ]
                .into(),
            ),
        };
        TransitionOp::new(id, crate::machine::Action::Fail, &self.actor, self.now)
            .patch(Patch {
                error: Some(error),
                ..Patch::default()
            })
            .detail("reason", why)
    }
}

/// The handle the daemon holds: cheap to clone, one backend behind it.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// The same backend when it is SQLite, for [`Store::write_blocking`] and
    /// [`Store::read_blocking`] only.
    sqlite: Option<sqlite::SqliteBackend>,
    /// The shared-store operations, when several daemons can share this store.
    cluster: Option<Arc<dyn cluster::Cluster>>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store {
            backend,
            sqlite: None,
            cluster: None,
        }
    }

    /// Every committed trajectory event of every daemon sharing the store, for watchers: on SQLite
    /// the same as [`Backend::subscribe`]. Work that must happen once per commit (logs, metrics,
    /// delivery) follows [`Backend::subscribe`], this daemon's own commits.
    pub fn watch_events(&self) -> broadcast::Receiver<TrajectoryEvent> {
        match &self.cluster {
            Some(c) => c.subscribe_all(),
            None => self.backend.subscribe(),
        }
    }

    /// Every shadow task created since `since_ms`, in one tally, read afresh.
    pub async fn shadow_tally_since(&self, since_ms: i64) -> Result<ShadowTally, StoreError> {
        // One bucket as wide as time: every task in it.
        let parts = self.shadow_tallies(since_ms, i64::MAX, i64::MAX).await?;
        let mut tally = ShadowTally::default();
        for (_, part) in &parts {
            tally.merge(part);
        }
        Ok(tally)
    }

    /// The operations of a store shared by several nodes; `None` on SQLite (a node of one).
    pub fn cluster(&self) -> Option<&dyn cluster::Cluster> {
        self.cluster.as_deref()
    }

    /// Open (creating and migrating if needed) the SQLite store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let backend = sqlite::SqliteBackend::open(path)?;
        Ok(Store {
            backend: Arc::new(backend.clone()),
            sqlite: Some(backend),
            cluster: None,
        })
    }

    /// Open (creating and migrating if needed) a PostgreSQL store, from outside any runtime.
    pub fn open_postgres(settings: &postgres::Settings) -> Result<Store, StoreError> {
        let backend = postgres::PostgresBackend::open_blocking(settings)?;
        Ok(Store {
            backend: Arc::new(backend.clone()),
            sqlite: None,
            cluster: Some(Arc::new(backend)),
        })
    }

    fn raw(&self) -> Result<&sqlite::SqliteBackend, StoreError> {
        self.sqlite
            .as_ref()
            .ok_or_else(|| StoreError::Sql("raw access needs the SQLite backend".into()))
    }

    /// Raw write access to a SQLite store, for offline tools and tests that seed the file of a
    /// stopped daemon. The daemon itself uses only the typed operations of [`Backend`].
    #[doc(hidden)]
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.raw()?.write_blocking(f)
    }

    /// Raw read access to a SQLite store, for the same tools and tests as
    /// [`Store::write_blocking`].
    #[doc(hidden)]
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    {
        self.raw()?.read_blocking(f)
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

/// A queued or assigned task whose row cannot be read (damaged, or written by something else) is
/// left where it is and said so, so that the tasks around it are still dispatched after a start.
pub(crate) fn pending_unreadable(id: &str, error: &dyn std::fmt::Display) {
    tracing::error!(
        task = id,
        error = %error,
        "store: a queued or assigned task cannot be read; it is not dispatched"
    );
}

/// A mode change named an override that another one consumed meanwhile (another node's reload):
/// an override lets one flip through, so this one is refused and writes nothing.
pub(crate) fn override_used() -> StoreError {
    StoreError::Rejected(
        ErrorCode::GateRefused,
        "the gate override was used by another mode change meanwhile; record a new one to force \
         this flip"
            .into(),
    )
}
