//! The job definition: what users write (`JobSpec`, JSON as stored in the
//! jobs bucket) and what the scheduler runs (`Job`, validated).
//!
//! Validation errors always name the field and the reason, e.g.
//! `schedule: '61 * * * * *': second must be 0-59`, so that an operator can
//! fix a definition from the error alone. They quote at most 80 characters of
//! any input ([`crate::quote`]).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::quote::quote;
use crate::schedule::Schedule;

mod chain;
mod check;
mod decode;
mod definition;
pub mod http;

pub use chain::{Cycle, children_first, find_cycle, find_cycle_in};
pub use check::{
    MAX_CHILDREN, MAX_ID_LEN, is_valid_id, not_an_id, parse_duration, parse_flag_duration,
};
use check::{bound, check_children, check_name, check_no_nul};
pub use definition::Definition;
pub use http::HttpSpec;

/// Largest number of shards one fire may have.
pub const MAX_SHARDS: u32 = 1000;
/// Largest encoded definition accepted.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// Largest payload (compact JSON) a trigger may give a fire: what a
/// definition can hold. A shard message carries it with the job's command,
/// far below the 1 MiB a NATS message may have by default.
pub const MAX_PAYLOAD_BYTES: usize = MAX_DEFINITION_BYTES;
/// Timeout when a definition does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Delay before a retry when `retry.backoff` is not set.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest `deadline`: anything shorter is within the clock skew and
/// dispatch delay every shard has.
const MIN_DEADLINE: Duration = Duration::from_secs(1);
const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
const MAX_ATTEMPTS: u32 = 100;
const MAX_PARAM_BYTES: usize = 4096;
/// Fires kept in a job's run history when the definition does not say.
pub const DEFAULT_HISTORY: u32 = 20;
/// Longest `run.shell` command line: `sh -c` takes it as one argument,
/// and Linux refuses an argument of 128 KiB or more (`MAX_ARG_STRLEN`,
/// counting its terminating NUL).
pub const MAX_SHELL_BYTES: usize = 128 * 1024 - 1;
/// Most fires a job's run history may keep.
pub const MAX_HISTORY: u32 = 1000;
/// Late instants `misfire: fire_all` fires when the definition does not say.
pub const DEFAULT_MISFIRE_LIMIT: u32 = 100;
/// Most late instants `misfire: fire_all` may fire.
pub const MAX_MISFIRE_LIMIT: u32 = 1000;

/// Why a definition was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Not JSON at all, or not a JSON object.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// A field is missing, of the wrong type, unknown, or has a bad value.
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    /// The definition is larger than [`MAX_DEFINITION_BYTES`].
    #[error("definition is {0} bytes, the limit is {MAX_DEFINITION_BYTES}")]
    TooLarge(usize),
}

impl JobError {
    pub fn field(field: impl Into<String>, reason: impl fmt::Display) -> JobError {
        JobError::Field {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// The field the error is about, if any.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            JobError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A job definition as written by users and stored in the jobs bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: String,
    pub schedule: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// No instant before this one (RFC 3339, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// No instant after this one (RFC 3339, inclusive): the job ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    #[serde(default)]
    pub shards: Shards,
    #[serde(default = "default_group")]
    pub group: String,
    pub run: Run,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// A shard not started within this time after its instant is not run:
    /// it ends `expired`. None: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    #[serde(default, deserialize_with = "decode::object")]
    pub retry: RetrySpec,
    /// Free-form data handed to every shard of every fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A paused job keeps its definition and fire state but does not fire;
    /// each instant it passes is reported as `skipped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Fires kept in the job's run history (`job.runs`). Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
    /// What late instants become (scheduler downtime, a takeover).
    #[serde(default, skip_serializing_if = "Misfire::is_fire_once")]
    pub misfire: Misfire,
    /// Most late instants `misfire: fire_all` fires; only with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_limit: Option<u32>,
    /// What an instant does while an earlier fire still has shards running
    /// or waiting.
    #[serde(default, skip_serializing_if = "Overlap::is_allow")]
    pub overlap: Overlap,
    /// Jobs fired once every shard of a fire of this one succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_success: Vec<String>,
}

fn default_timezone() -> String {
    "UTC".to_string()
}

fn default_group() -> String {
    "default".to_string()
}

/// What instants the leader could not fire on time become. An instant is
/// late when it is decided more than the scheduler's misfire threshold
/// after it (no leader, all schedulers down, a takeover).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Misfire {
    /// One late fire, of the latest instant due, stands for all of them.
    #[default]
    FireOnce,
    /// None of them fires; the job goes on with its first instant that is
    /// not late.
    Skip,
    /// Each fires as itself, oldest first, up to `misfire_limit` of the
    /// newest; older ones are skipped.
    FireAll,
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::FireOnce => "fire_once",
            Misfire::Skip => "skip",
            Misfire::FireAll => "fire_all",
        }
    }

    pub fn is_fire_once(&self) -> bool {
        *self == Misfire::FireOnce
    }
}

impl TryFrom<String> for Misfire {
    type Error = String;

    fn try_from(text: String) -> Result<Misfire, String> {
        [Misfire::FireOnce, Misfire::Skip, Misfire::FireAll]
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| format!("{} is not one of fire_once, skip, fire_all", quote(&text)))
    }
}

