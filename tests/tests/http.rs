//! Issue: HTTP API — every route, status and error code with a real HTTP client against the running
//! daemon; the bearer token from `orchctl init`, rotated without a restart; and the control socket
//! unchanged beside it.

use orchestrator_tests::*;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const HTTP_CONFIG: &str = "[http]\nlisten = \"127.0.0.1:0\"\n";
const CODE_GOAL: &str = "please debug this function and fix the off-by-one";
const WRITING_GOAL: &str = "draft an email reply to the procurement team";
/// A well-formed task id that no task has.
const UNKNOWN_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// A daemon with the HTTP API on an ephemeral loopback port, and a client for it.
struct Api {
    d: TestDaemon,
    base: String,
    agent: ureq::Agent,
}

struct Reply {
    status: u16,
    body: Value,
    www_authenticate: Option<String>,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// Start with HTTP on; `init` first when `initialised`.
    fn start(initialised: bool) -> Api {
        let d = TestDaemon::with_config(HTTP_CONFIG);
        let (code, status) = d.ctl_json(&["status"]);
        assert_eq!(code, 0);
        let listen = status["httpListen"]
            .as_str()
            .unwrap_or_else(|| panic!("status reports no httpListen: {status}"))
            .to_string();
        assert!(
            listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
            "the bound address, not the configured one: {listen}"
        );
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let api = Api {
            d,
            base: format!("http://{listen}"),
            agent,
        };
        if initialised {
            api.init();
        }
        api
    }

    fn init(&self) {
        let config = self.d.dir.path().join("init.toml");
        let out = self.d.ctl(&[
            "init",
            "--state-dir",
            self.d.state_dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "init: {}", stderr(&out));
    }

    fn rotate(&self) {
        let out = self.d.ctl(&[
            "rotate-token",
            "--state-dir",
            self.d.state_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "rotate-token: {}", stderr(&out));
    }

    fn token_path(&self) -> std::path::PathBuf {
        self.d.state_dir.join("token")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.token_path())
            .unwrap()
            .trim()
            .to_string()
    }

    /// `http:` and the first 8 hex digits of the token's SHA-256, computed by coreutils.
    fn actor(&self) -> String {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.token().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        format!("http:{}", &String::from_utf8_lossy(&out.stdout)[..8])
    }

    /// One request. `token`: `Some` sends `Authorization: Bearer <token>`. `body`: content type
    /// and text.
    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        macro_rules! with_auth {
            ($req:expr) => {{
                let r = $req;
                match &auth {
                    Some(a) => r.header("Authorization", a),
                    None => r,
                }
            }};
        }
        macro_rules! with_body {
            ($req:expr) => {{
                let r = with_auth!($req);
                match body {
                    Some((ct, text)) => r.content_type(ct).send(text),
                    None => r.send_empty(),
                }
            }};
        }
        let result = match method {
            "GET" => with_auth!(self.agent.get(&url)).call(),
            "DELETE" => with_auth!(self.agent.delete(&url)).call(),
            "POST" => with_body!(self.agent.post(&url)),
            "PUT" => with_body!(self.agent.put(&url)),
            "PATCH" => with_body!(self.agent.patch(&url)),
            other => panic!("no such method in this test: {other}"),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let www_authenticate = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.body_mut().read_to_string().unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} → {status}: not JSON ({e}): {text:?}"));
        Reply {
            status,
            body,
            www_authenticate,
        }
    }

    /// GET with the current token.
    fn get(&self, path: &str) -> Reply {
        self.send("GET", path, Some(&self.token()), None)
    }

    /// POST a JSON value with the current token.
    fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(
            "POST",
            path,
            Some(&self.token()),
            Some(("application/json", &body.to_string())),
        )
    }

    fn submit(&self, goal: &str) -> Value {
        let r = self.post("/orchestrator/tasks", &json!({ "goal": goal }));
        assert_eq!(r.status, 201, "{}", r.body);
        r.body
    }

    fn transition(&self, id: &str, body: &Value) -> Reply {
        self.post(&format!("/orchestrator/tasks/{id}/transition"), body)
    }
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.code()),
        (status, code),
        "expected {status} {code}, got {}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error carries a message: {}",
        r.body
    );
}

