//! The fire loop: one task that owns the job table and the timer, and
//! decides what fires when. Every write goes through [`crate::persist`].
//!
//! Followers keep the job table, every job's fire state (through
//! [`crate::mirror`]) and every job's next instant current. On taking the
//! lease the engine stores its fences ([`crate::fence`]), waits until its
//! mirror has seen its state fence (then its copy is what is stored; nothing
//! is read per job), and finishes what the previous leader decided but may
//! not have stored in full (shards and events again, deduplicated). From
//! then on it sleeps until the earliest instant in the timer,
//! decides everything due (fire, or skip while paused), and hands the
//! decisions to a batch that stores them while the loop goes on; a job with
//! a batch in flight is planned again when its batch is done. Instants
//! missed while nobody could fire go by the job's `misfire` policy
//! ([`crate::decide`]): one late fire with a `misfired` event, a skip with
//! one, or each fired in turn: a `fire_all` catch-up is one decision per
//! instant, each planned again (already due) as soon as the one before is
//! stored, so a job never has more than one batch in flight.
//!
//! A leader whose writes the server refuses (a newer leader fenced it), or
//! whose lease lapsed under a batch, resigns: it gives the lease back and
//! starts over, as any replica would, from what is stored.
//!
//! Beside firing, the leader's [`upkeep`] stores checkpoints and compacts
//! fire states out of tick records; a replica that does not lead keeps its
//! copy of the fire states in [`standby`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::setup::Resources;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::catalog::CatalogEvent;
use crate::decide::{self, Known, ShardEnd, next_instant};
use crate::ends::EndFeed;
use crate::fence::{FenceError, Fences, Target};
use crate::lease::Leadership;
use crate::metrics::SchedulerMetrics;
use crate::mirror::Mirror;
use crate::persist::{Action, Batch, Item, Outcome, Persist, StateWrite};
use crate::state::Checkpoint;
use crate::table::Table;

mod standby;
mod tracking;
mod upkeep;
use standby::mirrored;
use tracking::After;
use upkeep::Compacted;

/// Longest sleep, so wall-clock jumps are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long a new leader waits for its mirror to reach the state fence
/// before it opens the mirror again: a live mirror delivers the fence
/// within milliseconds of its write.
const MIRROR_PATIENCE: Duration = Duration::from_millis(500);
/// Batches being stored at once.
const MAX_BATCHES: usize = 64;
/// Decisions stored in one batch, at most.
const BATCH_ITEMS: usize = 2000;
/// How long a stopping leader lets its batches and last checkpoint finish.
const STOP_GRACE: Duration = Duration::from_millis(200);
/// A decision is finished by a successor only if its shards are still
/// within the work stream's duplicate window by this margin; older ones
/// cannot be sent again without risking a second dispatch.
const FINISH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub holder: String,
    pub misfire_threshold: Duration,
    /// Set while the fire states in memory are current (mirrored up to date,
    /// or leading); shown in this replica's heartbeat.
    pub states_current: Arc<AtomicBool>,
    pub metrics: SchedulerMetrics,
}

/// A batch being stored.
#[derive(Debug, Clone, Copy)]
struct Open {
    decided_at: DateTime<Utc>,
    /// It finishes an earlier leader's decisions.
    finishing: bool,
    /// The term's `stored_through` when it started: its tick records, if
    /// stored, lie above.
    floor: u64,
}

/// This replica's term as leader.
#[derive(Debug)]
struct Term {
    fences: Arc<Fences>,
    /// The fire states in memory are what is stored: the mirror has
    /// delivered this term's state fence.
    ready: bool,
    /// Jobs with a batch in flight.
    in_flight: HashSet<String>,
    open: BTreeMap<u64, Open>,
    /// The latest decision time of a finished batch.
    done_through: Option<DateTime<Utc>>,
    /// The latest checkpoint stored or being stored, and when it was sent.
    checkpoint: Option<DateTime<Utc>>,
    checkpoint_sent: Option<Instant>,
    /// Deleted while a batch was in flight: their state is purged after it.
    removed: HashSet<String>,
    /// This term's tick records (newest sequence of a batch) and when they
    /// were stored, until they are old enough to compact.
    recent_ticks: VecDeque<(Instant, u64)>,
    /// Tick records at or below this sequence are old enough to compact.
    old_ticks: u64,
    /// The highest state-stream sequence of a tick record this term knows
    /// stored.
    stored_through: u64,
    /// Tick records below this sequence were purged (or asked to be).
    purged_below: u64,
    compacted_at: Option<Instant>,
    /// When the term began, and whether the mirror was opened again because
    /// it had not reached the state fence in time.
    began: Instant,
    mirror_reopened: bool,
    /// What follows a batch once it is stored: end notices to ack, the
    /// end of a fire to store after its children's fires.
    after: HashMap<u64, After>,
}

