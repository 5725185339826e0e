//! Task: everything `orchctl tasks show` shows — fields, routing, the trajectory as a timeline with
//! actors, the whole result (also when it spilled to `textPath`), artefacts, the error with its
//! details and stderr tail — and the decisions the viewer may take on it.

use super::approvals::artefact_links;
use crate::http::console::actions::decision_forms;
use crate::http::console::extract::At;
use crate::http::console::layout::{self, html_response, notice, state_badge, time_left, when};
use crate::http::console::session::Viewer;
use crate::http::Api;
use crate::tasks::{query, route};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The most result text shown inline; past it the page links to the whole file.
const INLINE_RESULT_BYTES: u64 = 4 * 1024 * 1024;

fn not_found(id: &str) -> Response {
    layout::refusal(
        StatusCode::NOT_FOUND,
        "No such task",
        &format!("There is no task {id}: it may never have existed, or retention removed it."),
    )
}

/// A file the task's record names, if it lies inside the task's own directory.
fn inside_task_dir(api: &Api, id: &str, path: &str) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(api.daemon.paths.task_dir(id)).ok()?;
    let file = std::fs::canonicalize(path).ok()?;
    file.starts_with(&dir).then_some(file)
}

async fn load(api: &Api, id: &str) -> Result<(Task, Vec<TrajectoryEvent>), Response> {
    query::show(&api.daemon, id)
        .await
        .map_err(|e| match e.code {
            ErrorCode::NotFound | ErrorCode::InvalidId => not_found(id),
            _ => layout::failed("Cannot read the task", &e),
        })
}

