//! What the daemon knows about one specialist agent: how it is run and what it can do, and the
//! built-in set that exists before any `[agents.<id>]` entry is read.
//!
//! Its own module so that [`crate::routing`] (which needs an agent's capabilities to decide
//! approval) and [`crate::config`] (which builds agents and the routing table) both depend on it
//! without depending on each other in both directions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How one specialist agent is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub capabilities: Vec<String>,
    /// argv; empty when the agent has no command (synthetic-only).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub max_concurrent: u32,
    pub max_attempts: u32,
    /// Error codes after which a run is retried while attempts are left.
    pub retry_on: Vec<String>,
    /// The wait before the first retry; it doubles for each later one (capped at an hour).
    pub retry_backoff: Duration,
    /// The `[limits.<name>]` this agent's specialists count against, with other agents'.
    pub limits: Vec<String>,
    /// What this agent may spend per day and month.
    pub budget: crate::config::Budget,
}

/// The error codes `retry_on` accepts: the ones a specialist's run can end with.
/// The search path a specialist gets when the daemon has none: what the daemon passes to its
/// children (`dispatch::process::base_env`), and where `config check` looks for an agent's program.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub const RETRYABLE: [&str; 3] = ["specialist_aborted", "specialist_timeout", "spawn_failed"];

impl AgentConfig {
    /// An agent with the given capabilities and every other setting at its default.
    pub fn builtin(capabilities: &[&str]) -> Self {
        AgentConfig {
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            command: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            timeout: Duration::from_secs(30 * 60),
            kill_grace: Duration::from_secs(10),
            max_concurrent: 1,
            max_attempts: 1,
            retry_on: Vec::new(),
            retry_backoff: Duration::from_secs(30),
            limits: Vec::new(),
            budget: crate::config::Budget::default(),
        }
    }
}

/// The agents the built-in routing rules name, with the capabilities approval looks at.
pub fn builtin_agents() -> BTreeMap<String, AgentConfig> {
    let mut m = BTreeMap::new();
    m.insert(
        "coder".to_string(),
        AgentConfig::builtin(&["code", "mutate-external"]),
    );
    m.insert(
        "helpdesk".to_string(),
        AgentConfig::builtin(&["ops", "mutate-external"]),
    );
    m.insert(
        "researcher".to_string(),
        AgentConfig::builtin(&["research"]),
    );
    m.insert("main".to_string(), AgentConfig::builtin(&[]));
    m
}
