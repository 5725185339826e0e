//! Rendering replies: tables for people, JSON (the wire field names) for scripts. Each function
//! writes to an [`Output`] rather than to the terminal, so rendering is tested without a daemon, and
//! returns the process exit code the reply calls for.
//!
//! One file per family of replies: [`status`], [`tasks`], [`reports`], and [`local`] for what is
//! rendered without a daemon.

mod local;
mod reports;
mod status;
mod tasks;
#[cfg(test)]
mod tests;

pub use local::{config_check, init_steps, token_rotated};
use reports::{gate_run, notify_sinks, reload, route, shadow, sweep};
pub use status::status_response;
use status::{agents, nodes};
pub use tasks::event;
use tasks::{task_brief, task_detail, tasks};

use crate::client::exit;
use orchestrator_proto::message::Response;
use orchestrator_proto::WireError;
use serde::Serialize;
use serde_json::json;
use std::io::{self, Write};

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

/// Text others wrote (a specialist's result, its error, a file's name) as a terminal should get
/// it: control characters other than line breaks (`\n`, `\r\n`) and tabs are shown escaped
/// (`\u{1b}`), so that nothing in it can move the cursor, clear the screen, retitle the window or
/// write over a line (a lone `\r`).
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' if chars.peek() == Some(&'\n') => out.push(c),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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
                Format::Table => writeln!(
                    o.out,
                    "{count} dead event{} pending again",
                    if *count == 1 { " is" } else { "s are" }
                )?,
            }
            Ok(exit::OK)
        }
    }
}
