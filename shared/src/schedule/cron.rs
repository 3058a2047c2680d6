//! Cron expressions: parsing the fields into bitsets, and finding the next
//! matching wall-clock time in a time zone, on real time or on the wall clock
//! (see the module doc of [`super`] for the DST rules).

use chrono::{
    DateTime, Datelike, MappedLocalTime, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

use super::{CronField, ScheduleError};

/// How many calendar years past the starting year the cron search looks before giving up.
///
/// Forty years is the longest possible wait for a satisfiable expression: `0 0 0 29 2 */7`
/// (29 February when it is a Sunday; `*/7` is Sunday only and, starting with `*`, is ANDed
/// with day-of-month) from just after 2088-02-29 next fires on 2128-02-29, because 2100 is not
/// a leap year. Any expression that cannot fire within this window can never fire.
const SEARCH_YEARS: i32 = 40;

/// Spacing of the probes that look for a change of UTC offset on the way to a real-time fire.
/// The closest two offset changes of any zone in the tz database are 6.9 days apart
/// (America/Cambridge_Bay, autumn 2000), so the span between two probes never holds more than
/// one change and bisecting it finds that change.
const OFFSET_PROBE_SECS: i64 = 24 * 60 * 60;

/// A cron expression as one bitset per field (bit `v` set when value `v` matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CronSpec {
    pub(super) seconds: u64,
    pub(super) minutes: u64,
    pub(super) hours: u64,
    pub(super) days_of_month: u64,
    pub(super) months: u64,
    /// Bits 0-6, Sunday = 0 (7 is folded into 0 at parse time).
    pub(super) days_of_week: u64,
    /// Day-of-month neither starts with `*` nor is `?`.
    pub(super) dom_restricted: bool,
    /// Day-of-week neither starts with `*` nor is `?`.
    pub(super) dow_restricted: bool,
    /// Second, minute or hour starts with `*`: the schedule fires on real time across DST
    /// changes rather than once per wall-clock time (see the module doc).
    pub(super) real_time: bool,
}

