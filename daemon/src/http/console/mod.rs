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
mod extract;
mod layout;
mod live;
mod pages;
mod session;

use super::Api;
use axum::extract::{RawQuery, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub use pages::rollout::SummaryCache;
pub use session::SESSION_COOKIE;

/// A static file of the console, compiled into the daemon.
///
/// Pages link to it as `PATH?v=TAG`, `TAG` being a hash of its content: a browser keeps that URL
/// for a year without asking again, and a daemon with a changed file links to a new URL. Fetched
/// without the tag (or with another), it is sent with `no-cache` and an `ETag`, so the browser
/// asks again each time and is answered `304 Not Modified` while the file is the same.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
    tag: u64,
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static str) -> Asset {
        Asset {
            path,
            content_type,
            body,
            tag: fnv1a(body.as_bytes()),
        }
    }

    /// The URL pages link to.
    fn url(&self) -> String {
        format!("{}?v={:016x}", self.path, self.tag)
    }

    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.tag)
    }
}

/// FNV-1a, 64 bits: enough to tell two versions of a file apart, and computable at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

static CSS: Asset = Asset::new(
    "/console/assets/console.css",
    "text/css; charset=utf-8",
    include_str!("assets/console.css"),
);
static JS: Asset = Asset::new(
    "/console/assets/console.js",
    "text/javascript; charset=utf-8",
    include_str!("assets/console.js"),
);

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   frame-ancestors 'none'; form-action 'self'";

/// The page for a console path that matches no page.
pub fn no_such_page(path: &str) -> axum::response::Response {
    layout::refusal(
        axum::http::StatusCode::NOT_FOUND,
        "No such page",
        &format!("The console has no page {path}."),
    )
}

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
        .route(
            CSS.path,
            get(|q: RawQuery, h: HeaderMap| async move { serve(&CSS, q, &h) }),
        )
        .route(
            JS.path,
            get(|q: RawQuery, h: HeaderMap| async move { serve(&JS, q, &h) }),
        )
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

/// Serve `asset`: for a year when asked for by its current URL, otherwise revalidated by its ETag.
fn serve(asset: &Asset, RawQuery(query): RawQuery, headers: &HeaderMap) -> Response {
    let etag = asset.etag();
    let current = format!("v={:016x}", asset.tag);
    let cache = if query.is_some_and(|q| q.split('&').any(|p| p == current)) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
        });
    let mut res = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    res
}
