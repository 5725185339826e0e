//! The notification outbox: which committed transitions become notification events, what each
//! event says, and the rows a delivery worker reads back.
//!
//! A committed transition never loses its notification and a rolled-back one never sends one,
//! because what a sink is sent is stored in the transition's own transaction. How depends on the
//! backend:
//!
//! - PostgreSQL writes an event's outbox rows (one per sink that wants it) with the transition.
//! - SQLite writes nothing more than the transition's trajectory event: the event log is the
//!   outbox. Its single writer commits events in sequence order, so each sink keeps its place in
//!   the log (a cursor, moved by deliveries), and the events past it that the sink wants are built
//!   when the delivery worker reads them ([`log_entry`]). A task's row does not change once the
//!   event that made it terminal is stored, and before that only in ways the event's body does not
//!   show, so the body read later is the body the commit would have written. An event a sink gives
//!   up on becomes a row, as do notices. See `docs/ARCHITECTURE.md`, "Notifications".
//!
//! Events that no transition causes (gate verdicts, mode changes, alarms, tests) are [`Notice`]s,
//! written as rows on both backends. Deciding and building an event is pure: [`event_type`] and
//! [`transition_payload`] are plain functions over what the writer or the reader holds. The event
//! types and their fields are documented in `README.md`.

use crate::clock::rfc3339;
use orchestrator_core::config::{ApprovalPolicy, NotifySink, OnApprovalTimeout, SinkFilter};
use orchestrator_proto::task::{Task, TaskKind, TaskState, TrajectoryEvent};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The actor of the sweeper's approval-timeout decisions; distinct from any person's name.
pub const APPROVAL_TIMEOUT_ACTOR: &str = "approval-timeout";
/// The trajectory action of an approval warning (the task's state does not change).
pub const APPROVAL_WARNING_ACTION: &str = "approval_warning";
/// How much of a result's text an `approval.requested` event carries.
pub const RESULT_EXCERPT_BYTES: usize = 2048;

/// What a backend needs to write outbox rows: the sinks and their filters, the approval policy
/// (for deadlines) and where task pages live (for links). Installed at start and on reload.
#[derive(Debug, Clone, Default)]
pub struct OutboxRules {
    pub sinks: Vec<NotifySink>,
    pub approval: ApprovalPolicy,
    /// `[http] public_url`, or the listener's address; task pages are under `/console/tasks/`.
    pub public_url: String,
}

impl OutboxRules {
    /// Whether any sink wants events of this type: the writer's only cost for every other event.
    pub fn any_wants(&self, event_type: &str) -> bool {
        self.sinks.iter().any(|s| s.wants_type(event_type))
    }

    pub fn link(&self, task_id: &str) -> String {
        format!("{}/console/tasks/{task_id}", self.public_url)
    }

    /// The sinks that want an event, by name.
    pub fn sinks_for(
        &self,
        event_type: &str,
        task: Option<(TaskKind, Option<&str>)>,
    ) -> Vec<String> {
        self.sinks
            .iter()
            .filter(|s| s.wants(event_type, task))
            .map(|s| s.name.clone())
            .collect()
    }
}

/// An event no transition causes, to be written to the outbox as it is.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The stable event id receivers deduplicate on.
    pub id: String,
    pub event_type: String,
    pub at_ms: i64,
    /// The task the event is about, if any: (id, kind, agent), for the sinks' filters.
    pub task: Option<(String, TaskKind, Option<String>)>,
    /// Fields besides `type`, `id` and `at`.
    pub fields: Map<String, Value>,
    /// Only to this sink, whatever it asks for (`notify test`).
    pub only_sink: Option<String>,
    /// To every sink that wants it except this one (an alarm about that sink).
    pub except_sink: Option<String>,
}

