//! Synthetic gate fixtures: a production asset, compiled in as the default.

use orchestrator_proto::task::TaskState;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::LazyLock;

pub const BUILTIN_FIXTURES_JSON: &str = include_str!("../../fixtures/synthetic-tasks.json");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fixture {
    pub label: String,
    pub goal: String,
    pub expected_agent_id: String,
    pub expected_rule_id: Option<String>,
    pub expected_terminal_state: TaskState,
    #[serde(default)]
    pub required_capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixtureSet {
    pub schema_version: u8,
    pub fixtures: Vec<Fixture>,
}

/// The compiled-in fixture file. Its validity is checked by a unit test, so the fallback to an empty
/// set can only happen in a build that also fails its tests.
pub static BUILTIN_FIXTURES: LazyLock<FixtureSet> = LazyLock::new(|| {
    FixtureSet::parse(BUILTIN_FIXTURES_JSON).unwrap_or(FixtureSet {
        schema_version: 1,
        fixtures: Vec::new(),
    })
});

impl FixtureSet {
    pub fn parse(text: &str) -> Result<FixtureSet, String> {
        let set: FixtureSet =
            serde_json::from_str(text).map_err(|e| format!("invalid fixture file: {e}"))?;
        if set.schema_version != 1 {
            return Err(format!(
                "unsupported fixture schemaVersion {} (expected 1)",
                set.schema_version
            ));
        }
        if set.fixtures.is_empty() {
            return Err("the fixture file has no fixtures".into());
        }
        let mut labels = BTreeSet::new();
        for f in &set.fixtures {
            if f.label.trim().is_empty() {
                return Err("a fixture has an empty label".into());
            }
            if !labels.insert(f.label.as_str()) {
                return Err(format!("duplicate fixture label {:?}", f.label));
            }
            if f.goal.trim().is_empty() {
                return Err(format!("fixture {:?} has an empty goal", f.label));
            }
            if !matches!(
                f.expected_terminal_state,
                TaskState::Done | TaskState::AwaitingApproval
            ) {
                return Err(format!(
                    "fixture {:?}: expectedTerminalState must be done or awaiting_approval",
                    f.label
                ));
            }
        }
        Ok(set)
    }

    pub fn load(path: &Path) -> Result<FixtureSet, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        FixtureSet::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn get(&self, label: &str) -> Option<&Fixture> {
        self.fixtures.iter().find(|f| f.label == label)
    }

    pub fn labels(&self) -> Vec<&str> {
        self.fixtures.iter().map(|f| f.label.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_fixture_file_is_valid_and_has_the_five_fixtures() {
        let set = FixtureSet::parse(BUILTIN_FIXTURES_JSON).unwrap();
        assert_eq!(
            set.labels(),
            vec!["code-1", "ops-1", "research-1", "writing-1", "fallback-1"]
        );
    }

    #[test]
    fn duplicate_labels_are_refused() {
        let text = r#"{"schemaVersion":1,"fixtures":[
            {"label":"a","goal":"x","expectedAgentId":"main","expectedRuleId":null,"expectedTerminalState":"done"},
            {"label":"a","goal":"y","expectedAgentId":"main","expectedRuleId":null,"expectedTerminalState":"done"}]}"#;
        assert!(FixtureSet::parse(text).unwrap_err().contains("duplicate"));
    }

    #[test]
    fn wrong_schema_version_is_refused() {
        assert!(FixtureSet::parse(r#"{"schemaVersion":2,"fixtures":[]}"#).is_err());
    }
}
