//! Invariant 4: every due instant is fired or named missed, never both, and
//! nothing is fired that was not due.
//!
//! Reads: each job's schedule and put time; `fired`, `misfired` and
//! `skipped` events; results (a result proves its instant fired even when
//! the `fired` event was lost).
//!
//! - due: the schedule's instants from [`WARMUP`] after the put to
//!   [`MARGIN`] before the schedulers were told to stop;
//! - fired: a `fired` event or a result for the instant;
//! - named missed: inside `first_missed..=last_missed` of a `misfired` event
//!   but not its `fired` instant, or among the `count` instants a `skipped`
//!   event stands for (the latest being its `instant`).
//!
//! A due instant that is neither is lost; one that is both was announced as
//! not run and ran anyway. A fired instant must be an instant of the
//! schedule, after the put, and not dispatched before it came.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::Schedule;
use jetcron_shared::wire::{Event, EventBody, RunResult};

use super::{DueJob, Violation, ts};

/// Due instants are checked from this long after the put (the scheduler
/// reads the definition from its watch, and the put's reply takes a moment).
pub const WARMUP: Duration = Duration::from_secs(3);
/// ... until this long before the schedulers were told to stop.
pub const MARGIN: Duration = Duration::from_secs(2);
/// Most instants enumerated per range, so a bad event cannot make the check spin.
const MAX_INSTANTS: usize = 1_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DueCounts {
    pub due: usize,
    pub fires: usize,
}

pub fn every_due_instant_accounted(
    jobs: &[DueJob],
    events: &[Event],
    results: &[RunResult],
    stopped_at: DateTime<Utc>,
) -> (Vec<Violation>, DueCounts) {
    let mut violations = Vec::new();
    let mut counts = DueCounts::default();
    for job in jobs {
        let (v, c) = one_job(job, events, results, stopped_at);
        violations.extend(v);
        counts.due += c.due;
        counts.fires += c.fires;
    }
    (violations, counts)
}

fn one_job(
    job: &DueJob,
    events: &[Event],
    results: &[RunResult],
    stopped_at: DateTime<Utc>,
) -> (Vec<Violation>, DueCounts) {
    let mut violations = Vec::new();
    let mut fired: BTreeMap<DateTime<Utc>, String> = BTreeMap::new();
    let mut named: BTreeMap<DateTime<Utc>, String> = BTreeMap::new();
    for ev in events.iter().filter(|e| e.job() == Some(job.id.as_str())) {
        match &ev.body {
            EventBody::Fired { instant, epoch, .. } => {
                fired
                    .entry(*instant)
                    .or_insert_with(|| format!("fired event at {} epoch {epoch}", ts(ev.at)));
                if ev.at < *instant {
                    violations.push(Violation::NotDue {
                        job: job.id.clone(),
                        instant: *instant,
                        why: format!("it was dispatched early, at {}", ts(ev.at)),
                    });
                }
            }
            EventBody::Misfired {
                first_missed,
                last_missed,
                fired: in_place,
                epoch,
                ..
            } => {
                for i in instants(&job.schedule, *first_missed, *last_missed) {
                    if Some(i) != *in_place {
                        named.entry(i).or_insert_with(|| {
                            format!(
                                "misfired event at {} epoch {epoch}: {} ..= {}, fired {}",
                                ts(ev.at),
                                ts(*first_missed),
                                ts(*last_missed),
                                in_place.map_or_else(|| "none".to_string(), ts)
                            )
                        });
                    }
                }
            }
            EventBody::Skipped {
                instant,
                reason,
                count,
                ..
            } => {
                let all = instants(&job.schedule, job.put_at, *instant);
                let from = all
                    .len()
                    .saturating_sub(usize::try_from(*count).unwrap_or(usize::MAX));
                for i in &all[from..] {
                    named.entry(*i).or_insert_with(|| {
                        format!(
                            "skipped event at {} ({reason}, {count} up to {})",
                            ts(ev.at),
                            ts(*instant)
                        )
                    });
                }
            }
            _ => {}
        }
    }
    for r in results.iter().filter(|r| r.job == job.id) {
        fired
            .entry(r.instant)
            .or_insert_with(|| format!("result of run {} epoch {}", r.run_id, r.epoch));
    }

    let lo = job.put_at + chrono::Duration::from_std(WARMUP).unwrap_or_default();
    let hi = stopped_at - chrono::Duration::from_std(MARGIN).unwrap_or_default();
    let due = if lo < hi {
        instants(&job.schedule, lo, hi)
    } else {
        Vec::new()
    };
    let mut lost: Vec<DateTime<Utc>> = Vec::new();
    for i in &due {
        if !fired.contains_key(i) && !named.contains_key(i) {
            lost.push(*i);
        } else if !lost.is_empty() {
            violations.push(lost_run(job, &lost, &fired));
            lost.clear();
        }
    }
    if !lost.is_empty() {
        violations.push(lost_run(job, &lost, &fired));
    }

    for (instant, fired_by) in &fired {
        if let Some(named_by) = named.get(instant) {
            violations.push(Violation::FiredAndMissed {
                job: job.id.clone(),
                instant: *instant,
                fired_by: fired_by.clone(),
                named_by: named_by.clone(),
            });
        }
        let on_schedule = job
            .schedule
            .next_after(*instant - chrono::Duration::milliseconds(1));
        if on_schedule != Some(*instant) {
            violations.push(Violation::NotDue {
                job: job.id.clone(),
                instant: *instant,
                why: format!(
                    "it is not an instant of '{}' ({fired_by})",
                    job.schedule.expression()
                ),
            });
        } else if *instant <= job.put_at {
            violations.push(Violation::NotDue {
                job: job.id.clone(),
                instant: *instant,
                why: format!("the job was put only at {} ({fired_by})", ts(job.put_at)),
            });
        }
    }
    let counts = DueCounts {
        due: due.len(),
        fires: fired.len(),
    };
    (violations, counts)
}

