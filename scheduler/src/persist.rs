//! Every write the leader makes, fenced, in the order that keeps the
//! guarantees, with short bounded waits.
//!
//! The engine decides; a [`Batch`] of decisions is then stored here in
//! three steps, each one pipelined and awaited before the next:
//!
//! 1. fire states (write-ahead: the decision is durable before any of its
//!    effects, see [`crate::state`]): those of fires together in tick
//!    records, skips and removals under the job's key;
//! 2. shard messages (`Nats-Msg-Id` `<job>:<instant ms>:<shard>`), and
//!    the purge of a deleted job's waiting ones ([`crate::deletion`]);
//! 3. `fired` / `misfired` / `skipped` events, once no
//!    batch is storing shards any more (waiting at most [`REPORTS_WAIT`]),
//!    so that a crowd's work is stored first and its reports after.
//!
//! Every write carries the leader's fence for its stream ([`crate::fence`]),
//! so nothing of a deposed leader is stored, whatever its client delivers
//! late. A write that fails is sent again (its message id or its value
//! makes a repeat harmless) until it is stored or the leader must stop; no
//! wait is longer than [`ACK_LIMIT`], and a batch never holds up another
//! one: the engine runs several at once, one per job at a time.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::runs;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, error, info, warn};

use crate::deletion;
use crate::dispatch::Fire;
use crate::fence::{FenceError, Fences, Target};
use crate::metrics::SchedulerMetrics;
use crate::state::{Checkpoint, FireState};

mod encode;
use encode::Encoded;
pub use encode::reports;

/// Longest wait for the client to take one publish.
pub const SEND_LIMIT: Duration = Duration::from_millis(500);
/// Longest wait for the acks of one round of publishes.
pub const ACK_LIMIT: Duration = Duration::from_secs(1);
/// Acks one batch keeps outstanding (the client stalls beyond a few
/// thousand outstanding acks).
const CHUNK: usize = 800;
/// Un-acked publishes of all batches together.
const OUTSTANDING: usize = 2000;
/// Un-acked events of all batches together: fewer, so
/// that in a crowd the shards of every batch go first.
const REPORTS_OUTSTANDING: usize = 600;
/// Longest a batch's events wait for other batches'
/// shards.
const REPORTS_WAIT: Duration = Duration::from_secs(1);
/// Pauses between rounds of retries.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// One publish into one of the leader's streams.
#[derive(Debug, Clone)]
pub struct Write {
    pub target: Target,
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a batch item does to its job's fire state.
// Nearly every item is a `Put`, and lives only while its batch is stored:
// boxing it would cost an allocation per fire.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StateWrite {
    Put(FireState),
    /// The job was deleted: forget its state.
    Purge,
    /// Nothing to write: stored already (the item finishes a decision of an
    /// earlier leader), or a deleted job that had no state.
    Stored,
}

#[derive(Debug, Clone)]
pub enum Action {
    Fire(Fire),
    /// `count` instants, `first` to `instant`, were let pass, for `reason`
    /// (see [`crate::state::Decided::Skipped`]).
    Skip {
        first: DateTime<Utc>,
        instant: DateTime<Utc>,
        count: u64,
        reason: String,
    },
    /// The job was deleted: purge its shard messages still waiting in the
    /// work stream.
    Forget,
    /// Only the state changes (a tracked fire's shards ended, an instant
    /// waits or is counted while a fire runs): nothing else to store.
    Track,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub job: String,
    pub state: StateWrite,
    pub action: Action,
}

/// Decisions taken together, stored together.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: u64,
    pub decided_at: DateTime<Utc>,
    pub items: Vec<Item>,
}

/// How a batch ended.
#[derive(Debug)]
pub struct Outcome {
    pub id: u64,
    pub items: Vec<Item>,
    /// Shards per item that an earlier leader had already stored.
    pub duplicates: Vec<u32>,
    /// Per item, the stream sequence of the tick record holding its state
    /// (0: not in a tick).
    pub ticks: Vec<u64>,
    /// Err: the leader must stop; what was not stored is left to the next one.
    pub result: Result<(), FenceError>,
}

/// How one write was stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored {
    /// The stream already held it (a duplicate message id).
    pub duplicate: bool,
    pub seq: u64,
}

/// The leader's writer.
#[derive(Debug, Clone)]
pub struct Persist {
    js: jetstream::Context,
    names: Names,
    state: jetstream::stream::Stream,
    acks: Arc<Semaphore>,
    reports: Arc<Semaphore>,
    shard_phases: Arc<ShardPhases>,
    metrics: SchedulerMetrics,
}