fn timeline(events: &[TrajectoryEvent], now: i64) -> Markup {
    html! {
        ol.timeline {
            @for ev in events {
                li {
                    div.when { (when(&ev.at, now)) }
                    div.what {
                        strong { (ev.action) } " "
                        @if let Some(from) = ev.from { (state_badge(from)) " → " }
                        (state_badge(ev.to))
                    }
                    div.who {
                        "by " span.actor { (ev.actor) }
                        @if let Some(via) = ev.details.as_ref().and_then(|d| d.get("via")) {
                            " via " (via)
                        }
                    }
                    @if let Some(details) = &ev.details {
                        @let shown: Vec<_> = details.iter().filter(|(k, _)| k.as_str() != "via").collect();
                        @if !shown.is_empty() {
                            dl.details {
                                @for (k, v) in shown { dt { (k) } dd { (v) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn result_section(api: &Api, task: &Task) -> Markup {
    let Some(result) = &task.result else {
        return html! { p.muted { "No result yet." } };
    };
    let spilled = result
        .text_path
        .as_deref()
        .and_then(|p| inside_task_dir(api, &task.id, p));
    let whole = match &spilled {
        Some(path) => match tokio::fs::metadata(path).await {
            Ok(m) if m.len() <= INLINE_RESULT_BYTES => tokio::fs::read(path)
                .await
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        },
        None => None,
    };
    let text = whole
        .as_deref()
        .or(result.text.as_deref())
        .unwrap_or_default();
    html! {
        @if text.is_empty() { p.muted { "The specialist printed nothing." } }
        @else { pre.text.whole { (text) } }
        @if spilled.is_some() {
            p.muted {
                @if whole.is_none() { "Only the start is shown. " }
                a href={"/console/tasks/" (task.id) "/result.txt"} { "Download the whole result" }
            }
        }
        (artefact_links(task))
        @if let Some(session) = &result.specialist_session_id {
            p.muted { "Specialist session " code { (session) } }
        }
    }
}

/// `GET /console/tasks/{id}`.
pub async fn show(
    State(api): State<Arc<Api>>,
    viewer: Viewer,
    At(id): At<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (task, events) = match load(&api, &id).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let d = &api.daemon;
    let now = d.clock.now_ms();
    let routing = task.routing.as_ref();
    let reasons = if task.state == TaskState::AwaitingApproval {
        route::approval_reasons(d, &task)
    } else {
        Vec::new()
    };
    let back = format!("/console/tasks/{}", task.id);
    let body = html! {
        (notice(q.get("done").map(String::as_str), q.get("id").map(String::as_str)))
        p.notice.warn #task-changed hidden {}
        div.page-head data-task=(task.id) {
            h1 { "Task " span.id { (task.id) } }
            (state_badge(task.state))
        }
        p.goal.big { (task.goal) }
        (decision_forms(&viewer, &task, &back))
        @if !reasons.is_empty() {
            div.why.panel {
                h3 { "Why approval is required" }
                ul { @for r in &reasons { li { (r) } } }
                p.muted { "Expires: " (time_left(&task.expires_at, now)) }
            }
        }
        section.panel {
            h2 { "Fields" }
            dl.facts {
                dt { "Kind" } dd { (task.kind) }
                dt { "State" } dd { (state_badge(task.state)) }
                dt { "Agent" } dd { (task.assigned_agent_id.as_deref().unwrap_or("-")) }
                dt { "Rule" } dd { (routing.and_then(|r| r.matched_rule_id.as_deref()).unwrap_or("-")) }
                dt { "Fallback" } dd { (if routing.is_some_and(|r| r.fallback_used) { "yes" } else { "no" }) }
                dt { "Capabilities" } dd {
                    @if task.required_capabilities.is_empty() { "-" }
                    @else { (task.required_capabilities.join(", ")) }
                }
                dt { "Matched" } dd {
                    (routing.map(|r| r.capability_matches.join(", ")).filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into()))
                }
                dt { "Workspace" } dd { (task.workspace_dir.as_deref().unwrap_or("-")) }
                dt { "Submitted by" } dd { (task.submitted_by) }
                dt { "Created" } dd { (when(&task.created_at, now)) }
                dt { "Assigned" } dd { @if let Some(t) = &task.assigned_at { (when(t, now)) } @else { "-" } }
                dt { "Started" } dd { @if let Some(t) = &task.started_at { (when(t, now)) } @else { "-" } }
                dt { "Completed" } dd { @if let Some(t) = &task.completed_at { (when(t, now)) } @else { "-" } }
                dt { "Expires" } dd title=(task.expires_at) {
                    @if task.state.is_terminal() { (task.expires_at) } @else { (time_left(&task.expires_at, now)) }
                }
                dt { "Attempts" } dd { (task.attempts) }
                // Recorded for shadow tasks only: what live would have done with the result.
                @if task.kind == TaskKind::Shadow {
                    dt { "Would need approval" } dd { (if task.would_require_approval { "yes" } else { "no" }) }
                }
                @if let Some(r) = &task.rejection {
                    dt { "Rejected" } dd { (r.by) ": " (r.reason) }
                }
            }
        }
        @if let Some(err) = &task.error {
            section.panel.problem {
                h2 { "Error " code { (err.code) } }
                p { (err.message) }
                @if let Some(details) = &err.details {
                    dl.facts {
                        @for (k, v) in details {
                            @if k == "stderrTail" {
                                dt { "stderr (tail)" } dd { pre.text { (v) } }
                            } @else {
                                dt { (k) } dd { (v) }
                            }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Result" }
            (result_section(&api, &task).await)
        }
        section.panel {
            h2 { "Trajectory" }
            (timeline(&events, now))
        }
    };
    html_response(
        StatusCode::OK,
        layout::page(d, &viewer, &format!("Task {}", task.id), "", body),
    )
}

/// Stream a file the task names, as a download.
async fn send_file(path: PathBuf, content_type: &str, disposition: String) -> Response {
    match tokio::fs::File::open(&path).await {
        Ok(file) => (
            [
                (header::CONTENT_TYPE, content_type.to_string()),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        )
            .into_response(),
        Err(_) => layout::refusal(
            StatusCode::NOT_FOUND,
            "File gone",
            "The file is no longer there (retention may have removed it).",
        ),
    }
}

/// `GET /console/tasks/{id}/result.txt`: the whole result text.
pub async fn result_text(
    State(api): State<Arc<Api>>,
    _viewer: Viewer,
    At(id): At<String>,
) -> Response {
    let (task, _) = match load(&api, &id).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let result = task.result.as_ref();
    match result.and_then(|r| r.text_path.as_deref()) {
        Some(p) => match inside_task_dir(&api, &id, p) {
            Some(path) => send_file(path, "text/plain; charset=utf-8", "inline".into()).await,
            None => not_found(&id),
        },
        None => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            result.and_then(|r| r.text.clone()).unwrap_or_default(),
        )
            .into_response(),
    }
}

/// `GET /console/tasks/{id}/artefacts/{n}`: the n-th artefact, as a download (never rendered).
pub async fn artefact(
    State(api): State<Arc<Api>>,
    _viewer: Viewer,
    At((id, n)): At<(String, usize)>,
) -> Response {
    let (task, _) = match load(&api, &id).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let Some(a) = task.result.as_ref().and_then(|r| r.artefacts.get(n)) else {
        return not_found(&id);
    };
    let Some(path) = inside_task_dir(&api, &id, &a.path) else {
        return not_found(&id);
    };
    let name: String = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    send_file(
        path,
        "application/octet-stream",
        format!("attachment; filename=\"{name}\""),
    )
    .await
}