impl Notice {
    pub fn new(event_type: &str, at_ms: i64) -> Notice {
        Notice {
            id: format!("ev-{}", ulid::Ulid::generate()),
            event_type: event_type.to_string(),
            at_ms,
            task: None,
            fields: Map::new(),
            only_sink: None,
            except_sink: None,
        }
    }

    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Notice {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// Whether any sink of `rules` (the rules installed, if any) wants it: if none does, it would
    /// write no row, and a backend answers 0 without a write at all.
    pub fn wanted(&self, rules: Option<&OutboxRules>) -> bool {
        rules.is_some_and(|r| !self.sinks(r).is_empty())
    }

    /// The sinks it goes to under `rules`.
    pub fn sinks(&self, rules: &OutboxRules) -> Vec<String> {
        if let Some(only) = &self.only_sink {
            return rules
                .sinks
                .iter()
                .filter(|s| &s.name == only)
                .map(|s| s.name.clone())
                .collect();
        }
        let task = self.task.as_ref().map(|(_, k, a)| (*k, a.as_deref()));
        let mut sinks = rules.sinks_for(&self.event_type, task);
        sinks.retain(|s| Some(s) != self.except_sink.as_ref());
        sinks
    }

    /// The event's JSON body.
    pub fn body(&self) -> String {
        let mut obj = Map::new();
        obj.insert("type".into(), self.event_type.clone().into());
        obj.insert("id".into(), self.id.clone().into());
        obj.insert("at".into(), rfc3339(self.at_ms).into());
        for (k, v) in &self.fields {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj).to_string()
    }
}

/// Where a pending event waits. A sink's rows come before its events in the log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutboxKey {
    /// A row of the outbox table, by its position there.
    Row(i64),
    /// A trajectory event past the sink's place in the event log, by its sequence number (SQLite).
    Log { sink: String, seq: i64 },
}

/// One pending or dead outbox event, as a delivery worker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Where it waits: delivery follows this order.
    pub key: OutboxKey,
    pub sink: String,
    pub event_id: String,
    pub event_type: String,
    pub task_id: Option<String>,
    /// The event JSON, exactly as sent.
    pub body: String,
    /// Since when it has waited (reset by a retry of dead events): give-up counts from here.
    pub pending_since_ms: i64,
    pub attempts: u32,
}

impl OutboxKey {
    /// The outbox-table positions among `keys`.
    pub fn rows<'a>(keys: impl IntoIterator<Item = &'a OutboxKey>) -> Vec<i64> {
        keys.into_iter()
            .filter_map(|k| match k {
                OutboxKey::Row(seq) => Some(*seq),
                OutboxKey::Log { .. } => None,
            })
            .collect()
    }
}

/// One sink's outbox, for `orchctl notify list` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub sink: String,
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// The notification event a committed trajectory event causes, if any.
pub fn event_type(
    action: &str,
    actor: &str,
    from: Option<TaskState>,
    to: TaskState,
) -> Option<&'static str> {
    use TaskState::*;
    if action == APPROVAL_WARNING_ACTION {
        return Some("approval.expiring");
    }
    match (from, to) {
        (Some(f), t) if f == t => None,
        (_, AwaitingApproval) => Some("approval.requested"),
        (Some(AwaitingApproval), Done | Failed | Expired)
            if matches!(action, "approve" | "reject" | "expire")
                || actor == APPROVAL_TIMEOUT_ACTOR =>
        {
            Some("approval.decided")
        }
        (_, Failed) => Some("task.failed"),
        (_, Done) => Some("task.done"),
        (_, Cancelled) => Some("task.cancelled"),
        _ => None,
    }
}

/// The trajectory event behind a transition-caused notification.
pub struct Cause<'a> {
    pub seq: u64,
    pub at_ms: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub details: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Cause<'a> {
    /// The cause of a stored event `ev` that happened at `at_ms`.
    pub fn of(ev: &'a TrajectoryEvent, at_ms: i64) -> Cause<'a> {
        Cause {
            seq: ev.seq,
            at_ms,
            actor: &ev.actor,
            action: &ev.action,
            details: ev.details.as_ref(),
        }
    }

    /// The notification type the event causes, if any (see [`event_type`]).
    pub fn event_type(ev: &TrajectoryEvent) -> Option<&'static str> {
        event_type(&ev.action, &ev.actor, ev.from, ev.to)
    }

    /// Stable across retries and restarts: the trajectory event's position.
    pub fn event_id(&self) -> String {
        format!("ev-{}", self.seq)
    }

    fn detail(&self, key: &str) -> Option<&str> {
        self.details.and_then(|d| d.get(key)).map(String::as_str)
    }
}