/// How many batches are storing shard messages, and a wake-up when one is
/// done: events wait for the shards of every batch (for a
/// while), so that in a crowd the work is stored first.
#[derive(Debug, Default)]
struct ShardPhases {
    count: AtomicUsize,
    done: Notify,
}

/// One batch storing its shards; leaves on drop (also when the batch is cut
/// short).
struct ShardPhase(Arc<ShardPhases>);

impl ShardPhase {
    fn enter(phases: &Arc<ShardPhases>) -> ShardPhase {
        phases.count.fetch_add(1, Ordering::AcqRel);
        ShardPhase(phases.clone())
    }
}

impl Drop for ShardPhase {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

impl Persist {
    pub fn new(
        js: jetstream::Context,
        names: Names,
        state: jetstream::stream::Stream,
        metrics: SchedulerMetrics,
    ) -> Persist {
        Persist {
            js,
            names,
            state,
            acks: Arc::new(Semaphore::new(OUTSTANDING)),
            reports: Arc::new(Semaphore::new(REPORTS_OUTSTANDING)),
            shard_phases: Arc::default(),
            metrics,
        }
    }

    /// Stores a batch: states, then shards, then events and records.
    ///
    /// A large batch (a crowd's part) encodes its writes on the blocking
    /// pool: encoding thousands of states and shard messages takes tens of
    /// milliseconds of CPU, and on the runtime's threads it would hold up
    /// the fire loop and the small batches of jobs due meanwhile.
    pub async fn run(&self, fences: Arc<Fences>, batch: Batch) -> Outcome {
        let epoch = fences.epoch();
        let id = batch.id;
        let n = batch.items.len();
        let mut duplicates = vec![0u32; n];
        let mut ticks = vec![0u64; n];
        let (items, writes) = self.encode(batch, epoch).await;
        let (items, result) = self
            .store(&fences, items, writes, &mut duplicates, &mut ticks)
            .await;
        Outcome {
            id,
            items,
            duplicates,
            ticks,
            result,
        }
    }

    /// Stores encoded writes in order (see [`Persist::run`]), filling in
    /// the duplicates and tick sequences per item; hands the items back.
    async fn store(
        &self,
        fences: &Fences,
        items: Vec<Item>,
        writes: Encoded,
        duplicates: &mut [u32],
        ticks: &mut [u64],
    ) -> (Vec<Item>, Result<(), FenceError>) {
        let epoch = fences.epoch();
        let Encoded {
            states,
            single,
            members,
            shards,
            owner,
        } = writes;
        let stored = match self.store_all(fences, states).await {
            Ok(s) => s,
            Err(e) => return (items, Err(e)),
        };
        for (members, s) in members.into_iter().zip(&stored[single..]) {
            for n in members {
                ticks[n] = s.seq;
            }
        }
        for item in &items {
            if let Action::Forget = item.action {
                self.forget(&item.job).await;
            }
        }
        let phase = ShardPhase::enter(&self.shard_phases);
        let dup = match self.store_all(fences, shards).await {
            Ok(d) => d,
            Err(e) => return (items, Err(e)),
        };
        drop(phase);
        for (n, d) in owner.into_iter().zip(dup) {
            duplicates[n] += u32::from(d.duplicate);
        }
        let stored_at = Utc::now();
        let (items, after) = self.encode_reports(items, epoch, stored_at).await;
        self.shards_first().await;
        let result = self
            .store_with(&self.reports, fences, after)
            .await
            .map(|_| ());
        (items, result)
    }

    /// Waits until no batch is storing shards, at most [`REPORTS_WAIT`].
    async fn shards_first(&self) {
        let deadline = Instant::now() + REPORTS_WAIT;
        loop {
            let done = self.shard_phases.done.notified();
            if self.shard_phases.count.load(Ordering::Acquire) == 0
                || timeout_at(deadline, done).await.is_err()
            {
                return;
            }
        }
    }

    /// Writes `states` under their jobs' keys (fenced), so that the tick
    /// records holding them can go.
    pub async fn compact(
        &self,
        fences: &Fences,
        states: Vec<(Arc<str>, FireState)>,
    ) -> Result<(), FenceError> {
        let bucket = self.names.state_bucket();
        let writes = states
            .into_iter()
            .map(|(job, s)| {
                self.kv_put(Target::State, &bucket, &job, Bytes::from(runs::encode(&s)))
            })
            .collect();
        self.store_all(fences, writes).await.map(|_| ())
    }

