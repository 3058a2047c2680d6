//! Job schedules: parsing a `schedule` string (cron, macro, `@every`, `@at`) in an IANA time
//! zone, and computing the instants at which it fires.
//!
//! Accepted forms:
//!
//! * 6-field cron with seconds: `sec min hour day-of-month month day-of-week`;
//! * 5-field cron: `min hour day-of-month month day-of-week` (second 0);
//! * macros: `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`,
//!   `@minutely`, `@secondly`;
//! * `@every <duration>` (humantime syntax, 100ms to 366 days, whole milliseconds), firing at
//!   every multiple of the period since the Unix epoch, independent of the time zone;
//! * `@at <RFC 3339 instant>`: a single fire.
//!
//! Day fields are read as Vixie cron and cronie read them: when both day-of-month and
//! day-of-week are restricted, a day matching either fires; a day field that starts with `*`
//! (`*`, `*/2`) or is `?` is unrestricted, and then a day must match both. Day-of-week runs
//! 0-7, both Sunday: `*/2` steps over 0-7 (Sunday, Tuesday, Thursday, Saturday) and `a/n` means
//! `a-7/n`.
//!
//! Cron schedules are evaluated on the local wall clock of the schedule's time zone. Across DST
//! changes they behave as in cronie, decided once per schedule when it is parsed:
//!
//! * A schedule whose second, minute or hour field starts with `*` (`*/15 * * * *`,
//!   `0 * * * *`, `@hourly`, `@secondly`) runs on real time: it fires at every instant whose
//!   local time matches. A local time that occurs twice (fall-back fold) fires in both passes,
//!   in order; one that does not exist (spring-forward gap) does not fire at all.
//! * Every other cron schedule (fixed values, lists or ranges in all three of second, minute
//!   and hour: `30 2 * * *`, `0 1-3 * * *`) keeps to its wall-clock times. Matching wall-clock
//!   times are visited in increasing order and mapped to UTC: a time that exists once maps to
//!   that instant; a time that exists twice maps to its first occurrence; a time that does not
//!   exist maps to the instant the gap ends. Instants that are not strictly after the previous
//!   fire are dropped. Because this mapping is monotonic, the fires are exactly the distinct
//!   mapped instants in increasing order: a skipped or repeated time fires once.
//!
//! Either way a schedule never fires the same instant twice and never goes backwards.

use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::quote::{clip_quoted_runs, quote};

mod cron;

use cron::CronSpec;

/// Shortest accepted `@every` period, in milliseconds.
const MIN_INTERVAL_MS: u64 = 100;

/// Longest accepted `@every` period, in milliseconds (366 days).
const MAX_INTERVAL_MS: u64 = 366 * 24 * 60 * 60 * 1000;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const NANOS_PER_MILLI: i128 = 1_000_000;

/// A parsed job schedule bound to a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    kind: Kind,
    /// No instant before this one ([`Schedule::bounded`]).
    start: Option<DateTime<Utc>>,
    /// No instant after this one.
    end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Cron(CronSpec),
    /// Fires at every multiple of the period since the Unix epoch, plus the
    /// offset (less than the period).
    Every {
        period_ms: u64,
        offset_ms: u64,
    },
    /// Fires once.
    At(DateTime<Utc>),
    /// Fixed delay: fires `delay_ms` after the previous fire ended (all its
    /// shards); the scheduler passes that end to [`Schedule::next_after`].
    After {
        delay_ms: u64,
    },
    /// Never fires by itself: only by `job.trigger` or as another job's
    /// `on_success` child.
    Manual,
}

/// One field of a cron expression, used to name the culprit in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CronField {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl CronField {
    fn name(self) -> &'static str {
        match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        }
    }

    /// Inclusive bounds of the numeric values accepted in this field.
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Second | CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    /// Human description of the accepted values, as used in error messages.
    pub fn allowed(self) -> &'static str {
        match self {
            CronField::Second | CronField::Minute => "0-59",
            CronField::Hour => "0-23",
            CronField::DayOfMonth => "1-31",
            CronField::Month => "1-12 or JAN-DEC",
            CronField::DayOfWeek => "0-7 or SUN-SAT",
        }
    }

    fn names(self) -> &'static [&'static str] {
        const MONTHS: &[&str] = &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ];
        const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        match self {
            CronField::Month => MONTHS,
            CronField::DayOfWeek => DAYS,
            _ => &[],
        }
    }

    /// Value of the first name in `names()` (JAN = 1, SUN = 0).
    fn first_name_value(self) -> u32 {
        match self {
            CronField::Month => 1,
            _ => 0,
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a schedule string was rejected. The text quotes the expression (cut to 80 characters,
/// see [`quote`]) and then gives the reason; it does not name the configuration field (the
/// caller adds that).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule is empty")]
    Empty,

    #[error(
        "{}: expected 5 or 6 fields (or a macro such as @hourly, @every 5m, @at <RFC 3339>), found {found}",
        quote(.expr)
    )]
    FieldCount { expr: String, found: usize },

    #[error("{}: {field} must be {}", quote(.expr), .field.allowed())]
    OutOfRange {
        expr: String,
        field: CronField,
        /// The offending value (saturated at `u32::MAX` when it does not even fit).
        value: u32,
    },

    #[error("{}: {field}: step must be at least 1", quote(.expr))]
    BadStep { expr: String, field: CronField },

    #[error("{}: {field}: range start {start} is after its end {end}", quote(.expr))]
    BadRange {
        expr: String,
        field: CronField,
        start: u32,
        end: u32,
    },

    #[error("{}: {field}: {} is not a number", quote(.expr), quote(.token))]
    NotANumber {
        expr: String,
        field: CronField,
        token: String,
    },

    #[error("{}: {field}: missing value in {}", quote(.expr), quote(.text))]
    MissingValue {
        expr: String,
        field: CronField,
        /// The whole text of the field.
        text: String,
    },

    #[error(
        "{}: {field}: '?' is only allowed on its own in day-of-month or day-of-week",
        quote(.expr)
    )]
    MisplacedQuestionMark { expr: String, field: CronField },

    #[error(
        "{}: unknown macro (use @yearly, @monthly, @weekly, @daily, @hourly, @minutely, @secondly, @every <duration>, @after <duration>, @at <RFC 3339 instant>, @manual)",
        quote(.expr)
    )]
    UnknownMacro { expr: String },

    #[error("{}: {name} takes no argument", quote(.expr))]
    UnexpectedArgument { expr: String, name: String },

    #[error("{}: {name} needs an argument, e.g. {example}", quote(.expr))]
    MissingArgument {
        expr: String,
        name: &'static str,
        example: &'static str,
    },

    #[error("{}: invalid duration {}: {reason}", quote(.expr), quote(.text))]
    BadDuration {
        expr: String,
        text: String,
        /// The duration parser's reason, its own quotes of the input cut to 80 characters.
        reason: String,
    },

    #[error("{}: interval must be at least 100ms", quote(.expr))]
    IntervalTooShort { expr: String },

    #[error("{}: interval must be at most 366 days", quote(.expr))]
    IntervalTooLong { expr: String },

    #[error("{}: interval must be a whole number of milliseconds", quote(.expr))]
    IntervalNotWholeMillis { expr: String },

    #[error("{}: offset {reason}", quote(.expr))]
    BadOffset { expr: String, reason: String },

    #[error("{}: invalid RFC 3339 instant {}", quote(.expr), quote(.text))]
    BadInstant { expr: String, text: String },

    /// No month named has a day-of-month named (`0 0 30 2 *`), and day-of-week does not add
    /// any days: the expression would never fire.
    #[error(
        "{}: never fires: no month it names has a day-of-month it names",
        quote(.expr)
    )]
    NeverFires { expr: String },

    /// An `@at` instant that is not after the time a definition is put.
    #[error(
        "{}: never fires: {} is in the past",
        quote(.expr),
        .at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )]
    AtPassed { expr: String, at: DateTime<Utc> },
}

