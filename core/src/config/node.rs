//! `[node]`: this daemon's name among the daemons that share one PostgreSQL store, how often it
//! reports itself there, and how long the leader's lease on the periodic work lasts. A daemon on
//! SQLite is a node of one; the id is still shown by `status`.

use super::validator::Validator;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(10);
const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `None`: the host name and the state directory (see `NodeConfig::id_or`).
    pub id: Option<String>,
    /// How often the node writes its heartbeat and polls the shared store for work.
    pub heartbeat: Duration,
    /// How long a leader holds the periodic work without renewing; another node takes over
    /// within twice this after the leader dies.
    pub leader_lease: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: None,
            heartbeat: DEFAULT_HEARTBEAT,
            leader_lease: DEFAULT_LEADER_LEASE,
        }
    }
}

impl NodeConfig {
    /// The configured id, or `host:state_dir`.
    pub fn id_or(&self, host: &str, state_dir: &std::path::Path) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => format!("{host}:{}", state_dir.display()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    id: Option<Spanned<String>>,
    heartbeat: Option<Spanned<String>>,
    leader_lease: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn node(&mut self, raw: Option<RawNode>) -> NodeConfig {
        let Some(raw) = raw else {
            return NodeConfig::default();
        };
        let id = raw.id.and_then(|id| {
            let ok = !id.get_ref().is_empty()
                && id.get_ref().len() <= MAX_ID_LEN
                && id
                    .get_ref()
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
            if ok {
                Some(id.get_ref().clone())
            } else {
                self.err(
                    "node.id",
                    Some(&id),
                    format!("use 1-{MAX_ID_LEN} printable characters without spaces or quotes"),
                );
                None
            }
        });
        let heartbeat =
            self.positive_duration("node.heartbeat", raw.heartbeat.as_ref(), DEFAULT_HEARTBEAT);
        let leader_lease = self.positive_duration(
            "node.leader_lease",
            raw.leader_lease.as_ref(),
            DEFAULT_LEADER_LEASE,
        );
        if leader_lease <= heartbeat {
            self.err(
                "node.leader_lease",
                raw.leader_lease.as_ref(),
                "must be longer than node.heartbeat (the leader renews its lease at each heartbeat)",
            );
        }
        NodeConfig {
            id,
            heartbeat,
            leader_lease,
        }
    }
}
