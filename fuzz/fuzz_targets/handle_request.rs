//! A frame's payload decoded as the daemon decodes it, then put through the daemon's pure request
//! paths: id checks, submit validation, reason validation, routing and approval decisions. Nothing
//! may panic, and what validation accepts must be within the limits it promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator_core::config::Config;
use orchestrator::machine::validate_reason;
use orchestrator::server::handlers::{check_id, submit};
use orchestrator_proto::frame::decode;
use orchestrator_proto::task::{MAX_GOAL_BYTES, MAX_REASON_CHARS};
use orchestrator_proto::{ClientMessage, Request};
use std::sync::OnceLock;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::builtin)
}

fn route(goal: &str, caps: &[String]) {
    if submit::validate_goal(goal).is_err() || submit::validate_capabilities(caps).is_err() {
        return;
    }
    let cfg = config();
    let decision = cfg.routing.decide(goal.trim(), caps);
    let _ = cfg.routing.approval(&decision, &cfg.agents);
    assert!(!decision.agent.is_empty());
    assert_eq!(decision.fallback_used, decision.matched_rule_id.is_none());
}

fuzz_target!(|data: &[u8]| {
    let Ok(ClientMessage::Request(request)) = decode::<ClientMessage>(data) else {
        return;
    };
    match request {
        Request::Submit(s) => {
            if let Ok(goal) = submit::validate_goal(&s.goal) {
                assert!(!goal.is_empty() && s.goal.len() <= MAX_GOAL_BYTES);
            }
            route(&s.goal, &s.required_capabilities);
        }
        Request::Route { goal, capabilities } => route(&goal, &capabilities),
        Request::ShowTask { id } | Request::Approve { id } | Request::Cancel { id } => {
            if check_id(&id).is_ok() {
                assert_eq!(id.len(), 26);
            }
        }
        Request::Reject { id, reason } => {
            let _ = check_id(&id);
            if let Ok(r) = validate_reason(&reason) {
                assert!(!r.is_empty() && reason.chars().count() <= MAX_REASON_CHARS);
            }
        }
        Request::GateOverride { reason, .. } => {
            let _ = validate_reason(&reason);
        }
        _ => {}
    }
});
