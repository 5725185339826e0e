//! The plain data that goes in and out of a store: what to write, and what the queries answer.

use crate::clock::rfc3339;
use crate::machine::Action;
use orchestrator_proto::message::PauseCause;
use orchestrator_proto::task::{
    Mode, Rejection, Routing, Task, TaskError, TaskKind, TaskResult, TaskState, TrajectoryEvent,
    Usage,
};
use std::collections::{BTreeMap, HashMap};

/// A trajectory event about to be stored, with the kind of its task: what both backends bind in
/// the events insert and then publish, numbered, after the commit.
#[derive(Debug, Clone)]
pub struct EventDraft<'a> {
    pub task_id: &'a str,
    pub kind: TaskKind,
    pub at_ms: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub from: Option<TaskState>,
    pub to: TaskState,
    pub details: Option<BTreeMap<String, String>>,
}

impl<'a> EventDraft<'a> {
    /// The `submit` event of a task just inserted.
    pub fn submitted(task: &'a NewTask, actor: &'a str) -> EventDraft<'a> {
        EventDraft {
            task_id: &task.id,
            kind: task.kind,
            at_ms: task.created_ms,
            actor,
            action: "submit",
            from: None,
            to: TaskState::Queued,
            details: None,
        }
    }

    /// The event of a transition of a task of `kind` from `from` to `to`.
    pub fn of_op(op: &'a TransitionOp, kind: TaskKind, from: TaskState, to: TaskState) -> Self {
        EventDraft {
            task_id: &op.id,
            kind,
            at_ms: op.at_ms,
            actor: &op.actor,
            action: op.action.name(),
            from: Some(from),
            to,
            details: op.details.clone(),
        }
    }

    /// An event that leaves the task where it is.
    pub fn of_new(e: &'a NewEvent) -> EventDraft<'a> {
        EventDraft {
            task_id: &e.task_id,
            kind: e.kind,
            at_ms: e.at_ms,
            actor: &e.actor,
            action: &e.action,
            from: Some(e.state),
            to: e.state,
            details: e.details.clone(),
        }
    }

    /// The event as published after its commit; `seq` is the number the store gave it.
    pub fn published(self, seq: u64) -> TrajectoryEvent {
        TrajectoryEvent {
            seq,
            task_id: self.task_id.to_string(),
            at: rfc3339(self.at_ms),
            actor: self.actor.to_string(),
            action: self.action.to_string(),
            from: self.from,
            to: self.to,
            details: self.details,
        }
    }
}

/// A task as submitted, before it is stored.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub kind: TaskKind,
    pub goal: String,
    pub workspace_dir: Option<String>,
    pub required_capabilities: Vec<String>,
    pub submitted_by: String,
    /// Submitted by the synthetic harness; hidden from `tasks list` unless asked for.
    pub harness: bool,
    pub created_ms: i64,
    pub expires_ms: i64,
}

impl NewTask {
    /// The task exactly as its insert stores it (`queued`, nothing routed yet), so a backend can
    /// answer a submit without reading the row back.
    pub fn into_queued(self) -> Task {
        Task {
            schema_version: orchestrator_proto::task::SCHEMA_VERSION,
            state: TaskState::Queued,
            created_at: rfc3339(self.created_ms),
            expires_at: rfc3339(self.expires_ms),
            id: self.id,
            kind: self.kind,
            goal: self.goal,
            workspace_dir: self.workspace_dir,
            required_capabilities: self.required_capabilities,
            routing: None,
            assigned_agent_id: None,
            result: None,
            rejection: None,
            error: None,
            submitted_by: self.submitted_by,
            would_require_approval: false,
            assigned_at: None,
            started_at: None,
            completed_at: None,
            attempts: 0,
            usage: None,
        }
    }
}

