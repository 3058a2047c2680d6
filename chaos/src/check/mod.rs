//! The invariant checker: one pure function per invariant, over what the run
//! stored (results, events, fences, leftovers in the work stream), what the
//! commands themselves logged, and what the runner did (fault records).
//!
//! | # | module | invariant |
//! |---|---|---|
//! | 1 | [`dispatch`] | no (job, instant, shard) dispatched twice |
//! | 2 | [`visible`] | no execution hidden, no run id reused |
//! | 3 | [`fenced`] | no shard stored from a deposed epoch |
//! | 4 | [`due`] | every due instant fired or named missed, never both; nothing fired that was not due |
//! | 5 | [`finished`] | every dispatched shard ends in a final state; the work stream ends empty |
//! | 6 | [`stall`] | no fault stalls firing longer than its outage plus 2 s |
//!
//! Each function has unit tests on synthetic histories that show it passes a
//! clean one and reports the violation it exists for.

pub mod dispatch;
pub mod due;
pub mod fenced;
pub mod finished;
pub mod stall;
pub mod visible;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use jetcron_shared::Schedule;
use jetcron_shared::wire::{Event, RunResult};

use crate::execlog::Execution;
use crate::faults::{FaultRecord, WorkerKill};
use crate::history::{StoredFence, WorkLeft};
use crate::plan::FaultKind;

/// A job as the checker needs it: its schedule and when it was put.
#[derive(Debug, Clone)]
pub struct DueJob {
    pub id: String,
    pub schedule: Schedule,
    /// Just before the put request was sent.
    pub put_at: DateTime<Utc>,
}

/// Everything the checker reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub results: &'a [RunResult],
    pub events: &'a [Event],
    pub fences: &'a [StoredFence],
    /// Shard messages still in the work stream at the end.
    pub work_left: &'a WorkLeft,
    pub executions: &'a [Execution],
    pub worker_kills: &'a [WorkerKill],
    pub jobs: &'a [DueJob],
    pub faults: &'a [FaultRecord],
    /// When the schedulers were told to stop.
    pub stopped_at: DateTime<Utc>,
}

/// What the checks looked at, for the figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// (job, instant) fired, over all jobs.
    pub fires: usize,
    /// Due instants checked against the schedules.
    pub due_instants: usize,
    /// (job, instant, shard) checked for a final result.
    pub shards: usize,
    /// Executions with an end line checked for a result.
    pub executions: usize,
    /// Of those, without a result because the plan killed their worker.
    pub excused_executions: usize,
    /// Results that carry no work stream sequence: invariants 1 and 3 cannot look at them.
    pub results_without_seq: usize,
}

/// Everything that went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// 1: two shard messages stored for one (job, instant, shard).
    DoubleDispatch {
        job: String,
        instant: DateTime<Utc>,
        shard: u32,
        /// (stream_seq, epoch, attempt, run id) of each result.
        results: Vec<(u64, u64, u32, String)>,
    },
    /// 2: an execution ran to its end and no result names its run id.
    HiddenExecution {
        job: String,
        instant: String,
        shard: u32,
        attempt: u32,
        run_id: String,
        worker_pid: u32,
        ended: Option<DateTime<Utc>>,
    },
    /// 2: a result names a run id the execution log files under another shard or attempt.
    MisattributedResult {
        run_id: String,
        logged: String,
        stored: String,
    },
    /// 2: one run id in several results.
    RunIdReused {
        run_id: String,
        results: Vec<String>,
    },
    /// 3: a shard message stored after a newer leader's fence.
    DeposedStore {
        job: String,
        instant: DateTime<Utc>,
        shard: u32,
        epoch: u64,
        stream_seq: u64,
        fence_epoch: u64,
        fence_seq: u64,
        fence_holder: String,
        run_ids: Vec<String>,
    },
    /// 4: due instants neither fired nor named missed (a run of consecutive ones).
    Lost {
        job: String,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        count: usize,
        previous_fired: Option<DateTime<Utc>>,
        next_fired: Option<DateTime<Utc>>,
    },
    /// 4: an instant fired and also named as not fired.
    FiredAndMissed {
        job: String,
        instant: DateTime<Utc>,
        fired_by: String,
        named_by: String,
    },
    /// 4: a fire of an instant that was not due (not on the schedule, before the put, early).
    NotDue {
        job: String,
        instant: DateTime<Utc>,
        why: String,
    },
    /// 5: a dispatched shard without a final result.
    Unfinished {
        job: String,
        instant: DateTime<Utc>,
        shard: u32,
        /// (attempt, status, will_retry) of the results it has.
        attempts: Vec<(u32, String, bool)>,
    },
    /// 5: shard messages left in the work stream: the first of them, and
    /// where the work stream's consumers stood.
    WorkLeft {
        count: u64,
        messages: Vec<String>,
        consumers: Vec<String>,
    },
    /// 6: firing stalled longer than the fault's outage allows.
    Stall {
        fault: usize,
        kind: FaultKind,
        target: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        gap: Duration,
        allowed: Duration,
    },
    /// A scheduler or worker exited although the plan did not touch it.
    UnplannedExit {
        process: String,
        status: String,
        at: DateTime<Utc>,
        log: String,
    },
}

