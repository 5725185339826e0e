//! Live events across nodes. A write transaction that records trajectory events also sends a
//! `NOTIFY` on [`CHANNEL`] whose payload is the writing node's id and the events' sequence numbers
//! (delivered only if it commits). Every node keeps one connection of its own listening on the
//! channel; on a notification from another node it reads those event rows and publishes them to
//! [`Cluster::subscribe_all`](crate::store::cluster::Cluster::subscribe_all), next to its own.
//! The connection is made again whenever it is lost; events committed while it was down are not
//! replayed (a watcher sees them in the task's trajectory).

use super::rows::{event_from_row, EVENT_COLUMNS};
use super::{pg_error, Inner};
use futures_util::StreamExt;
use orchestrator_proto::task::TrajectoryEvent;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

pub(super) const CHANNEL: &str = "orchestrator_events";
/// A notification's payload must stay under 8,000 bytes: sequence numbers go in chunks.
const SEQS_PER_PAYLOAD: usize = 400;
const RETRY: Duration = Duration::from_secs(1);

/// `<node> <seq>,<seq>,…` for each chunk of `events`.
pub(super) fn payloads(node: &str, events: &[TrajectoryEvent]) -> Vec<String> {
    events
        .chunks(SEQS_PER_PAYLOAD)
        .map(|chunk| {
            let seqs: Vec<String> = chunk.iter().map(|e| e.seq.to_string()).collect();
            format!("{node} {}", seqs.join(","))
        })
        .collect()
}

/// The sequence numbers of a payload sent by another node than `node`.
fn foreign_seqs(node: &str, payload: &str) -> Option<Vec<i64>> {
    let (from, seqs) = payload.split_once(' ')?;
    if from == node {
        return None;
    }
    Some(seqs.split(',').filter_map(|s| s.parse().ok()).collect())
}

/// Listen until the store is closed, connecting again whenever the connection is lost.
pub(super) async fn run(cfg: tokio_postgres::Config, inner: Weak<Inner>) {
    loop {
        let Some(node) = inner.upgrade().map(|i| i.node.clone()) else {
            return;
        };
        match listen_once(&cfg, &inner, &node).await {
            Ok(()) => {}
            Err(e) => tracing::debug!(error = %e, "event listener: connection lost or refused"),
        }
        match inner.upgrade() {
            Some(i) if !i.closed.load(Ordering::Acquire) => {}
            _ => return,
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn listen_once(
    cfg: &tokio_postgres::Config,
    inner: &Weak<Inner>,
    node: &str,
) -> Result<(), crate::store::StoreError> {
    let (client, mut connection) = cfg.connect(NoTls).await.map_err(pg_error)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg_error)?;
    tracing::debug!("event listener: listening");
    while let Some(payload) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { break };
        if inner.closed.load(Ordering::Acquire) {
            break;
        }
        let Some(seqs) = foreign_seqs(node, &payload) else {
            continue;
        };
        let rows = client
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY($1) ORDER BY seq"),
                &[&seqs],
            )
            .await
            .map_err(pg_error);
        match rows {
            Ok(rows) => {
                for row in &rows {
                    match event_from_row(row) {
                        Ok(ev) => {
                            let _ = inner.all_events.send(ev);
                        }
                        Err(e) => tracing::warn!(error = %e, "event listener: unreadable event"),
                    }
                }
            }
            Err(e) => {
                pump.abort();
                return Err(e);
            }
        }
    }
    pump.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_proto::task::TaskState;

    fn event(seq: u64) -> TrajectoryEvent {
        TrajectoryEvent {
            seq,
            task_id: "t".into(),
            at: "2026-01-01T00:00:00.000Z".into(),
            actor: "a".into(),
            action: "route".into(),
            from: Some(TaskState::Queued),
            to: TaskState::Assigned,
            details: None,
        }
    }

    #[test]
    fn payloads_name_the_node_and_stay_small() {
        let events: Vec<_> = (1..=1000).map(event).collect();
        let p = payloads("host:/var/lib/orchestrator", &events);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.len() < 8000));
        let seqs: Vec<i64> = p
            .iter()
            .flat_map(|p| foreign_seqs("other", p).unwrap())
            .collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<i64>>());
        // A node ignores its own notifications: it published those events at commit.
        assert_eq!(foreign_seqs("host:/var/lib/orchestrator", &p[0]), None);
        assert!(payloads("n", &[]).is_empty());
    }
}
