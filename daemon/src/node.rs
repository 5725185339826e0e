//! This daemon as a node: its id, whether it holds the leader's lease on the periodic work, and
//! how many specialists it runs. The `cluster` module's heartbeat keeps them up to date.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// This node's id and whether it leads now.
#[derive(Debug)]
pub struct NodeState {
    pub id: String,
    leader: AtomicBool,
    /// Specialists running here, as the executor last counted them.
    running: AtomicU32,
}

impl NodeState {
    /// A node that leads until the store says otherwise: alone on SQLite, it always does.
    pub fn new(id: String, shared: bool) -> NodeState {
        NodeState {
            id,
            leader: AtomicBool::new(!shared),
            running: AtomicU32::new(0),
        }
    }

    /// Whether periodic work runs here.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Set whether this node leads; answers whether it did before.
    pub fn set_leader(&self, leads: bool) -> bool {
        self.leader.swap(leads, Ordering::AcqRel)
    }

    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    pub fn set_running(&self, n: usize) {
        self.running
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

/// The host's name, for the default node id and the nodes listing.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The id `[node] id` gives, or the host name with the state directory.
pub fn node_id(cfg: &crate::config::Config, state_dir: &Path) -> String {
    cfg.node.id_or(&host_name(), state_dir)
}
