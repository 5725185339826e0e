//! Rendering replies: tables for people, JSON (the wire field names) for scripts. Each function
//! returns the process exit code the reply calls for.

use crate::client::exit;
use orchestrator_proto::message::{
    GateRunReport, ReloadReport, Response, RouteDecision, ShadowSummary, StatusReport, SweepReport,
};
use orchestrator_proto::task::{Task, TrajectoryEvent};
use orchestrator_proto::WireError;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

fn print_json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("orchctl: cannot encode JSON: {e}"),
    }
}

pub fn json_error(e: &WireError) {
    print_json(
        &json!({"error": {"code": e.code.as_str(), "message": e.message, "details": e.details}}),
    );
}

pub fn response(r: &Response, format: Format) -> u8 {
    match r {
        Response::Status(s) => status(s, format),
        Response::Task(t) => task_brief(t, format),
        Response::TaskDetail { task, events } => task_detail(task, events, format),
        Response::Tasks(ts) => tasks(ts, format),
        Response::Route(d) => route(d, format),
        Response::Synthetic(g) => gate_run(g, format),
        Response::ShadowSummary(s) => shadow(s, format),
        Response::Sweep(s) => sweep(s, format),
        Response::Reload(r) => reload(r, format),
        Response::GateOverride(o) => {
            match format {
                Format::Json => print_json(o),
                Format::Table => println!(
                    "override recorded: the next reload to {} is let through (by {}, uid {}, at {}): {}",
                    o.mode, o.by, o.uid, o.at, o.reason
                ),
            }
            exit::OK
        }
        Response::Metrics(text) => {
            print!("{text}");
            exit::OK
        }
        Response::WatchStarted => exit::OK,
    }
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn status(s: &StatusReport, format: Format) -> u8 {
    if format == Format::Json {
        print_json(s);
        return exit::OK;
    }
    println!(
        "orchestratord {} (pid {}, up {}s)",
        s.daemon_version, s.pid, s.uptime_secs
    );
    println!(
        "mode:         {} (configured: {}, since {})",
        s.effective_mode, s.configured_mode, s.mode_since
    );
    if let Some(note) = &s.mode_note {
        println!("mode note:    {note}");
    }
    println!(
        "config:       {} (loaded {})",
        s.config_path.as_deref().unwrap_or("built-in defaults"),
        s.config_loaded_at
    );
    if let Some(err) = &s.config_error {
        println!("config error: {err}");
        println!("              (the previous config keeps running)");
    }
    for w in &s.config_warnings {
        println!("warning:      {w}");
    }
    println!("socket:       {}", s.socket);
    println!("state dir:    {}", s.state_dir);
    println!("routing:      fingerprint {}", s.routing_fingerprint);
    match &s.latest_gate {
        Some(g) => println!(
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
        ),
        None => println!("gate:         no synthetic gate run yet"),
    }
    for o in &s.pending_overrides {
        println!(
            "override:     to {} by {} at {}: {}",
            o.mode, o.by, o.at, o.reason
        );
    }
    if let Some(r) = &s.last_reload {
        println!(
            "last reload:  {} {:?} ({}): {}",
            r.at, r.outcome, r.trigger, r.message
        );
    }
    match &s.last_sweep {
        Some(w) => println!(
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
        ),
        None => println!("last sweep:   none yet"),
    }
    if let Some(next) = &s.next_sweep_at {
        println!("next sweep:   {next}");
    }
    if let Some(p) = &s.token_problem {
        println!("token:        ERROR {p}");
    }
    if let Some(h) = &s.http_listen {
        println!("http:         {h}");
    }
    if s.counts.is_empty() {
        println!("tasks:        none");
    } else {
        println!("tasks:");
        for c in &s.counts {
            println!(
                "  {:<10} {:<18} {}",
                c.kind.as_str(),
                c.state.as_str(),
                c.count
            );
        }
    }
    exit::OK
}

fn task_brief(t: &Task, format: Format) -> u8 {
    match format {
        Format::Json => print_json(t),
        Format::Table => {
            println!("{}", t.id);
            eprintln!(
                "{} {} agent={}",
                t.kind,
                t.state,
                or_dash(&t.assigned_agent_id)
            );
        }
    }
    exit::OK
}

fn task_detail(t: &Task, events: &[TrajectoryEvent], format: Format) -> u8 {
    if format == Format::Json {
        let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert(
                "trajectory".into(),
                serde_json::to_value(events).unwrap_or(Value::Null),
            );
        }
        print_json(&v);
        return exit::OK;
    }
    println!("id:          {}", t.id);
    println!("kind:        {}", t.kind);
    println!("state:       {}", t.state);
    println!("goal:        {}", t.goal);
    if !t.required_capabilities.is_empty() {
        println!("requires:    {}", t.required_capabilities.join(", "));
    }
    if let Some(w) = &t.workspace_dir {
        println!("workspace:   {w}");
    }
    println!("agent:       {}", or_dash(&t.assigned_agent_id));
    if let Some(r) = &t.routing {
        println!(
            "rule:        {}{}",
            r.matched_rule_id.as_deref().unwrap_or("(default route)"),
            if r.fallback_used { " [fallback]" } else { "" }
        );
    }
    println!("submitted:   {} by {}", t.created_at, t.submitted_by);
    println!("expires:     {}", t.expires_at);
    if let Some(c) = &t.completed_at {
        println!("completed:   {c}");
    }
    if t.would_require_approval {
        println!("shadow:      live would have required approval");
    }
    if let Some(res) = &t.result {
        if let Some(text) = &res.text {
            println!("result:      {text}");
        }
        if let Some(p) = &res.text_path {
            println!("result file: {p}");
        }
        for a in &res.artefacts {
            println!(
                "artefact:    {} ({}, {} bytes)",
                a.path, a.media_type, a.bytes
            );
        }
    }
    if let Some(r) = &t.rejection {
        println!("rejection:   by {} at {}: {}", r.by, r.at, r.reason);
    }
    if let Some(e) = &t.error {
        println!("error:       {}: {}", e.code, e.message);
        for (k, v) in e.details.iter().flatten() {
            println!("             {k}: {v}");
        }
    }
    println!("trajectory:");
    for ev in events {
        println!(
            "  {}  {:<9} {:>17} → {:<17} by {}",
            ev.at,
            ev.action,
            ev.from.map(|s| s.as_str()).unwrap_or("-"),
            ev.to.as_str(),
            ev.actor
        );
    }
    exit::OK
}

