//! Bad input table: malformed frames, messages and arguments over the socket and the CLI. Each one
//! gets its stable error code, the daemon stays up, and no stored data changes.

use orchestrator_proto::frame::encode;
use orchestrator_proto::message::{ClientMessage, Hello, Request, SubmitRequest};
use orchestrator_proto::{ErrorCode, ServerMessage};
use orchestrator_tests::*;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const APPROVAL_GOAL: &str = "please debug this function and fix the off-by-one";
const DONE_GOAL: &str = "draft an email reply to the procurement team";
/// A well-formed ULID that no task has.
const UNKNOWN_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// Every row of every table, as text: what "no stored data changed" is checked against.
fn snapshot(state_dir: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        state_dir.join("orchestrator.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut out = Vec::new();
    for table in ["tasks", "events", "gate_runs", "overrides", "meta"] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let cols: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                Ok(format!("{table}: {}", cols.join(" | ")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// A postcard string: varint length, then the bytes.
fn pstr(bytes: &[u8]) -> Vec<u8> {
    let mut out = varint(bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// `ClientMessage::Request(Request::Submit(...))` by hand, field by field, so that single fields can
/// be made wrong.
fn submit_bytes(goal: &[u8], caps: &[u8], workspace: &[u8], ttl: &[u8], wait: u8) -> Vec<u8> {
    let mut p = vec![0x01, 0x01];
    p.extend(pstr(goal));
    p.extend_from_slice(caps);
    p.extend_from_slice(workspace);
    p.extend_from_slice(ttl);
    p.push(wait);
    p
}

fn request_bytes(r: Request) -> Vec<u8> {
    encode(&ClientMessage::Request(r)).unwrap()
}

fn submit(goal: &str, caps: &[&str], workspace: Option<&str>, ttl: Option<u64>) -> Request {
    Request::Submit(SubmitRequest {
        goal: goal.into(),
        required_capabilities: caps.iter().map(|c| c.to_string()).collect(),
        workspace_dir: workspace.map(str::to_string),
        ttl_secs: ttl,
        wait: false,
    })
}

struct SocketCase {
    name: &'static str,
    /// Send a hello first.
    hello: bool,
    bytes: Vec<u8>,
    /// Half-close the connection after sending, as a client that gave up mid-frame would.
    shutdown_write: bool,
    code: ErrorCode,
    /// Whether the daemon ends the connection after answering (protocol errors) or keeps serving it
    /// (a request that was understood and refused).
    closes: bool,
}

fn case(name: &'static str, bytes: Vec<u8>, code: ErrorCode, closes: bool) -> SocketCase {
    SocketCase {
        name,
        hello: true,
        bytes,
        shutdown_write: false,
        code,
        closes,
    }
}

fn socket_cases(awaiting: &str, done: &str) -> Vec<SocketCase> {
    use ErrorCode::*;
    let long_goal = "g".repeat(8 * 1024 + 1);
    let many_caps: Vec<String> = (0..33).map(|i| format!("cap{i}")).collect();
    let many_caps: Vec<&str> = many_caps.iter().map(String::as_str).collect();
    let long_cap = "c".repeat(65);
    let oversized = request_bytes(submit(&"x".repeat(2 * 1024 * 1024), &[], None, None));
    let mut cases = vec![
        // Sizes and framing.
        case(
            "length prefix 0xFFFFFFFF",
            vec![0xff; 4],
            FrameTooLarge,
            true,
        ),
        case(
            "length prefix one over the 1 MiB limit",
            (1024u32 * 1024 + 1).to_be_bytes().to_vec(),
            FrameTooLarge,
            true,
        ),
        case("2 MiB submit", frame(&oversized), FrameTooLarge, true),
        case("empty frame", frame(&[]), MalformedRequest, true),
        case(
            "random bytes",
            frame(&[0xde, 0xad, 0xbe, 0xef, 0x13, 0x37]),
            MalformedRequest,
            true,
        ),
        SocketCase {
            shutdown_write: true,
            ..case(
                "truncated frame (100 announced, 7 sent)",
                vec![0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7],
                MalformedRequest,
                true,
            )
        },
        SocketCase {
            shutdown_write: true,
            ..case(
                "truncated length prefix",
                vec![0, 0],
                MalformedRequest,
                true,
            )
        },
        // Unknown variants and wrong types.
        case(
            "unknown message variant",
            frame(&[0x02, 0x00]),
            MalformedRequest,
            true,
        ),
        case(
            "unknown request variant (one past the last)",
            // Request has 24 variants (the last, Nodes, is 0x17).
            frame(&[0x01, 0x18]),
            MalformedRequest,
            true,
        ),
        case(
            "request variant index overflowing u32",
            frame(&[0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            MalformedRequest,
            true,
        ),
        case(
            "invalid UTF-8 in the goal",
            frame(&submit_bytes(
                &[0x66, 0xff, 0xfe, 0x6f],
                &[0],
                &[0],
                &[0],
                0,
            )),
            MalformedRequest,
            true,
        ),
        case(
            "string length past the end of the frame",
            frame(&[0x01, 0x01, 0x40, b'a', b'b']),
            MalformedRequest,
            true,
        ),
        case(
            "bool field holding 2",
            frame(&submit_bytes(b"write a reply", &[0], &[0], &[0], 2)),
            MalformedRequest,
            true,
        ),
        case(
            "option tag 2",
            frame(&submit_bytes(b"write a reply", &[0], &[2], &[0], 0)),
            MalformedRequest,
            true,
        ),
        case(
            "capability list claiming 2^32 entries",
            frame(&submit_bytes(
                b"write a reply",
                &[0xff, 0xff, 0xff, 0xff, 0x0f],
                &[0],
                &[0],
                0,
            )),
            MalformedRequest,
            true,
        ),
        case(
            "approve without its id",
            frame(&[0x01, 0x04]),
            MalformedRequest,
            true,
        ),
        // Handshake misuse.
        SocketCase {
            hello: false,
            ..case(
                "request before hello",
                request_bytes(Request::Status).pipe(|b| frame(&b)),
                ProtocolMismatch,
                true,
            )
        },
        SocketCase {
            hello: false,
            ..case(
                "wrong magic",
                frame(
                    &encode(&ClientMessage::Hello(Hello {
                        magic: 0xdead_beef,
                        ..Hello::current("t")
                    }))
                    .unwrap(),
                ),
                ProtocolMismatch,
                true,
            )
        },
        SocketCase {
            hello: false,
            ..case(
                "protocol major 99",
                frame(
                    &encode(&ClientMessage::Hello(Hello {
                        major: 99,
                        ..Hello::current("t")
                    }))
                    .unwrap(),
                ),
                ProtocolMismatch,
                true,
            )
        },
        case(
            "second hello",
            frame(&encode(&ClientMessage::Hello(Hello::current("t"))).unwrap()),
            MalformedRequest,
            true,
        ),
        // Well-formed requests with bad fields: refused, connection kept.
        case(
            "empty goal",
            frame(&request_bytes(submit("", &[], None, None))),
            MissingGoal,
            false,
        ),
        case(
            "whitespace goal",
            frame(&request_bytes(submit(" \t\n ", &[], None, None))),
            MissingGoal,
            false,
        ),
        case(
            "goal one byte over 8 KiB",
            frame(&request_bytes(submit(&long_goal, &[], None, None))),
            GoalTooLong,
            false,
        ),
        case(
            "goal with a NUL",
            frame(&request_bytes(submit("write\0a reply", &[], None, None))),
            InvalidArgument,
            false,
        ),
        case(
            "goal with an escape sequence",
            frame(&request_bytes(submit("write \x1b[31mred", &[], None, None))),
            InvalidArgument,
            false,
        ),
        case(
            "33 capabilities",
            frame(&request_bytes(submit(DONE_GOAL, &many_caps, None, None))),
            InvalidArgument,
            false,
        ),
        case(
            "capability of 65 characters",
            frame(&request_bytes(submit(DONE_GOAL, &[&long_cap], None, None))),
            InvalidArgument,
            false,
        ),
        case(
            "capability with a space",
            frame(&request_bytes(submit(
                DONE_GOAL,
                &["mutate external"],
                None,
                None,
            ))),
            InvalidArgument,
            false,
        ),
        case(
            "empty capability",
            frame(&request_bytes(submit(DONE_GOAL, &[""], None, None))),
            InvalidArgument,
            false,
        ),
        case(
            "relative workspace",
            frame(&request_bytes(submit(
                DONE_GOAL,
                &[],
                Some("src/app"),
                None,
            ))),
            InvalidArgument,
            false,
        ),
        case(
            "ttl of 0 seconds",
            frame(&request_bytes(submit(DONE_GOAL, &[], None, Some(0)))),
            InvalidArgument,
            false,
        ),
        case(
            "ttl of u64::MAX seconds",
            frame(&request_bytes(submit(DONE_GOAL, &[], None, Some(u64::MAX)))),
            InvalidArgument,
            false,
        ),
        case(
            "route with an empty goal",
            frame(&request_bytes(Request::Route {
                goal: String::new(),
                capabilities: vec![],
            })),
            MissingGoal,
            false,
        ),
        case(
            "approve: not an id",
            frame(&request_bytes(Request::Approve {
                id: "not-an-id".into(),
            })),
            InvalidId,
            false,
        ),
        case(
            "approve: 26 characters out of the ULID range",
            frame(&request_bytes(Request::Approve {
                id: "8ZZZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            })),
            InvalidId,
            false,
        ),
        case(
            "show: id with control characters",
            frame(&request_bytes(Request::ShowTask {
                id: "01ARZ3NDEK\x07SV4RRFFQ69G5FA".into(),
            })),
            InvalidId,
            false,
        ),
        case(
            "cancel: a 1,000-character id",
            frame(&request_bytes(Request::Cancel {
                id: "0".repeat(1000),
            })),
            InvalidId,
            false,
        ),
        case(
            "approve: unknown id",
            frame(&request_bytes(Request::Approve {
                id: UNKNOWN_ID.into(),
            })),
            NotFound,
            false,
        ),
        case(
            "reject: empty reason",
            frame(&request_bytes(Request::Reject {
                id: awaiting.into(),
                reason: String::new(),
            })),
            InvalidReason,
            false,
        ),
        case(
            "reject: reason of 1,025 characters",
            frame(&request_bytes(Request::Reject {
                id: awaiting.into(),
                reason: "r".repeat(1025),
            })),
            InvalidReason,
            false,
        ),
        case(
            "approve a task that is done",
            frame(&request_bytes(Request::Approve { id: done.into() })),
            InvalidTransition,
            false,
        ),
        case(
            "cancel a task that is done",
            frame(&request_bytes(Request::Cancel { id: done.into() })),
            InvalidTransition,
            false,
        ),
        case(
            "tasks list with limit 0",
            frame(&request_bytes(Request::ListTasks(
                orchestrator_proto::message::ListQuery {
                    state: None,
                    kind: None,
                    limit: 0,
                    include_harness: true,
                },
            ))),
            InvalidArgument,
            false,
        ),
        case(
            "shadow-summary window of 0 hours",
            frame(&request_bytes(Request::ShadowSummary { window_hours: 0 })),
            InvalidArgument,
            false,
        ),
        case(
            "synthetic: unknown fixture",
            frame(&request_bytes(Request::Synthetic {
                label: Some("no-such-fixture".into()),
            })),
            UnknownFixture,
            false,
        ),
        case(
            "gate override with a blank reason",
            frame(&request_bytes(Request::GateOverride {
                mode: orchestrator_proto::task::TaskKind::Shadow,
                reason: "   ".into(),
            })),
            InvalidReason,
            false,
        ),
    ];
    // A goal of exactly the limit in multi-byte characters is fine; one more byte is not.
    let accented = "é".repeat(4096) + "x";
    cases.push(case(
        "goal of 8,193 bytes in 4,097 characters",
        frame(&request_bytes(submit(&accented, &[], None, None))),
        GoalTooLong,
        false,
    ));
    cases
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

fn run_socket_case(d: &TestDaemon, c: &SocketCase) {
    let mut r = Raw::connect(&d.socket).unwrap();
    if c.hello {
        assert!(
            matches!(r.hello().unwrap(), ServerMessage::Hello(_)),
            "{}",
            c.name
        );
    }
    // The daemon may stop reading once it has seen enough to refuse: ignore a broken pipe here.
    let _ = r.stream.write_all(&c.bytes);
    if c.shutdown_write {
        r.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    match r.recv() {
        Ok(ServerMessage::Err(e)) => assert_eq!(e.code, c.code, "{}: {e:?}", c.name),
        other => panic!("{}: expected {}, got {other:?}", c.name, c.code),
    }
    if c.closes {
        assert!(r.closed(), "{}: the connection stays open", c.name);
    } else {
        assert!(
            matches!(r.request(Request::Status), Ok(ServerMessage::Ok(_))),
            "{}: the connection is no longer served",
            c.name
        );
    }
}

fn prepare() -> (TestDaemon, String, String) {
    let d = TestDaemon::start();
    let awaiting = d.submit(APPROVAL_GOAL);
    let done = d.submit(DONE_GOAL);
    assert_eq!(d.state_of(&awaiting), "awaiting_approval");
    assert_eq!(d.state_of(&done), "done");
    (d, awaiting, done)
}

fn assert_alive(d: &TestDaemon) {
    let out = d.ctl(&["status"]);
    assert!(out.status.success(), "the daemon is down: {}", stderr(&out));
}

#[test]
fn malformed_socket_input_gets_its_code_and_changes_nothing() {
    let (d, awaiting, done) = prepare();
    let before = snapshot(&d.state_dir);
    let cases = socket_cases(&awaiting, &done);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for c in &cases {
        run_socket_case(&d, c);
    }
    assert_alive(&d);
    assert_eq!(snapshot(&d.state_dir), before, "stored data changed");
}

#[test]
fn many_connections_sending_garbage_at_once() {
    let (d, _, _) = prepare();
    let before = snapshot(&d.state_dir);
    // Idle connections that announce a frame and never finish it.
    let stalled: Vec<Raw> = (0..50)
        .map(|_| {
            let mut r = Raw::connect(&d.socket).unwrap();
            r.write_raw(&[0, 0, 0, 200, 1, 2, 3]).unwrap();
            r
        })
        .collect();
    let handles: Vec<_> = (0..64u8)
        .map(|i| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let mut r = Raw::connect(&socket).unwrap();
                assert!(matches!(r.hello().unwrap(), ServerMessage::Hello(_)));
                r.write_raw(&frame(&[0x01, 0x20 + i % 64, 0xff, 0xff]))
                    .unwrap();
                match r.recv() {
                    Ok(ServerMessage::Err(e)) => assert_eq!(e.code, ErrorCode::MalformedRequest),
                    other => panic!("expected malformed_request, got {other:?}"),
                }
                assert!(r.closed());
            })
        })
        .collect();
    // A well-behaved client is served throughout.
    let mut good = Raw::connect(&d.socket).unwrap();
    good.hello().unwrap();
    for _ in 0..100 {
        assert!(matches!(
            good.request(Request::Status),
            Ok(ServerMessage::Ok(_))
        ));
    }
    for h in handles {
        h.join().unwrap();
    }
    drop(stalled);
    assert_alive(&d);
    assert_eq!(snapshot(&d.state_dir), before, "stored data changed");
}

struct CliCase {
    name: &'static str,
    args: Vec<std::ffi::OsString>,
    exit: i32,
    /// The stable code printed on stderr (`error: CODE: …`), for errors the daemon gave.
    code: Option<&'static str>,
}

fn cli(name: &'static str, args: &[&str], exit: i32, code: Option<&'static str>) -> CliCase {
    CliCase {
        name,
        args: args.iter().map(Into::into).collect(),
        exit,
        code,
    }
}

#[test]
fn malformed_cli_input_gets_its_exit_code_and_changes_nothing() {
    let (d, awaiting, done) = prepare();
    let before = snapshot(&d.state_dir);
    let long_goal = "x".repeat(8 * 1024 + 1);
    let long_reason = "r".repeat(1025);
    let invalid_utf8 = std::ffi::OsStr::from_bytes(&[b'f', 0xff, 0xfe, b'x']).to_os_string();
    let mut cases = vec![
        cli("empty goal", &["submit", ""], 1, Some("missing_goal")),
        cli("blank goal", &["submit", "   "], 1, Some("missing_goal")),
        cli(
            "overlong goal",
            &["submit", &long_goal],
            1,
            Some("goal_too_long"),
        ),
        cli(
            "goal with a bell",
            &["submit", "ring \x07 the bell"],
            1,
            Some("invalid_argument"),
        ),
        cli(
            "capability with a slash",
            &["submit", DONE_GOAL, "--capability", "a/b"],
            1,
            Some("invalid_argument"),
        ),
        cli(
            "relative workspace",
            &["submit", DONE_GOAL, "--workspace", "rel/dir"],
            1,
            Some("invalid_argument"),
        ),
        cli(
            "unparsable ttl",
            &["submit", DONE_GOAL, "--ttl", "soon"],
            2,
            None,
        ),
        cli("zero ttl", &["submit", DONE_GOAL, "--ttl", "0s"], 2, None),
        cli(
            "approve: not an id",
            &["approve", "not-an-id"],
            1,
            Some("invalid_id"),
        ),
        cli(
            "approve: unknown id",
            &["approve", UNKNOWN_ID],
            1,
            Some("not_found"),
        ),
        cli(
            "approve: done task",
            &["approve", &done],
            1,
            Some("invalid_transition"),
        ),
        cli(
            "reject: empty reason",
            &["reject", &awaiting, "--reason", ""],
            1,
            Some("invalid_reason"),
        ),
        cli(
            "reject: overlong reason",
            &["reject", &awaiting, "--reason", &long_reason],
            1,
            Some("invalid_reason"),
        ),
        cli(
            "reject: reason with an escape sequence",
            &["reject", &awaiting, "--reason", "looks \x1b[2J fine"],
            1,
            Some("invalid_reason"),
        ),
        cli(
            "tasks list: goal filter with a control character",
            &["tasks", "list", "--goal", "fix\x01"],
            1,
            Some("invalid_argument"),
        ),
        cli(
            "tasks list: agent filter with a control character",
            &["tasks", "list", "--agent", "coder\x7f"],
            1,
            Some("invalid_argument"),
        ),
        cli("reject without --reason", &["reject", &awaiting], 2, None),
        cli(
            "cancel: lower-case garbage id",
            &["cancel", "zzzz"],
            1,
            Some("invalid_id"),
        ),
        cli(
            "tasks list: unknown state",
            &["tasks", "list", "--state", "bogus"],
            2,
            None,
        ),
        cli(
            "tasks list: unknown kind",
            &["tasks", "list", "--kind", "bogus"],
            2,
            None,
        ),
        cli(
            "tasks list: limit 0",
            &["tasks", "list", "--limit", "0"],
            1,
            Some("invalid_argument"),
        ),
        cli(
            "tasks list: negative limit",
            &["tasks", "list", "--limit", "-1"],
            2,
            None,
        ),
        cli(
            "shadow-summary: window 0",
            &["shadow-summary", "--window", "0"],
            1,
            Some("invalid_argument"),
        ),
        cli("unknown verb", &["frobnicate"], 2, None),
        cli(
            "gate override: unknown mode",
            &["gate", "override", "sideways", "--reason", "x"],
            2,
            None,
        ),
        cli(
            "synthetic: unknown fixture",
            &["synthetic", "no-such-fixture"],
            1,
            Some("unknown_fixture"),
        ),
    ];
    cases.push(CliCase {
        name: "goal that is not UTF-8",
        args: vec!["submit".into(), invalid_utf8],
        exit: 2,
        code: None,
    });
    assert!(cases.len() >= 20);
    for c in &cases {
        let out = std::process::Command::new(bin("orchctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(&c.args)
            .env_remove("ORCHCTL_SOCKET")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(c.exit),
            "{}: {}",
            c.name,
            stderr(&out)
        );
        if let Some(code) = c.code {
            assert!(
                stderr(&out).contains(&format!("error: {code}:")),
                "{}: expected {code}: {}",
                c.name,
                stderr(&out)
            );
        }
    }
    assert_alive(&d);
    assert_eq!(snapshot(&d.state_dir), before, "stored data changed");
}
