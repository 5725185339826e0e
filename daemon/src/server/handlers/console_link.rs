//! `console`: a single-use login link for the web console, minted for the peer of this connection
//! (its peer credentials say who; `[socket]` says whether the session may act or only look).

use crate::access::{Access, Peer};
use crate::clock::{now_ms, rfc3339};
use crate::daemon::Daemon;
use crate::sessions::{Identity, LOGIN_CODE_TTL};
use orchestrator_proto::message::ConsoleLink;
use orchestrator_proto::{ErrorCode, Response, WireError};
use std::net::SocketAddr;

pub fn handle(d: &Daemon, peer: &Peer) -> Result<Response, WireError> {
    let Some(listen) = d.http_listen.get().cloned() else {
        return Err(WireError::new(
            ErrorCode::HttpOff,
            "the HTTP listener is off, so there is no console: see `orchctl status` and [http] listen",
        ));
    };
    let url = login_url(&listen)?;
    // The session keeps the name as it is now, when the link is minted.
    let user = peer.user().to_string();
    let code = d
        .sessions
        .mint_code(Identity::User(peer.clone()))
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    // Codes expire in real time (an `Instant`), so the time shown is the wall clock's too.
    let expires = now_ms().saturating_add(LOGIN_CODE_TTL.as_millis() as i64);
    tracing::info!(user = %user, uid = peer.uid, "console: login link minted");
    Ok(Response::ConsoleLink(ConsoleLink {
        url: format!("{url}?code={code}"),
        expires_at: rfc3339(expires),
        user,
        read_only: d.access().check(peer) != Access::Full,
    }))
}

/// The login page's address; a wildcard bind is reached on loopback.
fn login_url(listen: &str) -> Result<String, WireError> {
    let mut addr: SocketAddr = listen.parse().map_err(|e| {
        WireError::new(
            ErrorCode::Internal,
            format!("bad listen address {listen}: {e}"),
        )
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(format!("http://{addr}/console/login"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        assert_eq!(
            login_url("0.0.0.0:7419").unwrap(),
            "http://127.0.0.1:7419/console/login"
        );
        assert_eq!(
            login_url("[::]:80").unwrap(),
            "http://[::1]:80/console/login"
        );
        assert_eq!(
            login_url("127.0.0.1:5").unwrap(),
            "http://127.0.0.1:5/console/login"
        );
    }
}
