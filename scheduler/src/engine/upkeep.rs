//! The leader's upkeep beside firing: the checkpoint (up to when all of
//! this term's writes are stored, so a successor redoes as little as
//! possible) and the compaction of fire states out of tick records (see
//! [`crate::state`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Engine;
use crate::fence::FenceError;
use crate::state::{Checkpoint, FireState};

/// Checkpoints are written at most this often.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// How often the leader compacts fire states out of tick records.
const COMPACT_EVERY: Duration = Duration::from_secs(2);
/// A job's state is compacted once its tick record is this old (a job that
/// fires more often never is).
const COMPACT_AFTER: Duration = Duration::from_secs(5);

/// What a compaction stored: jobs and the tick sequence each was compacted from.
pub(super) type Compacted = (u64, Result<Vec<(Arc<str>, u64)>, FenceError>);

impl Engine {
    /// Stores the checkpoint when it has moved and the last one is older
    /// than [`CHECKPOINT_EVERY`]; never while an earlier leader's decisions
    /// are being finished (the checkpoint would claim them done).
    pub(super) fn checkpoint(&mut self) {
        let Some(term) = self.term.as_mut() else {
            return;
        };
        if !self.checkpoints.is_empty()
            || term.open.values().any(|o| o.finishing)
            || term
                .checkpoint_sent
                .is_some_and(|s| s.elapsed() < CHECKPOINT_EVERY)
        {
            return;
        }
        let through = match term.open.values().map(|o| o.decided_at).min() {
            Some(oldest) => oldest - chrono::Duration::milliseconds(1),
            None => match term.done_through {
                Some(t) => t,
                None => return,
            },
        };
        if term.checkpoint >= Some(through) {
            return;
        }
        term.checkpoint = Some(through);
        term.checkpoint_sent = Some(Instant::now());
        let cp = Checkpoint {
            epoch: term.fences.epoch(),
            through,
        };
        let persist = self.persist.clone();
        let fences = term.fences.clone();
        self.checkpoints.spawn(async move {
            let r = persist.checkpoint(&fences, &cp).await.map(|()| cp.through);
            (cp.epoch, r)
        });
    }

    /// Writes under their own keys the states of jobs whose tick record is
    /// older than [`COMPACT_AFTER`], then purges the tick records no job
    /// needs any more. The jobs being compacted do not fire meanwhile (their
    /// own key's write must not land after a newer tick).
    pub(super) fn compact(&mut self) {
        let Some(term) = self.term.as_mut().filter(|t| t.ready) else {
            return;
        };
        if !self.compactions.is_empty()
            || term
                .compacted_at
                .is_some_and(|c| c.elapsed() < COMPACT_EVERY)
        {
            return;
        }
        term.compacted_at = Some(Instant::now());
        while let Some((at, seq)) = term.recent_ticks.front().copied() {
            if at.elapsed() < COMPACT_AFTER {
                break;
            }
            term.old_ticks = term.old_ticks.max(seq);
            term.recent_ticks.pop_front();
        }
        let old = term.old_ticks;
        let mut jobs: Vec<(Arc<str>, u64, FireState)> = Vec::new();
        let mut needed = Vec::new();
        for (id, seq) in self.table.all_ticked() {
            let state = self.table.state(id);
            match state {
                Some(state) if seq <= old && !term.in_flight.contains(&**id) => {
                    jobs.push((id.clone(), seq, state.clone()));
                }
                _ => needed.push(seq),
            }
        }
        let keep = purge_below(old, needed, term.open.values().map(|o| o.floor));
        if jobs.is_empty() && keep <= term.purged_below {
            return;
        }
        term.purged_below = keep;
        for (id, _, _) in &jobs {
            term.in_flight.insert(id.to_string());
            self.table.set_next(id, None);
        }
        debug!(
            jobs = jobs.len(),
            purge_below = keep,
            "compacting fire states"
        );
        let persist = self.persist.clone();
        let fences = term.fences.clone();
        self.compactions.spawn(async move {
            let epoch = fences.epoch();
            let done: Vec<(Arc<str>, u64)> =
                jobs.iter().map(|(id, seq, _)| (id.clone(), *seq)).collect();
            let states = jobs.into_iter().map(|(id, _, s)| (id, s)).collect();
            if let Err(e) = persist.compact(&fences, states).await {
                return (epoch, Err(e));
            }
            match persist.purge_ticks(keep).await {
                Ok(n) if n > 0 => debug!(purged = n, "tick records purged"),
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "cannot purge tick records; the next compaction retries")
                }
            }
            (epoch, Ok(done))
        });
    }

    pub(super) async fn on_compacted(&mut self, (epoch, result): Compacted) {
        let current = self.term.as_ref().map(|t| t.fences.epoch());
        if current != Some(epoch) {
            return;
        }
        let done = match result {
            Ok(done) => done,
            Err(e) => return self.resign_term(&e).await,
        };
        let Some(term) = self.term.as_mut() else {
            return;
        };
        let mut purge = Vec::new();
        for (id, _) in &done {
            term.in_flight.remove(&**id);
            if term.removed.remove(&**id) {
                purge.push(id.to_string());
            }
        }
        for (id, seq) in done {
            if self.table.ticked(&id) == Some(seq) {
                self.table.clear_ticked(&id);
            }
            self.plan(&id);
        }
        for id in purge {
            self.purge(id);
        }
        // End notices may have waited for these jobs.
        self.retry_ends();
    }

    pub(super) async fn on_checkpoint(
        &mut self,
        epoch: u64,
        result: Result<DateTime<Utc>, FenceError>,
    ) {
        let current = self.term.as_ref().map(|t| t.fences.epoch());
        match result {
            Ok(through) => debug!(epoch, %through, "checkpoint stored"),
            Err(e) if current == Some(epoch) => self.resign_term(&e).await,
            Err(_) => {}
        }
    }
}

/// Tick records below the returned sequence are needed by nobody: every
/// record at or below `old` is compacted except those in `needed` (the
/// latest records of jobs not compacted now), and a batch still being
/// stored may have stored its records anywhere above its `floor`.
fn purge_below(
    old: u64,
    needed: impl IntoIterator<Item = u64>,
    open_floors: impl IntoIterator<Item = u64>,
) -> u64 {
    let needed = needed.into_iter().min().unwrap_or(u64::MAX);
    let open = open_floors
        .into_iter()
        .map(|f| f + 1)
        .min()
        .unwrap_or(u64::MAX);
    (old + 1).min(needed).min(open)
}

#[cfg(test)]
mod tests {
    use super::purge_below;

    #[test]
    fn nothing_a_job_or_a_batch_in_flight_may_need_is_purged() {
        // Everything up to the old mark, when nothing else is needed.
        assert_eq!(purge_below(150, [], []), 151);
        // A job whose latest record is not compacted now keeps it.
        assert_eq!(purge_below(150, [120, 160], []), 120);
        // A batch started when records up to 100 were stored may have stored
        // its own at 101 or later, and its outcome is not known yet.
        assert_eq!(purge_below(150, [160], [100]), 101);
        assert_eq!(purge_below(150, [90], [100, 140]), 90);
    }
}
