//! Rollout: the configured and effective mode and why they differ, the synthetic gate's recent runs,
//! the shadow summary over a chosen window (counts, failures by code, durations drawn as a small
//! chart, per agent) with its verdict, pending overrides, and the last reload with its outcome.
//!
//! The shadow summary reads every shadow task of the window (100,000 rows in a busy day), so a
//! summary is reused for [`SUMMARY_REUSE_MS`] and the page says when it was computed.

use crate::daemon::Daemon;
use crate::gate::shadow::gate_window_hours;
use crate::http::console::layout::{self, html_response, when};
use crate::http::console::session::Viewer;
use crate::http::Api;
use crate::tasks::gate;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use orchestrator_proto::message::{DurationStats, ShadowSummary};
use orchestrator_proto::WireError;
use std::collections::HashMap;
use std::sync::Arc;

/// Windows offered, in hours.
const WINDOWS: [u32; 5] = [1, 6, 24, 72, 168];
/// Gate runs listed, newest first.
const GATE_RUNS: usize = 20;
/// How long, by the daemon's clock, a computed shadow summary is shown again.
pub const SUMMARY_REUSE_MS: i64 = 5_000;

/// The last shadow summary computed for each window, with the daemon time it was computed at.
/// Requests that arrive while one is computed wait for it instead of computing their own.
#[derive(Default)]
pub struct SummaryCache(tokio::sync::Mutex<HashMap<u32, (i64, ShadowSummary)>>);

impl SummaryCache {
    /// The summary over `window` hours and when it was computed: a recent one, or a new one.
    pub async fn get(&self, d: &Daemon, window: u32) -> Result<(i64, ShadowSummary), WireError> {
        let mut cache = self.0.lock().await;
        let now = d.clock.now_ms();
        if let Some((at, summary)) = cache.get(&window) {
            // A clock moved back makes the age negative: computed anew, like an old one.
            if (0..SUMMARY_REUSE_MS).contains(&(now - at)) {
                return Ok((*at, summary.clone()));
            }
        }
        let summary = gate::shadow_summary(d, window).await?;
        cache.insert(window, (now, summary.clone()));
        Ok((now, summary))
    }
}

/// p50, p95 and max as horizontal bars, scaled to the max. SVG attributes, not inline styles, so
/// the page keeps its strict style policy.
fn duration_chart(s: &DurationStats) -> Markup {
    let max = s.max_ms.max(1) as f64;
    let bars = [("p50", s.p50_ms), ("p95", s.p95_ms), ("max", s.max_ms)];
    html! {
        svg.chart viewBox="0 0 320 84" width="100%" role="img" aria-label="durations: p50, p95 and max" {
            @for (i, (label, ms)) in bars.iter().enumerate() {
                @let y = 4 + i * 27;
                @let w = ((*ms as f64 / max) * 200.0).max(1.0);
                text x="0" y=(y + 15) class="axis" { (label) }
                rect x="40" y=(y) width=(format!("{w:.1}")) height="20" rx="3" class={"bar b" (i)} {}
                text x=(format!("{:.1}", 46.0 + w)) y=(y + 15) class="value" { (layout::span(*ms as i64)) " (" (ms) " ms)" }
            }
        }
    }
}

fn counts_table(title: &str, map: &std::collections::BTreeMap<String, u64>) -> Markup {
    html! {
        div.mini {
            h3 { (title) }
            @if map.is_empty() { p.muted { "none" } }
            @else {
                table.kv { @for (k, v) in map { tr { td { (k) } td.num { (v) } } } }
            }
        }
    }
}

