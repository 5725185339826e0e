//! Start-up, reload and the service manager: systemd notifications, the reload trigger and what
//! `status` shows of reloads, the comparison that names what a reload changes, and the effective mode
//! ([`mode`]) with the one decision that flips it at start-up and on reload alike.
//!
//! Reloading itself, which needs the whole daemon, is `tasks::reload`; the signal handlers and the
//! watchdog are `service`.

pub mod mode;

pub use mode::{startup_mode, ModeState};

use crate::config::Config;
use orchestrator_proto::message::ReloadReport;
use orchestrator_proto::task::Mode;
use sd_notify::NotifyState;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Sighup,
    Orchctl,
}

impl ReloadTrigger {
    pub fn name(self) -> &'static str {
        match self {
            ReloadTrigger::Sighup => "sighup",
            ReloadTrigger::Orchctl => "orchctl",
        }
    }
}

/// Tell systemd something; outside systemd this does nothing.
pub fn notify(states: &[NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// One reload at a time, and what `status` shows of them: the last one, and the config's error and
/// load time.
#[derive(Debug)]
pub struct ReloadState {
    /// Serialises reloads so that two of them never interleave their checks and their apply.
    pub lock: tokio::sync::Mutex<()>,
    notes: Mutex<ReloadNotes>,
}

#[derive(Debug, Clone)]
struct ReloadNotes {
    last: Option<ReloadReport>,
    config_error: Option<String>,
    config_loaded_ms: i64,
}

impl ReloadState {
    /// The config in force was loaded at `config_loaded_ms`.
    pub fn new(config_loaded_ms: i64) -> ReloadState {
        ReloadState {
            lock: tokio::sync::Mutex::new(()),
            notes: Mutex::new(ReloadNotes {
                last: None,
                config_error: None,
                config_loaded_ms,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ReloadNotes) -> R) -> R {
        match self.notes.lock() {
            Ok(mut n) => f(&mut n),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.with(|n| n.last.clone())
    }

    pub fn set_last_reload(&self, report: ReloadReport) {
        self.with(|n| n.last = Some(report));
    }

    /// Why the config file was last refused, while the previous config keeps running.
    pub fn config_error(&self) -> Option<String> {
        self.with(|n| n.config_error.clone())
    }

    pub fn config_loaded_ms(&self) -> i64 {
        self.with(|n| n.config_loaded_ms)
    }

    pub fn config_refused(&self, error: String) {
        self.with(|n| n.config_error = Some(error));
    }

    /// A new config is in force since `at_ms`.
    pub fn config_installed(&self, at_ms: i64) {
        self.with(|n| {
            n.config_error = None;
            n.config_loaded_ms = at_ms;
        });
    }
}

/// What a reload from `old` to `new` changes, in words, for the report and the log.
pub fn describe_changes(old: &Config, new: &Config, mode_from: Mode) -> Vec<String> {
    let mut changes = Vec::new();
    if new.mode != mode_from {
        changes.push(format!("mode {mode_from} → {}", new.mode));
    }
    let (fo, fnew) = (old.routing_fingerprint(), new.routing_fingerprint());
    if fo != fnew {
        changes.push(format!(
            "routing fingerprint {fo} → {fnew} ({} rules)",
            new.routing.rules.len()
        ));
    }
    let listener = |c: &Config| c.http.as_ref().map(|h| (h.listen, h.explicit));
    let http_settings = |c: &Config| {
        c.http
            .as_ref()
            .map(|h| (h.session_ttl, h.metrics_token, h.public_url.clone()))
    };
    // Each part of the file a reload may change, and how the reload says so.
    let parts = [
        (old.agents != new.agents, "agents changed"),
        (old.limits != new.limits, "shared limits changed"),
        (old.budget != new.budget, "budgets changed"),
        (old.timezone.name != new.timezone.name, "timezone changed"),
        (old.approval != new.approval, "approval policy changed"),
        (old.notify != new.notify, "notification sinks changed"),
        (old.sweeper != new.sweeper, "sweeper settings changed"),
        (
            old.gate.shadow_window != new.gate.shadow_window
                || old.gate.min_shadow_tasks != new.gate.min_shadow_tasks,
            "gate settings changed",
        ),
        (
            old.gate.fixtures != new.gate.fixtures,
            "synthetic fixtures changed",
        ),
        (old.socket != new.socket, "socket access changed"),
        (old.delivery != new.delivery, "delivery changed"),
        (
            listener(old) != listener(new),
            "http listener changed (takes effect at the next start)",
        ),
        (
            listener(old) == listener(new) && http_settings(old) != http_settings(new),
            "http settings changed (session_ttl, metrics_token, public_url)",
        ),
        (
            old.socket_path != new.socket_path || old.state_dir != new.state_dir,
            "paths changed (take effect at the next start)",
        ),
        (
            old.store != new.store,
            "store settings changed (take effect at the next start)",
        ),
        (old.node != new.node, "node settings changed"),
    ];
    changes.extend(
        parts
            .into_iter()
            .filter(|(changed, _)| *changed)
            .map(|(_, said)| said.to_string()),
    );
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        match Config::from_toml(toml, None) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// Each part a reload applies, or keeps for the next start, is named; nothing else is.
    #[test]
    fn a_reload_names_every_part_that_changed() {
        let base = cfg("");
        let mode = base.mode;
        assert_eq!(
            describe_changes(&base, &cfg(""), mode),
            Vec::<String>::new()
        );
        let cases = [
            ("timezone = \"Europe/Paris\"\n", "timezone changed"),
            (
                "[[notify]]\nname = \"ops\"\nevents = [\"*\"]\nwebhook = \"http://127.0.0.1:9/\"\n",
                "notification sinks changed",
            ),
            ("[budget]\ndaily_usd = 5.0\n", "budgets changed"),
            (
                "[http]\nsession_ttl = \"30m\"\n",
                "http settings changed (session_ttl, metrics_token, public_url)",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:7777\"\n",
                "http listener changed (takes effect at the next start)",
            ),
        ];
        for (toml, said) in cases {
            assert_eq!(describe_changes(&base, &cfg(toml), mode), [said], "{toml}");
        }
    }
}
