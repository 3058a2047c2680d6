//! One delivery of one shard message: decode it, decide whether and as
//! which attempt it runs, run it, report it, then settle it with the server.
//!
//! # Once only where the record can tell
//!
//! Before running anything, a delivery reads the shard record its message
//! names. A final record of the same fire (succeeded, or failed or timed
//! out with no retry to follow) means an earlier execution ran to its end
//! and stored everything it had to store, and only its ack was lost (its
//! worker died, or the server crashed and forgot the ack): the message is
//! acked without running again.
//!
//! When the record cannot tell (no record key, no record, a record that is
//! not final or cannot be read), the shard runs. Such a run may repeat an
//! execution whose result is already stored; it is not hidden: every
//! execution has its own run id, which is part of its result's
//! `Nats-Msg-Id` (see [`crate::report`]), so both results are stored.
//!
//! # Attempts
//!
//! The attempt number is the larger of the server's delivery count
//! (1-based) and, when the shard record belongs to this fire and is not
//! final (running, handed back, or failed with a retry to follow), the
//! record's attempt plus one; with no such record it is the delivery count.
//! See [`plan`]. The delivery count alone cannot be trusted: after a server
//! crash a message that was already delivered, and even run, can come back
//! with the count it had the first time.
//!
//! Every delivery that runs counts, whatever its number: an attempt lost
//! because its worker died (or handed back at shutdown) is redelivered and
//! runs again, and it counts. So a shard whose worker was killed completes
//! on another worker as attempt 2, even when the job allows one attempt;
//! and a failure at or past `retry.max_attempts` is the last.
//!
//! # Crash loops
//!
//! An attempt is lost when its message comes back while the shard record
//! of its fire still says `running`: it started, and its worker stopped
//! acking before it reported (the command killed the worker, the machine
//! OOM-killed it, or it lost the server for longer than the ack wait).
//! Each attempt's record counts the attempts lost in a row before it
//! (`lost`): one more than the record it found when that record was
//! `running`, the same when the attempt before was handed back at
//! shutdown (not lost, but no proof of health either), none after an
//! attempt that reported. The count lives in the record, not in the
//! delivery count, which a server crash can take back.
//!
//! A shard that has lost `max_lost` attempts in a row (the worker's
//! `--max-lost-attempts`) is not run again: the delivery ends it as dead,
//! exactly like a last failed attempt (result, `dead` event, final record,
//! `+TERM`), with an `error` that says so. Its result has a run id of its
//! own and no exit code, like a shell job refused by a worker without
//! `--allow-shell`. A message without a record key cannot be told apart
//! from a retry, so it is never ended this way.
//!
//! # Deadlines
//!
//! A shard message of a job with a `deadline` carries `expires_at`, its
//! instant plus the deadline. A delivery that would start the shard after
//! that time does not run it: it ends the shard as expired, like a dead
//! shard (an `expired` result with a run id of its own and no exit code,
//! an `expired` event, the final record, `+TERM`). The deadline counts
//! from the instant for every attempt: a retry, or a redelivery after a
//! lost attempt, that comes back too late expires as well. A shard whose
//! record is final is acked as always, and a crash loop still ends dead.
//! The worker's clock decides, so workers and schedulers must keep their
//! clocks in step (NTP).
//!
//! # Replaced fires
//!
//! A shard whose fire a newer fire of its job replaced (`overlap:
//! replace`; see [`crate::cancel`]) is not run: the delivery ends it as
//! cancelled, like an expired shard but with no event (a `cancelled` result
//! with a run id of its own and no exit code, the final record, `+TERM`).
//! This goes before the crash-loop and deadline rules; a final record is
//! acked as always. A shard running when its fire is replaced is stopped
//! like at its timeout and ends `cancelled`, with no retry, and `+TERM`.
//! This is not the shutdown hand-back, which kills at once and naks.
//!
//! # Report, then ack
//!
//! The result is stored on the results stream before the message is
//! settled. If the result cannot be stored, the message is left unacked and
//! comes back after the ack wait: a shard is never settled without a trace.
//! The same holds for the `dead` or `expired` event, and for the end notice
//! of a tracked shard that ends for good (see [`crate::ending`] for the
//! order).
//!
//! When the message names a shard record, the attempt writes it `running`
//! as it starts, and its outcome once the result (and the event and end
//! notice, if any) is stored, before the message is settled (see
//! [`crate::record`]). So a final record promises that nothing of the
//! attempt is left to store. Those writes are best effort: a failed one is
//! logged and changes nothing in how the message is settled; the cost is
//! that a lost ack then leads to a second, recorded, execution.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use jetcron_shared::job::{RetryPolicy, Run};
use jetcron_shared::runs::{ShardRecord, ShardState};
use jetcron_shared::wire::{RunResult, RunStatus, ShardMessage};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, interval_at, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, error, field, info, info_span, warn};