impl CronSpec {
    /// Parses a 5- or 6-field expression. `expr` is the original text, used in errors.
    pub(super) fn parse(expr: &str, text: &str) -> Result<CronSpec, ScheduleError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            6 => (fields[0], &fields[1..]),
            5 => ("0", &fields[..]),
            found => {
                return Err(ScheduleError::FieldCount {
                    expr: expr.to_owned(),
                    found,
                });
            }
        };
        let [minute, hour, dom, month, dow] = rest else {
            return Err(ScheduleError::FieldCount {
                expr: expr.to_owned(),
                found: fields.len(),
            });
        };
        let mut days_of_week = parse_field(expr, CronField::DayOfWeek, dow)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        let spec = CronSpec {
            seconds: parse_field(expr, CronField::Second, second)?,
            minutes: parse_field(expr, CronField::Minute, minute)?,
            hours: parse_field(expr, CronField::Hour, hour)?,
            days_of_month: parse_field(expr, CronField::DayOfMonth, dom)?,
            months: parse_field(expr, CronField::Month, month)?,
            days_of_week,
            dom_restricted: !is_unrestricted(dom),
            dow_restricted: !is_unrestricted(dow),
            real_time: [second, minute, hour]
                .iter()
                .any(|field| field.starts_with('*')),
        };
        if !spec.has_a_day() {
            return Err(ScheduleError::NeverFires {
                expr: expr.to_owned(),
            });
        }
        Ok(spec)
    }

    /// Whether some date matches the month and day fields. When the day fields are ORed, any
    /// month has every weekday, and day-of-week is never empty. When they are ANDed, a
    /// day-of-month that exists in one of the months is enough: over the years that date falls
    /// on every weekday (within [`SEARCH_YEARS`]).
    fn has_a_day(&self) -> bool {
        if self.dom_restricted && self.dow_restricted {
            return true;
        }
        (1..=12).filter(|&m| has_bit(self.months, m)).any(|m| {
            let longest = match m {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            self.days_of_month & bit_range(1, longest, 1) != 0
        })
    }

    /// Vixie-cron day matching: when both day fields are restricted, either may match;
    /// otherwise both must (an unrestricted `*/2` still only lets every other day through).
    pub(super) fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = has_bit(self.days_of_month, date.day());
        let dow = has_bit(self.days_of_week, date.weekday().num_days_from_sunday());
        if self.dom_restricted && self.dow_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// First matching wall-clock time at or after `start` (whole seconds), giving up once the
    /// search passes the end of `max_year`. Skips whole months, days, hours and minutes that
    /// cannot match.
    fn next_local_match(&self, start: NaiveDateTime, max_year: i32) -> Option<NaiveDateTime> {
        let mut date = start.date();
        let (mut hour, mut minute, mut second) = (start.hour(), start.minute(), start.second());
        loop {
            if date.year() > max_year {
                return None;
            }
            let month = date.month();
            if !has_bit(self.months, month) {
                date = match next_bit(self.months, month + 1) {
                    Some(next) => NaiveDate::from_ymd_opt(date.year(), next, 1)?,
                    None => NaiveDate::from_ymd_opt(
                        date.year().checked_add(1)?,
                        next_bit(self.months, 1)?,
                        1,
                    )?,
                };
                (hour, minute, second) = (0, 0, 0);
                continue;
            }
            if !self.day_matches(date) {
                date = date.succ_opt()?;
                (hour, minute, second) = (0, 0, 0);
                continue;
            }
            let Some(h) = next_bit(self.hours, hour) else {
                date = date.succ_opt()?;
                (hour, minute, second) = (0, 0, 0);
                continue;
            };
            if h != hour {
                (hour, minute, second) = (h, 0, 0);
            }
            let Some(m) = next_bit(self.minutes, minute) else {
                (hour, minute, second) = (hour + 1, 0, 0);
                continue;
            };
            if m != minute {
                (minute, second) = (m, 0);
            }
            let Some(s) = next_bit(self.seconds, second) else {
                (minute, second) = (minute + 1, 0);
                continue;
            };
            return date.and_hms_opt(hour, minute, s);
        }
    }

    pub(super) fn next_after(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.real_time {
            self.next_real_time(tz, after)
        } else {
            self.next_wall_time(tz, after)
        }
    }

    /// The first whole second after `after` whose local time matches. Between two changes of
    /// the zone's UTC offset, local time is UTC shifted by a constant, so the search takes one
    /// such stretch at a time: the first match on the stretch's clock is the answer unless the
    /// offset changes before it, and then the search goes on from the change.
    fn next_real_time(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after.timestamp().checked_add(1)?;
        let mut offset = utc_offset(tz, from)?;
        let max_year = local_time(from, offset)?.year().checked_add(SEARCH_YEARS)?;
        loop {
            let wall = self.next_local_match(local_time(from, offset)?, max_year)?;
            let at = wall.and_utc().timestamp().checked_sub(offset)?;
            match offset_change(tz, from, offset, at) {
                Some(change) => {
                    from = change;
                    offset = utc_offset(tz, from)?;
                }
                None => return DateTime::from_timestamp(at, 0),
            }
        }
    }

    /// The first instant after `after` that a matching wall-clock time maps to (unique time:
    /// itself; fold: its first pass; gap: the gap's end).
    fn next_wall_time(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Local wall-clock time of `after`, truncated to the second. Every wall time up to and
        // including it maps to an instant <= `after` (the mapping is monotonic and maps this
        // one to `after` itself or, in the second pass of a fold, to its earlier occurrence),
        // so the search can start one second later.
        let utc = after.naive_utc();
        let offset = tz.offset_from_utc_datetime(&utc).fix().local_minus_utc();
        let local = utc
            .checked_add_signed(TimeDelta::seconds(i64::from(offset)))?
            .with_nanosecond(0)?;
        let mut cursor = local.checked_add_signed(TimeDelta::seconds(1))?;
        let max_year = cursor.year().checked_add(SEARCH_YEARS)?;
        loop {
            let wall = self.next_local_match(cursor, max_year)?;
            // Wall times that map to `after` or earlier (already fired in the first pass of a
            // fold, or collapsed into a gap's end) are skipped.
            if let Some(instant) = resolve_local(tz, wall)
                && instant > after
            {
                return Some(instant);
            }
            cursor = wall.checked_add_signed(TimeDelta::seconds(1))?;
        }
    }
}

/// A day field starting with `*` (`*`, `*/2`) or `?` is unrestricted for the Vixie
/// day-matching rule, exactly as Vixie cron and cronie read it: they look at the first
/// character only.
fn is_unrestricted(field: &str) -> bool {
    field.starts_with('*') || field == "?"
}

pub(super) fn has_bit(mask: u64, bit: u32) -> bool {
    bit < 64 && mask & (1 << bit) != 0
}

/// Smallest set bit at or above `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let shifted = mask >> from;
    (shifted != 0).then(|| from + shifted.trailing_zeros())
}

