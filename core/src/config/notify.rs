//! `[[notify]]`: the sinks that notifications go to (a command or a webhook), which events each
//! wants, and how long delivery keeps trying. The events themselves are described in `README.md`.

use super::validator::Validator;
use orchestrator_proto::task::TaskKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Every event type a sink can ask for. `task.done` and `test` are never matched by `*`: done
/// tasks are the common case, and `test` goes only to the sink it is sent to.
pub const EVENT_TYPES: &[&str] = &[
    "approval.requested",
    "approval.expiring",
    "approval.decided",
    "task.failed",
    "task.done",
    "task.cancelled",
    "gate.synthetic",
    "gate.shadow",
    "mode.changed",
    "mode.refused",
    "daemon.alarm",
    "budget.warning",
    "budget.exhausted",
];

/// Where a sink's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// argv; the event JSON on stdin; exit 0 is delivered.
    Command(Vec<String>),
    /// `http://` or `https://` URL; any 2xx is delivered.
    Webhook(String),
}

/// Which events a sink wants. The SQLite store keeps each sink's filter beside its place in the
/// event log, so that the events a sink has not yet been sent can be found without the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkFilter {
    /// Event types wanted; `*` for every type but `task.done`.
    pub events: BTreeSet<String>,
    /// Kinds of task whose events are wanted (events without a task always pass).
    pub kinds: BTreeSet<TaskKind>,
    /// Agents whose tasks' events are wanted; empty for all.
    pub agents: BTreeSet<String>,
}

impl SinkFilter {
    /// Whether events of `event_type` are wanted at all.
    pub fn wants_type(&self, event_type: &str) -> bool {
        self.events.contains(event_type)
            || (self.events.contains("*") && event_type != "task.done" && event_type != "test")
    }

    /// Whether an event of `event_type` about a task of `kind` routed to `agent` is wanted.
    pub fn wants(&self, event_type: &str, task: Option<(TaskKind, Option<&str>)>) -> bool {
        if !self.wants_type(event_type) {
            return false;
        }
        match task {
            None => true,
            Some((kind, agent)) => {
                self.kinds.contains(&kind)
                    && (self.agents.is_empty() || agent.is_some_and(|a| self.agents.contains(a)))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySink {
    pub name: String,
    pub filter: SinkFilter,
    pub target: SinkTarget,
    /// A file holding the webhook's signing secret.
    pub secret_file: Option<PathBuf>,
    pub timeout: Duration,
    /// After this long undelivered, an event is marked dead.
    pub give_up_after: Duration,
    /// The first retry's delay; each failed attempt doubles it up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl NotifySink {
    /// Whether this sink wants events of `event_type` at all.
    pub fn wants_type(&self, event_type: &str) -> bool {
        self.filter.wants_type(event_type)
    }

    /// Whether this sink wants an event of `event_type` about a task of `kind` routed to `agent`.
    pub fn wants(&self, event_type: &str, task: Option<(TaskKind, Option<&str>)>) -> bool {
        self.filter.wants(event_type, task)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    name: Spanned<String>,
    events: Spanned<Vec<String>>,
    kinds: Option<Spanned<Vec<String>>>,
    agents: Option<Vec<String>>,
    command: Option<Spanned<Vec<String>>>,
    webhook: Option<Spanned<String>>,
    secret_file: Option<String>,
    timeout: Option<Spanned<String>>,
    give_up_after: Option<Spanned<String>>,
    retry_initial: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn notify(&mut self, raw: Option<Vec<RawSink>>) -> Vec<NotifySink> {
        let mut sinks: Vec<NotifySink> = Vec::new();
        for s in raw.unwrap_or_default() {
            let name = s.name.get_ref().trim().to_string();
            let key = format!("notify[{name}]");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.err(
                    "notify.name",
                    Some(&s.name),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                );
                continue;
            }
            if sinks.iter().any(|o| o.name == name) {
                self.err(&key, Some(&s.name), format!("duplicate sink name {name:?}"));
                continue;
            }
            let mut events = BTreeSet::new();
            for e in s.events.get_ref() {
                if e == "*" || EVENT_TYPES.contains(&e.as_str()) {
                    events.insert(e.clone());
                } else {
                    self.err(
                        &format!("{key}.events"),
                        Some(&s.events),
                        format!(
                            "unknown event type {e:?} (one of *, {})",
                            EVENT_TYPES.join(", ")
                        ),
                    );
                }
            }
            if s.events.get_ref().is_empty() {
                self.err(
                    &format!("{key}.events"),
                    Some(&s.events),
                    "must list at least one event type",
                );
            }
            let kinds = match &s.kinds {
                // Synthetic tasks are the harness's own; a sink sees them only when it asks.
                None => [TaskKind::Shadow, TaskKind::Live].into(),
                Some(k) => {
                    let mut kinds = BTreeSet::new();
                    for name in k.get_ref() {
                        match name.parse::<TaskKind>() {
                            Ok(kind) => {
                                kinds.insert(kind);
                            }
                            Err(msg) => self.err(&format!("{key}.kinds"), Some(k), msg),
                        }
                    }
                    kinds
                }
            };
            let target = match (s.command, s.webhook) {
                (Some(cmd), None) => {
                    if cmd.get_ref().is_empty() || cmd.get_ref()[0].trim().is_empty() {
                        self.err(
                            &format!("{key}.command"),
                            Some(&cmd),
                            "must be a non-empty argv list",
                        );
                    }
                    SinkTarget::Command(cmd.into_inner())
                }
                (None, Some(url)) => {
                    let u = url.get_ref();
                    let rest = u
                        .strip_prefix("https://")
                        .or_else(|| u.strip_prefix("http://"));
                    if !matches!(rest, Some(r) if !r.is_empty()) {
                        self.err(
                            &format!("{key}.webhook"),
                            Some(&url),
                            format!("{u:?} is not an http:// or https:// URL"),
                        );
                    }
                    SinkTarget::Webhook(url.into_inner())
                }
                _ => {
                    self.err(
                        &key,
                        Some(&s.name),
                        "needs exactly one of command or webhook",
                    );
                    continue;
                }
            };
            if s.secret_file.is_some() && matches!(target, SinkTarget::Command(_)) {
                self.err(
                    &format!("{key}.secret_file"),
                    Some(&s.name),
                    "only a webhook is signed",
                );
            }
            let timeout = self.positive_duration(
                &format!("{key}.timeout"),
                s.timeout.as_ref(),
                Duration::from_secs(10),
            );
            let give_up_after = self.positive_duration(
                &format!("{key}.give_up_after"),
                s.give_up_after.as_ref(),
                Duration::from_secs(24 * 3600),
            );
            let retry_initial = self.positive_duration(
                &format!("{key}.retry_initial"),
                s.retry_initial.as_ref(),
                Duration::from_secs(1),
            );
            let retry_max = self.positive_duration(
                &format!("{key}.retry_max"),
                s.retry_max.as_ref(),
                Duration::from_secs(3600),
            );
            if retry_max < retry_initial {
                self.err(
                    &format!("{key}.retry_max"),
                    s.retry_max.as_ref(),
                    "must not be shorter than retry_initial",
                );
            }
            sinks.push(NotifySink {
                name,
                filter: SinkFilter {
                    events,
                    kinds,
                    agents: s.agents.unwrap_or_default().into_iter().collect(),
                },
                target,
                secret_file: s.secret_file.map(PathBuf::from),
                timeout,
                give_up_after,
                retry_initial,
                retry_max,
            });
        }
        sinks
    }
}
