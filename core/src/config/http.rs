//! `[http]`: the HTTP listener (API and console). On by default on [`DEFAULT_LISTEN`];
//! `listen = "off"` turns it off. `session_ttl` is how long a console sign-in lasts;
//! `metrics_token` whether `GET /metrics` needs the token; `public_url` where notification links
//! point.

use super::validator::Validator;
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use toml::Spanned;

/// Where the HTTP listener binds when the config does not say.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT);
pub const DEFAULT_PORT: u16 = 7419;
/// How long a console session lasts when the config does not say.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Whether `listen` was written in the file. A default address that is taken only turns HTTP
    /// off; an explicit one that cannot be bound fails the start.
    pub explicit: bool,
    pub session_ttl: Duration,
    /// `GET /metrics` needs the bearer token. Off by default on a loopback address, on otherwise.
    pub metrics_token: bool,
    /// The address people reach the daemon at, for links in notifications.
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: DEFAULT_LISTEN,
            explicit: false,
            session_ttl: DEFAULT_SESSION_TTL,
            metrics_token: false,
            public_url: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Option<Spanned<String>>,
    session_ttl: Option<Spanned<String>>,
    metrics_token: Option<bool>,
    public_url: Option<Spanned<String>>,
}

impl Validator<'_> {
    /// `None` when HTTP is off. A non-loopback address is allowed but warned about: the API is
    /// meant for a local dashboard.
    pub(super) fn http(&mut self, raw: Option<RawHttp>) -> Option<HttpConfig> {
        let Some(raw) = raw else {
            return Some(HttpConfig::default());
        };
        let session_ttl = self.positive_duration(
            "http.session_ttl",
            raw.session_ttl.as_ref(),
            DEFAULT_SESSION_TTL,
        );
        let public_url = raw.public_url.map(|u| {
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
        let Some(listen) = raw.listen else {
            return Some(HttpConfig {
                session_ttl,
                metrics_token: raw.metrics_token.unwrap_or(false),
                public_url,
                ..HttpConfig::default()
            });
        };
        if listen.get_ref().trim() == "off" {
            return None;
        }
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    self.warnings
                        .push(format!("http.listen {addr} is not a loopback address"));
                }
                Some(HttpConfig {
                    listen: addr,
                    explicit: true,
                    session_ttl,
                    metrics_token: raw.metrics_token.unwrap_or(!addr.ip().is_loopback()),
                    public_url,
                })
            }
            Err(e) => {
                self.err(
                    "http.listen",
                    Some(&listen),
                    format!(
                        "invalid address {:?}: {e} (use e.g. \"127.0.0.1:7419\", or \"off\")",
                        listen.get_ref()
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn http_is_on_by_default_on_the_loopback_port() {
        let cfg = Config::from_toml("", None).unwrap();
        assert_eq!(cfg.http, Some(HttpConfig::default()));
        assert_eq!(cfg.http.unwrap().listen.to_string(), "127.0.0.1:7419");
    }

    #[test]
    fn listen_off_turns_http_off() {
        let cfg = Config::from_toml("[http]\nlisten = \"off\"\n", None).unwrap();
        assert_eq!(cfg.http, None);
    }

    #[test]
    fn an_explicit_address_and_ttl_are_kept() {
        let cfg = Config::from_toml(
            "[http]\nlisten = \"127.0.0.1:0\"\nsession_ttl = \"30m\"\n",
            None,
        )
        .unwrap();
        let h = cfg.http.unwrap();
        assert!(h.explicit);
        assert_eq!(h.listen.port(), 0);
        assert_eq!(h.session_ttl, Duration::from_secs(1800));
        let only_ttl = Config::from_toml("[http]\nsession_ttl = \"1h\"\n", None).unwrap();
        assert!(!only_ttl.http.unwrap().explicit);
    }

    #[test]
    fn bad_listen_and_ttl_are_errors() {
        let e = Config::from_toml("[http]\nlisten = \"nowhere\"\n", None).unwrap_err();
        assert!(e.to_string().contains("http.listen"), "{e}");
        let e = Config::from_toml("[http]\nsession_ttl = \"0\"\n", None).unwrap_err();
        assert!(e.to_string().contains("http.session_ttl"), "{e}");
        // Added to the sign-in's instant: a ttl past any instant is refused here, not at sign-in.
        let e = Config::from_toml("[http]\nsession_ttl = \"300000000000y\"\n", None).unwrap_err();
        assert!(e.to_string().contains("http.session_ttl"), "{e}");
        assert!(e.to_string().contains("longer than 100 years"), "{e}");
    }
}
