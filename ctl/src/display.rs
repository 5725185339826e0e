//! Rendering replies: tables for people, JSON (the wire field names) for scripts. Each function
//! writes to an [`Output`] rather than to the terminal, so rendering is tested without a daemon, and
//! returns the process exit code the reply calls for.

use crate::client::exit;
use orchestrator_core::config::{Config, ConfigErrors};
use orchestrator_core::credentials::Step;
use orchestrator_proto::message::{
    AgentStatus, GateRunReport, NodesReport, PauseCause, ReloadReport, Response, RouteDecision,
    ShadowSummary, SinkStatus, StatusReport, StorageStatus, SweepReport,
};
use orchestrator_proto::task::{Task, TrajectoryEvent, Usage};
use orchestrator_proto::WireError;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{self, Write};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Where rendering goes: the reply on `out`; notes meant for a person on `err`, so that what a
/// script reads from `out` stays just the reply.
pub struct Output<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

fn print_json<T: Serialize>(o: &mut Output, v: &T) -> io::Result<()> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => writeln!(o.out, "{s}")?,
        Err(e) => writeln!(o.err, "orchctl: cannot encode JSON: {e}")?,
    }
    Ok(())
}

pub fn json_error(e: &WireError, o: &mut Output) -> io::Result<()> {
    print_json(
        o,
        &json!({"error": {"code": e.code.as_str(), "message": e.message, "details": e.details}}),
    )
}

pub fn response(r: &Response, format: Format, o: &mut Output) -> io::Result<u8> {
    match r {
        Response::Status(_) | Response::StatusWithStorage(..) => {
            status_response(r, None, format, o)
        }
        Response::Nodes(n) => nodes(n, format, o),
        Response::Task(t) => task_brief(t, format, o),
        Response::TaskDetail { task, events } => task_detail(task, events, format, o),
        Response::Tasks(ts) => tasks(ts, None, format, o),
        Response::Page(p) => tasks(&p.tasks, p.next.as_deref(), format, o),
        Response::Route(d) => route(d, format, o),
        Response::Synthetic(g) => gate_run(g, format, o),
        Response::ShadowSummary(s) => shadow(s, format, o),
        Response::Sweep(s) => sweep(s, format, o),
        Response::Reload(r) => reload(r, format, o),
        Response::GateOverride(ov) => {
            match format {
                Format::Json => print_json(o, ov)?,
                Format::Table => writeln!(
                    o.out,
                    "override recorded: the next reload to {} is let through (by {}, uid {}, at {}): {}",
                    ov.mode, ov.by, ov.uid, ov.at, ov.reason
                )?,
            }
            Ok(exit::OK)
        }
        Response::Metrics(text) => {
            write!(o.out, "{text}")?;
            Ok(exit::OK)
        }
        Response::WatchStarted => Ok(exit::OK),
        Response::Agents(list) => agents(list, format, o),
        Response::ConsoleLink(link) => {
            match format {
                Format::Json => print_json(o, link)?,
                Format::Table => {
                    writeln!(o.out, "{}", link.url)?;
                    let rights = if link.read_only { " (read-only)" } else { "" };
                    writeln!(
                        o.err,
                        "signs in as {}{rights}; usable once, until {}",
                        link.user, link.expires_at
                    )?;
                }
            }
            Ok(exit::OK)
        }
        Response::NotifySinks(sinks) => notify_sinks(sinks, format, o),
        Response::NotifyTested { event_id } => {
            match format {
                Format::Json => print_json(o, &json!({ "eventId": event_id }))?,
                Format::Table => writeln!(
                    o.out,
                    "queued test event {event_id}; `orchctl notify list` shows whether it was delivered"
                )?,
            }
            Ok(exit::OK)
        }
        Response::NotifyRetried { count } => {
            match format {
                Format::Json => print_json(o, &json!({ "retried": count }))?,
                Format::Table => writeln!(o.out, "{count} dead events are pending again")?,
            }
            Ok(exit::OK)
        }
    }
}

