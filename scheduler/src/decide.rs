//! What the leader decides, apart from any I/O: the next instant of a job,
//! what a due instant becomes, and what a successor redoes of a
//! predecessor's last decision.
//!
//! A due instant fires, or is skipped while the job is paused. A late one
//! (decided more than the misfire threshold after it) goes by the job's
//! `misfire` policy: `fire_once` fires the latest instant due once, standing
//! for every instant missed; `skip` skips every late instant at once;
//! `fire_all` fires the late instants one decision at a time, oldest first,
//! and skips those older than the newest `misfire_limit`. Each decision is
//! one write-ahead state naming what it decided, so a successor redoes
//! exactly it ([`finish`]); a `fire_all` catch-up is a run of ordinary
//! decisions, each planned at once after the one before is stored.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jetcron_shared::job::Misfire;
use jetcron_shared::wire::Cause;
use jetcron_shared::{Definition, Job, Names, Schedule};

use tracing::warn;

use crate::dispatch::{Fire, FireJob};
use crate::persist::{Action, Item, StateWrite};
use crate::state::{self, Decided, Decision, FireState, Running};

mod overlap;
pub use overlap::{Ended, Extra, MAX_CHAIN, MAX_RUNNING, ShardEnd, Success, waits_for_end};

/// Most instants examined when coalescing a misfire, or counting late
/// instants in one decision.
const MAX_COALESCE: u64 = 100_000;

/// A job definition as the engine knows it.
#[derive(Debug, Clone)]
pub struct Known {
    pub job: Arc<Definition>,
    pub revision: u64,
    /// When this revision was written (server time).
    pub written: DateTime<Utc>,
}

/// What the leader of `epoch` decides at `now`.
#[derive(Debug, Clone, Copy)]
pub struct Decider<'a> {
    pub names: &'a Names,
    pub epoch: u64,
    pub now: DateTime<Utc>,
    /// A fire later than this after its instant is a misfire.
    pub misfire_threshold: chrono::Duration,
    /// A tracked fire with no end this long after its instant is given up
    /// (the work stream's max age: its shard messages are gone by then).
    pub give_up: chrono::Duration,
}

/// Instants let pass in one decision.
#[derive(Debug, Clone, Copy)]
struct Skip {
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    count: u64,
    reason: &'static str,
}

