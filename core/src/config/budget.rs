//! `[budget]` (all agents together), `[agents.<id>] budget = { daily_usd, monthly_usd }` and the
//! top-level `timezone` the days and months of budgets are counted in (IANA name; default UTC).

use super::validator::Validator;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime as Zoned};
use serde::Deserialize;
use toml::Spanned;

/// Spending caps in US dollars; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

// Caps are checked finite where they are read.
impl Eq for Budget {}

impl Budget {
    pub fn is_set(&self) -> bool {
        self.daily_usd.is_some() || self.monthly_usd.is_some()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    daily_usd: Option<Spanned<f64>>,
    monthly_usd: Option<Spanned<f64>>,
}

/// The daemon's timezone, by name.
#[derive(Debug, Clone)]
pub struct Timezone {
    pub name: String,
    pub tz: TimeZone,
}

impl Default for Timezone {
    fn default() -> Self {
        Timezone {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        }
    }
}

/// The day and the month `now` falls in, in a timezone, as milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub day_start: i64,
    pub next_day: i64,
    pub month_start: i64,
    pub next_month: i64,
}

impl Timezone {
    /// The periods of `now_ms`; UTC's when the timezone cannot place it (years out of range).
    pub fn periods(&self, now_ms: i64) -> Periods {
        periods_in(&self.tz, now_ms)
            .or_else(|_| periods_in(&TimeZone::UTC, now_ms))
            .unwrap_or(Periods {
                day_start: now_ms,
                next_day: now_ms,
                month_start: now_ms,
                next_month: now_ms,
            })
    }
}

fn periods_in(tz: &TimeZone, now_ms: i64) -> Result<Periods, jiff::Error> {
    let now: Zoned = Timestamp::from_millisecond(now_ms)?.to_zoned_datetime(tz.clone());
    let day = now.start_of_day()?;
    let next_day = now.tomorrow()?.start_of_day()?;
    let month = now.first_of_month()?.start_of_day()?;
    let next_month = month.checked_add(1.month())?.start_of_day()?;
    let ms = |z: &Zoned| z.timestamp().as_millisecond();
    Ok(Periods {
        day_start: ms(&day),
        next_day: ms(&next_day),
        month_start: ms(&month),
        next_month: ms(&next_month),
    })
}

impl Validator<'_> {
    pub(super) fn budget(&mut self, key: &str, raw: Option<RawBudget>) -> Budget {
        let Some(raw) = raw else {
            return Budget::default();
        };
        let mut cap = |name: &str, v: Option<Spanned<f64>>| {
            let v = v?;
            let usd = *v.get_ref();
            if !usd.is_finite() || usd <= 0.0 {
                self.err(
                    &format!("{key}.{name}"),
                    Some(&v),
                    "must be a number of dollars above 0",
                );
                return None;
            }
            Some(usd)
        };
        Budget {
            daily_usd: cap("daily_usd", raw.daily_usd),
            monthly_usd: cap("monthly_usd", raw.monthly_usd),
        }
    }

    pub(super) fn timezone(&mut self, raw: Option<Spanned<String>>) -> Timezone {
        let Some(name) = raw else {
            return Timezone::default();
        };
        match TimeZone::get(name.get_ref()) {
            Ok(tz) => Timezone {
                name: name.get_ref().clone(),
                tz,
            },
            Err(e) => {
                self.err(
                    "timezone",
                    Some(&name),
                    format!(
                        "unknown timezone {:?} (an IANA name such as Europe/Paris): {e}",
                        name.get_ref()
                    ),
                );
                Timezone::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn days_and_months_follow_the_timezone() {
        let utc = Timezone::default();
        let p = utc.periods(ms("2026-12-31T23:30:00Z"));
        assert_eq!(p.day_start, ms("2026-12-31T00:00:00Z"));
        assert_eq!(p.next_day, ms("2027-01-01T00:00:00Z"));
        assert_eq!(p.month_start, ms("2026-12-01T00:00:00Z"));
        assert_eq!(p.next_month, ms("2027-01-01T00:00:00Z"));
        // Half past eleven in UTC is already the next day and month in Paris (UTC+1 in winter).
        let paris = Timezone {
            name: "Europe/Paris".into(),
            tz: TimeZone::get("Europe/Paris").unwrap(),
        };
        let p = paris.periods(ms("2026-12-31T23:30:00Z"));
        assert_eq!(p.day_start, ms("2026-12-31T23:00:00Z"));
        assert_eq!(p.month_start, ms("2026-12-31T23:00:00Z"));
        assert_eq!(p.next_month, ms("2027-01-31T23:00:00Z"));
    }
}
