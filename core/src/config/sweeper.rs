//! `[sweeper]` and `[sweeper.retention]`: how often the sweeper runs, how long a lease lives, and
//! how long finished tasks of each kind are kept.

use super::validator::Validator;
use orchestrator_proto::task::Mode;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
const DEFAULT_SYNTHETIC: Duration = Duration::from_secs(86400);
const DEFAULT_SHADOW: Duration = Duration::from_secs(7 * 86400);
const DEFAULT_LIVE: Duration = Duration::from_secs(90 * 86400);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `None` keeps forever.
    pub synthetic: Option<Duration>,
    pub shadow: Option<Duration>,
    pub live: Option<Duration>,
}

impl Retention {
    pub fn for_kind(&self, kind: Mode) -> Option<Duration> {
        match kind {
            Mode::Synthetic => self.synthetic,
            Mode::Shadow => self.shadow,
            Mode::Live => self.live,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweeperConfig {
    pub interval: Duration,
    pub lease_ttl: Duration,
    pub retention: Retention,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSweeper {
    interval: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<String>>,
    retention: Option<RawRetention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    synthetic: Option<Spanned<String>>,
    shadow: Option<Spanned<String>>,
    live: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn sweeper(&mut self, raw: Option<RawSweeper>) -> SweeperConfig {
        match raw {
            None => SweeperConfig {
                interval: DEFAULT_INTERVAL,
                lease_ttl: DEFAULT_LEASE_TTL,
                retention: Retention {
                    synthetic: Some(DEFAULT_SYNTHETIC),
                    shadow: Some(DEFAULT_SHADOW),
                    live: Some(DEFAULT_LIVE),
                },
            },
            Some(s) => {
                let interval = self.positive_duration(
                    "sweeper.interval",
                    s.interval.as_ref(),
                    DEFAULT_INTERVAL,
                );
                let lease_ttl = self.positive_duration(
                    "sweeper.lease_ttl",
                    s.lease_ttl.as_ref(),
                    DEFAULT_LEASE_TTL,
                );
                let r = s.retention;
                let synthetic = self.retention(
                    "sweeper.retention.synthetic",
                    r.as_ref().and_then(|r| r.synthetic.as_ref()),
                    DEFAULT_SYNTHETIC,
                );
                let shadow = self.retention(
                    "sweeper.retention.shadow",
                    r.as_ref().and_then(|r| r.shadow.as_ref()),
                    DEFAULT_SHADOW,
                );
                let live = self.retention(
                    "sweeper.retention.live",
                    r.as_ref().and_then(|r| r.live.as_ref()),
                    DEFAULT_LIVE,
                );
                SweeperConfig {
                    interval,
                    lease_ttl,
                    retention: Retention {
                        synthetic,
                        shadow,
                        live,
                    },
                }
            }
        }
    }
}
