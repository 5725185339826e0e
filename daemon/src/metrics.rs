//! Counters for `orchctl metrics` (Prometheus text exposition).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub transitions: AtomicU64,
    pub reclaims: AtomicU64,
    pub expiries: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub specialist_spawns: AtomicU64,
    pub specialist_failures: AtomicU64,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

type Counter = fn(&Metrics) -> &AtomicU64;

/// Every counter `orchctl metrics` exposes: name, help text, and where it is kept.
const COUNTERS: [(&str, &str, Counter); 10] = [
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
        "orchestrator_specialist_spawns_total",
        "Specialist processes started.",
        |m| &m.specialist_spawns,
    ),
    (
        "orchestrator_specialist_failures_total",
        "Specialists that failed, timed out or could not start.",
        |m| &m.specialist_failures,
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

/// Prometheus text exposition (version 0.0.4) of the counters and the task counts.
pub fn render(d: &crate::daemon::Daemon) -> String {
    use orchestrator_proto::task::{TaskKind, TaskState};
    use std::fmt::Write;
    let m = &d.metrics;
    let mut out = String::new();
    for (name, help, counter) in COUNTERS {
        let value = Metrics::get(counter(m));
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let counts = d.store.counts();
    let _ = writeln!(out, "# HELP orchestrator_tasks Tasks stored, by kind and state.\n# TYPE orchestrator_tasks gauge");
    for kind in TaskKind::ALL {
        for state in TaskState::ALL {
            let _ = writeln!(
                out,
                "orchestrator_tasks{{kind=\"{kind}\",state=\"{state}\"}} {}",
                counts.get(kind, state)
            );
        }
    }
    let mode = d.mode().effective;
    let _ = writeln!(out, "# HELP orchestrator_mode The effective mode (1 for the current one).\n# TYPE orchestrator_mode gauge");
    for kind in TaskKind::ALL {
        let _ = writeln!(
            out,
            "orchestrator_mode{{mode=\"{kind}\"}} {}",
            u8::from(kind == mode)
        );
    }
    crate::notify::render_metrics(d, &mut out);
    out
}
