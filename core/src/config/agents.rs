//! `[agents.<id>]`: how each specialist is run. Entries override a built-in agent of the same id or
//! add a new one; routes to agents without an entry are warned about, since they can only run
//! synthetically.

use super::approval::RawApprovalTimeout;
use super::validator::{line_of, ConfigIssue, Validator};
use crate::agent::{builtin_agents, AgentConfig, DEFAULT_PATH, RETRYABLE};
use crate::routing::RoutingTable;
use orchestrator_proto::task::Mode;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use toml::Spanned;

/// Why `program` cannot be started, if it cannot: an absolute path that is no executable file, or
/// a bare name that no directory of `path_var` holds. A relative path with a slash is resolved
/// from the specialist's working directory, and is left alone.
fn unrunnable(program: &str, path_var: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.starts_with('/') {
        return (!executable(std::path::Path::new(program)))
            .then(|| format!("command {program} is not an executable file"));
    }
    if program.contains('/') {
        return None;
    }
    let found = path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| executable(&std::path::Path::new(d).join(program)));
    (!found).then(|| format!("command {program:?} is not found on PATH ({path_var})"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    capabilities: Option<Vec<String>>,
    command: Option<Spanned<Vec<String>>>,
    env: Option<BTreeMap<String, String>>,
    working_dir: Option<String>,
    timeout: Option<Spanned<String>>,
    kill_grace: Option<Spanned<String>>,
    max_concurrent: Option<Spanned<u32>>,
    max_attempts: Option<Spanned<u32>>,
    approval_timeout: Option<Spanned<String>>,
    on_approval_timeout: Option<Spanned<String>>,
    retry_on: Option<Spanned<Vec<String>>>,
    retry_backoff: Option<Spanned<String>>,
    limits: Option<Vec<Spanned<String>>>,
    budget: Option<super::budget::RawBudget>,
}

/// Every agent the daemon knows, and the ids that have an entry in the file.
pub(super) struct Agents {
    pub all: BTreeMap<String, AgentConfig>,
    pub configured: BTreeSet<String>,
    /// Each entry's approval-timeout keys, for [`Validator::approval`].
    pub approval: BTreeMap<String, RawApprovalTimeout>,
    /// The shared limits each agent names, where the file names them (checked against `[limits]`).
    pub limit_spans: BTreeMap<String, Vec<(String, Spanned<String>)>>,
}

impl Validator<'_> {
    /// Built-ins first, then the file's entries override or add.
    pub(super) fn agents(&mut self, raw: Option<BTreeMap<String, Spanned<RawAgent>>>) -> Agents {
        let mut agents = builtin_agents();
        let mut configured_agents = BTreeSet::new();
        let mut approval = BTreeMap::new();
        let mut limit_spans = BTreeMap::new();
        for (id, spanned) in raw.unwrap_or_default() {
            let key = format!("agents.{id}");
            let agent_line = line_of(self.text, spanned.span().start);
            let a = spanned.into_inner();
            if a.approval_timeout.is_some() || a.on_approval_timeout.is_some() {
                approval.insert(
                    id.clone(),
                    RawApprovalTimeout {
                        timeout: a.approval_timeout.clone(),
                        on_timeout: a.on_approval_timeout.clone(),
                    },
                );
            }
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
            if let Some(codes) = a.retry_on {
                for code in codes.get_ref() {
                    if !RETRYABLE.contains(&code.as_str()) {
                        self.err(
                            &format!("{key}.retry_on"),
                            Some(&codes),
                            format!(
                                "unknown error code {code:?} (expected any of: {})",
                                RETRYABLE.join(", ")
                            ),
                        );
                    }
                }
                agent.retry_on = codes.into_inner();
            }
            agent.retry_backoff = self.positive_duration(
                &format!("{key}.retry_backoff"),
                a.retry_backoff.as_ref(),
                agent.retry_backoff,
            );
            agent.budget = self.budget(&format!("{key}.budget"), a.budget);
            if let Some(limits) = a.limits {
                agent.limits = limits.iter().map(|l| l.get_ref().clone()).collect();
                limit_spans.insert(
                    id.clone(),
                    limits
                        .into_iter()
                        .map(|l| (l.get_ref().clone(), l))
                        .collect(),
                );
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
        Agents {
            all: agents,
            configured: configured_agents,
            approval,
            limit_spans,
        }
    }

    /// A declared agent's program and working directory should exist where the daemon would look:
    /// a missing one fails every task of the agent with `spawn_failed`. Warnings, not errors: the
    /// file may be checked on another machine, or before the program is installed.
    pub(super) fn warn_missing_programs(&mut self, agents: &Agents) {
        for id in &agents.configured {
            let Some(agent) = agents.all.get(id) else {
                continue;
            };
            if let Some(program) = agent.command.first().filter(|p| !p.trim().is_empty()) {
                let path_var = agent
                    .env
                    .get("PATH")
                    .cloned()
                    .or_else(|| std::env::var("PATH").ok())
                    .unwrap_or_else(|| DEFAULT_PATH.to_string());
                if let Some(why) = unrunnable(program, &path_var) {
                    self.warnings.push(format!(
                        "agent {id:?}: {why}; its tasks would fail with spawn_failed"
                    ));
                }
            }
            if let Some(dir) = &agent.working_dir {
                if !dir.is_dir() {
                    self.warnings.push(format!(
                        "agent {id:?}: working_dir {} is not a directory; its tasks would fail \
                         with spawn_failed",
                        dir.display()
                    ));
                }
            }
        }
    }

    /// Every agent a route can reach should be declared; undeclared ones can only run synthetically.
    pub(super) fn warn_unrunnable_targets(
        &mut self,
        mode: Mode,
        routing: &RoutingTable,
        agents: &Agents,
    ) {
        let mut targets: BTreeSet<&str> = routing.rules.iter().map(|r| r.agent.as_str()).collect();
        targets.insert(routing.default_agent.as_str());
        // In synthetic mode nothing is run: one line says which agents shadow and live will need.
        let undeclared: Vec<String> = targets
            .iter()
            .filter(|t| !agents.configured.contains(**t))
            .map(|t| format!("{t:?}"))
            .collect();
        if mode == Mode::Synthetic && !undeclared.is_empty() {
            let (n, s) = (
                undeclared.len(),
                if undeclared.len() == 1 { "" } else { "s" },
            );
            self.warnings.push(format!(
                "{n} agent{s} routed to without an [agents.<id>] entry: {} (fine in synthetic \
                 mode; shadow and live need a command for each)",
                undeclared.join(", ")
            ));
        }
        for target in targets {
            if !agents.configured.contains(target) {
                if mode != Mode::Synthetic {
                    self.warnings.push(format!(
                        "agent {target:?} is routed to but has no [agents.{target}] entry; in {mode} \
                         mode its tasks fail with rule_loaded_no_agent"
                    ));
                }
            } else if mode != Mode::Synthetic
                && agents.all.get(target).is_some_and(|a| a.command.is_empty())
            {
                self.warnings.push(format!(
                    "agent {target:?} has no command; in {mode} mode its tasks fail with rule_loaded_no_agent"
                ));
            }
        }
    }
}
