//! Invariant 3: no shard stored from a deposed epoch.
//!
//! Reads: the fences in the work stream (`jetcron.work.fence`, each a
//! [`Fence`](jetcron_shared::wire::Fence) at its stream sequence) and every
//! result's `epoch` and `stream_seq`. A shard message of epoch `e` at
//! sequence `S` was stored from a deposed leader when a fence of a newer
//! epoch precedes it in the stream: the server should have refused it.
//! Reported once per shard message, with the runs that executed it.

use std::collections::BTreeMap;

use jetcron_shared::wire::RunResult;

use super::Violation;
use crate::history::StoredFence;

pub fn nothing_from_deposed_epochs(
    results: &[RunResult],
    fences: &[StoredFence],
) -> Vec<Violation> {
    let mut by_message: BTreeMap<u64, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        if let Some(seq) = r.stream_seq {
            by_message.entry(seq).or_default().push(r);
        }
    }
    let mut fences: Vec<&StoredFence> = fences.iter().collect();
    fences.sort_by_key(|f| f.seq);
    let mut violations = Vec::new();
    for (seq, rs) in by_message {
        let Some(first) = rs.first() else {
            continue;
        };
        let newer = fences
            .iter()
            .take_while(|f| f.seq < seq)
            .find(|f| f.fence.epoch > first.epoch);
        if let Some(fence) = newer {
            violations.push(Violation::DeposedStore {
                job: first.job.clone(),
                instant: first.instant,
                shard: first.shard,
                epoch: first.epoch,
                stream_seq: seq,
                fence_epoch: fence.fence.epoch,
                fence_seq: fence.seq,
                fence_holder: fence.fence.holder.clone(),
                run_ids: rs.iter().map(|r| r.run_id.clone()).collect(),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{result, t};
    use super::*;
    use jetcron_shared::wire::Fence;

    fn fence(seq: u64, epoch: u64) -> StoredFence {
        StoredFence {
            seq,
            fence: Fence {
                epoch,
                holder: format!("scheduler-{epoch}"),
                at: t(0),
            },
        }
    }

    fn stored(seq: u64, epoch: u64, run: &str) -> RunResult {
        let mut r = result("a", t(1), 0, 1, run);
        r.stream_seq = Some(seq);
        r.epoch = epoch;
        r
    }

    #[test]
    fn shards_after_their_own_fence_pass() {
        let fences = [fence(1, 5), fence(20, 9)];
        let rs = [stored(2, 5, "r1"), stored(19, 5, "r2"), stored(21, 9, "r3")];
        assert!(nothing_from_deposed_epochs(&rs, &fences).is_empty());
    }

    #[test]
    fn a_shard_behind_a_newer_fence_is_reported() {
        let fences = [fence(1, 5), fence(20, 9)];
        let rs = [stored(21, 5, "r1"), stored(21, 5, "r2")];
        let v = nothing_from_deposed_epochs(&rs, &fences);
        assert_eq!(v.len(), 1, "{v:?}");
        match &v[0] {
            Violation::DeposedStore {
                epoch,
                stream_seq,
                fence_epoch,
                fence_seq,
                run_ids,
                ..
            } => {
                assert_eq!(
                    (*epoch, *stream_seq, *fence_epoch, *fence_seq),
                    (5, 21, 9, 20)
                );
                assert_eq!(run_ids.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(v[0].to_string().starts_with("[3] deposed epoch: a "));
    }

    #[test]
    fn without_fences_or_sequences_nothing_is_judged() {
        assert!(nothing_from_deposed_epochs(&[stored(5, 1, "r1")], &[]).is_empty());
        let mut r = stored(5, 1, "r1");
        r.stream_seq = None;
        assert!(nothing_from_deposed_epochs(&[r], &[fence(1, 9)]).is_empty());
    }
}
