//! Configuration: parse the TOML file, validate every key, and produce a [`Config`].
//!
//! Validation is one function, [`Config::from_toml`], used by the daemon at start and on reload, by
//! `orchestratord --check-config` and by `orchctl config check`, so the three can never disagree.
//! Every error names the key or rule and, where the file has one, the line; all of a file's errors
//! are collected, not just the first.
//!
//! This module owns loading, the top level (`mode`, `[paths]`) and the [`Config`] type; `validator`
//! collects issues with their lines. Each other section has its own file: `agents`, `routing`,
//! `socket`, `sweeper`, `gate`, `delivery`, `http`, `store`, `notify`, `approval` (the approval
//! timeout, from `[routing]` and `[agents.<id>]`), `limits`, `budget` (with `timezone`), and
//! `duration` for the syntax they share.

mod agents;
mod approval;
mod budget;
mod delivery;
mod duration;
mod gate;
mod http;
mod limits;
mod node;
mod notify;
mod routing;
mod socket;
mod store;
mod sweeper;
mod validator;

pub use crate::agent::AgentConfig;
pub use approval::{ApprovalPolicy, ApprovalTimeout, OnApprovalTimeout};
pub use budget::{Budget, Periods, Timezone};
pub use delivery::DeliveryConfig;
pub use duration::parse_duration;
pub use gate::GateConfig;
pub use http::{HttpConfig, DEFAULT_LISTEN, DEFAULT_PORT, DEFAULT_SESSION_TTL};
pub use limits::LimitConfig;
pub use node::NodeConfig;
pub use notify::{NotifySink, SinkFilter, SinkTarget, EVENT_TYPES};
pub use socket::SocketAccess;
pub use store::{PostgresConfig, StoreBackend, StoreConfig, StoreUrl};
pub use sweeper::{Retention, SweeperConfig};
pub use validator::{ConfigErrors, ConfigIssue};

use crate::routing::RoutingTable;
use orchestrator_proto::task::Mode;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use validator::{line_of, toml_error_key, Validator};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/orchestrator/orchestrator.toml";
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A validated configuration. Built only by [`Config::from_toml`] or [`Config::builtin`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    pub mode: Mode,
    pub socket_path: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: SocketAccess,
    pub routing: RoutingTable,
    /// Every agent the daemon knows: built-in ones merged with `[agents.<id>]`.
    pub agents: BTreeMap<String, AgentConfig>,
    /// Agents that have an `[agents.<id>]` entry in the file.
    pub configured_agents: BTreeSet<String>,
    /// `[limits.<name>]`: limits agents share.
    pub limits: BTreeMap<String, LimitConfig>,
    /// `[budget]`: what all agents together may spend.
    pub budget: Budget,
    /// The timezone budgets count days and months in.
    pub timezone: Timezone,
    pub sweeper: SweeperConfig,
    pub gate: GateConfig,
    pub delivery: Option<DeliveryConfig>,
    pub http: Option<HttpConfig>,
    pub store: StoreConfig,
    /// `[[notify]]` sinks, in file order.
    pub notify: Vec<NotifySink>,
    /// `approval_timeout` and friends, from `[routing]` and `[agents.<id>]`.
    pub approval: ApprovalPolicy,
    pub node: NodeConfig,
    pub warnings: Vec<String>,
}

