//! [`Cluster`] for [`PostgresBackend`]: the nodes table, the leader's lease row, and claims.
//!
//! A claim takes a per-agent transaction-scoped advisory lock, so that claims for one agent run
//! one at a time across nodes and the count of its running tasks cannot go stale between the
//! count and the update; the oldest `assigned` rows are then locked with `FOR UPDATE SKIP LOCKED`
//! and started, each a compare-and-set with its trajectory event, in the same transaction.
//!
//! An agent that counts against shared limits (`[limits.NAME]`) first takes one advisory lock per
//! limit, in ascending order of the limits' keys and before the agent's own lock (so two claims
//! never wait on each other in a cycle), and counts the `in_progress` tasks of all the limit's
//! agents: claims for agents that share a limit run one at a time across nodes, and the limit
//! holds across nodes (docs/ARCHITECTURE.md "Claims").

use super::queries::query;
use super::rows::{task_from_row, TASK_COLUMNS};
use super::PostgresBackend;
use crate::clock::rfc3339;
use crate::store::cluster::{Claim, ClaimLimit, Cluster, NodeBeat, Spent};
use crate::store::StoreFuture;
use orchestrator_proto::message::NodeInfo;
use orchestrator_proto::task::{Task, TaskKind, TaskState};

/// The meta rows that record which budget thresholds a node has announced (their value: the end
/// of the threshold's period, after which the row is deleted).
const CROSSING_KEY_PREFIX: &str = "budget-crossed:";

/// The first half of the per-agent claim lock's key (the agent's hash is the second).
const CLAIM_LOCK: i32 = 0x6f72_6361; // "orca"

