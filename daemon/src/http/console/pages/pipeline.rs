//! Pipeline: tasks newest first, with a tab per state (and its count), filters by kind, agent and
//! goal text that live in the URL, and cursor paging that costs the same on the millionth task.
//! New tasks and state changes arrive over the event stream (see `live`).

use crate::http::console::layout::{self, html_response, state_badge, when};
use crate::http::console::session::{url_encode, Viewer};
use crate::http::Api;
use crate::store::{Cursor, TaskFilter};
use crate::tasks::query;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use orchestrator_proto::task::{Task, TaskKind, TaskState};
use std::collections::HashMap;
use std::sync::Arc;

pub const PAGE_SIZE: u32 = 50;
const GOAL_CHARS: usize = 120;

/// The pipeline's filters, as read from (and written back to) the query string.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub state: Option<TaskState>,
    pub kind: Option<TaskKind>,
    pub agent: Option<String>,
    pub text: Option<String>,
}

fn param(q: &HashMap<String, String>, key: &str) -> Option<String> {
    q.get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| v.chars().take(200).collect())
}

impl Filters {
    /// Unknown states or kinds are dropped rather than refused: a filter is a view, not an input.
    pub fn read(q: &HashMap<String, String>, default_kind: TaskKind) -> Filters {
        Filters {
            state: param(q, "state").and_then(|s| s.parse().ok()),
            kind: Some(
                param(q, "kind")
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(default_kind),
            ),
            agent: param(q, "agent"),
            text: param(q, "q"),
        }
    }

    /// The query string of these filters, with `state` replaced by `state` (tabs) and no cursor.
    pub fn query(&self, state: Option<TaskState>) -> String {
        let mut parts = Vec::new();
        if let Some(s) = state {
            parts.push(format!("state={s}"));
        }
        if let Some(k) = self.kind {
            parts.push(format!("kind={k}"));
        }
        if let Some(a) = &self.agent {
            parts.push(format!("agent={}", url_encode(a)));
        }
        if let Some(t) = &self.text {
            parts.push(format!("q={}", url_encode(t)));
        }
        parts.join("&")
    }

    pub fn store_filter(&self, cursor: Option<Cursor>, limit: u32) -> TaskFilter {
        TaskFilter {
            state: self.state,
            kind: self.kind,
            agent: self.agent.clone(),
            goal_contains: self.text.clone(),
            include_harness: false,
            cursor,
            limit,
        }
    }

    /// Whether a task belongs in this view: what the live row fragment checks.
    pub fn admits(&self, t: &Task) -> bool {
        t.submitted_by != crate::gate::synthetic::HARNESS
            && self.state.is_none_or(|s| s == t.state)
            && self.kind.is_none_or(|k| k == t.kind)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| t.assigned_agent_id.as_deref() == Some(a.as_str()))
            && self.text.as_ref().is_none_or(|q| {
                t.goal
                    .to_ascii_lowercase()
                    .contains(&q.to_ascii_lowercase())
            })
    }
}

/// One table row; the live script fetches the same markup for new and changed tasks.
pub fn row(t: &Task, now: i64) -> Markup {
    let goal: String = t.goal.chars().take(GOAL_CHARS).collect();
    let clipped = t.goal.chars().count() > GOAL_CHARS;
    html! {
        tr data-id=(t.id) data-state=(t.state) {
            td.id { a href={"/console/tasks/" (t.id)} { (t.id) } }
            td { (state_badge(t.state)) }
            td.goal { (goal) @if clipped { "…" } }
            td { (t.assigned_agent_id.as_deref().unwrap_or("-")) }
            td.muted { (t.submitted_by) }
            td.muted { (when(&t.created_at, now)) }
        }
    }
}

/// `GET /console/pipeline`.
pub async fn show(
    State(api): State<Arc<Api>>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let d = &api.daemon;
    let now = d.clock.now_ms();
    let filters = Filters::read(&q, d.mode().effective);
    let cursor = match (param(&q, "before"), param(&q, "after")) {
        (Some(id), _) => Some(Cursor::Before(id)),
        (None, Some(id)) => Some(Cursor::After(id)),
        (None, None) => None,
    };
    let first_page = cursor.is_none();
    let tasks = match query::browse(d, filters.store_filter(cursor, PAGE_SIZE)).await {
        Ok(t) => t,
        Err(e) => return layout::failed("Cannot list tasks", &e),
    };
    let counts = d.store.counts();
    let kind = filters.kind.unwrap_or(d.mode().effective);
    let total = counts.of_kind(kind);
    let base = filters.query(None);
    let body = html! {
        div.page-head {
            h1 { "Pipeline" }
            span.live-dot #live title="live updates" {}
        }
        form.filters method="get" action="/console/pipeline" {
            @if let Some(s) = filters.state { input type="hidden" name="state" value=(s); }
            label { "Kind "
                select name="kind" {
                    @for k in TaskKind::ALL {
                        option value=(k) selected[Some(k) == filters.kind] { (k) }
                    }
                }
            }
            label { "Agent " input type="text" name="agent" value=[filters.agent.as_deref()] placeholder="any"; }
            label { "Goal " input type="search" name="q" value=[filters.text.as_deref()] placeholder="text in the goal"; }
            button.secondary type="submit" { "Filter" }
        }
        nav.tabs data-kind=(kind) {
            a.active[filters.state.is_none()] href={"/console/pipeline?" (base)} {
                "All " span.count data-count="all" { (total) }
            }
            @for s in TaskState::ALL {
                a.active[filters.state == Some(s)] href={"/console/pipeline?" (filters.query(Some(s)))} {
                    (s.as_str().replace('_', " ")) " "
                    span.count data-count=(s) { (counts.get(kind, s)) }
                }
            }
        }
        div.table-wrap {
            table.tasks {
                thead { tr { th { "Task" } th { "State" } th { "Goal" } th { "Agent" } th { "By" } th { "Created" } } }
                tbody #task-rows data-live="pipeline" data-first=(if first_page { "1" } else { "0" })
                    data-query=(filters.query(filters.state)) {
                    @for t in &tasks { (row(t, now)) }
                }
            }
            @if tasks.is_empty() { p.empty { "No tasks match." } }
        }
        nav.pager {
            @if let Some(first) = tasks.first() {
                @if !first_page {
                    a href={"/console/pipeline?" (filters.query(filters.state)) "&after=" (first.id)} { "← Newer" }
                }
            }
            @if tasks.len() == PAGE_SIZE as usize {
                @if let Some(last) = tasks.last() {
                    a href={"/console/pipeline?" (filters.query(filters.state)) "&before=" (last.id)} { "Older →" }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout::page(d, &viewer, "Pipeline", "/console/pipeline", body),
    )
}
