//! The approval policy: how long a task may wait for a human (`approval_timeout`), what happens
//! then (`on_approval_timeout`), and how long before a deadline `approval.expiring` warns
//! (`approval_warning`). Set under `[routing]` as the default and per agent under `[agents.<id>]`.

use super::validator::Validator;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// What the sweeper does with a task that waited `approval_timeout` for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnApprovalTimeout {
    /// Fail it with `error.code = "approval_timeout"`.
    Reject,
    /// Expire it, as the task TTL would.
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalTimeout {
    pub after: Duration,
    pub then: OnApprovalTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// From `[routing]`; `None` leaves only the task TTL.
    pub default: Option<ApprovalTimeout>,
    /// From `[agents.<id>]`, overriding the default for that agent's tasks.
    pub by_agent: BTreeMap<String, ApprovalTimeout>,
    pub warning: Duration,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            default: None,
            by_agent: BTreeMap::new(),
            warning: Duration::from_secs(3600),
        }
    }
}

impl ApprovalPolicy {
    pub fn for_agent(&self, agent: Option<&str>) -> Option<ApprovalTimeout> {
        agent
            .and_then(|a| self.by_agent.get(a))
            .or(self.default.as_ref())
            .copied()
    }

    /// The shortest timeout any task can have: the default's or an agent's; `None` if none is set.
    pub fn shortest_timeout(&self) -> Option<Duration> {
        self.default
            .iter()
            .chain(self.by_agent.values())
            .map(|t| t.after)
            .min()
    }
}

/// The two keys as written, in `[routing]` or in one `[agents.<id>]`.
#[derive(Default)]
pub(super) struct RawApprovalTimeout {
    pub timeout: Option<Spanned<String>>,
    pub on_timeout: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn approval(
        &mut self,
        default: RawApprovalTimeout,
        warning: Option<Spanned<String>>,
        by_agent: BTreeMap<String, RawApprovalTimeout>,
    ) -> ApprovalPolicy {
        let mut policy = ApprovalPolicy {
            warning: self.duration(
                "routing.approval_warning",
                warning.as_ref(),
                Duration::from_secs(3600),
            ),
            ..ApprovalPolicy::default()
        };
        let default_then = self.on_timeout("routing.on_approval_timeout", &default.on_timeout);
        policy.default = self.approval_timeout("routing", &default, default_then, None);
        for (agent, raw) in by_agent {
            let key = format!("agents.{agent}");
            let then = self.on_timeout(&format!("{key}.on_approval_timeout"), &raw.on_timeout);
            if let Some(t) = self.approval_timeout(&key, &raw, then, default_then) {
                policy.by_agent.insert(agent, t);
            }
        }
        policy
    }

    fn on_timeout(
        &mut self,
        key: &str,
        raw: &Option<Spanned<String>>,
    ) -> Option<OnApprovalTimeout> {
        let v = raw.as_ref()?;
        match v.get_ref().as_str() {
            "reject" => Some(OnApprovalTimeout::Reject),
            "expire" => Some(OnApprovalTimeout::Expire),
            other => {
                self.err(
                    key,
                    Some(v),
                    format!("{other:?} is not \"reject\" or \"expire\""),
                );
                None
            }
        }
    }

    /// Both keys together make a policy; one without the other is an error (an agent may take
    /// `on_approval_timeout` from `[routing]`).
    fn approval_timeout(
        &mut self,
        key: &str,
        raw: &RawApprovalTimeout,
        then: Option<OnApprovalTimeout>,
        inherited: Option<OnApprovalTimeout>,
    ) -> Option<ApprovalTimeout> {
        let after_key = format!("{key}.approval_timeout");
        match (&raw.timeout, then.or(inherited)) {
            (None, _) if raw.on_timeout.is_some() => {
                self.err(
                    &format!("{key}.on_approval_timeout"),
                    raw.on_timeout.as_ref(),
                    "needs approval_timeout",
                );
                None
            }
            (None, _) => None,
            (Some(t), Some(then)) => {
                let after = self.positive_duration(&after_key, Some(t), Duration::from_secs(1));
                Some(ApprovalTimeout { after, then })
            }
            (Some(t), None) => {
                if raw.on_timeout.is_none() {
                    self.err(
                        &after_key,
                        Some(t),
                        "needs on_approval_timeout = \"reject\" or \"expire\"",
                    );
                }
                None
            }
        }
    }
}
