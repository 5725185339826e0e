//! Wiring at start: config, paths, store, mode, socket, then the daemon's tasks; and the orderly
//! shutdown that undoes it.

use crate::background;
use crate::clock::Clock;
use crate::config::{Config, ConfigErrors, StoreBackend};
use crate::daemon::{Daemon, Paths};
use crate::dispatch::{self, DispatchHandle};
use crate::http;
use crate::integrity;
use crate::lifecycle::{self, notify};
use crate::logging;
use crate::metrics::Metrics;
use crate::paths::{default_socket, default_state_dir};
use crate::server;
use crate::service;
use crate::state_lock::StateDirLock;
use crate::store::sqlite::WRITER_TASK;
use crate::store::{Store, StoreError};
use crate::supervisor::{Failure, Supervisor};
use crate::{fault, server::Listener};
use sd_notify::NotifyState;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{0}")]
    Other(String),
    /// A supervised task failed while the daemon ran (see [`crate::supervisor`]).
    #[error("{0}; stopped so that the service manager restarts the daemon")]
    Failed(Failure),
}

impl StartError {
    /// Process exit code: 5 for an invalid config (as `orchctl`), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => 5,
            StartError::Other(_) | StartError::Failed(_) => 1,
        }
    }
}

/// How long the orderly shutdown after a supervised task failed may take before the daemon exits
/// all the same.
const FAILED_SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

fn other(context: &str) -> impl Fn(String) -> StartError + '_ {
    move |e| StartError::Other(format!("{context}: {e}"))
}

/// Everything that can fail before the runtime starts, so that failures are reported plainly.
pub struct Prepared {
    pub config: Config,
    pub paths: Paths,
    pub store: Store,
    pub clock: Clock,
    /// Held until the daemon exits (see [`crate::state_lock`]).
    pub state_lock: StateDirLock,
}