use crate::backoff::Backoff;
use crate::cancel::Replacements;
use crate::ending::{
    Unrun, crash_loop_error, end_unrun, expired_error, replaced_error, report, write_record,
};
use crate::environment::Environment;
use crate::execute::{Ended, Outcome, ShellCommand, execute};
use crate::handler::{self, Handlers, ShardContext};
use crate::heartbeat::RunCount;
use crate::http::{self, HttpCall, HttpRunner};
use crate::metrics::WorkerMetrics;
use crate::record::{self, Recorder};
use crate::report::Reporter;

/// Tries to settle a message before leaving it to the ack wait.
const SETTLE_TRIES: u32 = 3;
/// Tries to read a shard record before running without it.
const READ_TRIES: u32 = 3;
/// Longest a progress ack may take to be handed to the client.
const PROGRESS_SEND_LIMIT: Duration = Duration::from_secs(1);

/// What every attempt of one worker shares.
#[derive(Debug)]
pub struct Runner {
    pub id: String,
    pub allow_shell: bool,
    /// Runs HTTP jobs, within the worker's `--no-http` and
    /// `--allow-http-host` settings.
    pub http: HttpRunner,
    pub max_output: usize,
    pub kill_grace: Duration,
    /// A third of the consumer's ack wait.
    pub progress_every: Duration,
    pub reporter: Reporter,
    /// Writes shard records into the runs bucket.
    pub recorder: Recorder,
    /// Attempts of a shard lost in a row after which it is not run again.
    pub max_lost: u32,
    /// Shards running now, for the heartbeat.
    pub running: RunCount,
    /// The latest replaced fire per job (`overlap: replace`).
    pub replacements: Replacements,
    /// The handlers of a worker embedded in a service (`run.handler`).
    pub handlers: Handlers,
    pub metrics: WorkerMetrics,
}

/// Where a delivery stands, each with the one ack it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Still running: keep the message (`+WPI`).
    Running,
    /// Succeeded: done (`+ACK`).
    Succeeded,
    /// Failed before its last attempt: deliver again after the delay (`-NAK {delay}`).
    Retry(Duration),
    /// Failed its last attempt, dead event published: never again (`+TERM`).
    Dead,
    /// Delivered past its deadline, not run, expired event published:
    /// never again (`+TERM`).
    Expired,
    /// Its fire was replaced by a newer one (`overlap: replace`): killed or
    /// not run, never again (`+TERM`).
    Cancelled,
    /// Not a shard message: running it again cannot help (`+TERM`).
    Malformed,
    /// Killed at shutdown: deliver again now, to another worker (`-NAK`).
    HandedBack,
    /// An earlier execution already finished for good; not run again: done (`+ACK`).
    AlreadyFinished,
}

impl Settle {
    pub fn ack_kind(self) -> AckKind {
        match self {
            Settle::Running => AckKind::Progress,
            Settle::Succeeded | Settle::AlreadyFinished => AckKind::Ack,
            Settle::Retry(delay) => AckKind::Nak(Some(delay)),
            Settle::Dead | Settle::Expired | Settle::Cancelled | Settle::Malformed => AckKind::Term,
            Settle::HandedBack => AckKind::Nak(None),
        }
    }

    /// How an attempt that ran to its end settles (see the module doc on attempts).
    pub fn after(status: RunStatus, attempt: u32, retry: &RetryPolicy) -> Settle {
        match status {
            RunStatus::Succeeded => Settle::Succeeded,
            RunStatus::Failed | RunStatus::TimedOut if attempt < retry.max_attempts => {
                Settle::Retry(retry.delay_after(attempt))
            }
            RunStatus::Failed | RunStatus::TimedOut => Settle::Dead,
            RunStatus::Expired => Settle::Expired,
            RunStatus::Cancelled => Settle::Cancelled,
        }
    }
}

/// Whether a delivery runs, decided from its delivery count and the shard
/// record its message names (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run the shard as this attempt, after `lost` attempts lost in a row.
    Run { attempt: u32, lost: u32 },
    /// Execution `run_id` already ended the shard as `state`: settle without running.
    Finished { run_id: String, state: ShardState },
    /// The last `lost` attempts died with their workers: end the shard as
    /// dead, as this attempt, without running it.
    CrashLoop { attempt: u32, lost: u32 },
    /// Past the shard's deadline: end it as expired, as this attempt,
    /// without running it.
    Expired { attempt: u32, lost: u32 },
    /// Its fire was replaced by the fire of `by`: end it as cancelled, as
    /// this attempt, without running it.
    Cancelled {
        attempt: u32,
        lost: u32,
        by: DateTime<Utc>,
    },
}

