//! Issue: the web console — sign-in by `orchctl console` link (once) or token, sessions, CSRF,
//! approvals and the race with another decider, read-only users, and the pages a person uses.
//!
//! The first half speaks plain HTTP to the real daemon, so `cargo test --workspace` covers the
//! console's rules on any machine. The second half drives a real headless Chromium over WebDriver;
//! those tests need the Debian packages `chromium` and `chromium-driver` and are run by `.ci/run`
//! (`cargo test -p orchestrator-tests --test console -- --ignored`). They write a screenshot of each
//! page under `target/console-screenshots/`.

use orchestrator_tests::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const HTTP_CONFIG: &str = "[http]\nlisten = \"127.0.0.1:0\"\n";
/// Routed to `coder` by the built-in rules, which needs approval.
const CODE_GOAL: &str = "please debug this function and fix the off-by-one";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'";

struct Reply {
    status: u16,
    location: Option<String>,
    cookies: Vec<String>,
    headers: HashMap<String, String>,
    body: String,
}

/// A cookie-less HTTP client that shows redirects instead of following them.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn reply(r: ureq::http::Response<ureq::Body>) -> Reply {
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cookies = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let headers = r
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = r.into_body().read_to_string().unwrap_or_default();
    Reply {
        status,
        location,
        cookies,
        headers,
        body,
    }
}

/// `orchctl console` against `d`, as JSON.
fn console_link(d: &TestDaemon) -> Value {
    let (code, link) = d.ctl_json(&["console"]);
    assert_eq!(code, 0, "{link}");
    link
}

/// A signed-in browser-less client: the session cookie and the CSRF token of its pages.
struct Signed {
    base: String,
    cookie: String,
    agent: ureq::Agent,
}

impl Signed {
    fn with_link(d: &TestDaemon, url: &str) -> Signed {
        // Read before the session opens: a test of a short session_ttl counts from here.
        let base = d.http_base();
        let agent = agent();
        let r = reply(agent.get(url).call().unwrap());
        assert_eq!(r.status, 303, "{}", r.body);
        let session = r
            .cookies
            .iter()
            .find(|c| c.starts_with("orch_session=") && !c.starts_with("orch_session=;"))
            .unwrap_or_else(|| panic!("no session cookie in {:?}", r.cookies))
            .clone();
        assert!(session.contains("HttpOnly"), "{session}");
        assert!(session.contains("SameSite=Strict"), "{session}");
        let cookie = session.split(';').next().unwrap().to_string();
        Signed {
            base,
            cookie,
            agent,
        }
    }

    fn sign_in(d: &TestDaemon) -> Signed {
        let link = console_link(d);
        Signed::with_link(d, link["url"].as_str().unwrap())
    }

    fn get(&self, path: &str) -> Reply {
        reply(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Cookie", &self.cookie)
                .call()
                .unwrap(),
        )
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        reply(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Cookie", &self.cookie)
                .send_form(form.iter().copied())
                .unwrap(),
        )
    }

    /// Approve `id` as the console's button does, with this session's token.
    fn approve(&self, id: &str) -> Reply {
        self.post(
            &format!("/console/tasks/{id}/approve"),
            &[("csrf", &self.csrf())],
        )
    }

    /// The CSRF token the pages of this session carry.
    fn csrf(&self) -> String {
        let page = self.get("/console/approvals").body;
        let at = page
            .find("name=\"csrf\" value=\"")
            .expect("a page with a form");
        page[at + 19..at + 19 + 32].to_string()
    }
}

fn awaiting_task(d: &TestDaemon) -> String {
    let id = d.submit(CODE_GOAL);
    d.wait_state(&id, "awaiting_approval", Duration::from_secs(20));
    id
}

fn last_event(d: &TestDaemon, id: &str) -> Value {
    d.task(id)["trajectory"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[test]
fn a_login_link_signs_in_once_as_the_socket_user_with_strict_headers() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let link = console_link(&d);
    let url = link["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/console/login?code=", d.http_base())),
        "{url}"
    );
    assert_eq!(link["readOnly"], false);
    let me = link["user"].as_str().unwrap().to_string();

    let s = Signed::with_link(&d, &url);
    let again = reply(agent().get(&url).call().unwrap());
    assert_eq!(again.status, 403, "a second use of the link is refused");
    assert!(again.body.contains("already been used"), "{}", again.body);
    assert!(!again.cookies.iter().any(|c| c.starts_with("orch_session=")));

    let page = s.get("/console/approvals");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&me),
        "the header names the signed-in user"
    );
    assert_eq!(page.headers["content-security-policy"], CSP);
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    assert!(!page.body.contains("<script>"), "no inline script");
    assert!(!page.body.contains("style=\""), "no inline style");
    for path in ["/console/pipeline", "/console/rollout", "/console/agents"] {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.headers["content-security-policy"], CSP, "{path}");
    }
    // A page that does not exist is a page that says so, not the API's JSON.
    let r = s.get("/console/no-such-page");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.headers["content-type"].starts_with("text/html"),
        "{:?}",
        r.headers
    );
    assert!(r.body.contains("No such page"), "{}", r.body);
}

