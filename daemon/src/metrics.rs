//! The daemon's counters and histograms, and their Prometheus text exposition (version 0.0.4), as
//! served by `orchctl metrics` and `GET /metrics`.
//!
//! A leaf: it knows no other part of the daemon. The parts that do the work call [`Metrics`] to
//! count and observe; whoever renders hands in a [`Snapshot`] of what only the daemon knows (task
//! counts, the mode, store errors, the process) and gets the text back from [`render`].

use orchestrator_proto::task::{Mode, TaskKind, TaskState};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Bucket bounds of the wait and run-time histograms, in seconds: a second to a day.
const WAIT_BUCKETS: [f64; 14] = [
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4.0 * 3600.0,
    8.0 * 3600.0,
    86400.0,
];
/// Bucket bounds of request latency, in seconds.
const REQUEST_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram with fixed bounds, written cumulatively; the sum is kept in microunits so it stays atomic.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Record one value; negative values (a clock stepped back) count as 0.
    pub fn observe(&self, seconds: f64) {
        let v = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        // One bucket per value (the first bound at or above it; past the last, only the count):
        // the running totals Prometheus wants are summed when the histogram is written.
        if let Some(bucket) = self.buckets.get(self.bounds.partition_point(|b| *b < v)) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6).round() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut n = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            n += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let count = self.count();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Counters keyed by their label values, created on first use, kept sorted by them. Counting
/// compares the labels in place (a synthetic submit counts one); only a new counter allocates.
#[derive(Debug, Default)]
pub struct Labelled(Mutex<Vec<(Vec<String>, u64)>>);

/// Where `labels` is, or would go, among keys sorted in order.
fn find<T>(keyed: &[(Vec<String>, T)], labels: &[&str]) -> Result<usize, usize> {
    keyed.binary_search_by(|(key, _)| key.iter().map(String::as_str).cmp(labels.iter().copied()))
}

fn key(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|s| s.to_string()).collect()
}

impl Labelled {
    fn lock(&self) -> MutexGuard<'_, Vec<(Vec<String>, u64)>> {
        match self.0.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        let mut counters = self.lock();
        match find(&counters, labels) {
            Ok(i) => counters[i].1 += 1,
            Err(i) => counters.insert(i, (key(labels), 1)),
        }
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        let mut counters = self.lock();
        match find(&counters, labels) {
            Ok(i) => counters[i].1 = counters[i].1.saturating_add(n),
            Err(i) => counters.insert(i, (key(labels), n)),
        }
    }

    /// [`Labelled::add`] for labels that others choose (a specialist names its model): once
    /// `cap` counters exist, a new one is counted with its label at `fold` set to `other`, so that
    /// the family, and `/metrics`, stay bounded.
    pub fn add_folding(&self, labels: &[&str], n: u64, cap: usize, fold: usize) {
        let folded: Vec<&str>;
        let labels = {
            let counters = self.lock();
            if counters.len() >= cap && find(&counters, labels).is_err() {
                folded = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| if i == fold { "other" } else { *l })
                    .collect();
                &folded[..]
            } else {
                labels
            }
        };
        self.add(labels, n);
    }

    pub fn get(&self, labels: &[&str]) -> u64 {
        let counters = self.lock();
        find(&counters, labels).map_or(0, |i| counters[i].1)
    }

    fn entries(&self) -> Vec<(Vec<String>, u64)> {
        self.lock().clone()
    }
}

/// A histogram's label values and the histogram.
type Series = (Vec<String>, std::sync::Arc<Histogram>);

/// Histograms keyed by label values (request latency by front end and verb), kept sorted by them.
/// Every request observes one, so finding it compares the labels in place instead of building a
/// key; only a new series allocates.
#[derive(Debug)]
pub struct LabelledHistograms {
    bounds: &'static [f64],
    series: Mutex<Vec<Series>>,
}

