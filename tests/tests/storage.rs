//! A full disk: the store on a small tmpfs of the test's own. Submits answer `storage_full` (exit 1)
//! while it is full, `status` and the metrics say since when, the log has one line per episode, and
//! once space returns submits succeed and nothing acknowledged was lost. Needs root (mount).

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
