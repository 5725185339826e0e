//! `[store]`: where tasks are kept — SQLite in the state directory (the default), or a PostgreSQL
//! database named by `url` or by `url_file` (a file holding the URL, so that no password sits in
//! the config) — and how often the store's integrity check runs while the daemon is up.

use super::gate::resolve_relative;
use super::validator::Validator;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

const DEFAULT_POOL_SIZE: usize = 16;
const MAX_POOL_SIZE: i64 = 1024;
const DEFAULT_INTEGRITY_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// How often the integrity check runs again after the one at start; `None` (`"off"`) runs it
    /// only at start.
    pub integrity_check_interval: Option<Duration>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            integrity_check_interval: Some(DEFAULT_INTEGRITY_CHECK_INTERVAL),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// `state.db` in the state directory.
    #[default]
    Sqlite,
    Postgres(PostgresConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub url: StoreUrl,
    /// Most connections this daemon holds open at once.
    pub pool_size: usize,
}

/// Where the connection URL comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Inline(String),
    /// Read at start (trimmed), so that only the service can read the password.
    File(PathBuf),
}

impl std::fmt::Debug for StoreUrl {
    // A URL may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Inline(_) => f.write_str("Inline(..)"),
            StoreUrl::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl StoreUrl {
    /// The URL itself, reading the file if it is one.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            StoreUrl::Inline(u) => Ok(u.clone()),
            StoreUrl::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("cannot read store.url_file {}: {e}", p.display())),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    backend: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    url_file: Option<Spanned<String>>,
    pool_size: Option<Spanned<i64>>,
    integrity_check_interval: Option<Spanned<String>>,
}

/// The URL forms the PostgreSQL client accepts: a URL, or `key=value` pairs.
fn looks_like_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=')
}

impl Validator<'_> {
    pub(super) fn store(&mut self, raw: Option<RawStore>, path: Option<&Path>) -> StoreConfig {
        let Some(mut raw) = raw else {
            return StoreConfig::default();
        };
        let integrity_check_interval =
            self.integrity_check_interval(raw.integrity_check_interval.take());
        StoreConfig {
            backend: self.backend(raw, path),
            integrity_check_interval,
        }
    }

    fn integrity_check_interval(&mut self, value: Option<Spanned<String>>) -> Option<Duration> {
        let Some(value) = value else {
            return Some(DEFAULT_INTEGRITY_CHECK_INTERVAL);
        };
        if value.get_ref().trim() == "off" {
            return None;
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
            return Some(DEFAULT_INTEGRITY_CHECK_INTERVAL);
        }
        Some(d)
    }

    fn backend(&mut self, raw: RawStore, path: Option<&Path>) -> StoreBackend {
        let backend = raw.backend.as_ref().map(|b| b.get_ref().as_str());
        match backend {
            None | Some("sqlite") => {
                for (key, set) in [
                    ("store.url", raw.url.as_ref().map(|s| s.span())),
                    ("store.url_file", raw.url_file.as_ref().map(|s| s.span())),
                    ("store.pool_size", raw.pool_size.as_ref().map(|s| s.span())),
                ] {
                    if let Some(span) = set {
                        let at = Spanned::new(span, ());
                        self.err(key, Some(&at), "only for backend = \"postgres\"");
                    }
                }
                StoreBackend::Sqlite
            }
            Some("postgres") => self.postgres(raw, path),
            Some(other) => {
                self.err(
                    "store.backend",
                    raw.backend.as_ref(),
                    format!("unknown backend {other:?}; expected \"sqlite\" or \"postgres\""),
                );
                StoreBackend::Sqlite
            }
        }
    }

    fn postgres(&mut self, raw: RawStore, path: Option<&Path>) -> StoreBackend {
        let url = match (&raw.url, &raw.url_file) {
            (Some(u), None) => {
                if !looks_like_postgres(u.get_ref()) {
                    self.err(
                        "store.url",
                        Some(u),
                        "expected postgres://… or key=value connection settings",
                    );
                }
                if u.get_ref().contains("password") || has_url_password(u.get_ref()) {
                    self.warnings.push(
                        "store.url holds a password; prefer store.url_file, readable only by the service"
                            .into(),
                    );
                }
                Some(StoreUrl::Inline(u.get_ref().clone()))
            }
            (None, Some(f)) => Some(StoreUrl::File(resolve_relative(path, f.get_ref()))),
            (Some(u), Some(_)) => {
                self.err("store.url", Some(u), "set url or url_file, not both");
                None
            }
            (None, None) => {
                self.err(
                    "store.url",
                    raw.backend.as_ref(),
                    "backend = \"postgres\" needs url or url_file",
                );
                None
            }
        };
        let pool_size = match &raw.pool_size {
            None => DEFAULT_POOL_SIZE,
            Some(n) if (1..=MAX_POOL_SIZE).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.err(
                    "store.pool_size",
                    Some(n),
                    format!("must be between 1 and {MAX_POOL_SIZE}"),
                );
                DEFAULT_POOL_SIZE
            }
        };
        match url {
            Some(url) => StoreBackend::Postgres(PostgresConfig { url, pool_size }),
            None => StoreBackend::Sqlite,
        }
    }
}

