//! Routing decisions, as pure functions over a [`RoutingTable`].
//!
//! Rules are tried by priority, highest first; ties keep file order. The first rule whose pattern
//! matches the goal and whose capabilities are all required by the task wins. No match takes the
//! default route.

use crate::agent::AgentConfig;
use regex::{Regex, RegexBuilder};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    pub pattern_source: String,
    pub pattern: Regex,
    pub capabilities: Vec<String>,
    pub agent: String,
    pub priority: i64,
}

impl Rule {
    pub fn new(
        id: &str,
        description: Option<String>,
        pattern: &str,
        capabilities: Vec<String>,
        agent: &str,
        priority: i64,
    ) -> Result<Rule, String> {
        let regex = compile(pattern)?;
        Ok(Rule {
            id: id.to_string(),
            description,
            pattern_source: pattern.to_string(),
            pattern: regex,
            capabilities,
            agent: agent.to_string(),
            priority,
        })
    }

    fn applies(&self, goal: &str, required: &[String]) -> bool {
        self.pattern.is_match(goal) && self.capabilities.iter().all(|c| required.contains(c))
    }
}

/// How many compiled patterns [`compile`] keeps; past it the cache starts again empty.
const COMPILED_KEPT: usize = 256;

/// A rule's pattern, compiled once per process. A reload re-reads the same patterns, and a
/// case-insensitive pattern with word boundaries takes about a millisecond to compile (the
/// built-in rules made most of a reload's time); a `Regex` clone shares the compiled program.
fn compile(pattern: &str) -> Result<Regex, String> {
    static COMPILED: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let compiled = COMPILED.get_or_init(Default::default);
    if let Some(regex) = compiled.lock().ok().and_then(|c| c.get(pattern).cloned()) {
        return Ok(regex);
    }
    let regex = RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex: {}", one_line(&e.to_string())))?;
    if let Ok(mut c) = compiled.lock() {
        if c.len() >= COMPILED_KEPT {
            c.clear();
        }
        c.insert(pattern.to_string(), regex.clone());
    }
    Ok(regex)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// In file order; [`RoutingTable::decide`] orders by priority.
    pub rules: Vec<Rule>,
    pub default_agent: String,
    pub default_require_approval: bool,
    pub approval_required: Vec<String>,
    pub approval_required_capabilities: Vec<String>,
}

/// What routing decided for one goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub matched_rule_id: Option<String>,
    pub agent: String,
    /// The rule's capabilities that the task required (empty on fallback).
    pub capability_matches: Vec<String>,
    pub fallback_used: bool,
    /// Same-priority rules that matched too but lost on file order.
    pub shadowed_rule_ids: Vec<String>,
}

/// Why approval is required, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub required: bool,
    pub reasons: Vec<String>,
}

const BUILTIN_RULES: [(&str, &str, &str, i64); 8] = [
    (
        "code-tasks",
        r"\b(code|debug|refactor|test|fix|implement|build|lint|typecheck)\b",
        "coder",
        10,
    ),
    (
        "ops-tasks",
        r"\b(ssh|deploy|server|launchd|plist|systemd|brew|postinstall)\b",
        "helpdesk",
        10,
    ),
    (
        "research-tasks",
        r"\b(research|find out|investigate|summarize|paper|literature)\b",
        "researcher",
        5,
    ),
    (
        "writing-tasks",
        r"\b(write|draft|email|reply|compose|copyedit)\b",
        "main",
        5,
    ),
    (
        "design-tasks",
        r"\b(design|mockup|figma|wireframe|ux|ui)\b",
        "design-ui-designer",
        5,
    ),
    (
        "planning-tasks",
        r"\b(plan|breakdown|spec|requirements|brainstorm|proposal)\b",
        "main",
        1,
    ),
    (
        "audit-tasks",
        r"\b(audit|review|inspect|check)\b",
        "overwatch",
        5,
    ),
    (
        "fast-cheap-tasks",
        r"\b(quick|brief|short|one-line|tldr)\b",
        "gemini-flash-lite",
        1,
    ),
];

