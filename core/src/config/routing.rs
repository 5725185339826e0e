//! `[routing]`: the default route, the approval lists, and `[[routing.rules]]`, compiled into the
//! [`RoutingTable`] that [`crate::routing`] decides with. Absent keys keep the built-in values.

use super::approval::RawApprovalTimeout;
use super::validator::{line_of, ConfigIssue, Validator};
use crate::routing::{RoutingTable, Rule};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    default: Option<RawDefault>,
    approval_required: Option<Vec<String>>,
    approval_required_capabilities: Option<Vec<String>>,
    rules: Option<Spanned<Vec<RawRule>>>,
    approval_timeout: Option<Spanned<String>>,
    on_approval_timeout: Option<Spanned<String>>,
    approval_warning: Option<Spanned<String>>,
}

impl RawRouting {
    /// The approval policy's keys, validated apart from the routing table.
    pub(super) fn take_approval(&mut self) -> (RawApprovalTimeout, Option<Spanned<String>>) {
        let timeout = RawApprovalTimeout {
            timeout: self.approval_timeout.take(),
            on_timeout: self.on_approval_timeout.take(),
        };
        (timeout, self.approval_warning.take())
    }
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

impl Validator<'_> {
    pub(super) fn routing(&mut self, raw: Option<RawRouting>) -> RoutingTable {
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
