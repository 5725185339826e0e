//! Who is signed in: the session cookie, the rights behind it, and the CSRF check of every POST.

use super::layout;
use crate::access::Access;
use crate::http::Api;
use crate::sessions::{Identity, Session};
use crate::tasks::{via, Actor};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "orch_session";
/// The login form's own CSRF token, before there is a session to hold one.
pub const LOGIN_COOKIE: &str = "orch_login";
/// Where to go back to once signed in.
pub const NEXT_COOKIE: &str = "orch_next";

/// The value of cookie `name`, if the request has it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, scoped to the console.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> String {
    format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}")
}

/// Only paths inside the console are places to go back to: never another site.
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with("/console/")
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    ok.then_some(next)
}

/// The login page, remembering where the person was.
pub fn to_login(next: Option<&str>) -> Response {
    match next.and_then(safe_next) {
        Some(next) => {
            let q: String = url_encode(next);
            Redirect::to(&format!("/console/login?next={q}")).into_response()
        }
        None => Redirect::to("/console/login").into_response(),
    }
}

/// Percent-encoding for a query parameter value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Constant-time comparison of a presented secret with the expected one.
pub fn same_secret(presented: &str, expected: &str) -> bool {
    !expected.is_empty() && presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// A signed-in person. Taking it as a handler argument is what makes a page need a session.
pub struct Viewer {
    pub session: Session,
    /// Whether they may approve, reject and cancel (`[socket]` full access, or the bearer token).
    pub can_act: bool,
}

impl Viewer {
    pub fn name(&self) -> String {
        self.session.identity.actor_name()
    }

    /// The actor recorded for what they do: their user name (or `http:<token id>`), via the console.
    pub fn actor(&self) -> Actor {
        match &self.session.identity {
            Identity::User(peer) => Actor::peer(peer).via(via::CONSOLE),
            Identity::Token { .. } => Actor::named(self.name()).via(via::CONSOLE),
        }
    }

    /// The refusal of a POST whose form does not carry this session's CSRF token.
    pub fn csrf_refusal(&self, form: &HashMap<String, String>) -> Option<Response> {
        let presented = form.get("csrf").map(String::as_str).unwrap_or_default();
        if !same_secret(presented, &self.session.csrf) {
            return Some(layout::refusal(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The request did not carry this session's form token, so nothing was changed. Go back, reload the page and try again.",
            ));
        }
        None
    }

    /// The refusal of a decision without the CSRF token, or from a read-only viewer.
    pub fn decision_refusal(&self, form: &HashMap<String, String>) -> Option<Response> {
        if let Some(refused) = self.csrf_refusal(form) {
            return Some(refused);
        }
        if !self.can_act {
            return Some(layout::refusal(
                StatusCode::FORBIDDEN,
                "Read-only session",
                "You may look but not decide: your user has read-only access in [socket]. Nothing was changed.",
            ));
        }
        None
    }
}

/// Where a request that needs a session should come back to after signing in.
fn come_back_to(parts: &Parts) -> Option<String> {
    if parts.method == Method::GET {
        return Some(
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
        );
    }
    // A form POST to /console/tasks/{id}/{action}: back to the task.
    let path = parts.uri.path();
    let task = path
        .strip_prefix("/console/tasks/")
        .and_then(|rest| rest.split('/').next())?;
    Some(format!("/console/tasks/{task}"))
}

impl FromRequestParts<Arc<Api>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Viewer, Response> {
        let d = &api.daemon;
        let session = cookie(&parts.headers, SESSION_COOKIE).and_then(|id| d.sessions.get(&id));
        let Some(session) = session else {
            // Scripts' requests get a status, not a page.
            let path = parts.uri.path();
            if path == "/console/events" || path.starts_with("/console/pipeline/row/") {
                return Err(StatusCode::UNAUTHORIZED.into_response());
            }
            return Err(to_login(come_back_to(parts).as_deref()));
        };
        let access = match &session.identity {
            Identity::User(peer) => d.access().check(peer),
            Identity::Token { .. } => Access::Full,
        };
        if access == Access::Denied {
            // Their access was taken away by a reload since they signed in.
            d.sessions.close(&session.id);
            return Err(to_login(None));
        }
        Ok(Viewer {
            session,
            can_act: access == Access::Full,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; orch_session=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn only_console_paths_are_places_to_return_to() {
        assert_eq!(safe_next("/console/tasks/X"), Some("/console/tasks/X"));
        assert_eq!(safe_next("//evil.example/console/"), None);
        assert_eq!(safe_next("https://evil.example/"), None);
        assert_eq!(safe_next("/console/\\evil"), None);
        assert_eq!(safe_next("/orchestrator/tasks"), None);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("", ""));
    }
}
