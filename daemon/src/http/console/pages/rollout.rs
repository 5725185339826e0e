//! Rollout: the configured and effective mode and why they differ, the synthetic gate, the shadow
//! summary over a chosen window (counts, failures by code, durations drawn as a small chart, per
//! agent) with its verdict, pending overrides, and the last reload with its outcome.

use crate::http::console::layout::{self, html_response, when};
use crate::http::console::session::Viewer;
use crate::http::Api;
use crate::tasks::gate;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use orchestrator_proto::message::DurationStats;
use std::collections::HashMap;
use std::sync::Arc;

/// Windows offered, in hours.
const WINDOWS: [u32; 5] = [1, 6, 24, 72, 168];

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
    let cfg = d.config();
    let mode = d.mode();
    // Each subsystem's part, as `status` shows it.
    let (latest_gate, pending_overrides) = (d.gate.latest_run(), d.gate.pending_overrides());
    let (last_reload, config_error) = (d.reload.last_reload(), d.reload.config_error());
    let default_window = (cfg.gate.shadow_window.as_secs() / 3600)
        .clamp(1, u64::from(gate::MAX_WINDOW_HOURS)) as u32;
    let window = q
        .get("window")
        .and_then(|w| w.parse::<u32>().ok())
        .filter(|w| (1..=gate::MAX_WINDOW_HOURS).contains(w))
        .unwrap_or(default_window);
    let summary = gate::shadow_summary(d, window).await;
    let fingerprint = cfg.routing_fingerprint();
    let body = html! {
        div.page-head { h1 { "Rollout" } }
        section.panel {
            h2 { "Mode" }
            dl.facts {
                dt { "Configured" } dd { span.mode.{"m-" (cfg.mode)} { (cfg.mode) } }
                dt { "Effective" } dd { span.mode.{"m-" (mode.effective)} { (mode.effective) } " since " (when(&crate::clock::rfc3339(mode.since_ms))) }
                @if let Some(note) = &mode.note { dt { "Why they differ" } dd { (note) } }
                dt { "Routing" } dd { "fingerprint " code { (fingerprint) } }
            }
        }
        section.panel {
            h2 { "Synthetic gate" }
            @match &latest_gate {
                None => p.muted { "No synthetic gate run yet: " code { "orchctl synthetic-all" } },
                Some(g) => table.kv {
                    tr { td { "Last run" } td { (when(&g.at)) @if let Some(l) = &g.label { " (" (l) ")" } } }
                    tr { td { "Verdict" } td {
                        @if g.passed == g.total { span.state.s-done { "passed" } } @else { span.state.s-failed { "failed" } }
                        " " (g.passed) "/" (g.total) " fixtures"
                    } }
                    tr { td { "Fingerprint" } td { code { (g.fingerprint) } } }
                    tr { td { "Still current?" } td {
                        @if g.fingerprint == fingerprint { "yes: the routing has not changed since" }
                        @else { strong { "no" } ": the routing changed since; run the gate again" }
                    } }
                },
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
                Ok(s) => {
                    p.verdict {
                        @if s.passed { span.state.s-done { "passes" } } @else { span.state.s-failed { "does not pass" } }
                        " " (s.verdict)
                    }
                    dl.facts {
                        dt { "Tasks" } dd { (s.total) " (at least " (s.min_tasks) " needed)" }
                        dt { "Would need approval" } dd { (s.would_require_approval) }
                        @if let Some(o) = &s.oldest { dt { "Oldest" } dd { (when(o)) } }
                        @if let Some(n) = &s.newest { dt { "Newest" } dd { (when(n)) } }
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
                    li { "to " strong { (o.mode) } " by " (o.by) ", " (when(&o.at)) ": " (o.reason) }
                } }
            }
        }
        section.panel {
            h2 { "Last reload" }
            @match &last_reload {
                None => p.muted { "No reload since the start." },
                Some(r) => {
                    p { (when(&r.at)) " by " (r.trigger) ": " strong { (format!("{:?}", r.outcome).to_lowercase()) } " — " (r.message) }
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