impl Config {
    /// The built-in defaults: mode `synthetic`, the built-in routing rules and agents.
    pub fn builtin() -> Config {
        match Config::from_toml("", None) {
            // The built-in agents have no commands on purpose: the defaults are for synthetic mode,
            // so the "no [agents] entry" warnings would only be noise here.
            Ok(cfg) => Config {
                warnings: Vec::new(),
                ..cfg
            },
            // The empty document is valid by construction; a failure here is a bug caught by tests.
            Err(e) => panic!("built-in defaults do not validate: {e}"),
        }
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: path.display().to_string(),
            errors: vec![ConfigIssue {
                key: "file".into(),
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::from_toml(&text, Some(path))
    }

    /// The daemon's start-up rule: an explicit path must exist; the default path may be absent.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        match path {
            Some(p) => Config::load(p),
            None => {
                let default = Path::new(DEFAULT_CONFIG_PATH);
                if default.exists() {
                    Config::load(default)
                } else {
                    Ok(Config::builtin())
                }
            }
        }
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str, path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let source = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into());
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigIssue {
                key: toml_error_key(&e),
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().trim().to_string(),
            }],
        })?;
        let mut v = Validator {
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let cfg = v.build(raw, path);
        if v.errors.is_empty() {
            let mut cfg = cfg;
            cfg.warnings = v.warnings;
            Ok(cfg)
        } else {
            Err(ConfigErrors {
                source,
                errors: v.errors,
            })
        }
    }

    /// Stable fingerprint of everything that decides routing and approval; a gate run is only valid
    /// for the fingerprint it ran against.
    pub fn routing_fingerprint(&self) -> String {
        let mut canon = String::new();
        for rule in &self.routing.rules {
            canon.push_str(&format!(
                "rule\x1f{}\x1f{}\x1f{}\x1f{}\x1f{}\x1e",
                rule.id,
                rule.pattern_source,
                rule.capabilities.join(","),
                rule.agent,
                rule.priority
            ));
        }
        canon.push_str(&format!(
            "default\x1f{}\x1f{}\x1e",
            self.routing.default_agent, self.routing.default_require_approval
        ));
        canon.push_str(&format!(
            "approval\x1f{}\x1e",
            self.routing.approval_required.join(",")
        ));
        canon.push_str(&format!(
            "approval_caps\x1f{}\x1e",
            self.routing.approval_required_capabilities.join(",")
        ));
        for (id, agent) in &self.agents {
            canon.push_str(&format!(
                "agent\x1f{id}\x1f{}\x1e",
                agent.capabilities.join(",")
            ));
        }
        format!("{:016x}", fnv1a64(canon.as_bytes()))
    }

    pub fn agent(&self, id: &str) -> Option<&AgentConfig> {
        self.agents.get(id)
    }

    /// The configured agents this daemon runs specialists for (those with a command), in order.
    pub fn agents_with_command(&self) -> impl Iterator<Item = &String> {
        self.configured_agents
            .iter()
            .filter(|id| self.agent(id).is_some_and(|a| !a.command.is_empty()))
    }
}

/// FNV-1a: tiny, stable across releases and platforms, which is all a fingerprint needs.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---- raw, as written in the file -------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mode: Option<Spanned<String>>,
    paths: Option<RawPaths>,
    socket: Option<socket::RawSocket>,
    routing: Option<routing::RawRouting>,
    agents: Option<BTreeMap<String, Spanned<agents::RawAgent>>>,
    sweeper: Option<sweeper::RawSweeper>,
    gate: Option<gate::RawGate>,
    delivery: Option<delivery::RawDelivery>,
    http: Option<http::RawHttp>,
    store: Option<store::RawStore>,
    notify: Option<Vec<notify::RawSink>>,
    limits: Option<BTreeMap<String, limits::RawLimit>>,
    budget: Option<budget::RawBudget>,
    timezone: Option<Spanned<String>>,
    node: Option<node::RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    socket: Option<String>,
    state_dir: Option<String>,
}

// ---- validation --------------------------------------------------------------------------------

impl Validator<'_> {
    fn build(&mut self, raw: RawConfig, path: Option<&Path>) -> Config {
        let mode = match &raw.mode {
            None => Mode::Synthetic,
            Some(m) => match m.get_ref().parse::<Mode>() {
                Ok(mode) => mode,
                Err(msg) => {
                    self.err("mode", Some(m), msg);
                    Mode::Synthetic
                }
            },
        };

        let (socket_path, state_dir) = match raw.paths {
            None => (None, None),
            Some(p) => (p.socket.map(PathBuf::from), p.state_dir.map(PathBuf::from)),
        };

        let socket = self.socket(raw.socket);
        let mut agents = self.agents(raw.agents);
        let mut raw_routing = raw.routing;
        let (approval_default, approval_warning) = raw_routing
            .as_mut()
            .map(routing::RawRouting::take_approval)
            .unwrap_or_default();
        let approval = self.approval(
            approval_default,
            approval_warning,
            std::mem::take(&mut agents.approval),
        );
        let limits = self.limits(raw.limits, &agents);
        let budget = self.budget("budget", raw.budget);
        let timezone = self.timezone(raw.timezone);
        let routing = self.routing(raw_routing);
        self.warn_unrunnable_targets(mode, &routing, &agents);
        self.warn_missing_programs(&agents);
        for shadow in routing.shadowed_pairs() {
            self.warnings.push(shadow);
        }
        let sweeper = self.sweeper(raw.sweeper);
        let gate = self.gate(raw.gate, path);
        let delivery = self.delivery(raw.delivery);
        let http = self.http(raw.http);
        let store = self.store(raw.store, path);
        let notify = self.notify(raw.notify);
        let node = self.node(raw.node);

        Config {
            source: path.map(Path::to_path_buf),
            mode,
            socket_path,
            state_dir,
            socket,
            routing,
            agents: agents.all,
            configured_agents: agents.configured,
            limits,
            budget,
            timezone,
            sweeper,
            gate,
            delivery,
            http,
            store,
            notify,
            approval,
            node,
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