impl Plan {
    /// This plan for a shard whose fire was replaced by the fire of `by`
    /// (see [`crate::cancel`]): whatever would run or end it is replaced
    /// by its cancellation; a shard that already finished stays finished.
    pub fn unless_replaced(self, by: Option<DateTime<Utc>>) -> Plan {
        match (self, by) {
            (
                Plan::Run { attempt, lost }
                | Plan::CrashLoop { attempt, lost }
                | Plan::Expired { attempt, lost },
                Some(by),
            ) => Plan::Cancelled { attempt, lost, by },
            (plan, _) => plan,
        }
    }
}

/// The attempt rule: `delivered` is the server's delivery count, `record`
/// the shard record read before running (if any), `max_lost` the lost
/// attempts in a row that end a shard, `now` when the attempt would start.
pub fn plan(
    delivered: u32,
    shard: &ShardMessage,
    record: Option<&ShardRecord>,
    max_lost: u32,
    now: DateTime<Utc>,
) -> Plan {
    let delivered = delivered.max(1);
    let run = |attempt, lost| {
        if shard.expired(now) {
            Plan::Expired { attempt, lost }
        } else {
            Plan::Run { attempt, lost }
        }
    };
    // A record of another instant was left by an older fire in the same slot.
    let Some(record) = record
        .filter(|r| r.job == shard.job && r.instant == shard.instant && r.shard == shard.shard)
    else {
        return run(delivered, 0);
    };
    if record::is_final(record) {
        return Plan::Finished {
            run_id: record.run_id.clone(),
            state: record.state,
        };
    }
    let attempt = delivered.max(record.attempt.saturating_add(1));
    let lost = match record.state {
        // Started and never reported: its worker is gone.
        ShardState::Running => record.lost.saturating_add(1),
        // Handed back at shutdown: not lost, and the row goes on.
        ShardState::Pending => record.lost,
        // It reported (a failure with a retry to follow).
        ShardState::Failed
        | ShardState::TimedOut
        | ShardState::Succeeded
        | ShardState::Expired
        | ShardState::Cancelled => 0,
    };
    if lost > 0 && lost >= max_lost {
        Plan::CrashLoop { attempt, lost }
    } else {
        run(attempt, lost)
    }
}

/// Handles one delivered message; `_slot` is the run slot it occupies.
pub async fn handle(
    worker: Arc<Runner>,
    message: jetstream::Message,
    hand_back: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let (delivered, stream_seq) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
            info.stream_sequence,
        ),
        Err(e) => {
            error!(subject = %message.subject, error = %e, "not a JetStream delivery; ignored");
            return;
        }
    };
    worker.metrics.delivered(delivered);
    let shard = match ShardMessage::decode(&message.payload) {
        Ok(shard) => shard,
        Err(e) => {
            return unreadable(&worker, &message, &e, delivered, stream_seq, &hand_back).await;
        }
    };
    let span = info_span!(
        "run",
        job = %shard.job,
        instant = %shard.instant,
        shard = shard.shard,
        attempt = field::Empty,
    );
    async {
        // Reading the record is inside the progress acks too: it may take
        // a while, and the message must not go to another worker meanwhile.
        let work = async {
            let record = read_record(&worker, &shard).await;
            let now = Utc::now();
            let replaced = worker.replacements.replaced_by(&shard.job, shard.instant);
            let planned = plan(delivered, &shard, record.as_ref(), worker.max_lost, now);
            match planned.unless_replaced(replaced) {
                Plan::Finished { run_id, state } => {
                    info!(
                        run_id,
                        state = state.as_str(),
                        delivered,
                        "already finished by {run_id}; not run again"
                    );
                    Some(Settle::AlreadyFinished)
                }
                Plan::Run { attempt, lost } => {
                    Span::current().record("attempt", attempt);
                    if attempt > delivered {
                        // Worth seeing: the server forgot deliveries, as after a crash.
                        info!(delivered, "attempt numbered from the shard record");
                    }
                    if lost > 0 {
                        warn!(
                            lost,
                            max_lost = worker.max_lost,
                            "the attempt before was lost: its worker died before reporting"
                        );
                    }
                    let _running = worker.running.enter();
                    run_and_report(&worker, &shard, attempt, lost, stream_seq, &hand_back).await
                }
                Plan::CrashLoop { attempt, lost } => {
                    Span::current().record("attempt", attempt);
                    error!(
                        lost,
                        delivered, "crash loop: ending the shard as dead without running it"
                    );
                    let ended = Unrun {
                        status: RunStatus::Failed,
                        error: crash_loop_error(lost),
                        at: Utc::now(),
                    };
                    end_unrun(
                        &worker, &shard, attempt, lost, stream_seq, ended, &hand_back,
                    )
                    .await
                }
                Plan::Expired { attempt, lost } => {
                    Span::current().record("attempt", attempt);
                    warn!(
                        delivered,
                        expires_at = ?shard.expires_at,
                        "past its deadline: ending the shard as expired without running it"
                    );
                    let ended = Unrun {
                        status: RunStatus::Expired,
                        error: expired_error(&shard, now),
                        at: now,
                    };
                    end_unrun(
                        &worker, &shard, attempt, lost, stream_seq, ended, &hand_back,
                    )
                    .await
                }
                Plan::Cancelled { attempt, lost, by } => {
                    Span::current().record("attempt", attempt);
                    info!(%by, delivered, "fire replaced: ending the shard as cancelled, unrun");
                    let ended = Unrun {
                        status: RunStatus::Cancelled,
                        error: replaced_error(by, false),
                        at: now,
                    };
                    end_unrun(
                        &worker, &shard, attempt, lost, stream_seq, ended, &hand_back,
                    )
                    .await
                }
            }
        };
        match with_progress(&message, worker.progress_every, work).await {
            Some(how) => settle(&message, how).await,
            None => warn!("result not stored; the shard comes back after the ack wait"),
        }
    }
    .instrument(span)
    .await
}

