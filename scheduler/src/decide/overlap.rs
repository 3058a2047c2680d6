//! Decisions about tracked fires (see [`crate::ends`]): what an instant
//! does while an earlier fire of its job still runs (the job's `overlap`),
//! what the end of a fire decides for its own job (a queued instant fires,
//! the instants slept through are reported, a fixed delay starts), and the
//! `on_success` fires of its children.
//!
//! A job that skipped or queued an instant for overlap sleeps (no instant in
//! the timer) until the fire ends, as a paused job does: a long run of an
//! every-second job costs one write and one event, not one per instant.
//! When it ends, the instants it slept through are counted from the
//! schedule and reported in one `skipped` event.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jetcron_shared::Job;
use jetcron_shared::job::Overlap;
use jetcron_shared::wire::{self, Cause};
use tracing::warn;

use super::{Decider, Known, MAX_SKIPPED_COUNT, Skip, coalesce, walk};
use crate::persist::{Action, Item, StateWrite};
use crate::state::{self, FireState, Running, SkipSpan};

/// Most fires of one job waited for at once (`overlap: allow`); beyond it
/// the oldest is no longer waited for (its children do not fire).
pub const MAX_RUNNING: usize = 16;

/// Longest chain of `on_success` fires: a cycle put by two racing
/// `job.put`s (each checked alone) stops here.
pub const MAX_CHAIN: u32 = 64;

/// What overlap, a queue or a parent adds to a fire.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub replaces: Option<DateTime<Utc>>,
    pub parent: Option<String>,
    /// Parents above it (see [`MAX_CHAIN`]).
    pub depth: u32,
    pub skipped: Option<SkipSpan>,
    /// The next instant to record, in place of the schedule's next after
    /// the fire.
    pub next: Option<Option<DateTime<Utc>>>,
}

/// Whether the job sleeps until its running fire ends: a fixed delay counts
/// from that end, and a forbidden or queued instant waits for it.
pub fn waits_for_end(k: &Known, s: &FireState) -> bool {
    !s.running.is_empty()
        && (k.job.schedule().fixed_delay().is_some()
            || s.queued.is_some()
            || s.overlap_from.is_some())
}

/// One shard of a tracked fire that ended for good, from its end notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardEnd {
    pub instant: DateTime<Utc>,
    pub shard: u32,
    pub succeeded: bool,
    /// When its last attempt finished.
    pub at: DateTime<Utc>,
}

/// What end notices decide for their job.
#[derive(Debug)]
pub enum Ended {
    /// Nothing new: no running fire of the job has these shards, or they
    /// were counted already.
    Nothing,
    /// The job's new state (and what its fire's end set off), and the
    /// fires that ended with every shard succeeded, for the children.
    Store {
        item: Box<Item>,
        succeeded: Vec<Success>,
    },
}

/// A fire that ended with every shard succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    pub fire_id: String,
    /// Its end: the instant of its children's fires.
    pub at: DateTime<Utc>,
    /// Its depth in a chain of `on_success` fires.
    pub depth: u32,
}