    /// Removes the tick records stored before stream sequence `before`.
    /// Not fenced: a deposed leader only ever purges below its own oldest
    /// needed tick, and everything below it is held elsewhere (compacted,
    /// or in a later tick).
    pub async fn purge_ticks(&self, before: u64) -> Result<u64, String> {
        let purge = self
            .state
            .purge()
            .filter(self.names.tick_filter())
            .sequence(before);
        match timeout(ACK_LIMIT, purge.into_future()).await {
            Ok(Ok(r)) => Ok(r.purged),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    /// Purges a deleted job's waiting shard messages. Not fenced (a purge
    /// is no publish) and not a reason to stop leading: a failure is
    /// logged, and the job's messages stay until their max age.
    async fn forget(&self, job: &str) {
        let purged = match self.js.get_stream_no_info(self.names.work_stream()).await {
            Ok(work) => deletion::purge_work(&work, &self.names, job)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match purged {
            Ok(0) => debug!(job, "deleted job: no shard message waiting"),
            Ok(n) => info!(
                job,
                purged = n,
                "deleted job: its waiting shard messages removed"
            ),
            Err(e) => warn!(job, error = %e, "deleted job: its waiting shard messages stay"),
        }
    }

    /// Stores the checkpoint (fenced); Err when the leader must stop.
    pub async fn checkpoint(&self, fences: &Fences, cp: &Checkpoint) -> Result<(), FenceError> {
        let w = self.kv_put(
            Target::State,
            &self.names.state_bucket(),
            self.names.checkpoint_key(),
            Bytes::from(runs::encode(cp)),
        );
        self.store_all(fences, vec![w]).await.map(|_| ())
    }

    /// Stores every write, sending again what failed, until all are stored
    /// or this leader must stop. Returns how each was stored.
    pub async fn store_all(
        &self,
        fences: &Fences,
        writes: Vec<Write>,
    ) -> Result<Vec<Stored>, FenceError> {
        self.store_with(&self.acks, fences, writes).await
    }

    /// [`Persist::store_all`], taking ack permits from `acks`.
    async fn store_with(
        &self,
        acks: &Arc<Semaphore>,
        fences: &Fences,
        writes: Vec<Write>,
    ) -> Result<Vec<Stored>, FenceError> {
        let mut duplicate = vec![Stored::default(); writes.len()];
        let mut todo: Vec<usize> = (0..writes.len()).collect();
        let mut pause = RETRY_FIRST;
        while !todo.is_empty() {
            let mut failed = self
                .round(acks, fences, &writes, &todo, &mut duplicate)
                .await;
            for (i, _) in &failed {
                self.metrics.write_failed(writes[*i].target);
            }
            failed.retain(|(i, f)| match f {
                Failure::Permanent(reason) => {
                    error!(subject = %writes[*i].subject, reason, "write can never be stored; dropped");
                    false
                }
                _ => true,
            });
            if failed.is_empty() {
                break;
            }
            let mut refused: Vec<(Target, u64)> = failed
                .iter()
                .filter_map(|f| match f.1 {
                    Failure::Refused(seen) => Some((writes[f.0].target, seen)),
                    _ => None,
                })
                .collect();
            let busy = failed.iter().any(|f| matches!(f.1, Failure::Busy));
            refused.sort_by_key(|(t, s)| (*t as usize, *s));
            refused.dedup();
            for (target, seen) in &refused {
                fences.refused(*target, *seen).await?;
            }
            let other = failed.iter().find_map(|f| match &f.1 {
                Failure::Other(reason) => Some(reason.clone()),
                _ => None,
            });
            if let Some(reason) = other {
                warn!(failed = failed.len(), reason, "writes not stored; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            if !fences.is_valid() {
                return Err(FenceError::NotLeader);
            }
            todo = failed.into_iter().map(|f| f.0).collect();
            if busy {
                // A clustered stream takes one fenced write at a time.
                self.one_by_one(acks, fences, &writes, &mut todo, &mut duplicate)
                    .await;
            }
        }
        Ok(duplicate)
    }

    /// Sends the writes in `todo` one at a time, each after the previous
    /// one's ack; leaves in `todo` what was not stored.
    async fn one_by_one(
        &self,
        acks: &Arc<Semaphore>,
        fences: &Fences,
        writes: &[Write],
        todo: &mut Vec<usize>,
        duplicate: &mut [Stored],
    ) {
        let mut left = Vec::new();
        for &i in todo.iter() {
            let mut tries = 0;
            loop {
                tries += 1;
                let failed = self.round(acks, fences, writes, &[i], duplicate).await;
                match failed.first() {
                    None => break,
                    Some((_, Failure::Busy)) if tries < 20 => continue,
                    Some(_) => {
                        left.push(i);
                        break;
                    }
                }
            }
        }
        *todo = left;
    }

    /// Sends `todo` once, keeping at most [`CHUNK`] acks outstanding (the
    /// oldest is awaited before the next send); returns what failed and why.
    async fn round(
        &self,
        acks: &Arc<Semaphore>,
        fences: &Fences,
        writes: &[Write],
        todo: &[usize],
        duplicate: &mut [Stored],
    ) -> Vec<(usize, Failure)> {
        let mut failed = Vec::new();
        let mut pending: VecDeque<Pending> = VecDeque::with_capacity(CHUNK.min(todo.len()));
        for &i in todo {
            if pending.len() >= CHUNK
                && let Some(p) = pending.pop_front()
            {
                settle(p, duplicate, &mut failed).await;
            }
            let w = &writes[i];
            // Free this batch's own permits before waiting for others': a
            // batch never waits while holding acks it has not collected.
            let permit = loop {
                match acks.clone().try_acquire_owned() {
                    Ok(p) => break Some(p),
                    Err(TryAcquireError::NoPermits) => match pending.pop_front() {
                        Some(p) => settle(p, duplicate, &mut failed).await,
                        None => break acks.clone().acquire_owned().await.ok(),
                    },
                    Err(TryAcquireError::Closed) => break None,
                }
            };
            let Some(permit) = permit else {
                failed.push((i, Failure::Other("closed".into())));
                continue;
            };
            let mut headers = w.headers.clone();
            let seen = fences.apply(w.target, &mut headers);
            let send = self
                .js
                .publish_with_headers(w.subject.clone(), headers, w.body.clone());
            match timeout(SEND_LIMIT, send).await {
                Ok(Ok(ack)) => pending.push_back(Pending {
                    index: i,
                    seen,
                    deadline: Instant::now() + ACK_LIMIT,
                    ack,
                    _permit: permit,
                }),
                Ok(Err(e)) => failed.push((i, classify(&e, seen))),
                Err(_) => failed.push((i, Failure::Other("client did not take it".into()))),
            }
        }
        while let Some(p) = pending.pop_front() {
            settle(p, duplicate, &mut failed).await;
        }
        if !failed.is_empty() {
            debug!(
                failed = failed.len(),
                of = todo.len(),
                "round of writes incomplete"
            );
        }
        failed
    }
}

/// One `fire` span (job, instant) per stored fire, with a `fire stored`
/// line in it, at debug level (`RUST_LOG=jetcron_scheduler=debug`): at
/// thousands of fires a second, info would drown everything else.
pub fn log_fires(items: &[Item]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for item in items {
        if let Action::Fire(f) = &item.action {
            let _fire =
                tracing::debug_span!("fire", job = %item.job, instant = %f.instant).entered();
            debug!(cause = ?f.cause, missed = f.missed, shards = ?f.shards, "fire stored");
        }
    }
}

/// A write sent and not yet acknowledged.
struct Pending {
    index: usize,
    /// The fence sequence it expects.
    seen: u64,
    deadline: Instant,
    ack: PublishAckFuture,
    _permit: OwnedSemaphorePermit,
}

/// Awaits one write's ack (until its deadline) and records how it ended.
async fn settle(p: Pending, stored: &mut [Stored], failed: &mut Vec<(usize, Failure)>) {
    match timeout_at(p.deadline, p.ack.into_future()).await {
        Ok(Ok(ack)) => {
            stored[p.index] = Stored {
                duplicate: ack.duplicate,
                seq: ack.sequence,
            }
        }
        Ok(Err(e)) => failed.push((p.index, classify(&e, p.seen))),
        Err(_) => failed.push((p.index, Failure::Other("no ack in time".into()))),
    }
}

#[derive(Debug)]
enum Failure {
    /// The server refused the fence this write expected.
    Refused(u64),
    /// A clustered stream was replicating another fenced write: send again
    /// at once, one at a time.
    Busy,
    /// Sending it again cannot help (larger than the server's max payload).
    Permanent(String),
    Other(String),
}

fn classify(e: &async_nats::jetstream::context::PublishError, seen: u64) -> Failure {
    use async_nats::jetstream::context::PublishErrorKind;
    if Fences::is_refusal(e.kind()) {
        Failure::Refused(seen)
    } else if Fences::is_busy(e) {
        Failure::Busy
    } else if e.kind() == PublishErrorKind::MaxPayloadExceeded {
        Failure::Permanent(e.to_string())
    } else {
        Failure::Other(e.to_string())
    }
}
