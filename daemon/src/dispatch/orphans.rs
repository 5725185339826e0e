//! Specialists left running by a previous run of the daemon (it was killed, or crashed): found and
//! stopped at start, before their tasks are reclaimed, so that a restarted daemon leaves no orphan.
//!
//! A process is ours only if its environment carries `ORCH_TASK_ID=<id>` of a task that was
//! `in_progress`; task ids are ULIDs, so a reused pid never matches. The recorded process group is
//! stopped when its leader still carries that id; a scan of `/proc` also finds the specialist's
//! processes that outlived their leader or were started before their group was recorded.

use crate::daemon::Daemon;
use crate::store::Leftover;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest an orphan gets between SIGTERM and SIGKILL; start-up should not wait long.
const MAX_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for SIGKILLed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The task id in a process's environment, if it has one.
fn task_id_of(environ: &[u8]) -> Option<&str> {
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"ORCH_TASK_ID="))
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// One process as `/proc` shows it.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    pgid: i32,
    zombie: bool,
    task: Option<String>,
}

fn read_proc(proc_root: &Path, pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses, so split after the last ')'.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?;
    let _ppid = rest.next()?;
    let pgid: i32 = rest.next()?.parse().ok()?;
    let environ =
        std::fs::read(proc_root.join(pid.to_string()).join("environ")).unwrap_or_default();
    Some(Proc {
        pid,
        pgid,
        zombie: state == "Z" || state == "X",
        task: task_id_of(&environ).map(str::to_string),
    })
}

fn scan(proc_root: &Path) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid as u32 != std::process::id())
        .filter_map(|pid| read_proc(proc_root, pid))
        .collect()
}

/// What to signal: whole groups whose leader is a specialist of `ids`, and single processes that
/// carry one of `ids` outside such a group.
#[derive(Debug, Default, PartialEq, Eq)]
struct Targets {
    groups: BTreeSet<i32>,
    pids: BTreeSet<i32>,
}

fn targets(leftovers: &[Leftover], procs: &[Proc]) -> Targets {
    let ids: HashSet<&str> = leftovers.iter().map(|l| l.id.as_str()).collect();
    let by_pid: HashMap<i32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let mut t = Targets::default();
    // The recorded group, if its leader is still the specialist of that very task.
    for l in leftovers {
        if let Some(pgid) = l.pgid {
            if by_pid
                .get(&pgid)
                .is_some_and(|p| !p.zombie && p.task.as_deref() == Some(l.id.as_str()))
            {
                t.groups.insert(pgid);
            }
        }
    }
    for p in procs {
        let ours = !p.zombie && p.task.as_deref().is_some_and(|id| ids.contains(id));
        if !ours {
            continue;
        }
        if p.pid == p.pgid {
            t.groups.insert(p.pgid);
        } else if !t.groups.contains(&p.pgid) {
            t.pids.insert(p.pid);
        }
    }
    t
}

fn send(t: &Targets, sig: Signal) {
    for g in &t.groups {
        let _ = killpg(Pid::from_raw(*g), sig);
    }
    for p in &t.pids {
        let _ = kill(Pid::from_raw(*p), sig);
    }
}

/// Whether any process of the targets (or carrying one of `ids`) still runs.
fn any_alive(proc_root: &Path, t: &Targets, ids: &HashSet<String>) -> bool {
    scan(proc_root).iter().any(|p| {
        !p.zombie
            && (t.groups.contains(&p.pgid)
                || t.pids.contains(&p.pid)
                || p.task.as_ref().is_some_and(|id| ids.contains(id)))
    })
}

