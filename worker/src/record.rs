//! Shard records: the run history a worker leaves in the runs bucket, under
//! the key the shard message names (`ShardMessage::record_key()`).
//!
//! An attempt writes `running` when it starts and its outcome when it ends,
//! after its result (and its `dead` event, if any) is stored and before its
//! message is settled: once a shard message is acked, its record is final.
//! An attempt handed back at shutdown writes `pending`, since it waits for
//! another worker. An attempt that finds its shard's record still
//! `running` knows the attempt before it was lost, and carries the count
//! of attempts lost in a row in its own record (`lost`; see
//! [`crate::attempt`] for what ends a crash loop).
//!
//! Before running, a delivery [`Recorder::get`]s the record: a final record
//! of the same fire means the shard already ran to its end and only the ack
//! was lost, so it is not run again; any other record of that fire tells
//! how many attempts came before (see [`crate::attempt`]). A record whose
//! `instant` differs was left by an older fire in the same history slot and
//! says nothing about this one.
//!
//! The results stream stays the source of truth. A record that cannot be
//! written is logged and the attempt goes on, settled as it would have been;
//! the price is that a lost ack may then run the shard again, and that
//! second execution is recorded like any other.

use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use jetcron_shared::runs::{self, ShardRecord, ShardState};
use jetcron_shared::wire::{RunResult, ShardMessage};
use thiserror::Error;
use tokio::time::timeout;

/// Longest wait for one record write: it delays the run or the ack.
pub const RECORD_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("cannot write shard record {key}: {reason}")]
    Put { key: String, reason: String },
    #[error("cannot write shard record {key}: no answer within {RECORD_LIMIT:?}")]
    TimedOut { key: String },
    #[error("cannot read shard record {key}: {reason}")]
    Get { key: String, reason: String },
    #[error("cannot read shard record {key}: no answer within {RECORD_LIMIT:?}")]
    GetTimedOut { key: String },
    #[error("shard record {key} is not a shard record")]
    Garbled { key: String },
}

/// Writes shard records into the runs bucket.
#[derive(Debug, Clone)]
pub struct Recorder {
    store: kv::Store,
}

impl Recorder {
    pub fn new(store: kv::Store) -> Recorder {
        Recorder { store }
    }

    /// Puts `record` under `key`, waiting for the bucket's ack.
    pub async fn put(&self, key: &str, record: &ShardRecord) -> Result<(), RecordError> {
        let body = runs::encode(record);
        match timeout(RECORD_LIMIT, self.store.put(key, body.into())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RecordError::Put {
                key: key.to_string(),
                reason: e.to_string(),
            }),
            Err(_) => Err(RecordError::TimedOut {
                key: key.to_string(),
            }),
        }
    }

    /// Reads the record under `key`; `None` when there is none (a shard
    /// never started, or a fire whose record was never written).
    pub async fn get(&self, key: &str) -> Result<Option<ShardRecord>, RecordError> {
        let value = match timeout(RECORD_LIMIT, self.store.get(key)).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                return Err(RecordError::Get {
                    key: key.to_string(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(RecordError::GetTimedOut {
                    key: key.to_string(),
                });
            }
        };
        match value {
            None => Ok(None),
            Some(bytes) => runs::decode(&bytes).map(Some).ok_or(RecordError::Garbled {
                key: key.to_string(),
            }),
        }
    }
}

/// Whether `record` is the last word on its shard: it succeeded, or it
/// failed (or timed out) with no attempt to follow. Such a shard is never
/// run again for the same fire.
pub fn is_final(record: &ShardRecord) -> bool {
    match record.state {
        ShardState::Succeeded | ShardState::Expired | ShardState::Cancelled => true,
        ShardState::Failed | ShardState::TimedOut => !record.will_retry,
        ShardState::Pending | ShardState::Running => false,
    }
}

/// The record of an attempt that just started, after `lost` attempts lost
/// in a row.
pub fn running(
    shard: &ShardMessage,
    attempt: u32,
    lost: u32,
    worker: &str,
    run_id: &str,
    started_at: DateTime<Utc>,
) -> ShardRecord {
    ShardRecord {
        job: shard.job.clone(),
        instant: shard.instant,
        shard: shard.shard,
        state: ShardState::Running,
        attempt,
        worker: worker.to_string(),
        run_id: run_id.to_string(),
        started_at,
        finished_at: None,
        exit_code: None,
        will_retry: false,
        lost,
        output_tail: None,
        error: None,
    }
}

