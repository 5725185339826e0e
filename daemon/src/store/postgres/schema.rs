//! Schema and migrations. The table `schema_version` records the version; migrations run in one
//! transaction under an advisory lock, so that several daemons starting at once migrate once. A
//! database written by a newer release is refused rather than guessed at.
//!
//! The tables mirror the SQLite schema (`store/sqlite/schema.rs`) column for column, so that a
//! SQLite store can be copied over as it is; `pos` gives each task a position for the retention walk
//! (SQLite's rowid).

use super::pg_error;
use crate::store::StoreError;
use deadpool_postgres::Client;

/// Migrations in order; index `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: tasks, their trajectory, gate runs, overrides, daemon metadata and task counts. Counts are
    // kept as insert-only deltas that are folded into `task_counts` from time to time, so that
    // concurrent transactions never wait on one hot counter row.
    r#"
    CREATE TABLE tasks (
        pos BIGSERIAL NOT NULL UNIQUE,
        id TEXT COLLATE "C" PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        goal TEXT NOT NULL,
        workspace_dir TEXT,
        required_caps TEXT NOT NULL,
        routing TEXT,
        agent TEXT,
        result TEXT,
        rejection TEXT,
        error TEXT,
        error_code TEXT,
        submitted_by TEXT NOT NULL,
        harness BOOLEAN NOT NULL DEFAULT false,
        would_require_approval BOOLEAN NOT NULL DEFAULT false,
        created_at BIGINT NOT NULL,
        assigned_at BIGINT,
        started_at BIGINT,
        completed_at BIGINT,
        expires_at BIGINT NOT NULL,
        lease_until BIGINT,
        attempts BIGINT NOT NULL DEFAULT 0,
        specialist_pid BIGINT
    );
    CREATE INDEX tasks_state_expires ON tasks (state, expires_at);
    CREATE INDEX tasks_kind_created_id ON tasks (kind, created_at, id);
    CREATE INDEX tasks_terminal_completed ON tasks (kind, completed_at, pos)
        WHERE completed_at IS NOT NULL;
    CREATE TABLE events (
        seq BIGSERIAL PRIMARY KEY,
        task_id TEXT COLLATE "C" NOT NULL,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        details TEXT
    );
    CREATE INDEX events_task ON events (task_id, seq);
    CREATE TABLE gate_runs (
        id BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        label TEXT,
        fingerprint TEXT NOT NULL,
        passed BIGINT NOT NULL,
        total BIGINT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE overrides (
        id BIGSERIAL PRIMARY KEY,
        mode TEXT NOT NULL,
        reason TEXT NOT NULL,
        by_user TEXT NOT NULL,
        uid BIGINT NOT NULL,
        at BIGINT NOT NULL,
        consumed_at BIGINT
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE task_counts (
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (kind, state)
    );
    CREATE TABLE task_count_deltas (
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        n BIGINT NOT NULL
    );
    "#,
    // 2: a trigram index for the goal-text filter of listings (`lower(goal) LIKE`). pg_trgm ships
    // with PostgreSQL and is a trusted extension; where it cannot be created (no contrib files, no
    // CREATE right on the database) the filter works as before, by a scan.
    r#"
    DO $$
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX tasks_goal_trgm ON tasks USING gin (lower(goal) gin_trgm_ops);
    EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
        RAISE NOTICE 'pg_trgm is not available (%): the goal-text filter scans', SQLERRM;
    END $$;
    "#,
    // 3: the notification outbox: one row per event and sink, written in the transaction of the
    // transition that causes it (store/outbox.rs). A delivered row is deleted; a dead one stays
    // until `orchctl notify retry`. Each sink's last delivery error outlives the row it was about.
    r#"
    CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        sink TEXT NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        task_id TEXT COLLATE "C",
        payload TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        pending_since BIGINT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        last_error TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        dead_at BIGINT
    );
    CREATE INDEX outbox_sink ON outbox (sink, state, seq);
    CREATE TABLE outbox_sinks (
        sink TEXT PRIMARY KEY,
        last_error TEXT
    );
    "#,
    // 4: what a task's specialist runs reported they used (JSON `Usage`), for costs and budgets.
    r#"
    ALTER TABLE tasks ADD COLUMN usage TEXT;
    "#,
    // 5: several daemons on one database. A running task's lease names the node that holds it;
    // every node has a heartbeat row; one row holds the leader's lease on the periodic work.
    // The partial indexes serve the claim: an agent's assigned tasks in order, and its running
    // ones to count against `max_concurrent`.
    r#"
    ALTER TABLE tasks ADD COLUMN node TEXT;
    CREATE INDEX tasks_claimable ON tasks (agent, pos) WHERE state = 'assigned';
    CREATE INDEX tasks_running_agent ON tasks (agent) WHERE state = 'in_progress';
    CREATE INDEX tasks_queued ON tasks (pos) WHERE state = 'queued';
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        version TEXT NOT NULL,
        address TEXT NOT NULL,
        agents TEXT NOT NULL,
        running BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
    );
    CREATE TABLE leader (
        one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        node TEXT,
        until BIGINT NOT NULL
    );
    INSERT INTO leader (one, node, until) VALUES (true, NULL, 0);
    "#,
    // 6: the runs that reported usage, by start (budgets at start, the shadow summary's costs).
    r#"
    CREATE INDEX tasks_usage_started ON tasks (started_at, id) WHERE usage IS NOT NULL;
    "#,
    // 7: a retried task waits out its backoff in `queued`: the time before which it must not be
    // dispatched is stored with it, so that a restart, and every node's look for tasks left
    // queued, keep the wait.
    r#"
    ALTER TABLE tasks ADD COLUMN not_before BIGINT;
    "#,
    // 8: what each run cost, as a column PostgreSQL derives from the usage that holds it, with
    // the index that answers every node's read of the spending at each heartbeat from the index
    // alone (`Cluster::spending`: 15 ms instead of 170–260 ms for 100,000 runs in the month, when
    // each row's JSON was parsed). Generated, so every write of `usage` (by any release, through
    // any path) keeps it right; adding it rewrites the table once (2.6 s for 1,000,000 tasks).
    r#"
    ALTER TABLE tasks ADD COLUMN cost_usd DOUBLE PRECISION
        GENERATED ALWAYS AS ((usage::jsonb ->> 'costUsd')::float8) STORED;
    CREATE INDEX tasks_cost_started ON tasks (started_at) INCLUDE (agent, cost_usd)
        WHERE usage IS NOT NULL;
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Any number will do, as long as it is this one: the key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6f72_6368_6d69_6772; // "orchmigr"

pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL); \
         INSERT INTO schema_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version);",
    )
    .await
    .map_err(pg_error)?;
    let current: i64 = tx
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Sql(format!(
            "the database has schema version {current}, newer than this daemon's {SCHEMA_VERSION}; \
             run a newer orchestratord"
        )));
    }
    let Ok(done) = usize::try_from(current) else {
        return Err(StoreError::Sql(format!(
            "the database has schema version {current}, which no orchestratord writes: \
             it is damaged or belongs to another program"
        )));
    };
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Sql(format!("migration {} failed: {}", i + 1, pg_error(e))))?;
    }
    tx.execute(
        "UPDATE schema_version SET version = $1",
        &[&SCHEMA_VERSION.max(current)],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)
}
