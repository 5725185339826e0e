//! Notification sinks (`orchctl notify list|test|retry`): their outboxes, a test event, and
//! dead events sent again.

use crate::daemon::Daemon;
use crate::store::Notice;
use orchestrator_core::config::SinkTarget;
use orchestrator_proto::message::SinkStatus;
use orchestrator_proto::{ErrorCode, WireError};

fn unknown_sink(d: &Daemon, name: &str) -> Result<(), WireError> {
    if d.config().notify.iter().any(|s| s.name == name) {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::NotFound,
            format!("no notify sink named {name:?}"),
        )
        .with("name", name))
    }
}

/// Every configured sink, then any sink no longer configured that still has events stored.
pub async fn list(d: &Daemon) -> Result<Vec<SinkStatus>, WireError> {
    let stats = d.store.outbox_stats().await?;
    let now = d.clock.now_ms();
    let cfg = d.config();
    let mut out: Vec<SinkStatus> = Vec::new();
    let mut names: Vec<&str> = cfg.notify.iter().map(|s| s.name.as_str()).collect();
    for s in &stats {
        if !names.contains(&s.sink.as_str()) {
            names.push(&s.sink);
        }
    }
    for name in names {
        let sink = cfg.notify.iter().find(|s| s.name == name);
        let row = stats
            .iter()
            .find(|s| s.sink == name)
            .cloned()
            .unwrap_or_default();
        out.push(SinkStatus {
            name: name.to_string(),
            target: sink.map(|s| match &s.target {
                SinkTarget::Webhook(url) => format!("webhook {url}"),
                SinkTarget::Command(argv) => {
                    format!("command {}", argv.first().map(String::as_str).unwrap_or(""))
                }
            }),
            events: sink
                .map(|s| s.filter.events.iter().cloned().collect())
                .unwrap_or_default(),
            pending: row.pending,
            dead: row.dead,
            oldest_pending_secs: row
                .oldest_pending_ms
                .map(|t| u64::try_from((now - t).max(0) / 1000).unwrap_or(0)),
            delivered: d.metrics.notify_delivered.get(&[name]),
            failed_attempts: d.metrics.notify_failed_attempts.get(&[name]),
            last_error: row.last_error,
        });
    }
    Ok(out)
}

/// Queue a `test` event for the sink `name` only; answers its id.
pub async fn test(d: &Daemon, name: &str, by: &str) -> Result<String, WireError> {
    unknown_sink(d, name)?;
    let notice = Notice::new("test", d.clock.now_ms())
        .field("sink", name)
        .field("by", by)
        .field(
            "message",
            format!("a test event for sink {name}, sent by {by}"),
        );
    let notice = Notice {
        only_sink: Some(name.to_string()),
        ..notice
    };
    let id = notice.id.clone();
    d.store.enqueue_notice(notice).await?;
    Ok(id)
}

/// The sink's dead events back to pending; answers how many.
pub async fn retry(d: &Daemon, name: &str) -> Result<u64, WireError> {
    unknown_sink(d, name)?;
    Ok(d.store.retry_dead(name, d.clock.now_ms()).await?)
}