fn notify_sinks(sinks: &[SinkStatus], format: Format, o: &mut Output) -> io::Result<u8> {
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

/// `paused until T: reason`, `paused: reason` (until resumed), or `active`.
fn agent_state(a: &AgentStatus) -> String {
    match &a.paused {
        None => "active".into(),
        Some(p) => {
            let cause = match p.cause {
                PauseCause::ProviderLimit => "provider limit",
                PauseCause::Budget => "over budget",
                PauseCause::Operator => "by operator",
            };
            match &p.until {
                Some(t) => format!("paused until {t}: {} ({cause}, by {})", p.reason, p.by),
                None => format!("paused: {} ({cause}, by {})", p.reason, p.by),
            }
        }
    }
}

fn usd(cost: f64, budget: Option<f64>) -> String {
    match budget {
        Some(b) => format!("${cost:.2} of ${b:.2}"),
        None => format!("${cost:.2}"),
    }
}

fn agents(list: &[AgentStatus], format: Format, o: &mut Output) -> io::Result<u8> {
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

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
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
fn nodes(r: &NodesReport, format: Format, o: &mut Output) -> io::Result<u8> {
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
fn node_line(r: &NodesReport) -> String {
    let leads = r.nodes.iter().any(|n| n.id == r.this && n.leader);
    match (r.shared, leads) {
        (false, _) => format!("{} (single node)", r.this),
        (true, true) => format!("{} (leader, {} nodes)", r.this, r.nodes.len()),
        (true, false) => format!("{} ({} nodes)", r.this, r.nodes.len()),
    }
}

fn status(
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

fn store_lines(st: &StorageStatus, o: &mut Output) -> io::Result<()> {
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

fn task_brief(t: &Task, format: Format, o: &mut Output) -> io::Result<u8> {
    match format {
        Format::Json => print_json(o, t)?,
        Format::Table => {
            writeln!(o.out, "{}", t.id)?;
            writeln!(
                o.err,
                "{} {} agent={}",
                t.kind,
                t.state,
                or_dash(&t.assigned_agent_id)
            )?;
        }
    }
    Ok(exit::OK)
}

/// `model m, 1200 in, 300 out, 50 cache read, $0.0123`: what was reported, nothing else.
fn usage_line(u: &Usage) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &u.model {
        parts.push(format!("model {m}"));
    }
    for (n, what) in [
        (u.input_tokens, "in"),
        (u.output_tokens, "out"),
        (u.cache_read_tokens, "cache read"),
        (u.cache_write_tokens, "cache write"),
    ] {
        if let Some(n) = n {
            parts.push(format!("{n} {what}"));
        }
    }
    if let Some(c) = u.cost_usd {
        parts.push(format!("${c:.4}"));
    }
    if parts.is_empty() {
        "reported, without figures".into()
    } else {
        parts.join(", ")
    }
}

fn task_detail(
    t: &Task,
    events: &[TrajectoryEvent],
    format: Format,
    o: &mut Output,
) -> io::Result<u8> {
    if format == Format::Json {
        let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert(
                "trajectory".into(),
                serde_json::to_value(events).unwrap_or(Value::Null),
            );
        }
        print_json(o, &v)?;
        return Ok(exit::OK);
    }
    writeln!(o.out, "id:          {}", t.id)?;
    writeln!(o.out, "kind:        {}", t.kind)?;
    writeln!(o.out, "state:       {}", t.state)?;
    writeln!(o.out, "goal:        {}", t.goal)?;
    if !t.required_capabilities.is_empty() {
        writeln!(o.out, "requires:    {}", t.required_capabilities.join(", "))?;
    }
    if let Some(w) = &t.workspace_dir {
        writeln!(o.out, "workspace:   {w}")?;
    }
    writeln!(o.out, "agent:       {}", or_dash(&t.assigned_agent_id))?;
    if let Some(r) = &t.routing {
        writeln!(
            o.out,
            "rule:        {}{}",
            r.matched_rule_id.as_deref().unwrap_or("(default route)"),
            if r.fallback_used { " [fallback]" } else { "" }
        )?;
    }
    writeln!(o.out, "submitted:   {} by {}", t.created_at, t.submitted_by)?;
    writeln!(o.out, "expires:     {}", t.expires_at)?;
    if let Some(c) = &t.completed_at {
        writeln!(o.out, "completed:   {c}")?;
    }
    if t.would_require_approval {
        writeln!(o.out, "shadow:      live would have required approval")?;
    }
    if let Some(res) = &t.result {
        if let Some(text) = &res.text {
            writeln!(o.out, "result:      {text}")?;
        }
        if let Some(p) = &res.text_path {
            writeln!(o.out, "result file: {p}")?;
        }
        for a in &res.artefacts {
            writeln!(
                o.out,
                "artefact:    {} ({}, {} bytes)",
                a.path, a.media_type, a.bytes
            )?;
        }
    }
    if let Some(u) = &t.usage {
        writeln!(o.out, "usage:       {}", usage_line(u))?;
    }
    if let Some(r) = &t.rejection {
        writeln!(o.out, "rejection:   by {} at {}: {}", r.by, r.at, r.reason)?;
    }
    if let Some(e) = &t.error {
        writeln!(o.out, "error:       {}: {}", e.code, e.message)?;
        for (k, v) in e.details.iter().flatten() {
            writeln!(o.out, "             {k}: {v}")?;
        }
    }
    writeln!(o.out, "trajectory:")?;
    for ev in events {
        writeln!(
            o.out,
            "  {}  {:<9} {:>17} → {:<17} by {}",
            ev.at,
            ev.action,
            ev.from.map(|s| s.as_str()).unwrap_or("-"),
            ev.to.as_str(),
            ev.actor
        )?;
    }
    Ok(exit::OK)
}

fn tasks(ts: &[Task], next: Option<&str>, format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        print_json(o, &json!({ "tasks": ts, "next": next }))?;
        return Ok(exit::OK);
    }
    if let Some(next) = next {
        // On stderr: the table on stdout stays one line per task.
        writeln!(o.err, "orchctl: more tasks follow; next page from {next}")?;
    }
    writeln!(
        o.out,
        "{:<26}  {:<9}  {:<17}  {:<18}  GOAL",
        "ID", "KIND", "STATE", "AGENT"
    )?;
    for t in ts {
        let goal: String = t.goal.chars().take(60).collect();
        writeln!(
            o.out,
            "{:<26}  {:<9}  {:<17}  {:<18}  {}",
            t.id,
            t.kind.as_str(),
            t.state.as_str(),
            or_dash(&t.assigned_agent_id),
            goal.replace('\n', " ")
        )?;
    }
    Ok(exit::OK)
}

fn route(d: &RouteDecision, format: Format, o: &mut Output) -> io::Result<u8> {
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

fn gate_run(g: &GateRunReport, format: Format, o: &mut Output) -> io::Result<u8> {
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

fn shadow(s: &ShadowSummary, format: Format, o: &mut Output) -> io::Result<u8> {
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

fn sweep(s: &SweepReport, format: Format, o: &mut Output) -> io::Result<u8> {
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

fn reload(r: &ReloadReport, format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        print_json(o, r)?;
        return Ok(exit::OK);
    }
    writeln!(o.out, "{}", r.message)?;
    writeln!(o.out, "mode: {}", r.mode)?;
    Ok(exit::OK)
}

/// One watched event per line, flushed at once: scripts wait on each line as it comes.
pub fn event(ev: &TrajectoryEvent, format: Format, o: &mut Output) -> io::Result<()> {
    match format {
        Format::Json => match serde_json::to_string(ev) {
            Ok(s) => writeln!(o.out, "{s}")?,
            Err(e) => writeln!(o.err, "orchctl: {e}")?,
        },
        Format::Table => writeln!(
            o.out,
            "{} {} {} {} → {} by {}",
            ev.at,
            ev.task_id,
            ev.action,
            ev.from.map(|s| s.as_str()).unwrap_or("-"),
            ev.to,
            ev.actor
        )?,
    }
    o.out.flush()
}

/// `config check`: the warnings and a one-line verdict, or every error found (on `err`, each with
/// its source, as the daemon would log them).
pub fn config_check(
    path: &Path,
    result: &Result<Config, ConfigErrors>,
    format: Format,
    o: &mut Output,
) -> io::Result<u8> {
    match result {
        Ok(cfg) => {
            if format == Format::Json {
                writeln!(
                    o.out,
                    "{}",
                    json!({"path": path, "valid": true, "mode": cfg.mode, "rules": cfg.routing.rules.len(), "warnings": cfg.warnings, "errors": []})
                )?;
            } else {
                for w in &cfg.warnings {
                    writeln!(o.out, "warning: {w}")?;
                }
                writeln!(
                    o.out,
                    "{}: valid (mode {}, {} rules, fingerprint {})",
                    path.display(),
                    cfg.mode,
                    cfg.routing.rules.len(),
                    cfg.routing_fingerprint()
                )?;
            }
            Ok(exit::OK)
        }
        Err(e) => {
            if format == Format::Json {
                let errors: Vec<String> = e.errors.iter().map(|i| i.to_string()).collect();
                writeln!(
                    o.out,
                    "{}",
                    json!({"path": path, "valid": false, "errors": errors, "warnings": []})
                )?;
            }
            for issue in &e.errors {
                writeln!(o.err, "error: {}: {issue}", e.source)?;
            }
            Ok(exit::CONFIG)
        }
    }
}

/// `init`: one line per file or directory, and whether anything needs the operator.
pub fn init_steps(steps: &[Step], format: Format, o: &mut Output) -> io::Result<u8> {
    let mut problem = false;
    let mut lines = Vec::new();
    for s in steps {
        lines.push(match s {
            Step::Created(p) => format!("created {}", p.display()),
            Step::Exists(p) => format!("exists  {}", p.display()),
            Step::Replaced(p) => format!("replaced {}", p.display()),
            Step::Problem(m) => {
                problem = true;
                format!("ERROR   {m}")
            }
        });
    }
    if format == Format::Json {
        writeln!(o.out, "{}", json!({"steps": lines, "ok": !problem}))?;
    } else {
        for l in &lines {
            writeln!(o.out, "{l}")?;
        }
    }
    Ok(if problem { exit::FAILED } else { exit::OK })
}

/// `rotate-token`: where the new token was written.
pub fn token_rotated(path: &Path, format: Format, o: &mut Output) -> io::Result<u8> {
    if format == Format::Json {
        writeln!(o.out, "{}", json!({"token": path}))?;
    } else {
        writeln!(o.out, "wrote a new token to {}", path.display())?;
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_proto::message::{DurationStats, StateCount};
    use orchestrator_proto::task::{Mode, Routing, TaskKind, TaskResult, TaskState};
    use std::collections::BTreeMap;

    /// Render into memory: (exit code, stdout text, stderr text).
    fn render(r: &Response, format: Format) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = response(
            r,
            format,
            &mut Output {
                out: &mut out,
                err: &mut err,
            },
        )
        .unwrap();
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn notify_list_shows_queues_and_last_errors() {
        let sinks = vec![
            SinkStatus {
                name: "phone".into(),
                target: Some("webhook https://ntfy.sh/ops".into()),
                events: vec!["*".into()],
                pending: 3,
                dead: 1,
                oldest_pending_secs: Some(42),
                delivered: 10,
                failed_attempts: 4,
                last_error: Some("HTTP 503 Service Unavailable".into()),
            },
            SinkStatus {
                name: "gone".into(),
                target: None,
                events: Vec::new(),
                pending: 0,
                dead: 2,
                oldest_pending_secs: None,
                delivered: 0,
                failed_attempts: 0,
                last_error: None,
            },
        ];
        let (code, out, _) = render(&Response::NotifySinks(sinks.clone()), Format::Table);
        assert_eq!(code, exit::OK);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("SINK"));
        assert!(lines[1].starts_with("phone"), "{out}");
        assert!(
            lines[1].contains(" 3 ") && lines[1].contains("42s"),
            "{out}"
        );
        assert!(lines[1].ends_with("webhook https://ntfy.sh/ops"), "{out}");
        assert!(lines[2].contains("last error: HTTP 503"), "{out}");
        assert!(lines[3].contains("(no longer configured)"), "{out}");
        let (_, json, _) = render(&Response::NotifySinks(sinks), Format::Json);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["oldestPendingSecs"], 42);
        assert_eq!(v[1]["dead"], 2);
        let (_, none, _) = render(&Response::NotifySinks(Vec::new()), Format::Table);
        assert_eq!(none, "no [[notify]] sinks configured\n");
    }

    fn task(id: &str, state: TaskState, goal: &str) -> Task {
        Task {
            schema_version: 1,
            id: id.into(),
            kind: TaskKind::Live,
            state,
            goal: goal.into(),
            workspace_dir: None,
            required_capabilities: Vec::new(),
            routing: None,
            assigned_agent_id: None,
            result: None,
            rejection: None,
            error: None,
            submitted_by: "alice".into(),
            would_require_approval: false,
            created_at: "2025-01-01T00:00:00.000Z".into(),
            assigned_at: None,
            started_at: None,
            completed_at: None,
            expires_at: "2025-01-08T00:00:00.000Z".into(),
            attempts: 0,
            usage: None,
        }
    }

    fn event(seq: u64, from: Option<TaskState>, to: TaskState, action: &str) -> TrajectoryEvent {
        TrajectoryEvent {
            seq,
            task_id: "01TASK".into(),
            at: format!("2025-01-01T00:00:0{seq}.000Z"),
            actor: "daemon".into(),
            action: action.into(),
            from,
            to,
            details: None,
        }
    }

    #[test]
    fn task_detail_shows_routing_result_and_trajectory() {
        let mut t = task("01TASK", TaskState::Done, "fix the build");
        t.required_capabilities = vec!["code".into()];
        t.assigned_agent_id = Some("coder".into());
        t.routing = Some(Routing {
            matched_rule_id: Some("code-tasks".into()),
            assigned_agent_id: "coder".into(),
            capability_matches: Vec::new(),
            fallback_used: false,
            decided_at: "2025-01-01T00:00:01.000Z".into(),
        });
        t.completed_at = Some("2025-01-01T00:00:03.000Z".into());
        t.result = Some(TaskResult {
            text: Some("fixed".into()),
            text_path: None,
            artefacts: Vec::new(),
            specialist_session_id: None,
        });
        let events = vec![
            event(1, None, TaskState::Queued, "submit"),
            event(2, Some(TaskState::Queued), TaskState::Assigned, "assign"),
        ];
        let (code, out, err) = render(
            &Response::TaskDetail {
                task: Box::new(t),
                events,
            },
            Format::Table,
        );
        assert_eq!(code, exit::OK);
        assert_eq!(err, "");
        let expected = "\
id:          01TASK
kind:        live
state:       done
goal:        fix the build
requires:    code
agent:       coder
rule:        code-tasks
submitted:   2025-01-01T00:00:00.000Z by alice
expires:     2025-01-08T00:00:00.000Z
completed:   2025-01-01T00:00:03.000Z
result:      fixed
trajectory:
  2025-01-01T00:00:01.000Z  submit                    - → queued            by daemon
  2025-01-01T00:00:02.000Z  assign               queued → assigned          by daemon
";
        assert_eq!(out, expected);
    }

    #[test]
    fn task_detail_json_carries_the_trajectory() {
        let events = vec![event(1, None, TaskState::Queued, "submit")];
        let r = Response::TaskDetail {
            task: Box::new(task("01TASK", TaskState::Queued, "x")),
            events,
        };
        let (_, out, _) = render(&r, Format::Json);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"], "01TASK");
        assert_eq!(v["trajectory"][0]["action"], "submit");
    }

    #[test]
    fn submitted_task_prints_only_its_id_on_stdout() {
        let (_, out, err) = render(
            &Response::Task(Box::new(task("01TASK", TaskState::Queued, "x"))),
            Format::Table,
        );
        assert_eq!(out, "01TASK\n");
        assert_eq!(err, "live queued agent=-\n");
    }

    #[test]
    fn task_list_is_a_table_with_goals_cut_to_one_short_line() {
        let mut long = task("01B", TaskState::AwaitingApproval, &"a".repeat(70));
        long.assigned_agent_id = Some("helpdesk".into());
        let list = vec![task("01A", TaskState::Queued, "two\nlines"), long];
        let (code, out, _) = render(&Response::Tasks(list), Format::Table);
        assert_eq!(code, exit::OK);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID  "), "{out}");
        assert!(lines[0].ends_with("AGENT               GOAL"), "{out}");
        assert!(lines[1].starts_with("01A "), "{out}");
        assert!(
            lines[1].ends_with(" -                   two lines"),
            "{out}"
        );
        assert!(lines[2].contains("awaiting_approval"), "{out}");
        assert!(lines[2].ends_with(&format!("helpdesk            {}", "a".repeat(60))));
    }

    fn status_report() -> StatusReport {
        StatusReport {
            daemon_version: "0.1.0".into(),
            pid: 42,
            uptime_secs: 7,
            configured_mode: Mode::Shadow,
            effective_mode: Mode::Synthetic,
            mode_since: "2025-01-01T00:00:00.000Z".into(),
            mode_note: Some("no gate run yet".into()),
            config_path: None,
            config_loaded_at: "2025-01-01T00:00:00.000Z".into(),
            config_error: None,
            config_warnings: vec!["agent \"x\" has no command".into()],
            routing_fingerprint: "00ff".into(),
            socket: "/run/o.sock".into(),
            state_dir: "/var/lib/o".into(),
            counts: vec![StateCount {
                kind: TaskKind::Synthetic,
                state: TaskState::Done,
                count: 5,
            }],
            latest_gate: None,
            last_reload: None,
            pending_overrides: Vec::new(),
            last_sweep: None,
            next_sweep_at: None,
            token_problem: None,
            http_listen: None,
            agents: Vec::new(),
        }
    }

    #[test]
    fn status_table() {
        let (code, out, _) = render(&Response::Status(Box::new(status_report())), Format::Table);
        assert_eq!(code, exit::OK);
        let expected = "\
orchestratord 0.1.0 (pid 42, up 7s)
mode:         synthetic (configured: shadow, since 2025-01-01T00:00:00.000Z)
mode note:    no gate run yet
config:       built-in defaults (loaded 2025-01-01T00:00:00.000Z)
warning:      agent \"x\" has no command
socket:       /run/o.sock
state dir:    /var/lib/o
routing:      fingerprint 00ff
gate:         no synthetic gate run yet
last sweep:   none yet
tasks:
  synthetic  done               5
";
        assert_eq!(out, expected);
    }

    #[test]
    fn route_preview_names_agent_rule_and_approval() {
        let d = RouteDecision {
            matched_rule_id: Some("ops-tasks".into()),
            assigned_agent_id: "helpdesk".into(),
            capability_matches: Vec::new(),
            fallback_used: false,
            requires_approval: true,
            approval_reasons: vec!["agent helpdesk is in approval_required".into()],
            shadowed_rule_ids: vec!["other".into()],
            agent_configured: false,
        };
        let (code, out, _) = render(&Response::Route(d), Format::Table);
        assert_eq!(code, exit::OK);
        let expected = "\
agent:     helpdesk (no [agents] entry)
rule:      ops-tasks
fallback:  no
approval:  required (agent helpdesk is in approval_required)
shadowed:  other (same priority, also matched; file order decided)
";
        assert_eq!(out, expected);
    }

    fn shadow_summary(passed: bool) -> ShadowSummary {
        ShadowSummary {
            window_hours: 24,
            total: 12,
            by_state: BTreeMap::from([("done".to_string(), 11), ("failed".to_string(), 1)]),
            failures_by_code: BTreeMap::from([("specialist_timeout".to_string(), 1)]),
            duration: Some(DurationStats {
                mean_ms: 10,
                p50_ms: 9,
                p95_ms: 20,
                max_ms: 30,
            }),
            per_agent: BTreeMap::from([("coder".to_string(), 12)]),
            would_require_approval: 3,
            oldest: Some("2025-01-01T00:00:00.000Z".into()),
            newest: Some("2025-01-01T12:00:00.000Z".into()),
            min_tasks: 10,
            passed,
            verdict: if passed { "pass" } else { "fail" }.into(),
            usage_by_agent: BTreeMap::new(),
            usage_by_model: BTreeMap::new(),
        }
    }

    #[test]
    fn shadow_summary_table_and_its_exit_code() {
        let (code, out, _) = render(
            &Response::ShadowSummary(shadow_summary(true)),
            Format::Table,
        );
        assert_eq!(code, exit::OK);
        let expected = "\
shadow summary, last 24 h: 12 tasks
window span:  2025-01-01T00:00:00.000Z → 2025-01-01T12:00:00.000Z
  done               11
  failed             1
failures by code:
  specialist_timeout 1
duration ms:  mean 10  p50 9  p95 20  max 30
per agent:
  coder              12
would require approval in live: 3
minimum tasks for the gate: 10
verdict: pass
";
        assert_eq!(out, expected);
        let (code, _, _) = render(
            &Response::ShadowSummary(shadow_summary(false)),
            Format::Json,
        );
        assert_eq!(code, exit::FAILED);
    }

    #[test]
    fn invalid_config_lists_every_error_on_stderr() {
        let text = "mode = \"prod\"\n[sweeper]\ninterval = \"soon\"\n";
        let result = Config::from_toml(text, Some(Path::new("/etc/o.toml")));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = config_check(
            Path::new("/etc/o.toml"),
            &result,
            Format::Table,
            &mut Output {
                out: &mut out,
                err: &mut err,
            },
        )
        .unwrap();
        assert_eq!(code, exit::CONFIG);
        assert!(out.is_empty());
        let err = String::from_utf8(err).unwrap();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            err.starts_with("error: /etc/o.toml: line 1: mode: "),
            "{err}"
        );
    }
}
