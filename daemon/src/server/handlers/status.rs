//! `status`: mode, config, counts, gate, sweeper, the store's health — each subsystem's part from
//! its own state in memory, so it answers in microseconds.

use crate::clock::rfc3339;
use crate::daemon::Daemon;
use orchestrator_proto::message::{StateCount, StatusReport, StorageStatus};
use orchestrator_proto::{Response, WireError};

pub async fn handle(d: &Daemon, minor: u16) -> Result<Response, WireError> {
    let (cfg, fingerprint) = d.config_and_fingerprint();
    let mode = d.mode();
    let latest_gate = d.gate.latest_run().map(|mut g| {
        g.matches_current = *g.fingerprint == *fingerprint;
        g
    });
    let counts = d
        .store
        .counts()
        .entries()
        .into_iter()
        .map(|(kind, state, count)| StateCount { kind, state, count })
        .collect();
    let report = Box::new(StatusReport {
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: d.started.elapsed().as_secs(),
        configured_mode: cfg.mode,
        effective_mode: mode.effective,
        mode_since: rfc3339(mode.since_ms),
        mode_note: mode.note,
        config_path: cfg.source.as_ref().map(|p| p.display().to_string()),
        config_loaded_at: rfc3339(d.reload.config_loaded_ms()),
        config_error: d.reload.config_error(),
        // A taken default HTTP port is said where operators already look for what needs fixing.
        config_warnings: cfg
            .warnings
            .iter()
            .cloned()
            .chain(d.http_problem.get().cloned())
            .collect(),
        routing_fingerprint: fingerprint.to_string(),
        socket: d.paths.socket.display().to_string(),
        state_dir: d.paths.state_dir.display().to_string(),
        counts,
        latest_gate,
        last_reload: d.reload.last_reload(),
        pending_overrides: d.gate.pending_overrides(),
        last_sweep: d.sweeper.last_sweep(),
        next_sweep_at: d.sweeper.next_sweep_ms().map(rfc3339),
        token_problem: crate::credentials::token_problem(&d.paths.token_file()),
        http_listen: d.http_listen.get().cloned(),
        // Costs need a store read; status stays in memory, and `orchctl agents` has them.
        agents: crate::tasks::agents::in_memory(d),
    });
    // Clients of protocol 1.0 know only the report.
    if minor < 1 {
        return Ok(Response::Status(report));
    }
    Ok(Response::StatusWithStorage(report, storage(d)))
}

/// The store's health as `status` shows it.
pub fn storage(d: &Daemon) -> StorageStatus {
    let h = d.store.health();
    StorageStatus {
        full_since: h.full_since_ms.map(rfc3339),
        damaged: h.damaged,
        last_check: h.last_check.as_ref().map(|(_, outcome)| outcome.clone()),
        last_check_at: h.last_check.as_ref().map(|(at, _)| rfc3339(*at)),
        checking: h.checking,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::store::Store;
    use orchestrator_proto::task::TaskKind;

    /// The fingerprint is worked out when a config is installed: `status` names the one of the
    /// config in force, before and after a reload installs another.
    #[test]
    fn status_names_the_fingerprint_of_the_config_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let clock = ManualClock::new(0);
        let d =
            crate::daemon::Daemon::for_test(store, dir.path(), TaskKind::Synthetic, clock.clock());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let named = |d: &Daemon| match rt.block_on(handle(d, 1)) {
            Ok(Response::StatusWithStorage(report, _)) => report.routing_fingerprint,
            other => panic!("unexpected status reply: {other:?}"),
        };
        let builtin = Config::builtin().routing_fingerprint();
        assert_eq!(named(&d), builtin);
        let other = Config::from_toml(
            "[[routing.rules]]\nid = \"r\"\npattern = \"x\"\nagent = \"main\"\n",
            None,
        )
        .unwrap();
        let expected = other.routing_fingerprint();
        assert_ne!(expected, builtin);
        d.install_config(other);
        assert_eq!(named(&d), expected);
    }
}