#[test]
fn without_a_session_the_login_page_comes_first_and_then_the_page_asked_for() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let id = awaiting_task(&d);
    let base = d.http_base();
    let a = agent();
    let r = reply(a.get(format!("{base}/console/tasks/{id}")).call().unwrap());
    assert_eq!(r.status, 303);
    let login = r.location.unwrap();
    assert_eq!(login, format!("/console/login?next=/console/tasks/{id}"));
    let page = reply(a.get(format!("{base}{login}")).call().unwrap());
    assert_eq!(page.status, 200);
    assert!(page.body.contains("orchctl console"), "{}", page.body);
    let next = page
        .cookies
        .iter()
        .find(|c| c.starts_with("orch_next="))
        .expect("the destination is remembered")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Opening a fresh login link in the same browser lands on the page that was asked for.
    let link = console_link(&d);
    let r = reply(
        a.get(link["url"].as_str().unwrap())
            .header("Cookie", &next)
            .call()
            .unwrap(),
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        r.location.as_deref(),
        Some(&*format!("/console/tasks/{id}"))
    );
    // Scripts' requests get a status, not a page.
    let events = reply(a.get(format!("{base}/console/events")).call().unwrap());
    assert_eq!(events.status, 401);
}

/// `orchestrator_console_streams` as `orchctl metrics` prints it.
fn console_streams(d: &TestDaemon) -> f64 {
    let out = d.ctl(&["metrics"]);
    let e = orchestrator_tests::prometheus::check(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("{e}"));
    e.value("orchestrator_console_streams", &[])
        .expect("orchestrator_console_streams is exposed")
}

#[test]
fn the_live_stream_opens_with_the_counts_and_is_counted_while_open() {
    use std::io::{BufRead, BufReader};
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let (_a, _b) = (awaiting_task(&d), awaiting_task(&d));
    let s = Signed::sign_in(&d);
    assert_eq!(console_streams(&d), 0.0);
    let r = s
        .agent
        .get(format!("{}/console/events", s.base))
        .header("Cookie", &s.cookie)
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut lines = BufReader::new(r.into_body().into_reader()).lines();
    // The first event, before any commit: the counts as they are now.
    let mut first = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.is_empty() && !first.is_empty() {
            break;
        }
        if !line.is_empty() {
            first.push(line);
        }
    }
    assert_eq!(first[0], "event: counts", "{first:?}");
    let data: Value = serde_json::from_str(first[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(data["awaiting"], 2, "{data}");
    assert_eq!(
        data["counts"]["synthetic"]["awaiting_approval"], 2,
        "{data}"
    );
    assert_eq!(console_streams(&d), 1.0);
    // Closed by the page: the daemon notices at its next write, which a commit causes.
    drop(lines);
    awaiting_task(&d);
    wait_for("the closed stream to end", Duration::from_secs(10), || {
        (console_streams(&d) == 0.0).then_some(())
    });
}

#[test]
fn assets_are_linked_by_their_content_and_kept_until_it_changes() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let base = d.http_base();
    let a = agent();
    let login = reply(a.get(format!("{base}/console/login")).call().unwrap());
    assert_eq!(login.status, 200, "{}", login.body);
    for name in ["console.css", "console.js"] {
        let path = format!("/console/assets/{name}");
        let prefix = format!("{path}?v=");
        let at = login
            .body
            .find(&prefix)
            .unwrap_or_else(|| panic!("the page links {prefix}…: {}", login.body));
        let url: String = login.body[at..].chars().take_while(|c| *c != '"').collect();
        let tag = url[prefix.len()..].to_string();
        assert_eq!(tag.len(), 16, "{url}");

        let tagged = reply(a.get(format!("{base}{url}")).call().unwrap());
        assert_eq!(tagged.status, 200);
        assert!(!tagged.body.is_empty());
        assert_eq!(
            tagged.headers["cache-control"], "public, max-age=31536000, immutable",
            "{url}"
        );
        let etag = tagged.headers["etag"].clone();
        assert_eq!(etag, format!("\"{tag}\""));

        // Without the page's tag, or with another, the browser has to ask again each time.
        for other in [path.clone(), format!("{path}?v=0000000000000000")] {
            let r = reply(a.get(format!("{base}{other}")).call().unwrap());
            assert_eq!(r.status, 200, "{other}");
            assert_eq!(r.headers["cache-control"], "no-cache", "{other}");
            assert_eq!(r.body, tagged.body, "{other}");
        }
        // …and is told when its copy is still the file.
        let same = reply(
            a.get(format!("{base}{path}"))
                .header("If-None-Match", &etag)
                .call()
                .unwrap(),
        );
        assert_eq!(same.status, 304, "{path}");
        assert!(same.body.is_empty());
        assert_eq!(same.headers["etag"], etag);
        let stale = reply(
            a.get(format!("{base}{path}"))
                .header("If-None-Match", "\"0000000000000000\"")
                .call()
                .unwrap(),
        );
        assert_eq!(stale.status, 200, "{path}");
        assert_eq!(stale.body, tagged.body);
    }
}