/// A message that does not decode: ended dead with the reason when its
/// envelope names a shard (see [`crate::unreadable`]), else terminated.
async fn unreadable(
    worker: &Runner,
    message: &jetstream::Message,
    e: &jetcron_shared::wire::WireError,
    delivered: u32,
    stream_seq: u64,
    hand_back: &CancellationToken,
) {
    let Some(shard) = crate::unreadable::envelope(&message.payload) else {
        error!(subject = %message.subject, delivered, error = %e, "malformed shard message; terminating it");
        settle(message, Settle::Malformed).await;
        return;
    };
    error!(
        job = %shard.job,
        instant = %shard.instant,
        shard = shard.shard,
        error = %e,
        "cannot read this shard message; ending the shard as dead without running it"
    );
    let ended = Unrun {
        status: RunStatus::Failed,
        error: crate::unreadable::error(e),
        at: Utc::now(),
    };
    let work = end_unrun(worker, &shard, delivered, 0, stream_seq, ended, hand_back);
    match with_progress(message, worker.progress_every, work).await {
        Some(how) => settle(message, how).await,
        None => warn!("result not stored; the shard comes back after the ack wait"),
    }
}

/// Runs the shard and stores its result; `None` when the result could not
/// be stored and the message must stay unacked.
async fn run_and_report(
    worker: &Runner,
    shard: &ShardMessage,
    attempt: u32,
    lost: u32,
    stream_seq: u64,
    hand_back: &CancellationToken,
) -> Option<Settle> {
    let run_id = nuid::next().to_string();
    let started_at = Utc::now();
    let record_key = shard.record_key();
    let started = record::running(shard, attempt, lost, &worker.id, &run_id, started_at);
    write_record(worker, record_key.as_deref(), &started).await;
    info!(run_id, "run started");
    // Every executor ends the same way; only how the shard runs differs.
    let replaced = worker
        .replacements
        .until_replaced(&shard.job, shard.instant)
        .map(|_| ());
    let ended = match &shard.run {
        Run::Shell(script) if worker.allow_shell => {
            let dir = std::env::temp_dir();
            match Environment::new(shard, attempt, &run_id, &worker.id, &dir) {
                Err(e) => Ended::Finished(Outcome::refused(e.to_string())),
                // The environment lives until the command has ended: it
                // owns the payload file.
                Ok(env) => {
                    let cmd = ShellCommand {
                        script: script.clone(),
                        env: env.vars.clone(),
                        timeout: shard.timeout(),
                        kill_grace: worker.kill_grace,
                        max_output: worker.max_output,
                    };
                    execute(&cmd, hand_back, replaced).await
                }
            }
        }
        Run::Shell(_) => Ended::Finished(Outcome::refused(format!(
            "shell jobs are disabled on worker {}; start it with --allow-shell",
            worker.id
        ))),
        Run::Http(spec) => {
            let call = HttpCall {
                spec,
                vars: http::envelope(shard, attempt, &run_id, &worker.id),
                timeout: shard.timeout(),
                max_output: worker.max_output,
                worker: &worker.id,
            };
            http::execute(&worker.http, call, hand_back, replaced).await
        }
        Run::Handler(name) => match worker.handlers.get(name) {
            Some(handler) => {
                let ctx = ShardContext::new(shard, attempt, &run_id, &worker.id, worker.max_output);
                handler::execute(handler, ctx, worker.kill_grace, hand_back, replaced).await
            }
            // Handler shards go to the handler's own consumer; only a
            // message published by hand to another subject gets here.
            None => Ended::Finished(Outcome::refused(format!(
                "worker {} has no handler named '{name}'; handler shards belong on \
                 the subject {}",
                worker.id,
                worker
                    .reporter
                    .names()
                    .work_handler_subject(&shard.group, &shard.job, name)
            ))),
        },
    };
    let outcome = match ended {
        Ended::Finished(outcome) => outcome,
        Ended::Stopped {
            output,
            output_truncated,
        } => {
            let by = worker.replacements.replaced_by(&shard.job, shard.instant);
            warn!(by = ?by, "replaced by a newer fire: stopped");
            Outcome {
                status: RunStatus::Cancelled,
                exit_code: None,
                output,
                output_truncated,
                error: by.map(|by| replaced_error(by, true)),
                http_status: None,
            }
        }
        Ended::Cancelled => {
            worker.metrics.handed_back();
            warn!("killed at shutdown; handing the shard back");
            let back = record::handed_back(&started, Utc::now());
            write_record(worker, record_key.as_deref(), &back).await;
            return Some(Settle::HandedBack);
        }
    };
    let how = Settle::after(outcome.status, attempt, &shard.retry);
    let finished_at = Utc::now();
    worker
        .metrics
        .ran((finished_at - started_at).to_std().unwrap_or_default());
    let result = RunResult {
        job: shard.job.clone(),
        instant: shard.instant,
        shard: shard.shard,
        shards: shard.shards,
        attempt,
        run_id,
        status: outcome.status,
        worker: worker.id.clone(),
        started_at,
        finished_at,
        exit_code: outcome.exit_code,
        output: outcome.output,
        output_truncated: outcome.output_truncated,
        error: outcome.error,
        will_retry: matches!(how, Settle::Retry(_)),
        epoch: shard.epoch,
        stream_seq: Some(stream_seq),
        parent: shard.parent.clone(),
        http_status: outcome.http_status,
    };
    info!(
        status = result.status.as_str(),
        exit_code = ?result.exit_code,
        http_status = ?result.http_status,
        error = result.error.as_deref(),
        will_retry = result.will_retry,
        "run finished"
    );
    report(worker, shard, &result, how, lost, hand_back).await
}

