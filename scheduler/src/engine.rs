//! The fire loop: one task that owns the job table and the timer.
//!
//! Followers only keep the job table current. On taking the lease the engine
//! loads every job's fire state and plans its next instant; from then on it
//! sleeps until the earliest instant in the timer, dispatches everything due,
//! records the fires with compare-and-set, and plans the next instants.
//! Instants that were missed (takeover, downtime) are coalesced into one late
//! fire with a `misfired` event.

use std::collections::{HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use jetcron_shared::runs::FireRecord;
use jetcron_shared::wire::{Cause, Event, EventBody};
use jetcron_shared::{Job, Names, Schedule};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn};

use crate::catalog::CatalogEvent;
use crate::dispatch::{DispatchError, Dispatcher, Fire};
use crate::events::Events;
use crate::lease::Leadership;
use crate::state::{FireState, StateError, StateStore, Versioned};
use crate::timer::Timer;

/// Concurrent state reads and writes.
const STATE_CONCURRENCY: usize = 128;
/// Most instants examined when coalescing a misfire.
const MAX_COALESCE: u64 = 100_000;
/// Longest sleep, so wall-clock jumps are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub holder: String,
    pub misfire_threshold: Duration,
}

/// Instants a paused job let pass.
#[derive(Debug, Clone)]
struct Skip {
    job: Arc<Job>,
    revision: u64,
    /// The latest instant passed.
    instant: DateTime<Utc>,
    count: u64,
}

#[derive(Debug, Clone)]
struct Known {
    job: Arc<Job>,
    revision: u64,
    written: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Engine {
    settings: EngineSettings,
    jobs: HashMap<String, Known>,
    timer: Timer,
    /// Fire states, loaded while leading.
    states: HashMap<String, Versioned>,
    /// Jobs whose state could not be read yet; planned once it can.
    unloaded: HashSet<String>,
    epoch: Option<u64>,
    leadership: watch::Receiver<Leadership>,
    /// No dispatch before this (after a failed one).
    hold_until: Option<Instant>,
    store: StateStore,
    dispatcher: Dispatcher,
    events: Events,
    /// Run history: fire records go here.
    runs: kv::Store,
    names: Names,
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        leadership: watch::Receiver<Leadership>,
        store: StateStore,
        dispatcher: Dispatcher,
        events: Events,
        runs: kv::Store,
        names: Names,
    ) -> Engine {
        Engine {
            settings,
            jobs: HashMap::new(),
            timer: Timer::default(),
            states: HashMap::new(),
            unloaded: HashSet::new(),
            epoch: None,
            leadership,
            hold_until: None,
            store,
            dispatcher,
            events,
            runs,
            names,
        }
    }