/// Fields a transition sets besides the state and the timestamp that goes with its action.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub routing: Option<Routing>,
    pub agent: Option<String>,
    pub result: Option<TaskResult>,
    pub rejection: Option<Rejection>,
    pub error: Option<TaskError>,
    pub would_require_approval: Option<bool>,
    /// Lease expiry for a task entering or staying `in_progress`.
    pub lease_until: Option<i64>,
    pub specialist_pid: Option<i64>,
    /// What the task's runs used so far, this run included (replaces the stored sum).
    pub usage: Option<Usage>,
    /// For a task entering `queued` (a retry): not to be dispatched before this time
    /// (milliseconds). Stored, so that a restart or another node keeps the retry's backoff.
    pub not_before: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct TransitionOp {
    pub id: String,
    pub action: Action,
    pub actor: String,
    pub at_ms: i64,
    pub patch: Patch,
    pub details: Option<BTreeMap<String, String>>,
    /// The run this change belongs to, as the task's `attempts` counted it when the run started:
    /// the compare-and-set then also requires that count, so the outcome of a run whose lease
    /// lapsed (and whose task was reclaimed and started again) cannot land on the later run.
    /// `None` for changes that are not a run's (route, approve, expire …).
    pub attempt: Option<u32>,
}

impl TransitionOp {
    pub fn new(id: &str, action: Action, actor: &str, at_ms: i64) -> Self {
        TransitionOp {
            id: id.to_string(),
            action,
            actor: actor.to_string(),
            at_ms,
            patch: Patch::default(),
            details: None,
            attempt: None,
        }
    }

    /// Hold this change to the run counted `attempt` (see [`TransitionOp::attempt`]).
    pub fn of_attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    pub fn patch(mut self, patch: Patch) -> Self {
        self.patch = patch;
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.into());
        self
    }
}

/// A submit: the task, who submits it, and the transitions that follow at once in the same write
/// (the synthetic pipeline: route, start, complete). Each step is a compare-and-set from the state
/// the previous one left.
#[derive(Debug, Clone)]
pub struct SubmitPlan {
    pub task: NewTask,
    pub actor: String,
    pub steps: Vec<TransitionOp>,
}

/// Steps to run on a stored task believed to be in `from`; refused as a whole if it is not.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub kind: TaskKind,
    pub from: TaskState,
    pub steps: Vec<TransitionOp>,
}

/// An event that leaves the task's state as it is (`from` = `to` = `state`).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub task_id: String,
    pub kind: TaskKind,
    pub state: TaskState,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub details: Option<BTreeMap<String, String>>,
}

/// Filter of a task listing (`tasks list`, the HTTP list, the console's pipeline); newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub kind: Option<TaskKind>,
    /// Tasks routed to this agent.
    pub agent: Option<String>,
    /// Tasks whose goal contains this text (case-insensitive for ASCII).
    pub goal_contains: Option<String>,
    pub include_harness: bool,
    /// Where the page starts: tasks listed after (older than) or before (newer than) a task.
    pub cursor: Option<Cursor>,
    pub limit: u32,
}

/// A position in a listing, named by a task id. Pages are keyed on (created time, id), so a page
/// boundary stays put while new tasks arrive: paging visits each task once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Tasks older than this one (the next page of a newest-first listing).
    Before(String),
    /// Tasks newer than this one (the previous page), still returned newest first.
    After(String),
}

/// The store's health, kept in memory: whether commits fail for a full disk, and what the last
/// integrity check found. A damaged store refuses every write from the moment the check finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// When the current run of `disk full` commit failures began; `None` while commits succeed.
    pub full_since_ms: Option<i64>,
    /// Why writes are refused: what a failed integrity check found.
    pub damaged: Option<String>,
    /// When the last integrity check finished, and its outcome (`ok` or what it found).
    pub last_check: Option<(i64, String)>,
    /// Whether an integrity check is running now.
    pub checking: bool,
}

/// Attempts allowed per agent before a lapsed lease fails the task instead of re-queueing it.
#[derive(Debug, Clone, Default)]
pub struct AttemptLimits {
    pub by_agent: HashMap<String, u32>,
    /// For an agent not listed (removed from the config since).
    pub default: u32,
}

impl AttemptLimits {
    pub fn for_agent(&self, agent: &str) -> u32 {
        self.by_agent.get(agent).copied().unwrap_or(self.default)
    }
}

/// What a reclaim did: the ids failed and the ids re-queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub failed: Vec<String>,
    pub requeued: Vec<String>,
}

/// Where a walk over retired tasks stands: the last `(completed_at, position)` seen.
pub type RetiredCursor = (i64, i64);

/// A terminal task past its retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub id: String,
    pub cursor: RetiredCursor,
}

