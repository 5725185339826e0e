//! Who may talk to the control socket: every connection's peer credentials are checked
//! against the allowed uids and groups. Root and the daemon's own uid are always allowed. Read-only
//! peers may use the verbs that change nothing.

use crate::config::SocketAccess;
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{getgrouplist, Gid, Group, Uid, User};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
    Denied,
}

/// The peer at the other end of a connection, from its socket credentials. Two peers are equal
/// when their credentials are: the name follows from the uid, whether looked up yet or not.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// The user name, looked up when first asked for: most requests (`status`, listings) never
    /// need it, and the first lookup of a daemon's life loads the name service (docs/BENCHMARKS.md,
    /// "Ready on 1,000,000 tasks, a fourth look").
    user: OnceLock<String>,
    /// Primary and supplementary groups of the peer process.
    pub groups: BTreeSet<u32>,
}

impl Peer {
    /// The peer of an accepted connection: SO_PEERCRED for uid, gid and pid, and the groups the
    /// peer process held when it connected.
    pub fn of(stream: &impl AsFd) -> io::Result<Peer> {
        let cred = getsockopt(stream, sockopt::PeerCredentials)?;
        let (uid, gid) = (cred.uid(), cred.gid());
        let pid = Some(cred.pid()).filter(|&p| p > 0);
        let user = OnceLock::new();
        let mut groups = BTreeSet::from([gid]);
        match peer_groups(stream) {
            Ok(list) => groups.extend(list),
            // Kernels before 4.13 have no SO_PEERGROUPS: the group database is the next best thing.
            Err(_) => groups.extend(database_groups(user.get_or_init(|| user_name(uid)), gid)),
        }
        Ok(Peer {
            uid,
            gid,
            pid,
            user,
            groups,
        })
    }

    /// The user name, or `uid:<n>` when the uid has no passwd entry.
    pub fn user(&self) -> &str {
        self.user.get_or_init(|| user_name(self.uid))
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Peer) -> bool {
        (self.uid, self.gid, self.pid, &self.groups)
            == (other.uid, other.gid, other.pid, &other.groups)
    }
}

impl Eq for Peer {}

/// The user name, or `uid:<n>` when the uid has no passwd entry.
fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid:{uid}"),
    }
}

/// Supplementary groups of the peer process as the kernel recorded them at `connect()`
/// (SO_PEERGROUPS). Like SO_PEERCRED, and unlike `/proc/<pid>/status`, this works under
/// `ProtectProc=invisible`, cannot race with the peer exiting, and is exactly what the kernel used
/// when it let the peer open the socket.
pub fn peer_groups(stream: &impl AsFd) -> io::Result<Vec<u32>> {
    let fd = stream.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `fd` is a socket borrowed for the duration of the call; the kernel writes at most
        // `len` bytes into `groups`, whose allocation is exactly `len` bytes long, and reports in
        // `len` how many it wrote (or, with ERANGE, how many it needs).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// The groups the group database gives `user` (with primary group `gid`); empty when the user is
/// unknown.
pub fn database_groups(user: &str, gid: u32) -> Vec<u32> {
    let Ok(name) = CString::new(user) else {
        return Vec::new();
    };
    getgrouplist(&name, Gid::from_raw(gid))
        .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    full_uids: BTreeSet<u32>,
    read_uids: BTreeSet<u32>,
    full_groups: Vec<String>,
    read_groups: Vec<String>,
    /// The gids of `full_groups` and `read_groups`, looked up when a peer first needs them: root
    /// and the allowed uids never do, and the lookup of a name the group database lacks (the
    /// default group `orchestrator` before the package creates it) took more than half a
    /// millisecond of every start (docs/BENCHMARKS.md, "Ready on 1,000,000 tasks, a fourth look").
    gids: OnceLock<(BTreeSet<u32>, BTreeSet<u32>)>,
}

/// The gids of `names`: numbers as they are, names from the group database; unknown names are
/// left out.
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
            read_uids: cfg.read_only_uids.iter().copied().collect(),
            full_groups: cfg.allow_groups.clone(),
            read_groups: cfg.read_only_groups.clone(),
            gids: OnceLock::new(),
        }
    }

    /// Look the group names up now, if no peer has made it happen yet. The daemon calls it off
    /// the runtime's threads after READY and after a reload, so that a slow group database (LDAP,
    /// sssd) holds neither the start nor, usually, a request.
    pub fn look_up_groups(&self) -> &(BTreeSet<u32>, BTreeSet<u32>) {
        self.gids
            .get_or_init(|| (gids(&self.full_groups), gids(&self.read_groups)))
    }

    pub fn check(&self, peer: &Peer) -> Access {
        if self.full_uids.contains(&peer.uid) {
            return Access::Full;
        }
        let (full_gids, read_gids) = self.look_up_groups();
        if peer.groups.iter().any(|g| full_gids.contains(g)) {
            Access::Full
        } else if self.read_uids.contains(&peer.uid)
            || peer.groups.iter().any(|g| read_gids.contains(g))
        {
            Access::ReadOnly
        } else {
            Access::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid: groups[0],
            pid: None,
            user: OnceLock::from(format!("u{uid}")),
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

    /// Group names are looked up in the group database, and only when a peer that is neither
    /// root, nor the daemon's uid, nor an allowed uid needs them.
    #[test]
    fn group_names_are_looked_up_when_a_peer_first_needs_them() {
        let p = AccessPolicy::from_config(&SocketAccess {
            allow_groups: vec!["root".into(), "no-such-group-orchestrator-test".into()],
            read_only_groups: vec!["4343".into()],
            ..SocketAccess::default()
        });
        assert_eq!(p.check(&peer(0, &[0])), Access::Full);
        assert_eq!(p.gids.get(), None);
        let stranger = if Uid::effective().as_raw() == 6000 {
            6001
        } else {
            6000
        };
        assert_eq!(p.check(&peer(stranger, &[6000, 0])), Access::Full);
        assert_eq!(p.check(&peer(stranger, &[6000, 4343])), Access::ReadOnly);
        assert_eq!(p.check(&peer(stranger, &[6000])), Access::Denied);
        assert_eq!(
            p.gids.get(),
            Some(&(BTreeSet::from([0]), BTreeSet::from([4343])))
        );
    }

    fn own_groups() -> BTreeSet<u32> {
        let mut own: BTreeSet<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        own.insert(Gid::effective().as_raw());
        own
    }

    #[test]
    fn peer_of_a_socket_has_our_uid_and_the_groups_we_hold() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = Peer::of(&a).unwrap();
        assert_eq!(me.uid, Uid::effective().as_raw());
        assert_eq!(me.gid, Gid::effective().as_raw());
        assert_eq!(me.pid, Some(std::process::id() as i32));
        assert_eq!(me.groups, own_groups());
        // The name is looked up only when asked for (or for the group database, on kernels without
        // SO_PEERGROUPS).
        if peer_groups(&a).is_ok() {
            assert_eq!(me.user.get(), None);
        }
        assert_eq!(me.user(), user_name(Uid::effective().as_raw()));
        // Looking the name up changes nothing about who the peer is.
        assert_eq!(Peer::of(&a).unwrap(), me);
    }

    #[test]
    fn database_groups_always_include_the_primary_group() {
        let me = user_name(Uid::effective().as_raw());
        let gid = Gid::effective().as_raw();
        if !me.starts_with("uid:") {
            assert!(database_groups(&me, gid).contains(&gid));
        }
        assert_eq!(
            database_groups("no-such-user-orchestrator-test", 4242),
            vec![4242]
        );
        assert!(database_groups("nul\0in name", 4242).is_empty());
    }
}
