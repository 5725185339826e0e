//! Configuration (SPEC §9): parse the TOML file, validate every key, and produce a [`Config`].
//!
//! Validation is one function, [`Config::from_toml`], used by the daemon at start and on reload, by
//! `orchestratord --check-config` and by `orchctl config check`, so the three can never disagree.
//! Every error names the key or rule and, where the file has one, the line.

pub use crate::agent::AgentConfig;

use crate::agent::builtin_agents;
use crate::fixtures::{FixtureSet, BUILTIN_FIXTURES};
use crate::routing::{RoutingTable, Rule};
use orchestrator_proto::task::Mode;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/orchestrator/orchestrator.toml";
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// A config that failed validation: every error found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        let parts: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    pub allow_uids: Vec<u32>,
    pub allow_groups: Vec<String>,
    pub read_only_uids: Vec<u32>,
    pub read_only_groups: Vec<String>,
    pub max_frame: usize,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            allow_uids: Vec::new(),
            allow_groups: vec!["orchestrator".to_string()],
            read_only_uids: Vec::new(),
            read_only_groups: Vec::new(),
            max_frame: orchestrator_proto::frame::DEFAULT_MAX_FRAME,
        }
    }
}

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

#[derive(Debug, Clone)]
pub struct GateConfig {
    pub fixtures_path: Option<PathBuf>,
    pub fixtures: FixtureSet,
    pub shadow_window: Duration,
    pub min_shadow_tasks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

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
    pub sweeper: SweeperConfig,
    pub gate: GateConfig,
    pub delivery: Option<DeliveryConfig>,
    pub http: Option<HttpConfig>,
    pub warnings: Vec<String>,
}

impl Config {
    /// The built-in defaults: mode `synthetic`, the rules of SPEC §5.
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

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn toml_error_key(e: &toml::de::Error) -> String {
    let msg = e.message();
    // serde's "unknown field `x`, expected ..." names the key; keep it as the key of the issue.
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    "syntax".to_string()
}

/// Parse `90s`, `30m`, `24h`, `7d`; `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration".into());
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. 90s, 30m, 24h, 7d)"))
}

// ---- raw, as written in the file -------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mode: Option<Spanned<String>>,
    paths: Option<RawPaths>,
    socket: Option<RawSocket>,
    routing: Option<RawRouting>,
    agents: Option<BTreeMap<String, Spanned<RawAgent>>>,
    sweeper: Option<RawSweeper>,
    gate: Option<RawGate>,
    delivery: Option<RawDelivery>,
    http: Option<RawHttp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    socket: Option<String>,
    state_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    allow_uids: Option<Vec<u32>>,
    allow_groups: Option<Vec<String>>,
    read_only_uids: Option<Vec<u32>>,
    read_only_groups: Option<Vec<String>>,
    max_frame: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    default: Option<RawDefault>,
    approval_required: Option<Vec<String>>,
    approval_required_capabilities: Option<Vec<String>>,
    rules: Option<Spanned<Vec<RawRule>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    agent: Option<String>,
    require_approval: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    description: Option<String>,
    pattern: Spanned<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    agent: Spanned<String>,
    #[serde(default)]
    priority: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    capabilities: Option<Vec<String>>,
    command: Option<Spanned<Vec<String>>>,
    env: Option<BTreeMap<String, String>>,
    working_dir: Option<String>,
    timeout: Option<Spanned<String>>,
    kill_grace: Option<Spanned<String>>,
    max_concurrent: Option<Spanned<u32>>,
    max_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweeper {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    fixtures: Option<Spanned<String>>,
    shadow_window: Option<Spanned<String>>,
    min_shadow_tasks: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    command: Spanned<Vec<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Spanned<String>,
}

// ---- validation --------------------------------------------------------------------------------

