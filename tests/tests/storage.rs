//! A full disk: the store on a small tmpfs of the test's own. Submits answer `storage_full` (exit 1)
//! while it is full, `status` and the metrics say since when, the log has one line per episode, and
//! once space returns submits succeed and nothing acknowledged was lost; tasks whose start or
//! outcome could not be written are taken up again. Needs root (mount).

use orchestrator_tests::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a small tmpfs to fill the store's disk: run it as root \
             (e.g. sudo -E cargo test -p orchestrator-tests --test storage)"
        );
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", stderr(&out));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write a file until the file system is full; answers its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    // Bounded: the tmpfs is a few MiB.
    for _ in 0..10_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last bytes, one page at a time, so that not even a small write fits.
    for _ in 0..10_000 {
        if f.write_all(&chunk[..4096]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

fn storage(d: &TestDaemon) -> serde_json::Value {
    let (code, s) = d.ctl_json(&["status"]);
    assert_eq!(code, 0, "{s}");
    s["storage"].clone()
}

#[test]
fn a_full_disk_is_storage_full_logged_once_and_recovers_without_loss() {
    let mut d = TestDaemon::start();
    assert!(d.terminate().success());
    // The store starts afresh on a 8 MiB tmpfs over the (now empty) state directory.
    let _tmpfs = Tmpfs::mount(&d.state_dir, "8m");
    d.start_again();
    let mut acknowledged: Vec<String> = (0..20).map(|i| d.submit(&format!("before {i}"))).collect();

    let filler = fill(&d.state_dir);
    let mut refused = 0;
    for i in 0..30 {
        let out = d.ctl(&["submit", &format!("while full {i}")]);
        if out.status.success() {
            // A write that still fitted in space the store already had is acknowledged: keep it.
            acknowledged.push(stdout(&out).trim().to_string());
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("storage_full"), "{}", stderr(&out));
        refused += 1;
    }
    assert!(
        refused >= 20,
        "only {refused} of 30 submits met the full disk"
    );
    let (code, err) = d.ctl_json(&["submit", "as json"]);
    assert_eq!((code, &err["error"]["code"]), (1, &"storage_full".into()));

    let s = storage(&d);
    assert!(s["fullSince"].as_str().unwrap().ends_with('Z'), "{s}");
    assert!(stdout(&d.ctl(&["status"])).contains("ERROR disk full since"));
    let metrics = stdout(&d.ctl(&["metrics"]));
    assert!(
        metrics.contains("\norchestrator_storage_full 1\n"),
        "{metrics}"
    );
    let log = d.log_text();
    assert_eq!(log.matches("store: the disk is full").count(), 1, "{log}");

    // Space returns: the next submit commits and the episode ends, once in the log.
    std::fs::remove_file(filler).unwrap();
    acknowledged.push(d.submit("after"));
    acknowledged.push(d.submit("after again"));
    assert!(storage(&d)["fullSince"].is_null());
    let metrics = stdout(&d.ctl(&["metrics"]));
    assert!(
        metrics.contains("\norchestrator_storage_full 0\n"),
        "{metrics}"
    );
    let log = d.log_text();
    assert_eq!(
        log.matches("store: storage writable again").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("store: the disk is full").count(), 1, "{log}");

    // Nothing acknowledged was lost, across a restart too.
    d.restart();
    for id in &acknowledged {
        assert_eq!(d.state_of(id), "done", "task {id}");
    }
}

/// A full disk in the middle of a specialist's work: its outcome cannot be written, and the next
/// task's start cannot either. Neither stays stuck once space returns: the next sweep dispatches
/// again what the store error left `assigned`, and the lapsed lease of the other is reclaimed.
#[test]
fn tasks_a_full_disk_left_behind_are_dispatched_again_once_space_returns() {
    const RESEARCH: &str = "research the literature on prompt caching";
    const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
    let w = workdir();
    let go = w.path().join("go");
    let slow = script(
        w.path(),
        "slow.sh",
        r#"
touch "$DIR/started-$ORCH_TASK_ID"
while [ ! -e "$DIR/go" ]; do sleep 0.05; done
echo ok
"#,
    );
    let toml = agent("researcher", &slow, "max_concurrent = 1");
    let mut d = TestDaemon::with_config(&toml);
    assert!(d.terminate().success());
    let _tmpfs = Tmpfs::mount(&d.state_dir, "8m");
    d.start_again();
    d.flip_to("shadow", &toml);

    let first = d.submit(RESEARCH);
    let started = w.path().join(format!("started-{first}"));
    wait_for("the first specialist started", WAIT, || {
        started.exists().then_some(())
    });
    // The agent runs one at a time: the second waits, routed.
    let second = d.submit(RESEARCH);
    d.wait_state(&second, "assigned", WAIT);

    let filler = fill(&d.state_dir);
    let mut more = Vec::new();
    let mut refused = false;
    for i in 0..50 {
        let out = d.ctl(&["submit", &format!("{RESEARCH} {i}")]);
        if !out.status.success() {
            assert!(stderr(&out).contains("storage_full"), "{}", stderr(&out));
            refused = true;
            break;
        }
        more.push(stdout(&out).trim().to_string());
    }
    assert!(refused, "the disk never filled");

    // The first specialist ends: its outcome cannot be written, and the second cannot start.
    std::fs::write(&go, "").unwrap();
    wait_for("the second task's start to fail", WAIT, || {
        d.log_text()
            .lines()
            .any(|l| l.contains("cannot start the task") && l.contains(second.as_str()))
            .then_some(())
    });
    assert_eq!(d.state_of(&second), "assigned");

    // Space returns; the next sweep dispatches the second task again, and it runs.
    std::fs::remove_file(filler).unwrap();
    let out = d.ctl(&["sweep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_state(&second, "done", WAIT);
    assert!(d
        .log_text()
        .contains("dispatching again the queued and assigned tasks a store error left behind"));
    // The first one's lease lapses (30 s by default) and the sweeper takes it back; the tasks
    // submitted while the disk filled run too. Nothing stays on its way.
    d.advance(std::time::Duration::from_secs(60));
    let out = d.ctl(&["sweep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the first task to end", WAIT, || {
        let state = d.state_of(&first);
        matches!(state.as_str(), "done" | "failed").then_some(())
    });
    for id in &more {
        d.wait_state(id, "done", WAIT);
    }
}
