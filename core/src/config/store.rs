//! `[store]`: how often the store's integrity check runs while the daemon is up.

use super::validator::Validator;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

const DEFAULT_INTEGRITY_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// How often the integrity check runs again after the one at start; `None` (`"off"`) runs it
    /// only at start.
    pub integrity_check_interval: Option<Duration>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            integrity_check_interval: Some(DEFAULT_INTEGRITY_CHECK_INTERVAL),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    integrity_check_interval: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn store(&mut self, raw: Option<RawStore>) -> StoreConfig {
        let Some(value) = raw.and_then(|r| r.integrity_check_interval) else {
            return StoreConfig::default();
        };
        if value.get_ref().trim() == "off" {
            return StoreConfig {
                integrity_check_interval: None,
            };
        }
        let key = "store.integrity_check_interval";
        let d = self.duration(key, Some(&value), DEFAULT_INTEGRITY_CHECK_INTERVAL);
        // A check reads the whole file: more often than once a minute would keep the disk busy.
        if d < Duration::from_secs(60) {
            self.err(
                key,
                Some(&value),
                "must be at least 1m, or \"off\" to check only at start",
            );
            return StoreConfig::default();
        }
        StoreConfig {
            integrity_check_interval: Some(d),
        }
    }
}
