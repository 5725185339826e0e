//! The shadow gate: what shadow mode did inside a window, and whether that is evidence enough to go
//! live. [`summarize`] is pure; `tasks::gate::shadow_summary` feeds it from the store.

use crate::clock::rfc3339;
use crate::config::Config;
use crate::store::UsageRow;
use orchestrator_proto::message::{DurationStats, ShadowSummary};
use orchestrator_proto::task::{TaskKind, TaskState, Usage};
use std::collections::BTreeMap;

pub use crate::store::ShadowTally;

/// `gate.shadow_window` in whole hours (at least one): the window the flip gate summarises.
pub fn gate_window_hours(cfg: &Config) -> u32 {
    (cfg.gate.shadow_window.as_secs() / 3600).clamp(1, u64::from(u32::MAX)) as u32
}

/// The value at rank `p` of the nearest-rank percentile, found in place without sorting the whole.
fn percentile_of(values: &mut [u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    // Nearest-rank: the smallest value with at least p of the data at or below it.
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    *values.select_nth_unstable(rank - 1).1
}

/// Counts keyed by name, `None` shown as `missing`; two keys that show the same add up.
fn named(list: Vec<(Option<String>, u64)>, missing: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, n) in list {
        *out.entry(k.unwrap_or_else(|| missing.to_string()))
            .or_insert(0) += n;
    }
    out
}

/// What shadow mode did in the window the tally covers, and whether the shadow gate passes on it.
pub fn summarize(tally: ShadowTally, window_hours: u32, min_tasks: u64) -> ShadowSummary {
    let ShadowTally {
        total,
        by_state: states,
        failures_by_code,
        per_agent,
        mut durations_ms,
        would_require_approval,
        oldest_ms,
        newest_ms,
    } = tally;
    let by_state: BTreeMap<String, u64> = TaskState::ALL
        .iter()
        .zip(states)
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.as_str().to_string(), n))
        .collect();
    let failures_by_code = named(failures_by_code, "unknown");
    let per_agent = named(per_agent, "(unassigned)");
    let duration = (!durations_ms.is_empty()).then(|| DurationStats {
        // Summed wide: a stored duration is whatever the row says.
        mean_ms: (durations_ms.iter().map(|&d| u128::from(d)).sum::<u128>()
            / durations_ms.len() as u128) as u64,
        p50_ms: percentile_of(&mut durations_ms, 0.50),
        p95_ms: percentile_of(&mut durations_ms, 0.95),
        max_ms: durations_ms.iter().copied().max().unwrap_or(0),
    });
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
        would_require_approval,
        oldest: oldest_ms.map(rfc3339),
        newest: newest_ms.map(rfc3339),
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
    use crate::store::ShadowRow;

    /// One shadow task of the window: its state, failure code, agent and duration.
    struct Row {
        state: TaskState,
        code: Option<&'static str>,
        agent: Option<&'static str>,
        dur: Option<i64>,
    }

    fn row(state: TaskState, code: Option<&'static str>, dur: Option<i64>) -> Row {
        Row {
            state,
            code,
            agent: Some("coder"),
            dur,
        }
    }

    /// The summary of `rows`, each created at 1,000 ms and would have needed approval.
    fn summary(rows: &[Row], window_hours: u32, min_tasks: u64) -> ShadowSummary {
        let mut t = ShadowTally::default();
        for r in rows {
            t.add(&ShadowRow {
                state: r.state,
                error_code: r.code,
                agent: r.agent,
                created_ms: 1_000,
                completed_ms: r.dur.map(|d| 1_000 + d),
                would_require_approval: true,
            });
        }
        summarize(t, window_hours, min_tasks)
    }

    #[test]
    fn failures_fail_the_gate_with_figures() {
        let rows = vec![
            row(TaskState::Done, None, Some(100)),
            row(TaskState::Done, None, Some(300)),
            row(TaskState::Failed, Some("specialist_timeout"), Some(1000)),
        ];
        let s = summary(&rows, 24, 1);
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
    fn each_state_is_counted_under_its_own_name() {
        for state in TaskState::ALL {
            let mut t = ShadowTally::default();
            t.add(&ShadowRow {
                state,
                error_code: None,
                agent: None,
                created_ms: 0,
                completed_ms: None,
                would_require_approval: false,
            });
            let s = summarize(t, 24, 0);
            assert_eq!(s.by_state.len(), 1);
            assert_eq!(s.by_state[state.as_str()], 1, "{state:?}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_in_any_order() {
        // 1..=100 in a scrambled order: the tally keeps durations as they come.
        let rows: Vec<Row> = (0..100u64)
            .map(|i| row(TaskState::Done, None, Some(((i * 37) % 100 + 1) as i64)))
            .collect();
        let d = summary(&rows, 24, 0).duration.unwrap();
        assert_eq!((d.mean_ms, d.p50_ms, d.p95_ms, d.max_ms), (50, 50, 95, 100));
        let one = summary(&rows[..1], 24, 0).duration.unwrap();
        assert_eq!((one.p50_ms, one.p95_ms, one.max_ms), (1, 1, 1));
    }

    #[test]
    fn a_missing_code_and_agent_are_named() {
        let mut r = row(TaskState::Failed, None, None);
        r.agent = None;
        let coded = row(TaskState::Failed, Some("unknown"), None);
        let s = summary(&[r, coded], 24, 0);
        assert_eq!(s.failures_by_code["unknown"], 2);
        assert_eq!(s.per_agent["(unassigned)"], 1);
        assert_eq!(s.per_agent["coder"], 1);
    }

    #[test]
    fn no_evidence_is_not_a_pass() {
        let s = summary(&[], 24, 0);
        assert!(!s.passed);
        assert!(s.verdict.contains("no evidence"));
    }

    #[test]
    fn too_few_tasks_is_not_a_pass() {
        let s = summary(&[row(TaskState::Done, None, Some(5))], 24, 2);
        assert!(!s.passed);
        let s = summary(&[row(TaskState::Done, None, Some(5))], 24, 1);
        assert!(s.passed);
    }
}
