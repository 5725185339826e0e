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

use crate::clock::now_ms;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::store::{OutboxRules, OutboxStats, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where task links point when `[http] public_url` is not set and no listener is configured.
const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:7419";
/// How often the outbox figures behind the metrics are refreshed and the store's disk looked at.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Per-sink counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkCounters {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead: u64,
    pub last_error: Option<String>,
}

/// The notifier's shared state: counters, the latest outbox figures, and the reload signal.
#[derive(Default)]
pub struct Notifier {
    counters: Mutex<BTreeMap<String, SinkCounters>>,
    stats: Mutex<(i64, Vec<OutboxStats>)>,
    reload: tokio::sync::Notify,
}

impl Notifier {
    fn count(&self, sink: &str, f: impl FnOnce(&mut SinkCounters)) {
        if let Ok(mut c) = self.counters.lock() {
            f(c.entry(sink.to_string()).or_default());
        }
    }

    fn note_error(&self, sink: &str, error: &str) {
        self.count(sink, |c| c.last_error = Some(error.to_string()));
    }

    pub fn counters(&self) -> BTreeMap<String, SinkCounters> {
        self.counters.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The outbox figures as of the last refresh, and when that was.
    pub fn stats(&self) -> (i64, Vec<OutboxStats>) {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The address task links are built on: `[http] public_url`, else the HTTP listener's.
pub fn public_url(cfg: &Config) -> String {
    match &cfg.http {
        Some(h) => h
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", h.listen)),
        None => DEFAULT_PUBLIC_URL.to_string(),
    }
}

/// Give the store the sinks of `cfg`: commits from now on write outbox rows by them.
pub fn install_rules(store: &Store, cfg: &Config) {
    store.set_outbox_rules(OutboxRules {
        sinks: cfg.notify.clone(),
        approval: cfg.approval.clone(),
        public_url: public_url(cfg),
    });
}

/// After a reload: new rules for the store, new workers for the sinks.
pub fn config_changed(d: &Daemon) {
    install_rules(&d.store, &d.config());
    d.notifier.reload.notify_one();
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

/// The delivery workers, one per configured sink, restarted on every reload, until shutdown.
pub async fn run(d: Arc<Daemon>) {
    // When the store's disk filled up, until the alarm about it is written.
    let mut full_since: Option<i64> = None;
    loop {
        let cfg = d.config();
        let stop = d.shutdown.child_token();
        let mut workers = tokio::task::JoinSet::new();
        for s in &cfg.notify {
            match sink::Sender::new(s.clone()) {
                Ok(sender) => {
                    workers.spawn(worker::run(Arc::clone(&d), sender, stop.clone()));
                }
                Err(e) => {
                    tracing::error!(sink = %s.name, error = %e, "notify: cannot start the sink");
                    d.notifier.note_error(&s.name, &e);
                }
            }
        }
        let reloaded = loop {
            refresh_stats(&d).await;
            disk_alarm(&d, &mut full_since).await;
            tokio::select! {
                _ = d.shutdown.cancelled() => break false,
                _ = d.notifier.reload.notified() => break true,
                _ = tokio::time::sleep(STATS_EVERY) => {}
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
        if let Ok(mut s) = d.notifier.stats.lock() {
            *s = (now_ms(), stats);
        }
    }
}

/// Per-sink metrics in Prometheus text: queued (pending), oldest pending age and dead from the
/// outbox; delivered and failed attempts counted since start.
pub fn render_metrics(d: &Daemon, out: &mut String) {
    use std::fmt::Write;
    let cfg = d.config();
    let counters = d.notifier.counters();
    let (at, stats) = d.notifier.stats();
    let mut names: Vec<String> = cfg.notify.iter().map(|s| s.name.clone()).collect();
    for s in &stats {
        if !names.contains(&s.sink) {
            names.push(s.sink.clone());
        }
    }
    if names.is_empty() {
        return;
    }
    let row = |name: &str| {
        stats
            .iter()
            .find(|s| s.sink == name)
            .cloned()
            .unwrap_or_default()
    };
    type Series<'a> = (&'a str, &'a str, &'a str, Box<dyn Fn(&str) -> String + 'a>);
    let series: [Series<'_>; 5] = [
        (
            "orchestrator_notify_queued",
            "gauge",
            "Events waiting for delivery, by sink.",
            Box::new(|n| row(n).pending.to_string()),
        ),
        (
            "orchestrator_notify_dead",
            "gauge",
            "Events given up on (until `orchctl notify retry`), by sink.",
            Box::new(|n| row(n).dead.to_string()),
        ),
        (
            "orchestrator_notify_oldest_pending_seconds",
            "gauge",
            "Age of the oldest event waiting for delivery, by sink.",
            Box::new(|n| {
                row(n)
                    .oldest_pending_ms
                    .map_or(0, |t| (at - t).max(0) / 1000)
                    .to_string()
            }),
        ),
        (
            "orchestrator_notify_delivered_total",
            "counter",
            "Events delivered since start, by sink.",
            Box::new(|n| counters.get(n).map_or(0, |c| c.delivered).to_string()),
        ),
        (
            "orchestrator_notify_failed_attempts_total",
            "counter",
            "Failed delivery attempts since start, by sink.",
            Box::new(|n| counters.get(n).map_or(0, |c| c.failed_attempts).to_string()),
        ),
    ];
    for (metric, kind, help, value) in &series {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for n in &names {
            let _ = writeln!(out, "{metric}{{sink=\"{n}\"}} {}", value(n));
        }
    }
}