fn wait_gone(proc_root: &Path, t: &Targets, ids: &HashSet<String>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !any_alive(proc_root, t, ids) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Stop the orphans of `leftovers`: SIGTERM, up to `grace`, SIGKILL. Returns how many processes
/// and groups were signalled.
fn reap_blocking(proc_root: &Path, leftovers: &[Leftover], grace: Duration) -> usize {
    let t = targets(leftovers, &scan(proc_root));
    let n = t.groups.len() + t.pids.len();
    if n == 0 {
        return 0;
    }
    let ids: HashSet<String> = leftovers.iter().map(|l| l.id.clone()).collect();
    send(&t, Signal::SIGTERM);
    if !wait_gone(proc_root, &t, &ids, grace) {
        send(&t, Signal::SIGKILL);
        // Processes that carry the id but were found only now (forked meanwhile) go too.
        let late = targets(leftovers, &scan(proc_root));
        send(&late, Signal::SIGKILL);
        if !wait_gone(proc_root, &t, &ids, KILL_WAIT) {
            tracing::error!(
                "orphan specialists of the previous run survived SIGKILL; they are in another state"
            );
        }
    }
    n
}

/// Find and stop the specialists the previous run left behind. Call before reclaiming their tasks.
pub async fn reap(d: &Daemon) {
    let found = match d.store.orphan_leftovers().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot read in-progress tasks to look for orphan specialists");
            return;
        }
    };
    if found.is_empty() {
        return;
    }
    let cfg = d.config();
    let grace = found
        .iter()
        .filter_map(|l| cfg.agent(l.agent.as_deref()?))
        .map(|a| a.kill_grace)
        .max()
        .unwrap_or(Duration::ZERO)
        .min(MAX_GRACE);
    let ids: Vec<String> = found.iter().map(|l| l.id.clone()).collect();
    let stopped =
        tokio::task::spawn_blocking(move || reap_blocking(Path::new("/proc"), &found, grace))
            .await
            .unwrap_or(0);
    if stopped > 0 {
        tracing::warn!(
            count = stopped,
            tasks = ?ids,
            "stopped specialists left running by the previous run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, pgid: i32, task: Option<&str>) -> Proc {
        Proc {
            pid,
            pgid,
            zombie: false,
            task: task.map(str::to_string),
        }
    }

    fn left(id: &str, pgid: Option<i32>) -> Leftover {
        Leftover {
            id: id.into(),
            pgid,
            agent: None,
        }
    }

    #[test]
    fn environ_names_the_task() {
        assert_eq!(
            task_id_of(b"PATH=/bin\0ORCH_TASK_ID=01ABC\0HOME=/x\0"),
            Some("01ABC")
        );
        assert_eq!(task_id_of(b"XORCH_TASK_ID=1\0"), None);
        assert_eq!(task_id_of(b""), None);
    }

    #[test]
    fn a_recorded_group_is_ours_only_if_its_leader_carries_the_task() {
        let procs = vec![
            proc(100, 100, Some("T1")),
            proc(101, 100, Some("T1")),
            // pid 200 was reused by a stranger.
            proc(200, 200, None),
        ];
        let t = targets(&[left("T1", Some(100)), left("T2", Some(200))], &procs);
        assert_eq!(t.groups, BTreeSet::from([100]));
        assert!(t.pids.is_empty());
    }

    #[test]
    fn processes_that_outlived_their_leader_are_found_by_environment() {
        let procs = vec![
            proc(300, 250, Some("T1")),
            proc(301, 301, Some("OTHER")),
            Proc {
                zombie: true,
                ..proc(302, 302, Some("T1"))
            },
        ];
        let t = targets(&[left("T1", Some(250))], &procs);
        assert!(t.groups.is_empty());
        assert_eq!(t.pids, BTreeSet::from([300]));
    }

    #[test]
    fn reads_stat_with_odd_command_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("stat"), "42 (a) b (c) S 1 40 40 0").unwrap();
        std::fs::write(p.join("environ"), "ORCH_TASK_ID=T9\0").unwrap();
        let got = read_proc(dir.path(), 42).unwrap();
        assert_eq!((got.pid, got.pgid, got.zombie), (42, 40, false));
        assert_eq!(got.task.as_deref(), Some("T9"));
    }
}
