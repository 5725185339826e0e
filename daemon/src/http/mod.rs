//! The HTTP listener (`[http] listen`, on by default on 127.0.0.1:7419): the original proposal's six
//! API routes for dashboards and scripts, and the web console under `/console/` ([`console`]),
//! beside the control socket and sharing the same daemon.
//!
//! - `GET  /orchestrator/health` — no authentication: `{ok, mode, version, hasCredentials}`.
//! - `GET  /orchestrator/routing/preview?goal=…&capabilities=a,b` — as `orchctl route`.
//! - `GET  /orchestrator/tasks?state=&kind=&limit=&agent=&goal=&before=&after=` — as `orchctl tasks
//!   list`, a page with `next`.
//! - `GET  /orchestrator/tasks/{id}` — as `orchctl tasks show` (with `trajectory`).
//! - `POST /orchestrator/tasks` — `{goal, workspaceDir?, requiredCapabilities?}`, kind = the mode.
//! - `POST /orchestrator/tasks/{id}/transition` — `{action: approve|reject|cancel, reason?}`.
//! - `GET  /metrics` — Prometheus text, as `orchctl metrics`; the token only with
//!   `[http] metrics_token`.
//! - `GET  /orchestrator/openapi.json` — no authentication: `docs/openapi.json`, the description of
//!   all of these.
//!
//! Every other route needs `Authorization: Bearer <token>` ([`auth`]). Each route is a thin
//! adapter ([`routes`]) over the same functions the socket verbs call, so both front ends validate,
//! store and record alike; only the identity differs (`http:<token id>` instead of the peer's user).

pub mod auth;
mod body;
pub mod console;
pub mod error;
mod routes;

use crate::daemon::Daemon;
use auth::TokenFile;
use axum::extract::FromRequestParts;
use axum::extract::{MatchedPath, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::Method;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use error::{code, ApiError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Request bodies larger than this are refused with 413 `request_too_large`.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// A token-file problem is logged at most this often, however many requests hit it.
const PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What every route shares: the daemon, and when a token problem was last logged.
pub struct Api {
    pub daemon: Arc<Daemon>,
    last_problem_log: Mutex<Option<Instant>>,
    /// The console's recent shadow summaries, reused for a few seconds.
    pub(crate) shadow_summaries: console::SummaryCache,
}

impl Api {
    pub fn new(daemon: Arc<Daemon>) -> Api {
        Api {
            daemon,
            last_problem_log: Mutex::new(None),
            shadow_summaries: console::SummaryCache::default(),
        }
    }

    fn token_file(&self) -> TokenFile {
        TokenFile::load(&self.daemon.paths.token_file())
    }

    /// Log why the API cannot serve, at most once per [`PROBLEM_LOG_INTERVAL`].
    fn log_problem(&self, state: &TokenFile) {
        let now = Instant::now();
        let due = match self.last_problem_log.lock() {
            Ok(mut last) => {
                let due = match *last {
                    None => true,
                    Some(t) => now.duration_since(t) >= PROBLEM_LOG_INTERVAL,
                };
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => true,
        };
        if !due {
            return;
        }
        match state {
            TokenFile::Ready(_) => {}
            TokenFile::Missing => tracing::warn!(
                token = %self.daemon.paths.token_file().display(),
                "http: refusing requests: no bearer token yet (run `orchctl init`)"
            ),
            TokenFile::Insecure(why) | TokenFile::Unreadable(why) => {
                tracing::error!("http: refusing requests: {why}")
            }
        }
    }

    /// Check a request's bearer token against the token file as it is now.
    pub(crate) fn authorize(&self, parts: &Parts) -> Result<Caller, ApiError> {
        let state = self.token_file();
        let expected = match &state {
            TokenFile::Ready(token) => token,
            other => {
                self.log_problem(other);
                return Err(other.refusal().unwrap_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        code::NOT_INITIALIZED,
                        "no usable bearer token",
                    )
                }));
            }
        };
        match auth::bearer(parts.headers.get(AUTHORIZATION)) {
            Some(presented) if auth::token_matches(presented, expected) => Ok(Caller {
                token_id: auth::token_id(expected),
            }),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHORIZED,
                "the bearer token is not valid",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHORIZED,
                "an `Authorization: Bearer <token>` header is required",
            )),
        }
    }
}

/// An authenticated client. Taking it as a handler argument is what makes a route need the token.
pub struct Caller {
    pub token_id: String,
}

impl Caller {
    /// The identity recorded for what this client does: never text the client supplied.
    pub fn actor(&self) -> String {
        format!("http:{}", self.token_id)
    }
}

impl FromRequestParts<Arc<Api>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Caller, ApiError> {
        api.authorize(parts)
    }
}

/// Every route: method, path (as axum spells it), handler. The router is built from this table and
/// the OpenAPI document is checked against it, so neither can gain a route the other lacks.
fn table() -> Vec<(Method, &'static str, MethodRouter<Arc<Api>>)> {
    vec![
        (Method::GET, "/metrics", get(routes::metrics)),
        (Method::GET, "/orchestrator/health", get(routes::health)),
        (
            Method::GET,
            "/orchestrator/openapi.json",
            get(routes::openapi),
        ),
        (
            Method::GET,
            "/orchestrator/routing/preview",
            get(routes::preview),
        ),
        (Method::GET, "/orchestrator/tasks", get(routes::list_tasks)),
        (
            Method::POST,
            "/orchestrator/tasks",
            post(routes::submit_task),
        ),
        (
            Method::GET,
            "/orchestrator/tasks/{id}",
            get(routes::show_task),
        ),
        (
            Method::POST,
            "/orchestrator/tasks/{id}/transition",
            post(routes::transition_task),
        ),
    ]
}

/// Every route the server has, as `(method, path)`.
pub fn routes() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The OpenAPI 3.1 description of these routes, served at `/orchestrator/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub fn router(api: Arc<Api>) -> Router {
    let mut by_path: BTreeMap<&str, MethodRouter<Arc<Api>>> = BTreeMap::new();
    for (_, path, handler) in table() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(path, merged);
    }
    let mut router = Router::new();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .route_layer(middleware::from_fn_with_state(Arc::clone(&api), timed))
        // The console's pages are not API routes: outside the OpenAPI table and its timing.
        .merge(console::router())
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .with_state(api)
}

/// Observe each routed request's latency, labelled by its method and route pattern.
async fn timed(
    State(api): State<Arc<Api>>,
    matched: Option<MatchedPath>,
    request: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    let verb = format!(
        "{} {}",
        request.method(),
        matched.as_ref().map_or("", |m| m.as_str())
    );
    let began = Instant::now();
    let response = next.run(request).await;
    let took = began.elapsed().as_secs_f64();
    api.daemon
        .metrics
        .request_duration
        .observe(&["http", &verb], took);
    response
}

/// Bind the listener. Done before the daemon reports ready, so that a taken port fails the start
/// loudly instead of leaving a daemon without the API its operator configured.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until the daemon shuts down; then let in-flight requests finish.
pub async fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    let shutdown = daemon.shutdown.clone();
    let app = router(Arc::new(Api::new(daemon)));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "http: the listener failed");
    }
}
