//! The frame every page shares (header, navigation, the count of waiting approvals) and the small
//! pieces of markup that several pages use.

use super::session::Viewer;
use crate::daemon::Daemon;
use crate::http::error::{status_of, ApiError};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use orchestrator_proto::task::{TaskKind, TaskState};
use orchestrator_proto::WireError;
use std::time::UNIX_EPOCH;

/// The navigation entries, by path and label.
const NAV: [(&str, &str); 4] = [
    ("/console/approvals", "Approvals"),
    ("/console/pipeline", "Pipeline"),
    ("/console/rollout", "Rollout"),
    ("/console/agents", "Agents"),
];

/// Tasks waiting for a decision, over every kind: from the store's in-memory counts.
pub fn awaiting(d: &Daemon) -> u64 {
    let counts = d.store.counts();
    TaskKind::ALL
        .iter()
        .map(|k| counts.get(*k, TaskState::AwaitingApproval))
        .sum()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · orchestrator" }
            link rel="stylesheet" href=(super::CSS.url());
            script src=(super::JS.url()) defer {}
        }
    }
}

/// A whole page for a signed-in viewer. `active` is the path of the navigation entry to mark.
pub fn page(d: &Daemon, viewer: &Viewer, title: &str, active: &str, body: Markup) -> Markup {
    let waiting = awaiting(d);
    let mode = d.mode().effective;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/console/approvals" { "orchestrator" }
                    span.mode.{"m-" (mode)} title="effective mode" { (mode) }
                    nav {
                        @for (path, label) in NAV {
                            a.active[path == active] href=(path) {
                                (label)
                                @if path == "/console/approvals" {
                                    " "
                                    span.count.waiting[waiting > 0] #awaiting-count { (waiting) }
                                }
                            }
                        }
                    }
                    div.who {
                        span.user { (viewer.name()) }
                        @if !viewer.can_act { " " span.readonly { "read-only" } }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(viewer.session.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without navigation: the login page, and refusals that may come before a session.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.top { a.brand href="/console/approvals" { "orchestrator" } }
                main.narrow { (body) }
            }
        }
    }
}

pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A short page saying why something was refused or failed, with a way back.
pub fn refusal(status: StatusCode, title: &str, message: &str) -> Response {
    problem(status, title, message, None)
}

/// What the daemon refused or could not do, with the status and stable code the API would give
/// for the same error.
pub fn failed(title: &str, e: &WireError) -> Response {
    problem(status_of(e.code), title, &e.message, Some(e.code.as_str()))
}

/// A request the console could not read (its address, its form), with the API's status and code.
pub fn unreadable(title: &str, e: &ApiError) -> Response {
    problem(e.status, title, &e.message, Some(e.code))
}

fn problem(status: StatusCode, title: &str, message: &str, code: Option<&str>) -> Response {
    let body = html! {
        section.panel.problem {
            h1 { (title) }
            p { (message) }
            @if let Some(code) = code {
                p.muted { "Error code: " code.error-code { (code) } }
            }
            p { a href="/console/approvals" { "Back to the approvals" } }
        }
    };
    html_response(status, bare(title, body))
}

pub fn state_badge(state: TaskState) -> Markup {
    html! { span.state.{"s-" (state)} data-state=(state) { (state.as_str().replace('_', " ")) } }
}

/// Milliseconds since the epoch of an RFC 3339 time the daemon wrote.
pub fn parse_ms(t: &str) -> Option<i64> {
    humantime::parse_rfc3339(t)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// `3 d 4 h`, `12 min`, `40 s`: a duration for people.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

// Relative times are taken against the daemon's clock (`Daemon::clock`), read once per page, so a
// page agrees with the expiry and leases the daemon applies, also on a clock tests move.

/// How long before `now_ms` an RFC 3339 time was, or the time itself when it cannot be read.
pub fn ago(t: &str, now_ms: i64) -> String {
    match parse_ms(t) {
        Some(ms) if ms > now_ms => format!("in {}", span(ms - now_ms)),
        Some(ms) => format!("{} ago", span(now_ms - ms)),
        None => t.to_string(),
    }
}

/// A time shown as "… ago", with the exact time on hover.
pub fn when(t: &str, now_ms: i64) -> Markup {
    html! { time datetime=(t) title=(t) { (ago(t, now_ms)) } }
}

/// What is left at `now_ms` before `expires_at`.
pub fn time_left(expires_at: &str, now_ms: i64) -> String {
    match parse_ms(expires_at) {
        Some(ms) if ms > now_ms => format!("{} left", span(ms - now_ms)),
        Some(_) => "expiring now".to_string(),
        None => expires_at.to_string(),
    }
}

/// The banner after an action, from the `done` and `id` query parameters of the redirect.
pub fn notice(done: Option<&str>, id: Option<&str>) -> Markup {
    let what = match done {
        Some("approved") => "Approved",
        Some("rejected") => "Rejected",
        Some("cancelled") => "Cancelled",
        _ => return html! {},
    };
    html! {
        p.notice.ok role="status" {
            (what) " "
            @if let Some(id) = id { a.id href={"/console/tasks/" (id)} { (id) } }
            "."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_people_write() {
        assert_eq!(span(40_000), "40 s");
        assert_eq!(span(12 * 60_000), "12 min");
        assert_eq!(span(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
        assert_eq!(span(2 * 86_400_000 + 3_600_000), "2 d 1 h");
        assert_eq!(span(-5), "0 s");
    }

    #[test]
    fn rfc3339_times_are_read_back() {
        assert_eq!(
            parse_ms("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_ms("yesterday"), None);
    }

    #[test]
    fn relative_times_count_from_the_time_given() {
        let t = "2023-11-14T22:13:20.000Z";
        let at = 1_700_000_000_000;
        assert_eq!(ago(t, at + 3 * 60_000), "3 min ago");
        assert_eq!(ago(t, at - 40_000), "in 40 s");
        assert_eq!(ago("yesterday", at), "yesterday");
        assert_eq!(time_left(t, at - 2 * 3_600_000), "2 h 0 min left");
        assert_eq!(time_left(t, at), "expiring now");
    }
}
