//! The messages that cross NATS between scheduler, workers and watchers.
//!
//! Each type encodes to JSON and decodes from it here, so that both sides
//! and any NATS client see the same shape.

use std::time::Duration;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::job::{Job, Misfire, RetryPolicy, Run};

/// Header carrying the leader epoch (lease revision at takeover) of the dispatch.
pub const HEADER_EPOCH: &str = "Jetcron-Epoch";
/// Header carrying the job id.
pub const HEADER_JOB: &str = "Jetcron-Job";
/// Header carrying the shard index.
pub const HEADER_SHARD: &str = "Jetcron-Shard";

#[derive(Debug, Error)]
pub enum WireError {
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The id of one fire: `<job>:<instant unix ms>`.
pub fn fire_id(job: &str, instant: DateTime<Utc>) -> String {
    format!("{job}:{}", instant.timestamp_millis())
}

/// The JetStream deduplication id of one shard of one fire:
/// `<job>:<instant unix ms>:<shard>`.
pub fn shard_msg_id(job: &str, instant: DateTime<Utc>, shard: u32) -> String {
    format!("{job}:{}:{shard}", instant.timestamp_millis())
}

/// The JetStream deduplication id of a shard's end notice on the ends
/// stream: `end:<job>:<instant unix ms>:<shard>`.
pub fn end_msg_id(job: &str, instant: DateTime<Utc>, shard: u32) -> String {
    format!("end:{job}:{}:{shard}", instant.timestamp_millis())
}

/// Why a fire happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// On time, from the schedule.
    Schedule,
    /// Late: fired more than the misfire threshold after its instant
    /// (leader takeover, scheduler down), as the job's `misfire` says.
    Misfire,
    /// Outside the schedule, by `job.trigger`.
    Manual,
    /// Every shard of a fire of a job that names this one in `on_success`
    /// succeeded.
    Parent,
}

/// One shard of one fire, as stored in the work stream. Carries everything a
/// worker needs, so workers never read the jobs bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMessage {
    pub job: String,
    pub group: String,
    /// Scheduled instant of the fire.
    pub instant: DateTime<Utc>,
    pub shard: u32,
    pub shards: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    pub run: Run,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Leader epoch that dispatched it.
    pub epoch: u64,
    pub cause: Cause,
    pub dispatched_at: DateTime<Utc>,
    /// Runs-bucket key of this fire's record (`<job>.<slot>`); the worker
    /// writes its shard record under `<record>.<shard>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The job's `deadline` after the instant: a delivery that arrives
    /// later is not run but ends the shard `expired`, whatever its attempt.
    /// None: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The scheduler waits for this fire's end (the job's `overlap` policy,
    /// an `@after` schedule, `on_success` children): the worker that ends
    /// the shard for good (no attempt follows) publishes its last result on
    /// the ends stream as well (`jetcron.ends.<job>`, dedup id
    /// [`end_msg_id`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track: bool,
    /// The fire of the parent job whose success fired this one
    /// (`<job>:<instant unix ms>`), for a `parent` fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl ShardMessage {
    pub fn new(
        job: &Job,
        instant: DateTime<Utc>,
        shard: u32,
        epoch: u64,
        cause: Cause,
    ) -> ShardMessage {
        ShardMessage {
            job: job.id().to_string(),
            group: job.group().to_string(),
            instant,
            shard,
            shards: job.shard_count(),
            param: job.spec.shards.param(shard).map(str::to_string),
            run: job.spec.run.clone(),
            timeout_ms: job.timeout.as_millis() as u64,
            retry: job.retry.clone(),
            payload: job.spec.payload.clone(),
            epoch,
            cause,
            dispatched_at: Utc::now(),
            record: None,
            expires_at: job.deadline.and_then(|d| {
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| instant.checked_add_signed(d))
            }),
            track: job.tracked(),
            parent: None,
        }
    }

    /// Whether a shard starting at `now` would start past its deadline.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now > at)
    }

    /// Runs-bucket key of this shard's record, when the fire is recorded.
    pub fn record_key(&self) -> Option<String> {
        self.record.as_ref().map(|r| format!("{r}.{}", self.shard))
    }

    pub fn fire_id(&self) -> String {
        fire_id(&self.job, self.instant)
    }

    pub fn msg_id(&self) -> String {
        shard_msg_id(&self.job, self.instant, self.shard)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Headers for the work stream: dedup id, epoch, job, shard.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, self.msg_id().as_str());
        h.insert(HEADER_EPOCH, self.epoch.to_string().as_str());
        h.insert(HEADER_JOB, self.job.as_str());
        h.insert(HEADER_SHARD, self.shard.to_string().as_str());
        h
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<ShardMessage, WireError> {
        decode("shard message", bytes)
    }
}

