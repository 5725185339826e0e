//! Seed a stopped daemon's store with a large archive, written straight into SQLite in one
//! transaction. The schema comes from the daemon itself: the store is opened (and migrated) once by
//! `Store::open` before rows go in, so the seed always matches the current schema.

use anyhow::{bail, Context, Result};
use orchestrator::clock::{now_ms, rfc3339};
use orchestrator::store::Store;
use orchestrator_proto::task::{Routing, TaskKind, TaskResult, TaskState};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::time::Instant;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Tasks in all.
    pub tasks: u64,
    /// Shadow tasks created inside the last 24 h (what `shadow-summary --window 24` reads).
    pub in_window: u64,
    /// Live tasks awaiting approval whose `expiresAt` falls at `due_at_ms` (what a sweep expires).
    pub due: u64,
    pub due_at_ms: i64,
    /// The due tasks are one in this many of a stretch of live tasks created in order, the others
    /// decided (`done`); 1 puts them next to each other.
    pub due_among: u64,
    /// Write each task's trajectory too (4 events per task).
    pub events: bool,
    /// Leave the store as the release before the last migration left it (see [`undo_last_migration`]),
    /// so that the next start upgrades it.
    pub before_last_migration: bool,
}

impl Plan {
    /// The rows from which the due tasks are taken, one in [`Plan::due_among`].
    fn due_stretch(&self) -> u64 {
        self.due.saturating_mul(self.due_among.max(1))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    pub tasks: u64,
    pub events: u64,
    pub seconds: f64,
}

/// Agents and the rules that route to them, as the built-in routing would.
const AGENTS: [(&str, Option<&str>, bool); 6] = [
    ("coder", Some("code-tasks"), true),
    ("helpdesk", Some("ops-tasks"), true),
    ("researcher", Some("research-tasks"), false),
    ("main", Some("writing-tasks"), false),
    ("main", None, false),
    ("overwatch", Some("audit-tasks"), false),
];

/// A small deterministic generator, so that two seeds of the same plan are the same archive.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Row {
    kind: TaskKind,
    state: TaskState,
    created: i64,
    completed: Option<i64>,
    expires: i64,
    agent: usize,
    error_code: Option<&'static str>,
}

/// The schema version [`undo_last_migration`] leaves.
pub const BEFORE_LAST_MIGRATION: i64 = 10;

/// Undo migration 11 of the daemon's SQLite store (a task's events listed in its row, the index of
/// events by task dropped): the next start runs it, rewriting every task that has events, which is
/// what a slow upgrade is (the real-systemd test's start timeout, the upgrade's time). A new
/// migration must move this along; the test below fails until it does.
fn undo_last_migration(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != BEFORE_LAST_MIGRATION + 1 {
        bail!(
            "the store has schema version {version}; `--before-last-migration` undoes version {} only",
            BEFORE_LAST_MIGRATION + 1
        );
    }
    tx.execute_batch(
        "ALTER TABLE tasks DROP COLUMN event_seqs; \
         CREATE INDEX events_task ON events(task_id, seq);",
    )?;
    tx.pragma_update(None, "user_version", BEFORE_LAST_MIGRATION)?;
    Ok(())
}

