//! Agents as operators see them (`orchctl agents`, `status`): paused or not, their load, and what
//! their tasks cost today and this month; and pausing or resuming one by hand.

use super::Actor;
use crate::daemon::Daemon;
use crate::dispatch::pauses;
use crate::machine::validate_reason;
use crate::store::{StoredPause, UsageRow};
use orchestrator_proto::message::{AgentStatus, PauseCause};
use orchestrator_proto::{ErrorCode, WireError};
use std::collections::HashMap;

const DAY_MS: i64 = 86_400_000;

/// Midnight (UTC) of the day `ms` falls in, and of the first day of its month.
pub fn day_and_month_start(ms: i64) -> (i64, i64) {
    let days = ms.div_euclid(DAY_MS);
    let (y, m, _) = civil_from_days(days);
    (days * DAY_MS, days_from_civil(y, m, 1) * DAY_MS)
}

// Howard Hinnant's calendar algorithms (proleptic Gregorian), days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Cost per agent of the rows since `since_ms`.
fn cost_by_agent(rows: &[UsageRow], since_ms: i64) -> HashMap<&str, f64> {
    let mut out: HashMap<&str, f64> = HashMap::new();
    for r in rows.iter().filter(|r| r.started_ms >= since_ms) {
        if let (Some(agent), Some(cost)) = (r.agent.as_deref(), r.usage.cost_usd) {
            *out.entry(agent).or_default() += cost;
        }
    }
    out
}

/// Every configured agent with a command, in id order.
pub async fn list(d: &Daemon) -> Result<Vec<AgentStatus>, WireError> {
    let now = d.clock.now_ms();
    let (day, month) = day_and_month_start(now);
    let rows = d.store.usage_since(month).await?;
    let (today, this_month) = (cost_by_agent(&rows, day), cost_by_agent(&rows, month));
    Ok(statuses(d, now, &today, &this_month))
}

/// [`list`] without the costs (zero), from memory only: for `status`.
pub fn in_memory(d: &Daemon) -> Vec<AgentStatus> {
    statuses(d, d.clock.now_ms(), &HashMap::new(), &HashMap::new())
}

fn statuses(
    d: &Daemon,
    now: i64,
    today: &HashMap<&str, f64>,
    this_month: &HashMap<&str, f64>,
) -> Vec<AgentStatus> {
    let cfg = d.config();
    cfg.configured_agents
        .iter()
        .filter(|id| cfg.agent(id).is_some_and(|a| !a.command.is_empty()))
        .map(|id| {
            let (running, queued) = d.pauses.load_of(id);
            AgentStatus {
                agent: id.clone(),
                paused: d
                    .pauses
                    .get(id)
                    .filter(|p| p.holds(now))
                    .map(|p| p.to_wire()),
                running,
                queued,
                cost_today_usd: today.get(id.as_str()).copied().unwrap_or(0.0),
                cost_month_usd: this_month.get(id.as_str()).copied().unwrap_or(0.0),
                budget_daily_usd: None,
                budget_monthly_usd: None,
            }
        })
        .collect()
}

fn check(d: &Daemon, agent: &str, reason: &str) -> Result<String, WireError> {
    let cfg = d.config();
    if !cfg.configured_agents.contains(agent) {
        let known: Vec<&str> = cfg.configured_agents.iter().map(String::as_str).collect();
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!(
                "no agent {agent:?} in the config; configured: {}",
                known.join(", ")
            ),
        )
        .with("agent", agent));
    }
    Ok(validate_reason(reason)
        .map_err(|m| WireError::new(ErrorCode::InvalidReason, m))?
        .to_string())
}

/// Pause the agent until resumed: it starts nothing; running specialists finish.
pub async fn pause(
    d: &Daemon,
    actor: &Actor,
    agent: &str,
    reason: &str,
) -> Result<Vec<AgentStatus>, WireError> {
    let reason = check(d, agent, reason)?;
    let p = StoredPause {
        agent: agent.to_string(),
        cause: PauseCause::Operator,
        until_ms: None,
        reason,
        by: actor.name.clone(),
        at_ms: d.clock.now_ms(),
    };
    pauses::pause(d, p).await?;
    list(d).await
}

/// Lift the agent's pause, whatever paused it.
pub async fn resume(
    d: &Daemon,
    actor: &Actor,
    agent: &str,
    reason: &str,
) -> Result<Vec<AgentStatus>, WireError> {
    let reason = check(d, agent, reason)?;
    let lifted = pauses::resume(d, agent).await?;
    tracing::warn!(AGENT = %agent, by = %actor.name, reason = %reason, lifted = ?lifted.map(|p| p.reason), "agent resumed by an operator");
    list(d).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_start_at_utc_midnight() {
        // 2026-12-02T06:54:46Z
        let (day, month) = day_and_month_start(1_796_194_486_000);
        assert_eq!(crate::clock::rfc3339(day), "2026-12-02T00:00:00.000Z");
        assert_eq!(crate::clock::rfc3339(month), "2026-12-01T00:00:00.000Z");
        // 2024-02-29T23:59:59Z, a leap day.
        let (day, month) = day_and_month_start(1_709_251_199_000);
        assert_eq!(crate::clock::rfc3339(day), "2024-02-29T00:00:00.000Z");
        assert_eq!(crate::clock::rfc3339(month), "2024-02-01T00:00:00.000Z");
    }
}
