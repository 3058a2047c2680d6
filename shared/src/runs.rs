//! Run history and liveness records, stored in KV so that any replica can
//! answer `job.runs`, `workers` and `status`.
//!
//! - A [`FireRecord`] per fire, written by whoever dispatched it (the leader,
//!   or the API for a trigger), under `<job>.<slot>` in the runs bucket
//!   (see [`crate::Names::run_fire_key`]; slots are a ring, so history is
//!   bounded per job).
//! - A [`ShardRecord`] per shard, written by the worker running it, under
//!   `<job>.<slot>.<shard>` (the shard message's `record_key()`): `running`
//!   at the start of each attempt, the outcome at its end. No record, or a
//!   record whose `instant` is not the fire's (left by an older fire in the
//!   same slot), means `pending`.
//! - A [`WorkerHeartbeat`] per live worker under `<group>.<id>` in the
//!   workers bucket, whose max age makes dead workers disappear by themselves.
//! - A [`ReplicaHeartbeat`] per scheduler replica under `replica.<id>` in the
//!   lease bucket.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::wire::{Cause, RunStatus};

/// One fire of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FireRecord {
    pub job: String,
    pub fire_id: String,
    pub instant: DateTime<Utc>,
    pub cause: Cause,
    pub fired_at: DateTime<Utc>,
    /// Shard count of the job at fire time.
    pub shards: u32,
    /// The shards dispatched (all of them unless a trigger chose some).
    pub dispatched: Vec<u32>,
    pub epoch: u64,
    /// The payload a trigger gave this fire in place of the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// For a fire made by `job.retry`: the fire it retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

/// Where one shard of one fire stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Not started within the job's deadline; not run.
    Expired,
    /// Replaced by a newer fire of the job (`overlap: replace`): killed, or not run.
    Cancelled,
}

impl From<RunStatus> for ShardState {
    fn from(s: RunStatus) -> ShardState {
        match s {
            RunStatus::Succeeded => ShardState::Succeeded,
            RunStatus::Failed => ShardState::Failed,
            RunStatus::TimedOut => ShardState::TimedOut,
            RunStatus::Expired => ShardState::Expired,
            RunStatus::Cancelled => ShardState::Cancelled,
        }
    }
}

impl ShardState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Pending => "pending",
            ShardState::Running => "running",
            ShardState::Succeeded => "succeeded",
            ShardState::Failed => "failed",
            ShardState::TimedOut => "timed_out",
            ShardState::Expired => "expired",
            ShardState::Cancelled => "cancelled",
        }
    }
}

/// The latest attempt of one shard of one fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub job: String,
    pub instant: DateTime<Utc>,
    pub shard: u32,
    pub state: ShardState,
    pub attempt: u32,
    pub worker: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Another attempt follows (after a failure with retries left).
    #[serde(default)]
    pub will_retry: bool,
    /// Attempts of this shard lost in a row right before this one: each
    /// was still `running` when its message came back, so its worker died
    /// (or lost the server for longer than the ack wait) before reporting.
    /// An attempt handed back at shutdown is not lost and does not end
    /// the row; one that reported does.
    #[serde(default)]
    pub lost: u32,
    /// The last [`OUTPUT_TAIL`] bytes of an ended attempt's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    /// Why an ended attempt failed, as its result says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Bytes of output a shard record keeps (its end); the whole output, up to
/// the worker's `--max-output`, is in the result.
pub const OUTPUT_TAIL: usize = 1024;

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    let mut from = text.len().saturating_sub(max);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

/// A live worker, refreshed every few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub id: String,
    pub group: String,
    pub host: String,
    pub version: String,
    pub concurrency: usize,
    /// Shards running now.
    pub running: usize,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// The handlers it registered (a worker embedded in a service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<String>,
}

/// A live scheduler replica, refreshed every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaHeartbeat {
    pub id: String,
    pub host: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    pub leader: bool,
    /// It holds every job definition and fire state (loaded, and kept
    /// current): as a standby it can take over at once. Replicas that do
    /// not say are read as warm.
    #[serde(default = "warm_unless_said")]
    pub warm: bool,
}

fn warm_unless_said() -> bool {
    true
}

/// JSON encoding shared by the records above.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Only strings, numbers and timestamps: serialization cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_the_end_cut_at_a_character() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("", 3), "");
        // "é" is two bytes: a cut through it starts after it.
        assert_eq!(tail("aéb", 2), "b");
        assert_eq!(tail("aéb", 3), "éb");
    }

    #[test]
    fn shard_records_without_lost_attempts_read_as_none_lost() {
        let old = br#"{"job":"sync","instant":"2026-01-02T03:04:05Z","shard":2,"state":"running",
            "attempt":3,"worker":"w1","run_id":"RUN","started_at":"2026-01-02T03:04:06Z"}"#;
        let record: ShardRecord = decode(old).unwrap();
        assert_eq!(
            (record.state, record.attempt, record.lost),
            (ShardState::Running, 3, 0)
        );
        let lost = ShardRecord { lost: 2, ..record };
        assert_eq!(decode::<ShardRecord>(&encode(&lost)), Some(lost));
    }
}
