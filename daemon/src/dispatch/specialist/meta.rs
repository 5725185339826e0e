//! The metadata file a specialist may leave at `$ORCH_META_FILE`: one JSON object with `usage`
//! (what it used), `retryAfter` (when to try again, RFC 3339 or seconds) and `reason`. Read after
//! the specialist ended; a malformed or oversized file is a warning on the task, never a failure.

use orchestrator_proto::task::Usage;
use serde::Deserialize;
use std::io::Read;
use std::path::Path;

/// The file's name in the task's directory.
pub const META_FILE: &str = "meta.json";
/// Largest file read; a bigger one is ignored with a warning.
pub const META_CAP: u64 = 64 * 1024;

/// What a specialist said about its run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub usage: Option<Usage>,
    /// Milliseconds since the epoch.
    pub retry_after_ms: Option<i64>,
    pub reason: Option<String>,
    /// Why (part of) the file was ignored.
    pub warning: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMeta {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    retry_after: Option<RetryAfter>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RetryAfter {
    Seconds(f64),
    Time(String),
}

/// Longest reason kept, in characters.
const REASON_CHARS: usize = 1024;
/// Longest model name kept: it labels the metrics and the summaries' usage by model.
const MODEL_CHARS: usize = 128;

/// A model name as providers write them (`claude-sonnet-4.5`, `gpt-4o`, `models/gemini:flash`).
fn model_name_ok(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= MODEL_CHARS
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/@+-".contains(c))
}

fn warned(warning: String) -> Meta {
    Meta {
        warning: Some(warning),
        ..Meta::default()
    }
}

/// Read the file at `path`, if the specialist wrote one. `now_ms` anchors a `retryAfter` in seconds.
pub fn read(path: &Path, now_ms: i64) -> Meta {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Meta::default(),
        Err(e) => return warned(format!("cannot read ORCH_META_FILE: {e}")),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(META_CAP + 1).read_to_end(&mut bytes) {
        return warned(format!("cannot read ORCH_META_FILE: {e}"));
    }
    if bytes.len() as u64 > META_CAP {
        return warned(format!(
            "ORCH_META_FILE is larger than {} KiB and was ignored",
            META_CAP / 1024
        ));
    }
    parse(&bytes, now_ms)
}

/// The meta file's content, checked.
pub fn parse(bytes: &[u8], now_ms: i64) -> Meta {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Meta::default();
    }
    let raw: RawMeta = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => return warned(format!("ORCH_META_FILE is not a valid meta object: {e}")),
    };
    let mut meta = Meta {
        reason: raw
            .reason
            .map(|r| r.trim().chars().take(REASON_CHARS).collect::<String>())
            .filter(|r| !r.is_empty()),
        ..Meta::default()
    };
    match raw.usage {
        Some(u) if u.cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) => {
            meta.warning =
                Some("ORCH_META_FILE: usage.costUsd must be a number ≥ 0; usage ignored".into());
        }
        Some(mut u) if u.model.as_deref().is_some_and(|m| !model_name_ok(m)) => {
            u.model = None;
            meta.usage = Some(u);
            meta.warning = Some(format!(
                "ORCH_META_FILE: usage.model must be 1 to {MODEL_CHARS} letters, digits or ._:/@+-; \
                 the usage was kept without it"
            ));
        }
        u => meta.usage = u,
    }
    match raw.retry_after {
        None => {}
        Some(RetryAfter::Seconds(s)) if s.is_finite() && s >= 0.0 => {
            let ms = (s * 1000.0).min(i64::MAX as f64 / 2.0) as i64;
            meta.retry_after_ms = Some(now_ms.saturating_add(ms));
        }
        Some(RetryAfter::Time(t)) => match humantime::parse_rfc3339_weak(t.trim())
            .ok()
            .and_then(|st| st.duration_since(std::time::UNIX_EPOCH).ok())
        {
            Some(d) => meta.retry_after_ms = Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            None => {
                meta.warning = Some(format!(
                "ORCH_META_FILE: retryAfter {t:?} is neither seconds nor an RFC 3339 time; ignored"
            ))
            }
        },
        Some(RetryAfter::Seconds(s)) => {
            meta.warning = Some(format!(
                "ORCH_META_FILE: retryAfter {s} must be seconds ≥ 0; ignored"
            ))
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn usage_and_retry_after_in_seconds() {
        let m = parse(
            br#"{"usage":{"model":"m1","inputTokens":10,"outputTokens":5,"costUsd":0.25},"retryAfter":3,"reason":"limit"}"#,
            NOW,
        );
        let u = m.usage.unwrap();
        assert_eq!(u.model.as_deref(), Some("m1"));
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_tokens),
            (Some(10), Some(5), None)
        );
        assert_eq!(u.cost_usd, Some(0.25));
        assert_eq!(m.retry_after_ms, Some(NOW + 3000));
        assert_eq!(m.reason.as_deref(), Some("limit"));
        assert_eq!(m.warning, None);
    }

    #[test]
    fn retry_after_as_a_time() {
        let m = parse(br#"{"retryAfter":"2027-01-15T08:00:00Z"}"#, 0);
        assert_eq!(m.retry_after_ms, Some(1_800_000_000_000));
    }

    #[test]
    fn malformed_is_a_warning() {
        for bad in [
            &b"{not json"[..],
            br#"{"usage":{"tokens":1}}"#,
            br#"[1,2]"#,
            br#"{"usage":{"costUsd":-1}}"#,
        ] {
            let m = parse(bad, NOW);
            assert!(m.warning.is_some(), "{}", String::from_utf8_lossy(bad));
            assert_eq!(m.usage, None);
        }
        let m = parse(br#"{"retryAfter":"soon"}"#, NOW);
        assert!(m.warning.unwrap().contains("retryAfter"));
        assert_eq!(m.retry_after_ms, None);
    }

    #[test]
    fn empty_or_missing_is_nothing() {
        assert_eq!(parse(b"  \n", NOW), Meta::default());
        assert_eq!(
            read(Path::new("/nonexistent/meta.json"), NOW),
            Meta::default()
        );
    }

    #[test]
    fn a_model_name_is_kept_only_as_providers_write_them() {
        for good in [
            "claude-sonnet-4.5",
            "gpt-4o",
            "models/gemini:flash",
            "org@ft+v2_1",
        ] {
            let m = parse(
                format!(r#"{{"usage":{{"model":"{good}"}}}}"#).as_bytes(),
                NOW,
            );
            assert_eq!(m.usage.unwrap().model.as_deref(), Some(good));
            assert_eq!(m.warning, None);
        }
        let long = "m".repeat(MODEL_CHARS + 1);
        for bad in ["", "two words", "tab\\tname", long.as_str()] {
            let m = parse(
                format!(r#"{{"usage":{{"model":"{bad}","inputTokens":7}}}}"#).as_bytes(),
                NOW,
            );
            let u = m.usage.unwrap();
            assert_eq!(u.model, None, "{bad:?}");
            assert_eq!(u.input_tokens, Some(7), "the rest of the usage is kept");
            assert!(m.warning.unwrap().contains("usage.model"), "{bad:?}");
        }
    }

    #[test]
    fn oversized_is_ignored_with_a_warning() {
        let dir = std::env::temp_dir().join(format!("orch-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(META_FILE);
        let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(META_CAP as usize));
        std::fs::write(&path, big).unwrap();
        let m = read(&path, NOW);
        assert!(m.warning.unwrap().contains("64 KiB"));
        assert_eq!(m.reason, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
