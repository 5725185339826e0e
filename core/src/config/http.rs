//! `[http]`: the optional HTTP API's listen address, and whether `GET /metrics` needs the token.

use super::validator::Validator;
use serde::Deserialize;
use std::net::SocketAddr;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The address people reach the daemon at, for links in notifications.
    pub public_url: Option<String>,
    /// `GET /metrics` needs the bearer token. Off by default on a loopback address, on otherwise.
    pub metrics_token: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Spanned<String>,
    public_url: Option<Spanned<String>>,
    metrics_token: Option<bool>,
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
                let public_url = h.public_url.map(|u| {
                    let url = u.get_ref().trim_end_matches('/').to_string();
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        self.err(
                            "http.public_url",
                            Some(&u),
                            "must start with http:// or https://",
                        );
                    }
                    url
                });
                Some(HttpConfig {
                    listen,
                    public_url,
                    metrics_token: h.metrics_token.unwrap_or(!listen.ip().is_loopback()),
                })
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
