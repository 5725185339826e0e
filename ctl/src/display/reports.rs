//! Replies to operations: route previews, gate runs, the shadow summary, sweeps, reloads and
//! notification sinks.

use super::tasks::usage_line;
use super::{print_json, Format, Output};
use crate::client::exit;
use orchestrator_proto::message::{
    GateRunReport, ReloadReport, RouteDecision, ShadowSummary, SinkStatus, SweepReport,
};
use std::io;

pub(super) fn notify_sinks(sinks: &[SinkStatus], format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        print_json(o, &sinks)?;
        return Ok(exit::OK);
    }
    if sinks.is_empty() {
        writeln!(o.out, "no [[notify]] sinks configured")?;
        return Ok(exit::OK);
    }
    writeln!(
        o.out,
        "{:<16} {:>7} {:>5} {:>9} {:>9} {:>6}  TARGET / LAST ERROR",
        "SINK", "PENDING", "DEAD", "OLDEST", "DELIVERED", "FAILED"
    )?;
    for s in sinks {
        let oldest = s
            .oldest_pending_secs
            .map(|secs| format!("{secs}s"))
            .unwrap_or_else(|| "-".into());
        writeln!(
            o.out,
            "{:<16} {:>7} {:>5} {:>9} {:>9} {:>6}  {}",
            s.name,
            s.pending,
            s.dead,
            oldest,
            s.delivered,
            s.failed_attempts,
            s.target.as_deref().unwrap_or("(no longer configured)")
        )?;
        if let Some(e) = &s.last_error {
            writeln!(o.out, "{:<16} last error: {e}", "")?;
        }
    }
    Ok(exit::OK)
}

pub(super) fn route(d: &RouteDecision, format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        print_json(o, d)?;
        return Ok(exit::OK);
    }
    writeln!(
        o.out,
        "agent:     {}{}",
        d.assigned_agent_id,
        if d.agent_configured {
            ""
        } else {
            " (no [agents] entry)"
        }
    )?;
    writeln!(
        o.out,
        "rule:      {}",
        d.matched_rule_id.as_deref().unwrap_or("(default route)")
    )?;
    writeln!(
        o.out,
        "fallback:  {}",
        if d.fallback_used { "yes" } else { "no" }
    )?;
    if !d.capability_matches.is_empty() {
        writeln!(
            o.out,
            "matched capabilities: {}",
            d.capability_matches.join(", ")
        )?;
    }
    if d.requires_approval {
        writeln!(
            o.out,
            "approval:  required ({})",
            d.approval_reasons.join("; ")
        )?;
    } else {
        writeln!(o.out, "approval:  not required")?;
    }
    if !d.shadowed_rule_ids.is_empty() {
        writeln!(
            o.out,
            "shadowed:  {} (same priority, also matched; file order decided)",
            d.shadowed_rule_ids.join(", ")
        )?;
    }
    Ok(exit::OK)
}

pub(super) fn gate_run(g: &GateRunReport, format: Format, o: &mut Output) -> io::Result<u8> {
    let code = if g.passed == g.total {
        exit::OK
    } else {
        exit::FAILED
    };
    if format == Format::Json {
        print_json(o, g)?;
        return Ok(code);
    }
    writeln!(
        o.out,
        "synthetic harness: {}/{} fixtures passed",
        g.passed, g.total
    )?;
    for f in &g.fixtures {
        let agent = f.actual_agent_id.as_deref().unwrap_or("none");
        let state = f.actual_state.map(|s| s.as_str()).unwrap_or("none");
        if f.ok {
            writeln!(o.out, "ok   {} → {agent} ({state})", f.label)?;
        } else {
            writeln!(
                o.out,
                "FAIL {} → {agent} ({state}): {}",
                f.label,
                f.reasons.join("; ")
            )?;
        }
    }
    Ok(code)
}

pub(super) fn shadow(s: &ShadowSummary, format: Format, o: &mut Output) -> io::Result<u8> {
    let code = if s.passed { exit::OK } else { exit::FAILED };
    if format == Format::Json {
        print_json(o, s)?;
        return Ok(code);
    }
    writeln!(
        o.out,
        "shadow summary, last {} h: {} tasks",
        s.window_hours, s.total
    )?;
    if let (Some(oldest), Some(newest)) = (&s.oldest, &s.newest) {
        writeln!(o.out, "window span:  {oldest} → {newest}")?;
    }
    for (state, n) in &s.by_state {
        writeln!(o.out, "  {state:<18} {n}")?;
    }
    if !s.failures_by_code.is_empty() {
        writeln!(o.out, "failures by code:")?;
        for (code, n) in &s.failures_by_code {
            writeln!(o.out, "  {code:<18} {n}")?;
        }
    }
    if let Some(d) = &s.duration {
        writeln!(
            o.out,
            "duration ms:  mean {}  p50 {}  p95 {}  max {}",
            d.mean_ms, d.p50_ms, d.p95_ms, d.max_ms
        )?;
    }
    if !s.per_agent.is_empty() {
        writeln!(o.out, "per agent:")?;
        for (agent, n) in &s.per_agent {
            writeln!(o.out, "  {agent:<18} {n}")?;
        }
    }
    for (title, by) in [
        ("cost per agent:", &s.usage_by_agent),
        ("cost per model:", &s.usage_by_model),
    ] {
        if !by.is_empty() {
            writeln!(o.out, "{title}")?;
            for (name, u) in by {
                let name = if name.is_empty() { "(unnamed)" } else { name };
                writeln!(o.out, "  {name:<18} {}", usage_line(u))?;
            }
        }
    }
    writeln!(
        o.out,
        "would require approval in live: {}",
        s.would_require_approval
    )?;
    writeln!(o.out, "minimum tasks for the gate: {}", s.min_tasks)?;
    writeln!(o.out, "verdict: {}", s.verdict)?;
    Ok(code)
}

pub(super) fn sweep(s: &SweepReport, format: Format, o: &mut Output) -> io::Result<u8> {
    let code = if s.errors.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    };
    if format == Format::Json {
        print_json(o, s)?;
        return Ok(code);
    }
    writeln!(
o.out,
        "sweep at {} took {} ms: {} expired, {} reclaimed ({} re-queued), {} deleted ({} task dirs removed)",
        s.started_at, s.duration_ms, s.expired, s.reclaimed, s.requeued, s.deleted, s.deleted_files
    )?;
    for e in &s.errors {
        writeln!(o.out, "error: {e}")?;
    }
    Ok(code)
}

pub(super) fn reload(r: &ReloadReport, format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        print_json(o, r)?;
        return Ok(exit::OK);
    }
    writeln!(o.out, "{}", r.message)?;
    writeln!(o.out, "mode: {}", r.mode)?;
    Ok(exit::OK)
}
