//! The service manager's side of the running daemon: signal handlers (SIGHUP reloads, SIGTERM and
//! SIGINT shut down) and systemd's watchdog with its liveness probe.

use crate::daemon::Daemon;
use crate::lifecycle::{notify, ReloadTrigger};
use crate::tasks::reload::reload;
use crate::tasks::status::status_line;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;

/// React to SIGHUP (reload), SIGTERM and SIGINT (graceful shutdown) until shutdown.
///
/// The handlers are installed when this is called, not when the returned future is first polled:
/// the caller calls it before the socket serves, so a SIGHUP sent as soon as the daemon answers
/// reloads it instead of meeting the default action, which ends the process.
pub fn signals(d: Arc<Daemon>) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let installed = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (hup, term, int) = match installed {
            (Ok(h), Ok(t), Ok(i)) => (h, t, i),
            // Ending here is a failure the supervisor stops the daemon for.
            _ => {
                tracing::error!("cannot install signal handlers");
                return;
            }
        };
        handle_signals(d, hup, term, int).await
    }
}

async fn handle_signals(
    d: Arc<Daemon>,
    mut hup: tokio::signal::unix::Signal,
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    loop {
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = hup.recv() => {
                // The outcome is logged and kept for `orchctl status` by `reload` itself.
                let _ = reload(&d, ReloadTrigger::Sighup).await;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                d.shutdown.cancel();
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: shutting down");
                d.shutdown.cancel();
            }
        }
    }
}

/// Feed systemd's watchdog at half its interval, but only while the liveness probe passes: a write
/// that commits through the store's writer, and a ping the dispatcher's loop answers, each within
/// a quarter of the interval. A wedged daemon stops feeding it, and systemd restarts it.
pub async fn watchdog(d: Arc<Daemon>, interval: Duration) {
    let period = interval / 2;
    let bound = interval / 4;
    let mut failing = false;
    loop {
        match liveness(&d, bound).await {
            Ok(()) => {
                if failing {
                    tracing::warn!(
                        "watchdog: the liveness probe passes again; feeding the watchdog"
                    );
                    failing = false;
                }
                notify(&[NotifyState::Watchdog, NotifyState::Status(&status_line(&d))]);
            }
            Err(why) => {
                if !failing {
                    tracing::error!(reason = %why, "watchdog: the liveness probe failed; no longer feeding the watchdog");
                    failing = true;
                }
                notify(&[NotifyState::Status(&format!(
                    "liveness probe failed: {why}"
                ))]);
            }
        }
        tokio::select! {
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// One round trip through the store's writer and one through the dispatcher, each within `bound`.
async fn liveness(d: &Daemon, bound: Duration) -> Result<(), String> {
    match tokio::time::timeout(bound, d.store.probe()).await {
        Err(_) => return Err(format!("the store writer did not commit within {bound:?}")),
        Ok(Err(e)) => return Err(format!("the store writer failed: {e}")),
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout(bound, d.dispatch.ping()).await {
        Err(_) => Err(format!("the dispatcher did not answer within {bound:?}")),
        Ok(false) => Err("the dispatcher is gone".to_string()),
        Ok(true) => Ok(()),
    }
}