#[test]
fn the_listener_is_off_unless_configured() {
    let d = TestDaemon::start();
    let (code, status) = d.ctl_json(&["status"]);
    assert_eq!(code, 0);
    assert_eq!(status["httpListen"], Value::Null, "{status}");
    assert!(!d.log_text().contains("http: serving"), "{}", d.log_text());
}

#[test]
fn health_needs_no_token_and_says_whether_credentials_exist() {
    let api = Api::start(false);
    let r = api.send("GET", "/orchestrator/health", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"ok": true, "mode": "synthetic", "version": env!("CARGO_PKG_VERSION"), "hasCredentials": false})
    );

    // No token file yet: the API cannot serve, whatever the client sends.
    let r = api.send("GET", "/orchestrator/tasks", Some("anything"), None);
    assert_error(&r, 503, "not_initialized");
    let r = api.send("GET", "/orchestrator/tasks", None, None);
    assert_error(&r, 503, "not_initialized");

    api.init();
    let r = api.send("GET", "/orchestrator/health", None, None);
    assert_eq!(r.body["hasCredentials"], true, "{}", r.body);
    assert_eq!(api.get("/orchestrator/tasks").status, 200);
}

#[test]
fn a_token_file_others_can_read_turns_the_api_off_and_is_logged_once() {
    let api = Api::start(true);
    let token = api.token();
    assert_eq!(api.get("/orchestrator/tasks").status, 200);

    std::fs::set_permissions(api.token_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    for _ in 0..3 {
        let r = api.send("GET", "/orchestrator/tasks", Some(&token), None);
        assert_error(&r, 503, "token_insecure");
    }
    let r = api.post("/orchestrator/tasks", &json!({"goal": WRITING_GOAL}));
    assert_error(&r, 503, "token_insecure");
    let r = api.send("GET", "/orchestrator/health", None, None);
    assert_eq!(r.body["hasCredentials"], false, "{}", r.body);
    let log = wait_for("the refusal in the log", Duration::from_secs(5), || {
        let log = api.d.log_text();
        log.contains("0644").then_some(log)
    });
    let lines = log
        .lines()
        .filter(|l| l.contains("refusing requests"))
        .count();
    assert_eq!(lines, 1, "logged once, not per request:\n{log}");
    // `status` names the problem too.
    let (_, status) = api.d.ctl_json(&["status"]);
    assert!(
        status["tokenProblem"]
            .as_str()
            .is_some_and(|p| p.contains("0644")),
        "{status}"
    );

    std::fs::set_permissions(api.token_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        api.send("GET", "/orchestrator/tasks", Some(&token), None)
            .status,
        200
    );
}

#[test]
fn a_missing_or_wrong_bearer_token_is_unauthorized() {
    let api = Api::start(true);
    let token = api.token();
    let cases: [(Option<&str>, &str); 3] = [
        (None, "no header"),
        (Some("not-the-token"), "wrong token"),
        (Some(&token[..token.len() - 1]), "a prefix of the token"),
    ];
    for (sent, what) in cases {
        let r = api.send("GET", "/orchestrator/tasks", sent, None);
        assert_error(&r, 401, "unauthorized");
        assert!(
            r.www_authenticate
                .as_deref()
                .is_some_and(|h| h.starts_with("Bearer")),
            "{what}: {:?}",
            r.www_authenticate
        );
    }
    // Another scheme carrying the right token is still not a bearer token.
    let url = format!("{}/orchestrator/tasks", api.base);
    let mut resp = api
        .agent
        .get(&url)
        .header("Authorization", format!("Basic {token}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // Every protected route asks for it, the mutating ones too, and nothing is written.
    for (method, path) in [
        ("GET", "/orchestrator/routing/preview?goal=x".to_string()),
        ("GET", format!("/orchestrator/tasks/{UNKNOWN_ID}")),
        ("POST", "/orchestrator/tasks".to_string()),
        (
            "POST",
            format!("/orchestrator/tasks/{UNKNOWN_ID}/transition"),
        ),
    ] {
        let body = json!({"goal": WRITING_GOAL, "action": "approve"}).to_string();
        let r = api.send(
            method,
            &path,
            Some("wrong"),
            Some(("application/json", &body)),
        );
        assert_error(&r, 401, "unauthorized");
    }
    let r = api.get("/orchestrator/tasks");
    assert_eq!(r.body["tasks"], json!([]), "{}", r.body);
}

#[test]
fn a_rotated_token_takes_effect_without_a_restart() {
    let api = Api::start(true);
    let pid = api.d.pid();
    let old = api.token();
    let old_actor = api.actor();
    let first = api.submit(CODE_GOAL);
    assert_eq!(first["submittedBy"], old_actor.as_str());

    api.rotate();
    let new = api.token();
    assert_ne!(old, new);
    let r = api.send("GET", "/orchestrator/tasks", Some(&old), None);
    assert_error(&r, 401, "unauthorized");
    let r = api.send("GET", "/orchestrator/tasks", Some(&new), None);
    assert_eq!(r.status, 200, "{}", r.body);
    // The new token acts under its own id.
    let second = api.submit(CODE_GOAL);
    assert_eq!(second["submittedBy"], api.actor().as_str());
    assert_ne!(api.actor(), old_actor);
    assert_eq!(api.d.pid(), pid, "no restart");
    let (code, _) = api.d.ctl_json(&["status"]);
    assert_eq!(code, 0, "the same daemon still answers on its socket");
}

/// Without `--state-dir`, `rotate-token` rotates the token of the daemon its socket names (the
/// token in that daemon's state directory), not the default one; a named socket where nothing
/// answers is refused and nothing is written.
#[test]
fn rotate_token_without_a_state_dir_rotates_the_token_of_the_daemon_on_the_socket() {
    let api = Api::start(true);
    let old = api.token();
    let out = api.d.ctl(&["rotate-token"]);
    assert!(out.status.success(), "rotate-token: {}", stderr(&out));
    assert!(
        stdout(&out).contains(api.token_path().to_str().unwrap()),
        "{}",
        stdout(&out)
    );
    let new = api.token();
    assert_ne!(old, new);
    let r = api.send("GET", "/orchestrator/tasks", Some(&new), None);
    assert_eq!(r.status, 200, "{}", r.body);

    let nowhere = api.d.dir.path().join("nobody-here.sock");
    let out = ctl_at(&nowhere, &["rotate-token"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("give its --state-dir"),
        "{}",
        stderr(&out)
    );
    assert_eq!(api.token(), new);
}

#[test]
fn routing_preview_gives_the_decision_orchctl_route_gives() {
    let api = Api::start(true);
    let r = api.get("/orchestrator/routing/preview?goal=please%20debug%20this%20function");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["assignedAgentId"], "coder");
    assert_eq!(r.body["matchedRuleId"], "code-tasks");
    assert_eq!(r.body["requiresApproval"], true);
    let (code, cli) = api.d.ctl_json(&["route", "please debug this function"]);
    assert_eq!(code, 0);
    assert_eq!(r.body, cli);

    let r =
        api.get("/orchestrator/routing/preview?goal=xyzzy%20nothing&capabilities=research,%20ops");
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, cli) = api.d.ctl_json(&[
        "route",
        "xyzzy nothing",
        "--capability",
        "research",
        "--capability",
        "ops",
    ]);
    assert_eq!(r.body, cli);
    assert_eq!(r.body["fallbackUsed"], true);

    let r = api.get("/orchestrator/routing/preview");
    assert_error(&r, 400, "missing_goal");
    let r = api.get("/orchestrator/routing/preview?goal=%20%20");
    assert_error(&r, 400, "missing_goal");
    let long = "a".repeat(8 * 1024 + 1);
    let r = api.get(&format!("/orchestrator/routing/preview?goal={long}"));
    assert_error(&r, 400, "goal_too_long");
    let r = api.get("/orchestrator/routing/preview?goal=x&capabilities=not%20valid");
    assert_error(&r, 400, "invalid_argument");
    // A preview writes nothing.
    assert_eq!(api.get("/orchestrator/tasks").body["tasks"], json!([]));
}

#[test]
fn submit_stores_a_task_of_the_daemons_kind_under_the_tokens_identity() {
    let api = Api::start(true);
    let r = api.post(
        "/orchestrator/tasks",
        &json!({
            "goal": CODE_GOAL,
            "workspaceDir": "/srv/work",
            "requiredCapabilities": ["code"],
            "kind": "live",
            "submittedBy": "mallory",
            "somethingElse": {"ignored": true},
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let t = &r.body;
    assert_eq!(t["kind"], "synthetic", "the mode, never the client's kind");
    assert_eq!(t["submittedBy"], api.actor().as_str());
    assert_eq!(t["schemaVersion"], 1);
    assert_eq!(t["goal"], CODE_GOAL);
    assert_eq!(t["workspaceDir"], "/srv/work");
    assert_eq!(t["requiredCapabilities"], json!(["code"]));
    assert_eq!(t["state"], "awaiting_approval");
    assert_eq!(t["assignedAgentId"], "coder");
    let id = t["id"].as_str().unwrap().to_string();

    // The same task, with its trajectory, over HTTP and over the socket.
    let r = api.get(&format!("/orchestrator/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["id"], id.as_str());
    let trajectory = r.body["trajectory"].as_array().unwrap();
    assert_eq!(trajectory.len(), 4, "{}", r.body);
    assert_eq!(trajectory[0]["actor"], api.actor().as_str());
    assert_eq!(trajectory[0]["to"], "queued");
    assert_eq!(r.body, api.d.task(&id));

    // A client cannot create a task of another kind: the kind follows the mode.
    let live = api.get("/orchestrator/tasks?kind=live");
    assert_eq!(live.body["tasks"], json!([]), "{}", live.body);
}

#[test]
fn submit_validation_errors() {
    let api = Api::start(true);
    let path = "/orchestrator/tasks";
    for body in [
        json!({}),
        json!({"goal": null}),
        json!({"goal": ""}),
        json!({"goal": " \t\n "}),
        json!({"goal": 123}),
        json!({"workspaceDir": "/tmp"}),
    ] {
        assert_error(&api.post(path, &body), 400, "missing_goal");
    }
    let long = "a".repeat(8 * 1024 + 1);
    assert_error(
        &api.post(path, &json!({"goal": long})),
        400,
        "goal_too_long",
    );
    let exactly = "a".repeat(8 * 1024);
    assert_eq!(api.post(path, &json!({"goal": exactly})).status, 201);
    assert_error(
        &api.post(
            path,
            &json!({"goal": WRITING_GOAL, "requiredCapabilities": "code"}),
        ),
        400,
        "invalid_argument",
    );
    assert_error(
        &api.post(path, &json!({"goal": WRITING_GOAL, "workspaceDir": 7})),
        400,
        "invalid_argument",
    );
    assert_error(
        &api.post(
            path,
            &json!({"goal": WRITING_GOAL, "workspaceDir": "relative/dir"}),
        ),
        400,
        "invalid_argument",
    );

    // Bodies: size, content type, syntax, shape.
    let token = api.token();
    let huge = json!({"goal": WRITING_GOAL, "padding": "x".repeat(16 * 1024)}).to_string();
    let r = api.send(
        "POST",
        path,
        Some(&token),
        Some(("application/json", &huge)),
    );
    assert_error(&r, 413, "request_too_large");
    let r = api.send(
        "POST",
        path,
        Some(&token),
        Some(("text/plain", WRITING_GOAL)),
    );
    assert_error(&r, 415, "malformed_request");
    let form = format!("goal={WRITING_GOAL}");
    let r = api.send(
        "POST",
        path,
        Some(&token),
        Some(("application/x-www-form-urlencoded", &form)),
    );
    assert_error(&r, 415, "malformed_request");
    let r = api.send("POST", path, Some(&token), None);
    assert_error(&r, 415, "malformed_request");
    for bad in ["{\"goal\": ", "", "[1, 2]", "\"a goal\"", "null"] {
        let r = api.send("POST", path, Some(&token), Some(("application/json", bad)));
        assert_error(&r, 400, "malformed_request");
    }
    // Nothing above was stored but the one valid task.
    let r = api.get("/orchestrator/tasks");
    assert_eq!(r.body["tasks"].as_array().unwrap().len(), 1, "{}", r.body);
}

#[test]
fn show_task_errors() {
    let api = Api::start(true);
    let r = api.get(&format!("/orchestrator/tasks/{UNKNOWN_ID}"));
    assert_error(&r, 404, "not_found");
    let r = api.get("/orchestrator/tasks/not-a-task-id");
    assert_error(&r, 400, "invalid_id");
}

#[test]
fn list_tasks_filters_and_defaults() {
    let api = Api::start(true);
    let waiting = api.submit(CODE_GOAL)["id"].as_str().unwrap().to_string();
    let done = api.submit(WRITING_GOAL)["id"].as_str().unwrap().to_string();
    let ids = |r: &Reply| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    // Newest first, the mode's kind by default; empty parameters mean "not given".
    assert_eq!(
        ids(&api.get("/orchestrator/tasks")),
        vec![done.clone(), waiting.clone()]
    );
    assert_eq!(
        ids(&api.get("/orchestrator/tasks?state=&kind=&limit=")),
        vec![done.clone(), waiting.clone()]
    );
    assert_eq!(
        ids(&api.get("/orchestrator/tasks?state=awaiting_approval")),
        vec![waiting.clone()]
    );
    assert_eq!(
        ids(&api.get("/orchestrator/tasks?state=done&kind=synthetic")),
        vec![done.clone()]
    );
    assert!(ids(&api.get("/orchestrator/tasks?kind=shadow")).is_empty());
    assert_eq!(
        ids(&api.get("/orchestrator/tasks?limit=1")),
        vec![done.clone()]
    );
    // The same listing as the socket's.
    let (_, cli) = api.d.ctl_json(&["tasks", "list"]);
    assert_eq!(api.get("/orchestrator/tasks").body["tasks"], cli["tasks"]);

    assert_error(
        &api.get("/orchestrator/tasks?state=bogus"),
        400,
        "invalid_state",
    );
    assert_error(
        &api.get("/orchestrator/tasks?kind=bogus"),
        400,
        "invalid_kind",
    );
    for limit in ["0", "abc", "-1", "10001"] {
        assert_error(
            &api.get(&format!("/orchestrator/tasks?limit={limit}")),
            400,
            "invalid_argument",
        );
    }
}

#[test]
fn transitions_are_recorded_under_the_tokens_identity() {
    let api = Api::start(true);
    let actor = api.actor();

    // approve
    let id = api.submit(CODE_GOAL)["id"].as_str().unwrap().to_string();
    let r = api.transition(
        &id,
        &json!({"action": "approve", "by": "mallory", "actor": "mallory"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "done");
    let t = api.d.task(&id);
    let last = t["trajectory"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "approve");
    assert_eq!(last["actor"], actor.as_str(), "never client-supplied text");
    // A second approve loses: the task is no longer awaiting approval.
    let r = api.transition(&id, &json!({"action": "approve"}));
    assert_error(&r, 409, "invalid_transition");
    assert_eq!(r.body["error"]["from"], "done");
    assert_eq!(r.body["error"]["action"], "approve");

    // reject: the reason must be a non-empty string.
    let id = api.submit(CODE_GOAL)["id"].as_str().unwrap().to_string();
    for body in [
        json!({"action": "reject"}),
        json!({"action": "reject", "reason": null}),
        json!({"action": "reject", "reason": "   "}),
        json!({"action": "reject", "reason": 123}),
        json!({"action": "reject", "reason": ["not", "a", "string"]}),
        json!({"action": "reject", "reason": {"text": "x"}}),
        json!({"action": "reject", "reason": "x".repeat(1025)}),
    ] {
        let r = api.transition(&id, &body);
        assert_error(&r, 400, "invalid_reason");
    }
    assert_eq!(api.d.state_of(&id), "awaiting_approval");
    let r = api.transition(
        &id,
        &json!({"action": "reject", "reason": "touches production", "by": "mallory"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "failed");
    assert_eq!(r.body["error"]["code"], "rejected");
    assert_eq!(r.body["rejection"]["by"], actor.as_str());
    assert_eq!(r.body["rejection"]["reason"], "touches production");

    // cancel, from a non-terminal state; then nothing more.
    let id = api.submit(CODE_GOAL)["id"].as_str().unwrap().to_string();
    let r = api.transition(&id, &json!({"action": "cancel"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "cancelled");
    assert_eq!(r.body["rejection"]["by"], actor.as_str());
    let r = api.transition(&id, &json!({"action": "cancel"}));
    assert_error(&r, 409, "invalid_transition");
    assert_eq!(r.body["error"]["from"], "cancelled");
    assert_eq!(r.body["error"]["action"], "cancel");

    // Unknown or missing actions, unknown and malformed ids.
    let id = api.submit(CODE_GOAL)["id"].as_str().unwrap().to_string();
    for body in [
        json!({"action": "frobnicate"}),
        json!({"action": "APPROVE"}),
        json!({"action": 1}),
        json!({}),
    ] {
        let r = api.transition(&id, &body);
        assert_error(&r, 400, "invalid_argument");
    }
    assert_eq!(api.d.state_of(&id), "awaiting_approval");
    let r = api.transition(UNKNOWN_ID, &json!({"action": "approve"}));
    assert_error(&r, 404, "not_found");
    let r = api.transition("nope", &json!({"action": "approve"}));
    assert_error(&r, 400, "invalid_id");
    let token = api.token();
    let r = api.send(
        "POST",
        &format!("/orchestrator/tasks/{id}/transition"),
        Some(&token),
        Some(("text/plain", "approve")),
    );
    assert_error(&r, 415, "malformed_request");
}

#[test]
fn unknown_routes_and_wrong_methods() {
    let api = Api::start(true);
    let token = api.token();
    let json_body = Some(("application/json", "{}"));
    for (method, path) in [
        ("DELETE", "/orchestrator/tasks".to_string()),
        ("PUT", "/orchestrator/tasks".to_string()),
        ("POST", "/orchestrator/health".to_string()),
        ("POST", "/orchestrator/routing/preview".to_string()),
        ("DELETE", format!("/orchestrator/tasks/{UNKNOWN_ID}")),
        ("PATCH", format!("/orchestrator/tasks/{UNKNOWN_ID}")),
        (
            "GET",
            format!("/orchestrator/tasks/{UNKNOWN_ID}/transition"),
        ),
    ] {
        let r = api.send(method, &path, Some(&token), json_body);
        assert_error(&r, 405, "method_not_allowed");
    }
    for path in [
        "/",
        "/orchestrator",
        "/orchestrator/nope",
        "/orchestrator/tasks/a/b/c",
        "/orchestrator/health/extra",
    ] {
        let r = api.send("GET", path, Some(&token), None);
        assert_error(&r, 404, "not_found");
    }
}

#[test]
fn socket_verbs_behave_as_before_with_http_on() {
    let mut api = Api::start(true);
    // Submit, list, show, route, approve, reject, cancel over the socket.
    let approve = api.d.submit(CODE_GOAL);
    let reject = api.d.submit(CODE_GOAL);
    let cancel = api.d.submit(CODE_GOAL);
    assert_eq!(api.d.state_of(&approve), "awaiting_approval");
    let user = api.d.task(&approve)["submittedBy"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!user.starts_with("http:"), "{user}");
    let (code, list) = api.d.ctl_json(&["tasks", "list"]);
    assert_eq!((code, list["tasks"].as_array().unwrap().len()), (0, 3));
    let (code, route) = api.d.ctl_json(&["route", CODE_GOAL]);
    assert_eq!((code, &route["assignedAgentId"]), (0, &json!("coder")));
    assert!(api.d.ctl(&["approve", &approve]).status.success());
    assert!(api
        .d
        .ctl(&["reject", &reject, "--reason", "no"])
        .status
        .success());
    assert!(api.d.ctl(&["cancel", &cancel]).status.success());
    assert_eq!(api.d.state_of(&approve), "done");
    let rejected = api.d.task(&reject);
    assert_eq!(rejected["state"], "failed");
    assert_eq!(rejected["rejection"]["by"], user.as_str());
    assert_eq!(api.d.state_of(&cancel), "cancelled");
    // Socket errors keep their codes and exit status.
    let (code, err) = api.d.ctl_json(&["approve", &approve]);
    assert_eq!(code, 1);
    assert_eq!(err["error"]["code"], "invalid_transition");

    // Tasks from either front end are the same tasks.
    let r = api.get("/orchestrator/tasks");
    assert_eq!(r.body["tasks"].as_array().unwrap().len(), 3, "{}", r.body);

    // A keep-alive HTTP connection does not hold up an orderly stop.
    assert_eq!(api.get("/orchestrator/tasks").status, 200);
    let status = api.d.terminate();
    assert!(status.success(), "{status}");
    assert!(!api.d.socket.exists());
}

#[test]
fn a_taken_port_fails_the_start_and_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(&config, format!("[http]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    let socket = dir.path().join("run").join("orchestrator.sock");
    let out = Command::new(bin("orchestratord"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot listen for HTTP on 127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    assert!(!socket.exists(), "no socket is left behind");
}
