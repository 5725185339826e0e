//! Wiring at start: config, paths, store, mode, socket, then the daemon's tasks; and the orderly
//! shutdown that undoes it.

use crate::background;
use crate::clock::Clock;
use crate::config::{Config, ConfigErrors};
use crate::daemon::{Daemon, Paths};
use crate::dispatch::{self, DispatchHandle};
use crate::http;
use crate::lifecycle::{self, notify};
use crate::logging;
use crate::metrics::Metrics;
use crate::paths::{default_socket, default_state_dir};
use crate::server;
use crate::store::{Store, StoreError};
use crate::sweeper;
use sd_notify::NotifyState;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

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
}

impl StartError {
    /// Process exit code: 5 for an invalid config (as `orchctl`), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => 5,
            StartError::Other(_) => 1,
        }
    }
}

fn other(context: &str) -> impl Fn(String) -> StartError + '_ {
    move |e| StartError::Other(format!("{context}: {e}"))
}

/// Everything that can fail before the runtime starts, so that failures are reported plainly.
pub struct Prepared {
    pub config: Config,
    pub paths: Paths,
    pub store: Store,
    pub clock: Clock,
}

pub fn prepare(opts: &Options) -> Result<Prepared, StartError> {
    let config = Config::load_or_builtin(opts.config.as_deref()).map_err(StartError::Config)?;
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
    let store = Store::open(&paths.database()).map_err(|e| {
        StartError::Other(format!(
            "cannot open the store {}: {e}",
            paths.database().display()
        ))
    })?;
    Ok(Prepared {
        config,
        paths,
        store,
        clock: Clock::from_env(),
    })
}

/// Run the daemon until SIGTERM/SIGINT. Call from inside a tokio runtime.
pub async fn serve(p: Prepared, listener: server::Listener) -> Result<(), StartError> {
    let Prepared {
        config,
        mut paths,
        store,
        clock,
    } = p;
    let server::Listener {
        listener,
        activated,
        path: socket,
    } = listener;
    paths.socket = socket;
    // Subscribed before anything can commit, so that every transition is logged and counted.
    let transitions = store.subscribe();
    let mode = lifecycle::startup_mode(&store, &config, clock.now_ms())
        .await
        .map_err(|e| other("cannot decide the mode")(e.to_string()))?;
    // Bound before anything is started, so that a taken port fails the start and leaves nothing
    // half-running.
    let http_listener = match config.http.as_ref() {
        Some(h) => match http::bind(h.listen).await {
            Ok(l) => Some(l),
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
    crate::notify::install_rules(&store, &config);
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
    d.with_notes(|n| {
        n.latest_gate = gate;
        n.pending_overrides = overrides;
    });
    let stop_logging = tokio_util::sync::CancellationToken::new();
    let transition_log = tokio::spawn(logging::follow_transitions(
        Arc::clone(&d),
        transitions,
        stop_logging.clone(),
    ));

    // Tasks that were in progress belong to specialists of the previous run: stop any that still
    // run, then reclaim the tasks.
    dispatch::orphans::reap(&d).await;
    // The previous run's leases ended with it, however far ahead they reached. Voiding them and
    // reclaiming are two writes: a crash in between leaves leases void, and the next start
    // reclaims those tasks all the same.
    let reclaim = sweeper::reclaim(
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

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(dispatch::run(Arc::clone(&d), rx));
    tasks.spawn(lifecycle::signals(Arc::clone(&d)));
    tasks.spawn(lifecycle::watchdog(Arc::clone(&d)));
    tasks.spawn(sweeper::run(Arc::clone(&d)));
    tasks.spawn(crate::notify::run(Arc::clone(&d)));
    // The HTTP address is noted before the socket serves, so that `status` never misses it.
    let http_server = http_listener.map(|l| {
        let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %bound, "http: serving the API");
        d.with_notes(|n| n.http_listen = Some(bound));
        tokio::spawn(http::serve(Arc::clone(&d), l))
    });
    let server = tokio::spawn(server::serve(Arc::clone(&d), listener));

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
        NotifyState::Status(&lifecycle::status_line(&d)),
    ]);
    background::ready();

    d.shutdown.cancelled().await;
    notify(&[NotifyState::Stopping]);
    let _ = server.await;
    if let Some(mut h) = http_server {
        if tokio::time::timeout(std::time::Duration::from_secs(10), &mut h)
            .await
            .is_err()
        {
            tracing::warn!("http: some requests were still busy after 10 s; closing them");
            h.abort();
        }
    }
    while tasks.join_next().await.is_some() {}
    store.close();
    stop_logging.cancel();
    let _ = transition_log.await;
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