struct Validator<'a> {
    text: &'a str,
    errors: Vec<ConfigIssue>,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn err<T>(&mut self, key: &str, spanned: Option<&Spanned<T>>, message: impl Into<String>) {
        let line = spanned.map(|s| line_of(self.text, s.span().start));
        self.errors.push(ConfigIssue {
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(msg) => {
                    self.err(key, Some(v), msg);
                    default
                }
            },
        }
    }

    fn positive_duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, value, default);
        if d.is_zero() {
            self.err(key, value, "must be greater than zero");
            return default;
        }
        d
    }

    fn retention(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Option<Duration> {
        let d = self.duration(key, value, default);
        (!d.is_zero()).then_some(d)
    }

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

        let mut socket = SocketAccess::default();
        if let Some(s) = raw.socket {
            if let Some(v) = s.allow_uids {
                socket.allow_uids = v;
            }
            if let Some(v) = s.allow_groups {
                socket.allow_groups = v;
            }
            if let Some(v) = s.read_only_uids {
                socket.read_only_uids = v;
            }
            if let Some(v) = s.read_only_groups {
                socket.read_only_groups = v;
            }
            if let Some(mf) = s.max_frame {
                let n = *mf.get_ref();
                if !(1024..=64 * 1024 * 1024).contains(&n) {
                    self.err(
                        "socket.max_frame",
                        Some(&mf),
                        "must be between 1024 and 67108864 bytes",
                    );
                } else {
                    socket.max_frame = n as usize;
                }
            }
        }

        // Agents: built-ins first, then the file's entries override or add.
        let mut agents = builtin_agents();
        let mut configured_agents = BTreeSet::new();
        for (id, spanned) in raw.agents.unwrap_or_default() {
            let key = format!("agents.{id}");
            let agent_line = line_of(self.text, spanned.span().start);
            let a = spanned.into_inner();
            let mut agent = agents
                .get(&id)
                .cloned()
                .unwrap_or_else(|| AgentConfig::builtin(&[]));
            if let Some(caps) = a.capabilities {
                agent.capabilities = caps;
            }
            if let Some(cmd) = a.command {
                if cmd.get_ref().is_empty() || cmd.get_ref()[0].trim().is_empty() {
                    self.err(
                        &format!("{key}.command"),
                        Some(&cmd),
                        "must be a non-empty argv list",
                    );
                }
                agent.command = cmd.into_inner();
            }
            if let Some(env) = a.env {
                agent.env = env;
            }
            agent.working_dir = a.working_dir.map(PathBuf::from);
            agent.timeout = self.positive_duration(
                &format!("{key}.timeout"),
                a.timeout.as_ref(),
                agent.timeout,
            );
            agent.kill_grace = self.duration(
                &format!("{key}.kill_grace"),
                a.kill_grace.as_ref(),
                agent.kill_grace,
            );
            if let Some(mc) = a.max_concurrent {
                if *mc.get_ref() == 0 {
                    self.err(
                        &format!("{key}.max_concurrent"),
                        Some(&mc),
                        "must be at least 1",
                    );
                } else {
                    agent.max_concurrent = *mc.get_ref();
                }
            }
            if let Some(ma) = a.max_attempts {
                if *ma.get_ref() == 0 {
                    self.err(
                        &format!("{key}.max_attempts"),
                        Some(&ma),
                        "must be at least 1",
                    );
                } else {
                    agent.max_attempts = *ma.get_ref();
                }
            }
            if id.trim().is_empty() {
                self.errors.push(ConfigIssue {
                    key,
                    line: Some(agent_line),
                    message: "agent id must not be empty".into(),
                });
            }
            configured_agents.insert(id.clone());
            agents.insert(id, agent);
        }

        let routing = self.routing(raw.routing);

        // Every agent a route can reach should be declared; undeclared ones can only run synthetically.
        let mut targets: BTreeSet<&str> = routing.rules.iter().map(|r| r.agent.as_str()).collect();
        targets.insert(routing.default_agent.as_str());
        for target in targets {
            if !configured_agents.contains(target) {
                let note = if mode == Mode::Synthetic {
                    String::new()
                } else {
                    format!("; in {mode} mode its tasks fail with rule_loaded_no_agent")
                };
                self.warnings.push(format!(
                    "agent {target:?} is routed to but has no [agents.{target}] entry{note}"
                ));
            } else if mode != Mode::Synthetic
                && agents.get(target).is_some_and(|a| a.command.is_empty())
            {
                self.warnings.push(format!(
                    "agent {target:?} has no command; in {mode} mode its tasks fail with rule_loaded_no_agent"
                ));
            }
        }
        for shadow in routing.shadowed_pairs() {
            self.warnings.push(shadow);
        }

        let sweeper = match raw.sweeper {
            None => SweeperConfig {
                interval: Duration::from_secs(3600),
                lease_ttl: Duration::from_secs(30),
                retention: Retention {
                    synthetic: Some(Duration::from_secs(86400)),
                    shadow: Some(Duration::from_secs(7 * 86400)),
                    live: Some(Duration::from_secs(90 * 86400)),
                },
            },
            Some(s) => {
                let interval = self.positive_duration(
                    "sweeper.interval",
                    s.interval.as_ref(),
                    Duration::from_secs(3600),
                );
                let lease_ttl = self.positive_duration(
                    "sweeper.lease_ttl",
                    s.lease_ttl.as_ref(),
                    Duration::from_secs(30),
                );
                let r = s.retention;
                let synthetic = self.retention(
                    "sweeper.retention.synthetic",
                    r.as_ref().and_then(|r| r.synthetic.as_ref()),
                    Duration::from_secs(86400),
                );
                let shadow = self.retention(
                    "sweeper.retention.shadow",
                    r.as_ref().and_then(|r| r.shadow.as_ref()),
                    Duration::from_secs(7 * 86400),
                );
                let live = self.retention(
                    "sweeper.retention.live",
                    r.as_ref().and_then(|r| r.live.as_ref()),
                    Duration::from_secs(90 * 86400),
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
        };

        let mut gate = GateConfig {
            fixtures_path: None,
            fixtures: BUILTIN_FIXTURES.clone(),
            shadow_window: Duration::from_secs(24 * 3600),
            min_shadow_tasks: 10,
        };
        if let Some(g) = raw.gate {
            gate.shadow_window = self.positive_duration(
                "gate.shadow_window",
                g.shadow_window.as_ref(),
                gate.shadow_window,
            );
            if let Some(n) = g.min_shadow_tasks {
                gate.min_shadow_tasks = n;
            }
            if let Some(f) = g.fixtures {
                let p = resolve_relative(path, f.get_ref());
                match FixtureSet::load(&p) {
                    Ok(set) => {
                        gate.fixtures = set;
                        gate.fixtures_path = Some(p);
                    }
                    Err(msg) => self.err("gate.fixtures", Some(&f), msg),
                }
            }
        }

        let delivery = raw.delivery.map(|d| {
            if d.command.get_ref().is_empty() {
                self.err(
                    "delivery.command",
                    Some(&d.command),
                    "must be a non-empty argv list",
                );
            }
            let timeout = self.positive_duration(
                "delivery.timeout",
                d.timeout.as_ref(),
                Duration::from_secs(300),
            );
            DeliveryConfig {
                command: d.command.into_inner(),
                timeout,
            }
        });

        let http = raw
            .http
            .and_then(|h| match h.listen.get_ref().parse::<SocketAddr>() {
                Ok(listen) => {
                    if !listen.ip().is_loopback() {
                        self.warnings
                            .push(format!("http.listen {listen} is not a loopback address"));
                    }
                    Some(HttpConfig { listen })
                }
                Err(e) => {
                    self.err(
                        "http.listen",
                        Some(&h.listen),
                        format!("invalid address {:?}: {e}", h.listen.get_ref()),
                    );
                    None
                }
            });

        Config {
            source: path.map(Path::to_path_buf),
            mode,
            socket_path,
            state_dir,
            socket,
            routing,
            agents,
            configured_agents,
            sweeper,
            gate,
            delivery,
            http,
            warnings: Vec::new(),
        }
    }

    fn routing(&mut self, raw: Option<RawRouting>) -> RoutingTable {
        let mut table = RoutingTable::builtin();
        let Some(raw) = raw else { return table };
        if let Some(d) = raw.default {
            if let Some(agent) = d.agent {
                if agent.trim().is_empty() {
                    self.errors.push(ConfigIssue {
                        key: "routing.default.agent".into(),
                        line: None,
                        message: "must not be empty".into(),
                    });
                } else {
                    table.default_agent = agent;
                }
            }
            if let Some(r) = d.require_approval {
                table.default_require_approval = r;
            }
        }
        if let Some(v) = raw.approval_required {
            table.approval_required = v;
        }
        if let Some(v) = raw.approval_required_capabilities {
            table.approval_required_capabilities = v;
        }
        if let Some(rules) = raw.rules {
            if rules.get_ref().is_empty() {
                self.err(
                    "routing.rules",
                    Some(&rules),
                    "the rule set is empty; remove the key to use the built-in rules",
                );
                return table;
            }
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut out = Vec::new();
            for r in rules.into_inner() {
                let id = r.id.get_ref().trim().to_string();
                let line = line_of(self.text, r.id.span().start);
                let key = format!("routing.rules[{id}]");
                if id.is_empty() {
                    self.err("routing.rules.id", Some(&r.id), "rule id must not be empty");
                    continue;
                }
                if let Some(first) = seen.get(&id) {
                    self.err(
                        &key,
                        Some(&r.id),
                        format!("duplicate rule id {id:?} (first defined on line {first})"),
                    );
                    continue;
                }
                seen.insert(id.clone(), line);
                if r.agent.get_ref().trim().is_empty() {
                    self.err(
                        &format!("{key}.agent"),
                        Some(&r.agent),
                        "agent must not be empty",
                    );
                    continue;
                }
                match Rule::new(
                    &id,
                    r.description,
                    r.pattern.get_ref(),
                    r.capabilities,
                    r.agent.get_ref(),
                    r.priority,
                ) {
                    Ok(rule) => out.push(rule),
                    Err(msg) => self.err(&format!("{key}.pattern"), Some(&r.pattern), msg),
                }
            }
            table.rules = out;
        }
        table
    }
}

fn resolve_relative(config_path: Option<&Path>, value: &str) -> PathBuf {
    let p = PathBuf::from(value);
    if p.is_absolute() {
        return p;
    }
    match config_path.and_then(Path::parent) {
        Some(dir) => dir.join(p),
        None => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigIssue> {
        match Config::from_toml(text, None) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors,
        }
    }

    #[test]
    fn builtin_defaults_validate() {
        let cfg = Config::builtin();
        assert_eq!(cfg.mode, Mode::Synthetic);
        assert_eq!(cfg.routing.rules.len(), 8);
        assert_eq!(cfg.gate.fixtures.fixtures.len(), 5);
        assert_eq!(
            cfg.sweeper.retention.synthetic,
            Some(Duration::from_secs(86400))
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let e = errors("mode = \"synthetic\"\n\n[sweeper]\nintervall = \"1m\"\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "intervall");
        assert_eq!(e[0].line, Some(4));
    }

    #[test]
    fn invalid_regex_names_the_rule_and_line() {
        let text =
            "[[routing.rules]]\nid = \"broken\"\npattern = \"(unclosed\"\nagent = \"main\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].key.contains("broken"), "{:?}", e[0]);
        assert_eq!(e[0].line, Some(3));
    }

    #[test]
    fn duplicate_rule_ids_are_an_error() {
        let text = "[[routing.rules]]\nid = \"a\"\npattern = \"x\"\nagent = \"main\"\n\n[[routing.rules]]\nid = \"a\"\npattern = \"y\"\nagent = \"main\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("duplicate"), "{:?}", e[0]);
        assert_eq!(e[0].line, Some(7));
    }

    #[test]
    fn empty_rule_set_is_an_error() {
        let e = errors("[routing]\nrules = []\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "routing.rules");
    }

    #[test]
    fn bad_duration_is_an_error_with_its_line() {
        let e = errors("[sweeper]\ninterval = \"soon\"\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "sweeper.interval");
        assert_eq!(e[0].line, Some(2));
    }

    #[test]
    fn bad_mode_is_an_error() {
        let e = errors("mode = \"prod\"\n");
        assert_eq!(e[0].key, "mode");
    }

    #[test]
    fn undeclared_agent_is_a_warning_in_synthetic_mode() {
        let text = "[[routing.rules]]\nid = \"r\"\npattern = \"x\"\nagent = \"ghost\"\n";
        let cfg = Config::from_toml(text, None).unwrap();
        assert!(
            cfg.warnings.iter().any(|w| w.contains("ghost")),
            "{:?}",
            cfg.warnings
        );
    }

    #[test]
    fn retention_zero_keeps_forever() {
        let cfg = Config::from_toml("[sweeper.retention]\nlive = \"0\"\n", None).unwrap();
        assert_eq!(cfg.sweeper.retention.live, None);
        assert_eq!(
            cfg.sweeper.retention.shadow,
            Some(Duration::from_secs(7 * 86400))
        );
    }

    #[test]
    fn fingerprint_changes_with_rules_only() {
        let a = Config::builtin();
        let b = Config::from_toml("[sweeper]\ninterval = \"5m\"\n", None).unwrap();
        assert_eq!(a.routing_fingerprint(), b.routing_fingerprint());
        let c = Config::from_toml(
            "[[routing.rules]]\nid = \"r\"\npattern = \"x\"\nagent = \"main\"\n",
            None,
        )
        .unwrap();
        assert_ne!(a.routing_fingerprint(), c.routing_fingerprint());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
