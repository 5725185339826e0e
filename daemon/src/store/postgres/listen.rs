//! Live events across nodes. A write transaction that records trajectory events also sends a
//! `NOTIFY` on [`CHANNEL`] whose payload is the writing node's id and the events' sequence numbers
//! (delivered only if it commits). Every node keeps one connection of its own listening on the
//! channel; on a notification from another node it reads those event rows and publishes them to
//! [`Cluster::subscribe_all`](crate::store::cluster::Cluster::subscribe_all), next to its own.
//! The connection is made again whenever it is lost (PostgreSQL restarted, the backend terminated),
//! and the events committed meanwhile are replayed: once listening again, the listener reads the
//! event rows after the highest sequence number it had heard of (less [`REPLAY_MARGIN`], for
//! transactions that took their numbers earlier and committed later) and publishes those of other
//! nodes it has not published yet. Its connection is named `<application_name> (events)` in
//! `pg_stat_activity`.
//!
//! A transaction that writes outbox rows (an event or a notice some sink wants) also sends
//! `<node> outbox` ([`outbox_payload`]): a node that hears it from another wakes its delivery
//! workers, so the leader sends what a follower committed without waiting for a commit of its own.
//! Being connected again wakes them too, for what was written meanwhile.

use super::rows::{event_from_row, EVENT_COLUMNS};
use super::{pg_error, Inner};
use futures_util::StreamExt;
use orchestrator_proto::task::TrajectoryEvent;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

pub(super) const CHANNEL: &str = "orchestrator_events";
/// A notification's payload must stay under 8,000 bytes: sequence numbers go in chunks.
const SEQS_PER_PAYLOAD: usize = 400;
const RETRY: Duration = Duration::from_secs(1);
/// How far below the highest sequence number heard of a replay starts: events of transactions
/// that took their numbers before it and committed after it (a burst writes at most a few
/// thousand events in one transaction).
const REPLAY_MARGIN: i64 = 8_192;
/// Most events one replay publishes; an outage longer than that leaves the rest to the tasks'
/// trajectories.
const REPLAY_MAX: i64 = 100_000;
/// How many of this node's own sequence numbers, and of the others' already published, are kept
/// to tell what a replay must skip. At least [`REPLAY_MARGIN`].
const KEPT: usize = 65_536;

/// The sequence numbers of this node's committed events, newest last (at most [`KEPT`]): a
/// replay skips them, they were published at their commit.
#[derive(Default)]
pub(super) struct Own(VecDeque<i64>);

impl Own {
    pub(super) fn note(&mut self, events: &[TrajectoryEvent]) {
        for e in events {
            self.0.push_back(i64::try_from(e.seq).unwrap_or(i64::MAX));
        }
        while self.0.len() > KEPT {
            self.0.pop_front();
        }
    }
}

/// What the listener has heard of, kept across its connections.
#[derive(Default)]
struct Heard {
    /// The highest sequence number in any notification, this node's own included.
    high: Option<i64>,
    /// Other nodes' events published, the newest [`KEPT`].
    published: BTreeSet<i64>,
}

impl Heard {
    fn heard(&mut self, seqs: &[i64]) {
        if let Some(max) = seqs.iter().max() {
            self.high = Some(self.high.map_or(*max, |h| h.max(*max)));
        }
    }

    /// Record `seq` as published; false if it was already.
    fn publish(&mut self, seq: i64) -> bool {
        if !self.published.insert(seq) {
            return false;
        }
        while self.published.len() > KEPT {
            self.published.pop_first();
        }
        self.heard(&[seq]);
        true
    }
}

/// The second word of the payload that says a transaction wrote outbox rows.
const OUTBOX: &str = "outbox";

/// `<node> outbox`: the payload of a transaction that wrote outbox rows.
pub(super) fn outbox_payload(node: &str) -> String {
    format!("{node} {OUTBOX}")
}

/// Wake this node's delivery workers: another node may have written outbox rows.
fn wake_delivery(inner: &Inner) {
    inner.outbox_written.send_modify(|n| *n = n.wrapping_add(1));
}

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

/// The sequence numbers of a payload, and whether another node than `node` sent it. The numbers
/// follow the last space: a node's id (its state directory's path, by default) may hold spaces.
fn payload_seqs(node: &str, payload: &str) -> Option<(bool, Vec<i64>)> {
    let (from, seqs) = payload.rsplit_once(' ')?;
    Some((
        from != node,
        seqs.split(',').filter_map(|s| s.parse().ok()).collect(),
    ))
}

