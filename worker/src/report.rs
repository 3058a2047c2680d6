//! Publishes what became of an attempt: its [`RunResult`] on the results
//! stream and, after the last failed attempt, a `dead` event (an `expired`
//! one for a shard delivered past its deadline). A shard of a tracked fire
//! (`ShardMessage::track`) that ends for good (no attempt follows) also
//! gets its end notice: the same result on the ends stream
//! (`jetcron.ends.<job>`), which the scheduler waits for.
//!
//! All go through JetStream and wait for the stream's ack, with a
//! `Nats-Msg-Id` naming the execution (or the dead, expired or ended
//! shard), so that a publish retried after a lost ack is stored once.
//!
//! A result's id ends with the run id, not just the attempt: after a server
//! crash the same attempt number can be executed twice (the server may
//! forget a delivery, and the record that would have told otherwise may be
//! missing), and two executions must never be merged into one result.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::wire::{Event, RunResult, end_msg_id};
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Backoff;

/// How long a report is retried before the attempt gives up without an ack
/// (its shard is then redelivered after the ack wait).
pub const REPORT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot publish {what} to {subject} ({tries} tries): {last}")]
    Publish {
        what: &'static str,
        subject: String,
        tries: u32,
        last: String,
    },
}

/// Dedup id of one execution's result:
/// `<job>:<instant ms>:<shard>:<attempt>:<run_id>`. Every execution has its
/// own run id, so only a retried publish of the same result is dropped.
pub fn result_msg_id(r: &RunResult) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        r.job,
        r.instant.timestamp_millis(),
        r.shard,
        r.attempt,
        r.run_id
    )
}

/// Dedup id of a shard's dead event: `dead:<job>:<instant ms>:<shard>`.
pub fn dead_msg_id(job: &str, instant: DateTime<Utc>, shard: u32) -> String {
    format!("dead:{job}:{}:{shard}", instant.timestamp_millis())
}

/// Dedup id of a shard's expired event: `expired:<job>:<instant ms>:<shard>`.
pub fn expired_msg_id(job: &str, instant: DateTime<Utc>, shard: u32) -> String {
    format!("expired:{job}:{}:{shard}", instant.timestamp_millis())
}

/// Publishes results and events of one worker.
#[derive(Debug, Clone)]
pub struct Reporter {
    js: jetstream::Context,
    names: Names,
}

impl Reporter {
    pub fn new(js: jetstream::Context, names: Names) -> Reporter {
        Reporter { js, names }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Stores `result` on `jetcron.results.<job>`. Retries for up to
    /// [`REPORT_PATIENCE`], or until `give_up` fires.
    pub async fn result(
        &self,
        result: &RunResult,
        give_up: &CancellationToken,
    ) -> Result<(), ReportError> {
        self.publish(
            "run result",
            self.names.results_subject(&result.job),
            result_msg_id(result),
            result.encode(),
            give_up,
        )
        .await
    }

    /// Stores `result`, the last of its shard, as the shard's end notice
    /// on `jetcron.ends.<job>` (dedup id [`end_msg_id`]: one per shard).
    pub async fn end(
        &self,
        result: &RunResult,
        give_up: &CancellationToken,
    ) -> Result<(), ReportError> {
        self.publish(
            "end notice",
            self.names.ends_subject(&result.job),
            end_msg_id(&result.job, result.instant, result.shard),
            result.encode(),
            give_up,
        )
        .await
    }

    /// Stores `event` (`dead` or `expired`) on `jetcron.events.<kind>.<job>`,
    /// with dedup id `id`.
    pub async fn event(
        &self,
        event: &Event,
        id: String,
        give_up: &CancellationToken,
    ) -> Result<(), ReportError> {
        self.publish(
            event.kind(),
            self.names.event_subject(event.kind(), event.job()),
            id,
            event.encode(),
            give_up,
        )
        .await
    }

    async fn publish(
        &self,
        what: &'static str,
        subject: String,
        id: String,
        body: Vec<u8>,
        give_up: &CancellationToken,
    ) -> Result<(), ReportError> {
        let body = bytes::Bytes::from(body);
        let deadline = Instant::now() + REPORT_PATIENCE;
        let mut backoff = Backoff::default();
        let mut tries = 0;
        loop {
            tries += 1;
            let message = PublishMessage::build()
                .payload(body.clone())
                .message_id(&id);
            let last = match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) => match ack.await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline || give_up.is_cancelled() {
                return Err(ReportError::Publish {
                    what,
                    subject,
                    tries,
                    last,
                });
            }
            warn!(what, subject, error = last, "publish failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = give_up.cancelled() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jetcron_shared::wire::RunStatus;

    fn result(at: DateTime<Utc>) -> RunResult {
        RunResult {
            job: "sync".into(),
            instant: at,
            shard: 2,
            shards: 3,
            attempt: 4,
            run_id: "r".into(),
            status: RunStatus::Failed,
            worker: "w".into(),
            started_at: at,
            finished_at: at,
            exit_code: Some(1),
            output: String::new(),
            output_truncated: false,
            error: None,
            will_retry: true,
            epoch: 1,
            stream_seq: Some(12),
            parent: None,
            http_status: None,
        }
    }

    #[test]
    fn dedup_ids_name_the_execution_and_the_shard() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let r = result(at);
        let ms = at.timestamp_millis();
        assert_eq!(result_msg_id(&r), format!("sync:{ms}:2:4:r"));
        assert_eq!(dead_msg_id("sync", at, 2), format!("dead:sync:{ms}:2"));
        assert_eq!(
            expired_msg_id("sync", at, 2),
            format!("expired:sync:{ms}:2")
        );
    }

    #[test]
    fn two_executions_of_one_attempt_are_never_merged() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let first = RunResult {
            run_id: "RUN1".into(),
            ..result(at)
        };
        // The same shard and attempt number, run again after a crash.
        let again = RunResult {
            run_id: "RUN2".into(),
            ..first.clone()
        };
        assert_eq!((first.shard, first.attempt), (again.shard, again.attempt));
        assert_ne!(result_msg_id(&first), result_msg_id(&again));
    }
}
