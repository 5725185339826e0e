//! The store's integrity check: it runs after READY on every start, and a store damaged while the
//! daemon was down is reported by `status`, the metrics and the log, and refuses writes.

use orchestrator_tests::*;
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

fn storage_once_checked(d: &TestDaemon) -> Value {
    wait_for(
        "an integrity check to finish",
        Duration::from_secs(30),
        || {
            let (code, s) = d.ctl_json(&["status"]);
            assert_eq!(code, 0, "{s}");
            (!s["storage"]["lastCheck"].is_null()).then(|| s["storage"].clone())
        },
    )
}

/// Overwrite the header and cell pointers of a leaf page of the tasks table with garbage.
fn damage_tasks_table(db: &Path) {
    let root: u32 = {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.query_row(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .unwrap();
    let mut header = [0u8; 100];
    f.read_exact(&mut header).unwrap();
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => n as u64,
    };
    let read_page = |f: &mut std::fs::File, n: u32| {
        let mut page = vec![0u8; page_size as usize];
        f.seek(SeekFrom::Start((n as u64 - 1) * page_size)).unwrap();
        f.read_exact(&mut page).unwrap();
        page
    };
    // Follow the rightmost child pointers down to a leaf.
    let mut n = root;
    let mut page = read_page(&mut f, n);
    while page[0] == 0x05 {
        n = u32::from_be_bytes([page[8], page[9], page[10], page[11]]);
        page = read_page(&mut f, n);
    }
    assert_eq!(page[0], 0x0D, "page {n} is not a table leaf");
    assert_ne!(n, root, "the tasks table must span more than one page");
    f.seek(SeekFrom::Start((n as u64 - 1) * page_size + 1))
        .unwrap();
    f.write_all(&vec![0xFF; page_size as usize / 2]).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn an_intact_store_reports_ok_with_the_time_of_the_check() {
    let d = TestDaemon::start();
    let storage = storage_once_checked(&d);
    assert_eq!(storage["lastCheck"], "ok", "{storage}");
    assert!(storage["lastCheckAt"].as_str().unwrap().ends_with('Z'));
    assert!(storage["damaged"].is_null());
    assert!(d.log_text().contains("store: integrity check ok"));
    let out = d.ctl(&["status"]);
    assert!(
        stdout(&out).contains("integrity:    ok at "),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_store_damaged_while_down_is_found_after_ready_and_refuses_writes() {
    let mut d = TestDaemon::start();
    for i in 0..300 {
        d.submit(&format!("please fix bug number {i} in the parser module"));
    }
    assert!(d.terminate().success());
    damage_tasks_table(&d.state_dir.join("orchestrator.db"));

    // It starts and answers (start-up reads nothing of the damaged page) ...
    d.start_again();
    let storage = storage_once_checked(&d);
    // ... and then the check finds the damage.
    let why = storage["damaged"].as_str().unwrap_or_default().to_string();
    assert!(why.starts_with("integrity check failed"), "{storage}");
    assert_ne!(storage["lastCheck"], "ok");
    let out = d.ctl(&["status"]);
    assert!(
        stdout(&out).contains("store:        ERROR damaged, writes refused"),
        "{}",
        stdout(&out)
    );

    let out = d.ctl(&["submit", "anything"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("store_damaged"), "{}", stderr(&out));
    let (code, err) = d.ctl_json(&["submit", "anything"]);
    assert_eq!((code, &err["error"]["code"]), (1, &"store_damaged".into()));

    let metrics = stdout(&d.ctl(&["metrics"]));
    assert!(
        metrics.contains("\norchestrator_store_damaged 1\n"),
        "{metrics}"
    );
    assert!(d.log_text().contains("store: integrity check failed"));
}

/// A store of an earlier schema (version 8: its state and shadow indexes held every task, no task
/// kept a retry's wait, and trajectories were found through an index of events by task) is
/// upgraded at start: the log says from which version to which and how long it took, the tasks
/// are all there and listed by state, each with the trajectory it had, a later transition joins
/// it, and a second start upgrades nothing.
#[test]
fn a_store_of_the_previous_schema_is_upgraded_at_start_and_says_so() {
    let mut d = TestDaemon::start();
    let ids: Vec<String> = (0..8).map(|i| d.submit(&format!("fix bug {i}"))).collect();
    let trajectories: Vec<Value> = ids
        .iter()
        .map(|id| d.task(id)["trajectory"].clone())
        .collect();
    assert!(
        trajectories
            .iter()
            .all(|t| t.as_array().is_some_and(|t| t.len() >= 2)),
        "{trajectories:?}"
    );
    assert!(d.terminate().success());
    {
        let db = rusqlite::Connection::open(d.state_dir.join("orchestrator.db")).unwrap();
        db.execute_batch(
            "DROP INDEX tasks_waiting_expires; DROP INDEX tasks_shadow_created; \
             CREATE INDEX tasks_state_expires ON tasks(state, expires_at); \
             CREATE INDEX tasks_kind_created ON tasks(kind, created_at, state, error_code, agent, \
             completed_at, would_require_approval); \
             ALTER TABLE tasks DROP COLUMN not_before; \
             CREATE INDEX events_task ON events(task_id, seq); \
             ALTER TABLE tasks DROP COLUMN event_seqs; \
             PRAGMA user_version = 8;",
        )
        .unwrap();
    }
    let upgrades = |d: &TestDaemon| d.log_text().matches("store: upgrading the schema").count();
    assert_eq!(upgrades(&d), 0);

    d.start_again();
    let log = d.log_text();
    assert_eq!(upgrades(&d), 1, "{log}");
    let upgraded = log
        .lines()
        .find(|l| l.contains("store: schema upgraded"))
        .unwrap_or_else(|| panic!("no line of the upgrade's end in:\n{log}"));
    for field in ["from=8", "to=11", "elapsed_ms="] {
        assert!(upgraded.contains(field), "{upgraded}");
    }
    // Every task is there, and a listing by state (the waiting ones through the state index)
    // finds the same tasks as the whole listing does.
    let list = |args: &[&str]| -> Vec<(String, String)> {
        let (code, out) = d.ctl_json(&[&["tasks", "list", "--limit", "100"], args].concat());
        assert_eq!(code, 0, "{out}");
        let mut tasks: Vec<(String, String)> = out["tasks"]
            .as_array()
            .unwrap_or_else(|| panic!("a page of tasks: {out}"))
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().into(),
                    t["state"].as_str().unwrap().into(),
                )
            })
            .collect();
        tasks.sort();
        tasks
    };
    let all = list(&[]);
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        all.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    let waiting = all.iter().filter(|(_, s)| s == "awaiting_approval").count();
    assert!(
        waiting > 0,
        "no task waits for approval to list by its state: {all:?}"
    );
    for state in ["awaiting_approval", "done", "queued"] {
        let of_state: Vec<_> = all.iter().filter(|(_, s)| s == state).cloned().collect();
        assert_eq!(list(&["--state", state]), of_state, "{state}");
    }
    // Each task's trajectory is the one it had before the upgrade, and a decision after it is
    // added to the end of its task's.
    for (id, before) in ids.iter().zip(&trajectories) {
        assert_eq!(&d.task(id)["trajectory"], before, "{id}");
    }
    let (waiting, _) = all
        .iter()
        .find(|(_, s)| s == "awaiting_approval")
        .expect("a waiting task");
    let (code, out) = d.ctl_json(&["approve", waiting.as_str()]);
    assert_eq!(code, 0, "{out}");
    let after = d.task(waiting)["trajectory"].clone();
    let i = ids
        .iter()
        .position(|id| id == waiting)
        .expect("a submitted task");
    let before = trajectories[i].as_array().expect("a trajectory");
    let after = after.as_array().expect("a trajectory");
    assert_eq!(&after[..before.len()], &before[..], "{waiting}");
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(after[before.len()]["action"], "approve", "{after:?}");

    assert!(d.terminate().success());
    d.start_again();
    assert_eq!(upgrades(&d), 1, "{}", d.log_text());
}