pub fn seed(db: &Path, plan: Plan) -> Result<Seeded> {
    if plan.in_window.saturating_add(plan.due_stretch()) > plan.tasks {
        bail!(
            "the window and the stretch of due tasks ({} + {} × {}) exceed the total {}",
            plan.in_window,
            plan.due,
            plan.due_among.max(1),
            plan.tasks
        );
    }
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let store = Store::open(db).map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))?;
    store.close();
    drop(store);

    let started = Instant::now();
    let mut conn = Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    // Only this bulk load runs unsynchronised; one fsync at the end makes it durable.
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    let now = now_ms();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let tx = conn.transaction()?;
    let mut events = 0u64;
    {
        let mut task_stmt = tx.prepare(
            "INSERT INTO tasks (id, kind, state, goal, workspace_dir, required_caps, routing, agent, result, \
             rejection, error, error_code, submitted_by, harness, would_require_approval, created_at, \
             assigned_at, started_at, completed_at, expires_at, lease_until, attempts, specialist_pid, event_seqs) \
             VALUES (?1, ?2, ?3, ?4, NULL, '[]', ?5, ?6, ?7, NULL, ?8, ?9, 'bench', 0, ?10, ?11, ?12, ?13, ?14, ?15, NULL, 1, NULL, ?16)",
        )?;
        let mut event_stmt = tx.prepare(
            "INSERT INTO events (seq, task_id, at, actor, action, from_state, to_state, details) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
        )?;
        // A task's row lists its events' numbers (as the daemon's writer does, it numbers them).
        let mut next_seq: i64 = tx
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0)
            + 1;
        for i in 0..plan.tasks {
            let row = plan_row(i, &plan, now, &mut rng);
            let (agent, rule, approval) = AGENTS[row.agent];
            let id = ulid::Ulid::from_parts(
                row.created.max(0) as u64,
                u128::from(rng.next()) << 16 | u128::from(i as u16),
            )
            .to_string();
            let assigned = row.created + 2;
            let started = row.created + 5;
            let routing = serde_json::to_string(&Routing {
                matched_rule_id: rule.map(str::to_string),
                assigned_agent_id: agent.to_string(),
                capability_matches: Vec::new(),
                fallback_used: rule.is_none(),
                decided_at: rfc3339(assigned),
            })?;
            let result = serde_json::to_string(&TaskResult {
                text: Some(format!("archived result of task {i}")),
                text_path: None,
                artefacts: Vec::new(),
                specialist_session_id: Some(format!("session-{i}")),
            })?;
            let error = row.error_code.map(|code| {
                serde_json::json!({"code": code, "message": "seeded failure", "details": null})
                    .to_string()
            });
            let would = row.kind == TaskKind::Shadow && approval;
            let seqs = if plan.events {
                let s = next_seq;
                format!("[{},{},{},{}]", s, s + 1, s + 2, s + 3)
            } else {
                "[]".to_string()
            };
            task_stmt.execute(params![
                id,
                row.kind.as_str(),
                row.state.as_str(),
                format!("seeded task {i}: please review the quarterly report"),
                routing,
                agent,
                result,
                error,
                row.error_code,
                would as i64,
                row.created,
                assigned,
                started,
                row.completed,
                row.expires,
                seqs,
            ])?;
            if plan.events {
                let end = row.completed.unwrap_or(started + 1);
                let last_action = match row.state {
                    TaskState::Failed => "fail",
                    TaskState::Cancelled => "cancel",
                    _ => "complete",
                };
                let chain: [(i64, &str, &str, Option<&str>, &str); 4] = [
                    (row.created, "bench", "submit", None, "queued"),
                    (assigned, "dispatcher", "route", Some("queued"), "assigned"),
                    (
                        started,
                        "dispatcher",
                        "start",
                        Some("assigned"),
                        "in_progress",
                    ),
                    (
                        end,
                        "dispatcher",
                        last_action,
                        Some("in_progress"),
                        row.state.as_str(),
                    ),
                ];
                for (at, actor, action, from, to) in chain {
                    event_stmt.execute(params![next_seq, id, at, actor, action, from, to])?;
                    next_seq += 1;
                    events += 1;
                }
            }
        }
    }
    // The daemon keeps counts by kind and state beside the rows; rows written here bypass it, so
    // count them afresh.
    tx.execute_batch(
        "DELETE FROM task_counts; \
         INSERT INTO task_counts (kind, state, n) SELECT kind, state, count(*) FROM tasks GROUP BY kind, state;",
    )?;
    if plan.before_last_migration {
        undo_last_migration(&tx)?;
    }
    tx.commit()?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("ANALYZE")?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    drop(conn);
    std::fs::File::open(db)?.sync_all()?;
    Ok(Seeded {
        tasks: plan.tasks,
        events,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Row `i` of the archive: the first `in_window` are recent shadow tasks, the next `due` are live
/// tasks awaiting approval that expire at `due_at_ms`, the rest an older archive of finished shadow
/// and live tasks, all inside their kinds' default retention so that a sweep deletes none of them.
fn plan_row(i: u64, plan: &Plan, now: i64, rng: &mut Rng) -> Row {
    let agent = rng.below(AGENTS.len() as u64) as usize;
    if i < plan.in_window {
        // Spread over the last 23 h so the window still holds them a while after seeding.
        let created = now - 23 * HOUR + (i as i64 * 23 * HOUR) / plan.in_window.max(1) as i64;
        let roll = rng.below(1000);
        let (state, error_code) = match roll {
            0..=9 => (TaskState::Failed, Some("specialist_timeout")),
            10..=14 => (TaskState::Failed, Some("specialist_aborted")),
            15..=24 => (TaskState::Cancelled, None),
            _ => (TaskState::Done, None),
        };
        return Row {
            kind: TaskKind::Shadow,
            state,
            created,
            completed: Some(created + 1_000 + rng.below(120_000) as i64),
            expires: created + 7 * DAY,
            agent,
            error_code,
        };
    }
    let stretch = plan.due_stretch();
    if i < plan.in_window + stretch {
        // Spread over an hour in the order they go in, as a daemon creates them: row order, the
        // order of their index entries and the order in which they fall due agree. One in
        // `due_among` is still waiting for its approval; the others were decided.
        let nth = i - plan.in_window;
        let created = now - 8 * DAY + (nth as i64 * HOUR) / stretch.max(1) as i64;
        let waiting = nth.is_multiple_of(plan.due_among.max(1));
        return Row {
            kind: TaskKind::Live,
            state: if waiting {
                TaskState::AwaitingApproval
            } else {
                TaskState::Done
            },
            created,
            completed: (!waiting).then(|| created + 1_000 + rng.below(600_000) as i64),
            expires: if waiting {
                plan.due_at_ms
            } else {
                created + 7 * DAY
            },
            agent: rng.below(2) as usize,
            error_code: None,
        };
    }
    if i & 1 == 0 {
        // Shadow, 1 to 6 days old: older than the window, younger than the 7-day retention.
        let created = now - DAY - rng.below(5 * DAY as u64) as i64;
        Row {
            kind: TaskKind::Shadow,
            state: TaskState::Done,
            created,
            completed: Some(created + 1_000 + rng.below(60_000) as i64),
            expires: created + 7 * DAY,
            agent,
            error_code: None,
        }
    } else {
        // Live, 1 to 80 days old: inside the 90-day retention.
        let created = now - DAY - rng.below(79 * DAY as u64) as i64;
        Row {
            kind: TaskKind::Live,
            state: TaskState::Done,
            created,
            completed: Some(created + 1_000 + rng.below(600_000) as i64),
            expires: created + 7 * DAY,
            agent,
            error_code: None,
        }
    }
}

/// Index the goals of a seeded store for the text filter, as a daemon that has run for a while
/// would have done in its idle moments; answers how many goals and how long it took. Without it a
/// daemon started on the seeded store spends its first idle moments indexing the whole archive,
/// which the figures measured then would include.
pub fn index_goals(db: &Path) -> Result<(u64, f64)> {
    let t = Instant::now();
    let mut conn = Connection::open(db)?;
    let indexed = orchestrator::store::sqlite::goal_index::catch_up(&mut conn)
        .map_err(|e| anyhow::anyhow!("cannot index the goals: {e}"))?;
    Ok((indexed, t.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The due tasks are the stretch after the window, created in the order they go in, and one in
    /// `due_among` of it waits for approval until `due_at_ms`; the rest of the stretch was decided.
    #[test]
    fn due_tasks_are_created_in_order_one_in_due_among_waiting() {
        let now = 1_800_000_000_000;
        for among in [1, 4] {
            let plan = Plan {
                tasks: 200,
                in_window: 20,
                due: 10,
                due_at_ms: now + 60_000,
                due_among: among,
                events: false,
                before_last_migration: false,
            };
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let rows: Vec<Row> = (0..plan.tasks)
                .map(|i| plan_row(i, &plan, now, &mut rng))
                .collect();
            let stretch = &rows[20..20 + 10 * among as usize];
            assert!(stretch.windows(2).all(|w| w[0].created < w[1].created));
            for (n, r) in stretch.iter().enumerate() {
                assert_eq!(r.kind, TaskKind::Live);
                if (n as u64).is_multiple_of(among) {
                    assert_eq!(r.state, TaskState::AwaitingApproval);
                    assert_eq!(r.expires, plan.due_at_ms);
                    assert_eq!(r.completed, None);
                } else {
                    assert_eq!(r.state, TaskState::Done);
                    assert!(r.completed.is_some());
                }
            }
            let waiting = rows
                .iter()
                .filter(|r| r.state == TaskState::AwaitingApproval)
                .count();
            assert_eq!(waiting, 10);
        }
    }

    /// A store seeded as before the last migration is upgraded by the daemon's next open: every
    /// task's row lists its events again, in order, and the store is at the daemon's version.
    #[test]
    fn a_store_seeded_before_the_last_migration_is_upgraded_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("orchestrator.db");
        let plan = Plan {
            tasks: 300,
            in_window: 20,
            due: 10,
            due_at_ms: now_ms() + 60_000,
            due_among: 1,
            events: true,
            before_last_migration: true,
        };
        let seeded = seed(&db, plan).unwrap();
        let conn = Connection::open(&db).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, BEFORE_LAST_MIGRATION);
        drop(conn);

        let store = Store::open(&db).unwrap();
        store.close();
        drop(store);
        let conn = Connection::open(&db).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, BEFORE_LAST_MIGRATION + 1);
        let listed: i64 = conn
            .query_row(
                "SELECT count(*) FROM tasks, json_each(tasks.event_seqs)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(listed as u64, seeded.events);
        let out_of_place: i64 = conn
            .query_row(
                "SELECT count(*) FROM tasks, json_each(tasks.event_seqs) j \
                 WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = j.value AND e.task_id = tasks.id)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(out_of_place, 0);
    }
}
