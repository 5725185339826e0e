//! Arbitrary text through the config validator the daemon and `orchctl config check` share. Nothing
//! may panic; a config it accepts must give a routing decision for any goal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator_core::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_toml(text, None) {
        let d = cfg
            .routing
            .decide("please debug this and deploy it", &["code".to_string()]);
        assert!(!d.agent.is_empty());
        let _ = cfg.routing.approval(&d, &cfg.agents);
        let _ = cfg.routing_fingerprint();
    }
});