/// Listen until the store is closed, connecting again whenever the connection is lost.
pub(super) async fn run(mut cfg: tokio_postgres::Config, inner: Weak<Inner>) {
    let name = format!(
        "{} (events)",
        cfg.get_application_name().unwrap_or("orchestratord")
    );
    cfg.application_name(&name);
    let mut heard = Heard::default();
    loop {
        let Some(node) = inner.upgrade().map(|i| i.node.clone()) else {
            return;
        };
        match listen_once(&cfg, &inner, &node, &mut heard).await {
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

/// Publish the events of other nodes among `rows` that were not published yet.
fn publish_rows(inner: &Inner, heard: &mut Heard, rows: &[tokio_postgres::Row]) {
    for row in rows {
        match event_from_row(row) {
            Ok(ev) => {
                if heard.publish(i64::try_from(ev.seq).unwrap_or(i64::MAX)) {
                    let _ = inner.all_events.send(ev);
                }
            }
            Err(e) => tracing::warn!(error = %e, "event listener: unreadable event"),
        }
    }
}

/// Once listening again: publish what other nodes committed since the highest sequence number
/// heard of (less the margin), skipping this node's own events and those already published.
async fn replay(
    client: &tokio_postgres::Client,
    inner: &Weak<Inner>,
    heard: &mut Heard,
) -> Result<(), crate::store::StoreError> {
    let Some(high) = heard.high else {
        return Ok(());
    };
    let rows = client
        .query(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"),
            &[&high.saturating_sub(REPLAY_MARGIN), &REPLAY_MAX],
        )
        .await
        .map_err(pg_error)?;
    let Some(inner) = inner.upgrade() else {
        return Ok(());
    };
    let own: HashSet<i64> = match inner.own.lock() {
        Ok(own) => own.0.iter().copied().collect(),
        Err(poisoned) => poisoned.into_inner().0.iter().copied().collect(),
    };
    let before = heard.published.len();
    let foreign: Vec<tokio_postgres::Row> = rows
        .into_iter()
        .filter(|r| !own.contains(&r.get::<_, i64>(0)))
        .collect();
    publish_rows(&inner, heard, &foreign);
    let replayed = heard.published.len().saturating_sub(before);
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "event listener: replayed the events committed while it was reconnecting"
        );
    }
    if i64::try_from(foreign.len()).unwrap_or(i64::MAX) >= REPLAY_MAX {
        tracing::warn!(
            most = REPLAY_MAX,
            "event listener: more events were committed while it was reconnecting than it replays"
        );
    }
    Ok(())
}

async fn listen_once(
    cfg: &tokio_postgres::Config,
    inner: &Weak<Inner>,
    node: &str,
    heard: &mut Heard,
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
    if let Err(e) = replay(&client, inner, heard).await {
        pump.abort();
        return Err(e);
    }
    if let Some(inner) = inner.upgrade() {
        wake_delivery(&inner);
    }
    while let Some(payload) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { break };
        if inner.closed.load(Ordering::Acquire) {
            break;
        }
        if let Some((from, OUTBOX)) = payload.rsplit_once(' ') {
            if from != node {
                wake_delivery(&inner);
            }
            continue;
        }
        let Some((foreign, seqs)) = payload_seqs(node, &payload) else {
            continue;
        };
        heard.heard(&seqs);
        if !foreign {
            // This node's own events: published at their commit.
            continue;
        }
        let seqs: Vec<i64> = seqs
            .into_iter()
            .filter(|s| !heard.published.contains(s))
            .collect();
        if seqs.is_empty() {
            continue;
        }
        let rows = client
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY($1) ORDER BY seq"),
                &[&seqs],
            )
            .await
            .map_err(pg_error);
        match rows {
            Ok(rows) => publish_rows(&inner, heard, &rows),
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
    fn a_replay_skips_what_was_published_and_keeps_the_highest_heard() {
        let mut heard = Heard::default();
        heard.heard(&[5, 3]);
        assert_eq!(heard.high, Some(5));
        assert!(heard.publish(4));
        assert!(!heard.publish(4), "published once");
        assert!(heard.publish(9));
        assert_eq!(heard.high, Some(9));
        for seq in 10..(10 + KEPT as i64) {
            heard.publish(seq);
        }
        assert_eq!(heard.published.len(), KEPT);
        assert!(!heard.published.contains(&4), "the oldest go first");
        let mut own = Own::default();
        own.note(&(1..=(KEPT as u64 + 2)).map(event).collect::<Vec<_>>());
        assert_eq!(own.0.len(), KEPT);
        assert_eq!(own.0.front(), Some(&3));
    }

    #[test]
    fn payloads_name_the_node_and_stay_small() {
        let events: Vec<_> = (1..=1000).map(event).collect();
        let p = payloads("host:/var/lib/orchestrator", &events);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.len() < 8000));
        let seqs: Vec<i64> = p
            .iter()
            .flat_map(|p| {
                let (foreign, seqs) = payload_seqs("other", p).unwrap();
                assert!(foreign, "{p}");
                seqs
            })
            .collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<i64>>());
        // A node tells its own notifications: it published those events at commit.
        let (foreign, _) = payload_seqs("host:/var/lib/orchestrator", &p[0]).unwrap();
        assert!(!foreign);
        assert!(payloads("n", &[]).is_empty());
        // An id with a space in it (a state directory's path) is told apart whole.
        let spaced = payloads("host:/srv/my state", &events[..2]);
        assert_eq!(
            payload_seqs("host:/srv/my state", &spaced[0]),
            Some((false, vec![1, 2]))
        );
        assert_eq!(
            outbox_payload("host:/srv/my state").rsplit_once(' '),
            Some(("host:/srv/my state", OUTBOX))
        );
    }
}