impl Decider<'_> {
    /// What `at`, the job's first due instant, becomes: the fire (or skip)
    /// and the state that records it. `full` is the decoded job if at
    /// hand; otherwise the fire decodes it when its messages are made.
    pub fn due(
        &self,
        id: &str,
        k: &Known,
        prev: Option<&FireState>,
        at: DateTime<Utc>,
        full: Option<Arc<Job>>,
    ) -> Item {
        let schedule = k.job.schedule();
        if k.job.paused() {
            // One skip per pause (or per change while paused), then no
            // timer until the definition changes: a paused job costs no
            // write and no event per instant. `job.resume` counts the
            // instants that passed since ([`skipped_since`]).
            let (last, count) = coalesce(schedule, at, self.now);
            let skip = Skip {
                first: at,
                last,
                count,
                reason: state::PAUSED,
            };
            return self.skip(id, k, prev, skip, None);
        }
        if let Some(p) = prev
            && p.running.iter().any(|r| self.stale(r))
        {
            return self.give_up(id, k, p, at, full);
        }
        if let Some(item) = self.overlapping(id, k, prev, at, full.clone()) {
            return item;
        }
        match k.job.misfire() {
            Misfire::FireOnce => {
                let (instant, missed) = coalesce(schedule, at, self.now);
                let cause = if missed > 1 || self.late(instant) {
                    Cause::Misfire
                } else {
                    Cause::Schedule
                };
                self.fire(id, k, prev, (at, instant, missed), cause, full)
            }
            Misfire::Skip if self.late(at) => {
                let (last, count) = late_run(schedule, at, self.late_before());
                let skip = Skip {
                    first: at,
                    last,
                    count,
                    reason: state::MISFIRE,
                };
                self.skip(id, k, prev, skip, schedule.next_after(last))
            }
            Misfire::FireAll if self.late(at) => {
                let limit = u64::from(k.job.misfire_limit());
                match beyond_limit(schedule, at, self.late_before(), limit) {
                    Some((last, count)) => {
                        let skip = Skip {
                            first: at,
                            last,
                            count,
                            reason: state::MISFIRE_LIMIT,
                        };
                        self.skip(id, k, prev, skip, schedule.next_after(last))
                    }
                    None => self.fire(id, k, prev, (at, at, 1), Cause::Misfire, full),
                }
            }
            // On time: each instant fires as itself.
            Misfire::Skip | Misfire::FireAll => {
                self.fire(id, k, prev, (at, at, 1), Cause::Schedule, full)
            }
        }
    }

    /// Instants before this are late.
    fn late_before(&self) -> DateTime<Utc> {
        self.now - self.misfire_threshold
    }

    fn late(&self, instant: DateTime<Utc>) -> bool {
        instant < self.late_before()
    }

    /// A fire of `instant` standing for `missed` instants from `first`
    /// (`span` is first, instant, missed), and the state recording it.
    fn fire(
        &self,
        id: &str,
        k: &Known,
        prev: Option<&FireState>,
        span: (DateTime<Utc>, DateTime<Utc>, u64),
        cause: Cause,
        full: Option<Arc<Job>>,
    ) -> Item {
        self.fire_with(id, k, prev, span, cause, full, Extra::default())
    }

    /// [`Decider::fire`] with what overlap, a queue or a parent adds.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fire_with(
        &self,
        id: &str,
        k: &Known,
        prev: Option<&FireState>,
        span: (DateTime<Utc>, DateTime<Utc>, u64),
        cause: Cause,
        full: Option<Arc<Job>>,
        extra: Extra,
    ) -> Item {
        let (first_missed, instant, missed) = span;
        let fires = prev.map_or(0, |s| s.fires);
        // History is a ring of slots per job: fire n goes to slot n % history.
        let slot = fires % u64::from(k.job.history());
        let record = Some(self.names.run_fire_key(id, &format!("s{slot}")));
        let schedule = k.job.schedule();
        let tracked = k.job.tracked();
        let mut running = prev.map(|p| p.running.clone()).unwrap_or_default();
        if tracked {
            if extra.replaces.is_some() {
                running.clear();
            }
            running.push(Running::new(
                instant,
                k.job.shard_count(),
                extra.parent.clone(),
                extra.depth,
            ));
            if running.len() > MAX_RUNNING {
                let dropped = running.remove(0);
                warn!(job = id, instant = %dropped.instant, "more than {MAX_RUNNING} fires running at once; no longer waiting for the oldest");
            }
        } else {
            running.clear();
        }
        // A fixed delay counts from the end of the fire, not known yet:
        // it sleeps until then, or until it gives up waiting.
        let next_instant = match extra.next {
            Some(next) => next,
            None if tracked && schedule.fixed_delay().is_some() => self.give_up_at(k, instant),
            None => schedule.next_after(instant),
        };
        let state = FireState {
            job_revision: k.revision,
            next_instant,
            last_instant: Some(instant),
            last_fired_at: Some(self.now),
            epoch: self.epoch,
            fires: fires + 1,
            paused_skipped: 0,
            decision: Some(Decision {
                at: self.now,
                what: Decided::Fired {
                    instant,
                    cause,
                    missed,
                    first_missed,
                    record: record.clone(),
                    replaces: extra.replaces,
                    parent: extra.parent.clone(),
                    skipped: extra.skipped,
                },
            }),
            running,
            queued: None,
            overlap_from: None,
        };
        let fire = Fire {
            job: match full {
                Some(job) => FireJob::full(job),
                None => FireJob::stored(k.job.clone()),
            },
            revision: k.revision,
            instant,
            cause,
            missed,
            first_missed,
            shards: None,
            payload: None,
            record,
            replaces: extra.replaces,
            parent: extra.parent,
            skipped: extra.skipped,
        };
        Item {
            job: id.to_string(),
            state: StateWrite::Put(state),
            action: Action::Fire(fire),
        }
    }

    /// A skip, the state recording it, and the job's next instant after
    /// it (None: not woken until the definition changes).
    fn skip(
        &self,
        id: &str,
        k: &Known,
        prev: Option<&FireState>,
        skip: Skip,
        next: Option<DateTime<Utc>>,
    ) -> Item {
        let paused_skipped = if skip.reason == state::PAUSED {
            prev.map_or(0, |p| p.paused_skipped) + skip.count
        } else {
            0
        };
        let state = FireState {
            job_revision: k.revision,
            next_instant: next,
            last_instant: prev.and_then(|p| p.last_instant),
            last_fired_at: prev.and_then(|p| p.last_fired_at),
            epoch: self.epoch,
            fires: prev.map_or(0, |p| p.fires),
            paused_skipped,
            decision: Some(Decision {
                at: self.now,
                what: Decided::Skipped {
                    instant: skip.last,
                    count: skip.count,
                    reason: skip.reason.to_string(),
                    first: Some(skip.first),
                },
            }),
            running: prev.map(|p| p.running.clone()).unwrap_or_default(),
            queued: prev.and_then(|p| p.queued),
            overlap_from: prev.and_then(|p| p.overlap_from),
        };
        Item {
            job: id.to_string(),
            state: StateWrite::Put(state),
            action: Action::Skip {
                first: skip.first,
                instant: skip.last,
                count: skip.count,
                reason: skip.reason.to_string(),
            },
        }
    }
}

