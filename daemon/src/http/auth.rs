//! Bearer-token authentication for the HTTP API.
//!
//! The token is the one `orchctl init` / `orchctl rotate-token` write into the state directory. It
//! is read again for every request (a stat and a read of a 65-byte file), so a rotated token takes
//! effect at once and the old one stops working without a restart. A token file that group or
//! others can read is treated as compromised: the API refuses to serve until it is fixed.
//!
//! Comparison is constant-time over SHA-256 digests of both sides, so neither the contents nor the
//! length of the expected token leak through timing.

use super::error::{code, ApiError};
use crate::credentials;
use axum::http::{HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use subtle::ConstantTimeEq;

/// What the token file holds, as far as serving is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFile {
    Ready(String),
    /// No token yet: `orchctl init` has not been run.
    Missing,
    /// Group or others can read it; the message says how to fix it.
    Insecure(String),
    /// Unreadable or empty.
    Unreadable(String),
}

impl TokenFile {
    pub fn load(path: &Path) -> TokenFile {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return TokenFile::Missing,
            Err(e) => {
                return TokenFile::Unreadable(format!(
                    "cannot read token file {}: {e}",
                    path.display()
                ))
            }
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                return TokenFile::Insecure(
                    credentials::token_problem(path)
                        .unwrap_or_else(|| format!("token file {} is not private", path.display())),
                )
            }
            Ok(_) => {}
        }
        match credentials::read_token(path) {
            Ok(token) => TokenFile::Ready(token),
            Err(message) => TokenFile::Unreadable(message),
        }
    }

    /// Why the API cannot serve, as the error a client gets; `None` when it can.
    pub fn refusal(&self) -> Option<ApiError> {
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        match self {
            TokenFile::Ready(_) => None,
            TokenFile::Missing => Some(ApiError::new(
                unavailable,
                code::NOT_INITIALIZED,
                "no bearer token has been created; run `orchctl init`",
            )),
            TokenFile::Insecure(_) => Some(ApiError::new(
                unavailable,
                code::TOKEN_INSECURE,
                "the bearer token file is readable by other users; the API is off until it is fixed (see the daemon log)",
            )),
            TokenFile::Unreadable(_) => Some(ApiError::new(
                unavailable,
                code::TOKEN_UNREADABLE,
                "the bearer token file cannot be read (see the daemon log)",
            )),
        }
    }
}

/// The token carried by an `Authorization: Bearer <token>` header. The scheme is case-insensitive
/// (RFC 7235); anything else is no token at all.
pub fn bearer(header: Option<&HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Constant-time equality of a presented token and the expected one.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// A short, stable, non-secret name for a token: the first 8 hex digits of its SHA-256, the same
/// as `printf %s "$(cat token)" | sha256sum | cut -c1-8`. It is what the trajectory records as the
/// actor of an HTTP request, so an operator can tell which token (before or after a rotation) acted.
pub fn token_id(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(Some(&h("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Some("abc"));
        assert_eq!(bearer(Some(&h("Basic abc"))), None);
        assert_eq!(bearer(Some(&h("Bearer"))), None);
        assert_eq!(bearer(Some(&h("Bearer "))), None);
        assert_eq!(bearer(Some(&h("abc"))), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("", "abc"));
    }

    #[test]
    fn token_id_is_a_short_stable_digest_prefix() {
        // SHA-256("abc") = ba7816bf...
        assert_eq!(token_id("abc"), "ba7816bf");
        assert_ne!(token_id("abd"), token_id("abc"));
    }

    #[test]
    fn token_file_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert_eq!(TokenFile::load(&path), TokenFile::Missing);
        credentials::write_atomic(&path, b"secret\n", 0o600).unwrap();
        assert_eq!(TokenFile::load(&path), TokenFile::Ready("secret".into()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let state = TokenFile::load(&path);
        assert!(
            matches!(&state, TokenFile::Insecure(m) if m.contains("0640")),
            "{state:?}"
        );
        assert_eq!(state.refusal().unwrap().code, code::TOKEN_INSECURE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "  \n").unwrap();
        assert!(matches!(TokenFile::load(&path), TokenFile::Unreadable(_)));
    }
}
