//! `status`, `nodes` and `agents`: the daemon, its store, its peers and its agents.

use super::{print_json, response, shown, Format, Output};
use crate::client::exit;
use orchestrator_proto::message::{
    AgentStatus, NodesReport, PauseCause, Response, StatusReport, StorageStatus,
};
use serde_json::{json, Value};
use std::io;

/// `paused until T: reason`, `paused: reason` (until resumed), or `active`.
pub(super) fn agent_state(a: &AgentStatus) -> String {
    match &a.paused {
        None => "active".into(),
        Some(p) => {
            let cause = match p.cause {
                PauseCause::ProviderLimit => "provider limit",
                PauseCause::Budget => "over budget",
                PauseCause::Operator => "by operator",
            };
            // A provider's limit pauses with the reason its specialist gave.
            let reason = shown(&p.reason);
            match &p.until {
                Some(t) => format!("paused until {t}: {reason} ({cause}, by {})", p.by),
                None => format!("paused: {reason} ({cause}, by {})", p.by),
            }
        }
    }
}

pub(super) fn usd(cost: f64, budget: Option<f64>) -> String {
    match budget {
        Some(b) => format!("${cost:.2} of ${b:.2}"),
        None => format!("${cost:.2}"),
    }
}

pub(super) fn agents(list: &[AgentStatus], format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        print_json(o, &list)?;
        return Ok(exit::OK);
    }
    if list.is_empty() {
        writeln!(o.out, "no agents with a command in the config")?;
        return Ok(exit::OK);
    }
    writeln!(
        o.out,
        "{:<16} {:>7} {:>6} {:>18} {:>18}  STATE",
        "AGENT", "RUNNING", "QUEUED", "TODAY", "THIS MONTH"
    )?;
    for a in list {
        writeln!(
            o.out,
            "{:<16} {:>7} {:>6} {:>18} {:>18}  {}",
            a.agent,
            a.running,
            a.queued,
            usd(a.cost_today_usd, a.budget_daily_usd),
            usd(a.cost_month_usd, a.budget_monthly_usd),
            agent_state(a)
        )?;
    }
    Ok(exit::OK)
}

/// `status`, with the node that answered when the daemon told it.
pub fn status_response(
    r: &Response,
    node: Option<&NodesReport>,
    format: Format,
    o: &mut Output,
) -> io::Result<u8> {
    match r {
        Response::Status(s) => status(s, None, node, format, o),
        Response::StatusWithStorage(s, storage) => status(s, Some(storage), node, format, o),
        other => response(other, format, o),
    }
}

/// `nodes`: one line per node, the one that answered marked.
pub(super) fn nodes(r: &NodesReport, format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        print_json(o, r)?;
        return Ok(exit::OK);
    }
    if !r.shared {
        writeln!(o.out, "single node (the store is this daemon's own)")?;
    }
    writeln!(
        o.out,
        "{:<2}{:<32} {:<24} {:<26} {:<7} {:<8} AGENTS",
        "", "NODE", "ADDRESS", "LAST HEARTBEAT", "LEADER", "RUNNING"
    )?;
    for n in &r.nodes {
        writeln!(
            o.out,
            "{:<2}{:<32} {:<24} {:<26} {:<7} {:<8} {}",
            if n.id == r.this { "*" } else { "" },
            n.id,
            n.address,
            n.last_heartbeat,
            if n.leader { "yes" } else { "no" },
            n.running,
            if n.agents.is_empty() {
                "-".to_string()
            } else {
                n.agents.join(",")
            }
        )?;
    }
    Ok(exit::OK)
}

/// This node's id and whether it leads, as `status` shows it.
pub(super) fn node_line(r: &NodesReport) -> String {
    let leads = r.nodes.iter().any(|n| n.id == r.this && n.leader);
    match (r.shared, leads) {
        (false, _) => format!("{} (single node)", r.this),
        (true, true) => format!("{} (leader, {} nodes)", r.this, r.nodes.len()),
        (true, false) => format!("{} ({} nodes)", r.this, r.nodes.len()),
    }
}

