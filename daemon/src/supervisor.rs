//! Supervision of the daemon's long-lived tasks.
//!
//! Every task that should live as long as the daemon (dispatcher, specialist intake, agent pauses,
//! lease renewal, delivery, sweeper, notifier, signals, socket and HTTP servers, transition log,
//! integrity check, watchdog, node heartbeat, and a watcher of the store's writer thread; the list
//! with what each does is in docs/ARCHITECTURE.md) is started here under a name. One that panics,
//! or ends while no shutdown was asked, is a [`Failure`]: `run` logs it by name, tells systemd,
//! shuts down within a bound and exits non-zero, so that `Restart=on-failure` brings the daemon
//! back. The store is durable, so nothing is lost by that; a daemon that kept answering `status`
//! with a dead dispatcher would lose far more.
//!
//! Per-task work (a specialist run, a synthetic burst, a connection) is not supervised here: it ends
//! by design, and its own code records its outcome.

use crate::fault::{self, How, When};
use std::future::Future;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

/// A supervised task that ended when it should not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub task: &'static str,
    pub why: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "supervised task \"{}\" failed: {}", self.task, self.why)
    }
}

/// Starts named tasks and reports the first that fails. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    shutdown: CancellationToken,
    failures: mpsc::UnboundedSender<Failure>,
}

/// The receiving side: the first failure of any supervised task.
pub struct Failures(mpsc::UnboundedReceiver<Failure>);

impl Failures {
    /// Wait for a failure. Never resolves while every task is healthy.
    pub async fn next(&mut self) -> Failure {
        match self.0.recv().await {
            Some(f) => f,
            // Every sender is gone, so no failure can come any more.
            None => std::future::pending().await,
        }
    }

    /// A failure already reported, if any.
    pub fn try_next(&mut self) -> Option<Failure> {
        self.0.try_recv().ok()
    }
}

/// One supervised task: wait for it, or abort it when it outstays an orderly shutdown.
pub struct Supervised {
    watcher: JoinHandle<()>,
    abort: AbortHandle,
}

impl Supervised {
    pub async fn join(self) {
        let _ = self.watcher.await;
    }

    pub fn abort(&self) {
        self.abort.abort();
    }

    pub fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }
}

impl Supervisor {
    /// `shutdown` is the daemon's: a task that ends after it was cancelled ended in order.
    pub fn new(shutdown: CancellationToken) -> (Supervisor, Failures) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Supervisor {
                shutdown,
                failures: tx,
            },
            Failures(rx),
        )
    }

    /// Start `fut` as the task `name`. The fault hook ([`crate::fault`]) may make it fail.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> Supervised
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let faulty = async move {
            let Some(f) = fault::injected(name) else {
                fut.await;
                return None;
            };
            let mut fut = std::pin::pin!(fut);
            let strike = async {
                match f.when {
                    When::After(after) => tokio::time::sleep(after).await,
                    When::Signal => fault::until_armed().await,
                }
            };
            tokio::select! {
                _ = &mut fut => return None,
                _ = strike => {}
            }
            match f.how {
                How::Panic => panic!("test fault injected into {name}"),
                How::Exit => None,
                // Wedged: the task is kept (its channels stay open) but never polled again, and
                // it does not end before shutdown.
                How::Hang => {
                    shutdown.cancelled().await;
                    None
                }
            }
        };
        self.start(name, faulty)
    }

    /// Watch something that is not a tokio task (the store's writer thread): `ended` resolves
    /// when it ended, with why.
    pub fn watch<F>(&self, name: &'static str, ended: F) -> Supervised
    where
        F: Future<Output = String> + Send + 'static,
    {
        self.start(name, async move { Some(ended.await) })
    }

    fn start<F>(&self, name: &'static str, fut: F) -> Supervised
    where
        F: Future<Output = Option<String>> + Send + 'static,
    {
        let inner = tokio::spawn(fut);
        let abort = inner.abort_handle();
        let shutdown = self.shutdown.clone();
        let failures = self.failures.clone();
        let watcher = tokio::spawn(async move {
            let why = match inner.await {
                Ok(_) if shutdown.is_cancelled() => return,
                Ok(Some(why)) => why,
                Ok(None) => "it ended before shutdown was asked".to_string(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                // Aborted by `run` itself, which does so only during shutdown.
                Err(_) => return,
            };
            let _ = failures.send(Failure { task: name, why });
        });
        Supervised { watcher, abort }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_and_an_early_end_are_failures_by_name() {
        let shutdown = CancellationToken::new();
        let (sup, mut failures) = Supervisor::new(shutdown.clone());
        sup.spawn("boom", async { panic!("it broke") });
        let f = failures.next().await;
        assert_eq!(f.task, "boom");
        assert_eq!(f.why, "panicked: it broke");
        assert_eq!(
            f.to_string(),
            "supervised task \"boom\" failed: panicked: it broke"
        );
        sup.spawn("quitter", async {});
        let f = failures.next().await;
        assert_eq!(f.task, "quitter");
        assert!(f.why.contains("before shutdown"), "{}", f.why);
        sup.watch("thread", async { "the writer died".to_string() });
        assert_eq!(failures.next().await.why, "the writer died");
    }

    #[tokio::test]
    async fn ending_after_shutdown_is_no_failure() {
        let shutdown = CancellationToken::new();
        let (sup, mut failures) = Supervisor::new(shutdown.clone());
        let s = shutdown.clone();
        let t = sup.spawn("orderly", async move { s.cancelled().await });
        shutdown.cancel();
        t.join().await;
        drop(sup);
        assert_eq!(
            failures.0.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected),
            "no failure may be reported"
        );
    }
}
