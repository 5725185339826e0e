//! Notifications: `[[notify]]` sinks told about approvals, failures, gates, mode changes and
//! alarms (the events and sinks are described in `README.md`).
//!
//! The store writes each event to an outbox in the transaction of the transition that causes it
//! ([`crate::store::outbox`]); here one delivery worker per sink ([`worker`]) sends them, so a
//! slow or dead sink never holds up a submit, a transition or another sink. Delivery is at least
//! once: an event is removed from the outbox only after its sink accepted it, and receivers
//! deduplicate on the event id.

pub mod sink;
mod worker;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::store::{OutboxRules, Store};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where task links point when neither `[http] public_url` nor a listener says otherwise.
const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:7419";
/// How often the outbox figures behind the metrics are refreshed, the store's disk looked at, and
/// the config checked for a reload.
const TICK: Duration = Duration::from_secs(1);

/// Reading the outbox figures costs time in proportion to the events pending (SQLite counts them
/// in its event log). They are read at most every [`TICK`], and after a read that took `t`, not
/// again for `STATS_SHARE × t`: a large backlog costs the metrics at most a fiftieth of a core.
const STATS_SHARE: u32 = 50;
/// While the store is busy (see [`worker::Load`]) the figures are read at most this often: a burst
/// is when the backlog grows fastest and the cores are wanted by requests.
const BUSY_STATS_EVERY: Duration = Duration::from_secs(10);

/// The nice value of the delivery threads (the daemon's request threads keep 0): under load the
/// scheduler gives the CPU to requests and commits first, and delivery catches up when they leave
/// it some (`docs/ARCHITECTURE.md`, "Threads, tasks and who watches them").
const DELIVERY_NICE: libc::c_int = crate::priority::LOWEST;
/// The name of the delivery runtime's threads.
const DELIVERY_THREAD: &str = "notify-delivery";

/// The runtime the delivery workers run on: one worker thread (and its blocking threads) at
/// [`DELIVERY_NICE`]. `None` if it cannot be built; the workers then run on the daemon's runtime.
fn delivery_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(DELIVERY_THREAD)
                .on_thread_start(|| {
                    crate::priority::lower_this_thread(DELIVERY_NICE, "a delivery thread")
                })
                .enable_all()
                .build()
                .map_err(|e| {
                    tracing::warn!(error = %e, "notify: no delivery runtime of its own; delivering at normal priority")
                })
                .ok()
        })
        .as_ref()
        .map(|rt| rt.handle())
}

/// The address task links are built on: `[http] public_url`, else the address the HTTP listener
/// is bound to (`bound`), else the configured one.
pub fn public_url(cfg: &Config, bound: Option<&str>) -> String {
    let configured = cfg.http.as_ref();
    if let Some(url) = configured.and_then(|h| h.public_url.clone()) {
        return url;
    }
    match (bound, configured) {
        (Some(addr), _) => format!("http://{addr}"),
        (None, Some(h)) => format!("http://{}", h.listen),
        (None, None) => DEFAULT_PUBLIC_URL.to_string(),
    }
}

/// Give the store the sinks of `cfg`: commits from now on write outbox rows by them. `bound` is
/// the HTTP listener's address, when it listens.
pub fn install_rules(store: &Store, cfg: &Config, bound: Option<&str>) {
    store.set_outbox_rules(OutboxRules {
        sinks: cfg.notify.clone(),
        approval: cfg.approval.clone(),
        public_url: public_url(cfg, bound),
    });
}

/// Queue an event that no transition causes (gate verdicts, mode changes). It is written right
/// after what it reports, in a write of its own; a failure is logged, never the caller's failure.
pub async fn announce(d: &Daemon, event_type: &str, fields: serde_json::Value) {
    let mut notice = crate::store::Notice::new(event_type, d.clock.now_ms());
    if let serde_json::Value::Object(map) = fields {
        notice.fields = map;
    }
    if let Err(e) = d.store.enqueue_notice(notice).await {
        tracing::warn!(event = %event_type, error = %e, "notify: cannot queue the event");
    }
}

