//! Console sign-in: single-use login codes and the browser sessions they open.
//!
//! Neither the control socket nor the HTTP listener owns these: the socket mints a code for the
//! user at the other end of a connection (`orchctl console`), and the console redeems it and keeps
//! the session. Both go through this registry, so no front end imports another.
//!
//! Sessions live in memory only: a daemon restart ends them all, and the console asks everyone to
//! sign in again (see `README.md`). Every secret is 128 bits from the operating system's random
//! source; a failing source refuses the sign-in rather than handing out a guessable value.

use crate::access::Peer;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login link can be used.
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(5 * 60);
/// More open codes or sessions than this and the oldest-expiring go first: a bound on memory.
const MAX_ENTRIES: usize = 10_000;

/// Who a session acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A Unix user, as the control socket saw them when the link was minted. Their rights are
    /// checked against `[socket]` on every request, so a reload that takes them away takes effect.
    User(Peer),
    /// Whoever pasted the bearer token (`http:<token id>`), with full rights.
    Token { token_id: String },
}

impl Identity {
    /// The name recorded as the actor of what this session does.
    pub fn actor_name(&self) -> String {
        match self {
            Identity::User(p) => p.user().to_string(),
            Identity::Token { token_id } => format!("http:{token_id}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub identity: Identity,
    /// The token every POST of this session must carry.
    pub csrf: String,
    pub expires: Instant,
}

struct Code {
    identity: Identity,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, Code>,
    sessions: HashMap<String, Session>,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Debug, thiserror::Error)]
#[error("no random numbers from the operating system: {0}")]
pub struct NoRandom(String);

/// 128 random bits as 32 hex digits.
pub fn secret() -> Result<String, NoRandom> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| NoRandom(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Drop expired entries, then the ones expiring soonest while over the bound.
fn prune<V>(map: &mut HashMap<String, V>, now: Instant, expires: impl Fn(&V) -> Instant) {
    map.retain(|_, v| expires(v) > now);
    while map.len() >= MAX_ENTRIES {
        let Some(first) = map
            .iter()
            .min_by_key(|(_, v)| expires(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&first);
    }
}

impl Sessions {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        match self.inner.lock() {
            Ok(mut i) => f(&mut i),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// A fresh single-use login code for `identity`, valid for [`LOGIN_CODE_TTL`].
    pub fn mint_code(&self, identity: Identity) -> Result<String, NoRandom> {
        let code = secret()?;
        let now = Instant::now();
        self.with(|i| {
            prune(&mut i.codes, now, |c| c.expires);
            i.codes.insert(
                code.clone(),
                Code {
                    identity,
                    expires: now + LOGIN_CODE_TTL,
                },
            );
        });
        Ok(code)
    }

    /// Use a login code: it is gone afterwards, whether or not it was still valid.
    pub fn redeem(&self, code: &str) -> Option<Identity> {
        let now = Instant::now();
        self.with(|i| i.codes.remove(code))
            .filter(|c| c.expires > now)
            .map(|c| c.identity)
    }

    /// Open a session for `identity` that lasts `ttl`.
    pub fn open(&self, identity: Identity, ttl: Duration) -> Result<Session, NoRandom> {
        let now = Instant::now();
        let session = Session {
            id: secret()?,
            identity,
            csrf: secret()?,
            expires: now + ttl,
        };
        self.with(|i| {
            prune(&mut i.sessions, now, |s| s.expires);
            i.sessions.insert(session.id.clone(), session.clone());
        });
        Ok(session)
    }

    /// The session with this id, unless it has expired (an expired one is forgotten).
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        self.with(|i| match i.sessions.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                i.sessions.remove(id);
                None
            }
            None => None,
        })
    }

    pub fn close(&self, id: &str) {
        self.with(|i| i.sessions.remove(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Identity {
        Identity::Token {
            token_id: "abcd1234".into(),
        }
    }

    #[test]
    fn a_login_code_works_once() {
        let s = Sessions::default();
        let code = s.mint_code(token()).unwrap();
        assert_eq!(code.len(), 32);
        assert_eq!(s.redeem(&code), Some(token()));
        assert_eq!(s.redeem(&code), None);
        assert_eq!(s.redeem("not-a-code"), None);
    }

    #[test]
    fn sessions_end_when_closed_or_expired() {
        let s = Sessions::default();
        let a = s.open(token(), Duration::from_secs(60)).unwrap();
        assert_ne!(a.id, a.csrf);
        assert_eq!(s.get(&a.id).map(|x| x.csrf), Some(a.csrf.clone()));
        s.close(&a.id);
        assert!(s.get(&a.id).is_none());
        let b = s.open(token(), Duration::ZERO).unwrap();
        assert!(s.get(&b.id).is_none(), "a session past its end is refused");
    }

    #[test]
    fn secrets_differ() {
        assert_ne!(secret().unwrap(), secret().unwrap());
    }

    #[test]
    fn the_registry_stays_bounded() {
        let s = Sessions::default();
        for _ in 0..MAX_ENTRIES + 5 {
            s.mint_code(token()).unwrap();
        }
        assert!(s.with(|i| i.codes.len()) <= MAX_ENTRIES);
    }
}
