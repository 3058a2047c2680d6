//! The standby side of a replica: a copy of every job's fire state kept
//! current through [`crate::mirror`] while another replica leads, the
//! return to it when this one stops leading, and the reopening of a mirror
//! that went silent while a new term waits for it.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Engine, MIRROR_PATIENCE};
use crate::fence::Target;
use crate::mirror::{Mirror, Update};

impl Engine {
    /// Stops leading, if it did, and mirrors the stored fire states again
    /// from a full snapshot: batches cut short may have stored more than
    /// this replica knows. The timer stays: a standby keeps it planned.
    pub(super) fn stand_by(&mut self) {
        let Some(term) = self.term.take() else {
            return;
        };
        self.batches.abort_all();
        self.checkpoints.abort_all();
        self.compactions.abort_all();
        // Notices not acked come back to the next leader.
        self.ends = None;
        self.waiting_ends.clear();
        for id in term.in_flight {
            self.plan(&id);
        }
        self.settings.states_current.store(false, Ordering::Release);
        self.mirror = Some(Mirror::start(self.res.state.clone(), self.names.clone()));
    }

    /// Applies what the mirror delivered; completes a takeover once it has
    /// seen the term's state fence.
    pub(super) fn on_mirror(&mut self, updates: Vec<Update>) {
        self.mirror_seen = Instant::now();
        for u in updates {
            if let Some(seq) = u.seq() {
                self.mirrored = self.mirrored.max(seq);
            }
            match u {
                Update::State {
                    job,
                    state: Some(s),
                    ..
                } => {
                    self.table.set_state(&job, *s);
                    self.table.clear_ticked(&job);
                    self.plan(&job);
                }
                Update::State { job, .. } | Update::Removed { job, .. } => {
                    self.table.remove_state(&job);
                    self.plan(&job);
                }
                Update::Tick { seq, states } => {
                    for (job, s) in states {
                        self.table.set_state(&job, s);
                        self.table.set_ticked(&job, seq);
                        self.plan(&job);
                    }
                }
                Update::Checkpoint { checkpoint, .. } => {
                    self.stored_checkpoint = Some(checkpoint);
                }
                Update::Other { .. } => {}
                Update::Current => {
                    debug!(states = self.table.states(), "fire states current");
                    self.settings.states_current.store(true, Ordering::Release);
                }
            }
        }
        let fence = match &self.term {
            Some(t) if !t.ready => t.fences.seq(Target::State),
            _ => return,
        };
        if self.mirrored >= fence {
            self.ready();
        }
    }

    /// A new leader waits for its mirror to deliver its state fence. A
    /// mirror whose watch died with the node that served it (a cluster node
    /// lost) says so only when its heartbeats stop coming, seconds later:
    /// one that has delivered nothing for [`MIRROR_PATIENCE`] since the term
    /// began, without reaching the fence, is opened again at once, from a
    /// full snapshot. A mirror still catching up delivers all along, and is
    /// left alone.
    pub(super) fn unstick_mirror(&mut self) {
        let Some(term) = self.term.as_mut() else {
            return;
        };
        let quiet = term.began.max(self.mirror_seen).elapsed();
        if term.ready || term.mirror_reopened || quiet < MIRROR_PATIENCE {
            return;
        }
        term.mirror_reopened = true;
        warn!(
            fence = term.fences.seq(Target::State),
            mirrored = self.mirrored,
            "the state mirror has not reached this term's fence; opening it again"
        );
        self.mirror = Some(Mirror::start(self.res.state.clone(), self.names.clone()));
    }
}

/// The next delivery of the mirror, if one runs.
pub(super) async fn mirrored(mirror: &mut Option<Mirror>) -> Option<Vec<Update>> {
    match mirror {
        Some(m) => m.updates.recv().await,
        None => std::future::pending().await,
    }
}
