//! Who may talk to the control socket (SPEC §10): every connection's peer credentials are checked
//! against the allowed uids and groups. Root and the daemon's own uid are always allowed. Read-only
//! peers may use the verbs that change nothing.

use crate::config::SocketAccess;
use nix::unistd::{Gid, Group, Uid, User};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
    Denied,
}

/// The peer at the other end of a connection, from SO_PEERCRED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// The user name, or `uid:<n>` when the uid has no passwd entry.
    pub user: String,
    /// Primary and supplementary groups of the peer process.
    pub groups: BTreeSet<u32>,
}

impl Peer {
    pub fn from_credentials(uid: u32, gid: u32, pid: Option<i32>) -> Peer {
        let user = match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(u)) => u.name,
            _ => format!("uid:{uid}"),
        };
        let mut groups = BTreeSet::from([gid]);
        if let Some(pid) = pid {
            groups.extend(supplementary_groups(pid));
        }
        Peer {
            uid,
            gid,
            pid,
            user,
            groups,
        }
    }
}

/// The groups of a running process, from `/proc/<pid>/status`; empty if it is gone.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    full_uids: BTreeSet<u32>,
    full_gids: BTreeSet<u32>,
    read_uids: BTreeSet<u32>,
    read_gids: BTreeSet<u32>,
}

fn gids(names: &[String]) -> BTreeSet<u32> {
    names
        .iter()
        .filter_map(|name| match name.parse::<u32>() {
            Ok(gid) => Some(gid),
            Err(_) => Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw()),
        })
        .collect()
}

impl AccessPolicy {
    pub fn from_config(cfg: &SocketAccess) -> AccessPolicy {
        let mut full_uids: BTreeSet<u32> = cfg.allow_uids.iter().copied().collect();
        full_uids.insert(0);
        full_uids.insert(Uid::effective().as_raw());
        AccessPolicy {
            full_uids,
            full_gids: gids(&cfg.allow_groups),
            read_uids: cfg.read_only_uids.iter().copied().collect(),
            read_gids: gids(&cfg.read_only_groups),
        }
    }

    pub fn check(&self, peer: &Peer) -> Access {
        if self.full_uids.contains(&peer.uid)
            || peer.groups.iter().any(|g| self.full_gids.contains(g))
        {
            Access::Full
        } else if self.read_uids.contains(&peer.uid)
            || peer.groups.iter().any(|g| self.read_gids.contains(g))
        {
            Access::ReadOnly
        } else {
            Access::Denied
        }
    }
}

/// The daemon's own primary group, used for the socket directory's group.
pub fn own_gid() -> Gid {
    Gid::effective()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid: groups[0],
            pid: None,
            user: format!("u{uid}"),
            groups: groups.iter().copied().collect(),
        }
    }

    #[test]
    fn root_and_own_uid_are_always_allowed() {
        let p = AccessPolicy::from_config(&SocketAccess {
            allow_groups: vec![],
            ..SocketAccess::default()
        });
        assert_eq!(p.check(&peer(0, &[0])), Access::Full);
        assert_eq!(
            p.check(&peer(Uid::effective().as_raw(), &[12345])),
            Access::Full
        );
    }

    #[test]
    fn strangers_are_denied_and_groups_grant() {
        let cfg = SocketAccess {
            allow_groups: vec!["4242".into()],
            read_only_uids: vec![7000],
            ..SocketAccess::default()
        };
        let p = AccessPolicy::from_config(&cfg);
        let stranger = if Uid::effective().as_raw() == 6000 {
            6001
        } else {
            6000
        };
        assert_eq!(p.check(&peer(stranger, &[6000])), Access::Denied);
        assert_eq!(p.check(&peer(stranger, &[6000, 4242])), Access::Full);
        assert_eq!(p.check(&peer(7000, &[7000])), Access::ReadOnly);
    }
}