/// `postgres://user:secret@host/…`: a colon in the part before `@`.
fn has_url_password(url: &str) -> bool {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"));
    match rest.and_then(|r| r.split('/').next()) {
        Some(authority) => authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn store_of(text: &str) -> Result<StoreBackend, crate::config::ConfigErrors> {
        Config::from_toml(text, Some(Path::new("/etc/orchestrator/orchestrator.toml")))
            .map(|c| c.store.backend)
    }

    #[test]
    fn sqlite_is_the_default() {
        assert_eq!(store_of("").unwrap(), StoreBackend::Sqlite);
        assert_eq!(
            store_of("[store]\nbackend = \"sqlite\"\n").unwrap(),
            StoreBackend::Sqlite
        );
    }

    #[test]
    fn postgres_takes_a_url_or_a_url_file() {
        let c = store_of("[store]\nbackend = \"postgres\"\nurl = \"postgres://orch@%2Frun%2Fpg/orch\"\npool_size = 4\n")
            .unwrap();
        assert_eq!(
            c,
            StoreBackend::Postgres(PostgresConfig {
                url: StoreUrl::Inline("postgres://orch@%2Frun%2Fpg/orch".into()),
                pool_size: 4
            })
        );
        let c = store_of("[store]\nbackend = \"postgres\"\nurl_file = \"pg.url\"\n").unwrap();
        assert_eq!(
            c,
            StoreBackend::Postgres(PostgresConfig {
                url: StoreUrl::File("/etc/orchestrator/pg.url".into()),
                pool_size: DEFAULT_POOL_SIZE
            })
        );
    }

    #[test]
    fn a_password_in_the_url_is_warned_about() {
        let cfg = Config::from_toml(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://orch:secret@db/orch\"\n",
            None,
        )
        .unwrap();
        assert!(
            cfg.warnings.iter().any(|w| w.contains("url_file")),
            "{:?}",
            cfg.warnings
        );
        assert!(!format!("{:?}", cfg.store).contains("secret"));
    }

    #[test]
    fn bad_store_sections_name_the_key_and_line() {
        let cases = [
            ("[store]\nbackend = \"mysql\"\n", "store.backend", 2),
            ("[store]\nbackend = \"postgres\"\n", "store.url", 2),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"db\"\n",
                "store.url",
                3,
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"postgres://db/o\"\nurl_file = \"f\"\n",
                "store.url",
                3,
            ),
            (
                "[store]\nbackend = \"postgres\"\nurl = \"postgres://db/o\"\npool_size = 0\n",
                "store.pool_size",
                4,
            ),
            ("[store]\nurl = \"postgres://db/o\"\n", "store.url", 2),
        ];
        for (text, key, line) in cases {
            let err = store_of(text).unwrap_err();
            let issue = err
                .errors
                .iter()
                .find(|i| i.key == key)
                .unwrap_or_else(|| panic!("{text}: {err}"));
            assert_eq!(issue.line, Some(line), "{text}: {err}");
        }
        let err = store_of("[store]\nbackend = \"postgres\"\nhost = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("host"), "{err}");
    }
}
