//! Agents: each agent's command, capabilities and approval rule; the specialists running now
//! (task, since) against its `max_concurrent` slots; its queued tasks and recent failures.

use crate::http::console::layout::{self, html_response, when};
use crate::http::console::session::Viewer;
use crate::http::Api;
use crate::store::TaskFilter;
use crate::tasks::{query, route};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use orchestrator_proto::task::{Task, TaskState};
use orchestrator_proto::WireError;
use std::sync::Arc;

/// How many queued tasks are counted before the page says "N+".
const QUEUE_PEEK: u32 = 100;
const RECENT_FAILURES: u32 = 5;

async fn tasks_of(
    api: &Api,
    agent: &str,
    state: TaskState,
    limit: u32,
) -> Result<Vec<Task>, WireError> {
    let filter = TaskFilter {
        state: Some(state),
        agent: Some(agent.to_string()),
        limit,
        ..TaskFilter::default()
    };
    query::browse(&api.daemon, filter).await
}

/// `GET /console/agents`.
pub async fn show(State(api): State<Arc<Api>>, viewer: Viewer) -> Response {
    let d = &api.daemon;
    let now = d.clock.now_ms();
    let cfg = d.config();
    let mut cards = Vec::new();
    for (id, agent) in &cfg.agents {
        // Twice the slots, so that more running than them shows; at most a listing's limit.
        let running_peek = agent
            .max_concurrent
            .max(1)
            .saturating_mul(2)
            .min(query::MAX_LIST);
        let read = async {
            Ok::<_, WireError>((
                tasks_of(&api, id, TaskState::InProgress, running_peek).await?,
                tasks_of(&api, id, TaskState::Queued, QUEUE_PEEK).await?,
                tasks_of(&api, id, TaskState::Failed, RECENT_FAILURES).await?,
            ))
        };
        let (running, queued, failed) = match read.await {
            Ok(read) => read,
            Err(e) => return layout::failed("Cannot read the agents' tasks", &e),
        };
        let reasons = route::agent_approval_reasons(d, id);
        let paused = d.pauses.get(id).filter(|p| p.holds(d.clock.now_ms()));
        cards.push(html! {
            article.card.agent {
                div.card-head {
                    h2 { (id) }
                    @if !cfg.configured_agents.contains(id) { span.muted { "built-in" } }
                    span.slots title="specialists running / max_concurrent" {
                        (running.len()) " / " (agent.max_concurrent) " slots"
                    }
                }
                @if let Some(p) = &paused {
                    p.paused {
                        strong { "Paused" }
                        @if let Some(until) = p.until_ms { " until " (crate::clock::rfc3339(until)) }
                        ": " (p.reason) " (by " (p.by) ")"
                    }
                }
                dl.facts {
                    dt { "Command" } dd {
                        @if agent.command.is_empty() { span.muted { "none (synthetic only)" } }
                        @else { code.cmd { (agent.command.join(" ")) } }
                    }
                    dt { "Capabilities" } dd {
                        @if agent.capabilities.is_empty() { "-" } @else { (agent.capabilities.join(", ")) }
                    }
                    dt { "Approval" } dd {
                        @if reasons.is_empty() { "not required" }
                        @else { "required: " (reasons.join("; ")) }
                    }
                    dt { "Timeout" } dd { (layout::span(agent.timeout.as_millis() as i64)) ", " (agent.max_attempts) " attempt(s)" }
                    dt { "Queued" } dd {
                        (queued.len()) @if queued.len() as u32 >= QUEUE_PEEK { "+" }
                        @if !queued.is_empty() {
                            " · " a href={"/console/pipeline?state=queued&agent=" (id)} { "show" }
                        }
                    }
                }
                h3 { "Running" }
                @if running.is_empty() { p.muted { "Nothing running." } }
                @else {
                    ul.running { @for t in &running {
                        li { a.id href={"/console/tasks/" (t.id)} { (t.id) } " since "
                            (when(t.started_at.as_deref().unwrap_or(&t.created_at), now)) }
                    } }
                }
                h3 { "Recent failures" }
                @if failed.is_empty() { p.muted { "None." } }
                @else {
                    ul.failures { @for t in &failed {
                        li {
                            a.id href={"/console/tasks/" (t.id)} { (t.id) } " "
                            code { (t.error.as_ref().map(|e| e.code.as_str()).unwrap_or("-")) } " "
                            span.muted { (when(t.completed_at.as_deref().unwrap_or(&t.created_at), now)) }
                        }
                    } }
                }
            }
        });
    }
    let body = html! {
        div.page-head { h1 { "Agents" } span.muted { (cfg.agents.len()) " configured" } }
        div.cards.agents { @for c in cards { (c) } }
    };
    html_response(
        StatusCode::OK,
        layout::page(d, &viewer, "Agents", "/console/agents", body),
    )
}
