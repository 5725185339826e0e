//! The task and its trajectory.
//!
//! Field names serialise as camelCase so that JSON output and the HTTP API speak the contract of the
//! original proposal. Timestamps are RFC 3339 UTC strings produced by the daemon.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub const SCHEMA_VERSION: u8 = 1;
/// Longest goal accepted, in bytes of UTF-8.
pub const MAX_GOAL_BYTES: usize = 8 * 1024;
/// Longest reject reason accepted, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// The eight states a task can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Assigned,
    InProgress,
    AwaitingApproval,
    Done,
    Failed,
    Cancelled,
    Expired,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Queued,
        TaskState::Assigned,
        TaskState::InProgress,
        TaskState::AwaitingApproval,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::InProgress => "in_progress",
            TaskState::AwaitingApproval => "awaiting_approval",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
        }
    }

    /// Terminal states absorb every action.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
        )
    }

    /// States the sweeper may expire once `expiresAt` has passed.
    pub fn is_stale_eligible(self) -> bool {
        matches!(
            self,
            TaskState::Queued | TaskState::Assigned | TaskState::AwaitingApproval
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?} (expected one of: {})",
                    join(&TaskState::ALL)
                )
            })
    }
}

/// A task's kind is the daemon's mode when it was submitted; modes and kinds share one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Synthetic,
    Shadow,
    Live,
}

/// The daemon's rollout mode.
pub type Mode = TaskKind;

impl TaskKind {
    pub const ALL: [TaskKind; 3] = [TaskKind::Synthetic, TaskKind::Shadow, TaskKind::Live];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Synthetic => "synthetic",
            TaskKind::Shadow => "shadow",
            TaskKind::Live => "live",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown kind {s:?} (expected one of: {})",
                    join(&TaskKind::ALL)
                )
            })
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The routing decision recorded on a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    pub matched_rule_id: Option<String>,
    pub assigned_agent_id: String,
    pub capability_matches: Vec<String>,
    pub fallback_used: bool,
    pub decided_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artefact {
    pub path: String,
    pub media_type: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    pub text: Option<String>,
    pub text_path: Option<String>,
    pub artefacts: Vec<Artefact>,
    pub specialist_session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub by: String,
    pub reason: String,
    pub at: String,
}

/// Error codes a task can end with.
pub mod task_error {
    pub const SPAWN_FAILED: &str = "spawn_failed";
    pub const SPECIALIST_TIMEOUT: &str = "specialist_timeout";
    pub const SPECIALIST_ABORTED: &str = "specialist_aborted";
    pub const RULE_LOADED_NO_AGENT: &str = "rule_loaded_no_agent";
    pub const REJECTED: &str = "rejected";
    pub const SCHEMA_DRIFT: &str = "schema_drift";
    pub const UNKNOWN: &str = "unknown";
    /// Rejected by the approval policy: nobody decided within `approval_timeout`.
    pub const APPROVAL_TIMEOUT: &str = "approval_timeout";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub details: Option<BTreeMap<String, String>>,
}

/// A task as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub schema_version: u8,
    pub id: String,
    pub kind: TaskKind,
    pub state: TaskState,
    pub goal: String,
    pub workspace_dir: Option<String>,
    pub required_capabilities: Vec<String>,
    pub routing: Option<Routing>,
    pub assigned_agent_id: Option<String>,
    pub result: Option<TaskResult>,
    pub rejection: Option<Rejection>,
    pub error: Option<TaskError>,
    pub submitted_by: String,
    pub would_require_approval: bool,
    pub created_at: String,
    pub assigned_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub expires_at: String,
    /// How many times a specialist was started for this task.
    pub attempts: u32,
    /// What the specialist's runs reported they used (protocol minor 3).
    #[serde(
        default,
        serialize_with = "crate::compat::since_3",
        deserialize_with = "crate::compat::since_3_de"
    )]
    pub usage: Option<Usage>,
}

/// What a specialist reported it used, from the `usage` object of its `ORCH_META_FILE`. Every
/// field is optional; a task run several times sums its runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Usage {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_tokens: Option<u64>,
    #[serde(default)]
    pub cache_write_tokens: Option<u64>,
    /// US dollars; finite and not negative (checked where it is read).
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

// The cost is never NaN: it is checked finite where a meta file is read.
impl Eq for Usage {}

impl Usage {
    /// This run's usage added to what earlier runs of the same task used.
    pub fn add(&self, later: &Usage) -> Usage {
        fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
            }
        }
        Usage {
            model: later.model.clone().or_else(|| self.model.clone()),
            input_tokens: sum(self.input_tokens, later.input_tokens),
            output_tokens: sum(self.output_tokens, later.output_tokens),
            cache_read_tokens: sum(self.cache_read_tokens, later.cache_read_tokens),
            cache_write_tokens: sum(self.cache_write_tokens, later.cache_write_tokens),
            cost_usd: match (self.cost_usd, later.cost_usd) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            },
        }
    }
}

/// One step of a task's trajectory: a transition, who made it and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrajectoryEvent {
    pub seq: u64,
    pub task_id: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub from: Option<TaskState>,
    pub to: TaskState,
    pub details: Option<BTreeMap<String, String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for st in TaskState::ALL {
            assert_eq!(st.as_str().parse::<TaskState>(), Ok(st));
        }
        assert!("bogus".parse::<TaskState>().is_err());
    }

    #[test]
    fn kind_names_round_trip() {
        for k in TaskKind::ALL {
            assert_eq!(k.as_str().parse::<TaskKind>(), Ok(k));
        }
        assert!("prod".parse::<TaskKind>().is_err());
    }

    #[test]
    fn terminal_and_stale_sets_are_disjoint() {
        for st in TaskState::ALL {
            assert!(!(st.is_terminal() && st.is_stale_eligible()), "{st}");
        }
        assert!(!TaskState::InProgress.is_stale_eligible());
    }
}