/// A predecessor's last decision, to be stored again in full.
#[derive(Debug)]
pub struct Redo {
    /// When it was decided.
    pub at: DateTime<Utc>,
    pub item: Item,
}

/// What to redo of `state`'s decision; None when there is none, or the
/// definition changed since (its shards would not be the same).
pub fn finish(k: &Known, state: &FireState) -> Option<Redo> {
    let d = state.decision.as_ref()?;
    if k.revision != state.job_revision {
        return None;
    }
    let action = match &d.what {
        Decided::Fired {
            instant,
            cause,
            missed,
            first_missed,
            record,
            replaces,
            parent,
            skipped,
        } => Action::Fire(Fire {
            job: FireJob::stored(k.job.clone()),
            revision: k.revision,
            instant: *instant,
            cause: *cause,
            missed: *missed,
            first_missed: *first_missed,
            shards: None,
            payload: None,
            record: record.clone(),
            replaces: *replaces,
            parent: parent.clone(),
            skipped: *skipped,
        }),
        Decided::Skipped {
            instant,
            count,
            reason,
            first,
        } => Action::Skip {
            first: first.unwrap_or(*instant),
            instant: *instant,
            count: *count,
            reason: reason.clone(),
        },
    };
    Some(Redo {
        at: d.at,
        item: Item {
            job: k.job.id().to_string(),
            state: StateWrite::Stored,
            action,
        },
    })
}

/// The next instant of a job given its stored state.
pub fn next_instant(k: &Known, state: Option<&FireState>) -> Option<DateTime<Utc>> {
    match state {
        // Same definition: continue exactly where the last leader stopped.
        Some(s) if s.job_revision == k.revision => s.next_instant,
        // Asleep until a running fire ends: a fixed delay counts from its
        // end, and a forbidden or queued instant waits for it.
        Some(s) if waits_for_end(k, s) => None,
        // Changed definition: from the change on, never before the last fire.
        Some(s) => {
            let base = s.last_instant.map_or(k.written, |l| l.max(k.written));
            k.job.schedule().next_after(base)
        }
        None => k.job.schedule().next_after(k.written),
    }
}

/// Most instants [`skipped_since`] counts.
pub const MAX_SKIPPED_COUNT: u64 = 100_000;

/// Instants of a paused job skipped in all by `now`: those its state
/// counted, and those after its last skipped instant (it is not woken for
/// them), counting at most [`MAX_SKIPPED_COUNT`].
pub fn skipped_since(schedule: &Schedule, state: &FireState, now: DateTime<Utc>) -> u64 {
    let Some(Decision {
        what: Decided::Skipped {
            instant, reason, ..
        },
        ..
    }) = &state.decision
    else {
        return state.paused_skipped;
    };
    // A misfire skip is followed by more decisions: nothing after it was
    // skipped for a pause.
    if reason != state::PAUSED {
        return state.paused_skipped;
    }
    walk(
        schedule,
        *instant,
        state.paused_skipped,
        MAX_SKIPPED_COUNT,
        |n| n <= now,
    )
    .1
}

/// From `from`, already counted in `count`, the instants after it while
/// `within` holds them, until `count` reaches `cap`: the last one reached
/// and the count.
fn walk(
    schedule: &Schedule,
    from: DateTime<Utc>,
    mut count: u64,
    cap: u64,
    within: impl Fn(DateTime<Utc>) -> bool,
) -> (DateTime<Utc>, u64) {
    let mut last = from;
    while count < cap {
        match schedule.next_after(last) {
            Some(n) if within(n) => {
                last = n;
                count += 1;
            }
            _ => break,
        }
    }
    (last, count)
}

/// From the first due instant `at`, the latest instant due by `now` and how
/// many instants that fire stands for.
pub fn coalesce(
    schedule: &Schedule,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, u64) {
    walk(schedule, at, 1, MAX_COALESCE, |n| n <= now)
}