#[test]
fn an_expired_session_is_asked_to_sign_in_again() {
    let d = TestDaemon::with_config(&format!("{HTTP_CONFIG}session_ttl = \"2s\"\n"));
    let s = Signed::sign_in(&d);
    assert_eq!(s.get("/console/pipeline").status, 200);
    let r = wait_for("the session to expire", Duration::from_secs(10), || {
        let r = s.get("/console/pipeline?state=queued");
        (r.status == 303).then_some(r)
    });
    assert_eq!(
        r.location.as_deref(),
        Some("/console/login?next=/console/pipeline%3Fstate%3Dqueued")
    );
}

#[test]
fn approve_and_reject_are_recorded_with_the_user_and_the_console_channel() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let s = Signed::sign_in(&d);
    let me = console_link(&d)["user"].as_str().unwrap().to_string();
    let csrf = s.csrf();
    let (a, b, c) = (awaiting_task(&d), awaiting_task(&d), awaiting_task(&d));

    let page = s.get("/console/approvals").body;
    for id in [&a, &b, &c] {
        assert!(
            page.contains(&format!("data-id=\"{id}\"")),
            "{id} is listed"
        );
    }
    assert!(
        page.contains("agent coder is in approval_required"),
        "why approval is needed"
    );
    assert!(page.contains("id=\"awaiting-count\">3<"), "header count");

    let r = s.post(
        &format!("/console/tasks/{a}/approve"),
        &[("csrf", &csrf), ("back", "/console/approvals")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.location.as_deref(),
        Some(&*format!("/console/approvals?done=approved&id={a}"))
    );
    let ev = last_event(&d, &a);
    assert_eq!(ev["action"], "approve");
    assert_eq!(ev["actor"], me.as_str());
    assert_eq!(ev["details"]["via"], "console");
    // What live would have needed is recorded for shadow tasks only; a synthetic one says nothing.
    let page = s.get(&format!("/console/tasks/{a}"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("Would need approval"), "{}", page.body);

    // A reject without a reason is refused and changes nothing: not the state, not the trajectory.
    let before = d.task(&b);
    assert_eq!(before["state"], "awaiting_approval");
    for reason in ["  ", ""] {
        let r = s.post(
            &format!("/console/tasks/{b}/reject"),
            &[("csrf", &csrf), ("reason", reason)],
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("A reason is required"), "{}", r.body);
    }
    // A reason that is there but cannot be used says why, not that one is missing.
    let long = "r".repeat(2000);
    let r = s.post(
        &format!("/console/tasks/{b}/reject"),
        &[("csrf", &csrf), ("reason", &long)],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("The reason cannot be used"), "{}", r.body);
    assert!(r.body.contains("the limit is 1024"), "{}", r.body);
    assert_eq!(d.task(&b), before);
    let r = s.post(
        &format!("/console/tasks/{b}/reject"),
        &[("csrf", &csrf), ("reason", "touches billing")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let t = d.task(&b);
    assert_eq!(t["rejection"]["reason"], "touches billing");
    assert_eq!(t["rejection"]["by"], me.as_str());
    assert_eq!(last_event(&d, &b)["details"]["via"], "console");

    // The socket records its own channel.
    let out = d.ctl(&["approve", &c]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last_event(&d, &c)["details"]["via"], "socket");
}

#[test]
fn a_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let s = Signed::sign_in(&d);
    let id = awaiting_task(&d);
    let before = d.task(&id);
    assert_eq!(before["state"], "awaiting_approval");
    for form in [vec![], vec![("csrf", "0123456789abcdef0123456789abcdef")]] {
        for action in ["approve", "reject", "cancel"] {
            let mut form = form.clone();
            form.push(("reason", "forged"));
            let r = s.post(&format!("/console/tasks/{id}/{action}"), &form);
            assert_eq!(r.status, 403, "{action}: {}", r.body);
            assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        }
    }
    // The same session with its token is let through, so the refusals above were the token's.
    assert_eq!(d.task(&id), before);
    let r = s.approve(&id);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(d.state_of(&id), "done");
}

/// What the console cannot read (a form too large or of another type, an address part that is not
/// UTF-8 or not a number, a cursor that is not a task id) is refused with the console's page, the
/// API's status and its stable code, and changes nothing.
#[test]
fn what_the_console_cannot_read_is_refused_with_its_page_and_code() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let s = Signed::sign_in(&d);
    let id = awaiting_task(&d);
    let before = d.task(&id);
    let page = |r: &Reply, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        assert!(
            r.body
                .contains(&format!("<code class=\"error-code\">{code}</code>")),
            "{}",
            r.body
        );
    };
    let raw = |path: &str, content_type: &str, body: &str| {
        reply(
            s.agent
                .post(format!("{}{path}", s.base))
                .header("Cookie", &s.cookie)
                .header("Content-Type", content_type)
                .send(body)
                .unwrap(),
        )
    };
    let form = "application/x-www-form-urlencoded";
    let large = format!("token={}&csrf=x", "a".repeat(20_000));
    page(
        &raw("/console/login", form, &large),
        413,
        "request_too_large",
    );
    page(
        &raw("/console/login", "text/plain", "token=x"),
        415,
        "malformed_request",
    );
    let csrf = format!("csrf={}", s.csrf());
    page(
        &raw(&format!("/console/tasks/{id}/approve"), "text/plain", &csrf),
        415,
        "malformed_request",
    );
    let reason = format!("{csrf}&reason={}", "b".repeat(20_000));
    page(
        &raw(&format!("/console/tasks/{id}/reject"), form, &reason),
        413,
        "request_too_large",
    );
    assert_eq!(d.task(&id), before);

    page(
        &s.get(&format!("/console/tasks/{id}/artefacts/abc")),
        400,
        "malformed_request",
    );
    page(&s.get("/console/tasks/%ff"), 400, "malformed_request");
    page(&s.get("/console/pipeline?before=%00"), 400, "invalid_id");
    page(
        &s.get("/console/pipeline?after=not-a-task"),
        400,
        "invalid_id",
    );
    // The script's row fragment answers with a status only: unreadable, or unknown.
    assert_eq!(s.get("/console/pipeline/row/not-a-task").status, 400);
    assert_eq!(
        s.get("/console/pipeline/row/01J00000000000000000000000")
            .status,
        404
    );

    // With a form the console reads, the same session decides.
    let r = s.approve(&id);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(d.state_of(&id), "done");
}