/// The advisory lock of the shared limit `name`: a 64-bit key, so it lives apart from the
/// two-part per-agent keys (PostgreSQL keeps the two key spaces apart). FNV-1a of the name, stable
/// across nodes, releases and platforms.
fn limit_lock(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "orchestrator limit ".bytes().chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Cluster for PostgresBackend {
    fn node(&self) -> &str {
        &self.inner.node
    }

    fn heartbeat(&self, b: NodeBeat) -> StoreFuture<'_, ()> {
        let node = self.inner.node.clone();
        write!(self, |tx| {
            let agents = b.agents.join(",");
            tx.exec(
                "INSERT INTO nodes (id, host, pid, version, address, agents, running, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET \
                 host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version, \
                 address = EXCLUDED.address, agents = EXCLUDED.agents, \
                 running = EXCLUDED.running, heartbeat_at = EXCLUDED.heartbeat_at",
                &[
                    &node,
                    &b.host,
                    &i64::from(b.pid),
                    &b.version,
                    &b.address,
                    &agents,
                    &i64::from(b.running),
                    &b.at_ms,
                ],
            )
            .await
            .map(|_| ())
        })
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        let node = self.inner.node.clone();
        write!(self, |tx| {
            tx.exec("DELETE FROM nodes WHERE id = $1", &[&node]).await?;
            tx.exec("UPDATE leader SET until = 0 WHERE node = $1", &[&node])
                .await
                .map(|_| ())
        })
    }

    fn nodes(&self, now_ms: i64) -> StoreFuture<'_, Vec<NodeInfo>> {
        read!(self, |c| {
            let rows = query(
                &c,
                "SELECT n.id, n.host, n.pid, n.version, n.address, n.agents, n.running, \
                 n.heartbeat_at, (l.node IS NOT NULL AND l.node = n.id AND l.until >= $1) \
                 FROM nodes n LEFT JOIN leader l ON true ORDER BY n.id",
                &[&now_ms],
            )
            .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let agents: String = r.get(5);
                    NodeInfo {
                        id: r.get(0),
                        host: r.get(1),
                        pid: u32::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                        version: r.get(3),
                        address: r.get(4),
                        agents: agents
                            .split(',')
                            .filter(|a| !a.is_empty())
                            .map(str::to_string)
                            .collect(),
                        running: u32::try_from(r.get::<_, i64>(6)).unwrap_or(0),
                        last_heartbeat: rfc3339(r.get(7)),
                        leader: r.get(8),
                    }
                })
                .collect())
        })
    }

    fn lead(&self, now_ms: i64, lease_ms: i64) -> StoreFuture<'_, bool> {
        let node = self.inner.node.clone();
        write!(self, |tx| {
            let rows = tx
                .query(
                    "UPDATE leader SET node = $1, until = $2 + $3 \
                     WHERE node = $1 OR node IS NULL OR until < $2 RETURNING node",
                    &[&node, &now_ms, &lease_ms],
                )
                .await?;
            Ok(!rows.is_empty())
        })
    }

    fn claim(&self, claim: Claim) -> StoreFuture<'_, Vec<Task>> {
        write!(self, |tx| {
            // Limits first, in ascending key order, then the agent: the same order in every claim.
            let mut limits: Vec<(i64, &ClaimLimit)> = claim
                .limits
                .iter()
                .map(|l| (limit_lock(&l.name), l))
                .collect();
            limits.sort_by_key(|(key, _)| *key);
            limits.dedup_by_key(|(key, _)| *key);
            for (key, _) in &limits {
                tx.exec("SELECT pg_advisory_xact_lock($1)", &[key]).await?;
            }
            tx.exec(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&CLAIM_LOCK, &claim.agent],
            )
            .await?;
            // Read after the locks: every earlier claim for this agent, or for an agent sharing
            // one of its limits, has committed. The agent's own maximum is one more cap, over
            // itself alone.
            let own = [claim.agent.clone()];
            let caps = std::iter::once((claim.max_concurrent, &own[..])).chain(
                limits
                    .iter()
                    .map(|(_, l)| (l.max_concurrent, &l.agents[..])),
            );
            let mut room = i64::from(claim.want);
            for (max, agents) in caps {
                if room <= 0 {
                    break;
                }
                let running: i64 = tx
                    .query(
                        "SELECT count(*) FROM tasks WHERE state = 'in_progress' AND agent = ANY($1)",
                        &[&agents],
                    )
                    .await?
                    .first()
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                room = room.min(i64::from(max) - running);
            }
            if room <= 0 {
                return Ok(Vec::new());
            }
            let rows = tx
                .query(
                    "SELECT id, kind, attempts FROM tasks WHERE state = 'assigned' AND agent = $1 \
                     ORDER BY pos LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&claim.agent, &room],
                )
                .await?;
            let mut started = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.get(0);
                let kind: TaskKind = super::rows::parsed(row, 1)?;
                let attempts: i64 = row.get(2);
                // Locked above: the compare-and-set cannot be refused.
                tx.apply_from(&claim.start_op(&id, attempts), kind, TaskState::Assigned)
                    .await?;
                started.push(id);
            }
            if started.is_empty() {
                return Ok(Vec::new());
            }
            let rows = tx
                .query(
                    &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1) ORDER BY pos"),
                    &[&started],
                )
                .await?;
            rows.iter().map(task_from_row).collect()
        })
    }

    fn subscribe_all(
        &self,
    ) -> tokio::sync::broadcast::Receiver<orchestrator_proto::task::TrajectoryEvent> {
        self.inner.all_events.subscribe()
    }

    fn unrouted(&self, before_ms: i64, now_ms: i64, limit: usize) -> StoreFuture<'_, Vec<Task>> {
        read!(self, |c| {
            let rows = query(
                &c,
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'queued' AND created_at < $1 \
                     AND (not_before IS NULL OR not_before <= $3) ORDER BY pos LIMIT $2"
                ),
                &[&before_ms, &limit_sql(limit), &now_ms],
            )
            .await?;
            rows.iter().map(task_from_row).collect()
        })
    }

    fn spending(&self, day_start_ms: i64, month_start_ms: i64) -> StoreFuture<'_, Vec<Spent>> {
        read!(self, |c| {
            // Read from the partial index `tasks_cost_started` alone (migration 8).
            let rows = query(
                &c,
                "SELECT agent, COALESCE(sum(cost_usd) FILTER (WHERE started_at >= $1), 0), \
                 sum(cost_usd) FROM tasks WHERE usage IS NOT NULL AND started_at >= $2 \
                 AND agent IS NOT NULL AND cost_usd IS NOT NULL GROUP BY agent ORDER BY agent",
                &[&day_start_ms, &month_start_ms],
            )
            .await?;
            Ok(rows
                .iter()
                .map(|r| Spent {
                    agent: r.get(0),
                    day_usd: r.get(1),
                    month_usd: r.get(2),
                })
                .collect())
        })
    }

    fn claim_crossing(&self, key: &str, ends_ms: i64, now_ms: i64) -> StoreFuture<'_, bool> {
        let key = format!("{CROSSING_KEY_PREFIX}{key}");
        write!(self, |tx| {
            tx.exec(
                "DELETE FROM meta WHERE key LIKE $1 AND value::bigint < $2",
                &[&format!("{CROSSING_KEY_PREFIX}%"), &now_ms],
            )
            .await?;
            let claimed = tx
                .exec(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    &[&key, &ends_ms.to_string()],
                )
                .await?;
            Ok(claimed == 1)
        })
    }
}