    pub async fn run(
        mut self,
        mut catalog: mpsc::Receiver<CatalogEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let wake = self.wake_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                changed = self.leadership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.on_leadership().await;
                }
                ev = catalog.recv() => match ev {
                    Some(ev) => self.on_catalog(ev).await,
                    None => return,
                },
                _ = sleep_until(wake) => self.fire_due().await,
            }
        }
    }

    fn wake_at(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + MAX_SLEEP;
        if self.epoch.is_some() && !self.unloaded.is_empty() {
            at = now;
        } else if self.epoch.is_some()
            && let Some(t) = self.timer.earliest()
        {
            let wait = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            at = at.min(now + wait);
        }
        match self.hold_until {
            Some(h) => at.max(h),
            None => at,
        }
    }

    async fn on_leadership(&mut self) {
        let now = *self.leadership.borrow_and_update();
        match now {
            Leadership::Leader { epoch, .. } if self.epoch != Some(epoch) => {
                self.take_over(epoch).await
            }
            Leadership::Leader { .. } => {}
            Leadership::Follower => {
                if self.epoch.take().is_some() {
                    info!("no longer leader; standing by");
                    self.timer.clear();
                    self.states.clear();
                    self.unloaded.clear();
                }
            }
        }
    }

    async fn take_over(&mut self, epoch: u64) {
        info!(epoch, jobs = self.jobs.len(), "leading: loading fire state");
        self.epoch = Some(epoch);
        self.timer.clear();
        self.states.clear();
        self.unloaded = self.jobs.keys().cloned().collect();
        let event = Event::now(EventBody::Leader {
            holder: self.settings.holder.clone(),
            epoch,
        });
        self.events
            .publish(&event, Some(format!("leader:{epoch}")))
            .await;
        self.load_unloaded().await;
        info!(epoch, scheduled = self.timer.len(), "leading: timer ready");
    }

    /// Reads the state of every job not loaded yet, and plans them.
    async fn load_unloaded(&mut self) {
        if self.unloaded.is_empty() {
            return;
        }
        let ids: Vec<String> = self.unloaded.iter().cloned().collect();
        let store = self.store.clone();
        let loaded: Vec<(String, Result<Versioned, StateError>)> = stream::iter(ids)
            .map(|id| {
                let store = store.clone();
                async move {
                    let v = store.load(&id).await;
                    (id, v)
                }
            })
            .buffer_unordered(STATE_CONCURRENCY)
            .collect()
            .await;
        for (id, v) in loaded {
            match v {
                Ok(v) => {
                    self.unloaded.remove(&id);
                    self.states.insert(id.clone(), v);
                    self.plan(&id);
                }
                Err(e) => {
                    warn!(job = %id, error = %e, "cannot read fire state; will retry");
                    self.hold_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }
    }

    /// Sets the job's next instant in the timer from its definition and state.
    fn plan(&mut self, id: &str) {
        let (Some(k), Some(v)) = (self.jobs.get(id), self.states.get(id)) else {
            return;
        };
        let next = next_instant(k, v.state.as_ref());
        match next {
            Some(t) => self.timer.set(id, t),
            None => {
                self.timer.remove(id);
            }
        }
    }

    async fn on_catalog(&mut self, ev: CatalogEvent) {
        match ev {
            CatalogEvent::Upsert {
                job,
                revision,
                written,
            } => {
                let id = job.id().to_string();
                if self.jobs.get(&id).is_some_and(|k| k.revision == revision) {
                    return;
                }
                debug!(job = %id, revision, "definition loaded");
                self.jobs.insert(
                    id.clone(),
                    Known {
                        job,
                        revision,
                        written,
                    },
                );
                if self.epoch.is_some() {
                    if self.states.contains_key(&id) {
                        self.plan(&id);
                    } else {
                        // Loaded in one batch by the next wake-up, so a burst
                        // of new definitions costs one round of reads.
                        self.unloaded.insert(id);
                    }
                }
            }
            CatalogEvent::Remove { id } => {
                let known = self.jobs.remove(&id).is_some();
                self.timer.remove(&id);
                self.unloaded.remove(&id);
                let had_state = self.states.remove(&id).is_some_and(|v| v.state.is_some());
                if self.epoch.is_some() && known && had_state {
                    info!(job = %id, "job deleted; forgetting its fire state");
                    if let Err(e) = self.store.remove(&id).await {
                        warn!(job = %id, error = %e, "cannot remove fire state");
                    }
                }
            }
            CatalogEvent::Invalid { id, .. } => {
                // Reported by the catalog; the stored state is kept so a fixed
                // definition continues where this one stopped.
                self.jobs.remove(&id);
                self.timer.remove(&id);
                self.unloaded.remove(&id);
            }
        }
    }

    async fn fire_due(&mut self) {
        if self.epoch.is_none() {
            return;
        }
        if let Some(h) = self.hold_until {
            if Instant::now() < h {
                return;
            }
            self.hold_until = None;
        }
        self.load_unloaded().await;
        let lease = self.leadership.clone();
        let current = move || lease.borrow().valid_epoch();
        let Some(epoch) = current() else {
            // The renewal is late; the lease task decides. Check again soon.
            self.hold_until = Some(Instant::now() + Duration::from_millis(50));
            return;
        };
        let now = Utc::now();
        let due = self.timer.pop_due(now);
        if due.is_empty() {
            return;
        }
        let threshold = chrono::Duration::from_std(self.settings.misfire_threshold)
            .unwrap_or(chrono::Duration::MAX);
        let mut fires = Vec::with_capacity(due.len());
        let mut skips = Vec::new();
        for (id, at) in due {
            let Some(k) = self.jobs.get(&id) else {
                continue;
            };
            let (instant, missed) = coalesce(&k.job.schedule, at, now);
            if k.job.paused() {
                skips.push(Skip {
                    job: k.job.clone(),
                    revision: k.revision,
                    instant,
                    count: missed,
                });
                continue;
            }
            let cause = if missed > 1 || now - instant > threshold {
                Cause::Misfire
            } else {
                Cause::Schedule
            };
            // History is a ring of slots per job: fire n goes to slot n % history.
            let slot = self.state_of(&id).map_or(0, |s| s.fires) % u64::from(k.job.history());
            let record = self.names.run_fire_key(&id, &format!("s{slot}"));
            fires.push(Fire {
                job: k.job.clone(),
                revision: k.revision,
                instant,
                cause,
                missed,
                first_missed: at,
                shards: None,
                payload: None,
                record: Some(record),
            });
        }
        let results = self.dispatcher.dispatch(&fires, current).await;
        let dispatched_at = Utc::now();
        let mut done = Vec::with_capacity(fires.len());
        for (fire, result) in fires.into_iter().zip(results) {
            let id = fire.job.id().to_string();
            match result {
                Ok(d) => {
                    let _span = info_span!("fire", job = %id, instant = %fire.instant).entered();
                    if d.duplicates > 0 {
                        info!(
                            duplicates = d.duplicates,
                            "shards already dispatched by an earlier leader"
                        );
                    }
                    done.push(fire);
                }
                Err(DispatchError::NotLeader) => self.timer.set(&id, fire.first_missed),
                Err(e) => {
                    warn!(job = %id, instant = %fire.instant, error = %e, "dispatch failed; will retry");
                    self.timer.set(&id, fire.first_missed);
                    self.hold_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }
        let mut updates: Vec<(String, FireState)> = done
            .iter()
            .map(|f| {
                let prev = self.state_of(f.job.id());
                let state = FireState {
                    job_revision: f.revision,
                    next_instant: f.job.schedule.next_after(f.instant),
                    last_instant: Some(f.instant),
                    last_fired_at: Some(dispatched_at),
                    epoch,
                    fires: prev.map_or(0, |s| s.fires) + 1,
                    paused_skipped: 0,
                };
                (f.job.id().to_string(), state)
            })
            .collect();
        updates.extend(skips.iter().map(|s| {
            let prev = self.state_of(s.job.id());
            let state = FireState {
                job_revision: s.revision,
                next_instant: s.job.schedule.next_after(s.instant),
                last_instant: prev.and_then(|p| p.last_instant),
                last_fired_at: prev.and_then(|p| p.last_fired_at),
                epoch,
                fires: prev.map_or(0, |p| p.fires),
                paused_skipped: prev.map_or(0, |p| p.paused_skipped) + s.count,
            };
            (s.job.id().to_string(), state)
        }));
        self.record(updates).await;
        self.write_fire_records(&done, epoch, dispatched_at).await;
        self.report(&done, epoch, dispatched_at).await;
        self.report_skips(&skips).await;
    }

    fn state_of(&self, id: &str) -> Option<&FireState> {
        self.states.get(id).and_then(|v| v.state.as_ref())
    }

    /// Writes fire states with compare-and-set and plans the next instants.
    async fn record(&mut self, updates: Vec<(String, FireState)>) {
        let writes: Vec<(String, FireState, u64)> = updates
            .into_iter()
            .map(|(id, state)| {
                let expected = self.states.get(&id).map_or(0, |v| v.revision);
                (id, state, expected)
            })
            .collect();
        let store = self.store.clone();
        let written: Vec<(String, FireState, u64, Result<u64, StateError>)> = stream::iter(writes)
            .map(|(id, state, expected)| {
                let store = store.clone();
                async move {
                    let r = store.write(&id, &state, expected).await;
                    (id, state, expected, r)
                }
            })
            .buffer_unordered(STATE_CONCURRENCY)
            .collect()
            .await;
        for (id, state, expected, result) in written {
            match result {
                Ok(revision) => {
                    self.states.insert(
                        id.clone(),
                        Versioned {
                            state: Some(state),
                            revision,
                        },
                    );
                    self.plan(&id);
                }
                Err(StateError::Conflict { .. }) => {
                    error!(job = %id, "fire state changed under this leader; re-reading it");
                    self.states.remove(&id);
                    self.unloaded.insert(id);
                }
                Err(e) => {
                    // Keep going from memory; the stored revision is unchanged,
                    // so the next write still applies (or detects a conflict).
                    warn!(job = %id, error = %e, "cannot record the fire");
                    self.states.insert(
                        id.clone(),
                        Versioned {
                            state: Some(state),
                            revision: expected,
                        },
                    );
                    self.plan(&id);
                }
            }
        }
        self.load_unloaded().await;
    }

    /// Puts the run-history record of each dispatched fire (best effort:
    /// results and events remain the record of truth).
    async fn write_fire_records(&self, fires: &[Fire], epoch: u64, at: DateTime<Utc>) {
        let records: Vec<(String, Bytes)> = fires
            .iter()
            .filter_map(|f| {
                let rec = FireRecord {
                    job: f.job.id().to_string(),
                    fire_id: jetcron_shared::wire::fire_id(f.job.id(), f.instant),
                    instant: f.instant,
                    cause: f.cause,
                    fired_at: at,
                    shards: f.job.shard_count(),
                    dispatched: f.shard_list(),
                    epoch,
                };
                Some((
                    f.record.clone()?,
                    Bytes::from(jetcron_shared::runs::encode(&rec)),
                ))
            })
            .collect();
        let runs = self.runs.clone();
        stream::iter(records)
            .map(|(key, body)| {
                let runs = runs.clone();
                async move {
                    if let Err(e) = runs.put(&key, body).await {
                        debug!(key, error = %e, "fire record not written");
                    }
                }
            })
            .buffer_unordered(STATE_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    /// Sends `skipped` events for instants a paused job let pass.
    async fn report_skips(&self, skips: &[Skip]) {
        let mut acks = Vec::with_capacity(skips.len());
        for s in skips {
            debug!(job = s.job.id(), instant = %s.instant, count = s.count, "paused: skipped");
            let event = Event::now(EventBody::Skipped {
                job: s.job.id().to_string(),
                instant: s.instant,
                reason: "paused".to_string(),
                count: s.count,
            });
            let id = format!(
                "skipped:{}",
                jetcron_shared::wire::fire_id(s.job.id(), s.instant)
            );
            acks.extend(self.events.send(&event, Some(id)).await);
        }
        settle_events(acks).await;
    }

    /// Sends `fired` (and `misfired`) events for dispatched fires.
    async fn report(&self, fires: &[Fire], epoch: u64, at: DateTime<Utc>) {
        let mut acks = Vec::with_capacity(fires.len());
        for f in fires {
            let late_ms = (at - f.instant).num_milliseconds();
            if f.cause == Cause::Misfire {
                info!(job = f.job.id(), instant = %f.instant, missed = f.missed, late_ms, "misfire: fired late");
                let event = Event::now(EventBody::Misfired {
                    job: f.job.id().to_string(),
                    missed: f.missed,
                    first_missed: f.first_missed,
                    last_missed: f.instant,
                    fired: f.instant,
                    epoch,
                });
                let id = format!(
                    "misfired:{}",
                    jetcron_shared::wire::fire_id(f.job.id(), f.instant)
                );
                acks.extend(self.events.send(&event, Some(id)).await);
            }
            let event = Event::now(EventBody::Fired {
                job: f.job.id().to_string(),
                instant: f.instant,
                shards: f.job.shard_count(),
                epoch,
                cause: f.cause,
                late_ms,
            });
            let id = format!(
                "fired:{}",
                jetcron_shared::wire::fire_id(f.job.id(), f.instant)
            );
            acks.extend(self.events.send(&event, Some(id)).await);
            if acks.len() >= 1000 {
                settle_events(std::mem::take(&mut acks)).await;
            }
        }
        settle_events(acks).await;
    }
}

async fn settle_events(acks: Vec<async_nats::jetstream::context::PublishAckFuture>) {
    let all = futures::future::join_all(acks.into_iter().map(IntoFuture::into_future));
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        debug!("event acks timed out");
    }
}

/// The next instant of a job given its stored state.
fn next_instant(k: &Known, state: Option<&FireState>) -> Option<DateTime<Utc>> {
    match state {
        // Same definition: continue exactly where the last leader stopped.
        Some(s) if s.job_revision == k.revision => s.next_instant,
        // Changed definition: from the change on, never before the last fire.
        Some(s) => {
            let base = s.last_instant.map_or(k.written, |l| l.max(k.written));
            k.job.schedule.next_after(base)
        }
        None => k.job.schedule.next_after(k.written),
    }
}

/// From the first due instant `at`, the latest instant due by `now` and how
/// many instants that fire stands for.
fn coalesce(schedule: &Schedule, at: DateTime<Utc>, now: DateTime<Utc>) -> (DateTime<Utc>, u64) {
    let mut instant = at;
    let mut count = 1;
    while count < MAX_COALESCE {
        match schedule.next_after(instant) {
            Some(n) if n <= now => {
                instant = n;
                count += 1;
            }
            _ => break,
        }
    }
    (instant, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn known(schedule: &str, revision: u64, written: DateTime<Utc>) -> Known {
        let body = format!(r#"{{"id":"j","schedule":"{schedule}","run":{{"shell":"true"}}}}"#);
        Known {
            job: Arc::new(Job::decode(body.as_bytes(), None).unwrap()),
            revision,
            written,
        }
    }

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, h, m, s).unwrap()
    }

    fn state(rev: u64, last: Option<DateTime<Utc>>, next: Option<DateTime<Utc>>) -> FireState {
        FireState {
            job_revision: rev,
            next_instant: next,
            last_instant: last,
            last_fired_at: last,
            epoch: 1,
            fires: 1,
            paused_skipped: 0,
        }
    }

    #[test]
    fn new_job_fires_first_after_it_was_written() {
        let k = known("0 * * * * *", 3, t(10, 0, 30));
        assert_eq!(next_instant(&k, None), Some(t(10, 1, 0)));
    }

    #[test]
    fn same_definition_continues_from_the_stored_next_instant_even_if_past() {
        let k = known("0 * * * * *", 3, t(9, 0, 0));
        let s = state(3, Some(t(10, 0, 0)), Some(t(10, 1, 0)));
        assert_eq!(next_instant(&k, Some(&s)), Some(t(10, 1, 0)));
    }

    #[test]
    fn changed_definition_applies_from_the_change_and_never_refires() {
        // Changed at 10:00:30 after firing 10:00:00: next is 10:00:40 on the new schedule.
        let k = known("*/20 * * * * *", 4, t(10, 0, 30));
        let s = state(3, Some(t(10, 0, 0)), Some(t(10, 1, 0)));
        assert_eq!(next_instant(&k, Some(&s)), Some(t(10, 0, 40)));
        // Changed before the last fire was recorded (clock skew): not before it.
        let k = known("*/20 * * * * *", 4, t(9, 59, 0));
        assert_eq!(next_instant(&k, Some(&s)), Some(t(10, 0, 20)));
    }

    #[test]
    fn coalesce_counts_missed_instants_and_keeps_the_latest() {
        let sched = Schedule::parse("* * * * * *", chrono_tz::UTC).unwrap();
        assert_eq!(coalesce(&sched, t(10, 0, 0), t(10, 0, 0)), (t(10, 0, 0), 1));
        assert_eq!(coalesce(&sched, t(10, 0, 0), t(10, 0, 3)), (t(10, 0, 3), 4));
        let once = Schedule::parse("@at 2026-05-01T10:00:00Z", chrono_tz::UTC).unwrap();
        assert_eq!(coalesce(&once, t(10, 0, 0), t(11, 0, 0)), (t(10, 0, 0), 1));
    }
}