/// The instant of a fire's end: its last shard's finish, to the millisecond
/// (fire ids and dedup ids count milliseconds). Every leader derives the
/// same one from the same end notices.
fn end_instant(r: &Running, fallback: DateTime<Utc>) -> DateTime<Utc> {
    let at = r.last_end.unwrap_or(fallback);
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

impl Decider<'_> {
    /// Whether the running fire `r` is given up: no end came within
    /// `give_up` of its instant.
    pub(super) fn stale(&self, r: &Running) -> bool {
        r.instant
            .checked_add_signed(self.give_up)
            .is_some_and(|at| at <= self.now)
    }

    /// When a job asleep for its fire at `instant` wakes to give up on it:
    /// an instant of its schedule, so that waking fires nothing off it.
    pub(super) fn give_up_at(&self, k: &Known, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = instant.checked_add_signed(self.give_up)?;
        k.job.schedule().next_after(at)
    }

    /// The due instant `at` of a job some of whose running fires are given
    /// up: they are dropped (with a warning) as if they had ended now.
    pub(super) fn give_up(
        &self,
        id: &str,
        k: &Known,
        p: &FireState,
        at: DateTime<Utc>,
        full: Option<Arc<Job>>,
    ) -> Item {
        let mut state = p.clone();
        state.running.retain(|r| {
            let stale = self.stale(r);
            if stale {
                warn!(
                    job = id,
                    instant = %r.instant,
                    ended = r.ended.len(),
                    shards = r.shards,
                    "no end of this fire came in time (its shard messages are gone from the work stream); no longer waiting for it"
                );
            }
            !stale
        });
        if state.running.is_empty() {
            self.after_end(id, k, state, self.now)
        } else {
            self.due(id, k, Some(&state), at, full)
        }
    }

    /// What the due instant `at` becomes while an earlier fire of the job
    /// runs; None when it fires as usual (nothing runs, or `allow`).
    pub(super) fn overlapping(
        &self,
        id: &str,
        k: &Known,
        prev: Option<&FireState>,
        at: DateTime<Utc>,
        full: Option<Arc<Job>>,
    ) -> Option<Item> {
        let p = prev?;
        let latest = p.running.last()?;
        let schedule = k.job.schedule();
        match k.job.overlap() {
            Overlap::Allow => None,
            Overlap::Replace => {
                let (instant, missed) = coalesce(schedule, at, self.now);
                let cause = if missed > 1 || self.late(instant) {
                    Cause::Misfire
                } else {
                    Cause::Schedule
                };
                let extra = Extra {
                    replaces: Some(latest.instant),
                    ..Extra::default()
                };
                Some(self.fire_with(id, k, prev, (at, instant, missed), cause, full, extra))
            }
            Overlap::Queue if p.queued.is_none() => {
                let mut state = p.clone();
                state.job_revision = k.revision;
                state.epoch = self.epoch;
                state.queued = Some(at);
                state.next_instant = self.give_up_at(k, latest.instant);
                Some(track(id, state))
            }
            Overlap::Forbid | Overlap::Queue => {
                let (last, count) = coalesce(schedule, at, self.now);
                let skip = Skip {
                    first: at,
                    last,
                    count,
                    reason: state::OVERLAP,
                };
                let wake = self.give_up_at(k, latest.instant);
                let mut item = self.skip(id, k, prev, skip, wake);
                if let StateWrite::Put(s) = &mut item.state {
                    s.overlap_from = Some(last);
                }
                Some(item)
            }
        }
    }

    /// Applies end notices of the job `id` to its state `prev`.
    pub fn ended(&self, id: &str, k: &Known, prev: &FireState, ends: &[ShardEnd]) -> Ended {
        let mut state = prev.clone();
        let mut changed = false;
        for e in ends {
            if let Some(r) = state.running.iter_mut().find(|r| r.instant == e.instant) {
                changed |= r.end(e.shard, e.succeeded, e.at);
            }
        }
        if !changed {
            return Ended::Nothing;
        }
        state.epoch = self.epoch;
        let (done, running): (Vec<Running>, Vec<Running>) = std::mem::take(&mut state.running)
            .into_iter()
            .partition(Running::done);
        state.running = running;
        let succeeded = done
            .iter()
            .filter(|r| !r.failed)
            .map(|r| Success {
                fire_id: wire::fire_id(id, r.instant),
                at: end_instant(r, self.now),
                depth: r.depth,
            })
            .collect();
        if done.is_empty() || !state.running.is_empty() {
            return Ended::Store {
                item: Box::new(track(id, state)),
                succeeded,
            };
        }
        let end = done
            .iter()
            .map(|r| end_instant(r, self.now))
            .max()
            .unwrap_or(self.now);
        let item = Box::new(self.after_end(id, k, state, end));
        Ended::Store { item, succeeded }
    }

    /// The job's last running fire ended at `end`: the queued instant fires,
    /// the instants slept through are reported, the next instant is set.
    fn after_end(&self, id: &str, k: &Known, mut state: FireState, end: DateTime<Utc>) -> Item {
        let schedule = k.job.schedule();
        let fixed = schedule.fixed_delay().is_some();
        let queued = state.queued.take();
        let from = state.overlap_from.take();
        let asleep = queued.is_some() || from.is_some() || fixed;
        state.job_revision = k.revision;
        // Instants after `after` up to now were slept through.
        let slept = |after: DateTime<Utc>| {
            let (last, count) = walk(schedule, after, 0, MAX_SKIPPED_COUNT, |n| n <= self.now);
            let first = schedule.next_after(after).unwrap_or(last);
            (count > 0).then_some(SkipSpan { first, last, count })
        };
        let next_after_now = |span: Option<SkipSpan>, base: DateTime<Utc>| {
            if fixed {
                schedule.next_after(end)
            } else {
                schedule.next_after(span.map_or(base, |s| s.last).max(self.now))
            }
        };
        match queued {
            Some(q) if !k.job.paused() => {
                let skipped = slept(q);
                let extra = Extra {
                    skipped,
                    // A fixed delay waits for the queued fire's end.
                    next: (!fixed).then(|| next_after_now(skipped, q)),
                    ..Extra::default()
                };
                self.fire_with(id, k, Some(&state), (q, q, 1), Cause::Schedule, None, extra)
            }
            _ => {
                // A queued instant not fired (paused since) is one of those skipped.
                let span = match (from, queued) {
                    (Some(f), _) => slept(f),
                    (None, Some(q)) => slept(q).map(|s| SkipSpan {
                        first: q,
                        count: s.count + 1,
                        ..s
                    }),
                    (None, None) => None,
                };
                let next = if asleep {
                    next_after_now(span, end)
                } else {
                    state.next_instant
                };
                match span {
                    Some(span) => {
                        let skip = Skip {
                            first: span.first,
                            last: span.last,
                            count: span.count,
                            reason: state::OVERLAP,
                        };
                        self.skip(id, k, Some(&state), skip, next)
                    }
                    None => {
                        state.next_instant = next;
                        track(id, state)
                    }
                }
            }
        }
    }

    /// The `on_success` fire of child `id` (definition `k`, state `prev`)
    /// for the parent fire `parent`; None when the child already fired at
    /// or after it (a successor applying the same end), or the chain is
    /// longer than [`MAX_CHAIN`].
    pub fn child(
        &self,
        id: &str,
        k: Option<&Known>,
        prev: Option<&FireState>,
        parent: &Success,
    ) -> Option<Item> {
        let instant = parent.at;
        if prev.and_then(|p| p.last_instant) >= Some(instant) {
            return None;
        }
        if parent.depth >= MAX_CHAIN {
            warn!(
                job = id,
                parent = parent.fire_id,
                "on_success chain longer than {MAX_CHAIN} fires (a cycle?); not fired"
            );
            return None;
        }
        let Some(k) = k else {
            return Some(Item {
                job: id.to_string(),
                state: StateWrite::Stored,
                action: Action::Skip {
                    first: instant,
                    instant,
                    count: 1,
                    reason: state::NO_DEFINITION.to_string(),
                },
            });
        };
        // The child's own instants go on as planned.
        let keep = match prev {
            Some(p) => p.next_instant,
            None => k.job.schedule().next_after(k.written),
        };
        let once = |reason| Skip {
            first: instant,
            last: instant,
            count: 1,
            reason,
        };
        if k.job.paused() {
            return Some(self.skip(id, k, prev, once(state::PAUSED), keep));
        }
        let latest = prev.and_then(|p| p.running.last());
        let fixed = k.job.schedule().fixed_delay().is_some();
        let mut extra = Extra {
            parent: Some(parent.fire_id.clone()),
            depth: parent.depth + 1,
            next: (!fixed).then_some(keep),
            ..Extra::default()
        };
        match (latest, k.job.overlap()) {
            (Some(_), Overlap::Forbid | Overlap::Queue) => {
                return Some(self.skip(id, k, prev, once(state::OVERLAP), keep));
            }
            (Some(r), Overlap::Replace) => extra.replaces = Some(r.instant),
            _ => {}
        }
        let span = (instant, instant, 1);
        Some(self.fire_with(id, k, prev, span, Cause::Parent, None, extra))
    }
}