fn parse_field(expr: &str, field: CronField, text: &str) -> Result<u64, ScheduleError> {
    let (min, max) = field.bounds();
    if text == "?" {
        return match field {
            CronField::DayOfMonth | CronField::DayOfWeek => Ok(bit_range(min, max, 1)),
            _ => Err(ScheduleError::MisplacedQuestionMark {
                expr: expr.to_owned(),
                field,
            }),
        };
    }
    let missing = || ScheduleError::MissingValue {
        expr: expr.to_owned(),
        field,
        text: text.to_owned(),
    };
    let mut mask = 0;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                if step.is_empty() {
                    return Err(missing());
                }
                let step = parse_number(expr, field, step)?;
                if step == 0 {
                    return Err(ScheduleError::BadStep {
                        expr: expr.to_owned(),
                        field,
                    });
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (min, max)
        } else if range.contains('?') {
            return Err(ScheduleError::MisplacedQuestionMark {
                expr: expr.to_owned(),
                field,
            });
        } else if let Some((a, b)) = range.split_once('-') {
            if a.is_empty() || b.is_empty() {
                return Err(missing());
            }
            let start = parse_value(expr, field, a)?;
            let mut end = parse_value(expr, field, b)?;
            // `FRI-SUN`: a day-of-week range ending in the name SUN wraps to 7.
            if field == CronField::DayOfWeek && start > 0 && b.eq_ignore_ascii_case("SUN") {
                end = 7;
            }
            if start > end {
                return Err(ScheduleError::BadRange {
                    expr: expr.to_owned(),
                    field,
                    start,
                    end,
                });
            }
            (start, end)
        } else {
            if range.is_empty() {
                return Err(missing());
            }
            let value = parse_value(expr, field, range)?;
            // `a/n` runs from a through the field maximum.
            (value, if step.is_some() { max } else { value })
        };
        mask |= bit_range(start, end, step.unwrap_or(1));
    }
    Ok(mask)
}

/// Bits `start, start + step, ...` up to `end` inclusive.
fn bit_range(start: u32, end: u32, step: u32) -> u64 {
    let mut mask = 0;
    let mut v = start;
    while v <= end {
        mask |= 1 << v;
        match v.checked_add(step) {
            Some(next) => v = next,
            None => break,
        }
    }
    mask
}

/// A plain decimal number (saturating at `u32::MAX`).
fn parse_number(expr: &str, field: CronField, token: &str) -> Result<u32, ScheduleError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScheduleError::NotANumber {
            expr: expr.to_owned(),
            field,
            token: token.to_owned(),
        });
    }
    Ok(token.parse().unwrap_or(u32::MAX))
}

/// A value of `field`: a number within its bounds, or a month / weekday name.
fn parse_value(expr: &str, field: CronField, token: &str) -> Result<u32, ScheduleError> {
    if let Some(index) = field
        .names()
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
    {
        // At most 12 names, so the index always fits.
        return Ok(field.first_name_value() + u32::try_from(index).unwrap_or(0));
    }
    let value = parse_number(expr, field, token)?;
    let (min, max) = field.bounds();
    if value < min || value > max {
        return Err(ScheduleError::OutOfRange {
            expr: expr.to_owned(),
            field,
            value,
        });
    }
    Ok(value)
}

/// UTC offset of `tz` at the Unix time `secs`, in seconds.
fn utc_offset(tz: Tz, secs: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp(secs, 0)?.naive_utc();
    Some(i64::from(
        tz.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// Local wall-clock time of the Unix time `secs` at UTC offset `offset`.
fn local_time(secs: i64, offset: i64) -> Option<NaiveDateTime> {
    Some(DateTime::from_timestamp(secs.checked_add(offset)?, 0)?.naive_utc())
}

/// The first second in `(from, until]` at which the UTC offset of `tz` is no longer `offset`
/// (its offset at `from`), if there is one.
fn offset_change(tz: Tz, from: i64, offset: i64, until: i64) -> Option<i64> {
    let mut lo = from;
    while lo < until {
        let mut hi = lo.saturating_add(OFFSET_PROBE_SECS).min(until);
        if utc_offset(tz, hi) != Some(offset) {
            // One change at most between two probes: bisect for it.
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if utc_offset(tz, mid) == Some(offset) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            return Some(hi);
        }
        lo = hi;
    }
    None
}

/// Maps a local wall-clock time to UTC: unique → that instant; ambiguous (fold) → the earlier
/// instant; non-existent (gap) → the instant at which the gap ends.
pub(super) fn resolve_local(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        MappedLocalTime::Single(dt) => Some(dt.with_timezone(&Utc)),
        MappedLocalTime::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        MappedLocalTime::None => gap_end(tz, wall),
    }
}

/// For a wall time inside a gap, the first UTC instant whose local time is after it (the
/// transition instant; its local time is the end of the gap).
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    const WINDOW: i64 = 2 * 24 * 60 * 60; // wider than any UTC offset and any gap
    let local_secs = |utc_secs: i64| utc_secs.checked_add(utc_offset(tz, utc_secs)?);
    let target = wall.and_utc().timestamp();
    let mut lo = target.checked_sub(WINDOW)?;
    let mut hi = target.checked_add(WINDOW)?;
    // Invariant: local(lo) <= target < local(hi). The wall time never occurs, so the crossing
    // found is a jump over it, i.e. the gap that contains it.
    if local_secs(lo)? > target || local_secs(hi)? <= target {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_secs(mid)? > target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}
