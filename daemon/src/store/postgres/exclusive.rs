//! One daemon per node id: while the store is open, a connection of its own (on a thread of its
//! own, so that it outlives the runtime that opened the store) holds a session advisory lock keyed
//! by the node id. A second daemon with the same id (which would void the first one's leases at
//! start) is refused. If the connection is lost (the server restarted), the lock is taken again
//! once the server is back.

use super::pg_error;
use crate::store::StoreError;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_postgres::NoTls;

/// The first half of the lock's key (the node id's hash is the second): advisory locks are per
/// database, so one key serves every database.
const NODE_LOCK: i32 = 0x6f72_636e; // "orcn"
const RETRY: Duration = Duration::from_secs(1);

/// Holds the lock until dropped.
pub(super) struct Exclusive {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Take the lock, or fail if another daemon holds it.
pub(super) fn take(cfg: &tokio_postgres::Config, node: &str) -> Result<Exclusive, StoreError> {
    let cfg = cfg.clone();
    let node = node.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("store-lock".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ =
                        ready_tx.send(Err(StoreError::Sql(format!("cannot start a runtime: {e}"))));
                    return;
                }
            };
            rt.block_on(hold(cfg, node, ready_tx, stop_rx));
        })
        .map_err(|e| StoreError::Sql(format!("cannot start the lock thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Exclusive {
            stop: Some(stop_tx),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(StoreError::Sql("the lock thread ended".into())),
    }
}

async fn hold(
    cfg: tokio_postgres::Config,
    node: String,
    ready: std::sync::mpsc::Sender<Result<(), StoreError>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut first = Some(ready);
    loop {
        match lock_once(&cfg, &node).await {
            Ok((client, connection)) => {
                if let Some(ready) = first.take() {
                    let _ = ready.send(Ok(()));
                }
                tokio::select! {
                    _ = connection => {
                        tracing::warn!("lost the connection that holds the database lock; taking it again");
                    }
                    _ = &mut stop => return,
                }
                drop(client);
            }
            Err(e) => match first.take() {
                Some(ready) => {
                    let _ = ready.send(Err(e));
                    return;
                }
                None => tracing::warn!(error = %e, "cannot take the database lock again yet"),
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = &mut stop => return,
        }
    }
}

async fn lock_once(
    cfg: &tokio_postgres::Config,
    node: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let (client, connection) = cfg.connect(NoTls).await.map_err(pg_error)?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let taken: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&NODE_LOCK, &node],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if taken {
        Ok((client, connection))
    } else {
        Err(StoreError::Sql(format!(
            "another orchestratord runs as node {node:?} on this PostgreSQL database; \
             give each daemon its own [node] id"
        )))
    }
}