/// An `in_progress` task of a previous run: its id and recorded process group.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub id: String,
    pub pgid: Option<i32>,
    pub agent: Option<String>,
}

/// The shadow tasks of a window folded into what the shadow summary reports, as they are read:
/// counts by state, failure code and agent, the durations of the finished ones, and the window's
/// oldest and newest creation. A backend can fold a window of hundreds of thousands of tasks
/// without holding a row per task (see docs/BENCHMARKS.md, "The shadow summary at 1,000,000 tasks").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowTally {
    pub total: u64,
    /// Tasks per state, in the order of [`TaskState::ALL`].
    pub by_state: [u64; TaskState::ALL.len()],
    /// Failed tasks per error code (`None`: the task recorded none).
    pub failures_by_code: Vec<(Option<String>, u64)>,
    /// Tasks per agent (`None`: not assigned).
    pub per_agent: Vec<(Option<String>, u64)>,
    /// Creation to completion of each task that completed, in milliseconds, in no order.
    pub durations_ms: Vec<u64>,
    pub would_require_approval: u64,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
}

/// Count `by` more under `key` in a short list (a window has a handful of agents and codes).
fn bump_in(list: &mut Vec<(Option<String>, u64)>, key: Option<&str>, by: u64) {
    match list.iter_mut().find(|(k, _)| k.as_deref() == key) {
        Some((_, n)) => *n += by,
        None => list.push((key.map(str::to_string), by)),
    }
}

/// One shadow task as the summary reads it.
#[derive(Debug, Clone, Copy)]
pub struct ShadowRow<'a> {
    pub state: TaskState,
    pub error_code: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    pub would_require_approval: bool,
}

impl ShadowTally {
    /// Fold in one shadow task.
    pub fn add(&mut self, row: &ShadowRow<'_>) {
        let ShadowRow {
            state,
            error_code,
            agent,
            created_ms,
            completed_ms,
            would_require_approval,
        } = *row;
        self.total += 1;
        self.by_state[state as usize] += 1;
        if state == TaskState::Failed {
            bump_in(&mut self.failures_by_code, error_code, 1);
        }
        bump_in(&mut self.per_agent, agent, 1);
        if let Some(done) = completed_ms {
            self.durations_ms
                .push(done.saturating_sub(created_ms).max(0) as u64);
        }
        if would_require_approval {
            self.would_require_approval += 1;
        }
        self.oldest_ms = Some(self.oldest_ms.map_or(created_ms, |o| o.min(created_ms)));
        self.newest_ms = Some(self.newest_ms.map_or(created_ms, |n| n.max(created_ms)));
    }

    /// Fold in the tally of other tasks (another part of the window).
    pub fn merge(&mut self, other: &ShadowTally) {
        self.total += other.total;
        for (mine, theirs) in self.by_state.iter_mut().zip(other.by_state) {
            *mine += theirs;
        }
        for (code, n) in &other.failures_by_code {
            bump_in(&mut self.failures_by_code, code.as_deref(), *n);
        }
        for (agent, n) in &other.per_agent {
            bump_in(&mut self.per_agent, agent.as_deref(), *n);
        }
        self.durations_ms.extend_from_slice(&other.durations_ms);
        self.would_require_approval += other.would_require_approval;
        self.oldest_ms = [self.oldest_ms, other.oldest_ms]
            .into_iter()
            .flatten()
            .min();
        self.newest_ms = [self.newest_ms, other.newest_ms]
            .into_iter()
            .flatten()
            .max();
    }

    /// Whether every task counted is in a terminal state. Nothing changes a terminal task but its
    /// deletion, so such a tally stays true until retention deletes tasks.
    pub fn all_terminal(&self) -> bool {
        TaskState::ALL
            .iter()
            .zip(self.by_state)
            .all(|(s, n)| n == 0 || s.is_terminal())
    }
}

/// The shadow tasks of a range of creation times, folded into one [`ShadowTally`] per bucket of
/// `bucket_ms` (keyed by the bucket's start), as a backend reads them in any order.
#[derive(Debug)]
pub struct TallyBuckets {
    bucket_ms: i64,
    /// Oldest first. Rows mostly come in creation order, so the last bucket is the usual one.
    buckets: Vec<(i64, ShadowTally)>,
}

