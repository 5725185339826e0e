//! The web console under `/console/`: server-rendered pages over the application layer
//! ([`crate::tasks`]) for the people who watch tasks and decide approvals.
//!
//! - [`session`]: who is signed in (a cookie naming a [`crate::sessions`] session), their rights,
//!   and the CSRF token every POST carries.
//! - [`pages`]: one module per page — login, pipeline, approvals, task, rollout, agents.
//! - [`actions`]: approve, reject and cancel as plain form POSTs.
//! - [`live`]: the server-sent event stream (the same committed events as `orchctl watch`) and the
//!   table rows the script fetches to show new tasks without a reload.
//! - [`layout`]: the page frame, the header's count of waiting approvals, shared bits of markup.
//!
//! Pages work without JavaScript; `console.js` only adds live updates. Every response carries a
//! Content-Security-Policy that allows nothing inline and nothing from another origin.

mod actions;
mod layout;
mod live;
mod pages;
mod session;

use super::Api;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub use pages::rollout::SummaryCache;
pub use session::SESSION_COOKIE;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   frame-ancestors 'none'; form-action 'self'";

/// The console's routes, to be merged into the HTTP listener's router.
pub fn router() -> Router<Arc<Api>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/approvals") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/approvals") }),
        )
        .route(
            "/console/login",
            get(pages::login::show).post(pages::login::token),
        )
        .route("/console/logout", post(pages::login::logout))
        .route("/console/pipeline", get(pages::pipeline::show))
        .route("/console/pipeline/row/{id}", get(live::row_route))
        .route("/console/approvals", get(pages::approvals::show))
        .route("/console/tasks/{id}", get(pages::task::show))
        .route(
            "/console/tasks/{id}/result.txt",
            get(pages::task::result_text),
        )
        .route(
            "/console/tasks/{id}/artefacts/{n}",
            get(pages::task::artefact),
        )
        .route("/console/tasks/{id}/approve", post(actions::approve))
        .route("/console/tasks/{id}/reject", post(actions::reject))
        .route("/console/tasks/{id}/cancel", post(actions::cancel))
        .route("/console/rollout", get(pages::rollout::show))
        .route("/console/agents", get(pages::agents::show))
        .route("/console/events", get(live::events))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}