/// The shard record the message names, as it is before this delivery
/// runs; `None` when there is none, or when it cannot be read (then the
/// shard runs on its delivery count, and a repeat execution is recorded).
async fn read_record(worker: &Runner, shard: &ShardMessage) -> Option<ShardRecord> {
    let key = shard.record_key()?;
    let mut backoff = Backoff::default();
    for tries in 1..=READ_TRIES {
        match worker.recorder.get(&key).await {
            Ok(record) => return record,
            // Written by someone else; asking again will not help.
            Err(e @ record::RecordError::Garbled { .. }) => {
                warn!(error = %e, "ignoring the shard record");
                return None;
            }
            Err(e) if tries < READ_TRIES => {
                warn!(error = %e, "cannot read the shard record; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => warn!(
                error = %e,
                "cannot read the shard record; running without the once-only check"
            ),
        }
    }
    None
}

/// Drives `work` while acking progress every `every`, so that the server
/// does not redeliver a message whose run is merely long.
async fn with_progress<T>(
    message: &jetstream::Message,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticks = interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => {
                match timeout(PROGRESS_SEND_LIMIT, message.ack_with(Settle::Running.ack_kind())).await {
                    Ok(Ok(())) => debug!("progress acked"),
                    Ok(Err(e)) => warn!(error = %e, "cannot ack progress"),
                    Err(_) => warn!("cannot ack progress: the client is stuck"),
                }
            }
        }
    }
}

