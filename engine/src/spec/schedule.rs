//! `schedule` and `timezone`: when `run-pipeline schedule` runs a pipeline,
//! parsed once when the config is loaded.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::error::{Error, Result};

/// A parsed `schedule` read in its `timezone`.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    timezone: Tz,
}

impl CronSchedule {
    /// Parses a 5-field cron expression, or 6 fields with leading seconds
    /// (or an alias such as `@hourly`),
    /// in `timezone` (an IANA name; UTC when `None`). Errors name the
    /// `schedule` or `timezone` key.
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(Error::config(
                "schedule",
                None,
                format!(
                    "\"{expr}\" has {fields} fields; use 5 (minute hour day month weekday) \
                     or 6 (seconds first), e.g. \"*/10 * * * *\""
                ),
            ));
        }
        let cron = Cron::from_str(expr).map_err(|e| {
            Error::config(
                "schedule",
                None,
                format!("\"{expr}\" is not a valid cron expression: {e}"),
            )
        })?;
        let timezone = match timezone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                Error::config(
                    "timezone",
                    None,
                    format!("\"{name}\" is not an IANA time zone such as \"Europe/Paris\""),
                )
            })?,
        };
        let schedule = CronSchedule { cron, timezone };
        // croner accepts days no month has (`0 0 30 2 *`): such a schedule
        // would wait forever. Any real one fires within a few years.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(Error::config(
                "schedule",
                None,
                format!(
                    "\"{expr}\" never fires: no date matches its day-of-month, month and \
                     day-of-week fields (e.g. February 30th)"
                ),
            ));
        }
        Ok(schedule)
    }

    /// `slot` as a time in the schedule's zone, for messages.
    pub fn local(&self, slot: DateTime<Utc>) -> String {
        let local = slot.with_timezone(&self.timezone);
        if self.timezone == Tz::UTC {
            local.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        } else {
            format!(
                "{} ({} UTC)",
                local.format("%Y-%m-%d %H:%M:%S %Z"),
                slot.format("%Y-%m-%d %H:%M:%S")
            )
        }
    }

    /// The first slot strictly after `after`, `None` if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.timezone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether a slot fell strictly between `last` and `now`: a missed run.
    pub fn missed(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.next_after(last).is_some_and(|slot| slot < now)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn five_and_six_fields() {
        let five = CronSchedule::parse("*/15 * * * *", None).unwrap();
        let t = utc(2026, 1, 1, 10, 7, 30);
        assert_eq!(five.next_after(t), Some(utc(2026, 1, 1, 10, 15, 0)));
        let six = CronSchedule::parse("*/10 * * * * *", None).unwrap();
        assert_eq!(six.next_after(t), Some(utc(2026, 1, 1, 10, 7, 40)));
    }

    #[test]
    fn timezone_shifts_slots() {
        // 09:00 in Paris is 08:00 UTC in winter.
        let paris = CronSchedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        let t = utc(2026, 1, 1, 0, 0, 0);
        assert_eq!(paris.next_after(t), Some(utc(2026, 1, 1, 8, 0, 0)));
    }

    #[test]
    fn rejects_bad_expressions_and_zones() {
        for (expr, tz, path) in [
            ("* * *", None, "schedule"),
            ("* * * * * * * *", None, "schedule"),
            ("60 * * * *", None, "schedule"),
            ("0 0 30 2 *", None, "schedule"),
            ("0 0 31 4,6,9,11 *", None, "schedule"),
            ("* * * * *", Some("Nowhere/Town"), "timezone"),
        ] {
            match CronSchedule::parse(expr, tz) {
                Err(Error::Config { path: p, .. }) => assert_eq!(p, path, "{expr}"),
                other => panic!("{expr}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn detects_missed_slots() {
        let hourly = CronSchedule::parse("0 * * * *", None).unwrap();
        let last = utc(2026, 1, 1, 10, 0, 0);
        assert!(!hourly.missed(last, utc(2026, 1, 1, 10, 59, 0)));
        assert!(hourly.missed(last, utc(2026, 1, 1, 12, 30, 0)));
    }
}