#[test]
fn relative_times_follow_the_daemons_clock() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let s = Signed::sign_in(&d);
    let out = d.ctl(&["submit", "--ttl", "10h", CODE_GOAL]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    d.wait_state(&id, "awaiting_approval", Duration::from_secs(20));
    let card = |page: &str| {
        let at = page
            .find(&format!("data-id=\"{id}\""))
            .expect("the task's card");
        page[at..].split("</article>").next().unwrap().to_string()
    };
    let before = card(&s.get("/console/approvals").body);
    assert!(before.contains("9 h 59 min left"), "{before}");
    assert!(before.contains("s ago<"), "{before}");

    // Three hours later by the daemon's clock, while the wall clock moved a few seconds.
    d.advance(Duration::from_secs(3 * 3600));
    let after = card(&s.get("/console/approvals").body);
    assert!(after.contains("6 h 59 min left"), "{after}");
    assert!(after.contains("3 h 0 min ago"), "{after}");
    let task = s.get(&format!("/console/tasks/{id}")).body;
    assert!(task.contains("6 h 59 min left"), "{task}");
    assert!(task.contains("3 h 0 min ago"), "{task}");
}

#[test]
fn the_rollout_page_lists_gate_runs_and_says_which_ran_on_the_routing_in_force() {
    let config = format!("mode = \"synthetic\"\n{HTTP_CONFIG}");
    let d = TestDaemon::with_config(&config);
    let s = Signed::sign_in(&d);
    let page = s.get("/console/rollout").body;
    assert!(page.contains("No synthetic gate run yet"), "{page}");
    assert_eq!(d.ctl(&["synthetic-all"]).status.code(), Some(0));
    // A change to the approval list changes the routing fingerprint; the next run is on it.
    d.write_config(&format!(
        "{config}\n[routing]\napproval_required_capabilities = [\"mutate-external\", \"ops\", \"publish\", \"deploy\", \"gpu\"]\n"
    ));
    let out = d.ctl(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.ctl(&["synthetic-all"]).status.code(), Some(0));

    let page = s.get("/console/rollout").body;
    let runs: Vec<&str> = page
        .split("class=\"gate-run\"")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{page}");
    assert!(
        runs[0].contains("data-current=\"true\""),
        "newest first: {}",
        runs[0]
    );
    assert!(runs[1].contains("data-current=\"false\""), "{}", runs[1]);
    assert!(page.contains("on the routing in force"), "{page}");
    assert!(
        page.contains("As of "),
        "the summary says when it was computed"
    );
}

