//! Approve, reject and cancel as plain form POSTs, and the forms that send them.
//!
//! Each action checks the session's CSRF token and rights, calls [`crate::tasks::transition`] as
//! the signed-in person (recorded `via: console`), and answers with a redirect back to where the
//! form was (with a notice), or a page that says plainly why nothing changed — for instance that
//! someone else decided first, with the task's state now.

use super::extract::{At, Fields};
use super::layout::{self, html_response, state_badge};
use super::session::{safe_next, Viewer};
use crate::http::Api;
use crate::tasks::{query, transition};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use orchestrator_proto::task::{Task, TaskState};
use orchestrator_proto::{ErrorCode, WireError};
use std::collections::HashMap;
use std::sync::Arc;

/// The decision forms for a task, when the viewer may decide. `back` is where to return after.
pub fn decision_forms(viewer: &Viewer, task: &Task, back: &str) -> Markup {
    if !viewer.can_act {
        return html! {};
    }
    let base = format!("/console/tasks/{}", task.id);
    html! {
        @if task.state == TaskState::AwaitingApproval {
            div.decide {
                form.approve method="post" action={(base) "/approve"} {
                    input type="hidden" name="csrf" value=(viewer.session.csrf);
                    input type="hidden" name="back" value=(back);
                    button.primary type="submit" { "Approve" }
                }
                form.reject method="post" action={(base) "/reject"} {
                    input type="hidden" name="csrf" value=(viewer.session.csrf);
                    input type="hidden" name="back" value=(back);
                    label.sr for={"reason-" (task.id)} { "Reason for rejecting" }
                    input id={"reason-" (task.id)} type="text" name="reason" required maxlength="1024"
                        placeholder="Reason (required)" autocomplete="off";
                    button.danger type="submit" { "Reject" }
                }
            }
        }
        @if !task.state.is_terminal() {
            form.cancel method="post" action={(base) "/cancel"} {
                input type="hidden" name="csrf" value=(viewer.session.csrf);
                input type="hidden" name="back" value=(back);
                button.secondary type="submit" { "Cancel task" }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Action {
    Approve,
    Reject,
    Cancel,
}

impl Action {
    fn done(self) -> &'static str {
        match self {
            Action::Approve => "approved",
            Action::Reject => "rejected",
            Action::Cancel => "cancelled",
        }
    }
}

pub async fn approve(
    State(api): State<Arc<Api>>,
    viewer: Viewer,
    At(id): At<String>,
    Fields(form): Fields,
) -> Response {
    act(&api, &viewer, &id, &form, Action::Approve).await
}

pub async fn reject(
    State(api): State<Arc<Api>>,
    viewer: Viewer,
    At(id): At<String>,
    Fields(form): Fields,
) -> Response {
    act(&api, &viewer, &id, &form, Action::Reject).await
}

pub async fn cancel(
    State(api): State<Arc<Api>>,
    viewer: Viewer,
    At(id): At<String>,
    Fields(form): Fields,
) -> Response {
    act(&api, &viewer, &id, &form, Action::Cancel).await
}

async fn act(
    api: &Api,
    viewer: &Viewer,
    id: &str,
    form: &HashMap<String, String>,
    action: Action,
) -> Response {
    if let Some(refused) = viewer.decision_refusal(form) {
        return refused;
    }
    let d = &api.daemon;
    let actor = viewer.actor();
    let result = match action {
        Action::Approve => transition::approve(d, &actor, id).await,
        Action::Reject => {
            let reason = form.get("reason").map(String::as_str).unwrap_or_default();
            transition::reject(d, &actor, id, reason).await
        }
        Action::Cancel => transition::cancel(d, &actor, id).await,
    };
    match result {
        Ok(task) => {
            let back = form
                .get("back")
                .map(String::as_str)
                .and_then(safe_next)
                .unwrap_or("/console/approvals");
            let sep = if back.contains('?') { '&' } else { '?' };
            let to = format!("{back}{sep}done={}&id={}", action.done(), task.id);
            (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
        }
        Err(e) => refused(api, viewer, id, action, e).await,
    }
}

/// Why the action changed nothing, in words, with the task as it is now where that helps.
async fn refused(api: &Api, viewer: &Viewer, id: &str, action: Action, e: WireError) -> Response {
    let d = &api.daemon;
    let (status, title, message) = match e.code {
        ErrorCode::InvalidTransition => (
            StatusCode::CONFLICT,
            "Someone else decided first",
            "This task is no longer in a state where that can be done. Nothing was changed by you; this is where it stands now:".to_string(),
        ),
        ErrorCode::InvalidReason => (
            StatusCode::BAD_REQUEST,
            // Empty, or present but unusable (too long, control characters): the message says which.
            if e.message.starts_with("a reason is required") {
                "A reason is required"
            } else {
                "The reason cannot be used"
            },
            format!("{} Nothing was changed: go back and say why you reject the task.", e.message),
        ),
        ErrorCode::NotFound | ErrorCode::InvalidId => (
            StatusCode::NOT_FOUND,
            "No such task",
            format!("There is no task {id} (it may have been removed by retention)."),
        ),
        _ => {
            tracing::warn!(code = %e.code, error = %e.message, "console: an action failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "That did not work",
                format!("{} ({}). Nothing was changed.", e.message, e.code),
            )
        }
    };
    let now = match e.code {
        ErrorCode::InvalidTransition | ErrorCode::InvalidReason => query::show(d, id).await.ok(),
        _ => None,
    };
    let _ = action;
    let body = html! {
        section.panel.problem {
            h1 { (title) }
            p { (message) }
            @if let Some((task, events)) = &now {
                div.now {
                    p {
                        a.id href={"/console/tasks/" (task.id)} { (task.id) } " is now "
                        (state_badge(task.state))
                    }
                    @if let Some(last) = events.last() {
                        p.muted {
                            (last.action) " by " strong { (last.actor) }
                            @if let Some(via) = last.details.as_ref().and_then(|m| m.get("via")) {
                                " via " (via)
                            }
                            ", " (layout::when(&last.at, d.clock.now_ms()))
                        }
                    }
                }
            }
            p.links {
                a href="/console/approvals" { "Back to the approvals" }
                " · "
                a href={"/console/tasks/" (id)} { "Open the task" }
            }
        }
    };
    html_response(status, layout::page(d, viewer, title, "", body))
}
