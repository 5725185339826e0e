//! The dispatcher: takes each `queued` task, routes it, and runs it — synthetically, or by
//! handing it to the [`specialist`] executor in shadow and live mode. Every step is a transition in
//! the store with its trajectory event, made by the actor `dispatcher`.
//!
//! - [`synthetic`]: no process, a deterministic result.
//! - [`specialist`]: per-agent queues and slots, one task from start to outcome.
//! - [`process`]: one child process in its own group: environment, stdin, captured output, stop.
//! - [`artefacts`]: the files a specialist leaves behind.
//! - [`leases`]: renewing the leases of running tasks.
//! - [`orphans`]: stopping specialists a previous run left behind, at start.
//! - [`pauses`]: agents that start nothing for now (a provider's limit, a budget, an operator),
//!   stored.
//! - [`budget`]: what agents spent today and this month, against their budgets.
//! - [`delivery`]: the `[delivery] command` for live tasks that reach `done`.

pub mod artefacts;
pub mod budget;
pub mod delivery;
pub mod leases;
pub mod orphans;
pub mod pauses;
pub mod process;
pub mod specialist;
pub mod synthetic;

use crate::clock::rfc3339;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::machine::Action;
use crate::routing::{Approval, Decision};
use crate::store::{Patch, TransitionOp};
use crate::supervisor::Supervisor;
use orchestrator_proto::task::{Routing, Task, TaskKind};
use std::sync::Arc;
use tokio::sync::mpsc;

pub use crate::daemon::{DispatchHandle, DispatchMsg};

pub const ACTOR: &str = "dispatcher";
/// Most tasks handled in one store job; keeps one slow burst from holding the writer.
const MAX_BURST: usize = 512;

/// The routing fields a `route` transition records.
pub fn routing_patch(
    decision: &Decision,
    approval: &Approval,
    kind: TaskKind,
    at_ms: i64,
) -> Patch {
    Patch {
        routing: Some(Routing {
            matched_rule_id: decision.matched_rule_id.clone(),
            assigned_agent_id: decision.agent.clone(),
            capability_matches: decision.capability_matches.clone(),
            fallback_used: decision.fallback_used,
            decided_at: rfc3339(at_ms),
        }),
        agent: Some(decision.agent.clone()),
        // Shadow records what live would have done; the other kinds record the same for reference.
        would_require_approval: Some(kind == TaskKind::Shadow && approval.required),
        ..Patch::default()
    }
}

/// The `route` transition for a task, with the approval its decision implies.
pub fn route_op(task: &Task, cfg: &Config, at: i64) -> (TransitionOp, Approval) {
    route_step(
        &task.id,
        task.kind,
        &task.goal,
        &task.required_capabilities,
        cfg,
        at,
    )
}

/// The `route` transition for the task `id` of `kind` with this goal and these capabilities: a
/// pure function of them and the config.
pub fn route_step(
    id: &str,
    kind: TaskKind,
    goal: &str,
    capabilities: &[String],
    cfg: &Config,
    at: i64,
) -> (TransitionOp, Approval) {
    let decision = cfg.routing.decide(goal, capabilities);
    let approval = cfg.routing.approval(&decision, &cfg.agents);
    let op = TransitionOp::new(id, Action::Route, ACTOR, at)
        .patch(routing_patch(&decision, &approval, kind, at))
        .detail("agent", decision.agent.clone())
        .detail(
            "rule",
            decision
                .matched_rule_id
                .clone()
                .unwrap_or_else(|| "(default)".into()),
        );
    (op, approval)
}

/// Read the agents' stored pauses and this month's spending, before the daemon answers anyone:
/// `status` and `orchctl agents` show them from the first request on.
pub async fn load_agent_state(d: &Daemon) {
    match d.store.agent_pauses().await {
        Ok(stored) => d.pauses.load(stored),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the agents' pauses; they start as if none were paused")
        }
    }
    let lifts = d.store.budget_lifts().await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read the operators' lifts of budget pauses; an exhausted budget pauses its agents again");
        Vec::new()
    });
    let periods = d.config().timezone.periods(d.clock.now_ms());
    match d.store.usage_since(periods.month_start).await {
        Ok(rows) => {
            let now = d.clock.now_ms();
            let budget_paused = |agent: &str| {
                d.pauses.get(agent).is_some_and(|p| {
                    p.cause == orchestrator_proto::message::PauseCause::Budget && p.holds(now)
                })
            };
            d.spending
                .load(&d.config(), &rows, &lifts, &periods, &budget_paused)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read this month's usage; budgets count from now")
        }
    }
}

