//! Checks of single fields: names, NUL bytes, durations, and the schedule's
//! bounds. Each error names the field.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::JobError;
use crate::quote::{clip_quoted_runs, quote};
use crate::schedule::Schedule;

/// Longest job id.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` can be a job id: 1-128 of `A-Z a-z 0-9 _ -`, so that it is
/// one subject token and one KV key token.
pub fn is_valid_id(id: &str) -> bool {
    is_name(id, MAX_ID_LEN)
}

pub(super) fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn check_name(field: &str, value: &str, max: usize) -> Result<(), JobError> {
    if is_name(value, max) {
        Ok(())
    } else {
        Err(JobError::field(field, not_a_name(value, max)))
    }
}

/// Why `value` is not a name of at most `max` characters, quoting at most
/// the start of it.
fn not_a_name(value: &str, max: usize) -> String {
    format!(
        "{} must be 1-{max} characters of A-Z, a-z, 0-9, '_' or '-'",
        quote(value)
    )
}

/// Why `id` is not a job id (for a caller that checked [`is_valid_id`]).
pub fn not_an_id(id: &str) -> String {
    not_a_name(id, MAX_ID_LEN)
}

/// Refuses a NUL byte. Ids, groups, shard parameters and command lines reach a process as
/// arguments or environment, and neither can hold one.
pub(super) fn check_no_nul(field: &str, value: &str) -> Result<(), JobError> {
    if value.contains('\0') {
        return Err(JobError::field(
            field,
            "contains a NUL byte, which a process cannot take in its arguments or environment",
        ));
    }
    Ok(())
}

/// Parses a duration such as `30s`, `5m`, `1h30m`, `250ms`.
pub fn parse_duration(
    field: &str,
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, JobError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        JobError::field(
            field,
            format!(
                "{} is not a duration ({}); use e.g. 30s, 5m, 1h30m",
                quote(text),
                clip_quoted_runs(&e.to_string())
            ),
        )
    })?;
    if d < min || d > max {
        return Err(JobError::field(
            field,
            format!(
                "{} must be between {} and {}",
                quote(text),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// Parses a duration command-line flag such as `3s` or `500ms` (for clap's `value_parser`).
pub fn parse_flag_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{} is not a duration ({}); use e.g. 500ms, 3s, 5m",
            quote(text),
            clip_quoted_runs(&e.to_string())
        )
    })
}

/// The schedule bounded by `start_at` and `end_at`; refused when one is not
/// an instant, when they are out of order, or when no instant lies between.
pub(super) fn bound(
    schedule: Schedule,
    start_at: Option<&str>,
    end_at: Option<&str>,
) -> Result<Schedule, JobError> {
    let instant = |field: &'static str, text: Option<&str>| -> Result<_, JobError> {
        text.map(|t| {
            DateTime::parse_from_rfc3339(t.trim())
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| {
                    JobError::field(
                        field,
                        format!(
                            "{} is not an RFC 3339 instant (such as 2026-12-01T09:00:00+01:00)",
                            quote(t)
                        ),
                    )
                })
        })
        .transpose()
    };
    let start = instant("start_at", start_at)?;
    let end = instant("end_at", end_at)?;
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        return Err(JobError::field(
            "end_at",
            format!(
                "{} is before start_at {}",
                e.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                s.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
        ));
    }
    let bounded = schedule.bounded(start, end);
    if let (Some(s), Some(_)) = (start, end) {
        let before_start = s.checked_sub_signed(chrono::TimeDelta::nanoseconds(1));
        if before_start.and_then(|b| bounded.next_after(b)).is_none() {
            return Err(JobError::field(
                "schedule",
                format!(
                    "{}: never fires between start_at and end_at",
                    quote(bounded.expression())
                ),
            ));
        }
    }
    Ok(bounded)
}

/// Most jobs one job may fire on success.
pub const MAX_CHILDREN: usize = 32;

/// `on_success`: job ids, each once, never the job itself, at most
/// [`MAX_CHILDREN`]. Longer cycles need the other definitions: the API
/// refuses them at `job.put`.
pub(super) fn check_children(id: &str, children: &[String]) -> Result<(), JobError> {
    if children.len() > MAX_CHILDREN {
        return Err(JobError::field(
            "on_success",
            format!(
                "names {} jobs, at most {MAX_CHILDREN} are allowed",
                children.len()
            ),
        ));
    }
    for (i, child) in children.iter().enumerate() {
        let field = format!("on_success[{i}]");
        check_no_nul(&field, child)?;
        check_name(&field, child, MAX_ID_LEN)?;
        if child == id {
            return Err(JobError::field(
                field,
                format!(
                    "{} is this job: a job cannot fire itself on success",
                    quote(child)
                ),
            ));
        }
        if children[..i].contains(child) {
            return Err(JobError::field(
                field,
                format!("{} is named twice", quote(child)),
            ));
        }
    }
    Ok(())
}
