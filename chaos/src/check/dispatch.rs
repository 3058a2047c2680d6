//! Invariant 1: no (job, instant, shard) dispatched twice.
//!
//! Reads: every result's `stream_seq`, the work stream sequence of the shard
//! message it ran. All attempts of one dispatched shard run the same message,
//! so all results of one (job, instant, shard) must name one sequence; a
//! second sequence is a second message for the same shard. Results without a
//! sequence cannot be judged here and are counted instead.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use jetcron_shared::wire::RunResult;

use super::Violation;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchCounts {
    /// (job, instant, shard) with at least one sequence.
    pub checked: usize,
    pub without_seq: usize,
}

pub fn once_per_shard(results: &[RunResult]) -> (Vec<Violation>, DispatchCounts) {
    let mut counts = DispatchCounts::default();
    let mut by_shard: BTreeMap<(&str, DateTime<Utc>, u32), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        if r.stream_seq.is_none() {
            counts.without_seq += 1;
            continue;
        }
        by_shard
            .entry((r.job.as_str(), r.instant, r.shard))
            .or_default()
            .push(r);
    }
    let mut violations = Vec::new();
    for ((job, instant, shard), rs) in by_shard {
        counts.checked += 1;
        let seqs: BTreeSet<u64> = rs.iter().filter_map(|r| r.stream_seq).collect();
        if seqs.len() > 1 {
            violations.push(Violation::DoubleDispatch {
                job: job.to_string(),
                instant,
                shard,
                results: rs
                    .iter()
                    .map(|r| {
                        (
                            r.stream_seq.unwrap_or(0),
                            r.epoch,
                            r.attempt,
                            r.run_id.clone(),
                        )
                    })
                    .collect(),
            });
        }
    }
    (violations, counts)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{result, t};
    use super::*;

    fn with_seq(mut r: RunResult, seq: u64) -> RunResult {
        r.stream_seq = Some(seq);
        r
    }

    #[test]
    fn retries_of_one_message_pass() {
        let rs = vec![
            with_seq(result("a", t(1), 0, 1, "r1"), 10),
            with_seq(result("a", t(1), 0, 2, "r2"), 10),
            with_seq(result("a", t(1), 1, 1, "r3"), 11),
            with_seq(result("a", t(2), 0, 1, "r4"), 12),
        ];
        let (v, c) = once_per_shard(&rs);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(
            c,
            DispatchCounts {
                checked: 3,
                without_seq: 0
            }
        );
    }

    #[test]
    fn two_messages_for_one_shard_are_reported() {
        let rs = vec![
            with_seq(result("a", t(1), 0, 1, "r1"), 10),
            with_seq(result("a", t(1), 0, 1, "r2"), 17),
        ];
        let (v, _) = once_per_shard(&rs);
        assert_eq!(v.len(), 1);
        match &v[0] {
            Violation::DoubleDispatch {
                job,
                shard,
                results,
                ..
            } => {
                assert_eq!((job.as_str(), *shard), ("a", 0));
                let seqs: Vec<u64> = results.iter().map(|r| r.0).collect();
                assert_eq!(seqs, [10, 17]);
            }
            other => panic!("{other:?}"),
        }
        assert!(v[0].to_string().starts_with("[1] dispatched twice: a "));
    }

    #[test]
    fn results_without_a_sequence_are_counted_not_judged() {
        let rs = vec![result("a", t(1), 0, 1, "r1"), result("a", t(1), 0, 1, "r2")];
        let (v, c) = once_per_shard(&rs);
        assert!(v.is_empty());
        assert_eq!(
            c,
            DispatchCounts {
                checked: 0,
                without_seq: 2
            }
        );
    }
}
