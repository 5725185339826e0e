//! The ready-made specialist wrappers under `packaging/agents/`, each run against a stub of the
//! agent CLI it wraps: a script of the same name first on `PATH` that records its arguments and
//! prints that tool's documented output (`fixtures/agents/`).

use orchestrator_tests::lines;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    /// The stub's arguments, one per line.
    args: Vec<String>,
    meta: Option<Value>,
}

/// Run `wrapper` with a stub `tool` that prints `fixture` and exits `exit`.
fn run(wrapper: &str, tool: &str, fixture: &str, exit: i32, env: &[(&str, &str)]) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let stub = bin.join(tool);
    let fixture = repo().join("fixtures/agents").join(fixture);
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{args}'\ncat '{fixture}'\nexit {exit}\n",
            args = dir.path().join("args").display(),
            fixture = fixture.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = dir.path().join("meta.json");
    let task = json!({"id": "01TEST", "goal": "fix the off-by-one in parse_range", "state": "in_progress"});
    let mut cmd = Command::new(repo().join("packaging/agents").join(wrapper));
    cmd.env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("ORCH_META_FILE", &meta)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(task.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: lines(&dir.path().join("args")),
        meta: std::fs::read_to_string(&meta)
            .ok()
            .map(|t| serde_json::from_str(&t).unwrap()),
    }
}

#[test]
fn claude_code_prints_the_result_and_reports_usage_and_cost() {
    let r = run(
        "claude-code",
        "claude",
        "claude/success.json",
        0,
        &[("ORCH_CLAUDE_ARGS", "--model sonnet")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "Fixed the off-by-one in parse_range and added a test."
    );
    assert_eq!(
        r.args,
        [
            "-p",
            "fix the off-by-one in parse_range",
            "--output-format",
            "json",
            "--model",
            "sonnet"
        ]
    );
    assert_eq!(
        r.meta.unwrap(),
        json!({"usage": {"model": "claude-sonnet-4-5-20250929", "inputTokens": 1532,
            "outputTokens": 412, "cacheReadTokens": 11264, "cacheWriteTokens": 2048,
            "costUsd": 0.0421}})
    );
}

#[test]
fn claude_code_usage_limit_is_exit_75_with_the_reset_time() {
    let r = run("claude-code", "claude", "claude/usage-limit.json", 1, &[]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    let meta = r.meta.unwrap();
    assert_eq!(meta["retryAfter"], "2027-01-15T08:00:00Z");
    assert_eq!(meta["reason"], "Claude usage limit reached");
}

#[test]
fn claude_code_other_errors_fail_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("error.json");
    std::fs::write(
        &bad,
        r#"{"type":"result","subtype":"error_max_turns","is_error":true,"result":"max turns reached","total_cost_usd":0.01,"usage":{}}"#,
    )
    .unwrap();
    let r = run("claude-code", "claude", bad.to_str().unwrap(), 1, &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("max turns reached"), "{}", r.stderr);
    assert_eq!(r.meta.unwrap()["usage"]["costUsd"], 0.01);
}

#[test]
fn codex_prints_the_last_agent_message_and_reports_tokens() {
    let r = run(
        "codex",
        "codex",
        "codex/success.jsonl",
        0,
        &[("ORCH_CODEX_MODEL", "gpt-5-codex")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "Fixed the off-by-one in parse_range; the tests pass."
    );
    assert_eq!(
        r.args,
        ["exec", "--json", "fix the off-by-one in parse_range"]
    );
    assert_eq!(
        r.meta.unwrap(),
        json!({"usage": {"model": "gpt-5-codex", "inputTokens": 24763,
            "cacheReadTokens": 24448, "outputTokens": 122}})
    );
}

#[test]
fn codex_usage_limit_is_exit_75_with_retry_after() {
    let r = run("codex", "codex", "codex/usage-limit.jsonl", 1, &[]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    let meta = r.meta.unwrap();
    assert_eq!(meta["retryAfter"], 45 * 60);
    assert!(meta["reason"].as_str().unwrap().contains("usage limit"));
}

#[test]
fn gemini_cli_prints_the_response_and_reports_tokens() {
    let r = run("gemini-cli", "gemini", "gemini/success.json", 0, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "Prompt caching stores the processed prefix of a prompt so that later requests reuse it."
    );
    assert_eq!(
        r.args,
        [
            "-p",
            "fix the off-by-one in parse_range",
            "--output-format",
            "json"
        ]
    );
    assert_eq!(
        r.meta.unwrap(),
        json!({"usage": {"model": "gemini-2.5-pro", "inputTokens": 24939,
            "outputTokens": 20, "cacheReadTokens": 21263}})
    );
}

#[test]
fn gemini_cli_quota_error_is_exit_75() {
    let r = run("gemini-cli", "gemini", "gemini/quota.json", 1, &[]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(r.meta.unwrap()["reason"]
        .as_str()
        .unwrap()
        .starts_with("Quota exceeded"));
}

#[test]
fn aider_prints_its_output_and_reports_model_tokens_and_cost() {
    let r = run("aider", "aider", "aider/success.txt", 0, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("it now includes it."), "{}", r.stdout);
    assert_eq!(
        r.args,
        [
            "--message",
            "fix the off-by-one in parse_range",
            "--yes-always",
            "--no-stream",
            "--no-pretty"
        ]
    );
    assert_eq!(
        r.meta.unwrap(),
        json!({"usage": {"model": "claude-sonnet-4-20250514", "inputTokens": 2100,
            "outputTokens": 150, "costUsd": 0.0053}})
    );
}

#[test]
fn aider_rate_limit_is_exit_75() {
    let r = run("aider", "aider", "aider/rate-limit.txt", 1, &[]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert_eq!(r.meta.unwrap()["reason"], "the provider's rate limit");
}