/// From `at`, itself late, the run of instants before `late_before`: its
/// last instant and length, counting at most [`MAX_COALESCE`] (the next
/// decision goes on from there).
pub fn late_run(
    schedule: &Schedule,
    at: DateTime<Utc>,
    late_before: DateTime<Utc>,
) -> (DateTime<Utc>, u64) {
    walk(schedule, at, 1, MAX_COALESCE, |n| n < late_before)
}

/// Of the run of late instants from `at` (see [`late_run`]), those older
/// than the newest `limit`, as (last, count); None when the run is no
/// longer than `limit`. The newest fire; the stale ones matter least.
///
/// A trailing cursor `limit` instants behind the walk marks the last one
/// beyond the limit, so one pass with no buffer finds it. A run within the
/// limit is walked to its end, no more than `limit` instants: a catch-up
/// in progress costs at most that per decision.
pub fn beyond_limit(
    schedule: &Schedule,
    at: DateTime<Utc>,
    late_before: DateTime<Utc>,
    limit: u64,
) -> Option<(DateTime<Utc>, u64)> {
    let limit = limit.max(1);
    let mut cursor = at;
    let mut count = 1;
    let mut beyond: Option<DateTime<Utc>> = None;
    while count < MAX_COALESCE {
        match schedule.next_after(cursor) {
            Some(n) if n < late_before => {
                cursor = n;
                count += 1;
            }
            _ => break,
        }
        if count > limit {
            // The (count - limit)th instant of the run.
            beyond = match beyond {
                None => Some(at),
                Some(b) => Some(schedule.next_after(b)?),
            };
        }
    }
    beyond.map(|last| (last, count - limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn known(schedule: &str, revision: u64, written: DateTime<Utc>) -> Known {
        let body = format!(r#"{{"id":"j","schedule":"{schedule}","run":{{"shell":"true"}}}}"#);
        Known {
            job: Arc::new(Definition::decode(body.as_bytes(), None).unwrap()),
            revision,
            written,
        }
    }

    fn full(k: &Known) -> Option<Arc<Job>> {
        Some(Arc::new(k.job.job().unwrap()))
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
            decision: None,
            running: Vec::new(),
            queued: None,
            overlap_from: None,
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

    fn known_paused(schedule: &str, paused: bool) -> Known {
        let body = format!(
            r#"{{"id":"j","schedule":"{schedule}","shards":2,"paused":{paused},"run":{{"shell":"true"}}}}"#
        );
        Known {
            job: Arc::new(Definition::decode(body.as_bytes(), None).unwrap()),
            revision: 4,
            written: t(9, 0, 0),
        }
    }

    #[test]
    fn a_late_instant_becomes_one_misfire_recorded_before_its_effects() {
        let k = known_paused("* * * * * *", false);
        let names = Names::default();
        let prev = state(4, Some(t(10, 0, 0)), Some(t(10, 0, 1)));
        let late = Decider {
            names: &names,
            epoch: 9,
            now: t(10, 0, 4),
            misfire_threshold: chrono::Duration::seconds(1),
            give_up: chrono::Duration::days(7),
        };
        let item = late.due("j", &k, Some(&prev), t(10, 0, 1), full(&k));
        let StateWrite::Put(s) = &item.state else {
            panic!("no state write: {item:?}");
        };
        let Action::Fire(f) = &item.action else {
            panic!("not a fire: {item:?}");
        };
        assert_eq!(
            (f.instant, f.missed, f.cause),
            (t(10, 0, 4), 4, Cause::Misfire)
        );
        assert_eq!(f.first_missed, t(10, 0, 1));
        assert_eq!(s.next_instant, Some(t(10, 0, 5)));
        assert_eq!(
            (s.last_instant, s.fires, s.epoch),
            (Some(t(10, 0, 4)), 2, 9)
        );
        assert_eq!(f.record.as_deref(), Some("j.s1"));
        // fire_once, the default: a misfired event names what it stands for.
        let events = crate::persist::reports(&item, 9, late.now);
        assert_eq!(
            events[0],
            (
                jetcron_shared::wire::EventBody::Misfired {
                    job: "j".into(),
                    missed: 4,
                    first_missed: t(10, 0, 1),
                    last_missed: t(10, 0, 4),
                    fired: Some(t(10, 0, 4)),
                    epoch: 9,
                    policy: Misfire::FireOnce,
                },
                format!("misfired:{}", fire_id(t(10, 0, 4)))
            )
        );
        assert_eq!(events.len(), 2, "and its fired event: {events:?}");
        // The state names the decision, so a successor can redo it exactly.
        let redo = finish(&k, s).unwrap();
        let Action::Fire(again) = redo.item.action else {
            panic!("redo is not a fire");
        };
        assert!(matches!(redo.item.state, StateWrite::Stored));
        assert_eq!(
            (again.instant, again.missed, again.cause, again.record),
            (f.instant, f.missed, f.cause, f.record.clone())
        );
        // On time: a plain scheduled fire.
        let on_time = Decider {
            now: t(10, 0, 1),
            ..late
        };
        let item = on_time.due("j", &k, Some(&prev), t(10, 0, 1), full(&k));
        let Action::Fire(f) = item.action else {
            panic!("not a fire");
        };
        assert_eq!((f.missed, f.cause), (1, Cause::Schedule));
    }

    #[test]
    fn a_paused_job_skips_and_counts_and_a_changed_one_is_not_redone() {
        let k = known_paused("* * * * * *", true);
        let names = Names::default();
        let prev = state(4, Some(t(10, 0, 0)), Some(t(10, 0, 1)));
        let decider = Decider {
            names: &names,
            epoch: 9,
            now: t(10, 0, 2),
            misfire_threshold: chrono::Duration::seconds(1),
            give_up: chrono::Duration::days(7),
        };
        // A paused job needs no full definition to skip.
        let item = decider.due("j", &k, Some(&prev), t(10, 0, 1), None);
        let StateWrite::Put(s) = &item.state else {
            panic!("no state write");
        };
        assert!(
            matches!(item.action, Action::Skip { count: 2, .. }),
            "{item:?}"
        );
        assert!(
            matches!(
                &crate::persist::reports(&item, 9, decider.now)[..],
                [(jetcron_shared::wire::EventBody::Skipped { reason, count: 2, .. }, _)]
                    if reason == "paused"
            ),
            "a pause is reported as skipped"
        );
        assert_eq!(
            (s.paused_skipped, s.fires, s.last_instant),
            (2, 1, Some(t(10, 0, 0)))
        );
        assert_eq!(s.next_instant, None, "not woken again while paused");
        // Resumed later: the instants after the last skip count too.
        assert_eq!(skipped_since(k.job.schedule(), s, t(10, 0, 2)), 2);
        assert_eq!(skipped_since(k.job.schedule(), s, t(10, 0, 9)), 9);
        assert_eq!(skipped_since(k.job.schedule(), &prev, t(10, 0, 9)), 0);
        assert_eq!(
            skipped_since(k.job.schedule(), s, t(12, 0, 0)),
            2 + 2 * 3600 - 2,
        );
        assert!(finish(&k, s).is_some());
        let changed = Known {
            revision: 5,
            ..k.clone()
        };
        assert!(finish(&changed, s).is_none());
        assert!(
            finish(&k, &prev).is_none(),
            "no decision recorded, nothing to redo"
        );
    }

    fn known_misfire(extra: &str) -> Known {
        let body =
            format!(r#"{{"id":"j","schedule":"* * * * * *","run":{{"shell":"true"}}{extra}}}"#);
        Known {
            job: Arc::new(Definition::decode(body.as_bytes(), None).unwrap()),
            revision: 4,
            written: t(9, 0, 0),
        }
    }

    /// The leader of epoch 9 deciding at `now`, threshold 1 s.
    fn decider_at(names: &Names, now: DateTime<Utc>) -> Decider<'_> {
        Decider {
            names,
            epoch: 9,
            now,
            misfire_threshold: chrono::Duration::seconds(1),
            give_up: chrono::Duration::days(7),
        }
    }

    fn ms(at: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
        at + chrono::Duration::milliseconds(ms)
    }

    /// What the engine does from `state`: decide the due instant, store the
    /// state, plan the next instant at once, until nothing is due at the
    /// decider's `now`. Returns the items and the last state.
    fn catch_up(d: &Decider, k: &Known, mut state: FireState) -> (Vec<Item>, FireState) {
        let mut items = Vec::new();
        while let Some(at) = next_instant(k, Some(&state)).filter(|at| *at <= d.now) {
            let item = d.due("j", k, Some(&state), at, None);
            let StateWrite::Put(s) = &item.state else {
                panic!("no state write: {item:?}");
            };
            state = s.clone();
            items.push(item);
            assert!(items.len() < 1000, "never caught up");
        }
        (items, state)
    }

    /// The instant, cause and missed count of each fire, in order.
    fn fires(items: &[Item]) -> Vec<(DateTime<Utc>, Cause, u64)> {
        items
            .iter()
            .filter_map(|i| match &i.action {
                Action::Fire(f) => Some((f.instant, f.cause, f.missed)),
                _ => None,
            })
            .collect()
    }

    /// The first, last, count and reason of each skip, in order.
    fn skips(items: &[Item]) -> Vec<(DateTime<Utc>, DateTime<Utc>, u64, String)> {
        items
            .iter()
            .filter_map(|i| match &i.action {
                Action::Skip {
                    first,
                    instant,
                    count,
                    reason,
                } => Some((*first, *instant, *count, reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn decision(item: &Item) -> &Decided {
        let StateWrite::Put(s) = &item.state else {
            panic!("no state write: {item:?}");
        };
        &s.decision.as_ref().expect("a decision").what
    }

    fn fire_id(instant: DateTime<Utc>) -> String {
        jetcron_shared::wire::fire_id("j", instant)
    }

    #[test]
    fn skip_lets_every_late_instant_pass_with_one_misfired_event_and_goes_on_on_time() {
        use jetcron_shared::wire::EventBody;
        let k = known_misfire(r#","misfire":"skip""#);
        let names = Names::default();
        let prev = state(4, Some(t(10, 0, 0)), Some(t(10, 0, 1)));
        // Back at 10:00:04.5: 01, 02 and 03 are late; 04 is not (0.5 s).
        let d = decider_at(&names, ms(t(10, 0, 4), 500));
        let item = d.due("j", &k, Some(&prev), t(10, 0, 1), None);
        assert_eq!(
            skips(std::slice::from_ref(&item)),
            [(t(10, 0, 1), t(10, 0, 3), 3, "misfire".to_string())]
        );
        let StateWrite::Put(s) = &item.state else {
            panic!("no state write");
        };
        assert_eq!(
            s.decision.as_ref().unwrap().what,
            Decided::Skipped {
                instant: t(10, 0, 3),
                count: 3,
                reason: "misfire".into(),
                first: Some(t(10, 0, 1)),
            }
        );
        // Nothing dispatched: last instant and fire count stay; next is 04.
        assert_eq!(
            (
                s.next_instant,
                s.last_instant,
                s.fires,
                s.epoch,
                s.paused_skipped
            ),
            (Some(t(10, 0, 4)), Some(t(10, 0, 0)), 1, 9, 0)
        );
        let misfired = EventBody::Misfired {
            job: "j".into(),
            missed: 3,
            first_missed: t(10, 0, 1),
            last_missed: t(10, 0, 3),
            fired: None,
            epoch: 9,
            policy: Misfire::Skip,
        };
        let id = format!("misfired:{}", fire_id(t(10, 0, 3)));
        assert_eq!(
            crate::persist::reports(&item, 9, d.now),
            [(misfired.clone(), id.clone())]
        );
        // Cut off after its state: the successor stores the same event again.
        let redo = finish(&k, s).unwrap();
        assert!(matches!(redo.item.state, StateWrite::Stored));
        assert_eq!(redo.at, d.now);
        assert_eq!(
            crate::persist::reports(&redo.item, 9, d.now),
            [(misfired, id)]
        );
        // Not a pause: resuming counts nothing from it.
        assert_eq!(skipped_since(k.job.schedule(), s, t(10, 1, 0)), 0);

        // The engine plans 04 at once: on time, it fires as scheduled.
        let (items, last) = catch_up(&d, &k, prev.clone());
        assert_eq!(items.len(), 2);
        assert_eq!(fires(&items), [(t(10, 0, 4), Cause::Schedule, 1)]);
        assert_eq!(
            (last.next_instant, last.last_instant, last.fires),
            (Some(t(10, 0, 5)), Some(t(10, 0, 4)), 2)
        );
        // Every instant due is late (threshold 0.5 s, back at 10:00:06.6):
        // all skipped, none fired, the job goes on at its next instant.
        let all_late = Decider {
            misfire_threshold: chrono::Duration::milliseconds(500),
            ..decider_at(&names, ms(t(10, 0, 6), 600))
        };
        let (items, last) = catch_up(&all_late, &k, prev.clone());
        assert_eq!(
            skips(&items),
            [(t(10, 0, 1), t(10, 0, 6), 6, "misfire".to_string())]
        );
        assert!(fires(&items).is_empty());
        assert_eq!(last.next_instant, Some(t(10, 0, 7)));
        // On time, skip changes nothing.
        let on_time = decider_at(&names, ms(t(10, 0, 1), 200));
        let (items, _) = catch_up(&on_time, &k, prev);
        assert_eq!(fires(&items), [(t(10, 0, 1), Cause::Schedule, 1)]);
        assert!(
            crate::persist::reports(&items[0], 9, on_time.now)
                .iter()
                .all(|(e, _)| matches!(e, EventBody::Fired { .. }))
        );
    }

    #[test]
    fn fire_all_fires_each_late_instant_as_its_own_decision_in_order() {
        use jetcron_shared::wire::EventBody;
        let k = known_misfire(r#","misfire":"fire_all","misfire_limit":5"#);
        let names = Names::default();
        let prev = state(4, Some(t(10, 0, 0)), Some(t(10, 0, 1)));
        let d = decider_at(&names, ms(t(10, 0, 4), 500));
        let (items, last) = catch_up(&d, &k, prev.clone());
        assert_eq!(
            fires(&items),
            [
                (t(10, 0, 1), Cause::Misfire, 1),
                (t(10, 0, 2), Cause::Misfire, 1),
                (t(10, 0, 3), Cause::Misfire, 1),
                (t(10, 0, 4), Cause::Schedule, 1),
            ]
        );
        assert!(skips(&items).is_empty());
        assert_eq!(
            (last.next_instant, last.last_instant, last.fires),
            (Some(t(10, 0, 5)), Some(t(10, 0, 4)), 5)
        );
        // Each is recorded as its own decision, with its own history slot.
        for (n, item) in items.iter().enumerate() {
            let Decided::Fired {
                instant,
                missed,
                first_missed,
                record,
                ..
            } = decision(item)
            else {
                panic!("not a fire: {item:?}");
            };
            assert_eq!((*missed, first_missed), (1, instant));
            assert_eq!(record.as_deref(), Some(format!("j.s{}", n + 1).as_str()));
        }
        // Each has its own shard message id; a late one is told by its
        // fired event's cause, with no misfired event: it fired as itself.
        let mut ids = std::collections::HashSet::new();
        for item in &items {
            let Action::Fire(f) = &item.action else {
                panic!("not a fire");
            };
            for m in f.messages(9).unwrap() {
                assert!(ids.insert(m.msg_id()), "{} twice", m.msg_id());
            }
            let events = crate::persist::reports(item, 9, d.now);
            assert_eq!(events.len(), 1, "{events:?}");
            let (EventBody::Fired { instant, cause, .. }, id) = &events[0] else {
                panic!("not a fired event: {events:?}");
            };
            assert_eq!((*instant, *cause), (f.instant, f.cause));
            assert_eq!(*id, format!("fired:{}", fire_id(f.instant)));
        }
        assert_eq!(ids.len(), 4);

        // Cut off after the state of 02: the successor redoes 02 exactly,
        // then goes on from 03 at its own now.
        let StateWrite::Put(s2) = &items[1].state else {
            panic!("no state write");
        };
        let redo = finish(&k, s2).unwrap();
        let Action::Fire(again) = &redo.item.action else {
            panic!("redo is not a fire");
        };
        assert_eq!(
            (
                again.instant,
                again.cause,
                again.missed,
                again.record.as_deref()
            ),
            (t(10, 0, 2), Cause::Misfire, 1, Some("j.s2"))
        );
        assert_eq!(
            crate::persist::reports(&redo.item, 9, d.now),
            crate::persist::reports(&items[1], 9, d.now)
        );
        let successor = decider_at(&names, ms(t(10, 0, 5), 500));
        let (rest, _) = catch_up(&successor, &k, s2.clone());
        assert_eq!(
            fires(&rest),
            [
                (t(10, 0, 3), Cause::Misfire, 1),
                (t(10, 0, 4), Cause::Misfire, 1),
                (t(10, 0, 5), Cause::Schedule, 1),
            ]
        );
    }

    #[test]
    fn fire_all_skips_what_is_older_than_its_newest_limit_with_a_misfired_event() {
        use jetcron_shared::wire::EventBody;
        let k = known_misfire(r#","misfire":"fire_all","misfire_limit":2"#);
        let names = Names::default();
        let prev = state(4, Some(t(10, 0, 0)), Some(t(10, 0, 1)));
        // Back at 10:00:06.5: 01-05 are late, the newest 2 of them fire.
        let d = decider_at(&names, ms(t(10, 0, 6), 500));
        let (items, last) = catch_up(&d, &k, prev.clone());
        assert_eq!(
            skips(&items),
            [(t(10, 0, 1), t(10, 0, 3), 3, "misfire_limit".to_string())]
        );
        assert_eq!(
            fires(&items),
            [
                (t(10, 0, 4), Cause::Misfire, 1),
                (t(10, 0, 5), Cause::Misfire, 1),
                (t(10, 0, 6), Cause::Schedule, 1),
            ]
        );
        assert_eq!(last.next_instant, Some(t(10, 0, 7)));
        // The skip is decided first, on its own, and recorded.
        assert_eq!(
            *decision(&items[0]),
            Decided::Skipped {
                instant: t(10, 0, 3),
                count: 3,
                reason: "misfire_limit".into(),
                first: Some(t(10, 0, 1)),
            }
        );
        let StateWrite::Put(s) = &items[0].state else {
            panic!("no state write");
        };
        assert_eq!(
            (s.next_instant, s.last_instant, s.fires),
            (Some(t(10, 0, 4)), Some(t(10, 0, 0)), 1)
        );
        let misfired = (
            EventBody::Misfired {
                job: "j".into(),
                missed: 3,
                first_missed: t(10, 0, 1),
                last_missed: t(10, 0, 3),
                fired: None,
                epoch: 9,
                policy: Misfire::FireAll,
            },
            format!("misfired:{}", fire_id(t(10, 0, 3))),
        );
        let redo = finish(&k, s).unwrap();
        for item in [&items[0], &redo.item] {
            assert_eq!(
                crate::persist::reports(item, 9, d.now),
                std::slice::from_ref(&misfired)
            );
        }
        // Every instant from 01 to 06 fired or was named skipped, never both.
        let fired: Vec<_> = fires(&items).into_iter().map(|f| f.0).collect();
        let mut all: Vec<_> = (1..=3).map(|s| t(10, 0, s)).collect();
        all.extend(&fired);
        assert_eq!(all, (1..=6).map(|s| t(10, 0, s)).collect::<Vec<_>>());

        // Falling behind again during a catch-up keeps the bound: from 05,
        // decided at 10:00:09.5, 05-08 are late and only 07 and 08 fire.
        let StateWrite::Put(after_04) = &items[1].state else {
            panic!("no state write");
        };
        let later = decider_at(&names, ms(t(10, 0, 9), 500));
        let (rest, _) = catch_up(&later, &k, after_04.clone());
        assert_eq!(
            skips(&rest),
            [(t(10, 0, 5), t(10, 0, 6), 2, "misfire_limit".to_string())]
        );
        assert_eq!(
            fires(&rest),
            [
                (t(10, 0, 7), Cause::Misfire, 1),
                (t(10, 0, 8), Cause::Misfire, 1),
                (t(10, 0, 9), Cause::Schedule, 1),
            ]
        );
    }

    #[test]
    fn a_long_late_run_is_handled_in_bounded_steps() {
        let every = Schedule::parse("@every 1s", chrono_tz::UTC).unwrap();
        let at = t(0, 0, 0);
        let late_before = at + chrono::Duration::days(3);
        let n = MAX_COALESCE as i64;
        assert_eq!(
            late_run(&every, at, late_before),
            (at + chrono::Duration::seconds(n - 1), MAX_COALESCE)
        );
        // The walk stops at the bound; what is beyond the limit within it is
        // skipped, and the next decision goes on from the instants kept.
        assert_eq!(
            beyond_limit(&every, at, late_before, 3),
            Some((at + chrono::Duration::seconds(n - 4), MAX_COALESCE - 3))
        );
        // Within the limit, or a run of one: nothing beyond it.
        let short = at + chrono::Duration::milliseconds(2500);
        assert_eq!(late_run(&every, at, short), (t(0, 0, 2), 3));
        assert_eq!(beyond_limit(&every, at, short, 3), None);
        assert_eq!(beyond_limit(&every, at, short, 2), Some((at, 1)));
        assert_eq!(beyond_limit(&every, at, short, 1), Some((t(0, 0, 1), 2)));
        assert_eq!(beyond_limit(&every, at, at, 1), None);
    }

    #[test]
    fn a_skip_recorded_without_its_first_instant_is_redone_from_its_last() {
        let k = known_misfire(r#","misfire":"skip""#);
        let mut s = state(4, Some(t(10, 0, 0)), Some(t(10, 0, 4)));
        s.decision = Some(Decision {
            at: t(10, 0, 3),
            what: Decided::Skipped {
                instant: t(10, 0, 3),
                count: 3,
                reason: "misfire".into(),
                first: None,
            },
        });
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("first"), "{json}");
        let Action::Skip { first, instant, .. } = finish(&k, &s).unwrap().item.action else {
            panic!("not a skip");
        };
        assert_eq!((first, instant), (t(10, 0, 3), t(10, 0, 3)));
    }
}
