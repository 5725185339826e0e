//! Large lists: a listing pages by (created, id) and each page fits in one frame, so `orchctl tasks
//! list --limit N` works for any N up to 10,000; a reply that cannot be sent at all is answered
//! `reply_too_large` and logged instead of a dropped connection.

use orchestrator::clock::now_ms;
use orchestrator::machine::Action;
use orchestrator::store::{NewTask, Patch, Store, TransitionOp};
use orchestrator_proto::frame::encode;
use orchestrator_proto::message::{PageQuery, SubmitRequest};
use orchestrator_proto::task::{TaskKind, TaskResult};
use orchestrator_proto::{ErrorCode, Request, Response, ServerMessage};
use orchestrator_tests::*;
use std::collections::HashSet;
use std::path::Path;

const FRAME: usize = 64 * 1024;

fn submit_on(raw: &mut Raw, goal: &str) -> String {
    match raw.ok(Request::Submit(SubmitRequest {
        goal: goal.into(),
        required_capabilities: Vec::new(),
        workspace_dir: None,
        ttl_secs: None,
        wait: false,
    })) {
        Response::Task(t) => t.id,
        other => panic!("submit answered {other:?}"),
    }
}

fn connect(d: &TestDaemon) -> Raw {
    let mut raw = Raw::connect(&d.socket).unwrap();
    raw.hello().unwrap();
    raw
}