fn tasks(ts: &[Task], format: Format) -> u8 {
    if format == Format::Json {
        print_json(&ts);
        return exit::OK;
    }
    println!(
        "{:<26}  {:<9}  {:<17}  {:<18}  GOAL",
        "ID", "KIND", "STATE", "AGENT"
    );
    for t in ts {
        let goal: String = t.goal.chars().take(60).collect();
        println!(
            "{:<26}  {:<9}  {:<17}  {:<18}  {}",
            t.id,
            t.kind.as_str(),
            t.state.as_str(),
            or_dash(&t.assigned_agent_id),
            goal.replace('\n', " ")
        );
    }
    exit::OK
}

fn route(d: &RouteDecision, format: Format) -> u8 {
    if format == Format::Json {
        print_json(d);
        return exit::OK;
    }
    println!(
        "agent:     {}{}",
        d.assigned_agent_id,
        if d.agent_configured {
            ""
        } else {
            " (no [agents] entry)"
        }
    );
    println!(
        "rule:      {}",
        d.matched_rule_id.as_deref().unwrap_or("(default route)")
    );
    println!("fallback:  {}", if d.fallback_used { "yes" } else { "no" });
    if !d.capability_matches.is_empty() {
        println!("matched capabilities: {}", d.capability_matches.join(", "));
    }
    if d.requires_approval {
        println!("approval:  required ({})", d.approval_reasons.join("; "));
    } else {
        println!("approval:  not required");
    }
    if !d.shadowed_rule_ids.is_empty() {
        println!(
            "shadowed:  {} (same priority, also matched; file order decided)",
            d.shadowed_rule_ids.join(", ")
        );
    }
    exit::OK
}

fn gate_run(g: &GateRunReport, format: Format) -> u8 {
    let code = if g.passed == g.total {
        exit::OK
    } else {
        exit::FAILED
    };
    if format == Format::Json {
        print_json(g);
        return code;
    }
    println!(
        "synthetic harness: {}/{} fixtures passed",
        g.passed, g.total
    );
    for f in &g.fixtures {
        let agent = f.actual_agent_id.as_deref().unwrap_or("none");
        let state = f.actual_state.map(|s| s.as_str()).unwrap_or("none");
        if f.ok {
            println!("ok   {} → {agent} ({state})", f.label);
        } else {
            println!(
                "FAIL {} → {agent} ({state}): {}",
                f.label,
                f.reasons.join("; ")
            );
        }
    }
    code
}

fn shadow(s: &ShadowSummary, format: Format) -> u8 {
    let code = if s.passed { exit::OK } else { exit::FAILED };
    if format == Format::Json {
        print_json(s);
        return code;
    }
    println!(
        "shadow summary, last {} h: {} tasks",
        s.window_hours, s.total
    );
    if let (Some(o), Some(n)) = (&s.oldest, &s.newest) {
        println!("window span:  {o} → {n}");
    }
    for (state, n) in &s.by_state {
        println!("  {state:<18} {n}");
    }
    if !s.failures_by_code.is_empty() {
        println!("failures by code:");
        for (code, n) in &s.failures_by_code {
            println!("  {code:<18} {n}");
        }
    }
    if let Some(d) = &s.duration {
        println!(
            "duration ms:  mean {}  p50 {}  p95 {}  max {}",
            d.mean_ms, d.p50_ms, d.p95_ms, d.max_ms
        );
    }
    if !s.per_agent.is_empty() {
        println!("per agent:");
        for (agent, n) in &s.per_agent {
            println!("  {agent:<18} {n}");
        }
    }
    println!(
        "would require approval in live: {}",
        s.would_require_approval
    );
    println!("minimum tasks for the gate: {}", s.min_tasks);
    println!("verdict: {}", s.verdict);
    code
}

fn sweep(s: &SweepReport, format: Format) -> u8 {
    let code = if s.errors.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    };
    if format == Format::Json {
        print_json(s);
        return code;
    }
    println!(
        "sweep at {} took {} ms: {} expired, {} reclaimed ({} re-queued), {} deleted ({} task dirs removed)",
        s.started_at, s.duration_ms, s.expired, s.reclaimed, s.requeued, s.deleted, s.deleted_files
    );
    for e in &s.errors {
        println!("error: {e}");
    }
    code
}

fn reload(r: &ReloadReport, format: Format) -> u8 {
    if format == Format::Json {
        print_json(r);
        return exit::OK;
    }
    println!("{}", r.message);
    println!("mode: {}", r.mode);
    exit::OK
}

/// Print one watched event; returns false to stop (never, for now).
pub fn event(ev: &TrajectoryEvent, format: Format) -> bool {
    match format {
        Format::Json => match serde_json::to_string(ev) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("orchctl: {e}"),
        },
        Format::Table => println!(
            "{} {} {} {} → {} by {}",
            ev.at,
            ev.task_id,
            ev.action,
            ev.from.map(|s| s.as_str()).unwrap_or("-"),
            ev.to,
            ev.actor
        ),
    }
    use std::io::Write;
    std::io::stdout().flush().is_ok()
}