impl LabelledHistograms {
    fn new(bounds: &'static [f64]) -> LabelledHistograms {
        LabelledHistograms {
            bounds,
            series: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Series>> {
        match self.series.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn observe(&self, labels: &[&str], seconds: f64) {
        let h = {
            let mut series = self.lock();
            match find(&series, labels) {
                Ok(i) => std::sync::Arc::clone(&series[i].1),
                Err(i) => {
                    let h = std::sync::Arc::new(Histogram::new(self.bounds));
                    series.insert(i, (key(labels), std::sync::Arc::clone(&h)));
                    h
                }
            }
        };
        h.observe(seconds);
    }
}

/// One notification sink's outbox: (sink, queued, dead, the oldest queued event's time in ms).
pub type SinkOutbox = (String, u64, u64, Option<i64>);

/// Everything the daemon counts and observes.
#[derive(Debug)]
pub struct Metrics {
    pub transitions: AtomicU64,
    pub reclaims: AtomicU64,
    pub expiries: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    /// The console's live event streams open now (a gauge, not a counter).
    pub console_streams: AtomicU64,
    /// Tasks routed to an agent, by `agent`.
    pub dispatches: Labelled,
    /// Specialist processes started, by `agent`.
    pub specialist_spawns: Labelled,
    /// Specialists that failed, by `agent` and `code` (the task's error code).
    pub specialist_failures: Labelled,
    /// Specialists stopped at their timeout, by `agent`.
    pub specialist_timeouts: Labelled,
    /// Reported cost in millionths of a dollar, by `agent` and `model`.
    pub cost_micro_usd: Labelled,
    /// Reported tokens, by `agent`, `model` and `kind` (input, output, cache_read, cache_write).
    pub tokens: Labelled,
    /// Submitted → started.
    pub queue_wait: Histogram,
    /// A specialist's run, from start to its end.
    pub specialist_run: Histogram,
    /// `awaiting_approval` → approved or rejected.
    pub approval_wait: Histogram,
    /// Requests by `transport` (socket, http) and `verb`.
    pub request_duration: LabelledHistograms,
    /// Notification events delivered, by `sink`.
    pub notify_delivered: Labelled,
    /// Failed notification delivery attempts, by `sink`.
    pub notify_failed_attempts: Labelled,
    /// Each sink's outbox as last read.
    notify_outbox: Mutex<Vec<SinkOutbox>>,
    /// When each task now in `awaiting_approval` got there (ms since the epoch).
    awaiting_since: Mutex<HashMap<String, i64>>,
    /// Cancelled once `awaiting_since` was first read from the store, just after the daemon became
    /// ready, by the transition log.
    awaiting_read: tokio_util::sync::CancellationToken,
    /// Tasks whose approval wait is not an operator's (the synthetic harness's fixtures).
    not_for_approval: Mutex<HashSet<String>>,
}

impl Metrics {
    /// Replace the notification outbox figures (read by the notifier from the store).
    pub fn set_notify_outbox(&self, rows: Vec<SinkOutbox>) {
        match self.notify_outbox.lock() {
            Ok(mut o) => *o = rows,
            Err(poisoned) => *poisoned.into_inner() = rows,
        }
    }

    fn notify_outbox(&self) -> Vec<SinkOutbox> {
        match self.notify_outbox.lock() {
            Ok(o) => o.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            transitions: AtomicU64::new(0),
            reclaims: AtomicU64::new(0),
            expiries: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            console_streams: AtomicU64::new(0),
            dispatches: Labelled::default(),
            notify_delivered: Labelled::default(),
            notify_failed_attempts: Labelled::default(),
            notify_outbox: Mutex::default(),
            specialist_spawns: Labelled::default(),
            specialist_failures: Labelled::default(),
            specialist_timeouts: Labelled::default(),
            cost_micro_usd: Labelled::default(),
            tokens: Labelled::default(),
            queue_wait: Histogram::new(&WAIT_BUCKETS),
            specialist_run: Histogram::new(&WAIT_BUCKETS),
            approval_wait: Histogram::new(&WAIT_BUCKETS),
            request_duration: LabelledHistograms::new(&REQUEST_BUCKETS),
            awaiting_since: Mutex::default(),
            awaiting_read: tokio_util::sync::CancellationToken::new(),
            not_for_approval: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Take one from a gauge kept in an `AtomicU64` (one that [`Metrics::inc`] raised).
    pub fn dec(gauge: &AtomicU64) {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn awaiting(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        match self.awaiting_since.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn excluded(&self) -> MutexGuard<'_, HashSet<String>> {
        match self.not_for_approval.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Leave the task out of the approval metrics: nobody is meant to approve it.
    pub fn not_for_approval(&self, id: &str) {
        self.excluded().insert(id.to_string());
    }

    /// Follow one committed transition of task `id` at `at_ms`: entering `awaiting_approval` starts
    /// its wait; leaving it ends the wait, and an approval or a rejection is observed. An event that
    /// stays in the state (the sweeper's approval warning) changes neither.
    pub fn approval_transition(
        &self,
        id: &str,
        from: Option<TaskState>,
        to: TaskState,
        action: &str,
        at_ms: i64,
    ) {
        if from == Some(to) {
            return;
        }
        let resting = to == TaskState::AwaitingApproval || to.is_terminal();
        if resting && self.excluded().remove(id) {
            return;
        }
        if to == TaskState::AwaitingApproval {
            self.awaiting().insert(id.to_string(), at_ms);
        } else if from == Some(TaskState::AwaitingApproval) {
            let since = self.awaiting().remove(id);
            if let (Some(since), "approve" | "reject") = (since, action) {
                self.approval_wait.observe(ms_to_seconds(at_ms - since));
            }
        }
    }

    /// Replace what is known of the tasks in `awaiting_approval` (at start, and after the event
    /// stream lagged and may have lost some of their transitions).
    pub fn reset_awaiting(&self, tasks: impl IntoIterator<Item = (String, i64)>) {
        let mut map = self.awaiting();
        map.clear();
        map.extend(tasks);
    }

    /// Say that the tasks in `awaiting_approval` were read from the store (or could not be): a
    /// scrape no longer waits for it.
    pub fn awaiting_known(&self) {
        self.awaiting_read.cancel();
    }

    /// Wait, at most `bound`, until the tasks in `awaiting_approval` were first read from the
    /// store, so that a scrape right after a start counts the waits that began before it.
    pub async fn awaiting_read(&self, bound: std::time::Duration) {
        let _ = tokio::time::timeout(bound, self.awaiting_read.cancelled()).await;
    }

    fn oldest_awaiting_ms(&self) -> Option<i64> {
        self.awaiting().values().copied().min()
    }
}

pub fn ms_to_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// What this process uses, from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// `None` where `/proc` cannot be read (not Linux, or not mounted).
    pub fn read_self() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut p = parse_stat(&stat, &boot, ticks.max(1) as f64, page.max(1) as u64)?;
        // read_dir's own descriptor is among those counted.
        p.open_fds = fds.saturating_sub(1);
        Some(p)
    }
}

/// `/proc/self/stat` and `/proc/stat` (for the boot time) read into process stats (`open_fds` 0).
pub fn parse_stat(stat: &str, proc_stat: &str, ticks: f64, page: u64) -> Option<ProcessStats> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers from proc(5), counted from `state` (field 3) at index 0.
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    let (utime, stime, start, rss) = (num(14)?, num(15)?, num(22)?, num(24)?);
    let btime = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(ProcessStats {
        resident_memory_bytes: rss.saturating_mul(page),
        open_fds: 0,
        cpu_seconds: (utime + stime) as f64 / ticks,
        start_time_seconds: btime as f64 + start as f64 / ticks,
    })
}

/// What only the daemon knows, handed to [`render`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Tasks stored, by kind and state.
    pub tasks: Vec<(TaskKind, TaskState, u64)>,
    pub mode: Mode,
    pub store_errors: u64,
    /// Writes the store took and the commits that held them (0 and 0 on a backend that commits
    /// each write on its own).
    pub store_writes: u64,
    pub store_commits: u64,
    pub version: String,
    pub now_ms: i64,
    pub process: Option<ProcessStats>,
    /// The store's health: commits failing for a full disk, and a failed integrity check.
    pub storage_full: bool,
    pub store_damaged: bool,
}

type Counter = fn(&Metrics) -> &AtomicU64;

/// The unlabelled counters: name, help text, and where each is kept.
const COUNTERS: [(&str, &str, Counter); 8] = [
    (
        "orchestrator_transitions_total",
        "Task transitions committed.",
        |m| &m.transitions,
    ),
    (
        "orchestrator_reclaims_total",
        "Lapsed leases reclaimed.",
        |m| &m.reclaims,
    ),
    (
        "orchestrator_expiries_total",
        "Tasks expired by the sweeper.",
        |m| &m.expiries,
    ),
    ("orchestrator_reloads_ok_total", "Reloads applied.", |m| {
        &m.reloads_ok
    }),
    (
        "orchestrator_reloads_failed_total",
        "Reloads refused or invalid.",
        |m| &m.reloads_failed,
    ),
    (
        "orchestrator_protocol_errors_total",
        "Connections closed for a protocol error.",
        |m| &m.protocol_errors,
    ),
    (
        "orchestrator_requests_total",
        "Requests served on the control socket.",
        |m| &m.requests,
    ),
    (
        "orchestrator_connections_total",
        "Connections accepted on the control socket.",
        |m| &m.connections,
    ),
];

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn labelled(out: &mut String, name: &str, help: &str, names: &[&str], c: &Labelled) {
    header(out, name, "counter", help);
    for (values, n) in c.entries() {
        let _ = writeln!(out, "{name}{{{}}} {n}", labels(names, &values));
    }
}

/// The whole exposition: counters, histograms, then the snapshot's gauges.
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let mut out = String::with_capacity(16 * 1024);
    header(
        &mut out,
        "orchestrator_build_info",
        "gauge",
        "The daemon's version (always 1).",
    );
    let _ = writeln!(
        out,
        "orchestrator_build_info{{version=\"{}\"}} 1",
        escape(&s.version)
    );
    for (name, help, counter) in COUNTERS {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", Metrics::get(counter(m)));
    }
    header(
        &mut out,
        "orchestrator_store_errors_total",
        "counter",
        "Task-store operations that failed (not refusals).",
    );
    let _ = writeln!(out, "orchestrator_store_errors_total {}", s.store_errors);
    for (name, help, n) in [
        (
            "orchestrator_store_writes_total",
            "Writes taken by the store's writer (a submit, a transition, a sweep's batch…; \
             0 on PostgreSQL, where each write commits on its own).",
            s.store_writes,
        ),
        (
            "orchestrator_store_commits_total",
            "Commits that held those writes: writes divided by commits is how many \
             shared one flush to disk.",
            s.store_commits,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {n}");
    }
    labelled(
        &mut out,
        "orchestrator_dispatches_total",
        "Tasks routed to an agent, by agent.",
        &["agent"],
        &m.dispatches,
    );
    labelled(
        &mut out,
        "orchestrator_specialist_spawns_total",
        "Specialist processes started, by agent.",
        &["agent"],
        &m.specialist_spawns,
    );
    labelled(
        &mut out,
        "orchestrator_specialist_failures_total",
        "Tasks that failed in dispatch or in their specialist, by agent and error code.",
        &["agent", "code"],
        &m.specialist_failures,
    );
    labelled(
        &mut out,
        "orchestrator_specialist_timeouts_total",
        "Specialists stopped at their timeout, by agent.",
        &["agent"],
        &m.specialist_timeouts,
    );
    header(
        &mut out,
        "orchestrator_cost_usd_total",
        "counter",
        "Cost the specialists reported, in US dollars, by agent and model.",
    );
    for (values, micro) in m.cost_micro_usd.entries() {
        let usd = micro as f64 / 1e6;
        let _ = writeln!(
            out,
            "orchestrator_cost_usd_total{{{}}} {usd}",
            labels(&["agent", "model"], &values)
        );
    }
    labelled(
        &mut out,
        "orchestrator_tokens_total",
        "Tokens the specialists reported, by agent, model and kind (input, output, cache_read, cache_write).",
        &["agent", "model", "kind"],
        &m.tokens,
    );
    for (name, help, h) in [
        (
            "orchestrator_queue_wait_seconds",
            "Time from submit to start.",
            &m.queue_wait,
        ),
        (
            "orchestrator_specialist_run_seconds",
            "Time a specialist ran, from start to its end.",
            &m.specialist_run,
        ),
        (
            "orchestrator_approval_wait_seconds",
            "Time from awaiting_approval to approval or rejection.",
            &m.approval_wait,
        ),
    ] {
        header(&mut out, name, "histogram", help);
        h.write(&mut out, name, "");
    }
    let name = "orchestrator_request_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time to answer a request, by transport (socket, http) and verb.",
    );
    for (values, h) in m.request_duration.lock().iter() {
        h.write(&mut out, name, &labels(&["transport", "verb"], values));
    }

    header(
        &mut out,
        "orchestrator_tasks",
        "gauge",
        "Tasks stored, by kind and state.",
    );
    for (kind, state, n) in &s.tasks {
        let _ = writeln!(
            out,
            "orchestrator_tasks{{kind=\"{kind}\",state=\"{state}\"}} {n}"
        );
    }
    header(
        &mut out,
        "orchestrator_mode",
        "gauge",
        "The effective mode (1 for the current one).",
    );
    for kind in TaskKind::ALL {
        let _ = writeln!(
            out,
            "orchestrator_mode{{mode=\"{kind}\"}} {}",
            u8::from(kind == s.mode)
        );
    }
    for (name, help, on) in [
        (
            "orchestrator_storage_full",
            "1 while commits fail because the store's disk is full.",
            s.storage_full,
        ),
        (
            "orchestrator_store_damaged",
            "1 once an integrity check found the store damaged (writes refused).",
            s.store_damaged,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", u8::from(on));
    }
    labelled(
        &mut out,
        "orchestrator_notify_delivered_total",
        "Notification events delivered, by sink.",
        &["sink"],
        &m.notify_delivered,
    );
    labelled(
        &mut out,
        "orchestrator_notify_failed_attempts_total",
        "Failed notification delivery attempts, by sink.",
        &["sink"],
        &m.notify_failed_attempts,
    );
    let outbox = m.notify_outbox();
    if !outbox.is_empty() {
        type Figure = fn(&SinkOutbox, i64) -> f64;
        let gauges: [(&str, &str, Figure); 3] = [
            (
                "orchestrator_notify_queued",
                "Notification events waiting for delivery, by sink.",
                |r, _| r.1 as f64,
            ),
            (
                "orchestrator_notify_dead",
                "Notification events given up on (until `orchctl notify retry`), by sink.",
                |r, _| r.2 as f64,
            ),
            (
                "orchestrator_notify_oldest_pending_seconds",
                "Age of the oldest notification event waiting for delivery, by sink.",
                |r, now| r.3.map_or(0.0, |t| ms_to_seconds(now - t).max(0.0)),
            ),
        ];
        for (name, help, figure) in gauges {
            header(&mut out, name, "gauge", help);
            for row in &outbox {
                let _ = writeln!(
                    out,
                    "{name}{{sink=\"{}\"}} {}",
                    escape(&row.0),
                    figure(row, s.now_ms)
                );
            }
        }
    }
    header(
        &mut out,
        "orchestrator_console_streams",
        "gauge",
        "The web console's live event streams open now (one per open console page).",
    );
    let _ = writeln!(
        out,
        "orchestrator_console_streams {}",
        Metrics::get(&m.console_streams)
    );
    header(
        &mut out,
        "orchestrator_oldest_awaiting_approval_seconds",
        "gauge",
        "How long the oldest task in awaiting_approval has waited (0 when none waits).",
    );
    let oldest = m
        .oldest_awaiting_ms()
        .map_or(0.0, |since| ms_to_seconds(s.now_ms - since).max(0.0));
    let _ = writeln!(
        out,
        "orchestrator_oldest_awaiting_approval_seconds {oldest}"
    );

    if let Some(p) = s.process {
        for (name, kind, help, value) in [
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                p.resident_memory_bytes as f64,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                p.open_fds as f64,
            ),
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                p.cpu_seconds,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_others_choose_fold_into_other_past_the_cap() {
        let l = Labelled::default();
        l.add_folding(&["a", "m1", "input"], 1, 2, 1);
        l.add_folding(&["a", "m2", "input"], 2, 2, 1);
        // Full: a new model is counted as other; the models already kept still count as themselves.
        l.add_folding(&["a", "m3", "input"], 4, 2, 1);
        l.add_folding(&["a", "m4", "input"], 8, 2, 1);
        l.add_folding(&["a", "m1", "input"], 16, 2, 1);
        assert_eq!(l.get(&["a", "m1", "input"]), 17);
        assert_eq!(l.get(&["a", "m2", "input"]), 2);
        assert_eq!(l.get(&["a", "m3", "input"]), 0);
        assert_eq!(l.get(&["a", "other", "input"]), 12);
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            tasks: vec![(TaskKind::Live, TaskState::Queued, 3)],
            mode: TaskKind::Shadow,
            store_errors: 2,
            store_writes: 640,
            store_commits: 10,
            version: "1.2.3".into(),
            now_ms: 10_000,
            process: Some(ProcessStats {
                resident_memory_bytes: 4096,
                open_fds: 7,
                cpu_seconds: 1.5,
                start_time_seconds: 1_700_000_000.25,
            }),
            storage_full: true,
            store_damaged: false,
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let m = Metrics::default();
        m.queue_wait.observe(0.2);
        m.queue_wait.observe(2.0);
        m.queue_wait.observe(1e9);
        let text = render(&m, &snapshot());
        assert_eq!(
            line(&text, "orchestrator_queue_wait_seconds_bucket{le=\"0.1\"}"),
            "orchestrator_queue_wait_seconds_bucket{le=\"0.1\"} 0"
        );
        assert!(text.contains("orchestrator_queue_wait_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(text.contains("orchestrator_queue_wait_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("orchestrator_queue_wait_seconds_bucket{le=\"86400\"} 2\n"));
        assert!(text.contains("orchestrator_queue_wait_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("orchestrator_queue_wait_seconds_count 3\n"));
        assert!(text.contains("orchestrator_queue_wait_seconds_sum 1000000002.2\n"));
    }

    #[test]
    fn labelled_counters_and_latency_carry_their_labels_escaped() {
        let m = Metrics::default();
        m.specialist_failures.inc(&["coder", "specialist_timeout"]);
        m.specialist_failures.inc(&["coder", "specialist_timeout"]);
        m.dispatches.inc(&["we\"ird\\"]);
        m.request_duration.observe(&["http", "GET /metrics"], 0.003);
        let text = render(&m, &snapshot());
        assert!(text.contains(
            "orchestrator_specialist_failures_total{agent=\"coder\",code=\"specialist_timeout\"} 2\n"
        ));
        assert!(text.contains("orchestrator_dispatches_total{agent=\"we\\\"ird\\\\\"} 1\n"));
        assert!(text.contains(
            "orchestrator_request_duration_seconds_bucket{transport=\"http\",verb=\"GET /metrics\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "orchestrator_request_duration_seconds_count{transport=\"http\",verb=\"GET /metrics\"} 1\n"
        ));
    }

    #[test]
    fn the_snapshot_gives_gauges_build_info_and_process_metrics() {
        let m = Metrics::default();
        let text = render(&m, &snapshot());
        assert!(text.contains("orchestrator_build_info{version=\"1.2.3\"} 1\n"));
        assert!(text.contains("orchestrator_store_errors_total 2\n"));
        assert!(text.contains("orchestrator_store_writes_total 640\n"));
        assert!(text.contains("orchestrator_store_commits_total 10\n"));
        assert!(text.contains("orchestrator_tasks{kind=\"live\",state=\"queued\"} 3\n"));
        assert!(text.contains("orchestrator_mode{mode=\"shadow\"} 1\n"));
        assert!(text.contains("orchestrator_mode{mode=\"live\"} 0\n"));
        assert!(text.contains("process_open_fds 7\n"));
        assert!(text.contains("process_start_time_seconds 1700000000.25\n"));
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("orchestrator_oldest_awaiting_approval_seconds 0\n"));
        assert!(text.contains("orchestrator_storage_full 1\n"));
        assert!(text.contains("orchestrator_store_damaged 0\n"));
    }

    #[test]
    fn approval_waits_follow_the_transitions() {
        let m = Metrics::default();
        let s = snapshot();
        m.approval_transition(
            "a",
            Some(TaskState::InProgress),
            TaskState::AwaitingApproval,
            "complete",
            1_000,
        );
        m.approval_transition(
            "b",
            Some(TaskState::InProgress),
            TaskState::AwaitingApproval,
            "complete",
            4_000,
        );
        assert!(render(&m, &s).contains("orchestrator_oldest_awaiting_approval_seconds 9\n"));
        // The approval warning is an event within the state: the wait goes on from its start.
        m.approval_transition(
            "a",
            Some(TaskState::AwaitingApproval),
            TaskState::AwaitingApproval,
            "approval_warning",
            5_000,
        );
        assert!(render(&m, &s).contains("orchestrator_oldest_awaiting_approval_seconds 9\n"));
        m.approval_transition(
            "a",
            Some(TaskState::AwaitingApproval),
            TaskState::Done,
            "approve",
            7_000,
        );
        assert_eq!(m.approval_wait.count(), 1);
        assert!(render(&m, &s).contains("orchestrator_approval_wait_seconds_sum 6\n"));
        assert!(render(&m, &s).contains("orchestrator_oldest_awaiting_approval_seconds 6\n"));
        // Expiry ends the wait without a decision to observe.
        m.approval_transition(
            "b",
            Some(TaskState::AwaitingApproval),
            TaskState::Expired,
            "expire",
            8_000,
        );
        assert_eq!(m.approval_wait.count(), 1);
        assert!(render(&m, &s).contains("orchestrator_oldest_awaiting_approval_seconds 0\n"));
        m.reset_awaiting([("c".to_string(), 2_500)]);
        assert!(render(&m, &s).contains("orchestrator_oldest_awaiting_approval_seconds 7.5\n"));
        // A harness fixture resting in awaiting_approval waits for nobody.
        m.not_for_approval("h");
        m.approval_transition(
            "h",
            Some(TaskState::InProgress),
            TaskState::AwaitingApproval,
            "complete",
            0,
        );
        assert!(render(&m, &s).contains("orchestrator_oldest_awaiting_approval_seconds 7.5\n"));
        // Nor after the sweeper warns about it.
        m.approval_transition(
            "h",
            Some(TaskState::AwaitingApproval),
            TaskState::AwaitingApproval,
            "approval_warning",
            500,
        );
        assert!(render(&m, &s).contains("orchestrator_oldest_awaiting_approval_seconds 7.5\n"));
    }

    #[test]
    fn proc_stat_is_read_past_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid … utime(14)=250 stime(15)=150 … starttime(22)=1000 vsize rss(24)=300
        let stat = "42 (orch (d) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 8 0 1000 123456 300 18446744073709551615";
        let p = parse_stat(stat, "cpu 1 2 3\nbtime 1700000000\n", 100.0, 4096).unwrap();
        assert_eq!(p.resident_memory_bytes, 300 * 4096);
        assert_eq!(p.cpu_seconds, 4.0);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert!(parse_stat("garbage", "btime 1", 100.0, 4096).is_none());
        assert!(ProcessStats::read_self()
            .is_some_and(|p| p.resident_memory_bytes > 0 && p.open_fds >= 3));
    }
}
