//! Live updates: a server-sent event stream of committed trajectory events (the store's broadcast,
//! the same one `orchctl watch` follows), each with the counts the header and tabs show; and the
//! table row the script fetches for a task that is new or changed.

use super::extract::At;
use super::pages::pipeline::{row, Filters};
use super::session::Viewer;
use crate::http::error::status_of;
use crate::http::Api;
use crate::metrics::Metrics;
use crate::tasks::query;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use orchestrator_proto::task::{TaskKind, TaskState, TrajectoryEvent};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// What the header and the Pipeline tabs count, as the page reads it: `awaiting` (tasks waiting
/// for a decision) and `counts` (tasks by kind and state).
fn counts(api: &Api) -> Map<String, Value> {
    let counts = api.daemon.store.counts();
    let mut by_kind = Map::new();
    for k in TaskKind::ALL {
        let states: Map<String, Value> = TaskState::ALL
            .iter()
            .map(|s| (s.to_string(), json!(counts.get(k, *s))))
            .collect();
        by_kind.insert(k.to_string(), Value::Object(states));
    }
    let awaiting: u64 = TaskKind::ALL
        .iter()
        .map(|k| counts.get(*k, TaskState::AwaitingApproval))
        .sum();
    let mut out = Map::new();
    out.insert("awaiting".into(), json!(awaiting));
    out.insert("counts".into(), Value::Object(by_kind));
    out
}

/// A `task` event's data: the transition and the counts after it.
fn payload(api: &Api, ev: &TrajectoryEvent) -> String {
    let mut out = counts(api);
    for (k, v) in [
        ("taskId", json!(ev.task_id)),
        ("action", json!(ev.action)),
        ("from", json!(ev.from)),
        ("to", json!(ev.to)),
        ("actor", json!(ev.actor)),
        ("at", json!(ev.at)),
    ] {
        out.insert(k.into(), v);
    }
    Value::Object(out).to_string()
}

/// One open stream, counted in `orchestrator_console_streams` for as long as it lives: the
/// stream is dropped when the page closes it (noticed at the next write) or the daemon stops.
struct Open(Arc<Api>);

impl Open {
    fn new(api: Arc<Api>) -> Self {
        Metrics::inc(&api.daemon.metrics.console_streams);
        Self(api)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        Metrics::dec(&self.0.daemon.metrics.console_streams);
    }
}

/// `GET /console/events`: first a `counts` event with the counts as they are now (a page that
/// connects again after a pause brings its header up to date), then `task` events until the page
/// closes the stream or the daemon stops. A client that falls behind gets a `resync` event and
/// reloads what it shows.
pub async fn events(
    State(api): State<Arc<Api>>,
    _viewer: Viewer,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the counts are read, so that no commit falls between the two.
    let rx = api.daemon.store.watch_events();
    let hello = Event::default()
        .event("counts")
        .data(Value::Object(counts(&api)).to_string());
    let shutdown = api.daemon.shutdown.clone();
    let open = Open::new(api);
    let stream = stream::unfold(
        (rx, open, shutdown),
        |(mut rx, open, shutdown)| async move {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return None,
                ev = rx.recv() => match ev {
                    Ok(ev) => Event::default().event("task").data(payload(&open.0, &ev)),
                    Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                    Err(RecvError::Closed) => return None,
                }
            };
            Some((Ok(event), (rx, open, shutdown)))
        },
    );
    let stream = stream::once(std::future::ready(Ok(hello))).chain(stream);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /console/pipeline/row/{id}?<filters>`: the task's row, or 204 when it does not belong in
/// the view those filters make.
pub async fn row_fragment(api: &Api, id: &str, q: &HashMap<String, String>) -> Response {
    // A status only: the script that asks shows nothing for a row it cannot have.
    let task = match query::show(&api.daemon, id).await {
        Ok((task, _)) => task,
        Err(e) => return status_of(e.code).into_response(),
    };
    let filters = Filters::read(q, api.daemon.mode().effective);
    if !filters.admits(&task) {
        return StatusCode::NO_CONTENT.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        row(&task, api.daemon.clock.now_ms()).into_string(),
    )
        .into_response()
}

pub async fn row_route(
    State(api): State<Arc<Api>>,
    _viewer: Viewer,
    At(id): At<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    row_fragment(&api, &id, &q).await
}