/// How one attempt of one shard ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    TimedOut,
    /// Not run: delivered past its deadline.
    Expired,
    /// Stopped, or not run: a newer fire of the job replaced its fire
    /// (`overlap: replace`).
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Expired => "expired",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// The result of one attempt of one shard, on `jetcron.results.<job>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub job: String,
    pub instant: DateTime<Utc>,
    pub shard: u32,
    pub shards: u32,
    pub attempt: u32,
    pub run_id: String,
    pub status: RunStatus,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub exit_code: Option<i32>,
    /// Combined stdout and stderr, or an HTTP job's response body; bounded.
    pub output: String,
    #[serde(default)]
    pub output_truncated: bool,
    /// Why the attempt failed when the command itself says nothing (spawn error, refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether another attempt will follow.
    #[serde(default)]
    pub will_retry: bool,
    pub epoch: u64,
    /// Sequence of the shard message in the work stream: every result of one
    /// dispatched shard carries the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<u64>,
    /// For a `parent` fire: the fire id of the parent whose success fired it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// An HTTP job's response status, when a response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl RunResult {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<RunResult, WireError> {
        decode("run result", bytes)
    }
}

/// The leader's fence: stored by a new leader in every stream it writes
/// (`jetcron.work.fence`, key `=fence` of the state and runs buckets; in the
/// events stream the `leader` event plays this part). Each of the leader's
/// later writes to that stream expects this message to be the last on its
/// subject (`Nats-Expected-Last-Subject-Sequence` with
/// `Nats-Expected-Last-Subject-Sequence-Subject`), so once a newer leader
/// has stored its own fence the server refuses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub epoch: u64,
    pub holder: String,
    pub at: DateTime<Utc>,
}

impl Fence {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Fence, WireError> {
        decode("fence", bytes)
    }
}

/// Something worth telling operators, on `jetcron.events.<kind>[.<job>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A fire was dispatched.
    Fired {
        job: String,
        instant: DateTime<Utc>,
        shards: u32,
        epoch: u64,
        cause: Cause,
        /// Dispatch time minus scheduled instant.
        late_ms: i64,
        /// Runs-bucket key (`<job>.<slot>`) under which the workers write
        /// this fire's shard records. The `fired` events of a job are its
        /// run history: `job.runs` joins them with those records.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<String>,
        /// A `parent` fire: the fire id of the parent whose success fired it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<String>,
    },
    /// `missed` late instants, `first_missed` to `last_missed`, did not
    /// fire as themselves: `fired` is the one fired in their place
    /// (`fire_once`); without it none of them fired (`skip`, or beyond the
    /// limit of `fire_all`).
    Misfired {
        job: String,
        missed: u64,
        first_missed: DateTime<Utc>,
        last_missed: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fired: Option<DateTime<Utc>>,
        epoch: u64,
        /// The job's misfire policy that decided it.
        #[serde(default)]
        policy: Misfire,
    },
    /// A shard failed its last attempt.
    Dead {
        job: String,
        instant: DateTime<Utc>,
        shard: u32,
        attempts: u32,
        status: RunStatus,
        run_id: String,
        worker: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A shard was not started within its deadline and is not run.
    Expired {
        job: String,
        instant: DateTime<Utc>,
        shard: u32,
        /// The attempt it would have been.
        attempt: u32,
        /// Its result's run id.
        run_id: String,
        worker: String,
        /// The instant plus the job's deadline.
        expires_at: DateTime<Utc>,
        /// When the worker got it, minus the instant.
        late_ms: i64,
    },
    /// A fire of a job with `overlap: replace` was replaced by a newer one:
    /// every shard of the job's fires with an instant before `by` is
    /// cancelled (a running one killed, a waiting one not run), and ends
    /// `cancelled`. Workers read the latest of these per job.
    Replaced {
        job: String,
        /// The fire replaced.
        instant: DateTime<Utc>,
        /// The instant of the fire replacing it.
        by: DateTime<Utc>,
        epoch: u64,
    },
    /// An instant passed without a fire, and why (e.g. `paused`).
    Skipped {
        job: String,
        instant: DateTime<Utc>,
        reason: String,
        /// Instants this event stands for (several after downtime).
        #[serde(default = "one")]
        count: u64,
    },
    /// The job was paused.
    Paused { job: String, revision: u64 },
    /// The job was resumed; the fires skipped while paused are not replayed.
    Resumed {
        job: String,
        revision: u64,
        skipped: u64,
    },
    /// A fire was requested outside the schedule.
    Triggered {
        job: String,
        fire_id: String,
        instant: DateTime<Utc>,
        shards: Vec<u32>,
        /// Set when `job.retry` made this fire: the fire it retries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<String>,
    },
    /// A definition in the jobs bucket does not parse or validate.
    Invalid {
        job: String,
        revision: u64,
        error: String,
    },
    /// Leadership changed hands.
    Leader { holder: String, epoch: u64 },
}