impl Violation {
    /// Which invariant it breaks (0: the runner's own expectations).
    pub fn invariant(&self) -> u8 {
        match self {
            Violation::DoubleDispatch { .. } => 1,
            Violation::HiddenExecution { .. }
            | Violation::MisattributedResult { .. }
            | Violation::RunIdReused { .. } => 2,
            Violation::DeposedStore { .. } => 3,
            Violation::Lost { .. }
            | Violation::FiredAndMissed { .. }
            | Violation::NotDue { .. } => 4,
            Violation::Unfinished { .. } | Violation::WorkLeft { .. } => 5,
            Violation::Stall { .. } => 6,
            Violation::UnplannedExit { .. } => 0,
        }
    }
}

/// RFC 3339 with milliseconds, as in the logs.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_ts(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "none".to_string(), ts)
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.invariant())?;
        match self {
            Violation::DoubleDispatch {
                job,
                instant,
                shard,
                results,
            } => {
                write!(
                    f,
                    "dispatched twice: {job} {} shard {shard}; results (seq, epoch, attempt, run id):",
                    ts(*instant)
                )?;
                for (seq, epoch, attempt, run) in results {
                    write!(f, " ({seq}, {epoch}, {attempt}, {run})")?;
                }
                Ok(())
            }
            Violation::HiddenExecution {
                job,
                instant,
                shard,
                attempt,
                run_id,
                worker_pid,
                ended,
            } => write!(
                f,
                "hidden execution: {job} {instant} shard {shard} attempt {attempt} run {run_id} \
                 ran to its end at {} on worker pid {worker_pid}, and no result has its run id",
                opt_ts(*ended)
            ),
            Violation::MisattributedResult {
                run_id,
                logged,
                stored,
            } => write!(
                f,
                "run {run_id} logged as {logged} but its result says {stored}"
            ),
            Violation::RunIdReused { run_id, results } => {
                write!(
                    f,
                    "run id {run_id} in {} results: {}",
                    results.len(),
                    results.join("; ")
                )
            }
            Violation::DeposedStore {
                job,
                instant,
                shard,
                epoch,
                stream_seq,
                fence_epoch,
                fence_seq,
                fence_holder,
                run_ids,
            } => write!(
                f,
                "deposed epoch: {job} {} shard {shard} stored at work seq {stream_seq} by epoch {epoch}, \
                 after the fence of epoch {fence_epoch} ({fence_holder}) at seq {fence_seq}; runs {}",
                ts(*instant),
                run_ids.join(", ")
            ),
            Violation::Lost {
                job,
                first,
                last,
                count,
                previous_fired,
                next_fired,
            } => write!(
                f,
                "lost: {job} {count} due instant(s) {} ..= {} never fired and never named missed \
                 (fired around them: {} .. {})",
                ts(*first),
                ts(*last),
                opt_ts(*previous_fired),
                opt_ts(*next_fired)
            ),
            Violation::FiredAndMissed {
                job,
                instant,
                fired_by,
                named_by,
            } => write!(
                f,
                "fired and named missed: {job} {} fired ({fired_by}) and named not fired ({named_by})",
                ts(*instant)
            ),
            Violation::NotDue { job, instant, why } => {
                write!(f, "not due: {job} {} fired, but {why}", ts(*instant))
            }
            Violation::Unfinished {
                job,
                instant,
                shard,
                attempts,
            } => {
                write!(
                    f,
                    "unfinished: {job} {} shard {shard} has no final result; results (attempt, status, will_retry):",
                    ts(*instant)
                )?;
                if attempts.is_empty() {
                    write!(f, " none")?;
                }
                for (a, s, r) in attempts {
                    write!(f, " ({a}, {s}, {r})")?;
                }
                Ok(())
            }
            Violation::WorkLeft {
                count,
                messages,
                consumers,
            } => {
                write!(
                    f,
                    "work stream still holds {count} shard message(s) at the end: {}",
                    messages.join("; ")
                )?;
                if messages.len() < *count as usize {
                    write!(f, "; ...")?;
                }
                write!(f, "; consumers: {}", consumers.join("; "))
            }
            Violation::Stall {
                fault,
                kind,
                target,
                from,
                to,
                gap,
                allowed,
            } => write!(
                f,
                "stall: fault #{fault} {kind} ({target}): no fire from {} to {} ({:.2}s, allowed {:.2}s)",
                ts(*from),
                ts(*to),
                gap.as_secs_f64(),
                allowed.as_secs_f64()
            ),
            Violation::UnplannedExit {
                process,
                status,
                at,
                log,
            } => write!(
                f,
                "unplanned exit: {process} exited ({status}) at {} without a fault; see {log}",
                ts(*at)
            ),
        }
    }
}

