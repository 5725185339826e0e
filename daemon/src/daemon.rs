//! The running daemon's shared parts: store, config, mode, dispatcher handle, counters, and each
//! subsystem's own state (reload, sweeper, gates), which `orchctl status` asks for its part. One [`Daemon`] is shared (in an `Arc`) by the server, the dispatcher,
//! the sweeper and the signal handlers.

use crate::access::AccessPolicy;
use crate::clock::Clock;
use crate::config::Config;
use crate::gate::GateNotes;
use crate::lifecycle::ReloadState;
use crate::metrics::{self, Metrics};
use crate::sessions::Sessions;
use crate::store::Store;
use crate::sweeper::SweeperState;
use orchestrator_proto::task::Task;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The longest a scrape right after a start waits for the approval waits to be read from the
/// store; past it the scrape counts without them.
const AWAITING_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the dispatcher is told. The handle lives here, with the daemon that
/// holds it, so that the daemon does not depend on the dispatcher.
#[derive(Debug)]
pub enum DispatchMsg {
    /// A task was stored in `queued` (or found `queued`/`assigned` at start).
    Queued(Box<Task>),
    /// The operator cancelled a task; stop its specialist if one runs.
    Cancelled(String),
    /// The watchdog's liveness probe: answered by the dispatcher's loop.
    Ping(oneshot::Sender<()>),
    /// On a shared store: claim what this node's agents can run (see the `cluster` module).
    Poll,
}

/// The sending side, held by the daemon.
#[derive(Clone, Debug)]
pub struct DispatchHandle {
    tx: mpsc::UnboundedSender<DispatchMsg>,
    /// A store error on the dispatcher's way left tasks `queued` or `assigned` that nothing holds
    /// any more; the next sweep reads them again (see `dispatch::rescan`).
    lost: Arc<AtomicBool>,
}

impl DispatchHandle {
    pub fn channel() -> (DispatchHandle, mpsc::UnboundedReceiver<DispatchMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lost = Arc::default();
        (DispatchHandle { tx, lost }, rx)
    }

    /// A store error left tasks behind on the dispatcher's way: the next sweep picks them up.
    pub fn lost_some(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Whether tasks were left behind since the last call.
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }

    pub fn queued(&self, task: Task) {
        // The receiver only goes away at shutdown; a queued task is then picked up at the next start.
        let _ = self.tx.send(DispatchMsg::Queued(Box::new(task)));
    }

    pub fn cancelled(&self, id: &str) {
        let _ = self.tx.send(DispatchMsg::Cancelled(id.to_string()));
    }

    pub fn poll(&self) {
        let _ = self.tx.send(DispatchMsg::Poll);
    }

    /// Whether the dispatcher's loop answers; `false` if it is gone.
    pub async fn ping(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.tx.send(DispatchMsg::Ping(tx)).is_ok() && rx.await.is_ok()
    }
}

/// Where the daemon keeps things, after flags, config and defaults were weighed.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: Option<PathBuf>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Flags given on the command line win over the config file on reload too.
    pub socket_from_flag: bool,
    pub state_dir_from_flag: bool,
}

impl Paths {
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("orchestrator.db")
    }

    pub fn token_file(&self) -> PathBuf {
        self.state_dir.join("token")
    }

    /// Per-task files (long results, artefacts) live under `<state>/tasks/<id>/`.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("tasks").join(id)
    }
}

// Defined with the mode-flip decision; re-exported so `crate::daemon::ModeState` keeps its path.
pub use crate::lifecycle::ModeState;

pub struct Daemon {
    pub store: Store,
    pub paths: Paths,
    pub metrics: Metrics,
    pub dispatch: DispatchHandle,
    pub shutdown: CancellationToken,
    /// What every subsystem reads the time from (see [`crate::clock`]).
    pub clock: Clock,
    /// Real time, for the uptime.
    pub started: Instant,
    /// Console login codes and sessions, shared by the socket (which mints) and the console.
    pub sessions: Sessions,
    /// This daemon as a node of its store (see [`crate::node`]).
    pub node: crate::node::NodeState,
    config: RwLock<Installed>,
    access: RwLock<Arc<AccessPolicy>>,
    mode: RwLock<ModeState>,
    /// Each subsystem's own state, which `status` asks for its part.
    pub reload: ReloadState,
    pub sweeper: SweeperState,
    pub gate: GateNotes,
    /// The shadow summary's tallies of settled time (see [`crate::gate::tallies`]).
    pub shadow_tallies: Arc<crate::gate::tallies::ShadowTallies>,
    /// Agents that start nothing for now.
    pub pauses: crate::agents::pauses::Pauses,
    /// What agents spent today and this month.
    pub spending: crate::agents::spending::Spending,
    /// The address the HTTP API is bound to, once it runs (the configured port may be 0).
    pub http_listen: OnceLock<String>,
    /// Why HTTP is off although the config has it on (its default port was taken).
    pub http_problem: OnceLock<String>,
}

/// A config as installed, with what is derived from it once.
struct Installed {
    config: Arc<Config>,
    fingerprint: Arc<str>,
}

impl Installed {
    fn new(config: Config) -> Installed {
        Installed {
            fingerprint: config.routing_fingerprint().into(),
            config: Arc::new(config),
        }
    }
}

