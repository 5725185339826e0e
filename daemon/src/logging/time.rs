//! The time at the start of a text log line, as `tracing-subscriber`'s default writes it
//! (`2026-12-06T03:13:46.162653Z`, UTC, microseconds), written by `humantime` into one buffer
//! instead of seven padded integers through the formatting machinery: a seventh of the transition
//! log's thread at 64 connections (docs/BENCHMARKS.md, "The transition log's fields and time").

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The first second `humantime` cannot write: the year 10000.
const LAST_SECOND: u64 = 253_402_300_800;

/// UTC with microseconds, the default's format.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utc;

impl FormatTime for Utc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_time(SystemTime::now(), w)
    }
}

/// `t`, or, for a clock set before 1970 or after 9999, which `humantime` does not write, the
/// default's own reading of the time.
fn write_time(t: SystemTime, w: &mut Writer<'_>) -> fmt::Result {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() < LAST_SECOND => {
            write!(w, "{}", humantime::format_rfc3339_micros(t))
        }
        _ => tracing_subscriber::fmt::time::SystemTime.format_time(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn written(f: impl FnOnce(&mut Writer<'_>) -> fmt::Result) -> String {
        let mut s = String::new();
        f(&mut Writer::new(&mut s)).unwrap();
        s
    }

    /// Read around the default's reading of the same moment, the time is the default's to the
    /// microsecond's digits: same date, same second, same shape.
    #[test]
    fn the_time_is_written_as_the_default_writes_it() {
        // Three reads fall within one second at the latest on the second try.
        for _ in 0..3 {
            let before = written(|w| Utc.format_time(w));
            let theirs = written(|w| tracing_subscriber::fmt::time::SystemTime.format_time(w));
            let after = written(|w| Utc.format_time(w));
            if before[..20] != after[..20] {
                continue; // a second began meanwhile
            }
            assert_eq!(theirs[..20], before[..20], "{theirs} {before}");
            for s in [&before, &theirs, &after] {
                assert_eq!(s.len(), 27, "{s}");
                assert!(
                    s.ends_with('Z') && s[20..26].bytes().all(|b| b.is_ascii_digit()),
                    "{s}"
                );
            }
            assert!(before[20..26] <= after[20..26], "{before} {after}");
            return;
        }
        panic!("three reads of the time never fell within one second");
    }

    #[test]
    fn known_moments() {
        let at = |secs: u64, micros: u64| {
            written(|w| {
                write_time(
                    UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
                    w,
                )
            })
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_796_526_826, 162_653), "2026-12-06T03:13:46.162653Z");
        assert_eq!(at(LAST_SECOND - 1, 999_999), "9999-12-31T23:59:59.999999Z");
    }

    /// Outside what `humantime` writes, the line gets the default's reading of the time, and
    /// nothing panics.
    #[test]
    fn a_clock_before_1970_or_after_9999_gets_the_defaults_time() {
        for t in [
            UNIX_EPOCH - Duration::from_secs(1),
            UNIX_EPOCH + Duration::from_secs(LAST_SECOND),
        ] {
            let ours = written(|w| write_time(t, w));
            let theirs = written(|w| tracing_subscriber::fmt::time::SystemTime.format_time(w));
            assert_eq!(
                (ours.len(), &ours[..4]),
                (theirs.len(), &theirs[..4]),
                "{ours} {theirs}"
            );
        }
    }
}
