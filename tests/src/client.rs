//! A plain HTTP client for the daemon's HTTP API on loopback, for the tests of `/metrics` and the
//! OpenAPI document.

use crate::TestDaemon;
use std::time::Duration;

/// One answer: status, `Content-Type`, body as text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }
}

pub struct Client {
    pub base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for the daemon's HTTP API, at the address `orchctl status` reports it bound.
    pub fn of(d: &TestDaemon) -> Client {
        let (code, status) = d.ctl_json(&["status"]);
        assert_eq!(code, 0, "status: {status}");
        let listen = status["httpListen"]
            .as_str()
            .unwrap_or_else(|| panic!("status reports no httpListen: {status}"));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Client {
            base: format!("http://{listen}"),
            agent,
        }
    }

    /// `method path`, with the bearer token when given and a JSON body when given.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        json: Option<&str>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let result = match (method, json) {
            ("GET", _) => {
                let r = self.agent.get(&url);
                match &auth {
                    Some(a) => r.header("Authorization", a),
                    None => r,
                }
                .call()
            }
            ("POST", body) => {
                let r = self.agent.post(&url);
                let r = match &auth {
                    Some(a) => r.header("Authorization", a),
                    None => r,
                };
                match body {
                    Some(b) => r.content_type("application/json").send(b),
                    None => r.send_empty(),
                }
            }
            (other, _) => panic!("no such method in these tests: {other}"),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Answer {
            status,
            content_type,
            body,
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call("GET", path, token, None)
    }
}

impl TestDaemon {
    /// `orchctl init` for this daemon's state directory; answers the bearer token.
    pub fn init_token(&self) -> String {
        let config = self.dir.path().join("init.toml");
        let out = self.ctl(&[
            "init",
            "--state-dir",
            self.state_dir.to_str().unwrap_or_default(),
            "--config",
            config.to_str().unwrap_or_default(),
        ]);
        assert!(out.status.success(), "init: {}", crate::stderr(&out));
        std::fs::read_to_string(self.state_dir.join("token"))
            .expect("the token file")
            .trim()
            .to_string()
    }
}