fn lost_run(
    job: &DueJob,
    lost: &[DateTime<Utc>],
    fired: &BTreeMap<DateTime<Utc>, String>,
) -> Violation {
    let first = lost[0];
    let last = lost[lost.len() - 1];
    Violation::Lost {
        job: job.id.clone(),
        first,
        last,
        count: lost.len(),
        previous_fired: fired.range(..first).next_back().map(|(t, _)| *t),
        next_fired: fired.range(last..).next().map(|(t, _)| *t),
    }
}

/// The schedule's instants in `from..=to`.
fn instants(schedule: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut cursor = from - chrono::Duration::milliseconds(1);
    while out.len() < MAX_INSTANTS {
        match schedule.next_after(cursor) {
            Some(next) if next <= to => {
                out.push(next);
                cursor = next;
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{fired, result, t, t_ms};
    use super::*;
    use jetcron_shared::Job;

    fn job(schedule: &str) -> DueJob {
        let body = format!(r#"{{"id":"a","schedule":"{schedule}","run":{{"shell":"true"}}}}"#);
        let parsed = Job::decode(body.as_bytes(), None).unwrap();
        DueJob {
            id: "a".into(),
            schedule: parsed.schedule,
            put_at: t_ms(-300),
        }
    }

    fn misfired(first: i64, last: i64, at: i64) -> Event {
        Event {
            at: t(at),
            body: EventBody::Misfired {
                job: "a".into(),
                missed: (last - first + 1) as u64,
                first_missed: t(first),
                last_missed: t(last),
                fired: Some(t(last)),
                epoch: 2,
                policy: Default::default(),
            },
        }
    }

    /// Fires every second 0..20 on time; the schedulers stop at 20.
    fn clean() -> Vec<Event> {
        (0..=20)
            .map(|s| fired("a", t(s), 1, t_ms(s * 1000 + 5)))
            .collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let (v, c) = every_due_instant_accounted(&[job("@every 1s")], &clean(), &[], t(20));
        assert!(v.is_empty(), "{v:?}");
        // Due: 3 s after the put (t(-0.3)) to 2 s before the stop: t(3)..=t(18).
        assert_eq!(c, DueCounts { due: 16, fires: 21 });
    }

    #[test]
    fn lost_instants_are_reported_as_one_run() {
        let events: Vec<Event> =
            clean().into_iter().filter(|e| !matches!(&e.body, EventBody::Fired { instant, .. } if (t(8)..=t(10)).contains(instant))).collect();
        let (v, _) = every_due_instant_accounted(&[job("@every 1s")], &events, &[], t(20));
        assert_eq!(v.len(), 1, "{v:?}");
        match &v[0] {
            Violation::Lost {
                first,
                last,
                count,
                previous_fired,
                next_fired,
                ..
            } => {
                assert_eq!((*first, *last, *count), (t(8), t(10), 3));
                assert_eq!((*previous_fired, *next_fired), (Some(t(7)), Some(t(11))));
            }
            other => panic!("{other:?}"),
        }
        assert!(v[0].to_string().starts_with("[4] lost: a 3 due"));
    }

    #[test]
    fn a_result_or_a_misfire_accounts_for_an_instant() {
        // 8 fired without its event (a result proves it); 9..=11 missed, 11 fired in their place.
        let mut events: Vec<Event> =
            clean().into_iter().filter(|e| !matches!(&e.body, EventBody::Fired { instant, .. } if (t(8)..=t(10)).contains(instant))).collect();
        events.push(misfired(9, 11, 12));
        let results = [result("a", t(8), 0, 1, "r8")];
        let (v, _) = every_due_instant_accounted(&[job("@every 1s")], &events, &results, t(20));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn an_instant_named_missed_and_fired_is_reported() {
        let mut events = clean();
        events.push(misfired(9, 11, 12));
        let (v, _) = every_due_instant_accounted(&[job("@every 1s")], &events, &[], t(20));
        let both: Vec<DateTime<Utc>> = v
            .iter()
            .filter_map(|v| match v {
                Violation::FiredAndMissed { instant, .. } => Some(*instant),
                _ => None,
            })
            .collect();
        assert_eq!(both, [t(9), t(10)], "{v:?}");
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn skipped_events_name_their_instants() {
        let mut events: Vec<Event> =
            clean().into_iter().filter(|e| !matches!(&e.body, EventBody::Fired { instant, .. } if (t(5)..=t(6)).contains(instant))).collect();
        events.push(Event {
            at: t(6),
            body: EventBody::Skipped {
                job: "a".into(),
                instant: t(6),
                reason: "paused".into(),
                count: 2,
            },
        });
        let (v, _) = every_due_instant_accounted(&[job("@every 1s")], &events, &[], t(20));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn fires_that_were_not_due_are_reported() {
        let mut events = clean();
        // Off the 1 s grid, before the put, and ahead of its instant.
        events.push(fired("a", t_ms(4_500), 1, t(5)));
        events.push(fired("a", t(-4), 1, t(0)));
        events.push(fired("a", t(30), 1, t(29)));
        let (v, _) = every_due_instant_accounted(&[job("@every 1s")], &events, &[], t(20));
        let whys: Vec<String> = v
            .iter()
            .filter_map(|v| match v {
                Violation::NotDue { why, .. } => Some(why.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(whys.len(), 3, "{v:?}");
        assert!(whys.iter().any(|w| w.contains("not an instant")));
        assert!(whys.iter().any(|w| w.contains("was put only at")));
        assert!(whys.iter().any(|w| w.contains("dispatched early")));
    }
}