/// The record of an attempt that ended with `result`, after `lost`
/// attempts lost in a row.
pub fn finished(result: &RunResult, lost: u32) -> ShardRecord {
    ShardRecord {
        job: result.job.clone(),
        instant: result.instant,
        shard: result.shard,
        state: ShardState::from(result.status),
        attempt: result.attempt,
        worker: result.worker.clone(),
        run_id: result.run_id.clone(),
        started_at: result.started_at,
        finished_at: Some(result.finished_at),
        exit_code: result.exit_code,
        will_retry: result.will_retry,
        lost,
        output_tail: (!result.output.is_empty())
            .then(|| runs::tail(&result.output, runs::OUTPUT_TAIL).to_string()),
        error: result.error.clone(),
    }
}

/// The record of an attempt killed at shutdown and handed back: the shard
/// waits for its next attempt.
pub fn handed_back(started: &ShardRecord, at: DateTime<Utc>) -> ShardRecord {
    ShardRecord {
        state: ShardState::Pending,
        finished_at: Some(at),
        will_retry: true,
        ..started.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jetcron_shared::wire::{Cause, RunStatus};

    fn shard() -> ShardMessage {
        let job = jetcron_shared::Job::decode(
            br#"{"id":"sync","schedule":"@every 1h","shards":3,"run":{"shell":"true"}}"#,
            None,
        )
        .unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        ShardMessage::new(&job, at, 2, 7, Cause::Schedule)
    }

    #[test]
    fn an_attempt_is_running_then_ends_with_its_result() {
        let shard = shard();
        let started = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 6).unwrap();
        // The second attempt, after the first was lost.
        let r = running(&shard, 2, 1, "w1", "RUN", started);
        assert_eq!(r.state, ShardState::Running);
        assert_eq!(
            (r.job.as_str(), r.instant, r.shard),
            ("sync", shard.instant, 2)
        );
        assert_eq!(
            (r.attempt, r.lost, r.worker.as_str(), r.run_id.as_str()),
            (2, 1, "w1", "RUN")
        );
        assert_eq!(
            (r.finished_at, r.exit_code, r.will_retry),
            (None, None, false)
        );

        let finished_at = started + chrono::Duration::seconds(3);
        let result = RunResult {
            job: "sync".into(),
            instant: shard.instant,
            shard: 2,
            shards: 3,
            attempt: 2,
            run_id: "RUN".into(),
            status: RunStatus::TimedOut,
            worker: "w1".into(),
            started_at: started,
            finished_at,
            exit_code: None,
            output: "x".into(),
            output_truncated: false,
            error: Some("timed out after 3s".into()),
            will_retry: true,
            epoch: 7,
            stream_seq: None,
            parent: None,
            http_status: None,
        };
        let end = finished(&result, 1);
        assert_eq!(
            end,
            ShardRecord {
                state: ShardState::TimedOut,
                finished_at: Some(finished_at),
                will_retry: true,
                output_tail: Some("x".into()),
                error: Some("timed out after 3s".into()),
                ..r.clone()
            }
        );

        let back = handed_back(&r, finished_at);
        assert_eq!(back.state, ShardState::Pending);
        assert_eq!(
            (back.attempt, back.lost, back.finished_at),
            (2, 1, Some(finished_at))
        );
        assert!(back.will_retry);
    }

    #[test]
    fn only_success_or_a_failure_without_retry_is_final() {
        let started = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 6).unwrap();
        let base = running(&shard(), 1, 0, "w1", "RUN", started);
        let with = |state, will_retry| ShardRecord {
            state,
            will_retry,
            ..base.clone()
        };
        assert!(is_final(&with(ShardState::Succeeded, false)));
        assert!(is_final(&with(ShardState::Failed, false)));
        assert!(is_final(&with(ShardState::TimedOut, false)));
        assert!(is_final(&with(ShardState::Expired, false)));
        assert!(!is_final(&with(ShardState::Failed, true)));
        assert!(!is_final(&with(ShardState::TimedOut, true)));
        assert!(!is_final(&with(ShardState::Running, false)));
        assert!(!is_final(&with(ShardState::Pending, true)));
    }
}