#[derive(Debug)]
pub struct Engine {
    settings: EngineSettings,
    /// Definitions, fire states (as stored: from the mirror while
    /// following, from this replica's own writes while leading) and the
    /// timer.
    table: Table,
    /// The state bucket's watch, while not leading.
    mirror: Option<Mirror>,
    /// Stream sequence of the last mirrored entry.
    mirrored: u64,
    /// The checkpoint as last mirrored.
    stored_checkpoint: Option<Checkpoint>,
    term: Option<Term>,
    /// The epoch this replica gave up; it waits for the lease to change.
    resigned: Option<u64>,
    leadership: watch::Receiver<Leadership>,
    resign: mpsc::Sender<u64>,
    /// Nothing fires before this (the renewal is late).
    hold_until: Option<Instant>,
    persist: Persist,
    batches: JoinSet<Outcome>,
    checkpoints: JoinSet<(u64, Result<DateTime<Utc>, FenceError>)>,
    compactions: JoinSet<Compacted>,
    next_batch: u64,
    js: jetstream::Context,
    res: Resources,
    names: Names,
    /// The work stream's duplicate window.
    dedup_window: Duration,
    /// When the mirror last delivered anything.
    mirror_seen: Instant,
    /// End notices of tracked fires, while leading.
    ends: Option<EndFeed>,
    /// End notices waiting for their job's batch in flight, per job.
    waiting_ends: HashMap<String, Vec<(ShardEnd, jetstream::Message)>>,
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        leadership: watch::Receiver<Leadership>,
        resign: mpsc::Sender<u64>,
        res: Resources,
        names: Names,
    ) -> Engine {
        let dedup_window = res.work.cached_info().config.duplicate_window;
        let metrics = settings.metrics.clone();
        Engine {
            settings,
            table: Table::default(),
            mirror: Some(Mirror::start(res.state.clone(), names.clone())),
            mirrored: 0,
            stored_checkpoint: None,
            term: None,
            resigned: None,
            leadership,
            resign,
            hold_until: None,
            persist: Persist::new(
                res.js.clone(),
                names.clone(),
                res.state.stream.clone(),
                metrics,
            ),
            batches: JoinSet::new(),
            checkpoints: JoinSet::new(),
            compactions: JoinSet::new(),
            next_batch: 0,
            js: res.js.clone(),
            res,
            names,
            dedup_window,
            mirror_seen: Instant::now(),
            ends: None,
            waiting_ends: HashMap::new(),
        }
    }

    /// Runs until `shutdown`; then stops firing, lets the last writes
    /// finish (briefly), and cancels `release` so that the lease is given
    /// back before anything else is torn down.
    pub async fn run(
        mut self,
        mut catalog: mpsc::Receiver<CatalogEvent>,
        shutdown: CancellationToken,
        release: CancellationToken,
    ) {
        loop {
            let wake = self.wake_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = self.leadership.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_leadership().await;
                }
                Some(done) = self.batches.join_next(), if !self.batches.is_empty() => {
                    if let Ok(outcome) = done {
                        self.on_batch(outcome).await;
                    }
                }
                Some(done) = self.checkpoints.join_next(), if !self.checkpoints.is_empty() => {
                    if let Ok((epoch, result)) = done {
                        self.on_checkpoint(epoch, result).await;
                    }
                }
                Some(done) = self.compactions.join_next(), if !self.compactions.is_empty() => {
                    if let Ok(done) = done {
                        self.on_compacted(done).await;
                    }
                }
                Some(updates) = mirrored(&mut self.mirror) => self.on_mirror(updates),
                Some(notice) = ended(&mut self.ends) => self.on_end(notice),
                ev = catalog.recv() => match ev {
                    Some(ev) => self.on_catalog(ev),
                    None => break,
                },
                _ = sleep_until(wake) => self.fire_due().await,
            }
            self.checkpoint();
            self.compact();
            self.unstick_mirror();
        }
        self.stop().await;
        release.cancel();
    }

    /// A stopping leader lets its batches finish (briefly) and records how
    /// far it got, so that its successor has as little as possible to redo.
    async fn stop(&mut self) {
        if self.term.is_none() {
            return;
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !self.batches.is_empty() {
            match tokio::time::timeout_at(deadline, self.batches.join_next()).await {
                Ok(Some(Ok(outcome))) => self.on_batch(outcome).await,
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.batches.abort_all();
        if let Some(t) = &self.term
            && let Some(through) = t.done_through
            && t.open.is_empty()
            && t.checkpoint < Some(through)
        {
            let cp = Checkpoint {
                epoch: t.fences.epoch(),
                through,
            };
            let write = self.persist.checkpoint(&t.fences, &cp);
            match tokio::time::timeout_at(deadline, write).await {
                Ok(Ok(())) => debug!(through = %through, "last checkpoint stored"),
                _ => debug!("last checkpoint not stored; the next leader redoes a little more"),
            }
        }
    }

    fn wake_at(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + MAX_SLEEP;
        if self.term.as_ref().is_some_and(|t| t.ready)
            && let Some(t) = self.table.earliest()
        {
            let wait = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            at = at.min(now + wait);
        }
        if let Some(t) = self
            .term
            .as_ref()
            .filter(|t| !t.ready && !t.mirror_reopened)
        {
            at = at.min(t.began.max(self.mirror_seen) + MIRROR_PATIENCE);
        }
        match self.hold_until {
            Some(h) => at.max(h),
            None => at,
        }
    }

    async fn on_leadership(&mut self) {
        let now = *self.leadership.borrow_and_update();
        match now {
            Leadership::Leader { epoch, .. }
                if self.term.as_ref().map(|t| t.fences.epoch()) != Some(epoch)
                    && self.resigned != Some(epoch) =>
            {
                self.take_over(epoch).await
            }
            Leadership::Leader { .. } => {}
            Leadership::Follower => {
                if self.term.is_some() {
                    info!("no longer leader; standing by");
                }
                self.stand_by();
            }
        }
    }

    /// Gives up this term: the server refused its writes or its lease lapsed
    /// under a batch, so what it holds in memory may not be what is stored.
    async fn resign_term(&mut self, why: &FenceError) {
        let Some(epoch) = self.term.as_ref().map(|t| t.fences.epoch()) else {
            return;
        };
        warn!(epoch, reason = %why, "resigning the lease; starting over from what is stored");
        self.stand_by();
        self.resigned = Some(epoch);
        let _ = self.resign.send(epoch).await;
    }

    async fn take_over(&mut self, epoch: u64) {
        self.stand_by();
        info!(epoch, jobs = self.table.jobs(), "leading: storing fences");
        let fences = Fences::take(
            self.js.clone(),
            &self.names,
            &self.res,
            &self.settings.holder,
            epoch,
            self.leadership.clone(),
        )
        .await;
        let fences = match fences {
            Ok(f) => Arc::new(f),
            Err(e) => {
                warn!(epoch, error = %e, "cannot lead in this epoch");
                self.resigned = Some(epoch);
                if matches!(e, FenceError::Superseded { .. }) {
                    let _ = self.resign.send(epoch).await;
                }
                return;
            }
        };
        let fence = fences.seq(Target::State);
        self.term = Some(Term {
            fences,
            ready: false,
            in_flight: HashSet::new(),
            open: BTreeMap::new(),
            done_through: None,
            checkpoint: None,
            checkpoint_sent: None,
            removed: HashSet::new(),
            recent_ticks: VecDeque::new(),
            // Every tick record before this term's fence is old.
            old_ticks: fence,
            stored_through: fence,
            purged_below: 0,
            compacted_at: None,
            began: Instant::now(),
            mirror_reopened: false,
            after: HashMap::new(),
        });
        if self.mirrored >= fence {
            self.ready();
        } else {
            debug!(
                epoch,
                fence,
                mirrored = self.mirrored,
                "waiting for the mirror to reach the state fence"
            );
        }
    }

    /// The fire states in memory are what is stored, and the timer holds
    /// every job's next instant (planned while standing by): stop mirroring,
    /// finish the previous leader's open decisions, and fire.
    fn ready(&mut self) {
        let Some(term) = self.term.as_mut() else {
            return;
        };
        term.ready = true;
        let epoch = term.fences.epoch();
        self.mirror = None;
        self.settings.states_current.store(true, Ordering::Release);
        let checkpoint = self.stored_checkpoint;
        self.finish_open(checkpoint.as_ref());
        self.ends = Some(EndFeed::start(&self.res, &self.names));
        info!(
            epoch,
            states = self.table.states(),
            scheduled = self.table.scheduled(),
            "leading: timer ready"
        );
    }

    /// Sends again the shards and events of decisions the checkpoint does
    /// not cover: the previous leader may have died between its state write
    /// and the rest.
    fn finish_open(&mut self, checkpoint: Option<&Checkpoint>) {
        let now = Utc::now();
        let window = chrono::Duration::from_std(self.dedup_window.saturating_sub(FINISH_MARGIN))
            .unwrap_or(chrono::Duration::zero());
        let items: Vec<Item> = self
            .table
            .with_states()
            .filter_map(|(id, state, k)| {
                if !Checkpoint::leaves_open(checkpoint, state) {
                    return None;
                }
                let k = k?;
                match decide::finish(k, state) {
                    Some(d) if now - d.at > window => {
                        warn!(job = %id, decided = %d.at, "last decision older than the duplicate window; not redone");
                        None
                    }
                    Some(d) => Some(d.item),
                    None => {
                        info!(job = %id, "definition changed since its last decision; not redone");
                        None
                    }
                }
            })
            .collect();
        if !items.is_empty() {
            info!(
                decisions = items.len(),
                "finishing the previous leader's last decisions"
            );
            self.spawn_batch(items, now, true);
        }
    }

    /// Sets the job's next instant in the timer from its definition and
    /// state; not while a batch for it is in flight.
    fn plan(&mut self, id: &str) {
        if self.term.as_ref().is_some_and(|t| t.in_flight.contains(id)) {
            return;
        }
        let Some(k) = self.table.known(id) else {
            return;
        };
        let next = next_instant(k, self.table.state(id));
        self.table.set_next(id, next);
    }

    fn on_catalog(&mut self, ev: CatalogEvent) {
        match ev {
            CatalogEvent::Upsert {
                job,
                revision,
                written,
            } => {
                let id = job.id().to_string();
                if self
                    .table
                    .known(&id)
                    .is_some_and(|k| k.revision == revision)
                {
                    return;
                }
                debug!(job = %id, revision, "definition loaded");
                self.table.set_known(
                    &id,
                    Known {
                        job,
                        revision,
                        written,
                    },
                );
                self.plan(&id);
            }
            CatalogEvent::Remove { id } => {
                let known = self.table.remove_known(&id);
                let had_state = self.table.remove_state(&id);
                let Some(term) = self.term.as_mut().filter(|t| t.ready) else {
                    return;
                };
                // Its waiting shard messages go too (see crate::deletion);
                // a batch in flight may be storing some, so it goes first.
                if term.in_flight.contains(&id) {
                    term.removed.insert(id);
                } else if known {
                    info!(job = %id, "job deleted; forgetting its fire state and waiting shards");
                    let state = if had_state {
                        StateWrite::Purge
                    } else {
                        StateWrite::Stored
                    };
                    self.forget(id, state);
                }
            }
            CatalogEvent::Invalid { id, .. } => {
                // Reported by the catalog; the stored state is kept so a fixed
                // definition continues where this one stopped.
                self.table.remove_known(&id);
            }
        }
    }

    /// Forgets a deleted job: its fire state and its shard messages still
    /// in the work stream.
    fn purge(&mut self, id: String) {
        self.forget(id, StateWrite::Purge);
    }

    /// Purges a deleted job's shard messages still in the work stream,
    /// with `state` as its state write.
    fn forget(&mut self, id: String, state: StateWrite) {
        let item = Item {
            job: id,
            state,
            action: Action::Forget,
        };
        self.spawn_batch(vec![item], Utc::now(), false);
    }

    async fn fire_due(&mut self) {
        let Some(term) = self.term.as_ref().filter(|t| t.ready) else {
            return;
        };
        if let Some(h) = self.hold_until {
            if Instant::now() < h {
                return;
            }
            self.hold_until = None;
        }
        if !term.fences.is_valid() {
            // The renewal is late; the lease task decides. Check again soon.
            self.hold_until = Some(Instant::now() + Duration::from_millis(50));
            return;
        }
        if self.batches.len() >= MAX_BATCHES {
            return;
        }
        let epoch = term.fences.epoch();
        let now = Utc::now();
        let due = self.table.pop_due(now);
        if due.is_empty() {
            return;
        }
        let names = self.names.clone();
        let decider = self.decider(&names, epoch, now);
        // A crowd is stored as several batches side by side, each started
        // as soon as it is decided: one's states are written while another's
        // shards are, and the first shards go out at once.
        let mut items = Vec::with_capacity(due.len().min(BATCH_ITEMS));
        for (id, at) in due {
            // A job decoded at an earlier fire is reused; any other is
            // decoded by its batch, off this loop.
            let full = self.table.decoded(&id);
            let Some(k) = self.table.known(&id) else {
                continue;
            };
            items.push(decider.due(&id, k, self.table.state(&id), at, full));
            if items.len() == BATCH_ITEMS {
                self.spawn_batch(std::mem::take(&mut items), now, false);
            }
        }
        self.spawn_batch(items, now, false);
    }

    /// Starts storing `items`; the batch's id, None when nothing started.
    fn spawn_batch(
        &mut self,
        items: Vec<Item>,
        decided_at: DateTime<Utc>,
        finishing: bool,
    ) -> Option<u64> {
        let term = self.term.as_mut()?;
        if items.is_empty() {
            return None;
        }
        self.next_batch += 1;
        let id = self.next_batch;
        for item in &items {
            term.in_flight.insert(item.job.clone());
            self.table.set_next(&item.job, None);
        }
        term.open.insert(
            id,
            Open {
                decided_at,
                finishing,
                floor: term.stored_through,
            },
        );
        let persist = self.persist.clone();
        let fences = term.fences.clone();
        self.batches.spawn(async move {
            persist
                .run(
                    fences,
                    Batch {
                        id,
                        decided_at,
                        items,
                    },
                )
                .await
        });
        Some(id)
    }

    async fn on_batch(&mut self, outcome: Outcome) {
        let Some(term) = self.term.as_mut() else {
            return;
        };
        let Some(open) = term.open.remove(&outcome.id) else {
            return;
        };
        let after = term.after.remove(&outcome.id);
        if let Err(e) = &outcome.result {
            self.settings.metrics.batch_failed();
            self.resign_term(e).await;
            return;
        }
        self.settings.metrics.stored(&outcome.items, Utc::now());
        crate::persist::log_fires(&outcome.items);
        term.done_through = term.done_through.max(Some(open.decided_at));
        let mut purge = Vec::new();
        let mut replan = Vec::new();
        if let Some(newest) = outcome.ticks.iter().max().filter(|s| **s > 0) {
            term.recent_ticks.push_back((Instant::now(), *newest));
            term.stored_through = term.stored_through.max(*newest);
        }
        let items = outcome.items.into_iter().zip(outcome.duplicates);
        for ((item, dup), tick) in items.zip(outcome.ticks) {
            term.in_flight.remove(&item.job);
            if let Action::Fire(f) = &item.action
                && let Some(job) = f.job.decoded()
            {
                self.table.keep_decoded(&item.job, f.revision, job);
            }
            if dup > 0 {
                info!(job = %item.job, duplicates = dup, "shards already dispatched by an earlier leader");
            }
            match item.state {
                StateWrite::Put(s) => {
                    self.table.set_state(&item.job, s);
                    if tick > 0 {
                        self.table.set_ticked(&item.job, tick);
                    } else {
                        self.table.clear_ticked(&item.job);
                    }
                }
                StateWrite::Purge => {
                    self.table.remove_state(&item.job);
                }
                StateWrite::Stored => {}
            }
            if term.removed.remove(&item.job) {
                purge.push(item.job);
            } else {
                replan.push(item.job);
            }
        }
        for id in replan {
            self.plan(&id);
        }
        for id in purge {
            self.purge(id);
        }
        if let Some(after) = after {
            self.after_batch(after);
        }
        self.retry_ends();
    }
}

/// The next end notice, while leading.
async fn ended(feed: &mut Option<EndFeed>) -> Option<jetstream::Message> {
    match feed {
        Some(f) => f.notices.recv().await,
        None => std::future::pending().await,
    }
}