impl RoutingTable {
    /// The built-in rules and approval lists: what runs when the config has no `[routing]` keys.
    pub fn builtin() -> RoutingTable {
        let rules = BUILTIN_RULES
            .iter()
            .filter_map(|(id, pattern, agent, priority)| {
                Rule::new(id, None, pattern, Vec::new(), agent, *priority).ok()
            })
            .collect();
        RoutingTable {
            rules,
            default_agent: "main".to_string(),
            default_require_approval: false,
            approval_required: vec!["coder".to_string(), "helpdesk".to_string()],
            approval_required_capabilities: ["mutate-external", "ops", "publish", "deploy"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Rules in decision order: priority descending, ties in file order (the sort is stable).
    fn ordered(&self) -> Vec<&Rule> {
        let mut rules: Vec<&Rule> = self.rules.iter().collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        rules
    }

    pub fn decide(&self, goal: &str, required: &[String]) -> Decision {
        let ordered = self.ordered();
        let winner = ordered.iter().position(|r| r.applies(goal, required));
        match winner {
            Some(i) => {
                let rule = ordered[i];
                let shadowed_rule_ids = ordered[i + 1..]
                    .iter()
                    .filter(|r| r.priority == rule.priority && r.applies(goal, required))
                    .map(|r| r.id.clone())
                    .collect();
                Decision {
                    matched_rule_id: Some(rule.id.clone()),
                    agent: rule.agent.clone(),
                    capability_matches: rule.capabilities.clone(),
                    fallback_used: false,
                    shadowed_rule_ids,
                }
            }
            None => Decision {
                matched_rule_id: None,
                agent: self.default_agent.clone(),
                capability_matches: Vec::new(),
                fallback_used: true,
                shadowed_rule_ids: Vec::new(),
            },
        }
    }

    /// Approval: agent listed, OR one of its capabilities listed, OR default route with
    /// `default.require_approval`.
    pub fn approval(
        &self,
        decision: &Decision,
        agents: &BTreeMap<String, AgentConfig>,
    ) -> Approval {
        let mut reasons = Vec::new();
        if self.approval_required.contains(&decision.agent) {
            reasons.push(format!("agent {} is in approval_required", decision.agent));
        }
        if let Some(agent) = agents.get(&decision.agent) {
            for cap in &agent.capabilities {
                if self.approval_required_capabilities.contains(cap) {
                    reasons.push(format!(
                        "agent capability {cap} is in approval_required_capabilities"
                    ));
                }
            }
        }
        if decision.fallback_used && self.default_require_approval {
            reasons.push("default route with default.require_approval".to_string());
        }
        Approval {
            required: !reasons.is_empty(),
            reasons,
        }
    }

    /// Pairs of same-priority rules whose patterns can both match: reported by `config check`.
    /// Two regexes cannot be compared in general, so this reports rules of equal priority whose
    /// patterns match one of each other's literal alternatives.
    pub fn shadowed_pairs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in self.rules.iter().enumerate() {
            for b in &self.rules[i + 1..] {
                if a.priority != b.priority
                    || !b.capabilities.iter().all(|c| a.capabilities.contains(c))
                {
                    continue;
                }
                let overlap = literal_alternatives(&b.pattern_source)
                    .into_iter()
                    .find(|w| a.pattern.is_match(w));
                if let Some(word) = overlap {
                    out.push(format!(
                        "rule {:?} shadows rule {:?} (same priority {}, both match {:?}; file order decides)",
                        a.id, b.id, a.priority, word
                    ));
                }
            }
        }
        out
    }
}

/// The words of a `\b(a|b|c)\b`-style pattern, used as probes for overlap.
fn literal_alternatives(pattern: &str) -> Vec<String> {
    let inner = pattern
        .trim_start_matches(r"\b")
        .trim_end_matches(r"\b")
        .trim_start_matches('(')
        .trim_end_matches(')');
    inner
        .split('|')
        .map(|w| w.trim().to_string())
        .filter(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_alphanumeric() || c == ' ' || c == '-')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_compiled_again_matches_as_the_first_and_a_bad_one_fails_each_time() {
        let pattern = r"\b(cache-check|réglage)\b";
        for _ in 0..2 {
            let rule = Rule::new("r", None, pattern, Vec::new(), "a", 1).unwrap();
            assert!(rule.applies("Run the CACHE-CHECK now", &[]));
            assert!(rule.applies("RÉGLAGE fin", &[]));
            assert!(!rule.applies("cache-checks", &[]));
        }
        for _ in 0..2 {
            let err = Rule::new("r", None, r"(unclosed", Vec::new(), "a", 1).unwrap_err();
            assert!(err.starts_with("invalid regex"), "{err}");
        }
        // Past the cache's bound it starts again empty and still compiles what it is given.
        for i in 0..=COMPILED_KEPT {
            let rule = Rule::new("r", None, &format!("^goal{i}$"), Vec::new(), "a", 1).unwrap();
            assert!(rule.applies(&format!("GOAL{i}"), &[]));
        }
        assert!(Rule::new("r", None, pattern, Vec::new(), "a", 1)
            .unwrap()
            .applies("cache-check", &[]));
    }

    fn caps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn agents() -> BTreeMap<String, AgentConfig> {
        crate::agent::builtin_agents()
    }

    fn table(rules: Vec<Rule>) -> RoutingTable {
        RoutingTable {
            rules,
            ..RoutingTable::builtin()
        }
    }

    fn rule(id: &str, pattern: &str, capabilities: &[&str], agent: &str, priority: i64) -> Rule {
        Rule::new(id, None, pattern, caps(capabilities), agent, priority).unwrap()
    }

    #[test]
    fn higher_priority_wins() {
        let t = table(vec![
            rule("low", "deploy", &[], "a", 1),
            rule("high", "deploy", &[], "b", 9),
        ]);
        let d = t.decide("deploy it", &[]);
        assert_eq!(d.matched_rule_id.as_deref(), Some("high"));
        assert_eq!(d.agent, "b");
    }

    #[test]
    fn ties_keep_file_order_and_report_shadowing() {
        let t = table(vec![
            rule("first", "deploy", &[], "a", 5),
            rule("second", "deploy", &[], "b", 5),
        ]);
        let d = t.decide("deploy", &[]);
        assert_eq!(d.matched_rule_id.as_deref(), Some("first"));
        assert_eq!(d.shadowed_rule_ids, vec!["second".to_string()]);
        assert_eq!(t.shadowed_pairs().len(), 1);
    }

    #[test]
    fn patterns_are_case_insensitive() {
        let d = RoutingTable::builtin().decide("Please DEBUG this", &[]);
        assert_eq!(d.matched_rule_id.as_deref(), Some("code-tasks"));
    }

    #[test]
    fn capability_rule_matches_only_tasks_requiring_it() {
        let t = table(vec![
            rule("gpu", "train", &["gpu"], "trainer", 20),
            rule("any", "train", &[], "main", 1),
        ]);
        assert_eq!(
            t.decide("train the model", &caps(&["gpu"])).agent,
            "trainer"
        );
        assert_eq!(
            t.decide("train the model", &caps(&["gpu"]))
                .capability_matches,
            caps(&["gpu"])
        );
        assert_eq!(t.decide("train the model", &[]).agent, "main");
        assert_eq!(t.decide("train the model", &caps(&["cpu"])).agent, "main");
    }

    #[test]
    fn capability_subset_with_extra_required_caps_still_matches() {
        let t = table(vec![rule("gpu", "train", &["gpu"], "trainer", 20)]);
        assert_eq!(t.decide("train", &caps(&["gpu", "fast"])).agent, "trainer");
    }

    #[test]
    fn no_match_takes_the_default_route() {
        let d = RoutingTable::builtin().decide("xyzzy nothing matches here", &[]);
        assert_eq!(d.matched_rule_id, None);
        assert_eq!(d.agent, "main");
        assert!(d.fallback_used);
    }

    #[test]
    fn approval_by_agent_id() {
        let t = RoutingTable::builtin();
        let d = t.decide("deploy the new release", &[]);
        assert_eq!(d.agent, "helpdesk");
        assert!(t.approval(&d, &agents()).required);
    }

    #[test]
    fn approval_by_agent_capability() {
        let mut a = agents();
        a.insert(
            "publisher".into(),
            AgentConfig {
                capabilities: caps(&["publish"]),
                ..a["main"].clone()
            },
        );
        let t = table(vec![rule("pub", "publish", &[], "publisher", 1)]);
        let d = t.decide("publish the post", &[]);
        let approval = t.approval(&d, &a);
        assert!(approval.required);
        assert!(approval.reasons[0].contains("publish"));
    }

    #[test]
    fn approval_by_default_route_flag() {
        let mut t = RoutingTable::builtin();
        let d = t.decide("xyzzy", &[]);
        assert!(!t.approval(&d, &agents()).required);
        t.default_require_approval = true;
        assert!(t.approval(&d, &agents()).required);
    }

    #[test]
    fn no_approval_for_plain_agent() {
        let t = RoutingTable::builtin();
        let d = t.decide("research the literature on prompt caching", &[]);
        assert!(!t.approval(&d, &agents()).required);
    }

    #[test]
    fn builtin_fixtures_route_as_expected() {
        let t = RoutingTable::builtin();
        let a = agents();
        for f in &crate::fixtures::BUILTIN_FIXTURES.fixtures {
            let d = t.decide(&f.goal, &[]);
            assert_eq!(d.agent, f.expected_agent_id, "{}", f.label);
            assert_eq!(d.matched_rule_id, f.expected_rule_id, "{}", f.label);
            let terminal = if t.approval(&d, &a).required {
                "awaiting_approval"
            } else {
                "done"
            };
            assert_eq!(terminal, f.expected_terminal_state.as_str(), "{}", f.label);
        }
    }
}
