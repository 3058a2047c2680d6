//! How an attempt ends: what is stored, in which order, before its message
//! is settled.
//!
//! An attempt that ran to its end, or a delivery that ends its shard
//! without running it (crash loop, deadline, replaced fire), stores in this
//! order:
//!
//! 1. its result, on `jetcron.results.<job>`;
//! 2. the `dead` event after a last failed attempt, or the `expired` event
//!    for a shard past its deadline;
//! 3. the end notice, when the shard message is tracked
//!    (`ShardMessage::track`) and no attempt follows (`will_retry` false:
//!    succeeded, dead, expired, crash loop, cancelled);
//! 4. its shard record, final when no attempt follows.
//!
//! A final record stops every later delivery from running, so it comes
//! last: it promises that nothing of the attempt is left to store. When the
//! result, the event or the end notice cannot be stored, the message is
//! left unacked and comes back after the ack wait; every publish carries a
//! dedup id (see [`crate::report`]), so what was stored is not stored twice.
//! The record write is best effort.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::runs::ShardRecord;
use jetcron_shared::wire::{Event, EventBody, RunResult, RunStatus, ShardMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::attempt::{Runner, Settle};
use crate::record;
use crate::report::{dead_msg_id, expired_msg_id};

/// The `error` of a shard ended unrun because it arrived at `now`, past its
/// deadline.
pub fn expired_error(shard: &ShardMessage, now: DateTime<Utc>) -> String {
    let late = (now - shard.instant).to_std().unwrap_or_default();
    let deadline = shard
        .expires_at
        .and_then(|at| (at - shard.instant).to_std().ok())
        .unwrap_or_default();
    format!(
        "not started within its deadline ({} after its instant): delivered {} after it; not run",
        humantime::format_duration(deadline),
        humantime::format_duration(Duration::from_millis(late.as_millis() as u64))
    )
}

/// The `error` of a shard ended after `lost` attempts lost in a row.
pub fn crash_loop_error(lost: u32) -> String {
    if lost == 1 {
        "lost 1 attempt: the worker running it died before reporting (crash loop); not run again"
            .to_string()
    } else {
        format!(
            "lost {lost} attempts in a row: the worker running it died each time (crash loop); not run again"
        )
    }
}

/// The `error` of a shard of a fire replaced by the fire of `by`: stopped
/// while it ran, or not run at all.
pub fn replaced_error(by: DateTime<Utc>, ran: bool) -> String {
    let by = by.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    if ran {
        format!("replaced by the fire of {by}")
    } else {
        format!("replaced by the fire of {by}; not run")
    }
}

/// How a shard ends without running: failed after a crash loop, expired,
/// or cancelled.
#[derive(Debug)]
pub struct Unrun {
    pub status: RunStatus,
    pub error: String,
    /// When it was decided.
    pub at: DateTime<Utc>,
}

/// Ends a shard without running it, as attempt `attempt`: reported and
/// settled like a last failed attempt (an expired one with an `expired`
/// event in place of the `dead` one, a cancelled one with no event).
pub async fn end_unrun(
    worker: &Runner,
    shard: &ShardMessage,
    attempt: u32,
    lost: u32,
    stream_seq: u64,
    ended: Unrun,
    hand_back: &CancellationToken,
) -> Option<Settle> {
    let how = match ended.status {
        RunStatus::Expired => Settle::Expired,
        RunStatus::Cancelled => Settle::Cancelled,
        _ => Settle::Dead,
    };
    let result = RunResult {
        job: shard.job.clone(),
        instant: shard.instant,
        shard: shard.shard,
        shards: shard.shards,
        attempt,
        run_id: nuid::next().to_string(),
        status: ended.status,
        worker: worker.id.clone(),
        started_at: ended.at,
        finished_at: ended.at,
        exit_code: None,
        output: String::new(),
        output_truncated: false,
        error: Some(ended.error),
        will_retry: false,
        epoch: shard.epoch,
        stream_seq: Some(stream_seq),
        parent: shard.parent.clone(),
        http_status: None,
    };
    report(worker, shard, &result, how, lost, hand_back).await
}

/// Stores what became of an attempt, in the order of the module doc.
/// `None` when the result, the event or the end notice could not be stored
/// and the message must stay unacked.
pub async fn report(
    worker: &Runner,
    shard: &ShardMessage,
    result: &RunResult,
    how: Settle,
    lost: u32,
    hand_back: &CancellationToken,
) -> Option<Settle> {
    if let Err(e) = worker.reporter.result(result, hand_back).await {
        error!(error = %e, "cannot store the result");
        return None;
    }
    worker.metrics.result(result.status);
    if let Some((event, id)) = ending_event(shard, result, how) {
        if let Err(e) = worker.reporter.event(&event, id, hand_back).await {
            error!(error = %e, kind = event.kind(), "cannot store the event");
            return None;
        }
        match how {
            Settle::Expired => worker.metrics.expired(),
            _ => worker.metrics.dead_letter(),
        }
        warn!(
            attempts = result.attempt,
            error = result.error.as_deref(),
            "shard is {}: no attempt follows",
            event.kind()
        );
    }
    if ends_tracked(shard, result) {
        if let Err(e) = worker.reporter.end(result, hand_back).await {
            error!(error = %e, "cannot store the end notice");
            return None;
        }
        info!(status = result.status.as_str(), "end notice stored");
    }
    let end = record::finished(result, lost);
    write_record(worker, shard.record_key().as_deref(), &end).await;
    Some(how)
}

/// Whether `result` ends a tracked shard for good, so that its end notice
/// is due.
pub fn ends_tracked(shard: &ShardMessage, result: &RunResult) -> bool {
    shard.track && !result.will_retry
}

/// The event that tells a shard ended for good without success, with its
/// dedup id: `dead` after its last failed attempt, `expired` past its
/// deadline; none for any other ending.
fn ending_event(shard: &ShardMessage, result: &RunResult, how: Settle) -> Option<(Event, String)> {
    let (job, instant, n) = (&result.job, result.instant, result.shard);
    match how {
        Settle::Dead => Some((
            Event::now(EventBody::Dead {
                job: job.clone(),
                instant,
                shard: n,
                attempts: result.attempt,
                status: result.status,
                run_id: result.run_id.clone(),
                worker: result.worker.clone(),
                error: result.error.clone(),
            }),
            dead_msg_id(job, instant, n),
        )),
        Settle::Expired => Some((
            Event::now(EventBody::Expired {
                job: job.clone(),
                instant,
                shard: n,
                attempt: result.attempt,
                run_id: result.run_id.clone(),
                worker: result.worker.clone(),
                expires_at: shard.expires_at.unwrap_or(instant),
                late_ms: (result.started_at - instant).num_milliseconds(),
            }),
            expired_msg_id(job, instant, n),
        )),
        _ => None,
    }
}

/// Writes the shard record when the message names one; best effort.
pub async fn write_record(worker: &Runner, key: Option<&str>, record: &ShardRecord) {
    let Some(key) = key else {
        return;
    };
    let state = record.state.as_str();
    match worker.recorder.put(key, record).await {
        Ok(()) => debug!(key, state, "shard record written"),
        Err(e) => warn!(
            error = %e,
            state,
            "shard record not written; the results stream still has the outcome"
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use jetcron_shared::wire::Cause;

    /// Shard 2 of 3 of a fire of `sync`, with a record key.
    pub(crate) fn recorded_shard() -> ShardMessage {
        let job = jetcron_shared::Job::decode(
            br#"{"id":"sync","schedule":"@every 1h","shards":3,"run":{"shell":"true"}}"#,
            None,
        )
        .unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let mut shard = ShardMessage::new(&job, at, 2, 7, Cause::Schedule);
        shard.record = Some("sync.s4".into());
        shard
    }

    /// `recorded_shard` with a deadline of `secs` after its instant.
    fn due_within(secs: i64) -> ShardMessage {
        let mut shard = recorded_shard();
        shard.expires_at = Some(shard.instant + chrono::Duration::seconds(secs));
        shard
    }

    #[test]
    fn the_crash_loop_error_says_why_the_shard_is_not_run() {
        assert_eq!(
            crash_loop_error(5),
            "lost 5 attempts in a row: the worker running it died each time (crash loop); not run again"
        );
        assert_eq!(
            crash_loop_error(1),
            "lost 1 attempt: the worker running it died before reporting (crash loop); not run again"
        );
    }

    #[test]
    fn the_expired_error_says_how_late_the_shard_came() {
        let shard = due_within(2);
        let now = shard.instant + chrono::Duration::milliseconds(3250);
        assert_eq!(
            expired_error(&shard, now),
            "not started within its deadline (2s after its instant): delivered 3s 250ms after \
             it; not run"
        );
    }

    fn ended_with(shard: &ShardMessage, status: RunStatus, attempt: u32) -> RunResult {
        RunResult {
            job: shard.job.clone(),
            instant: shard.instant,
            shard: shard.shard,
            shards: shard.shards,
            attempt,
            run_id: "RUN9".into(),
            status,
            worker: "w1".into(),
            started_at: shard.instant + chrono::Duration::seconds(5),
            finished_at: shard.instant + chrono::Duration::seconds(5),
            exit_code: None,
            output: String::new(),
            output_truncated: false,
            error: Some("why".into()),
            will_retry: false,
            epoch: 7,
            stream_seq: Some(3),
            parent: None,
            http_status: None,
        }
    }

    #[test]
    fn a_dead_or_expired_shard_has_its_event_and_no_other_ending_has_one() {
        let shard = due_within(2);
        let ms = shard.instant.timestamp_millis();
        let expired = ended_with(&shard, RunStatus::Expired, 2);
        let (event, id) = ending_event(&shard, &expired, Settle::Expired).unwrap();
        assert_eq!(id, format!("expired:sync:{ms}:2"));
        assert_eq!(
            event.body,
            EventBody::Expired {
                job: "sync".into(),
                instant: shard.instant,
                shard: 2,
                attempt: 2,
                run_id: "RUN9".into(),
                worker: "w1".into(),
                expires_at: shard.instant + chrono::Duration::seconds(2),
                late_ms: 5000,
            }
        );
        let failed = ended_with(&shard, RunStatus::Failed, 3);
        let (event, id) = ending_event(&shard, &failed, Settle::Dead).unwrap();
        assert_eq!((event.kind(), id), ("dead", format!("dead:sync:{ms}:2")));
        for how in [
            Settle::Succeeded,
            Settle::Retry(Duration::from_secs(1)),
            Settle::HandedBack,
            Settle::AlreadyFinished,
        ] {
            assert!(ending_event(&shard, &failed, how).is_none(), "{how:?}");
        }
    }

    #[test]
    fn only_a_tracked_shard_that_ends_for_good_has_an_end_notice() {
        let mut shard = recorded_shard();
        let last = ended_with(&shard, RunStatus::Failed, 1);
        let retrying = RunResult {
            will_retry: true,
            ..last.clone()
        };
        assert!(!ends_tracked(&shard, &last));
        shard.track = true;
        assert!(ends_tracked(&shard, &last));
        assert!(!ends_tracked(&shard, &retrying));
        for status in [
            RunStatus::Succeeded,
            RunStatus::TimedOut,
            RunStatus::Expired,
            RunStatus::Cancelled,
        ] {
            assert!(ends_tracked(&shard, &ended_with(&shard, status, 2)));
        }
    }

    #[test]
    fn the_replaced_error_names_the_replacing_fire() {
        let by = Utc.with_ymd_and_hms(2026, 1, 2, 4, 0, 0).unwrap();
        assert_eq!(
            replaced_error(by, true),
            "replaced by the fire of 2026-01-02T04:00:00Z"
        );
        assert_eq!(
            replaced_error(by, false),
            "replaced by the fire of 2026-01-02T04:00:00Z; not run"
        );
        let cancelled = ended_with(&recorded_shard(), RunStatus::Cancelled, 1);
        assert!(ending_event(&recorded_shard(), &cancelled, Settle::Cancelled).is_none());
    }
}
