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

use super::{Violation, ts};
use crate::history::WorkLeft;

/// Returns the violations and the number of shards checked.
pub fn every_shard_finished(
    events: &[Event],
    results: &[RunResult],
    left: &WorkLeft,
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
    if left.count > 0 {
        let final_result = |job: &str, instant: DateTime<Utc>, shard: u32| {
            by_shard.get(&(job, instant, shard)).is_some_and(|rs| {
                rs.iter()
                    .any(|r| r.status == RunStatus::Succeeded || !r.will_retry)
            })
        };
        let messages = left
            .messages
            .iter()
            .map(|m| match &m.shard {
                Some(sm) => format!(
                    "seq {} {} {} shard {} epoch {} ({})",
                    m.seq,
                    sm.job,
                    ts(sm.instant),
                    sm.shard,
                    sm.epoch,
                    if final_result(&sm.job, sm.instant, sm.shard) {
                        "its final result is stored"
                    } else {
                        "no final result"
                    }
                ),
                None => format!("seq {} on {}: not a shard message", m.seq, m.subject),
            })
            .collect();
        violations.push(Violation::WorkLeft {
            count: left.count,
            messages,
            consumers: left.consumers.clone(),
        });
    }
    (violations, checked)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{fired, result, t};
    use super::*;
    use crate::history::Leftover;

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
        let (v, n) = every_shard_finished(&events, &results, &WorkLeft::default());
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
        let (v, n) = every_shard_finished(&events, &results, &WorkLeft::default());
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
        let (v, n) = every_shard_finished(&[], &[r], &WorkLeft::default());
        assert_eq!(n, 2);
        assert!(
            matches!(&v[..], [Violation::Unfinished { shard: 1, .. }]),
            "{v:?}"
        );
    }

    #[test]
    fn leftover_shard_messages_are_reported_with_what_became_of_them() {
        let job = jetcron_shared::Job::decode(
            br#"{"id":"a","schedule":"@every 1s","run":{"shell":"true"}}"#,
            None,
        )
        .unwrap();
        let sm = jetcron_shared::wire::ShardMessage::new(
            &job,
            t(1),
            0,
            7,
            jetcron_shared::wire::Cause::Schedule,
        );
        let left = WorkLeft {
            count: 4,
            messages: vec![Leftover {
                seq: 12,
                subject: "jetcron.work.default.a".into(),
                shard: Some(sm),
            }],
            consumers: vec!["jetcron-default: ack floor stream seq 40".into()],
        };
        let (v, _) = every_shard_finished(&[], &[result("a", t(1), 0, 1, "r1")], &left);
        assert_eq!(v.len(), 1, "{v:?}");
        let text = v[0].to_string();
        assert!(text.starts_with("[5] work stream still holds 4"), "{text}");
        assert!(text.contains("seq 12 a "), "{text}");
        assert!(text.contains("its final result is stored"), "{text}");
        assert!(text.contains("ack floor stream seq 40"), "{text}");
    }
}
