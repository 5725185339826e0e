//! The routes. Each one turns the HTTP request into the arguments of an operation of the
//! application layer ([`crate::tasks`]), and the result into JSON with the wire types' field names.

use super::body;
use super::error::{code, ApiError};
use super::{Api, Caller};
use crate::tasks::{query, route, submit, transition, via, Actor};
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_proto::message::{PageQuery, SubmitRequest};
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent};
use orchestrator_proto::ErrorCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;
type Id = Result<Path<String>, PathRejection>;

fn params(q: Params) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(map)| map).map_err(|e| {
        ApiError::wire(
            ErrorCode::MalformedRequest,
            format!("cannot read the query string: {e}"),
        )
    })
}

fn path_id(p: Id) -> Result<String, ApiError> {
    p.map(|Path(id)| id).map_err(|e| {
        ApiError::wire(
            ErrorCode::MalformedRequest,
            format!("cannot read the task id: {e}"),
        )
    })
}

/// A query parameter, with an empty value meaning "not given" (`?state=&kind=`).
fn param<'a>(map: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn task_with_trajectory(task: &Task, events: &[TrajectoryEvent]) -> Result<Value, ApiError> {
    let encode = |e: serde_json::Error| {
        ApiError::wire(ErrorCode::Internal, format!("cannot encode the task: {e}"))
    };
    let mut v = serde_json::to_value(task).map_err(encode)?;
    if let Value::Object(map) = &mut v {
        map.insert(
            "trajectory".into(),
            serde_json::to_value(events).map_err(encode)?,
        );
    }
    Ok(v)
}

/// `GET /orchestrator/health`: no authentication; says whether the API could serve.
pub async fn health(State(api): State<Arc<Api>>) -> Json<Value> {
    let has_credentials = matches!(api.token_file(), super::TokenFile::Ready(_));
    Json(json!({
        "ok": true,
        "mode": api.daemon.mode().effective,
        "version": env!("CARGO_PKG_VERSION"),
        "hasCredentials": has_credentials,
    }))
}

