//! A task, a page of tasks, its trajectory and its usage.

use super::{print_json, shown, Format, Output};
use crate::client::exit;
use orchestrator_proto::task::{Task, TrajectoryEvent, Usage};
use serde_json::{json, Value};
use std::io;

pub(super) fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

pub(super) fn task_brief(t: &Task, format: Format, o: &mut Output) -> io::Result<u8> {
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
pub(super) fn usage_line(u: &Usage) -> String {
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

pub(super) fn task_detail(
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
            writeln!(o.out, "result:      {}", shown(text))?;
        }
        if let Some(p) = &res.text_path {
            writeln!(o.out, "result file: {}", shown(p))?;
        }
        for a in &res.artefacts {
            writeln!(
                o.out,
                "artefact:    {} ({}, {} bytes)",
                shown(&a.path),
                shown(&a.media_type),
                a.bytes
            )?;
        }
    }
    if let Some(u) = &t.usage {
        writeln!(o.out, "usage:       {}", usage_line(u))?;
    }
    if let Some(r) = &t.rejection {
        writeln!(
            o.out,
            "rejection:   by {} at {}: {}",
            r.by,
            r.at,
            shown(&r.reason)
        )?;
    }
    if let Some(e) = &t.error {
        writeln!(o.out, "error:       {}: {}", e.code, shown(&e.message))?;
        for (k, v) in e.details.iter().flatten() {
            writeln!(o.out, "             {k}: {}", shown(v))?;
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

pub(super) fn tasks(
    ts: &[Task],
    next: Option<&str>,
    format: Format,
    o: &mut Output,
) -> io::Result<u8> {
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