pub fn prepare(opts: &Options) -> Result<Prepared, StartError> {
    fault::load().map_err(StartError::Other)?;
    let config = Config::load_or_builtin(opts.config.as_deref()).map_err(StartError::Config)?;
    // Once the config's patterns are compiled, before the store starts its threads.
    crate::heap::fix_mmap_threshold();
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    let config_path = opts.config.clone().or_else(|| {
        let default = PathBuf::from(crate::config::DEFAULT_CONFIG_PATH);
        default.exists().then_some(default)
    });
    let paths = Paths {
        config: config_path,
        socket: opts
            .socket
            .clone()
            .or_else(|| config.socket_path.clone())
            .unwrap_or_else(default_socket),
        state_dir: opts
            .state_dir
            .clone()
            .or_else(|| config.state_dir.clone())
            .unwrap_or_else(default_state_dir),
        socket_from_flag: opts.socket.is_some(),
        state_dir_from_flag: opts.state_dir.is_some(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&paths.state_dir)
        .map_err(|e| {
            StartError::Other(format!(
                "cannot create state directory {}: {e}",
                paths.state_dir.display()
            ))
        })?;
    // Before the store is opened: a daemon already on this directory keeps it to itself.
    let state_lock = StateDirLock::take(&paths.state_dir).map_err(StartError::Other)?;
    let store = open_store(&config, &paths)?;
    Ok(Prepared {
        config,
        paths,
        store,
        clock: Clock::from_env(),
        state_lock,
    })
}

/// The SQLite store that `opts` and its config name (for `--copy-store-to`).
pub fn sqlite_path(opts: &Options) -> Result<PathBuf, StartError> {
    let config = Config::load_or_builtin(opts.config.as_deref()).map_err(StartError::Config)?;
    let state_dir = opts
        .state_dir
        .clone()
        .or(config.state_dir)
        .unwrap_or_else(default_state_dir);
    Ok(state_dir.join("orchestrator.db"))
}

/// The store `[store]` names: SQLite in the state directory, or a PostgreSQL database.
fn open_store(config: &Config, paths: &Paths) -> Result<Store, StartError> {
    match &config.store.backend {
        StoreBackend::Sqlite => Store::open(&paths.database()).map_err(|e| {
            StartError::Other(format!(
                "cannot open the store {}: {e}",
                paths.database().display()
            ))
        }),
        StoreBackend::Postgres(pg) => {
            let url = pg.url.resolve().map_err(StartError::Other)?;
            let settings = crate::store::postgres::Settings {
                url,
                pool_size: pg.pool_size,
                node: crate::node::node_id(config, &paths.state_dir),
            };
            Store::open_postgres(&settings)
                .map_err(|e| StartError::Other(format!("cannot open the PostgreSQL store: {e}")))
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT. Call from inside a tokio runtime.
pub async fn serve(p: Prepared, listener: Listener) -> Result<(), StartError> {
    let Prepared {
        config,
        mut paths,
        store,
        clock,
        state_lock: _held_until_exit,
    } = p;
    let Listener {
        listener,
        activated,
        path: socket,
    } = listener;
    paths.socket = socket;
    crate::fault::listen_for_signal()
        .map_err(|e| StartError::Other(format!("cannot listen for SIGUSR2 (test hook): {e}")))?;
    // Subscribed before anything can commit, so that every transition is logged and counted.
    let transitions = store.subscribe();
    let mode = lifecycle::startup_mode(&store, &config, clock.now_ms())
        .await
        .map_err(|e| other("cannot decide the mode")(e.to_string()))?;
    // Bound before anything is started, so that a taken port fails the start and leaves nothing
    // half-running.
    let mut http_problem = None;
    let http_listener = match config.http.as_ref() {
        Some(h) => match http::bind(h.listen).await {
            Ok(l) => Some(l),
            // HTTP is on by default: a default port someone else holds turns it off, loudly,
            // instead of keeping the daemon from starting.
            Err(e) if !h.explicit => {
                let why = format!(
                    "HTTP is off: the default address {} cannot be bound ({e}); set [http] listen",
                    h.listen
                );
                tracing::warn!("http: {why}");
                http_problem = Some(why);
                None
            }
            Err(e) => {
                let _ = std::fs::remove_file(&paths.socket);
                return Err(StartError::Other(format!(
                    "cannot listen for HTTP on {}: {e}",
                    h.listen
                )));
            }
        },
        None => None,
    };
    // Before anything can commit, so that every event of this run reaches the outbox.
    let bound = http_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string());
    crate::notify::install_rules(&store, &config, bound.as_deref());
    let (handle, rx) = DispatchHandle::channel();
    let d = Arc::new(Daemon::new(
        store.clone(),
        paths.clone(),
        config,
        mode,
        handle,
        clock,
    ));
    let history = async {
        Ok::<_, StoreError>((
            store.latest_gate_run().await?,
            store.pending_overrides().await?,
        ))
    };
    let (gate, overrides) = history
        .await
        .map_err(|e| other("cannot read gate history")(e.to_string()))?;
    d.gate.set_latest_run(gate);
    d.gate.set_pending_overrides(overrides);
    if let Some(problem) = http_problem {
        let _ = d.http_problem.set(problem);
    }
    let (sup, mut failures) = Supervisor::new(d.shutdown.clone());
    let writer = {
        let store = store.clone();
        sup.watch(WRITER_TASK, async move { store.writer_ended().await })
    };
    let stop_logging = tokio_util::sync::CancellationToken::new();
    let ready = tokio_util::sync::CancellationToken::new();
    let transition_log = sup.spawn(
        "transition-log",
        logging::on_own_thread(
            "transition-log",
            logging::follow_transitions(
                Arc::clone(&d),
                transitions,
                ready.clone(),
                stop_logging.clone(),
            ),
        ),
    );

    // Tasks that were in progress belong to specialists of the previous run: stop any that still
    // run, then reclaim the tasks.
    dispatch::orphans::reap(&d).await;
    // The previous run's leases ended with it, however far ahead they reached. Voiding them and
    // reclaiming are two writes: a crash in between leaves leases void, and the next start
    // reclaims those tasks all the same.
    let reclaim = crate::sweeper::reclaim(
        &d.config(),
        d.clock.now_ms(),
        usize::MAX >> 1,
        "the daemon restarted while the specialist ran",
    );
    let reclaimed = async {
        store.void_leases().await?;
        store.reclaim_lapsed(reclaim).await
    }
    .await
    .map_err(|e| other("cannot reclaim in-progress tasks")(e.to_string()))?;
    Metrics::add(
        &d.metrics.reclaims,
        (reclaimed.failed.len() + reclaimed.requeued.len()) as u64,
    );
    if !reclaimed.failed.is_empty() || !reclaimed.requeued.is_empty() {
        tracing::warn!(
            failed = reclaimed.failed.len(),
            requeued = reclaimed.requeued.len(),
            "reclaimed tasks left in progress by the previous run"
        );
    }

    dispatch::load_agent_state(&d).await;
    // Signal handlers are installed by this call, before anything serves (see `service::signals`).
    let signals = service::signals(Arc::clone(&d));
    // The servers are spawned before the dispatcher, the sweeper and the rest: tasks spawned from
    // here wait in the runtime's shared queue in the order they came, and a client waiting for the
    // first answer should not wait behind those tasks' first rounds. Requests that need those find
    // them through channels that hold what is sent before they run. The HTTP address is noted
    // before the socket serves, so that `status` never misses it.
    let http_server = http_listener.map(|l| {
        let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %bound, "http: serving the API");
        let _ = d.http_listen.set(bound);
        sup.spawn("http-server", http::serve(Arc::clone(&d), l))
    });
    let server = sup.spawn("socket-server", server::serve(Arc::clone(&d), listener));
    let mut tasks = vec![
        sup.spawn("dispatcher", dispatch::run(Arc::clone(&d), rx, sup.clone())),
        sup.spawn("delivery", dispatch::delivery::run(Arc::clone(&d))),
        sup.spawn("signals", signals),
        sup.spawn("sweeper", crate::tasks::sweep::run(Arc::clone(&d))),
        sup.spawn("notify", crate::notify::run(Arc::clone(&d))),
    ];
    if store.cluster().is_some() {
        tasks.push(sup.spawn(crate::cluster::TASK, crate::cluster::run(Arc::clone(&d))));
    }
    if let Some(interval) = lifecycle::watchdog_interval() {
        tasks.push(sup.spawn("watchdog", service::watchdog(Arc::clone(&d), interval)));
    }

    tracing::info!(
        socket = %paths.socket.display(),
        state_dir = %paths.state_dir.display(),
        MODE = %d.mode().effective,
        pid = std::process::id(),
        started_ms = d.clock.now_ms(),
        "orchestratord ready"
    );
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&crate::tasks::status::status_line(&d)),
    ]);
    background::ready();
    ready.cancel();
    d.look_up_access_groups();
    // After READY: the check reads the whole file and must not delay the start.
    tasks.push(sup.spawn("integrity-check", integrity::run(Arc::clone(&d))));
    // Once, after READY: a task that ends, so not a supervised one.
    let warming = Arc::clone(&d);
    tokio::spawn(async move {
        tokio::select! {
            _ = warming.shutdown.cancelled() => {}
            _ = crate::tasks::gate::keep_settled_time(&warming) => {}
        }
    });

    let failure = tokio::select! {
        _ = d.shutdown.cancelled() => None,
        f = failures.next() => Some(f),
    };
    if let Some(f) = &failure {
        tracing::error!("{f}");
        notify(&[NotifyState::Status(&format!("{f}; stopping"))]);
        d.shutdown.cancel();
    }
    notify(&[NotifyState::Stopping]);
    let orderly = async {
        server.join().await;
        if let Some(h) = http_server {
            let aborter = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), h.join())
                .await
                .is_err()
            {
                tracing::warn!("http: some requests were still busy after 10 s; closing them");
                aborter.abort();
            }
        }
        for t in tasks {
            t.join().await;
        }
        let closing = store.clone();
        let _ = tokio::task::spawn_blocking(move || closing.close()).await;
        writer.join().await;
        stop_logging.cancel();
        transition_log.join().await;
    };
    // One failure may bring others before the shutdown reaches every task; each reported is
    // logged. Loops that only end because their owner did (the specialist intake, whose sender the
    // dispatcher holds) wait for the shutdown instead, so that the log names the cause: a task's
    // end seen after the shutdown began is not reported.
    let orderly = async {
        tokio::select! {
            _ = orderly => {}
            _ = async { loop { tracing::error!("{}", failures.next().await) } } => {}
        }
        while let Some(f) = failures.try_next() {
            tracing::error!("{f}");
        }
    };
    match failure {
        None => orderly.await,
        Some(f) => {
            // A wedged part must not keep the daemon from exiting: systemd restarts it either way.
            if tokio::time::timeout(FAILED_SHUTDOWN_BOUND, orderly)
                .await
                .is_err()
            {
                tracing::error!(
                    "the orderly shutdown took longer than {FAILED_SHUTDOWN_BOUND:?}; exiting all the same"
                );
            }
            return Err(StartError::Failed(f));
        }
    }
    // A socket passed by systemd is systemd's: it keeps listening on it to start us again.
    if !activated {
        if let Err(e) = std::fs::remove_file(&paths.socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove the socket");
            }
        }
    }
    tracing::info!("orchestratord stopped");
    Ok(())
}