/// Sends the final ack and waits for the server to confirm it.
async fn settle(message: &jetstream::Message, how: Settle) {
    let mut backoff = Backoff::default();
    for tries in 1..=SETTLE_TRIES {
        match message.double_ack_with(how.ack_kind()).await {
            Ok(()) => {
                debug!(?how, "settled");
                return;
            }
            Err(e) if tries < SETTLE_TRIES => {
                warn!(?how, error = %e, "settling failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => error!(
                ?how,
                error = %e,
                "cannot settle; the shard comes back after the ack wait"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ending::tests::recorded_shard;
    use bytes::Bytes;

    fn ack_bytes(how: Settle) -> Bytes {
        how.ack_kind().into()
    }

    #[test]
    fn every_ending_maps_to_one_ack() {
        assert_eq!(ack_bytes(Settle::Running), "+WPI");
        assert_eq!(ack_bytes(Settle::Succeeded), "+ACK");
        assert_eq!(
            ack_bytes(Settle::Retry(Duration::from_millis(200))),
            "-NAK {\"delay\":200000000}"
        );
        assert_eq!(ack_bytes(Settle::Dead), "+TERM");
        assert_eq!(ack_bytes(Settle::Expired), "+TERM");
        assert_eq!(ack_bytes(Settle::Cancelled), "+TERM");
        assert_eq!(ack_bytes(Settle::Malformed), "+TERM");
        assert_eq!(ack_bytes(Settle::HandedBack), "-NAK");
        assert_eq!(ack_bytes(Settle::AlreadyFinished), "+ACK");
    }

    #[test]
    fn failures_retry_until_the_last_attempt() {
        let retry = RetryPolicy {
            max_attempts: 3,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
        };
        let after = |status, attempt| Settle::after(status, attempt, &retry);
        assert_eq!(after(RunStatus::Succeeded, 1), Settle::Succeeded);
        assert_eq!(after(RunStatus::Succeeded, 9), Settle::Succeeded);
        assert_eq!(
            after(RunStatus::Failed, 1),
            Settle::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            after(RunStatus::TimedOut, 2),
            Settle::Retry(Duration::from_secs(5))
        );
        assert_eq!(after(RunStatus::Failed, 3), Settle::Dead);
        assert_eq!(after(RunStatus::TimedOut, 3), Settle::Dead);
        // A delivery past the limit (its worker died before) still settles.
        assert_eq!(after(RunStatus::Failed, 4), Settle::Dead);
    }

    #[test]
    fn a_single_attempt_job_is_dead_after_one_failure() {
        let retry = RetryPolicy::default();
        assert_eq!(Settle::after(RunStatus::Failed, 1, &retry), Settle::Dead);
    }

    /// Lost attempts in a row that end a shard, in these tests.
    const MAX_LOST: u32 = 3;

    /// The record an earlier attempt `attempt` left, in `state`.
    fn left(
        shard: &ShardMessage,
        attempt: u32,
        state: ShardState,
        will_retry: bool,
    ) -> ShardRecord {
        ShardRecord {
            state,
            will_retry,
            ..record::running(shard, attempt, 0, "w1", "RUN1", shard.instant)
        }
    }

    fn run(attempt: u32, lost: u32) -> Plan {
        Plan::Run { attempt, lost }
    }

    fn plan(delivered: u32, shard: &ShardMessage, record: Option<&ShardRecord>) -> Plan {
        super::plan(delivered, shard, record, MAX_LOST, shard.instant)
    }

    #[test]
    fn without_a_record_the_delivery_count_is_the_attempt() {
        let shard = recorded_shard();
        assert_eq!(plan(1, &shard, None), run(1, 0));
        assert_eq!(plan(3, &shard, None), run(3, 0));
        // The server counts from 1; a 0 is not an attempt number.
        assert_eq!(plan(0, &shard, None), run(1, 0));
    }

    #[test]
    fn a_record_of_an_unfinished_attempt_raises_the_attempt() {
        let shard = recorded_shard();
        // Delivered again with the count it had (the server crashed and
        // forgot the delivery): the record knows attempt 1 ran, and was lost.
        let running = left(&shard, 1, ShardState::Running, false);
        assert_eq!(plan(1, &shard, Some(&running)), run(2, 1));
        let handed_back = left(&shard, 1, ShardState::Pending, true);
        assert_eq!(plan(1, &shard, Some(&handed_back)), run(2, 0));
        let retrying = left(&shard, 2, ShardState::Failed, true);
        assert_eq!(plan(2, &shard, Some(&retrying)), run(3, 0));
        let timed_out = left(&shard, 2, ShardState::TimedOut, true);
        assert_eq!(plan(1, &shard, Some(&timed_out)), run(3, 0));
        // A delivery count ahead of the record (a record write was lost) wins.
        assert_eq!(plan(5, &shard, Some(&running)), run(5, 1));
        let at_the_top = left(&shard, u32::MAX, ShardState::Running, false);
        assert_eq!(plan(1, &shard, Some(&at_the_top)), run(u32::MAX, 1));
    }

    #[test]
    fn each_attempt_found_running_adds_one_lost_attempt_up_to_the_limit() {
        let shard = recorded_shard();
        // Attempt 1 started and its worker died; so did attempt 2 (which
        // knew of one lost attempt before it).
        let first = left(&shard, 1, ShardState::Running, false);
        assert_eq!(plan(2, &shard, Some(&first)), run(2, 1));
        let second = ShardRecord {
            lost: 1,
            ..left(&shard, 2, ShardState::Running, false)
        };
        assert_eq!(plan(3, &shard, Some(&second)), run(3, 2));
        // Attempt 3 died too: three lost in a row is the limit.
        let third = ShardRecord {
            lost: 2,
            ..left(&shard, 3, ShardState::Running, false)
        };
        assert_eq!(
            plan(4, &shard, Some(&third)),
            Plan::CrashLoop {
                attempt: 4,
                lost: 3
            }
        );
        // The server's count does not matter: after a server crash it may
        // be back at 1; the record counts.
        assert_eq!(
            plan(1, &shard, Some(&third)),
            Plan::CrashLoop {
                attempt: 4,
                lost: 3
            }
        );
        // The same record with a higher limit runs again.
        assert_eq!(
            super::plan(4, &shard, Some(&third), 4, shard.instant),
            run(4, 3)
        );
        // A limit of 1 ends a shard at its first lost attempt.
        assert_eq!(
            super::plan(2, &shard, Some(&first), 1, shard.instant),
            Plan::CrashLoop {
                attempt: 2,
                lost: 1
            }
        );
    }

    #[test]
    fn a_reported_attempt_ends_the_row_and_a_hand_back_keeps_it() {
        let shard = recorded_shard();
        // Two attempts lost, then attempt 3 failed and reported, with a
        // retry to follow: attempt 4 starts a new row.
        for state in [ShardState::Failed, ShardState::TimedOut] {
            let reported = ShardRecord {
                lost: 2,
                ..left(&shard, 3, state, true)
            };
            assert_eq!(plan(4, &shard, Some(&reported)), run(4, 0));
        }
        // Two attempts lost, then attempt 3 was handed back at shutdown:
        // not lost, but the two before still count.
        let handed_back = ShardRecord {
            lost: 2,
            ..left(&shard, 3, ShardState::Pending, true)
        };
        assert_eq!(plan(4, &shard, Some(&handed_back)), run(4, 2));
        // And if attempt 4 is lost too, that makes three in a row.
        let then_lost = ShardRecord {
            lost: 2,
            ..left(&shard, 4, ShardState::Running, false)
        };
        assert_eq!(
            plan(5, &shard, Some(&then_lost)),
            Plan::CrashLoop {
                attempt: 5,
                lost: 3
            }
        );
    }

    #[test]
    fn lost_attempts_of_another_fire_do_not_count() {
        let shard = recorded_shard();
        let older = ShardRecord {
            instant: shard.instant - chrono::Duration::hours(1),
            lost: MAX_LOST,
            ..left(&shard, 9, ShardState::Running, false)
        };
        assert_eq!(plan(1, &shard, Some(&older)), run(1, 0));
        // A final record is final whatever it says of lost attempts: the
        // shard already ended (maybe as a crash loop).
        let ended = ShardRecord {
            lost: MAX_LOST,
            ..left(&shard, 4, ShardState::Failed, false)
        };
        assert_eq!(
            plan(5, &shard, Some(&ended)),
            Plan::Finished {
                run_id: "RUN1".into(),
                state: ShardState::Failed
            }
        );
    }

    #[test]
    fn a_final_record_of_the_fire_means_not_again() {
        let shard = recorded_shard();
        for (state, will_retry) in [
            (ShardState::Succeeded, false),
            (ShardState::Failed, false),
            (ShardState::TimedOut, false),
        ] {
            let done = left(&shard, 1, state, will_retry);
            for delivered in [1, 2, 9] {
                assert_eq!(
                    plan(delivered, &shard, Some(&done)),
                    Plan::Finished {
                        run_id: "RUN1".into(),
                        state
                    }
                );
            }
        }
    }

    #[test]
    fn a_record_of_another_fire_is_ignored() {
        let shard = recorded_shard();
        let older = ShardRecord {
            instant: shard.instant - chrono::Duration::hours(20),
            ..left(&shard, 3, ShardState::Succeeded, false)
        };
        assert_eq!(plan(1, &shard, Some(&older)), run(1, 0));
        let running_older = ShardRecord {
            state: ShardState::Running,
            ..older.clone()
        };
        assert_eq!(plan(2, &shard, Some(&running_older)), run(2, 0));
        // Nor is a record of another shard or job, should one be misfiled.
        let other_shard = ShardRecord {
            shard: 0,
            ..left(&shard, 1, ShardState::Succeeded, false)
        };
        assert_eq!(plan(1, &shard, Some(&other_shard)), run(1, 0));
        let other_job = ShardRecord {
            job: "other".into(),
            ..left(&shard, 1, ShardState::Succeeded, false)
        };
        assert_eq!(plan(1, &shard, Some(&other_job)), run(1, 0));
    }

    /// `recorded_shard` with a deadline of `secs` after its instant.
    fn due_within(secs: i64) -> ShardMessage {
        let mut shard = recorded_shard();
        shard.expires_at = Some(shard.instant + chrono::Duration::seconds(secs));
        shard
    }

    #[test]
    fn a_delivery_past_the_deadline_expires_whatever_its_attempt() {
        let shard = due_within(10);
        let at = |secs: i64| shard.instant + chrono::Duration::seconds(secs);
        let expired = |attempt, lost| Plan::Expired { attempt, lost };
        let plan_at = |delivered, record: Option<&ShardRecord>, now| {
            super::plan(delivered, &shard, record, MAX_LOST, now)
        };
        // Up to the deadline itself the shard runs.
        assert_eq!(plan_at(1, None, at(0)), run(1, 0));
        assert_eq!(plan_at(1, None, at(10)), run(1, 0));
        assert_eq!(plan_at(1, None, at(11)), expired(1, 0));
        // A retry after a failure, and a redelivery after a lost attempt,
        // count from the same instant.
        let retrying = left(&shard, 1, ShardState::Failed, true);
        assert_eq!(plan_at(2, Some(&retrying), at(5)), run(2, 0));
        assert_eq!(plan_at(2, Some(&retrying), at(30)), expired(2, 0));
        let lost = left(&shard, 1, ShardState::Running, false);
        assert_eq!(plan_at(2, Some(&lost), at(30)), expired(2, 1));
        // A shard that already ended stays ended; a crash loop still ends dead.
        let done = left(&shard, 1, ShardState::Succeeded, false);
        assert_eq!(
            plan_at(2, Some(&done), at(30)),
            Plan::Finished {
                run_id: "RUN1".into(),
                state: ShardState::Succeeded
            }
        );
        let looping = ShardRecord {
            lost: MAX_LOST - 1,
            ..lost.clone()
        };
        assert_eq!(
            plan_at(5, Some(&looping), at(30)),
            Plan::CrashLoop {
                attempt: 5,
                lost: MAX_LOST
            }
        );
        // An expired record is final: a repeat delivery is acked.
        let ended = left(&shard, 2, ShardState::Expired, false);
        assert_eq!(
            plan_at(3, Some(&ended), at(30)),
            Plan::Finished {
                run_id: "RUN1".into(),
                state: ShardState::Expired
            }
        );
        // Without a deadline nothing expires.
        let mut open = shard.clone();
        open.expires_at = None;
        assert_eq!(
            super::plan(1, &open, None, MAX_LOST, at(86_400 * 365)),
            run(1, 0)
        );
    }

    #[test]
    fn a_replaced_fire_is_cancelled_unless_it_already_finished() {
        let shard = due_within(10);
        let replacing = shard.instant + chrono::Duration::hours(1);
        let by = Some(replacing);
        let cancelled = |attempt, lost| Plan::Cancelled {
            attempt,
            lost,
            by: replacing,
        };
        assert_eq!(plan(2, &shard, None).unless_replaced(by), cancelled(2, 0));
        // Replacing goes before the deadline and the crash loop.
        let late = super::plan(
            1,
            &shard,
            None,
            MAX_LOST,
            shard.instant + chrono::Duration::hours(1),
        );
        assert_eq!(
            late,
            Plan::Expired {
                attempt: 1,
                lost: 0
            }
        );
        assert_eq!(late.unless_replaced(by), cancelled(1, 0));
        let looping = ShardRecord {
            lost: MAX_LOST - 1,
            ..left(&shard, 3, ShardState::Running, false)
        };
        assert_eq!(
            plan(4, &shard, Some(&looping)).unless_replaced(by),
            cancelled(4, MAX_LOST)
        );
        // A shard that already ended is acked as always.
        let done = left(&shard, 1, ShardState::Succeeded, false);
        let finished = plan(2, &shard, Some(&done));
        assert_eq!(finished.clone().unless_replaced(by), finished);
        // A cancelled record is final.
        let ended = left(&shard, 1, ShardState::Cancelled, false);
        assert!(matches!(
            plan(2, &shard, Some(&ended)),
            Plan::Finished {
                state: ShardState::Cancelled,
                ..
            }
        ));
        // Not replaced: the plan stands.
        assert_eq!(plan(1, &shard, None).unless_replaced(None), run(1, 0));
    }
}