/// Submit `n` tasks over `conns` connections at once; answers their ids.
fn submit_many(d: &TestDaemon, n: usize, conns: usize) -> Vec<String> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..conns)
            .map(|c| {
                s.spawn(move || {
                    let mut raw = connect(d);
                    (c..n)
                        .step_by(conns)
                        .map(|i| submit_on(&mut raw, &format!("please fix bug number {i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

fn page(before: Option<String>, limit: u32) -> PageQuery {
    PageQuery {
        state: None,
        kind: None,
        limit,
        include_harness: false,
        agent: None,
        goal: None,
        before,
        after: None,
    }
}

#[test]
fn paging_visits_each_task_once_while_new_tasks_arrive() {
    // A small frame makes pages stop on size long before the limit.
    let d = TestDaemon::with_config(&format!("[socket]\nmax_frame = {FRAME}\n"));
    let ids = submit_many(&d, 5_000, 8);
    let expected: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(expected.len(), 5_000);

    let mut raw = connect(&d);
    let mut arriving = connect(&d);
    let (mut seen, mut cursor, mut late, mut cut) = (Vec::new(), None, Vec::new(), 0);
    loop {
        let reply = raw
            .request(Request::ListPage(page(cursor.clone(), 1_000)))
            .unwrap();
        assert!(encode(&reply).unwrap().len() <= FRAME);
        let ServerMessage::Ok(resp) = reply else {
            panic!("page refused: {reply:?}")
        };
        let Response::Page(p) = *resp else {
            panic!("not a page: {resp:?}")
        };
        // New tasks arrive between pages; they are newer than the walk and never appear in it.
        late.push(submit_on(&mut arriving, "a task submitted while paging"));
        if p.next.is_some() && p.tasks.len() < 1_000 {
            cut += 1;
        }
        seen.extend(p.tasks.iter().map(|t| t.id.clone()));
        match p.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(cut > 0, "no page stopped on the frame size");
    assert_eq!(seen.len(), 5_000, "each task once");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);

    // orchctl pages under the hood: 3,000 tasks in one answer, and `next` where it stopped.
    let (code, list) = d.ctl_json(&["tasks", "list", "--limit", "3000"]);
    assert_eq!(code, 0, "{list}");
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3_000);
    let next = list["next"].as_str().unwrap().to_string();
    assert_eq!(tasks[2_999]["id"], next.as_str());
    // The rest from `next` on: everything, each once, and nothing left.
    let (code, rest) = d.ctl_json(&["tasks", "list", "--limit", "10000", "--before", &next]);
    assert_eq!(code, 0, "{rest}");
    let mut all: Vec<String> = tasks
        .iter()
        .chain(rest["tasks"].as_array().unwrap())
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert!(rest["next"].is_null());
    assert_eq!(all.len(), 5_000 + late.len());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5_000 + late.len());

    // Newer tasks than a cursor, and the filters.
    let (_, newer) = d.ctl_json(&["tasks", "list", "--after", &next, "--limit", "2"]);
    let newer = newer["tasks"].as_array().unwrap();
    assert_eq!(newer.len(), 2);
    assert_eq!(newer[1]["id"], tasks[2_998]["id"]);
    let (_, found) = d.ctl_json(&["tasks", "list", "--goal", "BUG NUMBER 4321"]);
    let found = found["tasks"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["goal"], "please fix bug number 4321");
    let (code, none) = d.ctl_json(&["tasks", "list", "--agent", "nobody-has-this"]);
    assert_eq!((code, none["tasks"].as_array().unwrap().len()), (0, 0));
}

/// A valid ULID that sorts with nothing the daemon makes.
fn seed_id(n: usize) -> String {
    format!("01HSEED{n:019}")
}

/// Write `n` live tasks, done, each with a result of `result_bytes`, into a stopped daemon's store.
fn seed_done(state_dir: &Path, n: usize, result_bytes: usize) -> Vec<String> {
    let store = Store::open(&state_dir.join("orchestrator.db")).expect("open the store");
    let ids: Vec<String> = (0..n).map(seed_id).collect();
    let seeded = ids.clone();
    let created = now_ms() - 3_600_000;
    store
        .write_blocking(move |b| {
            for (i, id) in seeded.iter().enumerate() {
                let at = created + i as i64;
                b.insert_task(
                    NewTask {
                        id: id.clone(),
                        kind: TaskKind::Live,
                        goal: "seeded".into(),
                        workspace_dir: None,
                        required_capabilities: Vec::new(),
                        submitted_by: "seed".into(),
                        harness: false,
                        created_ms: at,
                        expires_ms: now_ms() + 86_400_000,
                    },
                    "seed",
                )?;
                let agent = Patch {
                    agent: Some("coder".into()),
                    ..Patch::default()
                };
                b.transition(TransitionOp::new(id, Action::Route, "seed", at).patch(agent))?;
                b.transition(TransitionOp::new(id, Action::Start, "seed", at))?;
                let result = Patch {
                    result: Some(TaskResult {
                        text: Some("r".repeat(result_bytes)),
                        text_path: None,
                        artefacts: Vec::new(),
                        specialist_session_id: None,
                    }),
                    ..Patch::default()
                };
                let done = Action::Complete {
                    approval_required: false,
                };
                b.transition(TransitionOp::new(id, done, "seed", at).patch(result))?;
            }
            Ok(())
        })
        .expect("seed tasks");
    store.close();
    ids
}

#[test]
fn limit_3000_with_large_results_pages_instead_of_failing() {
    let mut d = TestDaemon::start();
    assert!(d.terminate().success());
    // 3,000 results of 2 KB: about 6 MB, six times the default frame.
    let ids = seed_done(&d.state_dir, 3_000, 2_000);
    d.start_again();
    let (code, list) = d.ctl_json(&["tasks", "list", "--kind", "live", "--limit", "3000"]);
    assert_eq!(code, 0, "{list}");
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3_000);
    assert!(list["next"].is_null(), "nothing left: {}", list["next"]);
    let listed: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    assert!(tasks
        .iter()
        .all(|t| t["result"]["text"].as_str().unwrap().len() == 2_000));
}

#[test]
fn a_reply_over_the_frame_limit_is_reply_too_large_and_logged() {
    let mut d = TestDaemon::start();
    assert!(d.terminate().success());
    // One task whose result alone is larger than the default frame (1 MiB).
    let id = seed_done(&d.state_dir, 1, 1_100_000).remove(0);
    d.start_again();

    let out = d.ctl(&["tasks", "show", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("reply_too_large"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--limit"), "{}", stderr(&out));
    let log = d.log_text();
    assert_eq!(
        log.matches("a reply was larger than the frame limit")
            .count(),
        1,
        "{log}"
    );
    // A listing holding it says so instead of dropping the connection.
    let (code, err) = d.ctl_json(&["tasks", "list", "--kind", "live"]);
    assert_eq!(
        (code, &err["error"]["code"]),
        (1, &"reply_too_large".into())
    );

    // The connection survives the refusal, and old (1.0) clients get a code they know.
    let mut raw = Raw::connect(&d.socket).unwrap();
    let mut hello = orchestrator_proto::Hello::current("old");
    hello.minor = 0;
    raw.send(&orchestrator_proto::ClientMessage::Hello(hello))
        .unwrap();
    raw.recv().unwrap();
    match raw.request(Request::ShowTask { id: id.clone() }).unwrap() {
        ServerMessage::Err(e) => {
            assert_eq!(e.code, ErrorCode::Internal);
            assert_eq!(e.details["code"], "reply_too_large");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // A 1.0 client reads the shapes of its own minor.
    let status = orchestrator_proto::compat::with_peer_minor(0, || raw.ok(Request::Status));
    assert!(matches!(status, Response::Status(_)));
}