impl Daemon {
    pub fn new(
        store: Store,
        paths: Paths,
        config: Config,
        mode: ModeState,
        dispatch: DispatchHandle,
        clock: Clock,
    ) -> Daemon {
        let access = AccessPolicy::from_config(&config.socket);
        let node = crate::node::NodeState::new(
            crate::node::node_id(&config, &paths.state_dir),
            store.cluster().is_some(),
        );
        Daemon {
            node,
            store,
            paths,
            metrics: Metrics::default(),
            dispatch,
            shutdown: CancellationToken::new(),
            clock: clock.clone(),
            started: Instant::now(),
            sessions: Sessions::default(),
            config: RwLock::new(Installed::new(config)),
            access: RwLock::new(Arc::new(access)),
            mode: RwLock::new(mode),
            reload: ReloadState::new(clock.now_ms()),
            sweeper: SweeperState::default(),
            gate: GateNotes::default(),
            shadow_tallies: Default::default(),
            pauses: Default::default(),
            spending: Default::default(),
            http_listen: OnceLock::new(),
            http_problem: OnceLock::new(),
        }
    }

    /// The config in force. Cheap: a clone of an `Arc`.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => Arc::clone(&c.config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().config),
        }
    }

    /// The config in force and its [`Config::routing_fingerprint`], worked out once when the config
    /// was installed (`status` names it on every call).
    pub fn config_and_fingerprint(&self) -> (Arc<Config>, Arc<str>) {
        let pair = |c: &Installed| (Arc::clone(&c.config), Arc::clone(&c.fingerprint));
        match self.config.read() {
            Ok(c) => pair(&c),
            Err(poisoned) => pair(&poisoned.into_inner()),
        }
    }

    pub fn access(&self) -> Arc<AccessPolicy> {
        match self.access.read() {
            Ok(a) => Arc::clone(&a),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Look up the group names of the access policy on a blocking thread, so that no request
    /// waits for them (`AccessPolicy::look_up_groups`). Without a runtime, the first peer that
    /// needs them looks them up.
    pub fn look_up_access_groups(&self) {
        let access = self.access();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || {
                access.look_up_groups();
            });
        }
    }

    /// Swap in a validated config (and the access policy derived from it) in one step.
    pub fn install_config(&self, config: Config) {
        let access = AccessPolicy::from_config(&config.socket);
        let installed = Installed::new(config);
        match self.config.write() {
            Ok(mut c) => *c = installed,
            Err(poisoned) => *poisoned.into_inner() = installed,
        }
        match self.access.write() {
            Ok(mut a) => *a = Arc::new(access),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(access),
        }
        self.look_up_access_groups();
        self.reload.config_installed(self.clock.now_ms());
    }

    pub fn mode(&self) -> ModeState {
        match self.mode.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_mode(&self, state: ModeState) {
        match self.mode.write() {
            Ok(mut m) => *m = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }

    /// `orchctl metrics` and `GET /metrics`: the counters with a snapshot of what only the daemon
    /// knows. Right after a start it first waits for the approval waits to be read from the store
    /// (at most [`AWAITING_READ_WAIT`]).
    pub async fn metrics_text(&self) -> String {
        self.metrics.awaiting_read(AWAITING_READ_WAIT).await;
        use orchestrator_proto::task::{TaskKind, TaskState};
        let counts = self.store.counts();
        let tasks = TaskKind::ALL
            .into_iter()
            .flat_map(|k| TaskState::ALL.into_iter().map(move |s| (k, s)))
            .map(|(k, s)| (k, s, counts.get(k, s)))
            .collect();
        let health = self.store.health();
        let load = self.store.writes();
        let snapshot = metrics::Snapshot {
            tasks,
            mode: self.mode().effective,
            store_errors: self.store.errors(),
            store_writes: load.writes,
            store_commits: load.commits,
            version: env!("CARGO_PKG_VERSION").to_string(),
            now_ms: self.clock.now_ms(),
            process: metrics::ProcessStats::read_self(),
            storage_full: health.full_since_ms.is_some(),
            store_damaged: health.damaged.is_some(),
        };
        metrics::render(&self.metrics, &snapshot)
    }

    /// Hand tasks that went back to `queued` (re-queued after a lapsed lease) to the dispatcher.
    pub async fn redispatch(&self, ids: &[String]) {
        for id in ids {
            match self.store.get_task(id).await {
                Ok(Some(task)) => self.dispatch.queued(task),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(task = %id, error = %e, "cannot re-dispatch; it is picked up after the next sweep");
                    self.dispatch.lost_some();
                }
            }
        }
    }
}

#[cfg(test)]
impl Daemon {
    /// For unit tests: a daemon around `store` whose state directory is `dir` (the socket in it),
    /// on the built-in config, in effective mode `effective` since 0, with time from `clock`.
    /// Nothing is dispatched: the dispatcher's end of the channel is dropped.
    pub fn for_test(
        store: Store,
        dir: &std::path::Path,
        effective: orchestrator_proto::task::TaskKind,
        clock: Clock,
    ) -> Daemon {
        let paths = Paths {
            config: None,
            socket: dir.join("sock"),
            state_dir: dir.to_path_buf(),
            socket_from_flag: false,
            state_dir_from_flag: false,
        };
        let (dispatch, _) = DispatchHandle::channel();
        let mode = ModeState {
            effective,
            since_ms: 0,
            note: None,
        };
        Daemon::new(store, paths, Config::builtin(), mode, dispatch, clock)
    }
}
