//! Signing in: with a login link from `orchctl console` (as that Unix user), or by pasting the
//! bearer token (as `http:<token id>`); and signing out.

use crate::http::console::extract::Fields;
use crate::http::console::layout::{self, html_response};
use crate::http::console::session::{
    cookie, safe_next, same_secret, set_cookie, url_encode, Viewer, LOGIN_COOKIE, NEXT_COOKIE,
    SESSION_COOKIE,
};
use crate::http::{auth, Api, TokenFile};
use crate::sessions::{secret, Identity};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use maud::html;
use std::collections::HashMap;
use std::sync::Arc;

/// How long the login form and the remembered destination stay valid.
const FORM_TTL_SECS: u64 = 30 * 60;

fn session_ttl(api: &Api) -> std::time::Duration {
    api.daemon
        .config()
        .http
        .as_ref()
        .map(|h| h.session_ttl)
        .unwrap_or(crate::config::DEFAULT_SESSION_TTL)
}

/// Open a session and go where the person was headed.
fn signed_in(api: &Api, identity: Identity, next: Option<String>) -> Response {
    let ttl = session_ttl(api);
    let session = match api.daemon.sessions.open(identity, ttl) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "console: cannot open a session");
            return layout::refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot sign in",
                "The daemon could not create a session secret; see its log.",
            );
        }
    };
    tracing::info!(user = %session.identity.actor_name(), "console: signed in");
    let to = next
        .as_deref()
        .and_then(safe_next)
        .unwrap_or("/console/approvals")
        .to_string();
    (
        StatusCode::SEE_OTHER,
        AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &session.id, ttl.as_secs()),
            ),
            (header::SET_COOKIE, set_cookie(NEXT_COOKIE, "", 0)),
            (header::LOCATION, to),
        ]),
    )
        .into_response()
}

fn login_page(
    status: StatusCode,
    form_token: &str,
    next: Option<&str>,
    message: Option<(&str, &str)>,
) -> Response {
    let body = html! {
        section.panel.login {
            h1 { "Sign in" }
            @if let Some((class, text)) = message {
                p.notice.(class) role="status" { (text) }
            }
            p { "On the daemon's host, run:" }
            pre.cmd { "orchctl console --open" }
            p.muted {
                "It prints a link that signs you in as your Unix user, with your rights, once, within 5 minutes. "
                "From another machine, forward the port first: "
                code { "ssh -L 7419:127.0.0.1:7419 host" } "."
            }
            details.token {
                summary { "Sign in with the bearer token" }
                form method="post" action="/console/login" {
                    input type="hidden" name="csrf" value=(form_token);
                    @if let Some(n) = next { input type="hidden" name="next" value=(n); }
                    label for="token" { "Token (from the state directory's " code { "token" } " file)" }
                    input #token type="password" name="token" autocomplete="off" required;
                    button.primary type="submit" { "Sign in" }
                }
            }
        }
    };
    let mut res = html_response(status, layout::bare("Sign in", body));
    let headers = res.headers_mut();
    if let Ok(v) = set_cookie(LOGIN_COOKIE, form_token, FORM_TTL_SECS).parse() {
        headers.append(header::SET_COOKIE, v);
    }
    if let Some(Ok(v)) =
        next.map(|n| set_cookie(NEXT_COOKIE, &url_encode(n), FORM_TTL_SECS).parse())
    {
        headers.append(header::SET_COOKIE, v);
    }
    res
}

fn fresh_form_token() -> String {
    secret().unwrap_or_default()
}

/// `GET /console/login`: redeem `?code=` from a login link, or show how to sign in.
pub async fn show(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next_param = q.get("next").map(String::as_str).and_then(safe_next);
    if let Some(code) = q.get("code") {
        return match api.daemon.sessions.redeem(code) {
            Some(identity) => {
                let next = cookie(&headers, NEXT_COOKIE)
                    .map(|n| percent_decode(&n))
                    .or_else(|| next_param.map(str::to_string));
                signed_in(&api, identity, next)
            }
            None => {
                tracing::info!("console: refused a used or expired login link");
                login_page(
                    StatusCode::FORBIDDEN,
                    &fresh_form_token(),
                    None,
                    Some((
                        "bad",
                        "This login link has already been used or has expired. Run `orchctl console` for a new one.",
                    )),
                )
            }
        };
    }
    let message = if q.contains_key("out") {
        Some(("ok", "You are signed out."))
    } else if next_param.is_some() {
        Some(("warn", "Please sign in (again) to continue."))
    } else {
        None
    };
    login_page(StatusCode::OK, &fresh_form_token(), next_param, message)
}

/// `POST /console/login`: sign in with the bearer token.
pub async fn token(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Fields(form): Fields,
) -> Response {
    let next = form.get("next").map(String::as_str).and_then(safe_next);
    let expected_form = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let presented_form = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !same_secret(presented_form, &expected_form) {
        return layout::refusal(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "Reload the sign-in page and try again.",
        );
    }
    let presented = form.get("token").map(|t| t.trim()).unwrap_or_default();
    let again = |message: &str| {
        login_page(
            StatusCode::UNAUTHORIZED,
            &fresh_form_token(),
            next,
            Some(("bad", message)),
        )
    };
    match api.token_file() {
        TokenFile::Ready(expected) if auth::token_matches(presented, &expected) => signed_in(
            &api,
            Identity::Token {
                token_id: auth::token_id(&expected),
            },
            next.map(str::to_string),
        ),
        TokenFile::Ready(_) => again("That is not the bearer token."),
        _ => again("The daemon has no usable bearer token; run `orchctl init` on its host, or use `orchctl console`."),
    }
}

/// `POST /console/logout`.
pub async fn logout(State(api): State<Arc<Api>>, viewer: Viewer, Fields(form): Fields) -> Response {
    if let Some(refused) = viewer.csrf_refusal(&form) {
        return refused;
    }
    api.daemon.sessions.close(&viewer.session.id);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0)),
            (header::LOCATION, "/console/login?out=1".to_string()),
        ],
    )
        .into_response()
}

/// Undo the percent-encoding of [`url_encode`].
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_survive_the_cookie() {
        let next = "/console/pipeline?q=a b;c&state=queued";
        assert_eq!(percent_decode(&url_encode(next)), next);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
