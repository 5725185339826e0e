//! Delivery: when a live task reaches `done` — completed without approval, or approved —
//! the optional `[delivery] command` runs with the task as JSON on stdin. Shadow and synthetic tasks
//! are never delivered.
//!
//! Deliveries follow the store's committed events, one at a time, in commit order. Each one ends
//! with a `deliver` event in the task's trajectory (`done → done`, actor `delivery`) that records
//! how the command ended, so an operator can see what was delivered. If the event stream lags,
//! the live `done` tasks since the last event seen that have no `deliver` event are caught up.
//!
//! Delivery is at most once: a daemon that stops (or crashes) between a task's `done` and the end
//! of its delivery does not retry it at the next start; such a task is the `done` live task without
//! a `deliver` event.

use super::process::{self, Capture, Ending, Launch, Limits};
use crate::clock::rfc3339_ms;
use crate::config::DeliveryConfig;
use crate::daemon::Daemon;
use crate::store::NewEvent;
use orchestrator_proto::task::{Task, TaskKind, TaskState};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub const ACTOR: &str = "delivery";
pub const ACTION: &str = "deliver";
/// Between SIGTERM and SIGKILL for a delivery past its timeout, or when the daemon stops.
const GRACE: Duration = Duration::from_secs(5);
/// How far before the last event seen a catch-up looks, for events committed out of time order.
const CATCH_UP_MARGIN_MS: i64 = 60_000;

/// Follow the store's events until shutdown, delivering live tasks that reach `done`.
pub async fn run(d: Arc<Daemon>) {
    let mut events = d.store.subscribe();
    // The commit time of the last event taken from the stream: a catch-up looks from there (less
    // the margin), however long ago the stream handed it over.
    let mut seen_ms = d.clock.now_ms();
    // Delivered by the last catch-up: their `done` events may still be in the stream's buffer,
    // and must not run the command a second time.
    let mut caught_up: HashSet<String> = HashSet::new();
    loop {
        let ev = tokio::select! {
            _ = d.shutdown.cancelled() => return,
            ev = events.recv() => ev,
        };
        match ev {
            Ok(ev) => {
                if let Some(at) = rfc3339_ms(&ev.at) {
                    seen_ms = seen_ms.max(at);
                }
                if ev.to == TaskState::Done
                    && ev.from != Some(TaskState::Done)
                    && !caught_up.remove(&ev.task_id)
                    && d.config().delivery.is_some()
                {
                    let id = ev.task_id.clone();
                    match d.store.get_task(&id).await {
                        Ok(Some(task)) if task.kind == TaskKind::Live => deliver(&d, task).await,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(TASK_ID = %ev.task_id, error = %e, "cannot read a done task to deliver it")
                        }
                    }
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "delivery fell behind the event stream; catching up from the store"
                );
                caught_up.clear();
                if d.config().delivery.is_some() {
                    let since = seen_ms.saturating_sub(CATCH_UP_MARGIN_MS);
                    match d.store.undelivered_since(since, ACTION).await {
                        Ok(tasks) => {
                            for task in tasks {
                                if d.shutdown.is_cancelled() {
                                    return;
                                }
                                caught_up.insert(task.id.clone());
                                deliver(&d, task).await;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot catch up on deliveries"),
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn deliver(d: &Daemon, task: Task) {
    let Some(cfg) = d.config().delivery.clone() else {
        return;
    };
    let Some(details) = run_command(d, &cfg, &task).await else {
        return;
    };
    let id = task.id.clone();
    let ok = details.get("exitStatus").is_some_and(|s| s == "0");
    let at = d.clock.now_ms();
    let result = d
        .store
        .append_event(NewEvent {
            task_id: id,
            kind: TaskKind::Live,
            state: TaskState::Done,
            at_ms: at,
            actor: ACTOR.to_string(),
            action: ACTION.to_string(),
            details: Some(details),
        })
        .await;
    match result {
        Ok(()) if ok => tracing::info!(TASK_ID = %task.id, "delivered"),
        Ok(()) => tracing::warn!(TASK_ID = %task.id, "the delivery command failed"),
        Err(e) => {
            tracing::error!(TASK_ID = %task.id, error = %e, "cannot record the delivery")
        }
    }
}

/// Run the delivery command for `task`; the details of its ending, or `None` when the daemon
/// stopped it.
async fn run_command(
    d: &Daemon,
    cfg: &DeliveryConfig,
    task: &Task,
) -> Option<BTreeMap<String, String>> {
    let mut details = BTreeMap::new();
    let stdin = match serde_json::to_vec(task) {
        Ok(s) => s,
        Err(e) => {
            details.insert("error".into(), format!("cannot encode the task: {e}"));
            return Some(details);
        }
    };
    let env = process::child_env(task, &BTreeMap::new(), None);
    let child = process::spawn(Launch {
        argv: &cfg.command,
        env,
        cwd: &d.paths.state_dir,
        stdin,
        stdout: Capture {
            cap: 0,
            spill: None,
        },
    });
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            details.insert(
                "error".into(),
                format!("cannot start the delivery command: {e}"),
            );
            return Some(details);
        }
    };
    let never = CancellationToken::new();
    let limits = Limits {
        timeout: cfg.timeout,
        kill_grace: GRACE,
        shutdown_grace: GRACE,
    };
    let ended = child.watch(limits, &never, &d.shutdown).await;
    match ended.how {
        Ending::Stopped => return None,
        Ending::TimedOut => {
            details.insert(
                "error".into(),
                format!(
                    "the delivery command ran past its timeout of {}",
                    humantime::format_duration(cfg.timeout)
                ),
            );
        }
        Ending::Exited(status) => {
            let (pairs, _) = process::describe_exit(status);
            for (k, v) in pairs {
                details.insert(k.into(), v);
            }
        }
    }
    if !ended.stderr_tail.is_empty() {
        details.insert("stderrTail".into(), ended.stderr_tail);
    }
    details.insert("elapsedMs".into(), ended.elapsed.as_millis().to_string());
    Some(details)
}
