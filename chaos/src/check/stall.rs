//! Invariant 6: no fault stalls firing longer than its own outage plus 2 s.
//!
//! Reads: the fault records (start, end of the outage, the outage the kind
//! allows for) and the dispatch times (`at`) of all `fired` events. From a
//! fault's start to [`LOOK_PAST`] after its outage ended (at most to the
//! schedulers' stop), the longest stretch without a fire, counting from the
//! fault's start and up to the window's end, must not exceed the outage plus
//! [`SLACK`] plus one [`TICK`] (the jobs fire every second).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::wire::{Event, EventBody};

use super::Violation;
use crate::faults::FaultRecord;

/// How far past the outage a stall still counts as the fault's.
pub const LOOK_PAST: Duration = Duration::from_secs(10);
/// What a recovery may take beyond the outage itself.
pub const SLACK: Duration = Duration::from_secs(2);
/// The jobs' period: even without faults, fires are up to one tick apart.
pub const TICK: Duration = Duration::from_secs(1);

/// The longest a fault may stall firing.
pub fn allowed(outage: Duration) -> Duration {
    outage + SLACK + TICK
}

pub fn no_long_stall(
    faults: &[FaultRecord],
    events: &[Event],
    stopped_at: DateTime<Utc>,
) -> Vec<Violation> {
    let fired = fired_times(events);
    let mut violations = Vec::new();
    for f in faults {
        let Some((from, to)) = fault_gap(f, &fired, stopped_at) else {
            continue;
        };
        let gap = (to - from).to_std().unwrap_or_default();
        let allowed = allowed(f.outage);
        if gap > allowed {
            violations.push(Violation::Stall {
                fault: f.number,
                kind: f.kind,
                target: f.target.clone(),
                from,
                to,
                gap,
                allowed,
            });
        }
    }
    violations
}

/// The longest stall each fault caused, by fault number (for the report).
pub fn stalls(
    faults: &[FaultRecord],
    events: &[Event],
    stopped_at: DateTime<Utc>,
) -> BTreeMap<usize, Duration> {
    let fired = fired_times(events);
    faults
        .iter()
        .filter_map(|f| {
            let (from, to) = fault_gap(f, &fired, stopped_at)?;
            Some((f.number, (to - from).to_std().unwrap_or_default()))
        })
        .collect()
}

/// Dispatch times of all `fired` events, sorted.
fn fired_times(events: &[Event]) -> Vec<DateTime<Utc>> {
    let mut fired: Vec<DateTime<Utc>> = events
        .iter()
        .filter(|e| matches!(e.body, EventBody::Fired { .. }))
        .map(|e| e.at)
        .collect();
    fired.sort_unstable();
    fired
}

/// The longest gap in the fault's window.
fn fault_gap(
    f: &FaultRecord,
    fired: &[DateTime<Utc>],
    stopped_at: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let end = (f.ended + chrono::Duration::from_std(LOOK_PAST).unwrap_or_default()).min(stopped_at);
    longest_gap(fired, f.start, end)
}

/// The longest stretch in `start..=end` without an element of `sorted`,
/// with `start` and `end` as its outer bounds; `None` for an empty window.
pub fn longest_gap(
    sorted: &[DateTime<Utc>],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if end <= start {
        return None;
    }
    let inside = sorted.iter().copied().filter(|t| *t > start && *t < end);
    let points = std::iter::once(start)
        .chain(inside)
        .chain(std::iter::once(end));
    let mut best: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    let mut previous: Option<DateTime<Utc>> = None;
    for p in points {
        if let Some(prev) = previous
            && best.is_none_or(|(a, b)| p - prev > b - a)
        {
            best = Some((prev, p));
        }
        previous = Some(p);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{fired, t, t_ms};
    use super::*;
    use crate::plan::FaultKind;

    fn fault(start: i64, ended: i64, outage_s: u64) -> FaultRecord {
        FaultRecord {
            number: 1,
            kind: FaultKind::KillLeader,
            target: "scheduler-1".into(),
            start: t(start),
            ended: t(ended),
            outage: Duration::from_secs(outage_s),
            epoch_before: None,
            note: String::new(),
        }
    }

    /// Fires every half second over `0..60` s, except in the gaps given (ms).
    fn fires_except(gaps: &[(i64, i64)]) -> Vec<Event> {
        (0..120)
            .map(|i| i * 500)
            .filter(|ms| !gaps.iter().any(|(a, b)| (*a..*b).contains(ms)))
            .map(|ms| fired("a", t_ms(ms), 1, t_ms(ms)))
            .collect()
    }

    #[test]
    fn a_takeover_within_the_lease_ttl_passes() {
        // Leader killed at 10 s, nothing fires until 15 s: 5 s <= 3 + 2 + 1.
        let events = fires_except(&[(10_001, 15_000)]);
        assert!(no_long_stall(&[fault(10, 14, 3)], &events, t(60)).is_empty());
    }

    #[test]
    fn a_longer_stall_is_reported_with_its_bounds() {
        let events = fires_except(&[(10_001, 18_000)]);
        let v = no_long_stall(&[fault(10, 14, 3)], &events, t(60));
        assert_eq!(v.len(), 1, "{v:?}");
        match &v[0] {
            Violation::Stall {
                from,
                to,
                gap,
                allowed,
                ..
            } => {
                assert_eq!((*from, *to), (t(10), t(18)));
                assert_eq!(*gap, Duration::from_secs(8));
                assert_eq!(*allowed, Duration::from_secs(6));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            v[0].to_string()
                .starts_with("[6] stall: fault #1 kill-leader")
        );
    }

    #[test]
    fn silence_up_to_the_end_of_the_window_counts() {
        // Nothing fires after the fault at all: the gap runs to ended + 10 s.
        let events = fires_except(&[(20_001, 60_000)]);
        let v = no_long_stall(&[fault(20, 22, 0)], &events, t(60));
        assert!(
            matches!(&v[..], [Violation::Stall { to, .. }] if *to == t(32)),
            "{v:?}"
        );
        // ... but never past the schedulers' stop.
        let v = no_long_stall(&[fault(20, 22, 0)], &events, t(21));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn stalls_are_reported_per_fault() {
        let events = fires_except(&[(10_001, 15_000)]);
        let mut second = fault(30, 31, 0);
        second.number = 2;
        let s = stalls(&[fault(10, 14, 3), second], &events, t(60));
        assert_eq!(s.get(&1), Some(&Duration::from_secs(5)));
        assert_eq!(s.get(&2), Some(&Duration::from_millis(500)));
    }

    #[test]
    fn longest_gap_uses_the_window_bounds() {
        let pts = [t(2), t(3), t(9)];
        assert_eq!(longest_gap(&pts, t(0), t(10)), Some((t(3), t(9))));
        assert_eq!(longest_gap(&[], t(0), t(10)), Some((t(0), t(10))));
        assert_eq!(longest_gap(&pts, t(5), t(5)), None);
    }
}