/// What an instant of a job does while an earlier fire of it (scheduled,
/// or by `on_success`) still has shards running or waiting, decided by the
/// leader for the whole cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Overlap {
    /// It fires anyway: fires may run side by side.
    #[default]
    Allow,
    /// It is skipped (`skipped`, reason `overlap`).
    Forbid,
    /// It waits, and fires when the earlier fire ends; at most one waits,
    /// later ones are skipped.
    Queue,
    /// The earlier fire is cancelled on whichever workers hold it, and this
    /// one fires.
    Replace,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Forbid => "forbid",
            Overlap::Queue => "queue",
            Overlap::Replace => "replace",
        }
    }

    pub fn is_allow(&self) -> bool {
        *self == Overlap::Allow
    }
}

impl TryFrom<String> for Overlap {
    type Error = String;

    fn try_from(text: String) -> Result<Overlap, String> {
        [
            Overlap::Allow,
            Overlap::Forbid,
            Overlap::Queue,
            Overlap::Replace,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
        .ok_or_else(|| {
            format!(
                "{} is not one of allow, forbid, queue, replace",
                quote(&text)
            )
        })
    }
}

/// How a fire is split: a count, or one shard per listed parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Shards {
    Count(u32),
    Params(Vec<String>),
}

impl Default for Shards {
    fn default() -> Self {
        Shards::Count(1)
    }
}

impl Shards {
    pub fn count(&self) -> u32 {
        match self {
            Shards::Count(n) => *n,
            Shards::Params(p) => u32::try_from(p.len()).unwrap_or(u32::MAX),
        }
    }

    pub fn param(&self, shard: u32) -> Option<&str> {
        match self {
            Shards::Count(_) => None,
            Shards::Params(p) => p.get(shard as usize).map(String::as_str),
        }
    }
}

impl Serialize for Shards {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shards::Count(n) => s.serialize_u32(*n),
            Shards::Params(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Shards {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ShardsVisitor;
        impl<'de> Visitor<'de> for ShardsVisitor {
            type Value = Shards;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a shard count or a list of shard parameters (strings)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shards, E> {
                u32::try_from(v)
                    .map(Shards::Count)
                    .map_err(|_| E::custom(format!("shard count must be 1-{MAX_SHARDS}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shards, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("shard count must be 1-{MAX_SHARDS}")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shards, A::Error> {
                let mut params = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    params.push(p);
                }
                Ok(Shards::Params(params))
            }
        }
        d.deserialize_any(ShardsVisitor)
    }
}

/// What a shard runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Run {
    /// A command line run by `sh -c` on a worker started with `--allow-shell`.
    Shell(String),
    /// One HTTP request (see [`http`]); any worker runs it unless started
    /// with `--no-http`.
    Http(#[serde(deserialize_with = "decode::object")] HttpSpec),
    /// A handler registered under this name in a worker embedded in a
    /// service (the `jetcron-worker` library). Its shards go to a subject of
    /// their own (`jetcron.work.<group>.<job>.<handler>`), read only by
    /// workers that registered the handler.
    Handler(String),
}

/// Longest handler name: it is a subject token and part of a consumer name.
pub const MAX_HANDLER_LEN: usize = 64;

impl Run {
    pub fn kind(&self) -> &'static str {
        match self {
            Run::Shell(_) => "shell",
            Run::Http(_) => "http",
            Run::Handler(_) => "handler",
        }
    }

    /// The handler these shards need, for a `handler` job.
    pub fn handler(&self) -> Option<&str> {
        match self {
            Run::Handler(name) => Some(name),
            _ => None,
        }
    }
}

/// Whether `name` can name a handler: 1-64 of `A-Z a-z 0-9 _ -`.
pub fn is_valid_handler(name: &str) -> bool {
    check::is_name(name, MAX_HANDLER_LEN)
}

/// Retry settings as written in a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first one included.
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// Delay before attempt 2, 3, ...; the last entry repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<String>,
}

fn one() -> u32 {
    1
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_attempts: 1,
            backoff: Vec::new(),
        }
    }
}

