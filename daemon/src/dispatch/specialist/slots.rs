//! The per-agent queues and slots: each agent has a FIFO queue and at most `max_concurrent`
//! specialists alive, and agents that share a `[limits.<name>]` run at most its `max_concurrent`
//! together. A freed slot lets in the oldest waiting task that may start, across agents, so that
//! agents sharing a limit take turns in the order their tasks arrived.

use super::outcome::details;
use super::{runnable, Shared};
use crate::dispatch::{leases, route_op, ACTOR};
use crate::machine::Action;
use crate::store::cluster::{Claim, ClaimLimit};
use crate::store::{Patch, StoreError, TransitionOp};
use orchestrator_proto::task::{task_error, Task, TaskError, TaskState};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, MutexGuard};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(super) struct Slots {
    pub(super) agents: HashMap<String, AgentSlots>,
    /// Tasks taken from a queue whose specialist has not ended yet, and what stops each.
    pub(super) running: HashMap<String, CancellationToken>,
    /// Specialists alive per shared limit.
    pub(super) limits_alive: HashMap<String, u32>,
    /// Arrival order of waiting tasks, across agents.
    next_seq: u64,
}

/// What [`Shared::known`] gathered in one burst: the ids waiting or running here and routed in
/// the burst, and how many of the burst's tasks it has added.
pub(super) type Here = (HashSet<String>, usize);

#[derive(Default)]
pub(super) struct AgentSlots {
    /// Waiting tasks with their arrival number, oldest first.
    pub(super) waiting: VecDeque<(u64, Task)>,
    pub(super) alive: u32,
    /// On a shared store: a claim for this agent is under way, and whether slots were freed
    /// (or work announced) meanwhile, so that it claims once more.
    pub(super) claiming: bool,
    pub(super) again: bool,
}

/// Frees the slot when a run ends, however it ends (a panic included), and lets the next one in.
pub(super) struct SlotGuard {
    pub(super) s: Arc<Shared>,
    pub(super) agent: String,
    /// The shared limits the run counted against when it started.
    pub(super) limits: Vec<String>,
    pub(super) id: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        {
            let mut slots = self.s.slots();
            if let Some(q) = slots.agents.get_mut(&self.agent) {
                q.alive = q.alive.saturating_sub(1);
            }
            for l in &self.limits {
                if let Some(n) = slots.limits_alive.get_mut(l) {
                    *n = n.saturating_sub(1);
                }
            }
            slots.running.remove(&self.id);
            self.s.d.node.set_running(slots.running.len());
        }
        self.s.pump();
    }
}

impl Shared {
    pub(super) fn slots(&self) -> MutexGuard<'_, Slots> {
        match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(super) fn cancel(&self, id: &str) {
        let mut slots = self.slots();
        if let Some(stop) = slots.running.get(id) {
            stop.cancel();
            return;
        }
        for q in slots.agents.values_mut() {
            q.waiting.retain(|(_, t)| t.id != id);
        }
    }