fn one() -> u64 {
    1
}

impl Event {
    pub fn now(body: EventBody) -> Event {
        Event {
            at: Utc::now(),
            body,
        }
    }

    /// The event kind, as used in the subject.
    pub fn kind(&self) -> &'static str {
        match self.body {
            EventBody::Fired { .. } => "fired",
            EventBody::Misfired { .. } => "misfired",
            EventBody::Dead { .. } => "dead",
            EventBody::Expired { .. } => "expired",
            EventBody::Invalid { .. } => "invalid",
            EventBody::Leader { .. } => "leader",
            EventBody::Skipped { .. } => "skipped",
            EventBody::Paused { .. } => "paused",
            EventBody::Resumed { .. } => "resumed",
            EventBody::Triggered { .. } => "triggered",
            EventBody::Replaced { .. } => "replaced",
        }
    }

    pub fn job(&self) -> Option<&str> {
        match &self.body {
            EventBody::Fired { job, .. }
            | EventBody::Misfired { job, .. }
            | EventBody::Dead { job, .. }
            | EventBody::Expired { job, .. }
            | EventBody::Invalid { job, .. }
            | EventBody::Skipped { job, .. }
            | EventBody::Paused { job, .. }
            | EventBody::Resumed { job, .. }
            | EventBody::Triggered { job, .. }
            | EventBody::Replaced { job, .. } => Some(job),
            EventBody::Leader { .. } => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, WireError> {
        decode("event", bytes)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // These types hold only strings, numbers, timestamps and JSON values,
    // all of which serialize, so the fallback is unreachable.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|source| WireError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> Job {
        Job::decode(
            br#"{"id":"sync","schedule":"@every 1s","shards":["a","b"],"group":"g","run":{"shell":"true"},"payload":{"k":1}}"#,
            None,
        )
        .unwrap()
    }

    #[test]
    fn shard_message_ids_and_round_trip() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let m = ShardMessage::new(&job(), at, 1, 42, Cause::Schedule);
        assert_eq!(m.msg_id(), format!("sync:{}:1", at.timestamp_millis()));
        assert_eq!(m.fire_id(), format!("sync:{}", at.timestamp_millis()));
        assert_eq!(m.param.as_deref(), Some("b"));
        assert_eq!(m.shards, 2);
        let h = m.headers();
        assert_eq!(
            h.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str(),
            m.msg_id()
        );
        assert_eq!(h.get(HEADER_EPOCH).unwrap().as_str(), "42");
        assert_eq!(ShardMessage::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn a_shard_message_expires_at_its_instant_plus_the_deadline() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let none = ShardMessage::new(&job(), at, 0, 1, Cause::Schedule);
        assert_eq!(none.expires_at, None);
        assert!(!none.expired(at + chrono::Duration::days(365)));
        let v: serde_json::Value = serde_json::from_slice(&none.encode()).unwrap();
        assert!(v.get("expires_at").is_none());

        let timed = Job::decode(
            br#"{"id":"sync","schedule":"@every 1s","run":{"shell":"true"},"deadline":"10m"}"#,
            None,
        )
        .unwrap();
        let m = ShardMessage::new(&timed, at, 0, 1, Cause::Misfire);
        let end = at + chrono::Duration::minutes(10);
        assert_eq!(m.expires_at, Some(end));
        assert!(!m.expired(at));
        assert!(!m.expired(end));
        assert!(m.expired(end + chrono::Duration::milliseconds(1)));
        let v: serde_json::Value = serde_json::from_slice(&m.encode()).unwrap();
        assert_eq!(v["expires_at"], "2026-01-02T03:14:05Z");
        assert_eq!(ShardMessage::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn result_json_has_the_documented_fields() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let r = RunResult {
            job: "sync".into(),
            instant: at,
            shard: 0,
            shards: 1,
            attempt: 1,
            run_id: "r1".into(),
            status: RunStatus::TimedOut,
            worker: "w1".into(),
            started_at: at,
            finished_at: at,
            exit_code: None,
            output: String::new(),
            output_truncated: false,
            error: None,
            will_retry: false,
            epoch: 3,
            stream_seq: None,
            parent: None,
            http_status: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        for f in [
            "job",
            "instant",
            "shard",
            "shards",
            "attempt",
            "run_id",
            "status",
            "worker",
            "started_at",
            "finished_at",
            "exit_code",
            "output",
        ] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        assert_eq!(v["status"], "timed_out");
        assert_eq!(RunResult::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn events_carry_kind_and_round_trip() {
        let e = Event::now(EventBody::Invalid {
            job: "x".into(),
            revision: 4,
            error: "schedule: bad".into(),
        });
        let v: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(v["kind"], "invalid");
        assert_eq!(e.kind(), "invalid");
        assert_eq!(e.job(), Some("x"));
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        assert!(ShardMessage::decode(b"{}").is_err());

        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let e = Event::now(EventBody::Expired {
            job: "x".into(),
            instant: at,
            shard: 2,
            attempt: 1,
            run_id: "r".into(),
            worker: "w".into(),
            expires_at: at + chrono::Duration::seconds(2),
            late_ms: 3000,
        });
        let v: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["late_ms"].as_i64()),
            (Some("expired"), Some(3000))
        );
        assert_eq!(v["expires_at"], "2026-01-02T03:04:07Z");
        assert_eq!((e.kind(), e.job()), ("expired", Some("x")));
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        assert_eq!(
            serde_json::to_value(RunStatus::Expired).unwrap(),
            RunStatus::Expired.as_str()
        );
    }

    #[test]
    fn a_misfired_event_says_what_fired_in_place_of_the_missed_instants_if_anything() {
        let t = |s: u32| Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, s).unwrap();
        let skipped = Event::now(EventBody::Misfired {
            job: "x".into(),
            missed: 3,
            first_missed: t(1),
            last_missed: t(3),
            fired: None,
            epoch: 4,
            policy: Misfire::Skip,
        });
        let v: serde_json::Value = serde_json::from_slice(&skipped.encode()).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["policy"].as_str()),
            (Some("misfired"), Some("skip"))
        );
        assert!(v.get("fired").is_none(), "{v}");
        assert_eq!(Event::decode(&skipped.encode()).unwrap(), skipped);
        // As written before policies: fire_once, with the fire in their place.
        let old = r#"{"at":"2026-01-02T03:04:09Z","kind":"misfired","job":"x","missed":3,
            "first_missed":"2026-01-02T03:04:01Z","last_missed":"2026-01-02T03:04:03Z",
            "fired":"2026-01-02T03:04:03Z","epoch":4}"#;
        let EventBody::Misfired { fired, policy, .. } = Event::decode(old.as_bytes()).unwrap().body
        else {
            panic!("not a misfired event");
        };
        assert_eq!((fired, policy), (Some(t(3)), Misfire::FireOnce));
    }
}