/// Retry settings, validated; carried in every shard message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(with = "millis_vec")]
    pub backoff: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: vec![DEFAULT_BACKOFF],
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt after `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let i = attempt.saturating_sub(1) as usize;
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(DEFAULT_BACKOFF)
    }
}

mod millis_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| d.as_millis() as u64))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v = Vec::<u64>::deserialize(d)?;
        Ok(v.into_iter().map(Duration::from_millis).collect())
    }
}

/// A definition that passed validation, ready to schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub spec: JobSpec,
    pub schedule: Schedule,
    pub timeout: Duration,
    /// Longest a shard may wait after its instant to start.
    pub deadline: Option<Duration>,
    pub retry: RetryPolicy,
}

impl Job {
    /// Decodes and validates a definition. `key`, when given, is the jobs
    /// bucket key the definition was stored under; the id must match it.
    pub fn decode(bytes: &[u8], key: Option<&str>) -> Result<Job, JobError> {
        let spec = JobSpec::decode(bytes)?;
        if let Some(key) = key
            && key != spec.id
        {
            return Err(JobError::field(
                "id",
                format!(
                    "{} does not match the key {} it is stored under",
                    quote(&spec.id),
                    quote(key)
                ),
            ));
        }
        Job::validate(spec)
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn group(&self) -> &str {
        &self.spec.group
    }

    pub fn shard_count(&self) -> u32 {
        self.spec.shards.count()
    }

    /// Fires kept in the run history.
    pub fn history(&self) -> u32 {
        self.spec.history.unwrap_or(DEFAULT_HISTORY)
    }

    pub fn paused(&self) -> bool {
        self.spec.paused
    }

    pub fn misfire(&self) -> Misfire {
        self.spec.misfire
    }

    /// Most late instants `fire_all` fires.
    pub fn misfire_limit(&self) -> u32 {
        self.spec.misfire_limit.unwrap_or(DEFAULT_MISFIRE_LIMIT)
    }

    pub fn overlap(&self) -> Overlap {
        self.spec.overlap
    }

    /// Jobs fired when every shard of a fire of this one succeeded.
    pub fn on_success(&self) -> &[String] {
        &self.spec.on_success
    }

    /// Whether the scheduler waits for each fire's end: an overlap policy
    /// other than `allow`, an `@after` schedule, or `on_success` children.
    pub fn tracked(&self) -> bool {
        !self.spec.overlap.is_allow()
            || self.schedule.fixed_delay().is_some()
            || !self.spec.on_success.is_empty()
    }

    /// What only a definition being put must pass, on top of [`Job::validate`]: an `@at`
    /// instant must still be ahead of `now`. A stored job whose instant has passed stays
    /// valid, so this is not part of decoding.
    pub fn check_put(&self, now: DateTime<Utc>) -> Result<(), JobError> {
        self.schedule
            .check_upcoming(now)
            .map_err(|e| JobError::field("schedule", e))?;
        match self.schedule.end() {
            Some(end) if self.schedule.next_after(now).is_none() => Err(JobError::field(
                "end_at",
                format!(
                    "never fires: no instant of the schedule is left before {}",
                    end.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(spec: JobSpec) -> Result<Job, JobError> {
        check_no_nul("id", &spec.id)?;
        check_name("id", &spec.id, MAX_ID_LEN)?;
        check_no_nul("group", &spec.group)?;
        check_name("group", &spec.group, 64)?;
        let tz: chrono_tz::Tz = spec.timezone.parse().map_err(|_| {
            JobError::field(
                "timezone",
                format!(
                    "{} is not an IANA time zone name (such as UTC or Europe/Berlin)",
                    quote(&spec.timezone)
                ),
            )
        })?;
        let schedule =
            Schedule::parse(&spec.schedule, tz).map_err(|e| JobError::field("schedule", e))?;
        let schedule = bound(schedule, spec.start_at.as_deref(), spec.end_at.as_deref())?;
        match &spec.shards {
            Shards::Count(n) if !(1..=MAX_SHARDS).contains(n) => {
                return Err(JobError::field(
                    "shards",
                    format!("shard count must be 1-{MAX_SHARDS}, found {n}"),
                ));
            }
            Shards::Params(p) if p.is_empty() || p.len() > MAX_SHARDS as usize => {
                return Err(JobError::field(
                    "shards",
                    format!(
                        "list must hold 1-{MAX_SHARDS} parameters, found {}",
                        p.len()
                    ),
                ));
            }
            Shards::Params(p) => {
                for (i, param) in p.iter().enumerate() {
                    if param.len() > MAX_PARAM_BYTES {
                        return Err(JobError::field(
                            format!("shards[{i}]"),
                            format!("parameter is longer than {MAX_PARAM_BYTES} bytes"),
                        ));
                    }
                    check_no_nul(&format!("shards[{i}]"), param)?;
                }
            }
            Shards::Count(_) => {}
        }
        match &spec.run {
            Run::Shell(cmd) if cmd.trim().is_empty() => {
                return Err(JobError::field("run.shell", "command is empty"));
            }
            Run::Shell(cmd) if cmd.len() > MAX_SHELL_BYTES => {
                return Err(JobError::field(
                    "run.shell",
                    format!(
                        "{} bytes is more than a process takes in one argument (at most \
                         {MAX_SHELL_BYTES}); put the script in a file on the workers and run that",
                        cmd.len()
                    ),
                ));
            }
            Run::Shell(cmd) => check_no_nul("run.shell", cmd)?,
            Run::Http(http) => http.validate()?,
            Run::Handler(name) => check_name("run.handler", name, MAX_HANDLER_LEN)?,
        }
        let mut timeout = match &spec.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => parse_duration("timeout", t, Duration::from_millis(1), MAX_TIMEOUT)?,
        };
        // A request's own limit is the attempt's: the shard message carries one.
        if let Run::Http(HttpSpec {
            timeout: Some(t), ..
        }) = &spec.run
        {
            timeout = parse_duration("run.http.timeout", t, Duration::from_millis(1), timeout)
                .map_err(|e| match e {
                    JobError::Field { field, reason } if spec.timeout.is_some() => {
                        JobError::field(field, format!("{reason} (the job's timeout)"))
                    }
                    e => e,
                })?;
        }
        let deadline = spec
            .deadline
            .as_deref()
            .map(|d| parse_duration("deadline", d, MIN_DEADLINE, MAX_DEADLINE))
            .transpose()?;
        if let Some(h) = spec.history
            && !(1..=MAX_HISTORY).contains(&h)
        {
            return Err(JobError::field(
                "history",
                format!("must be 1-{MAX_HISTORY}, found {h}"),
            ));
        }
        if let Some(n) = spec.misfire_limit {
            if !(1..=MAX_MISFIRE_LIMIT).contains(&n) {
                return Err(JobError::field(
                    "misfire_limit",
                    format!("must be 1-{MAX_MISFIRE_LIMIT}, found {n}"),
                ));
            }
            // A setting that does nothing is refused, as an unknown field is.
            if spec.misfire != Misfire::FireAll {
                return Err(JobError::field(
                    "misfire_limit",
                    format!(
                        "applies only to misfire fire_all, and this job's misfire is {}",
                        spec.misfire.as_str()
                    ),
                ));
            }
        }
        check_children(&spec.id, &spec.on_success)?;
        let max = spec.retry.max_attempts;
        if !(1..=MAX_ATTEMPTS).contains(&max) {
            return Err(JobError::field(
                "retry.max_attempts",
                format!("must be 1-{MAX_ATTEMPTS}, found {max}"),
            ));
        }
        let backoff = if spec.retry.backoff.is_empty() {
            vec![DEFAULT_BACKOFF]
        } else {
            spec.retry
                .backoff
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    parse_duration(
                        &format!("retry.backoff[{i}]"),
                        b,
                        Duration::ZERO,
                        MAX_BACKOFF,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Job {
            schedule,
            timeout,
            deadline,
            retry: RetryPolicy {
                max_attempts: max,
                backoff,
            },
            spec,
        })
    }
}

impl JobSpec {
    /// Decodes JSON; type errors name the path of the offending field.
    pub fn decode(bytes: &[u8]) -> Result<JobSpec, JobError> {
        if bytes.len() > MAX_DEFINITION_BYTES {
            return Err(JobError::TooLarge(bytes.len()));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(JobError::Syntax("definition is empty".into()));
        }
        decode::decode(bytes)
    }

    /// The definition as stored: indented JSON, or compact JSON when the
    /// indented form would pass [`MAX_DEFINITION_BYTES`] (a payload of
    /// many small values can take three times its size indented).
    pub fn encode(&self) -> Vec<u8> {
        // A JobSpec holds only strings, numbers, lists and JSON values, all of
        // which serialize; the fallback is unreachable.
        let pretty = serde_json::to_vec_pretty(self).unwrap_or_default();
        if pretty.len() <= MAX_DEFINITION_BYTES {
            return pretty;
        }
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> Result<Job, JobError> {
        Job::decode(json.as_bytes(), None)
    }

    fn field_err(json: &str) -> (String, String) {
        match job(json) {
            Err(JobError::Field { field, reason }) => (field, reason),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_handler_job_names_one_handler_by_a_token() {
        let j =
            job(r#"{"id":"r","schedule":"@hourly","run":{"handler":"send-reminders"}}"#).unwrap();
        assert_eq!(j.spec.run.handler(), Some("send-reminders"));
        assert_eq!(j.spec.run.kind(), "handler");
        let long = "h".repeat(MAX_HANDLER_LEN + 1);
        for bad in ["", "send.reminders", "a b", "x*", long.as_str()] {
            let body = format!(r#"{{"id":"r","schedule":"@hourly","run":{{"handler":"{bad}"}}}}"#);
            let (field, reason) = field_err(&body);
            assert_eq!(field, "run.handler", "{bad}");
            assert!(
                reason.ends_with("must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'"),
                "{reason}"
            );
        }
        assert!(is_valid_handler(&"h".repeat(MAX_HANDLER_LEN)));
    }

    #[test]
    fn an_http_job_decodes_and_its_errors_name_the_field() {
        let j = job(r#"{"id":"x","schedule":"@hourly","timeout":"5m",
            "run":{"http":{"url":"https://api.example.com/run?s={{shard}}","timeout":"30s"}}}"#)
        .unwrap();
        assert_eq!(j.spec.run.kind(), "http");
        // The request's timeout is the attempt's.
        assert_eq!(j.timeout, Duration::from_secs(30));
        let j =
            job(r#"{"id":"x","schedule":"@hourly","run":{"http":{"url":"http://h"}}}"#).unwrap();
        assert_eq!(j.timeout, DEFAULT_TIMEOUT);
        let again = JobSpec::decode(&j.spec.encode()).unwrap();
        assert_eq!(again, j.spec);
        for (body, field, reason) in [
            (
                r#"{"url":"http://h","timeout":"2h"}"#,
                "run.http.timeout",
                "'2h' must be between 1ms and 1h",
            ),
            (
                r#"{"url":"http://h","methd":"GET"}"#,
                "run.http.methd",
                "unknown field `methd`, expected one of `method`, `url`, `headers`, `body`, \
                 `expect`, `timeout`",
            ),
            (
                r#"{"url":"http://h","expect":[70000]}"#,
                "run.http.expect[0]",
                "invalid value: integer `70000`, expected u16",
            ),
            (r#"{"method":"GET"}"#, "run.http.url", "is required"),
            (
                r#"{"url":"mailto:a@b.c"}"#,
                "run.http.url",
                "'mailto:a@b.c': scheme 'mailto' is not http or https",
            ),
        ] {
            let def = format!(r#"{{"id":"x","schedule":"@hourly","run":{{"http":{body}}}}}"#);
            assert_eq!(
                field_err(&def),
                (field.to_string(), reason.to_string()),
                "{body}"
            );
        }
        let (f, r) = field_err(
            r#"{"id":"x","schedule":"@hourly","timeout":"10s","run":{"http":{"url":"http://h","timeout":"1m"}}}"#,
        );
        assert_eq!(
            (f.as_str(), r.as_str()),
            (
                "run.http.timeout",
                "'1m' must be between 1ms and 10s (the job's timeout)"
            )
        );
    }

    #[test]
    fn a_definition_keeps_what_planning_needs_and_gives_back_the_full_job() {
        let body = r#"{"id":"sms","schedule":"0 0 2 * * *","shards":["a","b"],
            "group":"billing","run":{"shell":"echo hi"},"paused":true,"history":5}"#;
        let d = Definition::decode(body.as_bytes(), Some("sms")).unwrap();
        assert_eq!((d.id(), d.group(), d.shard_count()), ("sms", "billing", 2));
        assert_eq!((d.history(), d.paused()), (5, true));
        assert_eq!(d.schedule().expression(), "0 0 2 * * *");
        assert_eq!(d.job().unwrap(), job(body).unwrap());
        assert_eq!(d.spec().unwrap(), job(body).unwrap().spec);
        assert_eq!(d.raw(), body.as_bytes());
        // Refused exactly as a job is.
        let err = Definition::decode(body.as_bytes(), Some("other")).unwrap_err();
        assert_eq!(err.field_name(), Some("id"));
    }

    #[test]
    fn full_definition_decodes_with_defaults_applied() {
        let j = job(
            r#"{"id":"sms","schedule":"0 0 2 * * *","timezone":"Asia/Shanghai",
            "shards":["beijing","tianjin"],"group":"billing","run":{"shell":"echo hi"},
            "timeout":"30m","retry":{"max_attempts":3,"backoff":["30s","5m"]}}"#,
        )
        .unwrap();
        assert_eq!(j.shard_count(), 2);
        assert_eq!(j.spec.shards.param(1), Some("tianjin"));
        assert_eq!(j.timeout, Duration::from_secs(1800));
        assert_eq!(j.retry.delay_after(1), Duration::from_secs(30));
        assert_eq!(j.retry.delay_after(2), Duration::from_secs(300));
        assert_eq!(j.retry.delay_after(7), Duration::from_secs(300));

        let d = job(r#"{"id":"x","schedule":"@hourly","run":{"shell":"true"}}"#).unwrap();
        assert_eq!(d.group(), "default");
        assert_eq!(d.spec.timezone, "UTC");
        assert_eq!(d.shard_count(), 1);
        assert_eq!(d.timeout, DEFAULT_TIMEOUT);
        assert_eq!(d.deadline, None);
        assert_eq!(d.retry, RetryPolicy::default());
    }

    #[test]
    fn a_deadline_is_a_duration_of_one_second_to_seven_days() {
        let with = |deadline: &str| {
            job(&format!(
                r#"{{"id":"x","schedule":"@daily","run":{{"shell":"t"}},"deadline":"{deadline}"}}"#
            ))
        };
        assert_eq!(
            with("10m").unwrap().deadline,
            Some(Duration::from_secs(600))
        );
        assert_eq!(with("1s").unwrap().deadline, Some(Duration::from_secs(1)));
        assert_eq!(
            with("7days").unwrap().deadline,
            Some(Duration::from_secs(7 * 24 * 3600))
        );
        for (bad, reason) in [
            ("500ms", "'500ms' must be between 1s and 7days"),
            ("8days", "'8days' must be between 1s and 7days"),
            ("0s", "'0s' must be between 1s and 7days"),
        ] {
            assert_eq!(
                with(bad).unwrap_err(),
                JobError::field("deadline", reason),
                "{bad}"
            );
        }
        let (f, r) =
            field_err(r#"{"id":"x","schedule":"@daily","run":{"shell":"t"},"deadline":"soon"}"#);
        assert_eq!(f, "deadline");
        assert!(r.starts_with("'soon' is not a duration"), "{r}");
        let (f, _) =
            field_err(r#"{"id":"x","schedule":"@daily","run":{"shell":"t"},"deadline":600}"#);
        assert_eq!(f, "deadline");
    }

    #[test]
    fn misfire_defaults_to_fire_once_and_its_limit_only_goes_with_fire_all() {
        let with = |extra: &str| {
            job(&format!(
                r#"{{"id":"x","schedule":"@every 1s","run":{{"shell":"t"}}{extra}}}"#
            ))
        };
        let plain = with("").unwrap();
        assert_eq!(
            (plain.misfire(), plain.misfire_limit()),
            (Misfire::FireOnce, 100)
        );
        assert!(
            !String::from_utf8(plain.spec.encode())
                .unwrap()
                .contains("misfire")
        );
        for (text, policy) in [
            ("fire_once", Misfire::FireOnce),
            ("skip", Misfire::Skip),
            ("fire_all", Misfire::FireAll),
        ] {
            let j = with(&format!(r#","misfire":"{text}""#)).unwrap();
            assert_eq!((j.misfire(), policy.as_str()), (policy, text));
            let d = Definition::decode(&j.spec.encode(), Some("x")).unwrap();
            assert_eq!((d.misfire(), d.misfire_limit()), (policy, 100));
        }
        for n in [1, 2, 1000] {
            let j = with(&format!(r#","misfire":"fire_all","misfire_limit":{n}"#)).unwrap();
            assert_eq!(j.misfire_limit(), n);
            let d = Definition::decode(&j.spec.encode(), Some("x")).unwrap();
            assert_eq!(d.misfire_limit(), n);
            assert_eq!(JobSpec::decode(&j.spec.encode()).unwrap(), j.spec);
        }

        let (f, r) = field_err(
            r#"{"id":"x","schedule":"@every 1s","run":{"shell":"t"},"misfire":"fire_twice"}"#,
        );
        assert_eq!(
            (f.as_str(), r.as_str()),
            (
                "misfire",
                "'fire_twice' is not one of fire_once, skip, fire_all"
            )
        );
        let (f, r) =
            field_err(r#"{"id":"x","schedule":"@every 1s","run":{"shell":"t"},"misfire":1}"#);
        assert_eq!(
            (f.as_str(), r.as_str()),
            ("misfire", "invalid type: integer `1`, expected a string")
        );
        for (n, reason) in [
            ("0", "must be 1-1000, found 0"),
            ("1001", "must be 1-1000, found 1001"),
        ] {
            let err = with(&format!(r#","misfire":"fire_all","misfire_limit":{n}"#)).unwrap_err();
            assert_eq!(err, JobError::field("misfire_limit", reason));
        }
        let (f, _) = field_err(
            r#"{"id":"x","schedule":"@every 1s","run":{"shell":"t"},"misfire":"fire_all","misfire_limit":-1}"#,
        );
        assert_eq!(f, "misfire_limit");
        for (policy, extra) in [
            ("skip", r#","misfire":"skip","misfire_limit":5"#),
            ("fire_once", r#","misfire_limit":5"#),
        ] {
            assert_eq!(
                with(extra).unwrap_err(),
                JobError::field(
                    "misfire_limit",
                    format!("applies only to misfire fire_all, and this job's misfire is {policy}")
                )
            );
        }
    }

    #[test]
    fn spec_round_trips_through_json() {
        let j = job(r#"{"id":"x","schedule":"@every 5s","shards":3,"run":{"shell":"true"},"payload":{"a":1}}"#)
            .unwrap();
        let again = JobSpec::decode(&j.spec.encode()).unwrap();
        assert_eq!(again, j.spec);
    }

    #[test]
    fn a_definition_too_large_indented_is_stored_compact() {
        let rows = vec![serde_json::Value::from(7); 60_000];
        let body = serde_json::to_vec(&serde_json::json!({
            "id": "x", "schedule": "@hourly", "run": {"shell": "t"}, "payload": {"rows": rows},
        }))
        .unwrap();
        assert!(body.len() < MAX_DEFINITION_BYTES);
        let spec = job(std::str::from_utf8(&body).unwrap()).unwrap().spec;
        assert!(serde_json::to_vec_pretty(&spec).unwrap().len() > MAX_DEFINITION_BYTES);
        let stored = spec.encode();
        assert!(stored.len() <= MAX_DEFINITION_BYTES, "{}", stored.len());
        assert_eq!(Job::decode(&stored, Some("x")).unwrap().spec, spec);
        // A small one stays readable.
        let small = job(r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"}}"#).unwrap();
        assert!(small.spec.encode().contains(&b'\n'));
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        let (f, r) = field_err(r#"{"id":"x","schedule":"61 * * * * *","run":{"shell":"true"}}"#);
        assert_eq!(f, "schedule");
        assert!(r.contains("second must be 0-59"), "{r}");

        let (f, r) = field_err(r#"{"id":"a.b","schedule":"@hourly","run":{"shell":"true"}}"#);
        assert_eq!((f.as_str(), r.contains("'a.b'")), ("id", true));

        let (f, _) = field_err(
            r#"{"id":"x","schedule":"@hourly","timezone":"Mars/Base","run":{"shell":"true"}}"#,
        );
        assert_eq!(f, "timezone");

        let (f, r) =
            field_err(r#"{"id":"x","schedule":"@hourly","shards":0,"run":{"shell":"true"}}"#);
        assert_eq!(f, "shards");
        assert!(r.contains("1-1000"), "{r}");

        let (f, _) =
            field_err(r#"{"id":"x","schedule":"@hourly","shards":[],"run":{"shell":"true"}}"#);
        assert_eq!(f, "shards");

        let (f, r) =
            field_err(r#"{"id":"x","schedule":"@hourly","shards":"many","run":{"shell":"true"}}"#);
        assert_eq!(f, "shards");
        assert!(r.contains("shard count or a list"), "{r}");

        let (f, _) = field_err(r#"{"id":"x","schedule":"@hourly","run":{"shell":"  "}}"#);
        assert_eq!(f, "run.shell");

        let (f, r) = field_err(r#"{"id":"x","schedule":"@hourly","run":{"python":"x"}}"#);
        assert_eq!(f, "run");
        assert!(r.contains("shell"), "{r}");

        let (f, _) =
            field_err(r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"},"timeout":"soon"}"#);
        assert_eq!(f, "timeout");

        let (f, _) = field_err(
            r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"},"retry":{"max_attempts":0}}"#,
        );
        assert_eq!(f, "retry.max_attempts");

        let (f, _) = field_err(
            r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"},"retry":{"backoff":["1s","x"]}}"#,
        );
        assert_eq!(f, "retry.backoff[1]");

        let (f, r) = field_err(r#"{"id":"x","run":{"shell":"t"}}"#);
        assert_eq!((f.as_str(), r.as_str()), ("schedule", "is required"));

        let (f, r) =
            field_err(r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"},"timout":"1s"}"#);
        assert_eq!(f, "timout");
        assert!(r.starts_with("unknown field"), "{r}");

        let (f, _) = field_err(r#"{"id":7,"schedule":"@hourly","run":{"shell":"t"}}"#);
        assert_eq!(f, "id");
    }

    #[test]
    fn syntax_errors_and_empty_bodies_are_reported_as_such() {
        assert!(matches!(job("{not json"), Err(JobError::Syntax(_))));
        assert!(matches!(job(""), Err(JobError::Syntax(_))));
        assert!(matches!(
            job("[1,2]"),
            Err(JobError::Syntax(_)) | Err(JobError::Field { .. })
        ));
        let big = format!(
            r#"{{"id":"x","description":"{}"}}"#,
            "a".repeat(MAX_DEFINITION_BYTES)
        );
        assert!(matches!(job(&big), Err(JobError::TooLarge(_))));
    }

    #[test]
    fn id_must_match_the_key() {
        let body = br#"{"id":"a","schedule":"@hourly","run":{"shell":"t"}}"#;
        let err = Job::decode(body, Some("b")).unwrap_err();
        assert_eq!(err.field_name(), Some("id"));
        assert!(Job::decode(body, Some("a")).is_ok());
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        for schedule in ["0 0 30 2 *", "0 0 31 4,6,9,11 *"] {
            let (f, r) = field_err(&format!(
                r#"{{"id":"x","schedule":"{schedule}","run":{{"shell":"t"}}}}"#
            ));
            assert_eq!(
                (f.as_str(), r),
                (
                    "schedule",
                    format!(
                        "'{schedule}': never fires: no month it names has a day-of-month it names"
                    )
                )
            );
        }
        // A restricted day-of-week is ORed with day-of-month and fires on its own.
        assert!(job(r#"{"id":"x","schedule":"0 0 30 2 1","run":{"shell":"t"}}"#).is_ok());
    }

    #[test]
    fn an_at_instant_in_the_past_is_refused_when_put_not_when_loaded() {
        let body = r#"{"id":"once","schedule":"@at 2026-03-01T09:00:00Z","run":{"shell":"t"}}"#;
        // A stored job whose instant has passed still loads.
        let stored = Job::decode(body.as_bytes(), Some("once")).unwrap();
        assert!(Definition::decode(body.as_bytes(), Some("once")).is_ok());
        let at: DateTime<Utc> = "2026-03-01T09:00:00Z".parse().unwrap();
        assert_eq!(stored.check_put(at - chrono::TimeDelta::seconds(1)), Ok(()));
        for now in [at, at + chrono::TimeDelta::days(30)] {
            let err = stored.check_put(now).unwrap_err();
            assert_eq!(
                err,
                JobError::Field {
                    field: "schedule".into(),
                    reason: "'@at 2026-03-01T09:00:00Z': never fires: 2026-03-01T09:00:00Z is in \
                             the past"
                        .into()
                }
            );
        }
        let hourly = job(r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"}}"#).unwrap();
        assert_eq!(hourly.check_put(at), Ok(()));
    }

    #[test]
    fn nul_bytes_are_refused_where_a_process_would_get_them() {
        let reason = "contains a NUL byte, which a process cannot take in its arguments or \
                      environment";
        for (body, field) in [
            (
                r#"{"id":"a\u0000b","schedule":"@hourly","run":{"shell":"t"}}"#,
                "id",
            ),
            (
                r#"{"id":"x","schedule":"@hourly","group":"g\u0000","run":{"shell":"t"}}"#,
                "group",
            ),
            (
                r#"{"id":"x","schedule":"@hourly","shards":["a","b\u0000c"],"run":{"shell":"t"}}"#,
                "shards[1]",
            ),
            (
                r#"{"id":"x","schedule":"@hourly","run":{"shell":"echo a\u0000b"}}"#,
                "run.shell",
            ),
        ] {
            let (f, r) = field_err(body);
            assert_eq!((f.as_str(), r.as_str()), (field, reason), "{body}");
        }
        // Elsewhere a NUL is plain data: the payload reaches a process as escaped JSON.
        assert!(
            job(r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"},"payload":"a\u0000"}"#)
                .is_ok()
        );
    }

    #[test]
    fn errors_quote_at_most_80_characters_of_the_input() {
        let cut = |c: &str| format!("{}…", c.repeat(80));
        let schedule = "1 ".repeat(2500);
        let (f, r) = field_err(&format!(
            r#"{{"id":"x","schedule":"{schedule}","run":{{"shell":"t"}}}}"#
        ));
        assert_eq!(f, "schedule");
        assert_eq!(
            r,
            format!(
                "'{}…': expected 5 or 6 fields (or a macro such as @hourly, @every 5m, \
                 @at <RFC 3339>), found 2500",
                &schedule[..80]
            )
        );
        let long = "a".repeat(5000);
        for (body, field, reason) in [
            (
                format!(r#"{{"id":"{long}","schedule":"@hourly","run":{{"shell":"t"}}}}"#),
                "id",
                format!(
                    "'{}' must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'",
                    cut("a")
                ),
            ),
            (
                format!(
                    r#"{{"id":"x","schedule":"@hourly","timezone":"{long}","run":{{"shell":"t"}}}}"#
                ),
                "timezone",
                format!(
                    "'{}' is not an IANA time zone name (such as UTC or Europe/Berlin)",
                    cut("a")
                ),
            ),
            (
                format!(
                    r#"{{"id":"x","schedule":"@hourly","run":{{"shell":"t"}},"timeout":"1{long}"}}"#
                ),
                "timeout",
                format!(
                    "'1{}…' is not a duration (unknown time unit \"{}\", supported units: ns, \
                     us/µs, ms, sec, min, hours, days, weeks, months, years (and few \
                     variations)); use e.g. 30s, 5m, 1h30m",
                    "a".repeat(79),
                    cut("a")
                ),
            ),
            (
                format!(
                    r#"{{"id":"x","schedule":"@hourly","shards":"{long}","run":{{"shell":"t"}}}}"#
                ),
                "shards",
                format!(
                    "invalid type: string \"{}\", expected a shard count or a list of shard \
                     parameters (strings)",
                    cut("a")
                ),
            ),
            (
                format!(r#"{{"id":"x","schedule":"@hourly","run":{{"{long}":"t"}}}}"#),
                "run",
                format!(
                    "unknown variant `{}`, expected one of `shell`, `http`, `handler`",
                    cut("a")
                ),
            ),
            (
                format!(r#"{{"id":"x","schedule":"@hourly","run":{{"shell":"t"}},"{long}":1}}"#),
                &cut("a"),
                format!(
                    "unknown field `{}`, expected one of `id`, `schedule`, `timezone`, \
                     `start_at`, `end_at`, `shards`, `group`, `run`, `timeout`, `deadline`, \
                     `retry`, `payload`, `description`, `paused`, `history`, `misfire`, \
                     `misfire_limit`, `overlap`, `on_success`",
                    cut("a")
                ),
            ),
        ] {
            let (f, r) = field_err(&body);
            assert_eq!((f.as_str(), r.as_str()), (field, reason.as_str()));
        }
        let body = r#"{"id":"x","schedule":"@hourly","run":{"shell":"t"}}"#;
        let err = Job::decode(body.as_bytes(), Some(&long)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "id: 'x' does not match the key '{}' it is stored under",
                cut("a")
            )
        );
    }

    #[test]
    fn start_and_end_bound_the_schedule_and_are_checked() {
        let j = job(r#"{"id":"w","schedule":"@every 1h","run":{"shell":"true"},
                "start_at":"2026-05-01T12:00:00+02:00","end_at":"2026-05-01T13:00:00Z"}"#)
        .unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            j.schedule.upcoming(at("2026-01-01T00:00:00Z"), 5),
            vec![
                at("2026-05-01T10:00:00Z"),
                at("2026-05-01T11:00:00Z"),
                at("2026-05-01T12:00:00Z"),
                at("2026-05-01T13:00:00Z")
            ]
        );
        let d = Definition::decode(
            br#"{"id":"w","schedule":"@every 1h","run":{"shell":"true"},"end_at":"2026-05-01T13:00:00Z"}"#,
            None,
        )
        .unwrap();
        assert_eq!(d.schedule().next_after(at("2026-05-01T13:00:00Z")), None);
        // Put after the end: refused; stored, it still loads (and never fires).
        assert_eq!(
            d.job().unwrap().check_put(at("2026-05-01T12:30:00Z")),
            Ok(())
        );
        let e = d
            .job()
            .unwrap()
            .check_put(at("2026-05-01T13:00:00Z"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "end_at: never fires: no instant of the schedule is left before 2026-05-01T13:00:00Z"
        );
        for (extra, field, reason) in [
            (
                r#""start_at":"tomorrow""#,
                "start_at",
                "'tomorrow' is not an RFC 3339 instant (such as 2026-12-01T09:00:00+01:00)",
            ),
            (
                r#""start_at":"2026-05-02T00:00:00Z","end_at":"2026-05-01T00:00:00Z""#,
                "end_at",
                "2026-05-01T00:00:00Z is before start_at 2026-05-02T00:00:00Z",
            ),
            (
                r#""start_at":"2026-05-01T10:01:00Z","end_at":"2026-05-01T10:59:00Z""#,
                "schedule",
                "'@every 1h': never fires between start_at and end_at",
            ),
        ] {
            let body =
                format!(r#"{{"id":"w","schedule":"@every 1h","run":{{"shell":"true"}},{extra}}}"#);
            assert_eq!(
                field_err(&body),
                (field.to_string(), reason.to_string()),
                "{extra}"
            );
        }
    }

    #[test]
    fn a_command_too_long_for_one_argument_is_refused() {
        let body = |n: usize| {
            format!(
                r#"{{"id":"x","schedule":"@hourly","run":{{"shell":"{}"}}}}"#,
                "x".repeat(n)
            )
        };
        assert!(job(&body(MAX_SHELL_BYTES)).is_ok());
        let (field, reason) = field_err(&body(MAX_SHELL_BYTES + 1));
        assert_eq!(field, "run.shell");
        assert_eq!(
            reason,
            "131072 bytes is more than a process takes in one argument (at most 131071); \
             put the script in a file on the workers and run that"
        );
    }
}
