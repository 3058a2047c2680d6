//! What the leader decides, apart from any I/O: the next instant of a job,
//! what a due instant becomes (a fire, a late fire standing for several
//! missed instants, or a skip while paused), and what a successor redoes of
//! a predecessor's last decision.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jetcron_shared::wire::Cause;
use jetcron_shared::{Definition, Job, Names, Schedule};

use crate::dispatch::{Fire, FireJob};
use crate::persist::{Action, Item, StateWrite};
use crate::state::{Decided, Decision, FireState};

/// Most instants examined when coalescing a misfire.
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
        let (names, now, epoch) = (self.names, self.now, self.epoch);
        let (instant, missed) = coalesce(k.job.schedule(), at, now);
        let next = k.job.schedule().next_after(instant);
        if k.job.paused() {
            // One skip per pause (or per change while paused), then no
            // timer until the definition changes: a paused job costs no
            // write and no event per instant. `job.resume` counts the
            // instants that passed since ([`skipped_since`]).
            let reason = "paused".to_string();
            let state = FireState {
                job_revision: k.revision,
                next_instant: None,
                last_instant: prev.and_then(|p| p.last_instant),
                last_fired_at: prev.and_then(|p| p.last_fired_at),
                epoch,
                fires: prev.map_or(0, |p| p.fires),
                paused_skipped: prev.map_or(0, |p| p.paused_skipped) + missed,
                decision: Some(Decision {
                    at: now,
                    what: Decided::Skipped {
                        instant,
                        count: missed,
                        reason: reason.clone(),
                    },
                }),
            };
            return Item {
                job: id.to_string(),
                state: StateWrite::Put(state),
                action: Action::Skip {
                    instant,
                    count: missed,
                    reason,
                },
            };
        }

        let cause = if missed > 1 || now - instant > self.misfire_threshold {
            Cause::Misfire
        } else {
            Cause::Schedule
        };
        let fires = prev.map_or(0, |s| s.fires);
        // History is a ring of slots per job: fire n goes to slot n % history.
        let slot = fires % u64::from(k.job.history());
        let record = Some(names.run_fire_key(id, &format!("s{slot}")));
        let state = FireState {
            job_revision: k.revision,
            next_instant: next,
            last_instant: Some(instant),
            last_fired_at: Some(now),
            epoch,
            fires: fires + 1,
            paused_skipped: 0,
            decision: Some(Decision {
                at: now,
                what: Decided::Fired {
                    instant,
                    cause,
                    missed,
                    first_missed: at,
                    record: record.clone(),
                },
            }),
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
            first_missed: at,
            shards: None,
            payload: None,
            record,
        };
        Item {
            job: id.to_string(),
            state: StateWrite::Put(state),
            action: Action::Fire(fire),
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
        }),
        Decided::Skipped {
            instant,
            count,
            reason,
        } => Action::Skip {
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
        what: Decided::Skipped { instant, .. },
        ..
    }) = &state.decision
    else {
        return state.paused_skipped;
    };
    let mut count = state.paused_skipped;
    let mut t = *instant;
    while count < MAX_SKIPPED_COUNT {
        match schedule.next_after(t) {
            Some(n) if n <= now => {
                t = n;
                count += 1;
            }
            _ => break,
        }
    }
    count
}

/// From the first due instant `at`, the latest instant due by `now` and how
/// many instants that fire stands for.
pub fn coalesce(
    schedule: &Schedule,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, u64) {
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
}