/// `GET /metrics`: the Prometheus text of `orchctl metrics`; the bearer token only when
/// `[http] metrics_token` asks for it.
pub async fn metrics(
    State(api): State<Arc<Api>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let needs_token = api
        .daemon
        .config()
        .http
        .as_ref()
        .is_some_and(|h| h.metrics_token);
    if needs_token {
        let (parts, _) = request.into_parts();
        api.authorize(&parts)?;
    }
    let text = api.daemon.metrics_text().await;
    Ok(([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response())
}

/// `GET /orchestrator/openapi.json`: no authentication; the description of every route.
pub async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

/// `GET /orchestrator/routing/preview?goal=…&capabilities=a,b`: as `orchctl route`.
pub async fn preview(
    State(api): State<Arc<Api>>,
    _caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    let q = params(q)?;
    let goal = q.get("goal").map(String::as_str).unwrap_or_default();
    let capabilities: Vec<String> = param(&q, "capabilities")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let decision = route::preview(&api.daemon, goal, &capabilities)?;
    Ok(Json(decision).into_response())
}

/// `GET /orchestrator/tasks?state=&kind=&limit=&agent=&goal=&before=&after=`: as `orchctl tasks
/// list`, as `{"tasks": [...], "next": ID|null}`; `next` is the `before` of the following page.
pub async fn list_tasks(
    State(api): State<Arc<Api>>,
    _caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    let q = params(q)?;
    let state = param(&q, "state")
        .map(|s| s.parse::<TaskState>())
        .transpose()
        .map_err(|m| ApiError::wire(ErrorCode::InvalidState, m))?;
    let kind = param(&q, "kind")
        .map(|k| k.parse::<TaskKind>())
        .transpose()
        .map_err(|m| ApiError::wire(ErrorCode::InvalidKind, m))?;
    let limit = match param(&q, "limit") {
        None => query::DEFAULT_LIST,
        Some(l) => l.parse::<u32>().map_err(|_| {
            ApiError::wire(
                ErrorCode::InvalidArgument,
                format!("limit must be a number between 1 and {}", query::MAX_LIST),
            )
        })?,
    };
    let text = |key: &str| param(&q, key).map(str::to_string);
    let page = query::page(
        &api.daemon,
        PageQuery {
            state,
            kind,
            limit,
            include_harness: false,
            agent: text("agent"),
            goal: text("goal"),
            before: text("before"),
            after: text("after"),
        },
    )
    .await?;
    Ok(Json(json!({ "tasks": page.tasks, "next": page.next })).into_response())
}

/// `GET /orchestrator/tasks/{id}`: the task with its `trajectory`, as `orchctl tasks show`.
pub async fn show_task(
    State(api): State<Arc<Api>>,
    _caller: Caller,
    id: Id,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let (task, events) = query::show(&api.daemon, &id).await?;
    Ok(Json(task_with_trajectory(&task, &events)?).into_response())
}

/// `POST /orchestrator/tasks`: `{goal, workspaceDir?, requiredCapabilities?}` → 201 with the task.
/// The kind is the daemon's mode and the submitter the token's identity, whatever the body says.
pub async fn submit_task(
    State(api): State<Arc<Api>>,
    caller: Caller,
    headers: HeaderMap,
    payload: Body,
) -> Result<Response, ApiError> {
    let obj = body::object(&headers, payload).await?;
    let goal = body::optional_string(&obj, "goal", ErrorCode::MissingGoal)?.unwrap_or_default();
    let request = SubmitRequest {
        goal,
        required_capabilities: body::optional_strings(&obj, "requiredCapabilities")?,
        workspace_dir: body::optional_string(&obj, "workspaceDir", ErrorCode::InvalidArgument)?,
        ttl_secs: None,
        wait: false,
    };
    let actor = Actor::named(caller.actor());
    let task = submit::new_task(&api.daemon, &request, &actor, false)?;
    let task = submit::submit(&api.daemon, task, &actor, false).await?;
    Ok((StatusCode::CREATED, Json(task)).into_response())
}

/// `POST /orchestrator/tasks/{id}/transition`: `{action: approve|reject|cancel, reason?}`.
pub async fn transition_task(
    State(api): State<Arc<Api>>,
    caller: Caller,
    id: Id,
    headers: HeaderMap,
    payload: Body,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let obj = body::object(&headers, payload).await?;
    let action = body::optional_string(&obj, "action", ErrorCode::InvalidArgument)?;
    // A reason that is there must be a string, whatever the action: `123` is a client bug worth
    // hearing about, not something to ignore.
    let reason = body::optional_string(&obj, "reason", ErrorCode::InvalidReason)?;
    let actor = Actor::named(caller.actor()).via(via::HTTP);
    let d = &api.daemon;
    let task = match action.as_deref() {
        Some("approve") => transition::approve(d, &actor, &id).await?,
        Some("reject") => {
            transition::reject(d, &actor, &id, reason.as_deref().unwrap_or_default()).await?
        }
        Some("cancel") => transition::cancel(d, &actor, &id).await?,
        Some(other) => {
            let shown: String = other.chars().take(40).collect();
            return Err(ApiError::wire(
                ErrorCode::InvalidArgument,
                format!("unknown action {shown:?} (expected one of: approve, reject, cancel)"),
            )
            .with("action", shown));
        }
        None => {
            return Err(ApiError::wire(
                ErrorCode::InvalidArgument,
                "an action is required (approve, reject or cancel)",
            ))
        }
    };
    Ok(Json(task).into_response())
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// No route: a page for a person under `/console`, the API's JSON error elsewhere.
pub async fn not_found(uri: Uri) -> axum::response::Response {
    let path: String = uri.path().chars().take(200).collect();
    if path == "/console" || path.starts_with("/console/") {
        return super::console::no_such_page(&path);
    }
    ApiError::wire(ErrorCode::NotFound, format!("no route {path}")).into_response()
}
