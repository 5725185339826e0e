//! The PostgreSQL backend: a database that several daemons can share.
//!
//! Every write is one transaction on a pooled connection (`deadpool-postgres` over
//! `tokio-postgres`), with `synchronous_commit = on`: a reply leaves only after COMMIT returned, so
//! an acknowledged write is durable. Transitions are compare-and-sets (`UPDATE … WHERE id = $1 AND
//! state = $2`) written with their trajectory event; a plan's steps share its transaction, and a
//! batch of plans or transitions gives each item a savepoint of its own.
//!
//! While the database cannot be reached, every operation fails with
//! [`StoreError::Unavailable`] (`store_unavailable` on the wire) and the pool opens new connections
//! once it is back; nothing here exits the daemon.
//!
//! Counts: this daemon moves its in-memory counts with its own commits, and writes the same changes
//! as rows of `task_count_deltas` in the committing transaction. A refresher folds the deltas into
//! `task_counts` and reloads the totals every [`COUNTS_REFRESH`], so the counts also follow what
//! other daemons on the same database commit. Trajectory events are published for this daemon's own
//! commits.
//!
//! Several daemons may share one database, each a node with its own id (see the `cluster` module);
//! `exclusive` refuses a second daemon with the same id, and `cluster` holds the shared-store
//! operations: heartbeats, the leader's lease, claims. A lease names the node that holds it, and
//! what a node does to leases at start (voiding them, reaping their specialists) touches its own.
//!
//! TLS is not supported: connect over a Unix socket or loopback.

mod agents;
#[macro_use]
mod backend;
mod cluster;
mod exclusive;
mod listen;
mod outbox;
mod queries;
mod rows;
pub(crate) mod schema;
#[doc(hidden)]
pub mod throwaway;
mod tx;

pub use schema::SCHEMA_VERSION;

use crate::store::{Counts, Health, OutboxRules, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use orchestrator_proto::task::{TaskKind, TaskState, TrajectoryEvent};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock as StdRwLock, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, RwLock};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// How often the counts are reloaded from the database (see the module documentation).
pub const COUNTS_REFRESH: Duration = Duration::from_secs(2);
/// How long a request waits for a connection before it is answered `store_unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the database.
#[derive(Clone)]
pub struct Settings {
    /// A `postgres://` URL or `key=value` settings.
    pub url: String,
    pub pool_size: usize,
    /// This daemon's node id (see the `cluster` module).
    pub node: String,
}

/// The PostgreSQL store; see the module documentation.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    counts: Mutex<Counts>,
    /// Held (shared) by a write from its COMMIT until its counts are applied, and (exclusive) by the
    /// refresher while it reads the totals, so that a reload never misses or doubles a commit.
    commit_gate: RwLock<()>,
    events: broadcast::Sender<TrajectoryEvent>,
    /// This node's events and, through `listen`, every other node's.
    all_events: broadcast::Sender<TrajectoryEvent>,
    /// How to connect, for the event listener's own connection.
    cfg: tokio_postgres::Config,
    closed: AtomicBool,
    /// Set once the store is closed, for `Backend::writer_ended`.
    closed_tx: tokio::sync::watch::Sender<bool>,
    /// Disk-full episodes and integrity-check outcomes (see `Backend::health`).
    health: Mutex<Health>,
    /// Failed operations, for the metrics (see `Backend::errors`).
    errors: AtomicU64,
    refresher: OnceLock<()>,
    /// Released when the store closes (see `exclusive`).
    exclusive: Mutex<Option<exclusive::Exclusive>>,
    /// The sinks' filters every write transaction writes outbox rows by (see `store::outbox`).
    outbox_rules: StdRwLock<Option<Arc<OutboxRules>>>,
    /// Raised after a commit that wrote outbox rows, to wake the delivery workers.
    outbox_written: tokio::sync::watch::Sender<u64>,
    /// This daemon's node id: the holder its leases name.
    node: String,
    /// This node's recent events, for the listener's replay (see `listen`).
    own: Mutex<listen::Own>,
}

/// A failure of the database or the connection, as a store error: the ones that mean "cannot reach
/// it now" become [`StoreError::Unavailable`].
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable("the connection to PostgreSQL was lost".into());
    }
    match e.as_db_error() {
        Some(db) => {
            let code = db.code();
            let unreachable = code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW;
            let msg = format!("{} ({})", db.message(), code.code());
            if unreachable {
                StoreError::Unavailable(msg)
            } else if *code == SqlState::DISK_FULL {
                StoreError::Full(msg)
            } else {
                StoreError::Sql(msg)
            }
        }
        // No answer from the server: an I/O error, a timeout, a connection that could not be made.
        None => StoreError::Unavailable(e.to_string()),
    }
}

pub(crate) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) => {
            StoreError::Unavailable("no connection to PostgreSQL in time".into())
        }
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn pg_config(settings: &Settings) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| StoreError::Sql(format!("invalid store URL: {e}")))?;
    // A reply leaves after the commit is durable, whatever the server's default.
    let options = match cfg.get_options() {
        Some(o) => format!("{o} -c synchronous_commit=on"),
        None => "-c synchronous_commit=on".to_string(),
    };
    cfg.options(&options);
    if cfg.get_application_name().is_none() {
        cfg.application_name("orchestratord");
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(cfg)
}

