//! The leader's side of tracked fires (see [`crate::ends`]): end notices
//! are applied to their job's fire state one batch at a time per job, and
//! acked once that batch is stored.
//!
//! When a fire's last shard ends, its `on_success` children fire first, in
//! a batch of their own; the parent's state (the fire ended) is stored only
//! after them. So a leader that dies in between leaves the parent's fire
//! running in the stored state and its notices unacked: the next leader
//! applies them again, finds the children already fired at that instant,
//! and stores the end.

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::wire::{RunResult, RunStatus};
use tracing::{debug, warn};

use super::Engine;
use crate::decide::{Decider, Ended, ShardEnd};
use crate::ends;
use crate::persist::Item;

/// What follows a stored batch.
#[derive(Debug, Default)]
pub(super) struct After {
    /// End notices whose effects the batch stored.
    acks: Vec<jetstream::Message>,
    /// A fire's end, stored once its children's fires (this batch) are.
    then: Option<Item>,
}

impl Engine {
    /// A notice from the ends stream.
    pub(super) fn on_end(&mut self, notice: jetstream::Message) {
        let result = match RunResult::decode(&notice.payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(subject = %notice.subject, error = %e, "unreadable end notice; dropped");
                ends::refuse(notice);
                return;
            }
        };
        let end = ShardEnd {
            instant: result.instant,
            shard: result.shard,
            succeeded: result.status == RunStatus::Succeeded,
            at: result.finished_at,
        };
        let job = result.job;
        self.waiting_ends
            .entry(job.clone())
            .or_default()
            .push((end, notice));
        self.apply_ends(&job);
    }

    /// Applies every waiting notice of jobs no batch is storing for.
    pub(super) fn retry_ends(&mut self) {
        if self.waiting_ends.is_empty() {
            return;
        }
        let jobs: Vec<String> = self.waiting_ends.keys().cloned().collect();
        for job in jobs {
            self.apply_ends(&job);
        }
    }

    /// Applies the waiting notices of `job`, unless a batch for it (or
    /// for one of its children) is in flight: then after that batch.
    fn apply_ends(&mut self, job: &str) {
        let Some(term) = self.term.as_ref().filter(|t| t.ready) else {
            return;
        };
        let epoch = term.fences.epoch();
        let busy = |id: &str| term.in_flight.contains(id);
        if busy(job) {
            return;
        }
        let children = self
            .table
            .known(job)
            .map(|k| k.job.on_success().to_vec())
            .unwrap_or_default();
        if children.iter().any(|c| busy(c)) {
            return;
        }
        let Some(waiting) = self.waiting_ends.remove(job) else {
            return;
        };
        let (list, notices): (Vec<ShardEnd>, Vec<jetstream::Message>) = waiting.into_iter().unzip();
        // A job deleted, invalid or never fired has no fire to end.
        let (Some(k), Some(state)) = (self.table.known(job), self.table.state(job)) else {
            debug!(job, notices = notices.len(), "end notices of no known fire");
            ends::ack_all(notices);
            return;
        };
        let now = Utc::now();
        let names = self.names.clone();
        let decider = self.decider(&names, epoch, now);
        let (item, succeeded) = match decider.ended(job, k, state, &list) {
            Ended::Nothing => {
                ends::ack_all(notices);
                return;
            }
            Ended::Store { item, succeeded } => (*item, succeeded),
        };
        let mut fires = Vec::new();
        for parent in &succeeded {
            for child in &children {
                let child = &**child;
                let k = self.table.known(child);
                if let Some(item) = decider.child(child, k, self.table.state(child), parent) {
                    fires.push(item);
                }
            }
        }
        if fires.is_empty() {
            let id = self.spawn_batch(vec![item], now, false);
            self.attach(id, notices, None);
            return;
        }
        debug!(
            job,
            children = fires.len(),
            "a fire succeeded: firing its children"
        );
        // The parent waits, as if in flight, until its end is stored.
        if let Some(term) = self.term.as_mut() {
            term.in_flight.insert(job.to_string());
        }
        self.table.set_next(job, None);
        let id = self.spawn_batch(fires, now, false);
        self.attach(id, notices, Some(item));
    }

    /// What the leader of `epoch` decides at `now`, with this replica's
    /// settings (`names` is a copy, so that `self` stays free to change).
    pub(super) fn decider<'a>(
        &self,
        names: &'a Names,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> Decider<'a> {
        Decider {
            names,
            epoch,
            now,
            misfire_threshold: chrono::Duration::from_std(self.settings.misfire_threshold)
                .unwrap_or(chrono::Duration::MAX),
            give_up: self.give_up(),
        }
    }

    /// How long a tracked fire is waited for: the work stream's max age
    /// (none: for ever).
    fn give_up(&self) -> chrono::Duration {
        let age = self.res.work.cached_info().config.max_age;
        if age.is_zero() {
            return chrono::Duration::MAX;
        }
        chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
    }

    fn attach(&mut self, batch: Option<u64>, acks: Vec<jetstream::Message>, then: Option<Item>) {
        // Not started: the notices come back after their ack wait.
        if let (Some(id), Some(term)) = (batch, self.term.as_mut()) {
            term.after.insert(id, After { acks, then });
        }
    }

    /// A batch is stored: store the end it held back, its notices acked
    /// after that; or ack them now.
    pub(super) fn after_batch(&mut self, after: After) {
        let Some(item) = after.then else {
            ends::ack_all(after.acks);
            return;
        };
        let job = item.job.clone();
        // In flight again with its own batch; planned when that is done.
        if let Some(term) = self.term.as_mut() {
            term.in_flight.remove(&job);
        }
        let id = self.spawn_batch(vec![item], Utc::now(), false);
        self.attach(id, after.acks, None);
    }
}
