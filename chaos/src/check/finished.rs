//! Invariant 5: every dispatched shard ends in a final state.
//!
//! Reads: `fired` events and results (which fires happened and with how
//! many shards), every result's status and `will_retry`, and the number of
//! shard messages left in the work stream after the drain. For every fired
//! (job, instant) and each shard `0..shards` there must be a result that
//! succeeded, or that failed or timed out with no retry to follow; and the
//! work stream must end without shard messages.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use jetcron_shared::wire::{Event, EventBody, RunResult, RunStatus};

use super::Violation;

/// Returns the violations and the number of shards checked.
pub fn every_shard_finished(
    events: &[Event],
    results: &[RunResult],
    work_left: u64,
) -> (Vec<Violation>, usize) {
    let mut fires: BTreeMap<(&str, DateTime<Utc>), u32> = BTreeMap::new();
    for ev in events {
        if let EventBody::Fired {
            job,
            instant,
            shards,
            ..
        } = &ev.body
        {
            let n = fires.entry((job.as_str(), *instant)).or_default();
            *n = (*n).max(*shards);
        }
    }
    let mut by_shard: BTreeMap<(&str, DateTime<Utc>, u32), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        let n = fires.entry((r.job.as_str(), r.instant)).or_default();
        *n = (*n).max(r.shards);
        by_shard
            .entry((r.job.as_str(), r.instant, r.shard))
            .or_default()
            .push(r);
    }
    let mut violations = Vec::new();
    let mut checked = 0;
    for ((job, instant), shards) in fires {
        for shard in 0..shards {
            checked += 1;
            let rs = by_shard
                .get(&(job, instant, shard))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let finished = rs
                .iter()
                .any(|r| r.status == RunStatus::Succeeded || !r.will_retry);
            if !finished {
                let mut attempts: Vec<(u32, String, bool)> = rs
                    .iter()
                    .map(|r| (r.attempt, r.status.as_str().to_string(), r.will_retry))
                    .collect();
                attempts.sort();
                violations.push(Violation::Unfinished {
                    job: job.to_string(),
                    instant,
                    shard,
                    attempts,
                });
            }
        }
    }
    if work_left > 0 {
        violations.push(Violation::WorkLeft { count: work_left });
    }
    (violations, checked)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{fired, result, t};
    use super::*;

    fn failed(r: RunResult, will_retry: bool) -> RunResult {
        RunResult {
            status: RunStatus::Failed,
            will_retry,
            ..r
        }
    }

    #[test]
    fn succeeded_and_dead_shards_pass() {
        let events = [fired("a", t(1), 2, t(1))];
        let results = [
            result("a", t(1), 0, 1, "r1"),
            failed(result("a", t(1), 1, 1, "r2"), true),
            failed(result("a", t(1), 1, 2, "r3"), false),
        ];
        let (v, n) = every_shard_finished(&events, &results, 0);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(n, 2);
    }

    #[test]
    fn a_shard_without_result_or_still_retrying_is_reported() {
        let events = [fired("a", t(1), 3, t(1))];
        let results = [
            result("a", t(1), 0, 1, "r1"),
            failed(result("a", t(1), 2, 1, "r2"), true),
        ];
        let (v, n) = every_shard_finished(&events, &results, 0);
        assert_eq!(n, 3);
        let shards: Vec<u32> = v
            .iter()
            .filter_map(|v| match v {
                Violation::Unfinished { shard, .. } => Some(*shard),
                _ => None,
            })
            .collect();
        assert_eq!(shards, [1, 2], "{v:?}");
        assert!(v[1].to_string().contains("(1, failed, true)"), "{}", v[1]);
    }

    #[test]
    fn a_fire_known_only_from_a_result_counts_its_shards() {
        let mut r = result("a", t(1), 0, 1, "r1");
        r.shards = 2;
        let (v, n) = every_shard_finished(&[], &[r], 0);
        assert_eq!(n, 2);
        assert!(
            matches!(&v[..], [Violation::Unfinished { shard: 1, .. }]),
            "{v:?}"
        );
    }

    #[test]
    fn leftover_shard_messages_are_reported() {
        let (v, _) = every_shard_finished(&[], &[], 4);
        assert_eq!(v, [Violation::WorkLeft { count: 4 }]);
        assert!(v[0].to_string().starts_with("[5] "));
    }
}