/// The outbox rows one stored trajectory event causes: the sinks that want it, its stable id and
/// its body. Both backends write them with one insert in the event's transaction.
pub struct EventRows {
    pub sinks: Vec<String>,
    pub event_id: String,
    pub body: String,
}

impl EventRows {
    /// The rows `ev`, of notification type `event_type` and stored at `at_ms`, causes for `task`
    /// as the row holds it after the event; `None` when no sink wants it.
    pub fn of(
        rules: &OutboxRules,
        event_type: &str,
        ev: &TrajectoryEvent,
        at_ms: i64,
        task: &Task,
    ) -> Result<Option<EventRows>, crate::store::StoreError> {
        let sinks = rules.sinks_for(
            event_type,
            Some((task.kind, task.assigned_agent_id.as_deref())),
        );
        if sinks.is_empty() {
            return Ok(None);
        }
        let cause = Cause::of(ev, at_ms);
        let body = transition_payload(rules, event_type, &cause, task, expires_ms(task)?);
        Ok(Some(EventRows {
            sinks,
            event_id: cause.event_id(),
            body,
        }))
    }
}

/// The entry for `sink` (wanting what `filter` says) of the stored trajectory event `ev`, of
/// notification type `event_type` ([`Cause::event_type`]), which happened at `at_ms`, read back
/// from the event log with `task` as its row is now; `None` when the sink does not want it. The
/// task's state is the one the event left it in; the rest of what the body shows does not change
/// after the event (see the module's comment). Its failed attempts are the caller's to fill in
/// (the store keeps them beside the sink's place).
pub fn log_entry(
    rules: &OutboxRules,
    sink: &str,
    filter: &SinkFilter,
    event_type: &str,
    ev: &TrajectoryEvent,
    at_ms: i64,
    mut task: Task,
) -> Result<Option<OutboxEntry>, crate::store::StoreError> {
    if !filter.wants(
        event_type,
        Some((task.kind, task.assigned_agent_id.as_deref())),
    ) {
        return Ok(None);
    }
    task.state = ev.to;
    let cause = Cause::of(ev, at_ms);
    let body = transition_payload(rules, event_type, &cause, &task, expires_ms(&task)?);
    Ok(Some(OutboxEntry {
        key: OutboxKey::Log {
            sink: sink.to_string(),
            seq: i64::try_from(ev.seq).unwrap_or(i64::MAX),
        },
        sink: sink.to_string(),
        event_id: cause.event_id(),
        event_type: event_type.to_string(),
        task_id: Some(task.id),
        body,
        pending_since_ms: at_ms,
        attempts: 0,
    }))
}

/// When the task expires, from the row just read (no second read of the row).
fn expires_ms(task: &Task) -> Result<i64, crate::store::StoreError> {
    crate::clock::rfc3339_ms(&task.expires_at).ok_or_else(|| {
        crate::store::StoreError::Sql(format!(
            "task {}: unreadable expiry {:?}",
            task.id, task.expires_at
        ))
    })
}

/// When a task waiting for approval since `since_ms` stops waiting: its TTL, or the approval
/// timeout if that comes first. Answers the deadline and what happens at it.
pub fn approval_deadline(
    policy: &ApprovalPolicy,
    agent: Option<&str>,
    since_ms: i64,
    expires_ms: i64,
) -> (i64, &'static str) {
    match policy.for_agent(agent) {
        Some(t) => {
            let at =
                since_ms.saturating_add(i64::try_from(t.after.as_millis()).unwrap_or(i64::MAX));
            if at < expires_ms {
                let then = match t.then {
                    OnApprovalTimeout::Reject => "reject",
                    OnApprovalTimeout::Expire => "expire",
                };
                return (at, then);
            }
            (expires_ms, "expire")
        }
        None => (expires_ms, "expire"),
    }
}