impl Schedule {
    /// Parses `expr` (cron, macro, `@every <duration>` or `@at <RFC 3339>`) for time zone `tz`.
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let kind = if let Some(body) = trimmed.strip_prefix('@') {
            parse_macro(expr, body)?
        } else {
            Kind::Cron(CronSpec::parse(expr, trimmed)?)
        };
        Ok(Schedule {
            expr: expr.to_owned(),
            tz,
            kind,
            start: None,
            end: None,
        })
    }

    /// The same schedule firing only at instants from `start` through `end`
    /// (each inclusive, either open).
    pub fn bounded(self, start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Schedule {
        Schedule { start, end, ..self }
    }

    /// The first instant it may fire at, if bounded.
    pub fn start(&self) -> Option<DateTime<Utc>> {
        self.start
    }

    /// The last instant it may fire at, if bounded.
    pub fn end(&self) -> Option<DateTime<Utc>> {
        self.end
    }

    /// First fire instant strictly after `after`, or `None` when the schedule has no more fires
    /// (an `@at` instant that is not after `after`). A cron expression that can never match,
    /// such as `0 0 30 2 *`, does not parse.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Before the start, search from just before it, so that the start
        // itself may be an instant.
        let from = match self.start {
            Some(start) if after < start => start.checked_sub_signed(TimeDelta::nanoseconds(1))?,
            _ => after,
        };
        let next = match &self.kind {
            Kind::Cron(spec) => spec.next_after(self.tz, from),
            Kind::Every {
                period_ms,
                offset_ms,
            } => next_interval(*period_ms, *offset_ms, from),
            Kind::At(at) => (*at > from).then_some(*at),
            // The start itself is the first instant of a bounded one.
            Kind::After { .. } if after < from => Some(from + TimeDelta::nanoseconds(1)),
            Kind::After { delay_ms } => {
                from.checked_add_signed(TimeDelta::milliseconds(i64::try_from(*delay_ms).ok()?))
            }
            Kind::Manual => None,
        }?;
        match self.end {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// Refuses an `@at` instant that is not after `now`: a job put with it would never fire.
    /// Only a definition being put is checked this way; a stored one whose instant has passed
    /// stays valid.
    pub fn check_upcoming(&self, now: DateTime<Utc>) -> Result<(), ScheduleError> {
        match self.kind {
            Kind::At(at) if at <= now => Err(ScheduleError::AtPassed {
                expr: self.expr.clone(),
                at,
            }),
            _ => Ok(()),
        }
    }

    /// Up to `n` successive fire instants strictly after `after`, in increasing order.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        // A fixed delay's later instants depend on when each fire ends.
        let n = if self.fixed_delay().is_some() {
            n.min(1)
        } else {
            n
        };
        let mut out = Vec::with_capacity(n.min(1024));
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(next) => {
                    out.push(next);
                    cursor = next;
                }
                None => break,
            }
        }
        out
    }

    /// The schedule text exactly as given to [`Schedule::parse`].
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// Whether it never fires by itself (`@manual`).
    pub fn is_manual(&self) -> bool {
        self.kind == Kind::Manual
    }

    /// The delay of an `@after` schedule: its next instant is this long
    /// after the previous fire ended.
    pub fn fixed_delay(&self) -> Option<std::time::Duration> {
        match self.kind {
            Kind::After { delay_ms } => Some(std::time::Duration::from_millis(delay_ms)),
            _ => None,
        }
    }

    /// The time zone cron schedules are evaluated in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }
}

fn parse_macro(expr: &str, body: &str) -> Result<Kind, ScheduleError> {
    let (name, arg) = match body.split_once(char::is_whitespace) {
        Some((name, arg)) => (name, arg.trim()),
        None => (body, ""),
    };
    let name = name.to_ascii_lowercase();
    let cron = match name.as_str() {
        "yearly" | "annually" => "0 0 0 1 1 *",
        "monthly" => "0 0 0 1 * *",
        "weekly" => "0 0 0 * * 0",
        "daily" | "midnight" => "0 0 0 * * *",
        "hourly" => "0 0 * * * *",
        "minutely" => "0 * * * * *",
        "secondly" => "* * * * * *",
        "every" => return parse_every(expr, arg),
        "after" => return parse_after(expr, arg),
        "manual" if arg.is_empty() => return Ok(Kind::Manual),
        "manual" => {
            return Err(ScheduleError::UnexpectedArgument {
                expr: expr.to_owned(),
                name: "@manual".to_owned(),
            });
        }
        "at" => return parse_at(expr, arg),
        _ => {
            return Err(ScheduleError::UnknownMacro {
                expr: expr.to_owned(),
            });
        }
    };
    if !arg.is_empty() {
        return Err(ScheduleError::UnexpectedArgument {
            expr: expr.to_owned(),
            name: format!("@{name}"),
        });
    }
    Ok(Kind::Cron(CronSpec::parse(expr, cron)?))
}

/// `@after <delay>`: the first instant `delay` after the job is stored (or
/// at `start_at`), each later one `delay` after the fire before ended.
fn parse_after(expr: &str, arg: &str) -> Result<Kind, ScheduleError> {
    if arg.is_empty() {
        return Err(ScheduleError::MissingArgument {
            expr: expr.to_owned(),
            name: "@after",
            example: "@after 30s",
        });
    }
    Ok(Kind::After {
        delay_ms: parse_interval(expr, arg)?,
    })
}

/// The period of `@every` or the delay of `@after`: whole milliseconds,
/// 100 ms to 366 days.
fn parse_interval(expr: &str, arg: &str) -> Result<u64, ScheduleError> {
    let period = humantime::parse_duration(arg).map_err(|e| ScheduleError::BadDuration {
        expr: expr.to_owned(),
        text: arg.to_owned(),
        reason: clip_quoted_runs(&e.to_string()),
    })?;
    if period.subsec_nanos() % 1_000_000 != 0 {
        return Err(ScheduleError::IntervalNotWholeMillis {
            expr: expr.to_owned(),
        });
    }
    // Saturate: anything that does not fit in u64 milliseconds is far above the maximum.
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    if period_ms < MIN_INTERVAL_MS {
        return Err(ScheduleError::IntervalTooShort {
            expr: expr.to_owned(),
        });
    }
    if period_ms > MAX_INTERVAL_MS {
        return Err(ScheduleError::IntervalTooLong {
            expr: expr.to_owned(),
        });
    }
    Ok(period_ms)
}

fn parse_every(expr: &str, arg: &str) -> Result<Kind, ScheduleError> {
    if arg.is_empty() {
        return Err(ScheduleError::MissingArgument {
            expr: expr.to_owned(),
            name: "@every",
            example: "@every 5m",
        });
    }
    // `@every 10m offset 2m`: at 00:02, 00:12, 00:22, ...
    let (arg, offset) = match arg.split_once(" offset ") {
        Some((period, offset)) => (period.trim(), Some(offset.trim())),
        None => (arg, None),
    };
    let period_ms = parse_interval(expr, arg)?;
    let offset_ms = match offset {
        None => 0,
        Some(text) => parse_offset(expr, text, period_ms)?,
    };
    Ok(Kind::Every {
        period_ms,
        offset_ms,
    })
}

/// The offset of `@every <period> offset <offset>`: whole milliseconds, less
/// than the period.
fn parse_offset(expr: &str, text: &str, period_ms: u64) -> Result<u64, ScheduleError> {
    let bad = |reason: String| ScheduleError::BadOffset {
        expr: expr.to_owned(),
        reason,
    };
    let offset = humantime::parse_duration(text).map_err(|e| {
        bad(format!(
            "{} is not a duration: {}",
            quote(text),
            clip_quoted_runs(&e.to_string())
        ))
    })?;
    if offset.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad("must be a whole number of milliseconds".into()));
    }
    let offset_ms = u64::try_from(offset.as_millis()).unwrap_or(u64::MAX);
    if offset_ms >= period_ms {
        return Err(bad(format!(
            "must be less than the interval ({} is not less than {})",
            humantime::format_duration(offset),
            humantime::format_duration(std::time::Duration::from_millis(period_ms))
        )));
    }
    Ok(offset_ms)
}

fn parse_at(expr: &str, arg: &str) -> Result<Kind, ScheduleError> {
    if arg.is_empty() {
        return Err(ScheduleError::MissingArgument {
            expr: expr.to_owned(),
            name: "@at",
            example: "@at 2026-12-01T09:00:00+01:00",
        });
    }
    let at = DateTime::parse_from_rfc3339(arg).map_err(|_| ScheduleError::BadInstant {
        expr: expr.to_owned(),
        text: arg.to_owned(),
    })?;
    Ok(Kind::At(at.with_timezone(&Utc)))
}

/// Smallest `k * period + offset` (since the Unix epoch) strictly after `after`.
fn next_interval(period_ms: u64, offset_ms: u64, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let period_ns = i128::from(period_ms) * NANOS_PER_MILLI;
    let offset_ns = i128::from(offset_ms) * NANOS_PER_MILLI;
    let after_ns =
        i128::from(after.timestamp()) * NANOS_PER_SEC + i128::from(after.timestamp_subsec_nanos());
    let k = (after_ns - offset_ns).div_euclid(period_ns) + 1;
    let next_ns = k.checked_mul(period_ns)?.checked_add(offset_ns)?;
    let secs = i64::try_from(next_ns.div_euclid(NANOS_PER_SEC)).ok()?;
    let nanos = u32::try_from(next_ns.rem_euclid(NANOS_PER_SEC)).ok()?;
    DateTime::from_timestamp(secs, nanos)
}