/// The delivery workers, one per configured sink, restarted when a reload installs a new config
/// (the reload installs the store's rules itself; see [`install_rules`]) or when this node gains
/// or loses the lead on a shared store, until shutdown.
pub async fn run(d: Arc<Daemon>) {
    // When the store's disk filled up, until the alarm about it is written.
    let mut full_since: Option<i64> = None;
    loop {
        let cfg = d.config();
        let stop = d.shutdown.child_token();
        let mut workers = tokio::task::JoinSet::new();
        // On a shared store only the leader delivers, so that several nodes do not send one row
        // each; alone on SQLite a daemon always leads.
        let leads = d.node.is_leader();
        for s in cfg.notify.iter().filter(|_| leads) {
            match sink::Sender::new(s.clone()) {
                Ok(sender) => {
                    let work = worker::run(
                        Arc::clone(&d),
                        sender,
                        stop.clone(),
                        tokio::runtime::Handle::current(),
                    );
                    match delivery_runtime() {
                        Some(rt) => workers.spawn_on(work, rt),
                        None => workers.spawn(work),
                    };
                }
                Err(e) => {
                    tracing::error!(sink = %s.name, error = %e, "notify: cannot start the sink")
                }
            }
        }
        let mut stats_due = tokio::time::Instant::now();
        let mut load = worker::Load::new(d.store.writes());
        let reloaded = loop {
            if tokio::time::Instant::now() >= stats_due {
                let started = tokio::time::Instant::now();
                refresh_stats(&d).await;
                let least = if load.busy(d.store.writes()) {
                    BUSY_STATS_EVERY
                } else {
                    TICK
                };
                stats_due = started + least.max(started.elapsed() * STATS_SHARE);
            }
            disk_alarm(&d, &mut full_since).await;
            tokio::select! {
                _ = d.shutdown.cancelled() => break false,
                _ = tokio::time::sleep(TICK) => {}
            }
            if !Arc::ptr_eq(&cfg, &d.config()) || d.node.is_leader() != leads {
                break true;
            }
        };
        stop.cancel();
        while workers.join_next().await.is_some() {}
        if !reloaded {
            return;
        }
    }
}

/// A full disk cannot take the alarm about itself: the alarm is remembered while the store cannot
/// write and queued once it can again.
async fn disk_alarm(d: &Daemon, full_since: &mut Option<i64>) {
    let health = d.store.health();
    if let Some(since) = health.full_since_ms {
        if full_since.is_none() {
            tracing::warn!("notify: the store cannot write; daemon.alarm follows once it can");
            *full_since = Some(since);
        }
        return;
    }
    let Some(since) = *full_since else { return };
    let now = d.clock.now_ms();
    let notice = crate::store::Notice::new("daemon.alarm", now)
        .field("alarm", "storage_full")
        .field("since", crate::clock::rfc3339(since))
        .field("recoveredAt", crate::clock::rfc3339(now))
        .field(
            "message",
            "the store could not write (disk full); writes succeed again",
        );
    match d.store.enqueue_notice(notice).await {
        Ok(_) => *full_since = None,
        Err(e) => tracing::warn!(error = %e, "notify: cannot queue the storage alarm yet"),
    }
}

async fn refresh_stats(d: &Daemon) {
    if let Ok(stats) = d.store.outbox_stats().await {
        let mut rows: Vec<crate::metrics::SinkOutbox> = d
            .config()
            .notify
            .iter()
            .map(|s| (s.name.clone(), 0, 0, None))
            .collect();
        for st in stats {
            let row = (st.sink.clone(), st.pending, st.dead, st.oldest_pending_ms);
            match rows.iter_mut().find(|r| r.0 == st.sink) {
                Some(r) => *r = row,
                None => rows.push(row),
            }
        }
        d.metrics.set_notify_outbox(rows);
    }
}