/// Hand every `queued` and `assigned` task the store holds to the dispatcher, a retry waiting out
/// its backoff when its time comes; answers how many, or `None` if the store could not say (the
/// next sweep tries again).
async fn pick_up_pending(d: &Arc<Daemon>) -> Option<usize> {
    match d.store.pending_dispatch().await {
        Ok(pending) => {
            let count = pending.len();
            for p in pending {
                match p.not_before.filter(|at| *at > d.clock.now_ms()) {
                    Some(at) => {
                        tracing::info!(TASK_ID = %p.task.id, not_before = %rfc3339(at), "task waits out its retry's backoff");
                        queue_at(d, p.task, at);
                    }
                    None => d.dispatch.queued(p.task),
                }
            }
            Some(count)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read pending tasks; the next sweep reads them again");
            d.dispatch.lost_some();
            None
        }
    }
}

/// After a store error on the dispatcher's way (a full disk, say) left tasks `queued` or
/// `assigned` that nothing holds any more: hand them all over again, as at start. The tasks still
/// on their way are recognised and not run twice: a task's route and start are compare-and-sets,
/// and one found routed already is taken only if it is not waiting or running here. Called by the
/// sweep. On a shared store every node's heartbeat does this already (see the `cluster` module).
pub async fn rescan(d: &Arc<Daemon>) {
    if !d.dispatch.take_lost() || d.store.cluster().is_some() {
        return;
    }
    if let Some(count) = pick_up_pending(d).await {
        tracing::info!(
            count,
            "dispatching again the queued and assigned tasks a store error left behind"
        );
    }
}

/// Hand `task` (stored `queued`) to the dispatcher when the daemon's clock reads `at_ms`: a
/// retry waiting out its backoff. Not tracked: the wait is stored with the task (`not_before`),
/// and a restart waits out what is left of it.
pub fn queue_at(d: &Arc<Daemon>, task: Task, at_ms: i64) {
    let d = Arc::clone(d);
    tokio::spawn(async move {
        if sleep_until(&d, at_ms).await {
            d.dispatch.queued(task);
        }
    });
}

/// Wait until the daemon's clock reads `at_ms` (a test clock's moves count); false at shutdown.
async fn sleep_until(d: &Daemon, at_ms: i64) -> bool {
    let mut moves = d.clock.moves();
    loop {
        let left = at_ms.saturating_sub(d.clock.now_ms());
        if left <= 0 {
            return true;
        }
        let wait = std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0));
        tokio::select! {
            _ = d.shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
            _ = moves.moved() => {}
        }
    }
}

/// Run until shutdown: pick up what the store holds, then every task the server hands over.
/// The specialist executor's own loops (intake, lease renewal) are started under `sup`.
pub async fn run(d: Arc<Daemon>, mut rx: mpsc::UnboundedReceiver<DispatchMsg>, sup: Supervisor) {
    let executor = specialist::Executor::new(Arc::clone(&d), &sup);
    if let Some(count) = pick_up_pending(&d).await {
        if count > 0 {
            tracing::info!(count, "resuming queued and assigned tasks");
        }
    }
    let mut buf = Vec::with_capacity(MAX_BURST);
    loop {
        buf.clear();
        let n = tokio::select! {
            _ = d.shutdown.cancelled() => break,
            n = rx.recv_many(&mut buf, MAX_BURST) => n,
        };
        if n == 0 {
            break;
        }
        let mut synthetic_tasks = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                DispatchMsg::Queued(task) if task.kind == TaskKind::Synthetic => {
                    synthetic_tasks.push(*task)
                }
                DispatchMsg::Queued(task) => executor.enqueue(*task),
                DispatchMsg::Cancelled(id) => executor.cancel(&id),
                DispatchMsg::Ping(answer) => {
                    let _ = answer.send(());
                }
                DispatchMsg::Poll => executor.poll(),
            }
        }
        if !synthetic_tasks.is_empty() {
            let d2 = Arc::clone(&d);
            // Not awaited here: the next burst is gathered while this one commits.
            tokio::spawn(async move {
                synthetic::dispatch(&d2, synthetic_tasks, d2.clock.now_ms()).await
            });
        }
    }
    executor.shutdown().await;
}
