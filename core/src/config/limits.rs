//! `[limits.<name>]`: limits shared by the agents that name them in `limits = [...]`, such as
//! several agents on one provider account. `max_concurrent` caps the specialists of all of them
//! running together.

use super::agents::Agents;
use super::validator::Validator;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// One shared limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    pub max_concurrent: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    max_concurrent: Spanned<u32>,
}

impl Validator<'_> {
    /// The limits, and a check that every agent names only limits that exist.
    pub(super) fn limits(
        &mut self,
        raw: Option<BTreeMap<String, RawLimit>>,
        agents: &Agents,
    ) -> BTreeMap<String, LimitConfig> {
        let mut out = BTreeMap::new();
        for (name, l) in raw.unwrap_or_default() {
            if *l.max_concurrent.get_ref() == 0 {
                self.err(
                    &format!("limits.{name}.max_concurrent"),
                    Some(&l.max_concurrent),
                    "must be at least 1",
                );
            }
            out.insert(
                name,
                LimitConfig {
                    max_concurrent: (*l.max_concurrent.get_ref()).max(1),
                },
            );
        }
        for (id, spans) in &agents.limit_spans {
            for (name, span) in spans {
                if !out.contains_key(name) {
                    self.err(
                        &format!("agents.{id}.limits"),
                        Some(span),
                        format!("no [limits.{name}] section"),
                    );
                }
            }
        }
        out
    }
}