impl TallyBuckets {
    /// Buckets of `bucket_ms` (at least 1 ms).
    pub fn new(bucket_ms: i64) -> TallyBuckets {
        TallyBuckets {
            bucket_ms: bucket_ms.max(1),
            buckets: Vec::new(),
        }
    }

    /// Fold in one shadow task.
    pub fn add(&mut self, row: &ShadowRow<'_>) {
        let start = row.created_ms.div_euclid(self.bucket_ms) * self.bucket_ms;
        let i = match self.buckets.last() {
            Some((at, _)) if *at == start => self.buckets.len() - 1,
            _ => match self.buckets.binary_search_by_key(&start, |(at, _)| *at) {
                Ok(i) => i,
                Err(i) => {
                    self.buckets.insert(i, (start, ShadowTally::default()));
                    i
                }
            },
        };
        self.buckets[i].1.add(row);
    }

    /// The buckets that hold at least one task, oldest first.
    pub fn finish(self) -> Vec<(i64, ShadowTally)> {
        self.buckets
    }
}

/// A task the dispatcher picks up at start, and the time before which it must not run (a retry
/// waiting out its backoff).
#[derive(Debug, Clone)]
pub struct PendingTask {
    pub task: Task,
    pub not_before: Option<i64>,
}

/// An agent's pause as stored (one `agent_pause:<agent>` key in the metadata table), so that it
/// outlives a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPause {
    pub agent: String,
    pub cause: PauseCause,
    /// `None`: until resumed.
    pub until_ms: Option<i64>,
    pub reason: String,
    pub by: String,
    pub at_ms: i64,
}

/// The metadata key of an agent's pause.
pub const PAUSE_KEY_PREFIX: &str = "agent_pause:";

/// An operator's resume of an agent's budget pause, as stored (one `budget_lift:<agent>` key in
/// the metadata table): no budget pauses the agent again in the day and the month that began at
/// these times, also after a restart. A later lift of the same agent replaces it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetLift {
    pub agent: String,
    pub day_start: i64,
    pub month_start: i64,
}

/// The metadata key of an agent's budget lift.
pub const LIFT_KEY_PREFIX: &str = "budget_lift:";

/// What one task's runs reported they used, for costs per agent, model and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub agent: Option<String>,
    pub kind: TaskKind,
    /// When its latest run started.
    pub started_ms: i64,
    pub usage: Usage,
}

/// A synthetic gate run, as recorded.
#[derive(Debug, Clone)]
pub struct GateRunRecord {
    pub at_ms: i64,
    /// `None` for a full run (`synthetic-all`).
    pub label: Option<String>,
    pub fingerprint: String,
    pub passed: u32,
    pub total: u32,
    /// The whole report, as JSON.
    pub report: String,
}

/// A one-time gate override, as recorded.
#[derive(Debug, Clone)]
pub struct NewOverride {
    pub mode: Mode,
    pub reason: String,
    pub by: String,
    pub uid: u32,
    pub at_ms: i64,
}

/// The effective mode as stored, and since when (unknown in stores older than that record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredMode {
    pub mode: Mode,
    pub since_ms: Option<i64>,
}

/// A mode change, with the override it consumes, if any.
#[derive(Debug, Clone, Copy)]
pub struct ModeChange {
    pub mode: Mode,
    pub since_ms: i64,
    pub consume_override: Option<i64>,
}

/// Apply a transition that moved `task` to `to` to the task in memory, exactly as the store
/// applies it to the row, so that a plan's result can be answered without reading it back.
pub fn absorb(task: &mut Task, op: &TransitionOp, to: TaskState) {
    let p = &op.patch;
    let at = rfc3339(op.at_ms);
    task.state = to;
    if let Some(r) = &p.routing {
        task.routing = Some(r.clone());
    }
    if let Some(a) = &p.agent {
        task.assigned_agent_id = Some(a.clone());
    }
    if let Some(r) = &p.result {
        task.result = Some(r.clone());
    }
    if let Some(r) = &p.rejection {
        task.rejection = Some(r.clone());
    }
    if let Some(e) = &p.error {
        task.error = Some(e.clone());
    }
    if let Some(w) = p.would_require_approval {
        task.would_require_approval = w;
    }
    if let Some(u) = &p.usage {
        task.usage = Some(u.clone());
    }
    if op.action == Action::Route {
        task.assigned_at = Some(at.clone());
    }
    if op.action == Action::Start {
        task.started_at = Some(at.clone());
    }
    let attempts = i64::from(task.attempts) + attempts_inc(op.action);
    task.attempts = attempts.clamp(0, i64::from(u32::MAX)) as u32;
    if to.is_terminal() {
        task.completed_at = Some(at);
    }
}