impl PostgresBackend {
    /// Connect, migrate and load the counts, from inside a tokio runtime.
    pub async fn open(settings: &Settings) -> Result<PostgresBackend, StoreError> {
        let cfg = pg_config(settings)?;
        let lock = cfg.clone();
        let node = settings.node.clone();
        let exclusive = tokio::task::spawn_blocking(move || exclusive::take(&lock, &node))
            .await
            .map_err(|e| StoreError::Sql(format!("lock task failed: {e}")))??;
        let counts = init(&cfg).await?;
        Self::with_pool(cfg, settings, counts, exclusive)
    }

    /// [`PostgresBackend::open`] from outside any runtime (the daemon opens its store before it
    /// starts one). The pool's connections are made later, in the runtime that uses them.
    pub fn open_blocking(settings: &Settings) -> Result<PostgresBackend, StoreError> {
        let cfg = pg_config(settings)?;
        let exclusive = exclusive::take(&cfg, &settings.node)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Sql(format!("cannot start a runtime: {e}")))?;
        let counts = rt.block_on(init(&cfg))?;
        drop(rt);
        Self::with_pool(cfg, settings, counts, exclusive)
    }

    fn with_pool(
        cfg: tokio_postgres::Config,
        settings: &Settings,
        counts: Counts,
        exclusive: exclusive::Exclusive,
    ) -> Result<PostgresBackend, StoreError> {
        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Sql(format!("cannot build the connection pool: {e}")))?;
        let (events, _) = broadcast::channel(4096);
        let (all_events, _) = broadcast::channel(4096);
        Ok(PostgresBackend {
            inner: Arc::new(Inner {
                pool,
                counts: Mutex::new(counts),
                commit_gate: RwLock::new(()),
                events,
                all_events,
                cfg,
                closed: AtomicBool::new(false),
                closed_tx: tokio::sync::watch::Sender::new(false),
                errors: AtomicU64::new(0),
                health: Mutex::new(Health::default()),
                refresher: OnceLock::new(),
                exclusive: Mutex::new(Some(exclusive)),
                outbox_rules: StdRwLock::new(None),
                outbox_written: tokio::sync::watch::Sender::new(0),
                node: settings.node.clone(),
                own: Mutex::new(listen::Own::default()),
            }),
        })
    }

    /// A pooled connection; starts the counts refresher on first use, inside the serving runtime.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.inner.refresher.get_or_init(|| {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(refresh_counts(weak.clone()));
            tokio::spawn(listen::run(self.inner.cfg.clone(), weak));
        });
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// Apply a committed write's effects: counts, then its events in order, then the outbox's
    /// wake-up.
    fn publish(&self, effects: tx::Effects) {
        if let Ok(mut c) = self.inner.counts.lock() {
            for (kind, from, to) in &effects.deltas {
                c.apply(*kind, *from, *to);
            }
        }
        if !effects.events.is_empty() {
            match self.inner.own.lock() {
                Ok(mut own) => own.note(&effects.events),
                Err(poisoned) => poisoned.into_inner().note(&effects.events),
            }
        }
        for ev in effects.events {
            let _ = self.inner.all_events.send(ev.clone());
            let _ = self.inner.events.send(ev);
        }
        if effects.outbox_rows > 0 {
            self.inner
                .outbox_written
                .send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The outbox rules a transaction begun now writes by.
    fn outbox_rules(&self) -> Option<Arc<OutboxRules>> {
        self.inner.outbox_rules.read().ok().and_then(|r| r.clone())
    }

    fn shut(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.closed_tx.send_replace(true);
        self.inner.pool.close();
        if let Ok(mut lock) = self.inner.exclusive.lock() {
            lock.take();
        }
    }
}

/// A pool of one connection, for work done once (migrations, the store copy).
pub(crate) fn single_pool(settings: &Settings) -> Result<Pool, StoreError> {
    one_connection(&pg_config(settings)?)
}

fn one_connection(cfg: &tokio_postgres::Config) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(cfg.clone(), NoTls, ManagerConfig::default());
    Pool::builder(manager)
        .max_size(1)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Sql(format!("cannot build the connection pool: {e}")))
}

/// Connect once, migrate, fold the count deltas and load the counts, on a pool of its own that
/// ends with the call (it may run in a runtime of its own).
async fn init(cfg: &tokio_postgres::Config) -> Result<Counts, StoreError> {
    let pool = one_connection(cfg)?;
    let mut client = pool.get().await.map_err(pool_error)?;
    schema::migrate(&mut client).await?;
    let counts = queries::fold_and_load_counts(&client).await;
    drop(client);
    pool.close();
    counts
}

/// Fold the count deltas and reload the totals, every [`COUNTS_REFRESH`], until the store is gone.
async fn refresh_counts(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(COUNTS_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        // Waiting for a connection happens outside the gate, so writes are held up only while the
        // totals are read.
        let client = match inner.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %pool_error(e), "counts refresh skipped");
                continue;
            }
        };
        let _gate = inner.commit_gate.write().await;
        match queries::fold_and_load_counts(&client).await {
            Ok(counts) => {
                if let Ok(mut c) = inner.counts.lock() {
                    *c = counts;
                }
            }
            Err(e) => tracing::debug!(error = %e, "counts refresh failed"),
        }
    }
}

fn parse_kind_state(kind: &str, state: &str) -> Option<(TaskKind, TaskState)> {
    Some((kind.parse().ok()?, state.parse().ok()?))
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod contract_tests;