pub(super) fn status(
    s: &StatusReport,
    storage: Option<&StorageStatus>,
    node: Option<&NodesReport>,
    format: Format,
    o: &mut Output,
) -> io::Result<u8> {
    if format == Format::Json {
        let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
        if let (Value::Object(map), Some(storage)) = (&mut v, storage) {
            map.insert(
                "storage".into(),
                serde_json::to_value(storage).unwrap_or(Value::Null),
            );
        }
        if let (Value::Object(map), Some(node)) = (&mut v, node) {
            let leader = node.nodes.iter().any(|n| n.id == node.this && n.leader);
            map.insert(
                "node".into(),
                json!({"id": node.this, "shared": node.shared, "leader": leader}),
            );
        }
        print_json(o, &v)?;
        return Ok(exit::OK);
    }
    writeln!(
        o.out,
        "orchestratord {} (pid {}, up {}s)",
        s.daemon_version, s.pid, s.uptime_secs
    )?;
    writeln!(
        o.out,
        "mode:         {} (configured: {}, since {})",
        s.effective_mode, s.configured_mode, s.mode_since
    )?;
    if let Some(note) = &s.mode_note {
        writeln!(o.out, "mode note:    {note}")?;
    }
    if let Some(node) = node {
        writeln!(o.out, "node:         {}", node_line(node))?;
    }
    writeln!(
        o.out,
        "config:       {} (loaded {})",
        s.config_path.as_deref().unwrap_or("built-in defaults"),
        s.config_loaded_at
    )?;
    if let Some(err) = &s.config_error {
        writeln!(o.out, "config error: {err}")?;
        writeln!(o.out, "              (the previous config keeps running)")?;
    }
    for w in &s.config_warnings {
        writeln!(o.out, "warning:      {w}")?;
    }
    writeln!(o.out, "socket:       {}", s.socket)?;
    writeln!(o.out, "state dir:    {}", s.state_dir)?;
    writeln!(o.out, "routing:      fingerprint {}", s.routing_fingerprint)?;
    match &s.latest_gate {
        Some(g) => writeln!(
            o.out,
            "gate:         {}/{} passed at {}{} ({})",
            g.passed,
            g.total,
            g.at,
            g.label
                .as_ref()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default(),
            if g.matches_current {
                "matches the current routing"
            } else {
                "for a different routing fingerprint"
            }
        )?,
        None => writeln!(o.out, "gate:         no synthetic gate run yet")?,
    }
    for ov in &s.pending_overrides {
        writeln!(
            o.out,
            "override:     to {} by {} at {}: {}",
            ov.mode, ov.by, ov.at, ov.reason
        )?;
    }
    if let Some(r) = &s.last_reload {
        writeln!(
            o.out,
            "last reload:  {} {:?} ({}): {}",
            r.at, r.outcome, r.trigger, r.message
        )?;
    }
    match &s.last_sweep {
        Some(w) => writeln!(
            o.out,
            "last sweep:   {} ({} ms): {} expired, {} reclaimed, {} deleted{}",
            w.started_at,
            w.duration_ms,
            w.expired,
            w.reclaimed,
            w.deleted,
            if w.errors.is_empty() {
                String::new()
            } else {
                format!(", {} errors", w.errors.len())
            }
        )?,
        None => writeln!(o.out, "last sweep:   none yet")?,
    }
    if let Some(next) = &s.next_sweep_at {
        writeln!(o.out, "next sweep:   {next}")?;
    }
    if let Some(p) = &s.token_problem {
        writeln!(o.out, "token:        ERROR {p}")?;
    }
    if let Some(h) = &s.http_listen {
        writeln!(o.out, "http:         {h}")?;
    }
    if let Some(st) = storage {
        store_lines(st, o)?;
    }
    for a in s.agents.iter().filter(|a| a.paused.is_some()) {
        writeln!(o.out, "agent:        {} {}", a.agent, agent_state(a))?;
    }
    if s.counts.is_empty() {
        writeln!(o.out, "tasks:        none")?;
    } else {
        writeln!(o.out, "tasks:")?;
        for c in &s.counts {
            writeln!(
                o.out,
                "  {:<10} {:<18} {}",
                c.kind.as_str(),
                c.state.as_str(),
                c.count
            )?;
        }
    }
    Ok(exit::OK)
}

pub(super) fn store_lines(st: &StorageStatus, o: &mut Output) -> io::Result<()> {
    if let Some(since) = &st.full_since {
        writeln!(
            o.out,
            "store:        ERROR disk full since {since}; writes fail until space is freed"
        )?;
    }
    if let Some(why) = &st.damaged {
        writeln!(o.out, "store:        ERROR damaged, writes refused: {why}")?;
    }
    let check = match (&st.last_check, &st.last_check_at) {
        (Some(found), Some(at)) => format!("{found} at {at}"),
        _ => "not run yet".to_string(),
    };
    let running = if st.checking {
        " (a check is running)"
    } else {
        ""
    };
    writeln!(o.out, "integrity:    {check}{running}")?;
    Ok(())
}
