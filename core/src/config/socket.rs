//! `[socket]`: who may connect to the control socket, and the largest frame it accepts.

use super::validator::Validator;
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    pub allow_uids: Vec<u32>,
    pub allow_groups: Vec<String>,
    pub read_only_uids: Vec<u32>,
    pub read_only_groups: Vec<String>,
    pub max_frame: usize,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            allow_uids: Vec::new(),
            allow_groups: vec!["orchestrator".to_string()],
            read_only_uids: Vec::new(),
            read_only_groups: Vec::new(),
            max_frame: orchestrator_proto::frame::DEFAULT_MAX_FRAME,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSocket {
    allow_uids: Option<Vec<u32>>,
    allow_groups: Option<Vec<String>>,
    read_only_uids: Option<Vec<u32>>,
    read_only_groups: Option<Vec<String>>,
    max_frame: Option<Spanned<u64>>,
}

impl Validator<'_> {
    pub(super) fn socket(&mut self, raw: Option<RawSocket>) -> SocketAccess {
        let mut socket = SocketAccess::default();
        if let Some(s) = raw {
            if let Some(v) = s.allow_uids {
                socket.allow_uids = v;
            }
            if let Some(v) = s.allow_groups {
                socket.allow_groups = v;
            }
            if let Some(v) = s.read_only_uids {
                socket.read_only_uids = v;
            }
            if let Some(v) = s.read_only_groups {
                socket.read_only_groups = v;
            }
            if let Some(mf) = s.max_frame {
                let n = *mf.get_ref();
                if !(1024..=64 * 1024 * 1024).contains(&n) {
                    self.err(
                        "socket.max_frame",
                        Some(&mf),
                        "must be between 1024 and 67108864 bytes",
                    );
                } else {
                    socket.max_frame = n as usize;
                }
            }
        }
        socket
    }
}
