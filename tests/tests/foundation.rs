//! Issue: foundation — each acceptance point, end to end with the real binaries.

use orchestrator_proto::message::{ClientMessage, Hello, Request, SubmitRequest};
use orchestrator_proto::{ErrorCode, ServerMessage};
use orchestrator_tests::*;
use std::time::Duration;

const CODE_GOAL: &str = "please debug this function and fix the off-by-one";

#[test]
fn status_on_builtin_defaults_says_synthetic() {
    let d = TestDaemon::start();
    let out = d.ctl(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("mode:         synthetic"),
        "{}",
        stdout(&out)
    );
    let (code, v) = d.ctl_json(&["status"]);
    assert_eq!(code, 0);
    assert_eq!(v["effectiveMode"], "synthetic");
    assert_eq!(v["configuredMode"], "synthetic");
}

#[test]
fn coder_task_waits_for_approval_with_its_trajectory_then_approve_once() {
    let d = TestDaemon::start();
    let id = d.submit(CODE_GOAL);
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let t = d.task(&id);
    assert_eq!(t["state"], "awaiting_approval");
    assert_eq!(t["assignedAgentId"], "coder");
    assert_eq!(t["routing"]["matchedRuleId"], "code-tasks");
    let steps: Vec<(String, String)> = t["trajectory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("-").to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("-", "queued"),
        ("queued", "assigned"),
        ("assigned", "in_progress"),
        ("in_progress", "awaiting_approval"),
    ];
    assert_eq!(
        steps,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    let table = stdout(&d.ctl(&["tasks", "show", &id]));
    assert!(
        table.contains("awaiting_approval")
            && table.contains("coder")
            && table.contains("code-tasks"),
        "{table}"
    );

    let out = d.ctl(&["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.state_of(&id), "done");
    let again = d.ctl(&["approve", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("invalid_transition"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn reject_reason_rules_and_rejection_by_peer_user() {
    let d = TestDaemon::start();
    let id = d.submit(CODE_GOAL);
    let long = "x".repeat(1025);
    for bad in ["", "   \t ", long.as_str()] {
        let out = d.ctl(&["reject", &id, "--reason", bad]);
        assert_eq!(out.status.code(), Some(1), "reason {:?}", bad.len());
        assert!(stderr(&out).contains("invalid_reason"), "{}", stderr(&out));
        assert_eq!(d.state_of(&id), "awaiting_approval");
    }
    assert_eq!(
        d.task(&id)["trajectory"].as_array().unwrap().len(),
        4,
        "nothing was written"
    );
    let out = d.ctl(&["reject", &id, "--reason", "touches production"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = d.task(&id);
    assert_eq!(t["state"], "failed");
    assert_eq!(t["error"]["code"], "rejected");
    assert_eq!(t["rejection"]["reason"], "touches production");
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap()
        .name;
    assert_eq!(t["rejection"]["by"], me.as_str());
}

#[test]
fn json_output_uses_the_schema_field_names() {
    let d = TestDaemon::start();
    let id = d.submit(CODE_GOAL);
    let t = d.task(&id);
    for field in [
        "schemaVersion",
        "id",
        "kind",
        "state",
        "goal",
        "workspaceDir",
        "requiredCapabilities",
        "routing",
        "assignedAgentId",
        "result",
        "rejection",
        "error",
        "submittedBy",
        "wouldRequireApproval",
        "createdAt",
        "assignedAt",
        "startedAt",
        "completedAt",
        "expiresAt",
    ] {
        assert!(t.get(field).is_some(), "tasks show lacks {field}: {t}");
    }
    assert_eq!(t["schemaVersion"], 1);
    assert_eq!(t["kind"], "synthetic");
    assert_eq!(
        t["result"]["specialistSessionId"],
        format!("synthetic-{id}")
    );
    for field in [
        "matchedRuleId",
        "assignedAgentId",
        "capabilityMatches",
        "fallbackUsed",
        "decidedAt",
    ] {
        assert!(t["routing"].get(field).is_some(), "routing lacks {field}");
    }
    let (code, list) = d.ctl_json(&["tasks", "list"]);
    assert_eq!(code, 0);
    let list = list["tasks"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("requiredCapabilities").is_some());
}

#[test]
fn every_verb_without_a_daemon_exits_3_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-home.sock");
    let s = socket.to_str().unwrap();
    let id = "01J00000000000000000000000";
    let verbs: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["submit", "x"],
        vec!["tasks", "list"],
        vec!["tasks", "show", id],
        vec!["approve", id],
        vec!["reject", id, "--reason", "r"],
        vec!["cancel", id],
        vec!["route", "x"],
        vec!["synthetic", "code-1"],
        vec!["synthetic-all"],
        vec!["shadow-summary"],
        vec!["sweep"],
        vec!["reload"],
        vec!["gate", "override", "live", "--reason", "r"],
        vec!["metrics"],
        vec!["watch"],
    ];
    for v in verbs {
        let out = ctl_at(&socket, &v);
        assert_eq!(out.status.code(), Some(3), "{v:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(s),
            "{v:?} does not name the socket: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("systemctl start orchestrator"),
            "{v:?}"
        );
    }
}

fn expect_error_or_close(raw: &mut Raw) {
    match raw.recv() {
        Ok(ServerMessage::Err(_)) | Err(_) => {}
        Ok(other) => panic!("expected an error reply or a close, got {other:?}"),
    }
}

#[test]
fn raw_bad_input_gets_an_error_or_a_close_and_others_are_served() {
    let d = TestDaemon::start();
    // A healthy client stays connected throughout.
    let mut good = Raw::connect(&d.socket).unwrap();
    assert!(matches!(good.hello().unwrap(), ServerMessage::Hello(_)));

    // Length prefix of 0xFFFFFFFF.
    let mut r = Raw::connect(&d.socket).unwrap();
    r.write_raw(&[0xFF, 0xFF, 0xFF, 0xFF]).unwrap();
    match r.recv() {
        Ok(ServerMessage::Err(e)) => assert_eq!(e.code, ErrorCode::FrameTooLarge),
        other => panic!("expected frame_too_large, got {other:?}"),
    }
    assert!(r.closed());

    // Random payload bytes.
    let mut r = Raw::connect(&d.socket).unwrap();
    r.write_raw(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0x13, 0x37, 0x42, 0x99])
        .unwrap();
    match r.recv() {
        Ok(ServerMessage::Err(e)) => assert!(
            matches!(
                e.code,
                ErrorCode::MalformedRequest | ErrorCode::ProtocolMismatch
            ),
            "{e:?}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }

    // Wrong magic, then wrong major.
    for hello in [
        Hello {
            magic: 0xdead_beef,
            ..Hello::current("t")
        },
        Hello {
            major: 99,
            ..Hello::current("t")
        },
    ] {
        let mut r = Raw::connect(&d.socket).unwrap();
        r.send(&ClientMessage::Hello(hello)).unwrap();
        match r.recv() {
            Ok(ServerMessage::Err(e)) => {
                assert_eq!(e.code, ErrorCode::ProtocolMismatch);
                let daemon = format!(
                    "daemon speaks 1.{}",
                    orchestrator_proto::message::PROTOCOL_MINOR
                );
                assert!(
                    e.message.contains(&daemon),
                    "names the daemon's version: {}",
                    e.message
                );
            }
            other => panic!("expected protocol_mismatch, got {other:?}"),
        }
        assert!(r.closed());
    }

    // Half a frame, then close.
    let mut r = Raw::connect(&d.socket).unwrap();
    r.write_raw(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    drop(r);

    // A request before the hello.
    let mut r = Raw::connect(&d.socket).unwrap();
    r.send(&ClientMessage::Request(Request::Status)).unwrap();
    expect_error_or_close(&mut r);

    // The healthy client and new clients are still served.
    assert!(matches!(
        good.request(Request::Status).unwrap(),
        ServerMessage::Ok(_)
    ));
    let out = d.ctl(&["status"]);
    assert!(out.status.success());
}

#[test]
fn acknowledged_submit_survives_kill_9() {
    let mut d = TestDaemon::start();
    for round in 0..5 {
        let mut raw = Raw::connect(&d.socket).unwrap();
        raw.hello().unwrap();
        let req = Request::Submit(SubmitRequest {
            goal: format!("research round {round}"),
            required_capabilities: vec![],
            workspace_dir: None,
            ttl_secs: None,
            wait: false,
        });
        let id = match raw.ok(req) {
            orchestrator_proto::Response::Task(t) => t.id,
            other => panic!("{other:?}"),
        };
        // Kill at once: the reply was only sent after the commit was durable.
        d.kill9();
        d.start_again();
        let t = d.task(&id);
        assert_eq!(t["goal"], format!("research round {round}"));
    }
}

#[test]
fn sighup_with_invalid_config_keeps_the_old_one_and_sigterm_exits_cleanly() {
    let mut d = TestDaemon::with_config("mode = \"synthetic\"\n");
    d.write_config("[[routing.rules]]\nid = \"bad\"\npattern = \"(unclosed\"\nagent = \"main\"\n");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let status = wait_for(
        "status to show the config error",
        Duration::from_secs(10),
        || {
            let (_, v) = d.ctl_json(&["status"]);
            (!v["configError"].is_null()).then_some(v)
        },
    );
    assert!(
        status["configError"].as_str().unwrap().contains("bad"),
        "{status}"
    );
    // The old routing still serves.
    let id = d.submit(CODE_GOAL);
    assert_eq!(d.task(&id)["routing"]["matchedRuleId"], "code-tasks");
    let code = d.terminate();
    assert_eq!(code.code(), Some(0));
    assert!(!d.socket.exists(), "socket removed on exit");
}

#[test]
fn racing_approve_and_reject_exactly_one_wins() {
    let d = TestDaemon::start();
    for _ in 0..20 {
        let id = d.submit(CODE_GOAL);
        let (s1, s2) = (d.socket.clone(), d.socket.clone());
        let (i1, i2) = (id.clone(), id.clone());
        let a = std::thread::spawn(move || ctl_at(&s1, &["approve", &i1]).status.code());
        let r = std::thread::spawn(move || {
            ctl_at(&s2, &["reject", &i2, "--reason", "race"])
                .status
                .code()
        });
        let (a, r) = (a.join().unwrap(), r.join().unwrap());
        assert_eq!(
            [a, r].iter().filter(|c| **c == Some(0)).count(),
            1,
            "approve {a:?}, reject {r:?}"
        );
        assert_eq!([a, r].iter().filter(|c| **c == Some(1)).count(), 1);
        let t = d.task(&id);
        let expected = if a == Some(0) { "done" } else { "failed" };
        assert_eq!(t["state"], expected);
        assert_eq!(
            t["trajectory"].as_array().unwrap().len(),
            5,
            "exactly one final transition recorded"
        );
    }
}

#[test]
fn second_daemon_on_a_live_socket_refuses_and_a_stale_socket_is_replaced() {
    let mut d = TestDaemon::start();
    let out = std::process::Command::new(bin("orchestratord"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(d.dir.path().join("other-state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.kill9();
    assert!(
        d.socket.exists(),
        "a killed daemon leaves its socket behind"
    );
    d.start_again();
    assert!(d.ctl(&["status"]).status.success());
}

/// A daemon starting takes over what its state directory holds (specialists left running, their
/// tasks): a second one on a directory in use refuses before it opens the store, and the first
/// goes on as before. The lock goes with the process, so a killed daemon leaves none behind.
#[test]
fn second_daemon_on_a_state_directory_in_use_refuses_and_leaves_the_first_alone() {
    let mut d = TestDaemon::start();
    let id = d.submit(CODE_GOAL);
    d.wait_state(&id, "awaiting_approval", Duration::from_secs(20));
    let before = d.task(&id);
    let other_socket = d.dir.path().join("other.sock");
    let out = std::process::Command::new(bin("orchestratord"))
        .arg("--socket")
        .arg(&other_socket)
        .arg("--state-dir")
        .arg(&d.state_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is using the state directory"), "{err}");
    assert!(err.contains(&format!("(pid {})", d.pid())), "{err}");
    assert!(!other_socket.exists(), "the refused daemon listened");
    assert_eq!(d.task(&id), before);
    assert!(d.ctl(&["status"]).status.success());

    d.kill9();
    d.start_again();
    assert_eq!(d.state_of(&id), "awaiting_approval");
}

/// A socket that answers with something else than the daemon's frames (here an HTTP server's
/// reply) is a protocol mismatch: exit 4 and a message that says so.
#[test]
fn a_socket_that_is_not_the_daemons_is_a_protocol_mismatch() {
    use std::io::{Read, Write};
    let dir = workdir();
    let path = dir.path().join("other.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut hello = [0u8; 64];
        let _ = conn.read(&mut hello);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    });
    let out = ctl_at(&path, &["status"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not answer in orchestratord's protocol"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn socket_directory_and_socket_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let d = TestDaemon::start();
    let dir_mode = std::fs::metadata(d.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o750);
    let sock_mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(sock_mode, 0o660);
}
