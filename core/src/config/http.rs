//! `[http]`: the optional HTTP API's listen address.

use super::validator::Validator;
use serde::Deserialize;
use std::net::SocketAddr;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Spanned<String>,
}

impl Validator<'_> {
    /// A non-loopback address is allowed but warned about: the API is meant for a local dashboard.
    pub(super) fn http(&mut self, raw: Option<RawHttp>) -> Option<HttpConfig> {
        raw.and_then(|h| match h.listen.get_ref().parse::<SocketAddr>() {
            Ok(listen) => {
                if !listen.ip().is_loopback() {
                    self.warnings
                        .push(format!("http.listen {listen} is not a loopback address"));
                }
                Some(HttpConfig { listen })
            }
            Err(e) => {
                self.err(
                    "http.listen",
                    Some(&h.listen),
                    format!("invalid address {:?}: {e}", h.listen.get_ref()),
                );
                None
            }
        })
    }
}
