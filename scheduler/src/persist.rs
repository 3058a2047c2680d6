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
use jetcron_shared::job::Misfire;
use jetcron_shared::runs;
use jetcron_shared::wire::{self, Cause, Event, EventBody};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, error, info, warn};

use crate::deletion;
use crate::dispatch::Fire;
use crate::fence::{FenceError, Fences, Target};
use crate::state::{self, Checkpoint, FireState, TickState};

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
/// Largest tick record: far below any server's max payload.
const TICK_BYTES: usize = 256 * 1024;
/// Pauses between rounds of retries.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);

const KV_OPERATION: &str = "KV-Operation";
const NATS_ROLLUP: &str = "Nats-Rollup";

/// Batches of at most this many items encode their writes on the runtime's
/// thread; larger ones on the blocking pool (see [`Persist::run`]).
const INLINE_ITEMS: usize = 64;

/// A batch's writes, encoded.
struct Encoded {
    /// Single-key state writes first (`single` of them), then tick records.
    states: Vec<Write>,
    single: usize,
    /// Per tick record, the items it holds.
    members: Vec<Vec<usize>>,
    shards: Vec<Write>,
    /// Per shard write, its item.
    owner: Vec<usize>,
}

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
    pub fn new(js: jetstream::Context, names: Names, state: jetstream::stream::Stream) -> Persist {
        Persist {
            js,
            names,
            state,
            acks: Arc::new(Semaphore::new(OUTSTANDING)),
            reports: Arc::new(Semaphore::new(REPORTS_OUTSTANDING)),
            shard_phases: Arc::default(),
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

    /// The writes of a batch's states and shards, encoded off the runtime's
    /// threads when the batch is large.
    async fn encode(&self, batch: Batch, epoch: u64) -> (Vec<Item>, Encoded) {
        if batch.items.len() <= INLINE_ITEMS {
            let writes = self.encode_now(&batch.items, epoch, batch.id);
            return (batch.items, writes);
        }
        let this = self.clone();
        let id = batch.id;
        let items = batch.items;
        match tokio::task::spawn_blocking(move || {
            let writes = this.encode_now(&items, epoch, id);
            (items, writes)
        })
        .await
        {
            Ok(done) => done,
            // Only a panic in encoding gets here: resume it.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn encode_now(&self, items: &[Item], epoch: u64, batch: u64) -> Encoded {
        let mut states = Vec::new();
        let mut ticked = Vec::new();
        for (n, item) in items.iter().enumerate() {
            match (&item.state, &item.action) {
                (StateWrite::Put(s), Action::Fire(_)) => ticked.push((n, s)),
                (state, _) => states.extend(self.state_write(&item.job, state)),
            }
        }
        let single = states.len();
        let parts = self.tick_writes(epoch, batch, items, &ticked);
        let mut members = Vec::with_capacity(parts.len());
        for (write, m) in parts {
            states.push(write);
            members.push(m);
        }
        let mut shards = Vec::new();
        let mut owner = Vec::new();
        for (n, item) in items.iter().enumerate() {
            if let Action::Fire(f) = &item.action {
                for w in self.shard_writes(f, epoch) {
                    owner.push(n);
                    shards.push(w);
                }
            }
        }
        Encoded {
            states,
            single,
            members,
            shards,
            owner,
        }
    }

    /// The events of a batch, stored at `at`; encoded off the runtime's
    /// threads when the batch is large.
    async fn encode_reports(
        &self,
        items: Vec<Item>,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> (Vec<Item>, Vec<Write>) {
        if items.len() <= INLINE_ITEMS {
            let writes = self.encode_reports_now(&items, epoch, at);
            return (items, writes);
        }
        let this = self.clone();
        match tokio::task::spawn_blocking(move || {
            let writes = this.encode_reports_now(&items, epoch, at);
            (items, writes)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn encode_reports_now(&self, items: &[Item], epoch: u64, at: DateTime<Utc>) -> Vec<Write> {
        items
            .iter()
            .flat_map(|item| self.reports(item, epoch, at))
            .collect()
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

    /// The tick records holding the states of `ticked` (item index and
    /// state), each with the items it holds.
    fn tick_writes(
        &self,
        epoch: u64,
        batch: u64,
        items: &[Item],
        ticked: &[(usize, &FireState)],
    ) -> Vec<(Write, Vec<usize>)> {
        let mut out = Vec::new();
        let mut part: Vec<u8> = Vec::new();
        let mut members = Vec::new();
        let flush = |part: &mut Vec<u8>, members: &mut Vec<usize>, out: &mut Vec<_>| {
            if members.is_empty() {
                return;
            }
            part.extend_from_slice(b"]}");
            let key = self.names.tick_key(epoch, batch, out.len());
            let body = Bytes::from(std::mem::take(part));
            let w = self.kv_put(Target::State, &self.names.state_bucket(), &key, body);
            out.push((w, std::mem::take(members)));
        };
        for (n, state) in ticked {
            let one = runs::encode(&TickState {
                job: items[*n].job.clone(),
                state: (*state).clone(),
            });
            if !members.is_empty() && part.len() + one.len() + 2 > TICK_BYTES {
                flush(&mut part, &mut members, &mut out);
            }
            if members.is_empty() {
                part = format!(r#"{{"epoch":{epoch},"states":["#).into_bytes();
            } else {
                part.push(b',');
            }
            part.extend_from_slice(&one);
            members.push(*n);
        }
        flush(&mut part, &mut members, &mut out);
        out
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

    fn state_write(&self, job: &str, state: &StateWrite) -> Option<Write> {
        let bucket = self.names.state_bucket();
        match state {
            StateWrite::Put(s) => {
                Some(self.kv_put(Target::State, &bucket, job, Bytes::from(runs::encode(s))))
            }
            StateWrite::Purge => {
                let mut headers = HeaderMap::new();
                headers.insert(KV_OPERATION, "PURGE");
                headers.insert(NATS_ROLLUP, "sub");
                Some(Write {
                    target: Target::State,
                    subject: Names::kv_subject(&bucket, job),
                    headers,
                    body: Bytes::new(),
                })
            }
            StateWrite::Stored => None,
        }
    }

    fn kv_put(&self, target: Target, bucket: &str, key: &str, body: Bytes) -> Write {
        Write {
            target,
            subject: Names::kv_subject(bucket, key),
            headers: HeaderMap::new(),
            body,
        }
    }

    fn shard_writes(&self, fire: &Fire, epoch: u64) -> Vec<Write> {
        let messages = match fire.messages(epoch) {
            Ok(m) => m,
            Err(e) => {
                // Validated when it was loaded: only a change in validation
                // itself can get here.
                error!(job = fire.job.id(), error = %e, "cannot make the shard messages of a fire; not dispatched");
                Vec::new()
            }
        };
        messages
            .into_iter()
            .map(|m| Write {
                target: Target::Work,
                subject: self.names.work_subject(&m.group, &m.job),
                headers: m.headers(),
                body: Bytes::from(m.encode()),
            })
            .collect()
    }

    fn event_at(&self, at: DateTime<Utc>, body: EventBody, msg_id: String) -> Write {
        let event = Event { at, body };
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        Write {
            target: Target::Events,
            subject: self.names.event_subject(event.kind(), event.job()),
            headers,
            body: Bytes::from(event.encode()),
        }
    }

    fn reports(&self, item: &Item, epoch: u64, at: DateTime<Utc>) -> Vec<Write> {
        reports(item, epoch, at)
            .into_iter()
            .map(|(body, id)| self.event_at(at, body, id))
            .collect()
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

/// The events that tell what an item did, stored at `at`, each with its
/// message id (the same when a successor redoes the decision). A fire's
/// `fired` event is also its run-history entry (see [`crate::api`]'s
/// `job.runs`). Every late instant that does not fire as itself is named by
/// a `misfired` event: those a `fire_once` fire stands for, and those
/// skipped under `skip` or beyond the limit of `fire_all`. A late fire of
/// `fire_all` is its own instant; its `fired` event (cause `misfire`) says
/// it was late.
pub fn reports(item: &Item, epoch: u64, at: DateTime<Utc>) -> Vec<(EventBody, String)> {
    let job = item.job.clone();
    match &item.action {
        Action::Fire(f) => {
            let fire_id = wire::fire_id(&job, f.instant);
            let mut out = Vec::with_capacity(2);
            if f.cause == Cause::Misfire && f.job.misfire() == Misfire::FireOnce {
                out.push((
                    EventBody::Misfired {
                        job: job.clone(),
                        missed: f.missed,
                        first_missed: f.first_missed,
                        last_missed: f.instant,
                        fired: Some(f.instant),
                        epoch,
                        policy: Misfire::FireOnce,
                    },
                    format!("misfired:{fire_id}"),
                ));
            }
            if let Some(replaced) = f.replaces {
                out.push((
                    EventBody::Replaced {
                        job: job.clone(),
                        instant: replaced,
                        by: f.instant,
                        epoch,
                    },
                    format!("replaced:{fire_id}"),
                ));
            }
            if let Some(span) = f.skipped {
                out.push((
                    EventBody::Skipped {
                        job: job.clone(),
                        instant: span.last,
                        reason: state::OVERLAP.to_string(),
                        count: span.count,
                    },
                    format!("skipped:{}", wire::fire_id(&job, span.last)),
                ));
            }
            out.push((
                EventBody::Fired {
                    job,
                    instant: f.instant,
                    shards: f.job.shard_count(),
                    epoch,
                    cause: f.cause,
                    late_ms: (at - f.instant).num_milliseconds(),
                    record: f.record.clone(),
                    parent: f.parent.clone(),
                },
                format!("fired:{fire_id}"),
            ));
            out
        }
        Action::Skip {
            first,
            instant,
            count,
            reason,
        } => {
            let policy = match reason.as_str() {
                state::MISFIRE => Some(Misfire::Skip),
                state::MISFIRE_LIMIT => Some(Misfire::FireAll),
                _ => None,
            };
            let body = match policy {
                Some(policy) => EventBody::Misfired {
                    job: job.clone(),
                    missed: *count,
                    first_missed: *first,
                    last_missed: *instant,
                    fired: None,
                    epoch,
                    policy,
                },
                None => EventBody::Skipped {
                    job: job.clone(),
                    instant: *instant,
                    reason: reason.clone(),
                    count: *count,
                },
            };
            let kind = if policy.is_some() {
                "misfired"
            } else {
                "skipped"
            };
            vec![(body, format!("{kind}:{}", wire::fire_id(&job, *instant)))]
        }
        Action::Forget | Action::Track => Vec::new(),
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