/// The first `max` bytes of `text`, cut at a character boundary.
fn excerpt(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The JSON body of the `event_type` event caused by `cause` on `task` (as it is after it).
fn transition_payload(
    rules: &OutboxRules,
    event_type: &str,
    cause: &Cause<'_>,
    task: &Task,
    expires_ms: i64,
) -> String {
    let agent = task.assigned_agent_id.as_deref();
    let mut body = json!({
        "type": event_type,
        "id": cause.event_id(),
        "at": rfc3339(cause.at_ms),
        "task": {
            "id": task.id,
            "kind": task.kind.as_str(),
            "state": task.state.as_str(),
            "agent": agent,
            "goal": task.goal,
        },
        "link": rules.link(&task.id),
    });
    let extra = match event_type {
        "approval.requested" => {
            let reasons: Vec<&str> = cause
                .detail("approval")
                .map(|r| r.split("; ").filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            let text = task
                .result
                .as_ref()
                .and_then(|r| r.text.as_deref())
                .unwrap_or("");
            let (deadline, then) =
                approval_deadline(&rules.approval, agent, cause.at_ms, expires_ms);
            json!({
                "rule": task.routing.as_ref().and_then(|r| r.matched_rule_id.clone()),
                "reasons": reasons,
                "result": excerpt(text, RESULT_EXCERPT_BYTES),
                "resultTruncated": text.len() > RESULT_EXCERPT_BYTES,
                "expiresAt": rfc3339(deadline),
                "onExpiry": then,
            })
        }
        "approval.expiring" => json!({
            "expiresAt": cause.detail("deadline"),
            "onExpiry": cause.detail("then"),
        }),
        "approval.decided" => {
            let decision = if cause.actor == APPROVAL_TIMEOUT_ACTOR || cause.action == "expire" {
                "timed_out"
            } else if task.state == TaskState::Done {
                "approved"
            } else {
                "rejected"
            };
            json!({
                "decision": decision,
                "by": cause.actor,
                "reason": task.rejection.as_ref().map(|r| r.reason.clone()),
                "error": task.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
            })
        }
        "task.failed" => {
            let e = task.error.as_ref();
            json!({
                "error": {
                    "code": e.map(|e| e.code.clone()),
                    "message": e.map(|e| e.message.clone()),
                },
                "stderrTail": e.and_then(|e| e.details.as_ref()).and_then(|d| d.get("stderrTail")),
                "by": cause.actor,
            })
        }
        "task.cancelled" => json!({ "by": cause.actor, "reason": cause.detail("reason") }),
        _ => json!({}),
    };
    if let (Value::Object(b), Value::Object(x)) = (&mut body, extra) {
        b.extend(x);
    }
    body.to_string()
}

/// Shared rules, swapped whole on reload.
pub type SharedRules = Arc<OutboxRules>;

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn transitions_map_to_event_types() {
        let t = |a, actor, f, to| event_type(a, actor, f, to);
        assert_eq!(t("submit", "alice", None, Queued), None);
        assert_eq!(t("route", "d", Some(Queued), Assigned), None);
        assert_eq!(
            t("complete", "d", Some(InProgress), AwaitingApproval),
            Some("approval.requested")
        );
        assert_eq!(
            t("approve", "bob", Some(AwaitingApproval), Done),
            Some("approval.decided")
        );
        assert_eq!(
            t("reject", "bob", Some(AwaitingApproval), Failed),
            Some("approval.decided")
        );
        assert_eq!(
            t("expire", "sweeper", Some(AwaitingApproval), Expired),
            Some("approval.decided")
        );
        assert_eq!(t("expire", "sweeper", Some(Queued), Expired), None);
        assert_eq!(
            t("complete", "d", Some(InProgress), Done),
            Some("task.done")
        );
        assert_eq!(
            t("fail", "d", Some(InProgress), Failed),
            Some("task.failed")
        );
        assert_eq!(
            t("cancel", "bob", Some(AwaitingApproval), Cancelled),
            Some("task.cancelled")
        );
        assert_eq!(
            t(
                APPROVAL_WARNING_ACTION,
                "sweeper",
                Some(AwaitingApproval),
                AwaitingApproval
            ),
            Some("approval.expiring")
        );
    }

    #[test]
    fn excerpt_cuts_at_a_character_boundary() {
        let s = "é".repeat(2000);
        let e = excerpt(&s, RESULT_EXCERPT_BYTES);
        assert_eq!(e.len(), RESULT_EXCERPT_BYTES);
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("aé", 2), "a");
    }
}
