//! Sending one event to one sink: a webhook `POST` (signed when the sink has a secret) or a
//! command with the event on its stdin. `Ok` means delivered; the error says why not, for the
//! outbox's `last_error`.

use crate::dispatch::process::{base_env, tail};
use hmac::{KeyInit, Mac};
use orchestrator_core::config::{NotifySink, SinkTarget};
use sha2::Sha256;
use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What a failed attempt's error keeps of a command's stderr.
const STDERR_KEPT: usize = 512;

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">`: the receiver recomputes it with
/// the shared secret and rejects stale timestamps (see `README.md`).
pub fn signature(secret: &[u8], t: u64, body: &str) -> String {
    // HMAC takes keys of any length; the error case cannot happen.
    let mut mac = match <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = format!("t={t},v1=");
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// How long a webhook's secret read from `secret_file` is used before the file is read again: a
/// rotated secret applies within this, without a reload, and a busy sink does not read the file
/// for every event.
const SECRET_REREAD: Duration = Duration::from_secs(1);

/// One sink's sender: the HTTP client and the webhook's address are made once and reused across
/// events.
pub struct Sender {
    sink: NotifySink,
    http: Option<(reqwest::Client, reqwest::Url)>,
    /// The secret last read, and when.
    secret: std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<str>)>>,
}

/// The event being sent, as the outbox holds it.
pub struct Outgoing<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub body: &'a str,
}

impl Sender {
    pub fn new(sink: NotifySink) -> Result<Sender, String> {
        let http = match &sink.target {
            SinkTarget::Webhook(url) => Some((
                reqwest::Client::builder()
                    .timeout(sink.timeout)
                    .connect_timeout(sink.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("orchestratord/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
                reqwest::Url::parse(url).map_err(|e| format!("webhook {url}: {e}"))?,
            )),
            SinkTarget::Command(_) => None,
        };
        Ok(Sender {
            sink,
            http,
            secret: std::sync::Mutex::new(None),
        })
    }

    /// The webhook's signing secret: the file's content without its line end, read again once
    /// [`SECRET_REREAD`] has passed since the last read.
    fn secret(&self, path: &std::path::Path) -> Result<std::sync::Arc<str>, String> {
        let mut cached = self.secret.lock().map_err(|_| "secret cache poisoned")?;
        if let Some((at, secret)) = cached.as_ref() {
            if at.elapsed() < SECRET_REREAD {
                return Ok(std::sync::Arc::clone(secret));
            }
        }
        let read = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret_file {}: {e}", path.display()))?;
        let secret: std::sync::Arc<str> = read.trim_end_matches(['\n', '\r']).into();
        *cached = Some((std::time::Instant::now(), std::sync::Arc::clone(&secret)));
        Ok(secret)
    }

    pub fn sink(&self) -> &NotifySink {
        &self.sink
    }

    pub async fn send(&self, ev: &Outgoing<'_>) -> Result<(), String> {
        match (&self.sink.target, &self.http) {
            (SinkTarget::Webhook(_), Some((client, url))) => self.post(client, url, ev).await,
            (SinkTarget::Command(argv), _) => self.run(argv, ev).await,
            (SinkTarget::Webhook(_), None) => Err("no HTTP client".into()),
        }
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        url: &reqwest::Url,
        ev: &Outgoing<'_>,
    ) -> Result<(), String> {
        let mut req = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("X-Orchestrator-Event", ev.event_type)
            .header("X-Orchestrator-Event-Id", ev.event_id);
        if let Some(path) = &self.sink.secret_file {
            let secret = self.secret(path)?;
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            req = req.header(
                "X-Orchestrator-Signature",
                signature(secret.as_bytes(), t, ev.body),
            );
        }
        let resp = req
            .body(ev.body.to_string())
            .send()
            .await
            .map_err(|e| format!("POST failed: {}", error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }

    async fn run(&self, argv: &[String], ev: &Outgoing<'_>) -> Result<(), String> {
        let (program, args) = argv.split_first().ok_or("empty command")?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(base_env(|k| std::env::var(k).ok()))
            .env("ORCH_EVENT", ev.event_type)
            .env("ORCH_EVENT_ID", ev.event_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let pgid = child.id();
        let mut stdin = child.stdin.take();
        let mut stderr = child.stderr.take();
        let body = ev.body.as_bytes().to_vec();
        let work = async move {
            // Fed and drained at once, so that a command writing much to stderr before it reads
            // its stdin is not stuck; of its stderr only the tail is kept.
            let feed = async {
                if let Some(mut s) = stdin.take() {
                    // A command that does not read its stdin is its business; the exit status
                    // decides. Dropping the pipe here closes it.
                    let _ = s.write_all(&body).await;
                }
            };
            let drain = async {
                match stderr.take() {
                    Some(s) => tail(s, STDERR_KEPT).await,
                    None => Vec::new(),
                }
            };
            let ((), err) = tokio::join!(feed, drain);
            (child.wait().await, err)
        };
        match tokio::time::timeout(self.sink.timeout, work).await {
            Ok((Ok(status), err)) if status.success() => {
                let _ = err;
                Ok(())
            }
            Ok((Ok(status), err)) => {
                let tail = String::from_utf8_lossy(&err).trim().to_string();
                Err(format!("{program} exited with {status}: {tail}"))
            }
            Ok((Err(e), _)) => Err(format!("cannot wait for {program}: {e}")),
            Err(_) => {
                if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Err(format!(
                    "{program} did not finish within {:?}",
                    self.sink.timeout
                ))
            }
        }
    }
}

/// An error with its causes, which is where reqwest says what actually went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The delay before retry number `failures` (1-based): doubling from `initial` up to `max`, with
/// jitter that spreads it over its upper half so that sinks failing together do not retry together.
pub fn backoff(initial: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
    let base = initial.saturating_mul(factor).min(max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_and_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac Jefe
        let sig = signature(b"Jefe", 1700000000, "{\"a\":1}");
        assert_eq!(
            sig,
            "t=1700000000,v1=fa5f6481efc59da48b19c9dc10196c9953e5651f8304b3a318b6b87d70272e0a"
        );
        assert_ne!(sig, signature(b"Jeff", 1700000000, "{\"a\":1}"));
        assert_ne!(sig, signature(b"Jefe", 1700000001, "{\"a\":1}"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(backoff(i, m, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(i, m, 2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(i, m, 5, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(i, m, 40, 1.0), m);
        assert_eq!(backoff(i, m, 3, 0.0), Duration::from_secs(2));
    }
}
