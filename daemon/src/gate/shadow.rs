//! The shadow gate: what shadow mode did inside a window, and whether that is evidence enough to go
//! live. [`summarize`] is pure; `tasks::gate::shadow_summary` feeds it from the store.

use crate::clock::rfc3339;
use crate::store::UsageRow;
use orchestrator_proto::message::{DurationStats, ShadowSummary};
use orchestrator_proto::task::{TaskKind, TaskState, Usage};
use std::collections::BTreeMap;

pub use crate::store::ShadowRow;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest-rank: the smallest value with at least p of the data at or below it.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Count one more under `key`, allocating the key only the first time it is seen.
fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

pub fn summarize(rows: &[ShadowRow], window_hours: u32, min_tasks: u64) -> ShadowSummary {
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_agent: BTreeMap<String, u64> = BTreeMap::new();
    let mut durations: Vec<u64> = Vec::new();
    let mut would = 0;
    for r in rows {
        bump(&mut by_state, r.state.as_str());
        if r.state == TaskState::Failed {
            bump(
                &mut failures_by_code,
                r.error_code.as_deref().unwrap_or("unknown"),
            );
        }
        bump(&mut per_agent, r.agent.as_deref().unwrap_or("(unassigned)"));
        if let Some(done) = r.completed_ms {
            durations.push((done - r.created_ms).max(0) as u64);
        }
        if r.would_require_approval {
            would += 1;
        }
    }
    durations.sort_unstable();
    let duration = (!durations.is_empty()).then(|| DurationStats {
        mean_ms: durations.iter().sum::<u64>() / durations.len() as u64,
        p50_ms: percentile(&durations, 0.50),
        p95_ms: percentile(&durations, 0.95),
        max_ms: durations.last().copied().unwrap_or(0),
    });
    let total = rows.len() as u64;
    let failed: u64 = failures_by_code.values().sum();
    let (passed, verdict) = if total == 0 {
        (false, format!("FAIL: no shadow tasks in the last {window_hours} h; there is no evidence to go live on"))
    } else if failed > 0 {
        (
            false,
            format!("FAIL: {failed} of {total} shadow tasks failed in the last {window_hours} h"),
        )
    } else if total < min_tasks {
        (false, format!("FAIL: only {total} shadow tasks in the last {window_hours} h; the gate needs at least {min_tasks}"))
    } else {
        (
            true,
            format!("PASS: {total} shadow tasks in the last {window_hours} h, none failed"),
        )
    };
    ShadowSummary {
        window_hours,
        total,
        by_state,
        failures_by_code,
        duration,
        per_agent,
        would_require_approval: would,
        oldest: rows.iter().map(|r| r.created_ms).min().map(rfc3339),
        newest: rows.iter().map(|r| r.created_ms).max().map(rfc3339),
        min_tasks,
        passed,
        verdict,
        usage_by_agent: BTreeMap::new(),
        usage_by_model: BTreeMap::new(),
    }
}

/// What shadow tasks reported they used, summed per agent and per model.
pub fn usage_totals(rows: &[UsageRow]) -> (BTreeMap<String, Usage>, BTreeMap<String, Usage>) {
    let (mut by_agent, mut by_model) = (BTreeMap::new(), BTreeMap::<String, Usage>::new());
    for r in rows.iter().filter(|r| r.kind == TaskKind::Shadow) {
        let agent = r.agent.clone().unwrap_or_default();
        let a: &mut Usage = by_agent.entry(agent).or_default();
        *a = a.add(&r.usage);
        let m = by_model
            .entry(r.usage.model.clone().unwrap_or_default())
            .or_default();
        *m = m.add(&r.usage);
    }
    (by_agent, by_model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: TaskState, code: Option<&str>, dur: Option<i64>) -> ShadowRow {
        ShadowRow {
            state,
            error_code: code.map(Into::into),
            agent: Some("coder".into()),
            created_ms: 1_000,
            completed_ms: dur.map(|d| 1_000 + d),
            would_require_approval: true,
        }
    }

    #[test]
    fn failures_fail_the_gate_with_figures() {
        let rows = vec![
            row(TaskState::Done, None, Some(100)),
            row(TaskState::Done, None, Some(300)),
            row(TaskState::Failed, Some("specialist_timeout"), Some(1000)),
        ];
        let s = summarize(&rows, 24, 1);
        assert!(!s.passed);
        assert_eq!(s.total, 3);
        assert_eq!(s.by_state["done"], 2);
        assert_eq!(s.failures_by_code["specialist_timeout"], 1);
        let d = s.duration.unwrap();
        assert_eq!(
            (d.mean_ms, d.p50_ms, d.p95_ms, d.max_ms),
            (466, 300, 1000, 1000)
        );
        assert_eq!(s.would_require_approval, 3);
        assert_eq!(s.per_agent["coder"], 3);
    }

    #[test]
    fn no_evidence_is_not_a_pass() {
        let s = summarize(&[], 24, 0);
        assert!(!s.passed);
        assert!(s.verdict.contains("no evidence"));
    }

    #[test]
    fn too_few_tasks_is_not_a_pass() {
        let s = summarize(&[row(TaskState::Done, None, Some(5))], 24, 2);
        assert!(!s.passed);
        let s = summarize(&[row(TaskState::Done, None, Some(5))], 24, 1);
        assert!(s.passed);
    }
}