/// `GET /console/rollout?window=HOURS`.
pub async fn show(
    State(api): State<Arc<Api>>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let d = &api.daemon;
    let now = d.clock.now_ms();
    let cfg = d.config();
    let mode = d.mode();
    // Each subsystem's part, as `status` shows it.
    let pending_overrides = d.gate.pending_overrides();
    let gate_runs = gate::gate_runs(d, GATE_RUNS).await;
    let (last_reload, config_error) = (d.reload.last_reload(), d.reload.config_error());
    let default_window = gate_window_hours(&cfg).min(gate::MAX_WINDOW_HOURS);
    let window = q
        .get("window")
        .and_then(|w| w.parse::<u32>().ok())
        .filter(|w| (1..=gate::MAX_WINDOW_HOURS).contains(w))
        .unwrap_or(default_window);
    let summary = api.shadow_summaries.get(d, window).await;
    let fingerprint = cfg.routing_fingerprint();
    let body = html! {
        div.page-head { h1 { "Rollout" } }
        section.panel {
            h2 { "Mode" }
            dl.facts {
                dt { "Configured" } dd { span.mode.{"m-" (cfg.mode)} { (cfg.mode) } }
                dt { "Effective" } dd { span.mode.{"m-" (mode.effective)} { (mode.effective) } " since " (when(&crate::clock::rfc3339(mode.since_ms), now)) }
                @if let Some(note) = &mode.note { dt { "Why they differ" } dd { (note) } }
                dt { "Routing" } dd { "fingerprint " code { (fingerprint) } }
            }
        }
        section.panel #gate-runs {
            h2 { "Synthetic gate" }
            @match &gate_runs {
                Err(e) => p.notice.bad { (e.message) },
                Ok(runs) if runs.is_empty() => p.muted { "No synthetic gate run yet: " code { "orchctl synthetic-all" } },
                Ok(runs) => {
                    @if let Some(g) = runs.first() {
                        p {
                            "Latest run "
                            @if g.passed == g.total { span.state.s-done { "passed" } } @else { span.state.s-failed { "failed" } }
                            ", "
                            @if g.matches_current { "on the routing in force." }
                            @else { strong { "on an older routing" } ": run the gate again (" code { "orchctl synthetic-all" } ")." }
                        }
                    }
                    div.scroll {
                        table.runs {
                            thead { tr { th { "When" } th { "Run" } th { "Verdict" } th { "Fingerprint" } th { "Current?" } } }
                            tbody {
                                @for g in runs {
                                    tr.gate-run data-current=(g.matches_current) {
                                        td { (when(&g.at, now)) }
                                        td { @match &g.label { Some(l) => { "fixture " code { (l) } }, None => "all fixtures" } }
                                        td {
                                            @if g.passed == g.total { span.state.s-done { "passed" } } @else { span.state.s-failed { "failed" } }
                                            " " (g.passed) "/" (g.total)
                                        }
                                        td { code { (g.fingerprint) } }
                                        td { @if g.matches_current { "yes" } @else { "no" } }
                                    }
                                }
                            }
                        }
                    }
                    p.muted { "The newest " (GATE_RUNS) " runs. The routing in force has fingerprint " code { (fingerprint) } "." }
                }
            }
        }
        section.panel {
            div.section-head {
                h2 { "Shadow summary" }
                form.inline method="get" action="/console/rollout" {
                    label { "Window "
                        select name="window" {
                            @for w in WINDOWS { option value=(w) selected[w == window] { (w) " h" } }
                            @if !WINDOWS.contains(&window) { option value=(window) selected { (window) " h" } }
                        }
                    }
                    button.secondary type="submit" { "Show" }
                }
            }
            @match &summary {
                Err(e) => p.notice.bad { (e.message) },
                Ok((as_of, s)) => {
                    p.muted.as-of { "As of " (when(&crate::clock::rfc3339(*as_of), now)) " (computed at most every " (SUMMARY_REUSE_MS / 1000) " s)." }
                    p.verdict {
                        @if s.passed { span.state.s-done { "passes" } } @else { span.state.s-failed { "does not pass" } }
                        " " (s.verdict)
                    }
                    dl.facts {
                        dt { "Tasks" } dd { (s.total) " (at least " (s.min_tasks) " needed)" }
                        dt { "Would need approval" } dd { (s.would_require_approval) }
                        @if let Some(o) = &s.oldest { dt { "Oldest" } dd { (when(o, now)) } }
                        @if let Some(n) = &s.newest { dt { "Newest" } dd { (when(n, now)) } }
                    }
                    div.minis {
                        (counts_table("By state", &s.by_state))
                        (counts_table("Failures by code", &s.failures_by_code))
                        (counts_table("Per agent", &s.per_agent))
                    }
                    h3 { "Duration" }
                    @match &s.duration {
                        Some(dur) => (duration_chart(dur)),
                        None => p.muted { "No finished shadow tasks in the window." },
                    }
                }
            }
        }
        section.panel {
            h2 { "Pending overrides" }
            @if pending_overrides.is_empty() { p.muted { "None." } }
            @else {
                ul { @for o in &pending_overrides {
                    li { "to " strong { (o.mode) } " by " (o.by) ", " (when(&o.at, now)) ": " (o.reason) }
                } }
            }
        }
        section.panel {
            h2 { "Last reload" }
            @match &last_reload {
                None => p.muted { "No reload since the start." },
                Some(r) => {
                    p { (when(&r.at, now)) " by " (r.trigger) ": " strong { (format!("{:?}", r.outcome).to_lowercase()) } " — " (r.message) }
                    @if !r.changes.is_empty() { ul { @for c in &r.changes { li { (c) } } } }
                }
            }
            @if let Some(err) = &config_error { p.notice.bad { "Config error: " (err) } }
        }
    };
    html_response(
        StatusCode::OK,
        layout::page(d, &viewer, "Rollout", "/console/rollout", body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{NewTask, Store, SubmitPlan};
    use orchestrator_proto::task::TaskKind;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000_000;

    fn daemon(dir: &std::path::Path, clock: &ManualClock) -> Daemon {
        let store = Store::open(&dir.join("state.db")).unwrap();
        crate::daemon::Daemon::for_test(store, dir, TaskKind::Shadow, clock.clock())
    }

    async fn shadow_task(d: &Daemon, id: &str) {
        let at = d.clock.now_ms();
        d.store
            .submit(SubmitPlan {
                task: NewTask {
                    id: id.into(),
                    kind: TaskKind::Shadow,
                    goal: "fix the bug".into(),
                    workspace_dir: None,
                    required_capabilities: Vec::new(),
                    submitted_by: "alice".into(),
                    harness: false,
                    created_ms: at,
                    expires_ms: at + 3_600_000,
                },
                actor: "alice".into(),
                steps: Vec::new(),
            })
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_summary_is_reused_for_a_few_seconds_of_the_daemons_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(NOW);
        let d = daemon(dir.path(), &clock);
        let cache = SummaryCache::default();
        shadow_task(&d, "S1").await;
        let (at, first) = cache.get(&d, 24).await.unwrap();
        assert_eq!((at, first.total), (NOW, 1));

        shadow_task(&d, "S2").await;
        clock.advance(Duration::from_millis((SUMMARY_REUSE_MS - 1) as u64));
        let (at, again) = cache.get(&d, 24).await.unwrap();
        assert_eq!((at, again.total), (NOW, 1), "reused, with its time");
        // Another window is its own summary.
        let (_, other) = cache.get(&d, 1).await.unwrap();
        assert_eq!(other.total, 2);

        clock.advance(Duration::from_millis(1));
        let (at, fresh) = cache.get(&d, 24).await.unwrap();
        assert_eq!((at, fresh.total), (NOW + SUMMARY_REUSE_MS, 2));
        d.store.close();
    }
}