/// Runs every check.
pub fn check_all(input: &Input<'_>) -> (Vec<Violation>, Counts) {
    let mut violations = Vec::new();
    let mut counts = Counts::default();

    let (v, c) = dispatch::once_per_shard(input.results);
    violations.extend(v);
    counts.results_without_seq = c.without_seq;

    let (v, c) =
        visible::every_execution_visible(input.executions, input.results, input.worker_kills);
    violations.extend(v);
    counts.executions = c.checked;
    counts.excused_executions = c.excused;

    violations.extend(fenced::nothing_from_deposed_epochs(
        input.results,
        input.fences,
    ));

    let (v, c) =
        due::every_due_instant_accounted(input.jobs, input.events, input.results, input.stopped_at);
    violations.extend(v);
    counts.due_instants = c.due;
    counts.fires = c.fires;

    let (v, shards) = finished::every_shard_finished(input.events, input.results, input.work_left);
    violations.extend(v);
    counts.shards = shards;

    violations.extend(stall::no_long_stall(
        input.faults,
        input.events,
        input.stopped_at,
    ));
    (violations, counts)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Builders for synthetic histories.

    use chrono::TimeZone;
    use jetcron_shared::wire::{Cause, EventBody, RunStatus};

    use super::*;

    pub fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    pub fn t_ms(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms)
            .single()
            .unwrap_or_default()
    }

    pub fn result(
        job: &str,
        instant: DateTime<Utc>,
        shard: u32,
        attempt: u32,
        run: &str,
    ) -> RunResult {
        RunResult {
            job: job.into(),
            instant,
            shard,
            shards: 1,
            attempt,
            run_id: run.into(),
            status: RunStatus::Succeeded,
            worker: "worker-1".into(),
            started_at: instant,
            finished_at: instant,
            exit_code: Some(0),
            output: String::new(),
            output_truncated: false,
            error: None,
            will_retry: false,
            epoch: 1,
            stream_seq: None,
            parent: None,
            http_status: None,
        }
    }

    pub fn fired(job: &str, instant: DateTime<Utc>, shards: u32, at: DateTime<Utc>) -> Event {
        Event {
            at,
            body: EventBody::Fired {
                job: job.into(),
                instant,
                shards,
                epoch: 1,
                cause: Cause::Schedule,
                late_ms: (at - instant).num_milliseconds(),
                record: None,
                parent: None,
            },
        }
    }
}