    /// Route a burst of tasks in one store job, then queue each for its agent, in order.
    pub(super) async fn admit(self: &Arc<Self>, tasks: Vec<Task>) {
        let cfg = self.d.config();
        let at = self.d.clock.now_ms();
        let c = Arc::clone(&cfg);
        let count = tasks.len();
        let routes: Vec<TransitionOp> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Queued)
            .map(|t| route_op(t, &c, at).0)
            .collect();
        let routed = self.d.store.transitions(routes).await;
        let routed = match routed {
            Ok(outcomes) => {
                let mut out = Vec::with_capacity(tasks.len());
                let mut here = None;
                let mut outcomes = outcomes.into_iter();
                for task in tasks {
                    if task.state == TaskState::Queued {
                        match outcomes.next() {
                            Some(Ok(t)) => {
                                let agent = t.assigned_agent_id.as_deref().unwrap_or_default();
                                self.d.metrics.dispatches.inc(&[agent]);
                                out.push(t)
                            }
                            // Routed before (found assigned at start): taken as it stands now,
                            // unless it is here already (handed over twice at start).
                            Some(Err(StoreError::Refused {
                                from: TaskState::Assigned,
                                ..
                            })) if !self.known(&mut here, &task.id, &out) => {
                                out.extend(self.current(&task.id, TaskState::Assigned).await)
                            }
                            // Cancelled or expired meanwhile, or here already: not to run again.
                            _ => {}
                        }
                    } else if !self.known(&mut here, &task.id, &out) {
                        out.extend(self.current(&task.id, TaskState::Assigned).await);
                    }
                }
                Ok(out)
            }
            Err(e) => Err(e),
        };
        let routed = match routed {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, count, "cannot route tasks; they stay queued, and are dispatched again after the next sweep");
                self.d.dispatch.lost_some();
                return;
            }
        };
        let mut no_agent = Vec::new();
        let shared_store = self.d.store.cluster().is_some();
        {
            let mut slots = self.slots();
            for task in routed {
                let agent = task.assigned_agent_id.clone().unwrap_or_default();
                if shared_store {
                    // Any node that runs the agent claims the task from the store (see `claim`);
                    // one that runs none leaves it `assigned` for the others.
                } else if runnable(&cfg, &agent).is_some() {
                    let seq = slots.next_seq;
                    slots.next_seq += 1;
                    slots
                        .agents
                        .entry(agent)
                        .or_default()
                        .waiting
                        .push_back((seq, task));
                } else {
                    no_agent.push(task);
                }
            }
        }
        if !no_agent.is_empty() {
            self.fail_no_agent(no_agent).await;
        }
        self.pump();
    }

    /// Whether the task is already on its way here: waiting, running, or among those routed in
    /// this burst. Asked only of tasks found routed before: at start a task can be handed over by
    /// its submit and by the read of pending tasks, and after a store error the sweep hands over
    /// every pending task again (`dispatch::rescan`), thousands at once on a large backlog. So the
    /// ids waiting or running are gathered into `here` once per burst, at the first question, and
    /// each task routed in the burst is added as it is answered: each question is then a lookup,
    /// not a scan of every queue.
    pub(super) fn known(&self, here: &mut Option<Here>, id: &str, routed: &[Task]) -> bool {
        let (ids, added) = here.get_or_insert_with(|| {
            let slots = self.slots();
            let waiting = slots.agents.values().flat_map(|q| q.waiting.iter());
            let ids = slots.running.keys().cloned();
            (ids.chain(waiting.map(|(_, t)| t.id.clone())).collect(), 0)
        });
        // The burst has grown since the last question: its new tasks are added now.
        for t in routed.get(*added..).unwrap_or_default() {
            ids.insert(t.id.clone());
        }
        *added = routed.len();
        ids.contains(id)
    }

    /// The task as stored now, if it is in `state`.
    pub(super) async fn current(&self, id: &str, state: TaskState) -> Option<Task> {
        match self.d.store.get_task(id).await {
            Ok(t) => t.filter(|t| t.state == state),
            Err(e) => {
                tracing::error!(TASK_ID = %id, error = %e, "cannot read a task to dispatch it; it is dispatched again after the next sweep");
                self.d.dispatch.lost_some();
                None
            }
        }
    }

    pub(super) async fn fail_no_agent(&self, tasks: Vec<Task>) {
        let at = self.d.clock.now_ms();
        let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        let ops: Vec<TransitionOp> = tasks
            .iter()
            .map(|task| {
                let agent = task.assigned_agent_id.clone().unwrap_or_default();
                let error = TaskError {
                    code: task_error::RULE_LOADED_NO_AGENT.into(),
                    message: format!(
                        "the task was routed to agent {agent:?}, which has no [agents.{agent}] command to run"
                    ),
                    details: details(vec![("agent", agent.clone())]),
                };
                TransitionOp::new(&task.id, Action::Fail, ACTOR, at).patch(Patch {
                    error: Some(error),
                    ..Patch::default()
                })
            })
            .collect();
        // One task's refusal (cancelled meanwhile) is its own answer and undoes nothing else.
        let result = self.d.store.transitions(ops).await.map(|outcomes| {
            for t in outcomes.iter().flatten() {
                let agent = t.assigned_agent_id.as_deref().unwrap_or_default();
                let failures = &self.d.metrics.specialist_failures;
                failures.inc(&[agent, task_error::RULE_LOADED_NO_AGENT]);
            }
        });
        match result {
            Ok(()) => {
                tracing::warn!(tasks = ?ids, "tasks routed to agents without a command failed")
            }
            Err(e) => {
                tracing::error!(error = %e, tasks = ?ids, "cannot fail tasks routed to agents without a command")
            }
        }
    }

    /// Start waiting tasks while slots are free: each time the oldest task whose agent is not
    /// paused, has a free slot, and is under every shared limit it counts against.
    pub(super) fn pump(self: &Arc<Self>) {
        if self.d.shutdown.is_cancelled() {
            return;
        }
        let cfg = self.d.config();
        let now = self.d.clock.now_ms();
        if self.d.store.cluster().is_some() {
            // On a shared store the tasks wait in the store: claim for every agent this node runs
            // that is not paused. The claim counts the agent's shared limits across all nodes.
            for agent in cfg.configured_agents.iter() {
                if let Some(a) = runnable(&cfg, agent) {
                    if !self.d.pauses.blocks(agent, now) {
                        self.claim(agent, a.max_concurrent.max(1));
                    }
                }
            }
            return;
        }
        let mut starts = Vec::new();
        {
            let mut guard = self.slots();
            let slots = &mut *guard;
            loop {
                let eligible = slots
                    .agents
                    .iter()
                    .filter_map(|(id, q)| q.waiting.front().map(|(seq, _)| (*seq, id, q)))
                    .filter(|(_, id, q)| {
                        let agent = cfg.agent(id);
                        let max = agent.map(|a| a.max_concurrent.max(1)).unwrap_or(1);
                        let shared_ok = agent.is_none_or(|a| {
                            a.limits.iter().all(|l| {
                                let cap = cfg.limits.get(l).map(|c| c.max_concurrent);
                                let alive = slots.limits_alive.get(l).copied().unwrap_or(0);
                                cap.is_none_or(|cap| alive < cap)
                            })
                        });
                        q.alive < max && shared_ok && !self.d.pauses.blocks(id, now)
                    })
                    .min_by_key(|(seq, _, _)| *seq)
                    .map(|(_, id, _)| id.clone());
                let Some(agent) = eligible else {
                    break;
                };
                let Some(q) = slots.agents.get_mut(&agent) else {
                    break;
                };
                let Some((_, task)) = q.waiting.pop_front() else {
                    break;
                };
                q.alive += 1;
                let limits = cfg
                    .agent(&agent)
                    .map(|a| a.limits.clone())
                    .unwrap_or_default();
                for l in &limits {
                    *slots.limits_alive.entry(l.clone()).or_default() += 1;
                }
                let stop = CancellationToken::new();
                slots.running.insert(task.id.clone(), stop.clone());
                starts.push((task, agent, limits, stop));
            }
            for (id, q) in &slots.agents {
                let waiting = u32::try_from(q.waiting.len()).unwrap_or(u32::MAX);
                self.d.pauses.set_load(id, q.alive, waiting);
            }
        }
        self.spawn_runs(starts);
    }

    fn spawn_runs(self: &Arc<Self>, starts: Vec<(Task, String, Vec<String>, CancellationToken)>) {
        for (task, agent, limits, stop) in starts {
            let guard = SlotGuard {
                s: Arc::clone(self),
                agent,
                limits,
                id: task.id.clone(),
            };
            self.tracker.spawn(async move {
                guard.s.run(task, &stop).await;
                drop(guard);
            });
        }
    }

    /// On a shared store: claim the agent's `assigned` tasks for this node's free slots, one
    /// claim at a time per agent; the tasks come back started (`in_progress`, leased here).
    fn claim(self: &Arc<Self>, agent: &str, max: u32) {
        {
            let mut slots = self.slots();
            let q = slots.agents.entry(agent.to_string()).or_default();
            if q.claiming {
                q.again = true;
                return;
            }
            if q.alive >= max {
                return;
            }
            q.claiming = true;
        }
        let s = Arc::clone(self);
        let agent = agent.to_string();
        self.tracker
            .spawn(async move { s.claim_while_free(&agent, max).await });
    }

    async fn claim_while_free(self: &Arc<Self>, agent: &str, max: u32) {
        loop {
            let want = {
                let mut slots = self.slots();
                let q = slots.agents.entry(agent.to_string()).or_default();
                q.again = false;
                max.saturating_sub(q.alive)
            };
            if want > 0 && !self.d.shutdown.is_cancelled() {
                if let Some(cluster) = self.d.store.cluster() {
                    let claim = Claim {
                        agent: agent.to_string(),
                        max_concurrent: max,
                        want,
                        limits: ClaimLimit::of(&self.d.config(), agent),
                        lease_until: leases::until(&self.d),
                        at_ms: self.d.clock.now_ms(),
                        actor: ACTOR.to_string(),
                    };
                    match cluster.claim(claim).await {
                        Ok(tasks) => {
                            let mut starts = Vec::with_capacity(tasks.len());
                            {
                                let mut guard = self.slots();
                                let slots = &mut *guard;
                                let limits = self
                                    .d
                                    .config()
                                    .agent(agent)
                                    .map(|a| a.limits.clone())
                                    .unwrap_or_default();
                                for task in tasks {
                                    let q = slots.agents.entry(agent.to_string()).or_default();
                                    q.alive += 1;
                                    for l in &limits {
                                        *slots.limits_alive.entry(l.clone()).or_default() += 1;
                                    }
                                    let stop = CancellationToken::new();
                                    slots.running.insert(task.id.clone(), stop.clone());
                                    starts.push((task, agent.to_string(), limits.clone(), stop));
                                }
                                self.d.node.set_running(slots.running.len());
                            }
                            self.spawn_runs(starts);
                        }
                        // The next poll (see the `cluster` module) claims again.
                        Err(e) => tracing::warn!(AGENT = %agent, error = %e, "cannot claim tasks"),
                    }
                }
            }
            let mut slots = self.slots();
            let q = slots.agents.entry(agent.to_string()).or_default();
            if !q.again || self.d.shutdown.is_cancelled() {
                q.claiming = false;
                return;
            }
        }
    }
}
