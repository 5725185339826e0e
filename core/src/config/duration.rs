//! Durations as operators write them (`90s`, `30m`, `24h`, `7d`), and the validator's checks on
//! duration keys: any, greater than zero, or zero meaning "keep forever".

use super::validator::Validator;
use std::time::Duration;
use toml::Spanned;

/// The longest duration any key may hold. Durations are added to instants and to millisecond
/// timestamps; a century (`100y`, years of 365.25 days) keeps every such sum far from overflowing,
/// and nothing the daemon waits for is longer.
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 86_400);

/// Parse `90s`, `30m`, `24h`, `7d`; `0` is zero. At most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. 90s, 30m, 24h, 7d)"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "invalid duration {s:?}: longer than 100 years, the longest a duration may be"
        ));
    }
    Ok(d)
}

impl Validator<'_> {
    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(msg) => {
                    self.err(key, Some(v), msg);
                    default
                }
            },
        }
    }

    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, value, default);
        if d.is_zero() {
            self.err(key, value, "must be greater than zero");
            return default;
        }
        d
    }

    /// A retention period; `0` keeps forever, which is `None`.
    pub(super) fn retention(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Option<Duration> {
        let d = self.duration(key, value, default);
        (!d.is_zero()).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("100y").map(|d| d <= MAX_DURATION), Ok(true));
        let long = parse_duration("300000000000y").unwrap_err();
        assert!(long.contains("longer than 100 years"), "{long}");
        assert!(parse_duration("101y").is_err());
    }
}