#[test]
fn losing_a_race_says_someone_else_decided_and_shows_the_state_now() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let s = Signed::sign_in(&d);
    let csrf = s.csrf();
    let id = awaiting_task(&d);
    let out = d.ctl(&["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = s.post(
        &format!("/console/tasks/{id}/reject"),
        &[("csrf", &csrf), ("reason", "no")],
    );
    assert_eq!(r.status, 409);
    assert!(r.body.contains("Someone else decided first"), "{}", r.body);
    assert!(
        r.body.contains("data-state=\"done\""),
        "the state now: {}",
        r.body
    );
    assert!(
        r.body.contains("via socket"),
        "who decided, and how: {}",
        r.body
    );
    assert!(!r.body.contains("\"error\""), "no raw JSON");
    assert_eq!(d.state_of(&id), "done");
}

#[test]
fn the_bearer_token_signs_in_as_its_token_id() {
    let d = TestDaemon::with_config(HTTP_CONFIG);
    let config = d.dir.path().join("init.toml");
    let out = d.ctl(&[
        "init",
        "--state-dir",
        d.state_dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = std::fs::read_to_string(d.state_dir.join("token")).unwrap();
    let base = d.http_base();
    let a = agent();
    let page = reply(a.get(format!("{base}/console/login")).call().unwrap());
    let form_cookie = page
        .cookies
        .iter()
        .find(|c| c.starts_with("orch_login="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let form_token = form_cookie.trim_start_matches("orch_login=").to_string();
    let post = |token: &str| {
        reply(
            a.post(format!("{base}/console/login"))
                .header("Cookie", &form_cookie)
                .send_form([("csrf", form_token.as_str()), ("token", token)])
                .unwrap(),
        )
    };
    assert_eq!(post("wrong").status, 401);
    let r = post(token.trim());
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r
        .cookies
        .iter()
        .find(|c| c.starts_with("orch_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = reply(
        a.get(format!("{base}/console/approvals"))
            .header("Cookie", &cookie)
            .call()
            .unwrap(),
    );
    assert!(page.body.contains("http:"), "signed in as http:<token id>");
    // Without the login form's token, the token form is refused.
    let r = reply(
        a.post(format!("{base}/console/login"))
            .send_form([("token", token.trim())])
            .unwrap(),
    );
    assert_eq!(r.status, 403);
}

/// Run `orchctl console` as uid 65534 (group root, so it can reach the socket). Switching users
/// needs root: the test fails, rather than passing unchecked, when it is not run as root.
fn read_only_link(d: &TestDaemon) -> Option<Value> {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the read-only user check switches to uid 65534: run the tests as root (as .ci/run does)"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=0", "--clear-groups"])
        .arg(bin("orchctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["--format", "json", "console"])
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "{}", stderr(&out));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn a_read_only_user_sees_no_buttons_and_cannot_decide() {
    let d = TestDaemon::with_config(&format!(
        "{HTTP_CONFIG}[socket]\nread_only_uids = [65534]\n"
    ));
    let id = awaiting_task(&d);
    let Some(link) = read_only_link(&d) else {
        return;
    };
    assert_eq!(link["readOnly"], true, "{link}");
    let s = Signed::with_link(&d, link["url"].as_str().unwrap());
    let page = s.get("/console/approvals").body;
    assert!(page.contains(&format!("data-id=\"{id}\"")));
    assert!(page.contains("read-only"));
    assert!(!page.contains("/approve\""), "no approve form: {page}");
    assert!(!page.contains("/reject\""), "no reject form");
    let task = s.get(&format!("/console/tasks/{id}")).body;
    assert!(!task.contains("/cancel\""), "no cancel form");
    let csrf = s.csrf();
    let r = s.post(&format!("/console/tasks/{id}/approve"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Read-only"), "{}", r.body);
    assert_eq!(d.state_of(&id), "awaiting_approval");
}

#[test]
fn http_is_on_by_default_and_a_taken_default_port_only_turns_it_off() {
    // In a network namespace of its own the default port collides with nothing else on the
    // machine. Where namespaces cannot be made, the machine's loopback is used: the first daemon
    // takes 127.0.0.1:7419 if it is free, and the second meets it taken either way.
    let namespaced = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !namespaced {
        eprintln!("no network namespace here (unshare -n): using this machine's 127.0.0.1:7419");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(&config, "").unwrap();
    let start = |name: &str, ns: Option<u32>| {
        let socket = dir.path().join(format!("{name}.sock"));
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = match (namespaced, ns) {
            (false, _) => std::process::Command::new(bin("orchestratord")),
            (true, None) => {
                let mut c = std::process::Command::new("unshare");
                c.args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""]);
                c.arg(bin("orchestratord"));
                c
            }
            (true, Some(pid)) => {
                let mut c = std::process::Command::new("nsenter");
                c.arg(format!("--net=/proc/{pid}/ns/net"));
                c.arg(bin("orchestratord"));
                c
            }
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join(format!("{name}-state")))
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let status = wait_for("the daemon to answer", Duration::from_secs(20), || {
            let out = ctl_at(&socket, &["--format", "json", "status"]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
        });
        (child, socket, status)
    };
    // Outside a namespace, whether the port is free is only known by trying it.
    let free = namespaced || std::net::TcpListener::bind("127.0.0.1:7419").is_ok();
    let mut children = Vec::new();
    let mut ns = None;
    if free {
        let (first, _, status) = start("first", None);
        ns = Some(first.id());
        children.push(first);
        assert_eq!(
            status["httpListen"], "127.0.0.1:7419",
            "HTTP is on by default (if another program took 7419 just now, run again): {status}"
        );
    } else {
        eprintln!("127.0.0.1:7419 is taken on this machine: only the taken-port case is checked");
    }
    let (second, second_socket, status) = start("second", ns);
    children.push(second);
    assert!(status["httpListen"].is_null(), "{status}");
    let warnings = status["configWarnings"].to_string();
    assert!(
        warnings.contains("HTTP is off") && warnings.contains("7419"),
        "{warnings}"
    );
    let out = ctl_at(&second_socket, &["console"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("HTTP listener is off"),
        "{}",
        stderr(&out)
    );
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ------------------------------------------------------------------------------------------------
// In a real browser.

/// An agent with many slots: its running specialists are listed however many slots it has (the
/// page asks for twice the slots, at most a listing's limit), and a failed read would be shown, not
/// taken for an empty list.
#[test]
fn the_agents_page_lists_what_runs_on_an_agent_with_many_slots() {
    let w = workdir();
    let release = w.path().join("release");
    let waits = script(
        w.path(),
        "waits.sh",
        r#"
while [ ! -e "$DIR/release" ]; do sleep 0.05; done
echo done
"#,
    );
    let toml = format!(
        "{HTTP_CONFIG}{}",
        orchestrator_tests::agent("researcher", &waits, "max_concurrent = 6000")
    );
    let d = TestDaemon::in_mode(&toml, "shadow");
    let id = d.submit("research the literature on prompt caching");
    d.wait_state(&id, "in_progress", Duration::from_secs(20));

    let page = Signed::sign_in(&d).get("/console/agents");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("1 / 6000 slots"), "{}", page.body);
    assert!(
        page.body.contains(&format!("/console/tasks/{id}")),
        "{}",
        page.body
    );

    std::fs::write(&release, "").unwrap();
    d.wait_state(&id, "done", Duration::from_secs(20));
}

mod browser {
    use super::*;
    use fantoccini::{Client, ClientBuilder, Locator};
    use std::process::{Child, Command, Stdio};

    const IGNORE: &str = "needs chromium and chromium-driver; .ci/run runs them";

    /// chromedriver on a free loopback port, ended by pid when dropped. It and the browsers it
    /// starts keep their scratch files (profiles, shared memory) in `_tmp`, removed after it, so
    /// that a run leaves nothing in the system's temporary directory.
    struct Driver {
        child: Child,
        port: u16,
        _tmp: tempfile::TempDir,
    }

    impl Drop for Driver {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn driver() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tmp = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)");
        wait_for("chromedriver to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Driver {
            child,
            port,
            _tmp: tmp,
        }
    }

    async fn browser(driver: &Driver, width: u32, height: u32) -> Client {
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}")],
            }
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session")
    }

    async fn screenshot(c: &Client, name: &str) {
        let dir = bin_dir()
            .parent()
            .expect("target directory")
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Poll the page until `f` holds, with a bounded deadline.
    async fn until<F, Fut>(what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f().await {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's text as the page itself reads it (`innerText`); empty while a navigation has
    /// no document yet. (WebDriver's element text answered "" for a complete page under load, once
    /// in a while, so it is not used here.)
    async fn body_text(c: &Client) -> String {
        match c
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await
        {
            Ok(Value::String(text)) => text,
            _ => String::new(),
        }
    }

    /// Poll until the page's text contains `needle`; on timeout, say where the browser is and
    /// what the page says instead.
    async fn until_text(c: &Client, what: &str, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = body_text(c).await;
            if text.contains(needle) {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let url = c.current_url().await.map(|u| u.to_string());
                let source = tokio::time::timeout(Duration::from_secs(5), c.source()).await;
                let ready = tokio::time::timeout(
                    Duration::from_secs(5),
                    c.execute("return document.readyState;", vec![]),
                )
                .await;
                panic!("timed out waiting for {what}: the browser is at {url:?}, showing:\n{text}\nsource: {source:?}\nready: {ready:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn sign_in(c: &Client, d: &TestDaemon) {
        let url = console_link(d)["url"].as_str().unwrap().to_string();
        c.goto(&url).await.unwrap();
        assert!(c
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/approvals"));
        // The link works once.
        c.goto(&url).await.unwrap();
        assert!(body_text(c).await.contains("already been used"));
        c.goto(&format!("{}/console/approvals", d.http_base()))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "needs chromium and chromium-driver; .ci/run runs them"]
    async fn sign_in_watch_the_pipeline_live_and_decide() {
        let _ = IGNORE;
        let d = TestDaemon::with_config(HTTP_CONFIG);
        let drv = driver();
        let c = browser(&drv, 1280, 900).await;
        let base = d.http_base();
        c.goto(&format!("{base}/console/approvals")).await.unwrap();
        assert!(c
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/login"));
        screenshot(&c, "login").await;
        sign_in(&c, &d).await;

        // A task submitted with orchctl appears on the open Pipeline page without a reload.
        c.goto(&format!("{base}/console/pipeline")).await.unwrap();
        c.execute("window.__marker = 1;", vec![]).await.unwrap();
        until("the live stream to connect", || async {
            c.find(Locator::Css("#live.on")).await.is_ok()
        })
        .await;
        let id = awaiting_task(&d);
        until("the new task's row", || async {
            c.find(Locator::Css(&format!("tr[data-id='{id}']")))
                .await
                .is_ok()
        })
        .await;
        let same_page = c
            .execute("return window.__marker === 1;", vec![])
            .await
            .unwrap();
        assert_eq!(same_page, Value::Bool(true), "no reload happened");
        until("the row to show awaiting approval", || async {
            let state = c
                .execute(
                    "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                    vec![Value::String(format!("tr[data-id='{id}'] .state"))],
                )
                .await;
            matches!(state, Ok(Value::String(s)) if s == "awaiting approval")
        })
        .await;
        screenshot(&c, "pipeline").await;

        // Approve one.
        let other = awaiting_task(&d);
        let third = awaiting_task(&d);
        let fourth = awaiting_task(&d);
        c.goto(&format!("{base}/console/approvals")).await.unwrap();
        screenshot(&c, "approvals").await;
        c.find(Locator::Css(&format!(
            "article[data-id='{id}'] form.approve button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
        until_text(&c, "the approval notice", "Approved").await;
        assert_eq!(d.state_of(&id), "done");

        // Reject without a reason: the browser's required field holds the form back, and the
        // daemon refuses it when sent anyway; neither changes the task or its trajectory.
        let before = d.task(&other);
        assert_eq!(before["state"], "awaiting_approval");
        let approvals = c.current_url().await.unwrap();
        c.find(Locator::Css(&format!(
            "article[data-id='{other}'] form.reject button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
        let held = c
            .execute(
                "return document.querySelector(arguments[0]).validity.valueMissing;",
                vec![Value::String(format!(
                    "article[data-id='{other}'] form.reject input[name=reason]"
                ))],
            )
            .await
            .unwrap();
        assert_eq!(held, Value::Bool(true), "the reason is required");
        assert_eq!(
            c.current_url().await.unwrap(),
            approvals,
            "nothing was sent"
        );
        c.execute(
            "const f = document.querySelector(arguments[0]); f.noValidate = true; f.submit();",
            vec![Value::String(format!(
                "article[data-id='{other}'] form.reject"
            ))],
        )
        .await
        .unwrap();
        until_text(&c, "the daemon's refusal", "A reason is required").await;
        assert_eq!(d.task(&other), before);
        c.goto(&format!("{base}/console/approvals")).await.unwrap();
        // With a reason it goes through.
        c.find(Locator::Css(&format!(
            "article[data-id='{other}'] form.reject input[name=reason]"
        )))
        .await
        .unwrap()
        .send_keys("touches billing")
        .await
        .unwrap();
        c.find(Locator::Css(&format!(
            "article[data-id='{other}'] form.reject button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
        until_text(&c, "the rejection notice", "Rejected").await;
        assert_eq!(d.task(&other)["rejection"]["reason"], "touches billing");

        // Lose a race with orchctl approve.
        let out = d.ctl(&["approve", &third]);
        assert!(out.status.success(), "{}", stderr(&out));
        until_text(
            &c,
            "the card to say it was decided elsewhere",
            "Decided elsewhere",
        )
        .await;
        c.find(Locator::Css(&format!(
            "article[data-id='{third}'] form.approve button"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
        until_text(&c, "the race message", "Someone else decided first").await;
        assert!(body_text(&c).await.contains("done"));
        screenshot(&c, "race").await;

        // Forged POSTs from this session, without the CSRF token, on a task that awaits approval:
        // refused with 403, and the task still waits, its trajectory as it was.
        let before = d.task(&fourth);
        assert_eq!(before["state"], "awaiting_approval");
        for action in ["approve", "cancel"] {
            let status = c
                .execute(
                    "return fetch(arguments[0], {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'back=%2Fconsole%2Fapprovals'}).then(r => r.status);",
                    vec![Value::String(format!("/console/tasks/{fourth}/{action}"))],
                )
                .await
                .unwrap();
            assert_eq!(status, Value::from(403), "{action}");
        }
        c.execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0]; document.body.appendChild(f); f.submit();",
            vec![Value::String(format!("/console/tasks/{fourth}/approve"))],
        )
        .await
        .unwrap();
        until_text(&c, "the refusal", "This form has expired").await;
        assert_eq!(d.task(&fourth), before);

        c.goto(&format!("{base}/console/tasks/{other}"))
            .await
            .unwrap();
        assert!(body_text(&c).await.contains("touches billing"));
        screenshot(&c, "task").await;
        assert_eq!(d.ctl(&["synthetic-all"]).status.code(), Some(0));
        c.goto(&format!("{base}/console/rollout")).await.unwrap();
        assert!(body_text(&c).await.contains("Shadow summary"));
        assert!(c.find(Locator::Css("#gate-runs tr.gate-run")).await.is_ok());
        screenshot(&c, "rollout").await;
        c.goto(&format!("{base}/console/agents")).await.unwrap();
        assert!(body_text(&c).await.contains("coder"));
        screenshot(&c, "agents").await;

        // Every page left behind closed its live stream, those kept in the back/forward cache
        // included: only this page's is open. (Over HTTP/1.1 the browser allows six connections
        // to the daemon; streams held by pages put away stalled later requests for a minute.) A
        // stream whose page closed it ends at the daemon's next write to it, which this submit
        // causes.
        awaiting_task(&d);
        until("only this page's live stream to be open", || async {
            console_streams(&d) == 1.0
        })
        .await;
        c.close().await.unwrap();
    }

    /// No horizontal scrolling, and every button at least 44 px tall. The width is read once the
    /// page's layout has settled (a loaded machine can answer before the last reflow): it must
    /// come to fit within `until`'s deadline, and a page that overflows for good fails there.
    async fn fits_a_phone(c: &Client, page: &str) {
        until(&format!("{page} to fit the phone's width"), || async {
            c.execute(
                "return document.readyState === 'complete' \
                 && document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .ok()
                == Some(Value::Bool(true))
        })
        .await;
        let short = c
            .execute(
                "return Array.from(document.querySelectorAll('button')).filter(b => b.offsetParent !== null && b.getBoundingClientRect().height < 44).map(b => b.textContent);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(short, Value::Array(vec![]), "{page}: buttons under 44 px");
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "needs chromium and chromium-driver; .ci/run runs them"]
    async fn approvals_and_task_pages_fit_a_phone() {
        let d = TestDaemon::with_config(HTTP_CONFIG);
        let long = format!(
            "{CODE_GOAL} {}",
            "averyveryverylongwordwithoutanybreaks".repeat(6)
        );
        let id = d.submit(&long);
        d.wait_state(&id, "awaiting_approval", Duration::from_secs(20));
        let drv = driver();
        let c = browser(&drv, 390, 844).await;
        c.set_window_size(390, 844).await.unwrap();
        sign_in(&c, &d).await;
        let base = d.http_base();
        c.goto(&format!("{base}/console/approvals")).await.unwrap();
        fits_a_phone(&c, "approvals").await;
        assert!(c.find(Locator::Css("form.approve button")).await.is_ok());
        screenshot(&c, "phone-approvals").await;
        c.goto(&format!("{base}/console/tasks/{id}")).await.unwrap();
        fits_a_phone(&c, "task").await;
        screenshot(&c, "phone-task").await;
        c.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "needs chromium and chromium-driver; .ci/run runs them"]
    async fn a_read_only_user_sees_no_buttons() {
        let d = TestDaemon::with_config(&format!(
            "{HTTP_CONFIG}[socket]\nread_only_uids = [65534]\n"
        ));
        let id = awaiting_task(&d);
        let Some(link) = read_only_link(&d) else {
            return;
        };
        let drv = driver();
        let c = browser(&drv, 1280, 900).await;
        c.goto(link["url"].as_str().unwrap()).await.unwrap();
        let base = d.http_base();
        c.goto(&format!("{base}/console/approvals")).await.unwrap();
        assert!(c
            .find(Locator::Css(&format!("article[data-id='{id}']")))
            .await
            .is_ok());
        assert!(c.find(Locator::Css("form.approve")).await.is_err());
        assert!(c.find(Locator::Css("form.reject")).await.is_err());
        screenshot(&c, "read-only").await;
        c.close().await.unwrap();
    }
}
