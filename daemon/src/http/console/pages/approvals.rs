//! Approvals: every task awaiting a decision, with what a person needs to decide it — goal,
//! agent, matched rule, why approval is required, the start of the result, artefacts, time left.

use crate::http::console::actions::decision_forms;
use crate::http::console::layout::{self, html_response, notice, state_badge, time_left, when};
use crate::http::console::session::Viewer;
use crate::http::Api;
use crate::store::TaskFilter;
use crate::tasks::{query, route};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use orchestrator_proto::task::{Task, TaskState};
use std::collections::HashMap;
use std::sync::Arc;

/// Most approvals listed on the page; the header's count says how many there are in all.
const MAX_SHOWN: u32 = 200;
/// How much of the result the card shows before it is expanded.
const PREVIEW_CHARS: usize = 280;
/// How much of the result the expanded card holds; the task page has all of it.
const EXPANDED_CHARS: usize = 20_000;

fn clip(s: &str, n: usize) -> (&str, bool) {
    match s.char_indices().nth(n) {
        Some((i, _)) => (&s[..i], true),
        None => (s, false),
    }
}

pub fn result_preview(task: &Task) -> Markup {
    let text = task
        .result
        .as_ref()
        .and_then(|r| r.text.as_deref())
        .unwrap_or_default();
    if text.trim().is_empty() {
        return html! { p.muted { "No result text." } };
    }
    let (start, more) = clip(text, PREVIEW_CHARS);
    let (expanded, clipped) = clip(text, EXPANDED_CHARS);
    let spilled = task.result.as_ref().is_some_and(|r| r.text_path.is_some());
    html! {
        @if more {
            details.result {
                summary { span.preview { (start) "…" } span.more { "Show the whole result" } }
                pre.text { (expanded) }
                @if clipped || spilled {
                    p { a href={"/console/tasks/" (task.id)} { "The rest is on the task page" } }
                }
            }
        } @else {
            pre.text { (start) }
        }
    }
}

pub fn artefact_links(task: &Task) -> Markup {
    let artefacts = task
        .result
        .as_ref()
        .map(|r| r.artefacts.as_slice())
        .unwrap_or_default();
    html! {
        @if !artefacts.is_empty() {
            ul.artefacts {
                @for (n, a) in artefacts.iter().enumerate() {
                    @let name = std::path::Path::new(&a.path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| a.path.clone());
                    li {
                        a href={"/console/tasks/" (task.id) "/artefacts/" (n)} download=(name) { (name) }
                        " " span.muted { (a.media_type) ", " (a.bytes) " bytes" }
                    }
                }
            }
        }
    }
}

fn card(api: &Api, viewer: &Viewer, task: &Task) -> Markup {
    let now = api.daemon.clock.now_ms();
    let reasons = route::approval_reasons(&api.daemon, task);
    let rule = task
        .routing
        .as_ref()
        .map(|r| match &r.matched_rule_id {
            Some(rule) => rule.clone(),
            None => "default route (no rule matched)".to_string(),
        })
        .unwrap_or_else(|| "-".into());
    html! {
        article.card.approval data-id=(task.id) {
            div.card-head {
                a.id href={"/console/tasks/" (task.id)} { (task.id) }
                (state_badge(task.state))
                span.expires title=(task.expires_at) { (time_left(&task.expires_at, now)) }
            }
            p.goal { (task.goal) }
            dl.facts {
                dt { "Agent" } dd { (task.assigned_agent_id.as_deref().unwrap_or("-")) }
                dt { "Rule" } dd { (rule) }
                dt { "Kind" } dd { (task.kind) }
                dt { "Submitted" } dd { (task.submitted_by) ", " (when(&task.created_at, now)) }
            }
            div.why {
                h3 { "Why approval is required" }
                @if reasons.is_empty() {
                    p.muted { "The config in force would no longer require it." }
                } @else {
                    ul { @for r in &reasons { li { (r) } } }
                }
            }
            (result_preview(task))
            (artefact_links(task))
            p.live-note hidden {}
            (decision_forms(viewer, task, "/console/approvals"))
        }
    }
}

/// `GET /console/approvals`.
pub async fn show(
    State(api): State<Arc<Api>>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let d = &api.daemon;
    let filter = TaskFilter {
        state: Some(TaskState::AwaitingApproval),
        limit: MAX_SHOWN,
        ..TaskFilter::default()
    };
    let tasks = match query::browse(d, filter).await {
        Ok(t) => t,
        Err(e) => return layout::failed("Cannot list approvals", &e),
    };
    let waiting = layout::awaiting(d);
    let body = html! {
        (notice(q.get("done").map(String::as_str), q.get("id").map(String::as_str)))
        div.page-head {
            h1 { "Approvals" }
            span.muted { (waiting) " waiting" }
        }
        p.notice.warn #new-approvals hidden {
            "New tasks are waiting. " a href="/console/approvals" { "Reload" }
        }
        @if tasks.is_empty() {
            p.empty { "Nothing is waiting for a decision." }
        }
        div.cards #approvals data-live="approvals" {
            @for t in &tasks { (card(&api, &viewer, t)) }
        }
        @if waiting > u64::from(MAX_SHOWN) {
            p.muted { "Showing the newest " (MAX_SHOWN) "; decide these to see the rest." }
        }
    };
    html_response(
        StatusCode::OK,
        layout::page(d, &viewer, "Approvals", "/console/approvals", body),
    )
}