#[cfg(test)]
mod tests {
    #[test]
    fn manual_never_fires_by_itself_and_after_counts_from_the_end_it_is_given() {
        let m = Schedule::parse("@manual", chrono_tz::UTC).unwrap();
        assert!(m.is_manual());
        assert_eq!(m.next_after(Utc::now()), None);
        assert!(m.upcoming(Utc::now(), 3).is_empty());
        assert!(matches!(
            Schedule::parse("@manual 5m", chrono_tz::UTC),
            Err(ScheduleError::UnexpectedArgument { .. })
        ));
        let a = Schedule::parse("@after 30s", chrono_tz::UTC).unwrap();
        assert_eq!(a.fixed_delay(), Some(std::time::Duration::from_secs(30)));
        let end = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 5, 1, 10, 0, 0).unwrap();
        assert_eq!(a.next_after(end), Some(end + TimeDelta::seconds(30)));
        assert_eq!(
            a.upcoming(end, 5).len(),
            1,
            "later instants depend on run times"
        );
        let start = end + TimeDelta::hours(1);
        let bounded = a.clone().bounded(Some(start), None);
        assert_eq!(
            bounded.next_after(end),
            Some(start),
            "the start is the first instant"
        );
        assert!(matches!(
            Schedule::parse("@after", chrono_tz::UTC),
            Err(ScheduleError::MissingArgument { .. })
        ));
        assert!(matches!(
            Schedule::parse("@after 10ms", chrono_tz::UTC),
            Err(ScheduleError::IntervalTooShort { .. })
        ));
    }

    use super::cron::{has_bit, resolve_local};
    use super::*;
    use chrono::Weekday;
    use chrono::{Datelike, NaiveDateTime, Timelike};
    use chrono_tz::America::New_York;
    use chrono_tz::Australia::Lord_Howe;
    use chrono_tz::Europe::Berlin;
    use chrono_tz::UTC;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad test instant {s}: {e}"))
            .with_timezone(&Utc)
    }

    fn sched(expr: &str, tz: Tz) -> Schedule {
        Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr} should parse: {e}"))
    }

    fn err(expr: &str) -> ScheduleError {
        match Schedule::parse(expr, UTC) {
            Ok(s) => panic!("{expr} should not parse: {s:?}"),
            Err(e) => e,
        }
    }

    fn walk(expr: &str, tz: Tz, after: &str, n: usize) -> Vec<DateTime<Utc>> {
        let all = sched(expr, tz).upcoming(utc(after), n);
        assert_strictly_increasing(utc(after), &all);
        all
    }

    fn assert_strictly_increasing(after: DateTime<Utc>, all: &[DateTime<Utc>]) {
        let mut prev = after;
        for t in all {
            assert!(*t > prev, "{t} is not after {prev} in {all:?}");
            prev = *t;
        }
    }

    fn instants(list: &[&str]) -> Vec<DateTime<Utc>> {
        list.iter().map(|s| utc(s)).collect()
    }

    // ---- parsing ----

    #[test]
    fn schedule_parses_every_form() {
        for expr in [
            "0 0 2 * * *",
            "*/5 * * * * *",
            "30 2 * * 1-5",
            "0 0 0 ? * MON-FRI",
            "0 0 0 1,15 jan-mar,dec ?",
            "5/10 1-30/7 */2 * * *",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@minutely",
            "@secondly",
            "@Daily",
            "@every 90s",
            "@every 1h30m",
            "@every 500ms",
            "@every 100ms",
            "@every 366days",
            "@at 2026-12-01T09:00:00+01:00",
            "@at 2026-12-01T08:00:00Z",
            "  0 0 2 * * *  ",
        ] {
            let s = sched(expr, Berlin);
            assert_eq!(s.expression(), expr);
            assert_eq!(s.timezone(), Berlin);
        }
    }

    #[test]
    fn schedule_macros_are_equivalent_to_cron() {
        let after = utc("2026-05-17T13:14:15.5Z");
        for (mac, cron) in [
            ("@yearly", "0 0 0 1 1 *"),
            ("@annually", "0 0 0 1 1 *"),
            ("@monthly", "0 0 0 1 * *"),
            ("@weekly", "0 0 0 * * 0"),
            ("@daily", "0 0 0 * * *"),
            ("@midnight", "0 0 0 * * *"),
            ("@hourly", "0 0 * * * *"),
            ("@minutely", "0 * * * * *"),
            ("@secondly", "* * * * * *"),
        ] {
            assert_eq!(
                sched(mac, Berlin).upcoming(after, 5),
                sched(cron, Berlin).upcoming(after, 5),
                "{mac}"
            );
        }
        assert_eq!(
            sched("@weekly", UTC).next_after(after),
            Some(utc("2026-05-24T00:00:00Z"))
        );
    }

    #[test]
    fn schedule_five_fields_means_second_zero() {
        assert_eq!(
            sched("30 2 * * 1-5", UTC).upcoming(utc("2026-05-15T03:00:00Z"), 2),
            instants(&["2026-05-18T02:30:00Z", "2026-05-19T02:30:00Z"])
        );
    }

    #[test]
    fn schedule_error_messages() {
        let cases: &[(&str, &str)] = &[
            ("61 * * * * *", "'61 * * * * *': second must be 0-59"),
            ("0 60 * * * *", "'0 60 * * * *': minute must be 0-59"),
            ("60 * * * *", "'60 * * * *': minute must be 0-59"),
            (
                "* * *",
                "'* * *': expected 5 or 6 fields (or a macro such as @hourly, @every 5m, @at <RFC 3339>), found 3",
            ),
            ("0 0 25 * * *", "'0 0 25 * * *': hour must be 0-23"),
            ("0 0 0 0 * *", "'0 0 0 0 * *': day-of-month must be 1-31"),
            ("0 0 0 32 * *", "'0 0 0 32 * *': day-of-month must be 1-31"),
            (
                "0 0 0 * 13 *",
                "'0 0 0 * 13 *': month must be 1-12 or JAN-DEC",
            ),
            (
                "0 0 0 * 0 *",
                "'0 0 0 * 0 *': month must be 1-12 or JAN-DEC",
            ),
            (
                "0 0 0 * * 8",
                "'0 0 0 * * 8': day-of-week must be 0-7 or SUN-SAT",
            ),
            (
                "0 0 0 * * 99999999999",
                "'0 0 0 * * 99999999999': day-of-week must be 0-7 or SUN-SAT",
            ),
            (
                "*/0 * * * * *",
                "'*/0 * * * * *': second: step must be at least 1",
            ),
            (
                "5-2 * * * * *",
                "'5-2 * * * * *': second: range start 5 is after its end 2",
            ),
            (
                "0 0 0 * * FRI-MON",
                "'0 0 0 * * FRI-MON': day-of-week: range start 5 is after its end 1",
            ),
            ("x * * * * *", "'x * * * * *': second: 'x' is not a number"),
            (
                "0 0 0 * * FUN",
                "'0 0 0 * * FUN': day-of-week: 'FUN' is not a number",
            ),
            (
                "0 0 JAN * * *",
                "'0 0 JAN * * *': hour: 'JAN' is not a number",
            ),
            (
                "*/x * * * * *",
                "'*/x * * * * *': second: 'x' is not a number",
            ),
            (
                "1,,2 * * * * *",
                "'1,,2 * * * * *': second: missing value in '1,,2'",
            ),
            (
                "1- * * * * *",
                "'1- * * * * *': second: missing value in '1-'",
            ),
            (
                "*/ * * * * *",
                "'*/ * * * * *': second: missing value in '*/'",
            ),
            (
                "? * * * * *",
                "'? * * * * *': second: '?' is only allowed on its own in day-of-month or day-of-week",
            ),
            (
                "0 0 0 ?/2 * *",
                "'0 0 0 ?/2 * *': day-of-month: '?' is only allowed on its own in day-of-month or day-of-week",
            ),
            (
                "@fortnightly",
                "'@fortnightly': unknown macro (use @yearly, @monthly, @weekly, @daily, @hourly, @minutely, @secondly, @every <duration>, @after <duration>, @at <RFC 3339 instant>, @manual)",
            ),
            ("@hourly 5", "'@hourly 5': @hourly takes no argument"),
            (
                "@every",
                "'@every': @every needs an argument, e.g. @every 5m",
            ),
            (
                "@at",
                "'@at': @at needs an argument, e.g. @at 2026-12-01T09:00:00+01:00",
            ),
            (
                "@every 10ms",
                "'@every 10ms': interval must be at least 100ms",
            ),
            ("@every 0s", "'@every 0s': interval must be at least 100ms"),
            (
                "@every 367days",
                "'@every 367days': interval must be at most 366 days",
            ),
            (
                "@every 1s 5us",
                "'@every 1s 5us': interval must be a whole number of milliseconds",
            ),
            (
                "@at tomorrow",
                "'@at tomorrow': invalid RFC 3339 instant 'tomorrow'",
            ),
            (
                "@at 2026-12-01T09:00:00",
                "'@at 2026-12-01T09:00:00': invalid RFC 3339 instant '2026-12-01T09:00:00'",
            ),
            ("", "schedule is empty"),
            ("   ", "schedule is empty"),
        ];
        for (expr, want) in cases {
            assert_eq!(err(expr).to_string(), *want, "for {expr:?}");
        }
        let bad_duration = err("@every 5 parsecs").to_string();
        assert!(
            bad_duration.starts_with("'@every 5 parsecs': invalid duration '5 parsecs': "),
            "{bad_duration}"
        );
    }

    #[test]
    fn schedule_error_variants() {
        assert_eq!(err(""), ScheduleError::Empty);
        assert!(matches!(
            err("* * *"),
            ScheduleError::FieldCount { found: 3, .. }
        ));
        assert!(matches!(
            err("* * * * * * *"),
            ScheduleError::FieldCount { found: 7, .. }
        ));
        assert!(matches!(
            err("61 * * * * *"),
            ScheduleError::OutOfRange {
                field: CronField::Second,
                value: 61,
                ..
            }
        ));
        assert!(matches!(
            err("0 0 0 * * 8"),
            ScheduleError::OutOfRange {
                field: CronField::DayOfWeek,
                value: 8,
                ..
            }
        ));
        assert!(matches!(
            err("*/0 * * * * *"),
            ScheduleError::BadStep {
                field: CronField::Second,
                ..
            }
        ));
        assert!(matches!(
            err("5-2 * * * * *"),
            ScheduleError::BadRange {
                field: CronField::Second,
                start: 5,
                end: 2,
                ..
            }
        ));
        assert!(matches!(
            err("x * * * * *"),
            ScheduleError::NotANumber { field: CronField::Second, ref token, .. } if token == "x"
        ));
        assert!(matches!(
            err("1,,2 * * * * *"),
            ScheduleError::MissingValue { .. }
        ));
        assert!(matches!(
            err("0 ? * * * *"),
            ScheduleError::MisplacedQuestionMark {
                field: CronField::Minute,
                ..
            }
        ));
        assert!(matches!(
            err("@fortnightly"),
            ScheduleError::UnknownMacro { .. }
        ));
        assert!(matches!(
            err("@daily now"),
            ScheduleError::UnexpectedArgument { .. }
        ));
        assert!(matches!(
            err("@every  "),
            ScheduleError::MissingArgument { name: "@every", .. }
        ));
        assert!(matches!(
            err("@every 5 parsecs"),
            ScheduleError::BadDuration { ref text, .. } if text == "5 parsecs"
        ));
        assert!(matches!(
            err("@every 10ms"),
            ScheduleError::IntervalTooShort { .. }
        ));
        assert!(matches!(
            err("@every 400days"),
            ScheduleError::IntervalTooLong { .. }
        ));
        assert!(matches!(
            err("@every 150us"),
            ScheduleError::IntervalNotWholeMillis { .. }
        ));
        assert!(matches!(
            err("@at tomorrow"),
            ScheduleError::BadInstant { ref text, .. } if text == "tomorrow"
        ));
    }

    // ---- cron semantics ----

    #[test]
    fn schedule_day_of_week_zero_and_seven_are_sunday() {
        let after = utc("2026-01-01T00:00:00Z");
        let zero = sched("0 0 0 * * 0", UTC).upcoming(after, 10);
        let seven = sched("0 0 0 * * 7", UTC).upcoming(after, 10);
        let sun = sched("0 0 0 * * sun", UTC).upcoming(after, 10);
        assert_eq!(zero.len(), 10);
        assert_eq!(zero, seven);
        assert_eq!(zero, sun);
        assert!(zero.iter().all(|t| t.weekday() == Weekday::Sun));
        assert_eq!(zero[0], utc("2026-01-04T00:00:00Z"));
        // 7 inside a range, and a named range ending in SUN.
        let fri_sun = sched("0 0 0 * * 5-7", UTC).upcoming(after, 30);
        assert_eq!(fri_sun, sched("0 0 0 * * FRI-SUN", UTC).upcoming(after, 30));
        assert!(
            fri_sun
                .iter()
                .all(|t| matches!(t.weekday(), Weekday::Fri | Weekday::Sat | Weekday::Sun))
        );
        assert_eq!(fri_sun.len(), 30);
    }

    #[test]
    fn schedule_mon_fri() {
        let after = utc("2026-01-01T00:00:00Z");
        let all = walk("0 0 9 * * MON-FRI", UTC, "2026-01-01T00:00:00Z", 50);
        assert_eq!(all.len(), 50);
        assert!(
            all.iter()
                .all(|t| (1..=5).contains(&t.weekday().num_days_from_sunday()))
        );
        assert_eq!(all, sched("0 9 * * 1-5", UTC).upcoming(after, 50));
        assert_eq!(all, sched("0 0 9 ? * mon-fri", UTC).upcoming(after, 50));
        // Jan 1 2026 is a Thursday.
        assert_eq!(
            &all[..3],
            &instants(&[
                "2026-01-01T09:00:00Z",
                "2026-01-02T09:00:00Z",
                "2026-01-05T09:00:00Z"
            ])[..]
        );
    }

    #[test]
    fn schedule_vixie_or_of_day_fields() {
        // Fires on the 13th (any weekday) and on every Friday.
        let all = walk("0 0 0 13 * 5", UTC, "2026-01-01T00:00:00Z", 8);
        assert_eq!(
            all,
            instants(&[
                "2026-01-02T00:00:00Z",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
                "2026-01-16T00:00:00Z",
                "2026-01-23T00:00:00Z",
                "2026-01-30T00:00:00Z",
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
            ])
        );
        // With one side unrestricted only the other one counts.
        assert_eq!(
            walk("0 0 0 13 * ?", UTC, "2026-01-01T00:00:00Z", 2),
            instants(&["2026-01-13T00:00:00Z", "2026-02-13T00:00:00Z"])
        );
        assert_eq!(
            walk("0 0 0 * * 5", UTC, "2026-01-01T00:00:00Z", 2),
            instants(&["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"])
        );
    }

    #[test]
    fn schedule_day_field_starting_with_star_is_unrestricted() {
        // Odd days AND Mondays: `*/2` starts with `*`, so it does not OR with day-of-week.
        assert_eq!(
            walk("0 0 */2 * 1", UTC, "2026-01-01T00:00:00Z", 5),
            instants(&[
                "2026-01-05T00:00:00Z",
                "2026-01-19T00:00:00Z",
                "2026-02-09T00:00:00Z",
                "2026-02-23T00:00:00Z",
                "2026-03-09T00:00:00Z",
            ])
        );
        // `*/1` is every day, unrestricted: Mondays only, not every day.
        assert_eq!(
            walk("0 0 */1 * 1", UTC, "2026-01-01T00:00:00Z", 3),
            instants(&[
                "2026-01-05T00:00:00Z",
                "2026-01-12T00:00:00Z",
                "2026-01-19T00:00:00Z",
            ])
        );
        // Both restricted: the 1st, the 15th, and every Monday.
        assert_eq!(
            walk("0 0 1,15 * 1", UTC, "2026-01-01T00:00:00Z", 8),
            instants(&[
                "2026-01-05T00:00:00Z",
                "2026-01-12T00:00:00Z",
                "2026-01-15T00:00:00Z",
                "2026-01-19T00:00:00Z",
                "2026-01-26T00:00:00Z",
                "2026-02-01T00:00:00Z",
                "2026-02-02T00:00:00Z",
                "2026-02-09T00:00:00Z",
            ])
        );
        // The same on the day-of-week side: the 13th when it is a Sunday (`*/7` is 0 and 7).
        assert_eq!(
            walk("0 0 13 * */7", UTC, "2026-01-01T00:00:00Z", 3),
            instants(&[
                "2026-09-13T00:00:00Z",
                "2026-12-13T00:00:00Z",
                "2027-06-13T00:00:00Z",
            ])
        );
        // 29 February on a Sunday: the longest wait there is, across 2100.
        assert_eq!(
            sched("0 0 0 29 2 */7", UTC).next_after(utc("2088-02-29T00:00:00Z")),
            Some(utc("2128-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn schedule_day_of_week_steps_run_over_zero_to_seven() {
        // `*/2` is 0,2,4,6: Sunday, Tuesday, Thursday, Saturday. 2026-01-01 is a Thursday.
        assert_eq!(
            walk("0 0 * * */2", UTC, "2026-01-01T00:00:00Z", 5),
            instants(&[
                "2026-01-03T00:00:00Z",
                "2026-01-04T00:00:00Z",
                "2026-01-06T00:00:00Z",
                "2026-01-08T00:00:00Z",
                "2026-01-10T00:00:00Z",
            ])
        );
        // `a/n` is `a-7/n`: `6/1` is Saturday and Sunday, `5/2` Friday and Sunday.
        assert_eq!(
            walk("0 0 * * 6/1", UTC, "2026-01-01T00:00:00Z", 4),
            instants(&[
                "2026-01-03T00:00:00Z",
                "2026-01-04T00:00:00Z",
                "2026-01-10T00:00:00Z",
                "2026-01-11T00:00:00Z",
            ])
        );
        assert_eq!(
            walk("0 0 * * 5/2", UTC, "2026-01-01T00:00:00Z", 3),
            instants(&[
                "2026-01-02T00:00:00Z",
                "2026-01-04T00:00:00Z",
                "2026-01-09T00:00:00Z",
            ])
        );
    }

    #[test]
    fn schedule_steps_ranges_lists() {
        assert_eq!(
            walk("5/20 * * * * *", UTC, "2026-01-01T00:00:00Z", 4),
            instants(&[
                "2026-01-01T00:00:05Z",
                "2026-01-01T00:00:25Z",
                "2026-01-01T00:00:45Z",
                "2026-01-01T00:01:05Z"
            ])
        );
        assert_eq!(
            walk("0 10-40/15,59 8 * * *", UTC, "2026-01-01T00:00:00Z", 5),
            instants(&[
                "2026-01-01T08:10:00Z",
                "2026-01-01T08:25:00Z",
                "2026-01-01T08:40:00Z",
                "2026-01-01T08:59:00Z",
                "2026-01-02T08:10:00Z"
            ])
        );
        assert_eq!(
            walk("0 0 0 1 jan,Jul *", UTC, "2026-03-01T00:00:00Z", 3),
            instants(&[
                "2026-07-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
                "2027-07-01T00:00:00Z"
            ])
        );
        assert_eq!(
            walk("0 0 0 31 * *", UTC, "2026-01-31T00:00:00Z", 3),
            instants(&[
                "2026-03-31T00:00:00Z",
                "2026-05-31T00:00:00Z",
                "2026-07-31T00:00:00Z"
            ])
        );
    }

    #[test]
    fn schedule_leap_day_and_impossible_dates() {
        let s = sched("0 0 0 29 2 *", UTC);
        assert_eq!(
            s.next_after(utc("2027-01-01T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
        // 2100 is not a leap year.
        assert_eq!(
            s.next_after(utc("2096-02-29T00:00:00Z")),
            Some(utc("2104-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn schedule_that_never_fires_is_refused() {
        for expr in [
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 0 30 2 *",
            "0 0 0 30-31 feb ?",
            // Day-of-week starting with `*` is ANDed, so it adds no days.
            "0 0 30 2 */7",
            "0 0 31 2,4 *",
        ] {
            assert_eq!(
                err(expr),
                ScheduleError::NeverFires {
                    expr: expr.to_owned()
                },
                "{expr}"
            );
            assert_eq!(
                err(expr).to_string(),
                format!("'{expr}': never fires: no month it names has a day-of-month it names")
            );
        }
        // A restricted day-of-week is ORed and fires on its own: Mondays in February.
        assert_eq!(
            walk("0 0 30 2 1", UTC, "2026-01-01T00:00:00Z", 2),
            instants(&["2026-02-02T00:00:00Z", "2026-02-09T00:00:00Z"])
        );
        // One month that has the day is enough.
        assert_eq!(
            walk("0 0 31 2,4,5 *", UTC, "2026-01-01T00:00:00Z", 2),
            instants(&["2026-05-31T00:00:00Z", "2027-05-31T00:00:00Z"])
        );
        assert_eq!(
            walk("0 0 30 2,4 *", UTC, "2026-01-01T00:00:00Z", 1),
            instants(&["2026-04-30T00:00:00Z"])
        );
        assert_eq!(
            walk("0 0 29 2 */7", UTC, "2026-01-01T00:00:00Z", 1),
            instants(&["2032-02-29T00:00:00Z"])
        );
    }

    #[test]
    fn schedule_errors_quote_at_most_80_characters() {
        // 5,000 characters: 2,500 fields.
        let expr = "1 ".repeat(2500);
        let head = &expr[..80];
        assert_eq!(
            err(&expr).to_string(),
            format!(
                "'{head}…': expected 5 or 6 fields (or a macro such as @hourly, @every 5m, @at <RFC 3339>), found 2500"
            )
        );
        let field = "x".repeat(300);
        let expr = format!("{field} * * * * *");
        assert_eq!(
            err(&expr).to_string(),
            format!(
                "'{}…': second: '{}…' is not a number",
                "x".repeat(80),
                "x".repeat(80)
            )
        );
        // The error value keeps the whole text; only its message is cut.
        assert!(matches!(
            err(&expr),
            ScheduleError::NotANumber { ref token, .. } if *token == field
        ));
        let list = format!("{}1,,2", "3,".repeat(100));
        assert_eq!(
            err(&format!("{list} * * * * *")).to_string(),
            format!(
                "'{}…': second: missing value in '{}…'",
                "3,".repeat(40),
                "3,".repeat(40)
            )
        );
        let unit = "y".repeat(200);
        let message = err(&format!("@every 5{unit}")).to_string();
        assert!(
            message.starts_with(&format!(
                "'@every 5{}…': invalid duration '5{}…': unknown time unit \"{}…\", supported units",
                "y".repeat(72),
                "y".repeat(79),
                "y".repeat(80)
            )),
            "{message}"
        );
        assert!(message.chars().count() < 400, "{message}");
        assert_eq!(
            err("@at 2026-13-01T00:00:00Z\0").to_string(),
            r"'@at 2026-13-01T00:00:00Z\0': invalid RFC 3339 instant '2026-13-01T00:00:00Z\0'"
        );
    }

    #[test]
    fn schedule_at_in_the_past_is_refused_only_when_checked() {
        let s = sched("@at 2026-03-01T10:00:00+01:00", Berlin);
        let at = utc("2026-03-01T09:00:00Z");
        assert_eq!(s.check_upcoming(at - TimeDelta::seconds(1)), Ok(()));
        for now in [at, at + TimeDelta::days(400)] {
            let e = s.check_upcoming(now).unwrap_err();
            assert_eq!(
                e,
                ScheduleError::AtPassed {
                    expr: "@at 2026-03-01T10:00:00+01:00".into(),
                    at
                }
            );
            assert_eq!(
                e.to_string(),
                "'@at 2026-03-01T10:00:00+01:00': never fires: 2026-03-01T09:00:00Z is in the past"
            );
        }
        // Parsing alone does not look at the clock, and other kinds have no such check.
        assert_eq!(s.next_after(at - TimeDelta::seconds(1)), Some(at));
        for expr in ["@hourly", "@every 5s", "0 0 29 2 *"] {
            assert_eq!(
                sched(expr, UTC).check_upcoming(utc("2999-01-01T00:00:00Z")),
                Ok(())
            );
        }
    }

    #[test]
    fn schedule_cron_whole_seconds_and_strictly_after() {
        let s = sched("* * * * * *", UTC);
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00.999Z")),
            Some(utc("2026-01-01T00:00:01Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:01Z")),
            Some(utc("2026-01-01T00:00:02Z"))
        );
        let s = sched("0 0 2 * * *", UTC);
        assert_eq!(
            s.next_after(utc("2026-01-01T02:00:00Z")),
            Some(utc("2026-01-02T02:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T01:59:59.5Z")),
            Some(utc("2026-01-01T02:00:00Z"))
        );
        // Year boundary.
        assert_eq!(
            sched("@yearly", UTC).next_after(utc("2026-12-31T23:59:59Z")),
            Some(utc("2027-01-01T00:00:00Z"))
        );
        for t in s.upcoming(utc("2026-01-01T00:00:00.123Z"), 5) {
            assert_eq!(t.timestamp_subsec_nanos(), 0);
        }
    }

    #[test]
    fn schedule_time_zone_is_applied() {
        // 02:00 Berlin is 01:00Z in winter and 00:00Z in summer.
        assert_eq!(
            walk("0 0 2 * * *", Berlin, "2026-01-10T12:00:00Z", 1),
            instants(&["2026-01-11T01:00:00Z"])
        );
        assert_eq!(
            walk("0 0 2 * * *", Berlin, "2026-07-10T12:00:00Z", 1),
            instants(&["2026-07-11T00:00:00Z"])
        );
    }

    #[test]
    fn schedule_extreme_instants_do_not_panic() {
        for expr in [
            "* * * * * *",
            "0 0 0 29 2 *",
            "@every 1h",
            "@at 2026-01-01T00:00:00Z",
        ] {
            for tz in [UTC, Berlin, New_York, chrono_tz::Pacific::Kiritimati] {
                let s = sched(expr, tz);
                let _ = s.upcoming(DateTime::<Utc>::MAX_UTC, 3);
                let _ = s.upcoming(DateTime::<Utc>::MIN_UTC, 3);
            }
        }
    }

    // ---- DST: Europe/Berlin 2026 (gap 03-29 02:00->03:00, fold 10-25 03:00->02:00) ----

    #[test]
    fn schedule_dst_berlin_daily_0230() {
        assert_eq!(
            walk("0 30 2 * * *", Berlin, "2026-03-27T12:00:00Z", 3),
            instants(&[
                "2026-03-28T01:30:00Z", // CET
                "2026-03-29T01:00:00Z", // 02:30 does not exist: end of gap, 03:00 CEST
                "2026-03-30T00:30:00Z", // CEST
            ])
        );
        assert_eq!(
            walk("0 30 2 * * *", Berlin, "2026-10-23T12:00:00Z", 3),
            instants(&[
                "2026-10-24T00:30:00Z", // CEST
                "2026-10-25T00:30:00Z", // first 02:30 (CEST) only
                "2026-10-26T01:30:00Z", // CET
            ])
        );
        let s = sched("0 30 2 * * *", Berlin);
        // From the first 02:30, and from inside the second pass, the second 02:30 is skipped.
        for after in [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:15:00Z",
            "2026-10-25T01:30:00Z",
        ] {
            assert_eq!(
                s.next_after(utc(after)),
                Some(utc("2026-10-26T01:30:00Z")),
                "{after}"
            );
        }
        assert_eq!(
            s.next_after(utc("2026-03-29T00:59:59Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn schedule_dst_berlin_every_15_minutes() {
        // Real time: the quarter-hours go on every 15 minutes through the gap, and both passes
        // of the repeated hour fire.
        assert_eq!(
            walk("0 */15 * * * *", Berlin, "2026-03-29T00:00:00Z", 6),
            instants(&[
                "2026-03-29T00:15:00Z", // 01:15 CET
                "2026-03-29T00:30:00Z",
                "2026-03-29T00:45:00Z",
                "2026-03-29T01:00:00Z", // 03:00 CEST; 02:00-02:45 do not exist
                "2026-03-29T01:15:00Z", // 03:15 CEST
                "2026-03-29T01:30:00Z",
            ])
        );
        assert_eq!(
            walk("0 */15 * * * *", Berlin, "2026-10-24T23:30:00Z", 11),
            instants(&[
                "2026-10-24T23:45:00Z", // 01:45 CEST
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:45:00Z", // 02:45 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET, the second pass
                "2026-10-25T01:15:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T01:45:00Z", // 02:45 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T02:15:00Z",
            ])
        );
        let s = sched("0 */15 * * * *", Berlin);
        assert_eq!(
            s.next_after(utc("2026-10-25T01:20:00Z")), // 02:20 CET, second pass
            Some(utc("2026-10-25T01:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-10-25T00:50:00Z")), // 02:50 CEST, first pass
            Some(utc("2026-10-25T01:00:00Z"))
        );
    }

    #[test]
    fn schedule_dst_berlin_hourly() {
        assert_eq!(
            walk("0 0 * * * *", Berlin, "2026-03-28T22:30:00Z", 5),
            instants(&[
                "2026-03-28T23:00:00Z", // 00:00 CET
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST; 02:00 does not exist
                "2026-03-29T02:00:00Z", // 04:00 CEST
                "2026-03-29T03:00:00Z",
            ])
        );
        assert_eq!(
            walk("0 0 * * * *", Berlin, "2026-10-24T21:30:00Z", 5),
            instants(&[
                "2026-10-24T22:00:00Z", // 00:00 CEST
                "2026-10-24T23:00:00Z", // 01:00 CEST
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
            ])
        );
        let s = sched("@hourly", Berlin);
        for (after, want) in [
            ("2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z"),
            ("2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"),
            ("2026-10-25T01:59:59Z", "2026-10-25T02:00:00Z"),
        ] {
            assert_eq!(s.next_after(utc(after)), Some(utc(want)), "{after}");
        }
    }

    #[test]
    fn schedule_dst_berlin_secondly_runs_on_real_time() {
        assert_eq!(
            walk("* * * * * *", Berlin, "2026-03-29T00:59:58Z", 3),
            instants(&[
                "2026-03-29T00:59:59Z", // 01:59:59 CET
                "2026-03-29T01:00:00Z", // 03:00:00 CEST
                "2026-03-29T01:00:01Z"
            ])
        );
        // Every UTC second fires once, the repeated hour's second pass included.
        assert_eq!(
            walk("* * * * * *", Berlin, "2026-10-25T00:59:58Z", 3),
            instants(&[
                "2026-10-25T00:59:59Z", // 02:59:59 CEST
                "2026-10-25T01:00:00Z", // 02:00:00 CET
                "2026-10-25T01:00:01Z"
            ])
        );
    }

    // ---- DST: America/New_York 2026 (gap 03-08 02:00->03:00, fold 11-01 02:00->01:00) ----

    #[test]
    fn schedule_dst_new_york_daily() {
        assert_eq!(
            walk("0 30 2 * * *", New_York, "2026-03-06T12:00:00Z", 3),
            instants(&[
                "2026-03-07T07:30:00Z", // EST
                "2026-03-08T07:00:00Z", // gap end, 03:00 EDT
                "2026-03-09T06:30:00Z", // EDT
            ])
        );
        assert_eq!(
            walk("0 30 2 * * *", New_York, "2026-10-30T12:00:00Z", 3),
            instants(&[
                "2026-10-31T06:30:00Z", // EDT
                "2026-11-01T07:30:00Z", // 02:30 is after the fold: EST
                "2026-11-02T07:30:00Z",
            ])
        );
        assert_eq!(
            walk("0 30 1 * * *", New_York, "2026-10-30T12:00:00Z", 3),
            instants(&[
                "2026-10-31T05:30:00Z", // EDT
                "2026-11-01T05:30:00Z", // first 01:30 (EDT) only
                "2026-11-02T06:30:00Z", // EST
            ])
        );
    }

    #[test]
    fn schedule_dst_new_york_every_15_minutes() {
        assert_eq!(
            walk("0 */15 * * * *", New_York, "2026-03-08T06:30:00Z", 4),
            instants(&[
                "2026-03-08T06:45:00Z", // 01:45 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT; 02:00-02:45 do not exist
                "2026-03-08T07:15:00Z",
                "2026-03-08T07:30:00Z",
            ])
        );
        assert_eq!(
            walk("0 */15 * * * *", New_York, "2026-11-01T05:30:00Z", 6),
            instants(&[
                "2026-11-01T05:45:00Z", // 01:45 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST, the second pass
                "2026-11-01T06:15:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T06:45:00Z",
                "2026-11-01T07:00:00Z", // 02:00 EST
            ])
        );
    }

    #[test]
    fn schedule_dst_new_york_hourly() {
        assert_eq!(
            walk("0 0 * * * *", New_York, "2026-03-08T04:30:00Z", 4),
            instants(&[
                "2026-03-08T05:00:00Z", // 00:00 EST
                "2026-03-08T06:00:00Z", // 01:00 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT; 02:00 does not exist
                "2026-03-08T08:00:00Z", // 04:00 EDT
            ])
        );
        assert_eq!(
            walk("0 0 * * * *", New_York, "2026-11-01T03:30:00Z", 4),
            instants(&[
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T07:00:00Z", // 02:00 EST
            ])
        );
    }

    #[test]
    fn schedule_real_time_is_decided_by_the_time_fields() {
        let real_time = |expr: &str| match sched(expr, UTC).kind {
            Kind::Cron(spec) => spec.real_time,
            other => panic!("{expr} is not cron: {other:?}"),
        };
        for expr in [
            "*/15 * * * *",
            "0 * * * *",
            "* 2 * * *",
            "* * * * * *",
            "*/5 30 2 * * *",
            "0 */30 * * * *",
            "0 0 *,3 * * *",
            "@hourly",
            "@minutely",
            "@secondly",
        ] {
            assert!(real_time(expr), "{expr} runs on real time");
        }
        for expr in [
            "30 2 * * *",
            "0 1-3 * * *",
            "0 0,30 2 * * *",
            "0 0 0 * * *",
            "0/15 2 * * *",
            "0 2 */2 * *",
            "0 2 * * */2",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
        ] {
            assert!(!real_time(expr), "{expr} keeps to wall-clock times");
        }
    }

    /// One case of the DST table: the next fires after `after`, worked out by hand.
    struct DstCase {
        expr: &'static str,
        tz: Tz,
        after: &'static str,
        want: &'static [&'static str],
    }

    /// Around both 2026 transitions in three zones:
    /// America/New_York: 03-08 02:00 EST (-5) -> 03:00 EDT (-4) at 07:00Z;
    ///                   11-01 02:00 EDT -> 01:00 EST at 06:00Z (01:00-01:59 twice).
    /// Europe/Berlin:    03-29 02:00 CET (+1) -> 03:00 CEST (+2) at 01:00Z;
    ///                   10-25 03:00 CEST -> 02:00 CET at 01:00Z (02:00-02:59 twice).
    /// Australia/Lord_Howe, a 30-minute shift:
    ///                   04-05 02:00 LHDT (+11) -> 01:30 LHST (+10:30) at 04-04 15:00Z
    ///                   (01:30-01:59 twice: 14:30-14:59Z and 15:00-15:29Z);
    ///                   10-04 02:00 LHST -> 02:30 LHDT at 10-03 15:30Z (02:00-02:29 skipped).
    const DST_CASES: &[DstCase] = &[
        // Real time (a time field starts with `*`): both passes fire, a skipped time does not.
        DstCase {
            expr: "*/15 * * * *",
            tz: New_York,
            after: "2026-03-08T06:30:00Z",
            want: &[
                "2026-03-08T06:45:00Z", // 01:45 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T07:15:00Z",
            ],
        },
        DstCase {
            expr: "*/15 * * * *",
            tz: New_York,
            after: "2026-11-01T05:30:00Z",
            want: &[
                "2026-11-01T05:45:00Z", // 01:45 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T06:15:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T06:45:00Z",
                "2026-11-01T07:00:00Z", // 02:00 EST
            ],
        },
        DstCase {
            expr: "0 * * * *",
            tz: New_York,
            after: "2026-03-08T04:30:00Z",
            want: &[
                "2026-03-08T05:00:00Z", // 00:00 EST
                "2026-03-08T06:00:00Z", // 01:00 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T08:00:00Z",
            ],
        },
        DstCase {
            expr: "0 * * * *",
            tz: New_York,
            after: "2026-11-01T03:30:00Z",
            want: &[
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T07:00:00Z", // 02:00 EST
            ],
        },
        DstCase {
            expr: "*/15 * * * *",
            tz: Berlin,
            after: "2026-03-29T00:30:00Z",
            want: &[
                "2026-03-29T00:45:00Z", // 01:45 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST
                "2026-03-29T01:15:00Z",
            ],
        },
        DstCase {
            expr: "*/15 * * * *",
            tz: Berlin,
            after: "2026-10-25T00:30:00Z",
            want: &[
                "2026-10-25T00:45:00Z", // 02:45 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T01:15:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T01:45:00Z",
                "2026-10-25T02:00:00Z", // 03:00 CET
            ],
        },
        DstCase {
            expr: "0 * * * *",
            tz: Berlin,
            after: "2026-03-28T23:30:00Z",
            want: &[
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST
                "2026-03-29T02:00:00Z",
            ],
        },
        DstCase {
            expr: "0 * * * *",
            tz: Berlin,
            after: "2026-10-24T22:30:00Z",
            want: &[
                "2026-10-24T23:00:00Z", // 01:00 CEST
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
            ],
        },
        DstCase {
            expr: "0 */30 * * * *",
            tz: Lord_Howe,
            after: "2026-04-04T14:00:00Z",
            want: &[
                "2026-04-04T14:30:00Z", // 01:30 LHDT
                "2026-04-04T15:00:00Z", // 01:30 LHST
                "2026-04-04T15:30:00Z", // 02:00 LHST
                "2026-04-04T16:00:00Z",
            ],
        },
        DstCase {
            expr: "0 */30 * * * *",
            tz: Lord_Howe,
            after: "2026-10-03T14:30:00Z",
            want: &[
                "2026-10-03T15:00:00Z", // 01:30 LHST
                "2026-10-03T15:30:00Z", // 02:30 LHDT; 02:00 does not exist
                "2026-10-03T16:00:00Z",
            ],
        },
        DstCase {
            expr: "45 * * * *",
            tz: Lord_Howe,
            after: "2026-04-04T13:30:00Z",
            want: &[
                "2026-04-04T13:45:00Z", // 00:45 LHDT
                "2026-04-04T14:45:00Z", // 01:45 LHDT
                "2026-04-04T15:15:00Z", // 01:45 LHST
                "2026-04-04T16:15:00Z", // 02:45 LHST
            ],
        },
        DstCase {
            expr: "0 * * * *",
            tz: Lord_Howe,
            after: "2026-10-03T13:00:00Z",
            want: &[
                "2026-10-03T13:30:00Z", // 00:00 LHST
                "2026-10-03T14:30:00Z", // 01:00 LHST
                "2026-10-03T16:00:00Z", // 03:00 LHDT; 02:00 does not exist
            ],
        },
        // Months ahead, through summer time and into the repeated hour.
        DstCase {
            expr: "* 30 2 25 10 *",
            tz: Berlin,
            after: "2026-01-01T00:00:00Z",
            want: &[
                "2026-10-25T00:30:00Z", // 02:30:00 CEST
                "2026-10-25T00:30:01Z",
            ],
        },
        DstCase {
            expr: "* 30 2 25 10 *",
            tz: Berlin,
            after: "2026-10-25T00:30:58Z",
            want: &[
                "2026-10-25T00:30:59Z", // 02:30:59 CEST
                "2026-10-25T01:30:00Z", // 02:30:00 CET
                "2026-10-25T01:30:01Z",
            ],
        },
        // Fixed wall-clock times: once, at the gap's end or in the first pass.
        DstCase {
            expr: "30 2 * * *",
            tz: New_York,
            after: "2026-03-07T00:00:00Z",
            want: &[
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // gap end, 03:00 EDT
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ],
        },
        DstCase {
            expr: "30 2 * * *",
            tz: New_York,
            after: "2026-10-31T12:00:00Z",
            want: &[
                "2026-11-01T07:30:00Z", // 02:30 EST, after the repeated hour
                "2026-11-02T07:30:00Z",
            ],
        },
        DstCase {
            expr: "30 1 * * *",
            tz: New_York,
            after: "2026-10-31T00:00:00Z",
            want: &[
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT, first pass only
                "2026-11-02T06:30:00Z", // 01:30 EST
            ],
        },
        DstCase {
            expr: "30 2 * * *",
            tz: Berlin,
            after: "2026-03-28T12:00:00Z",
            want: &[
                "2026-03-29T01:00:00Z", // gap end, 03:00 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ],
        },
        DstCase {
            expr: "30 2 * * *",
            tz: Berlin,
            after: "2026-10-24T12:00:00Z",
            want: &[
                "2026-10-25T00:30:00Z", // 02:30 CEST, first pass only
                "2026-10-26T01:30:00Z", // 02:30 CET
            ],
        },
        DstCase {
            expr: "0 1-3 * * *",
            tz: New_York,
            after: "2026-03-08T00:00:00Z",
            want: &[
                "2026-03-08T06:00:00Z", // 01:00 EST
                "2026-03-08T07:00:00Z", // 02:00 (gap end) and 03:00 EDT: once
                "2026-03-09T05:00:00Z", // 01:00 EDT
                "2026-03-09T06:00:00Z",
            ],
        },
        DstCase {
            expr: "0 1-3 * * *",
            tz: New_York,
            after: "2026-11-01T00:00:00Z",
            want: &[
                "2026-11-01T05:00:00Z", // 01:00 EDT, first pass only
                "2026-11-01T07:00:00Z", // 02:00 EST
                "2026-11-01T08:00:00Z", // 03:00 EST
                "2026-11-02T06:00:00Z", // 01:00 EST
            ],
        },
        DstCase {
            expr: "0 1-3 * * *",
            tz: Berlin,
            after: "2026-03-28T23:30:00Z",
            want: &[
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 02:00 (gap end) and 03:00 CEST: once
                "2026-03-29T23:00:00Z", // 01:00 CEST
            ],
        },
        DstCase {
            expr: "0 1-3 * * *",
            tz: Berlin,
            after: "2026-10-24T22:30:00Z",
            want: &[
                "2026-10-24T23:00:00Z", // 01:00 CEST
                "2026-10-25T00:00:00Z", // 02:00 CEST, first pass only
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-26T00:00:00Z", // 01:00 CET
            ],
        },
        DstCase {
            expr: "0 0,30 1,2 * * *",
            tz: Lord_Howe,
            after: "2026-04-04T13:30:00Z",
            want: &[
                "2026-04-04T14:00:00Z", // 01:00 LHDT
                "2026-04-04T14:30:00Z", // 01:30 LHDT, first pass only
                "2026-04-04T15:30:00Z", // 02:00 LHST
                "2026-04-04T16:00:00Z", // 02:30 LHST
            ],
        },
        DstCase {
            expr: "0 0,30 1,2 * * *",
            tz: Lord_Howe,
            after: "2026-10-03T14:00:00Z",
            want: &[
                "2026-10-03T14:30:00Z", // 01:00 LHST
                "2026-10-03T15:00:00Z", // 01:30 LHST
                "2026-10-03T15:30:00Z", // 02:00 (gap end) and 02:30 LHDT: once
                "2026-10-04T14:00:00Z", // 01:00 LHDT
            ],
        },
        DstCase {
            expr: "15 2 * * *",
            tz: Lord_Howe,
            after: "2026-10-02T12:00:00Z",
            want: &[
                "2026-10-02T15:45:00Z", // 02:15 LHST
                "2026-10-03T15:30:00Z", // gap end, 02:30 LHDT
                "2026-10-04T15:15:00Z", // 02:15 LHDT
            ],
        },
        // Day fields: `*/2` is unrestricted, so ANDed with day-of-week; `1,15` is ORed.
        DstCase {
            expr: "0 0 */2 * 1",
            tz: Berlin,
            after: "2026-03-01T00:00:00Z",
            want: &[
                "2026-03-08T23:00:00Z", // Monday 03-09 00:00 CET
                "2026-03-22T23:00:00Z", // Monday 03-23
                "2026-04-12T22:00:00Z", // Monday 04-13 00:00 CEST
                "2026-04-26T22:00:00Z", // Monday 04-27
            ],
        },
        DstCase {
            expr: "0 0 1,15 * 1",
            tz: Berlin,
            after: "2026-03-25T00:00:00Z",
            want: &[
                "2026-03-29T22:00:00Z", // Monday 03-30 00:00 CEST
                "2026-03-31T22:00:00Z", // Wednesday 04-01
                "2026-04-05T22:00:00Z", // Monday 04-06
                "2026-04-12T22:00:00Z", // Monday 04-13
                "2026-04-14T22:00:00Z", // Wednesday 04-15
            ],
        },
        DstCase {
            expr: "0 0 * * 6/1",
            tz: New_York,
            after: "2026-03-06T12:00:00Z",
            want: &[
                "2026-03-07T05:00:00Z", // Saturday 00:00 EST
                "2026-03-08T05:00:00Z", // Sunday 00:00 EST, before the gap
                "2026-03-14T04:00:00Z", // Saturday 00:00 EDT
                "2026-03-15T04:00:00Z", // Sunday
            ],
        },
    ];

    #[test]
    fn schedule_dst_and_day_fields_table() {
        for case in DST_CASES {
            let want = instants(case.want);
            let got = walk(case.expr, case.tz, case.after, want.len());
            assert_eq!(
                got, want,
                "{} in {} after {}",
                case.expr, case.tz, case.after
            );
            // Starting from any of the fires gives the rest.
            for (i, at) in want.iter().enumerate() {
                assert_eq!(
                    sched(case.expr, case.tz).upcoming(*at, want.len() - i - 1),
                    want[i + 1..],
                    "{} in {} after {at}",
                    case.expr,
                    case.tz
                );
            }
        }
    }

    /// Reference implementation straight from the definition, minute by minute over a window.
    /// Real time: every UTC minute whose local time matches. Wall-clock times: every matching
    /// local minute mapped to UTC, keeping the distinct instants after `after`.
    fn reference(expr: &str, tz: Tz, after: DateTime<Utc>, hours: i64) -> Vec<DateTime<Utc>> {
        let Kind::Cron(spec) = sched(expr, tz).kind else {
            panic!("not cron")
        };
        let matches = |wall: NaiveDateTime| {
            has_bit(spec.seconds, wall.second())
                && has_bit(spec.minutes, wall.minute())
                && has_bit(spec.hours, wall.hour())
                && has_bit(spec.months, wall.month())
                && spec.day_matches(wall.date())
        };
        let start = after.naive_utc() - TimeDelta::hours(16);
        let start = start.with_nanosecond(0).unwrap_or(start);
        let end = start + TimeDelta::hours(hours);
        let mut out: Vec<DateTime<Utc>> = Vec::new();
        let mut minute = start;
        while minute < end {
            if spec.real_time {
                let t = minute.and_utc();
                if t > after && matches(t.with_timezone(&tz).naive_local()) {
                    out.push(t);
                }
            } else if matches(minute)
                && let Some(t) = resolve_local(tz, minute)
                && t > after
                && out.last().is_none_or(|last| t > *last)
            {
                out.push(t);
            }
            minute += TimeDelta::seconds(60);
        }
        out
    }

    #[test]
    fn schedule_dst_matches_reference_definition() {
        let zones = [
            Berlin,
            New_York,
            Lord_Howe,                    // 30-minute DST shift
            chrono_tz::America::Santiago, // transitions at midnight
            chrono_tz::Pacific::Apia,     // skipped a whole day in 2011
        ];
        let exprs = [
            "0 30 2 * * *",
            "0 */15 * * * *",
            "0 */30 * * * *",
            "0 0 * * * *",
            "0 * * * * *",
            "0 45 * * * *",
            "0 0 0 * * *",
            "0 45 1,2,3 * * *",
            "0 0,30 1-3 * * *",
        ];
        let afters = [
            "2026-03-28T20:00:00Z",
            "2026-10-24T20:00:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:10:00Z",
            "2026-03-08T04:00:00Z",
            "2026-11-01T05:40:00Z",
            "2026-11-01T06:20:00Z",
            "2026-04-04T14:00:00Z",
            "2026-04-04T15:40:00Z",
            "2026-10-03T15:00:00Z",
            "2026-04-05T02:30:00Z",
            "2026-04-05T03:30:00Z",
            "2026-09-06T03:00:00Z",
            "2011-12-29T09:00:00Z",
            "2011-12-30T09:59:00Z",
        ];
        for tz in zones {
            for expr in exprs {
                for after in afters {
                    let after = utc(after);
                    let want = reference(expr, tz, after, 96);
                    assert!(want.len() >= 2, "{expr} in {tz} after {after}: {want:?}");
                    let got = sched(expr, tz).upcoming(after, want.len());
                    assert_eq!(got, want, "{expr} in {tz} after {after}");
                }
            }
        }
    }

    // ---- @every and @at ----

    #[test]
    fn schedule_every_with_an_offset_is_shifted_by_it() {
        let s = sched("@every 10m offset 2m", Berlin);
        assert_eq!(
            walk("@every 10m offset 2m", Berlin, "2026-05-01T10:02:00Z", 3),
            instants(&[
                "2026-05-01T10:12:00Z",
                "2026-05-01T10:22:00Z",
                "2026-05-01T10:32:00Z"
            ])
        );
        assert_eq!(
            s.next_after(utc("2026-05-01T10:01:59.999Z")),
            Some(utc("2026-05-01T10:02:00Z"))
        );
        assert_eq!(
            walk("@every 1d offset 6h", UTC, "2026-05-01T07:00:00Z", 2),
            instants(&["2026-05-02T06:00:00Z", "2026-05-03T06:00:00Z"])
        );
        let t = utc("2026-05-01T10:00:00.5Z");
        assert_eq!(
            sched("@every 1s offset 0s", UTC).upcoming(t, 3),
            sched("@every 1s", UTC).upcoming(t, 3)
        );
        for (expr, message) in [
            (
                "@every 10m offset 10m",
                "'@every 10m offset 10m': offset must be less than the interval (10m is not less than 10m)",
            ),
            (
                "@every 10m offset 1.5ms",
                "'@every 10m offset 1.5ms': offset must be a whole number of milliseconds",
            ),
            (
                "@every 10m offset soon",
                "'@every 10m offset soon': offset 'soon' is not a duration: ",
            ),
        ] {
            let e = err(expr).to_string();
            assert!(e.starts_with(message), "{expr}: {e}");
        }
    }

    #[test]
    fn schedule_bounds_keep_instants_between_start_and_end_inclusive() {
        let s = sched("@every 1h", UTC).bounded(
            Some(utc("2026-05-01T10:00:00Z")),
            Some(utc("2026-05-01T12:00:00Z")),
        );
        assert_eq!(
            s.upcoming(utc("2026-04-01T00:00:00Z"), 10),
            instants(&[
                "2026-05-01T10:00:00Z",
                "2026-05-01T11:00:00Z",
                "2026-05-01T12:00:00Z"
            ])
        );
        assert_eq!(s.next_after(utc("2026-05-01T12:00:00Z")), None);
        // A start between instants: the first instant after it.
        let late = sched("0 30 * * * *", Berlin).bounded(Some(utc("2026-05-01T10:31:00Z")), None);
        assert_eq!(
            late.next_after(utc("2020-01-01T00:00:00Z")),
            Some(utc("2026-05-01T11:30:00Z"))
        );
        assert_eq!(
            (late.start(), late.end()),
            (Some(utc("2026-05-01T10:31:00Z")), None)
        );
    }

    #[test]
    fn schedule_every_is_anchored_to_epoch() {
        let s = sched("@every 1h", Berlin);
        assert_eq!(
            s.next_after(utc("2026-05-01T10:20:00Z")),
            Some(utc("2026-05-01T11:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-05-01T11:00:00Z")),
            Some(utc("2026-05-01T12:00:00Z"))
        );
        // Unaffected by DST: steady hourly UTC instants across the Berlin fold.
        assert_eq!(
            walk("@every 1h", Berlin, "2026-10-24T23:30:00Z", 4),
            instants(&[
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z"
            ])
        );
        let all = walk("@every 7s", UTC, "2026-05-01T10:20:00.123Z", 20);
        assert_eq!(all.len(), 20);
        for w in all.windows(2) {
            assert_eq!(w[1] - w[0], TimeDelta::seconds(7));
        }
        assert!(
            all.iter()
                .all(|t| t.timestamp() % 7 == 0 && t.timestamp_subsec_nanos() == 0)
        );
        let all = walk("@every 1h30m", UTC, "2026-05-01T10:20:00Z", 3);
        assert!(all.iter().all(|t| t.timestamp() % 5400 == 0));
        // Millisecond periods.
        let all = walk("@every 250ms", UTC, "2026-05-01T10:20:00.1Z", 3);
        assert_eq!(
            all,
            instants(&[
                "2026-05-01T10:20:00.25Z",
                "2026-05-01T10:20:00.5Z",
                "2026-05-01T10:20:00.75Z"
            ])
        );
        // Before the epoch too.
        assert_eq!(
            sched("@every 90s", UTC).next_after(utc("1969-12-31T23:58:00Z")),
            Some(utc("1969-12-31T23:58:30Z"))
        );
    }

    #[test]
    fn schedule_at_fires_once() {
        let s = sched("@at 2026-12-01T09:00:00+01:00", New_York);
        let at = utc("2026-12-01T08:00:00Z");
        assert_eq!(s.next_after(utc("2026-11-30T00:00:00Z")), Some(at));
        assert_eq!(s.next_after(at - TimeDelta::milliseconds(1)), Some(at));
        assert_eq!(s.next_after(at), None);
        assert_eq!(s.next_after(utc("2027-01-01T00:00:00Z")), None);
        assert_eq!(s.upcoming(utc("2026-01-01T00:00:00Z"), 5), vec![at]);
    }

    #[test]
    fn schedule_upcoming_strictly_increasing() {
        for expr in [
            "*/5 * * * * *",
            "0 0 0 13 * 5",
            "@every 500ms",
            "0 */7 1-3 * * *",
            "@monthly",
        ] {
            for tz in [UTC, Berlin, New_York] {
                let after = utc("2026-03-01T00:00:00Z");
                let all = sched(expr, tz).upcoming(after, 200);
                assert_eq!(all.len(), 200, "{expr}");
                assert_strictly_increasing(after, &all);
            }
        }
        assert!(
            sched("@daily", UTC)
                .upcoming(utc("2026-03-01T00:00:00Z"), 0)
                .is_empty()
        );
    }
}
