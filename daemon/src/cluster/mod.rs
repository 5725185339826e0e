//! Several daemons on one PostgreSQL store: this daemon as a node among them.
//!
//! - Every node writes a heartbeat row (`orchctl nodes`) every `[node] heartbeat`.
//! - At the same tick it takes or renews the leader's lease (`[node] leader_lease`): the periodic
//!   work (the sweeper's timer: expiry, lease reclaim, retention) runs only on the leader. Another
//!   node takes over within two leases after the leader stops renewing.
//! - It also polls for work no dispatcher took (tasks left `queued` by a node that died, or while
//!   the store was down) and asks the dispatcher to claim what its agents can run, so tasks routed
//!   through another node, or reclaimed from a dead one, are started here too.
//!
//! - And it follows the shared rollout state: a mode flip, gate run or override accepted through
//!   another node is in force here from the next tick on (`status` shows it).
//! - And the spending of every node's runs against the budgets: the sums are read from the store,
//!   and a threshold they cross is announced (and its pause made) by the first node to claim it
//!   (`dispatch::budget::follow`).
//!
//! Claims are exact: [`crate::store::cluster::Cluster::claim`] starts a task on one node only, and
//! an agent's `max_concurrent` holds across nodes. On SQLite the daemon is a node of one: it is
//! always the leader and none of this runs.

use crate::clock::duration_ms;
use crate::daemon::Daemon;
use crate::node::host_name;
use crate::store::cluster::NodeBeat;
use orchestrator_proto::message::{NodeInfo, NodesReport};
use orchestrator_proto::WireError;
use std::sync::Arc;

/// The supervisor's name for [`run`].
pub const TASK: &str = "node-heartbeat";
/// Most forgotten `queued` tasks handed to the dispatcher per tick.
const UNROUTED_BATCH: usize = 512;

fn beat(d: &Daemon) -> NodeBeat {
    let cfg = d.config();
    let agents = cfg.agents_with_command().cloned().collect();
    NodeBeat {
        host: host_name(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        address: d
            .http_listen
            .get()
            .cloned()
            .unwrap_or_else(|| d.paths.socket.display().to_string()),
        agents,
        running: d.node.running(),
        at_ms: d.clock.now_ms(),
    }
}

/// `orchctl nodes`: every node of the shared store, or this one alone on SQLite.
pub async fn report(d: &Daemon) -> Result<NodesReport, WireError> {
    let Some(cluster) = d.store.cluster() else {
        let b = beat(d);
        return Ok(NodesReport {
            this: d.node.id.clone(),
            shared: false,
            nodes: vec![NodeInfo {
                id: d.node.id.clone(),
                host: b.host,
                pid: b.pid,
                version: b.version,
                address: b.address,
                agents: b.agents,
                running: b.running,
                last_heartbeat: crate::clock::rfc3339(b.at_ms),
                leader: true,
            }],
        });
    };
    let nodes = cluster.nodes(d.clock.now_ms()).await?;
    Ok(NodesReport {
        this: d.node.id.clone(),
        shared: true,
        nodes,
    })
}

/// Heartbeat, leadership and the poll for work, every `[node] heartbeat`, until shutdown; then
/// leave the nodes table. Started only on a shared store; elsewhere it waits for shutdown.
pub async fn run(d: Arc<Daemon>) {
    let Some(cluster) = d.store.cluster() else {
        d.shutdown.cancelled().await;
        return;
    };
    let mut moves = d.clock.moves();
    loop {
        tick(&d).await;
        let period = d.config().node.heartbeat;
        tokio::select! {
            _ = d.shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
            // A test clock jumped: leases may have lapsed; act now as the wall clock would have.
            _ = moves.moved() => {}
        }
    }
    d.node.set_leader(false);
    if let Err(e) = cluster.leave().await {
        tracing::warn!(error = %e, "cannot remove this node from the nodes table");
    }
}

async fn tick(d: &Daemon) {
    let Some(cluster) = d.store.cluster() else {
        return;
    };
    let cfg = d.config();
    let now = d.clock.now_ms();
    if let Err(e) = cluster.heartbeat(beat(d)).await {
        tracing::warn!(error = %e, "cannot write this node's heartbeat");
    }
    let lease = duration_ms(cfg.node.leader_lease);
    let leads = match cluster.lead(now, lease).await {
        Ok(l) => l,
        Err(e) => {
            // Without the store no periodic work can run anyway; another node may lead meanwhile.
            tracing::warn!(error = %e, "cannot renew the leader's lease");
            false
        }
    };
    if d.node.set_leader(leads) != leads {
        if leads {
            tracing::info!(NODE = %d.node.id, "this node leads: periodic work runs here");
        } else {
            tracing::info!(NODE = %d.node.id, "this node no longer leads");
        }
    }
    follow_rollout(d).await;
    crate::dispatch::budget::follow(d, cluster).await;
    let before = now.saturating_sub(duration_ms(cfg.node.heartbeat));
    match cluster.unrouted(before, now, UNROUTED_BATCH).await {
        Ok(tasks) => {
            if !tasks.is_empty() {
                tracing::info!(count = tasks.len(), "dispatching tasks left queued");
            }
            for t in tasks {
                d.dispatch.queued(t);
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot look for tasks left queued"),
    }
    d.dispatch.poll();
}

/// An agent paused or resumed through any node (an operator, a provider's limit, a budget) is
/// paused or resumed on every node from its next heartbeat. Read and set under the pauses' own
/// lock, so that a change this node makes meanwhile is not overwritten by an older read.
async fn follow_pauses(d: &Daemon) {
    let _one_at_a_time = d.pauses.changing().await;
    match d.store.agent_pauses().await {
        Ok(stored) => d.pauses.replace(stored),
        Err(e) => tracing::debug!(error = %e, "cannot read the shared agents' pauses"),
    }
}

/// Take the mode, the latest gate run, the pending overrides and the agents' pauses as the shared
/// store holds them: another node may have flipped the mode, run the gate, recorded an override,
/// or paused or resumed an agent.
async fn follow_rollout(d: &Daemon) {
    follow_pauses(d).await;
    let read = async {
        Ok::<_, crate::store::StoreError>((
            d.store.load_mode().await?,
            d.store.latest_gate_run().await?,
            d.store.pending_overrides().await?,
        ))
    };
    let (mode, gate, overrides) = match read.await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the shared rollout state");
            return;
        }
    };
    d.gate.set_latest_run(gate);
    d.gate.set_pending_overrides(overrides);
    let Some(stored) = mode else { return };
    let current = d.mode();
    // Only a change newer than the one in force here: a read that raced this node's own reload
    // must not undo it.
    let newer = stored
        .since_ms
        .is_some_and(|since| since > current.since_ms);
    if stored.mode != current.effective && newer {
        tracing::info!(from = %current.effective, to = %stored.mode, MODE = %stored.mode, "mode changed through another node");
        let note = (stored.mode != d.config().mode).then(|| {
            format!(
                "the mode was changed to {} through another node; this node's config asks for {}",
                stored.mode,
                d.config().mode
            )
        });
        d.set_mode(crate::daemon::ModeState {
            effective: stored.mode,
            since_ms: stored.since_ms.unwrap_or(current.since_ms),
            note,
        });
    }
}