/// A write of `state` alone.
fn track(id: &str, state: FireState) -> Item {
    Item {
        job: id.to_string(),
        state: StateWrite::Put(state),
        action: Action::Track,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Decided;
    use chrono::TimeZone;
    use jetcron_shared::{Definition, Names};

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, s).unwrap()
    }

    fn known(id: &str, schedule: &str, extra: &str) -> Known {
        let body = format!(
            r#"{{"id":"{id}","schedule":"{schedule}","shards":2,"run":{{"shell":"true"}}{extra}}}"#
        );
        Known {
            job: Arc::new(Definition::decode(body.as_bytes(), None).unwrap()),
            revision: 1,
            written: t(0),
        }
    }

    fn decider(names: &Names, now: DateTime<Utc>) -> Decider<'_> {
        Decider {
            names,
            epoch: 2,
            now,
            misfire_threshold: chrono::Duration::seconds(1),
            give_up: chrono::Duration::days(7),
        }
    }

    fn put(item: &Item) -> &FireState {
        match &item.state {
            StateWrite::Put(s) => s,
            other => panic!("expected a state write, got {other:?}"),
        }
    }

    fn end(instant: DateTime<Utc>, shard: u32, succeeded: bool, at: DateTime<Utc>) -> ShardEnd {
        ShardEnd {
            instant,
            shard,
            succeeded,
            at,
        }
    }

    /// The state after `k` fired at `at`, and the fire's item.
    fn fired(names: &Names, k: &Known, at: DateTime<Utc>) -> (FireState, Item) {
        let item = decider(names, at).due("j", k, None, at, None);
        (put(&item).clone(), item)
    }

    fn store(e: Ended) -> (Item, Vec<Success>) {
        match e {
            Ended::Store { item, succeeded } => (*item, succeeded),
            Ended::Nothing => panic!("expected a state to store"),
        }
    }

    #[test]
    fn a_tracked_fire_runs_until_every_shard_ended_once() {
        let names = Names::default();
        let k = known("j", "* * * * * *", r#","overlap":"forbid""#);
        let (s, _) = fired(&names, &k, t(1));
        assert_eq!(s.running.len(), 1);
        let d = decider(&names, t(2));
        let (item, ok) = store(d.ended("j", &k, &s, &[end(t(1), 0, true, t(2))]));
        let s = put(&item).clone();
        assert!(matches!(item.action, Action::Track));
        assert_eq!((s.running[0].ended.clone(), ok.len()), (vec![0], 0));
        // The same notice again, or one of another fire: nothing.
        assert!(matches!(
            d.ended("j", &k, &s, &[end(t(1), 0, true, t(2))]),
            Ended::Nothing
        ));
        assert!(matches!(
            d.ended("j", &k, &s, &[end(t(0), 1, true, t(2))]),
            Ended::Nothing
        ));
        let (item, ok) = store(d.ended("j", &k, &s, &[end(t(1), 1, true, t(2))]));
        assert!(put(&item).running.is_empty());
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].fire_id, wire::fire_id("j", t(1)));
    }

    #[test]
    fn forbid_skips_once_sleeps_and_reports_the_rest_at_the_end() {
        let names = Names::default();
        let k = known("j", "* * * * * *", r#","overlap":"forbid""#);
        let (s, _) = fired(&names, &k, t(1));
        let item = decider(&names, t(2)).due("j", &k, Some(&s), t(2), None);
        let skipped = put(&item).clone();
        assert!(
            matches!(&item.action, Action::Skip { count: 1, reason, .. } if reason == state::OVERLAP)
        );
        assert_eq!(
            skipped.next_instant,
            Some(t(1) + chrono::Duration::days(7) + chrono::Duration::seconds(1)),
            "asleep while the fire runs, until it would give up on it"
        );
        assert_eq!(skipped.overlap_from, Some(t(2)));
        // Ends at 10:00:07: 3..=7 were slept through, one event for them.
        let d = decider(&names, t(7));
        let ends = [end(t(1), 0, true, t(6)), end(t(1), 1, false, t(7))];
        let (item, ok) = store(d.ended("j", &k, &skipped, &ends));
        assert!(ok.is_empty(), "a shard failed: no success");
        match &item.action {
            Action::Skip {
                first,
                instant,
                count,
                reason,
            } => assert_eq!(
                (*first, *instant, *count, reason.as_str()),
                (t(3), t(7), 5, state::OVERLAP)
            ),
            other => panic!("expected a skip, got {other:?}"),
        }
        let s = put(&item);
        assert_eq!((s.next_instant, s.overlap_from), (Some(t(8)), None));
    }

    #[test]
    fn queue_holds_one_instant_and_fires_it_when_the_fire_ends() {
        let names = Names::default();
        let k = known("j", "* * * * * *", r#","overlap":"queue""#);
        let (s, _) = fired(&names, &k, t(1));
        let item = decider(&names, t(2)).due("j", &k, Some(&s), t(2), None);
        assert!(matches!(item.action, Action::Track));
        let queued = put(&item).clone();
        let wake = Some(t(1) + chrono::Duration::days(7) + chrono::Duration::seconds(1));
        assert_eq!((queued.queued, queued.next_instant), (Some(t(2)), wake));
        let d = decider(&names, t(5));
        let ends = [end(t(1), 0, true, t(4)), end(t(1), 1, true, t(5))];
        let (item, _) = store(d.ended("j", &k, &queued, &ends));
        let Action::Fire(f) = &item.action else {
            panic!("expected the queued fire, got {:?}", item.action);
        };
        assert_eq!(f.instant, t(2));
        let span = f.skipped.expect("3..=5 were skipped");
        assert_eq!((span.first, span.last, span.count), (t(3), t(5), 3));
        let s = put(&item);
        assert_eq!(s.running.len(), 1);
        assert_eq!(s.running[0].instant, t(2));
        assert_eq!((s.queued, s.next_instant), (None, Some(t(6))));
    }

    #[test]
    fn replace_fires_at_once_naming_the_fire_it_replaces() {
        let names = Names::default();
        let k = known("j", "* * * * * *", r#","overlap":"replace""#);
        let (s, _) = fired(&names, &k, t(1));
        let item = decider(&names, t(2)).due("j", &k, Some(&s), t(2), None);
        let Action::Fire(f) = &item.action else {
            panic!("expected a fire, got {:?}", item.action);
        };
        assert_eq!((f.instant, f.replaces), (t(2), Some(t(1))));
        let s = put(&item);
        assert_eq!(
            s.running.len(),
            1,
            "the replaced fire is no longer waited for"
        );
        assert_eq!(s.running[0].instant, t(2));
        let reports = crate::persist::reports(&item, 2, t(2));
        assert!(reports.iter().any(|(e, _)| matches!(
            e,
            wire::EventBody::Replaced { instant, by, .. } if *instant == t(1) && *by == t(2)
        )));
    }

    #[test]
    fn a_fixed_delay_counts_from_the_end_of_the_fire() {
        let names = Names::default();
        let k = known("j", "@after 30s", "");
        assert!(k.job.tracked());
        let (s, _) = fired(&names, &k, t(30));
        assert_eq!(
            s.next_instant,
            Some(t(30) + chrono::Duration::days(7) + chrono::Duration::seconds(30)),
            "waits for the end, or gives up after the work stream's max age"
        );
        let d = decider(&names, t(45));
        let ends = [end(t(30), 0, true, t(40)), end(t(30), 1, false, t(44))];
        let (item, _) = store(d.ended("j", &k, &s, &ends));
        assert_eq!(
            put(&item).next_instant,
            Some(t(44) + chrono::Duration::seconds(30))
        );
    }

    #[test]
    fn children_fire_once_at_the_parents_end_and_chains_stop() {
        let names = Names::default();
        let child = known("c", "@hourly", r#","overlap":"forbid""#);
        let parent = Success {
            fire_id: "p:1".into(),
            at: t(9),
            depth: 0,
        };
        let d = decider(&names, t(10));
        let item = d.child("c", Some(&child), None, &parent).unwrap();
        let Action::Fire(f) = &item.action else {
            panic!("expected a fire, got {:?}", item.action);
        };
        assert_eq!(
            (f.instant, f.cause, f.parent.as_deref()),
            (t(9), Cause::Parent, Some("p:1"))
        );
        let s = put(&item).clone();
        // Its own schedule goes on as planned.
        assert_eq!(s.next_instant, child.job.schedule().next_after(t(0)));
        assert!(matches!(
            s.decision.as_ref().map(|d| &d.what),
            Some(Decided::Fired { parent: Some(p), .. }) if p == "p:1"
        ));
        // The same end applied again (a new leader): already fired.
        assert!(d.child("c", Some(&child), Some(&s), &parent).is_none());
        // A later success while the child still runs: forbidden.
        let later = Success {
            at: t(12),
            ..parent.clone()
        };
        let item = d.child("c", Some(&child), Some(&s), &later).unwrap();
        assert!(matches!(&item.action, Action::Skip { reason, .. } if reason == state::OVERLAP));
        // A missing child is reported; a chain too long is not followed.
        let item = d.child("gone", None, None, &parent).unwrap();
        assert!(
            matches!(&item.action, Action::Skip { reason, .. } if reason == state::NO_DEFINITION)
        );
        let deep = Success {
            depth: MAX_CHAIN,
            ..parent
        };
        assert!(d.child("c", Some(&child), None, &deep).is_none());
    }

    #[test]
    fn a_fire_without_an_end_is_given_up_after_the_work_streams_max_age() {
        let names = Names::default();
        let k = known("j", "* * * * * *", r#","overlap":"forbid""#);
        let (s, _) = fired(&names, &k, t(1));
        let skip = decider(&names, t(2)).due("j", &k, Some(&s), t(2), None);
        let asleep = put(&skip).clone();
        let wake = asleep.next_instant.unwrap();
        // Woken at the end of the wait: the fire is dropped, the instants
        // slept through are reported, and the schedule goes on.
        let d = decider(&names, wake);
        let item = d.due("j", &k, Some(&asleep), wake, None);
        match &item.action {
            Action::Skip { first, count, .. } => {
                assert_eq!(*first, t(3));
                let slept = (wake - t(2)).num_seconds() as u64;
                assert_eq!(
                    *count,
                    slept.min(MAX_SKIPPED_COUNT),
                    "counted up to the cap"
                );
            }
            other => panic!("expected the slept instants reported, got {other:?}"),
        }
        let s = put(&item);
        assert!(s.running.is_empty());
        assert_eq!(s.next_instant, Some(wake + chrono::Duration::seconds(1)));
        // Not stale yet: still waiting.
        let d = decider(&names, wake - chrono::Duration::seconds(2));
        assert!(matches!(
            d.due("j", &k, Some(&asleep), wake, None).action,
            Action::Skip { .. }
        ));
    }
}