/// A start counts an attempt; a deferral takes it back (a provider's "not now" is not a try).
fn attempts_inc(action: Action) -> i64 {
    match action {
        Action::Start => 1,
        Action::Defer => -1,
        _ => 0,
    }
}

/// What a compare-and-set writes besides the patch, worked out once for every backend: the target
/// state by the state machine, the timestamp that goes with the action, the attempt count, and the
/// lease and specialist pid (kept only while the task stays or enters `in_progress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub to: TaskState,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub attempts_inc: i64,
    /// `(set, value)`: whether to write the lease, and what (`None` clears it).
    pub lease: (bool, Option<i64>),
    pub pid: (bool, Option<i64>),
    /// `(set, value)` for `not_before`: every entry into `queued` takes the patch's (a retry's
    /// time, or none); no other change touches it, since only `queued` and `assigned` tasks are
    /// read with it.
    pub not_before: (bool, Option<i64>),
    pub error_code: Option<String>,
}

impl RowChange {
    /// The change `op` makes to a task in state `from`, or the state machine's refusal.
    pub fn of(op: &TransitionOp, from: TaskState) -> Result<RowChange, super::StoreError> {
        use crate::machine::next_state;
        let to = next_state(from, op.action).map_err(|r| super::StoreError::Refused {
            from: r.from,
            action: r.action.name(),
        })?;
        let (p, at) = (&op.patch, op.at_ms);
        // Leaving in_progress always drops the lease and the pid; entering it takes the patch's.
        let keep = |v: Option<i64>| {
            if to == TaskState::InProgress {
                (v.is_some(), v)
            } else {
                (true, None)
            }
        };
        Ok(RowChange {
            to,
            assigned_at: (op.action == Action::Route).then_some(at),
            started_at: (op.action == Action::Start).then_some(at),
            completed_at: to.is_terminal().then_some(at),
            attempts_inc: attempts_inc(op.action),
            lease: keep(p.lease_until),
            pid: keep(p.specialist_pid),
            not_before: (to == TaskState::Queued, p.not_before),
            error_code: p.error.as_ref().map(|e| e.code.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_at(created_ms: i64) -> ShadowRow<'static> {
        ShadowRow {
            state: TaskState::Failed,
            error_code: None,
            agent: Some("coder"),
            created_ms,
            completed_ms: Some(created_ms + 5),
            would_require_approval: false,
        }
    }

    /// Rows in any order (PostgreSQL does not promise one) come out as one tally per bucket,
    /// oldest first, each the same as the rows of that bucket folded alone.
    #[test]
    fn buckets_fold_rows_in_any_order() {
        let mut buckets = TallyBuckets::new(100);
        for at in [250, 10, 120, -30, 199, 11] {
            buckets.add(&failed_at(at));
        }
        let got = buckets.finish();
        let starts: Vec<i64> = got.iter().map(|(at, _)| *at).collect();
        assert_eq!(starts, [-100, 0, 100, 200]);
        let mut alone = ShadowTally::default();
        for at in [120, 199] {
            alone.add(&failed_at(at));
        }
        assert_eq!(got[2].1, alone);
        let totals: Vec<u64> = got.iter().map(|(_, t)| t.total).collect();
        assert_eq!(totals, [1, 2, 2, 1]);
    }

    /// Merged parts are the tally of all their rows.
    #[test]
    fn merged_parts_are_the_whole() {
        let rows = [failed_at(1), failed_at(7), failed_at(3)];
        let mut whole = ShadowTally::default();
        rows.iter().for_each(|r| whole.add(r));
        let (mut first, mut second) = (ShadowTally::default(), ShadowTally::default());
        first.add(&rows[0]);
        rows[1..].iter().for_each(|r| second.add(r));
        first.merge(&second);
        assert_eq!(first, whole);
        assert!(whole.all_terminal());
    }
}
