//! Per-job fire state in the state bucket, and the leader's checkpoint.
//!
//! The state is the leader's write-ahead record: it is stored (fenced, see
//! [`crate::fence`]) *before* the fire's shard messages and events, and it
//! names the decision it records. So whatever a leader had stored when it
//! died, its successor knows exactly which instants were decided: it
//! continues at `next_instant`, and it finishes the writes of a decision the
//! checkpoint does not yet cover (shards and events again, deduplicated by
//! their message ids). An instant recorded as fired is never fired as
//! another instant, and never reported missed.
//!
//! The states of the fires of one batch are stored together, as one [`Tick`]
//! record (`=tick.<epoch>.<batch>.<part>`, split to stay far below the max
//! payload) instead of one write per job: at tens of thousands of fires a
//! second the per-message cost is what counts. A job's state then lives in
//! the latest tick that holds it, until the leader *compacts* it: a job
//! that has not fired again for a few seconds gets its state written under
//! its own key, and tick records that no job needs any more are purged. A
//! job that fires every second is never compacted; its newest tick is
//! always recent. Reading the bucket in stream order (the mirror, a cold
//! start) gives every job its latest state, whichever record holds it.
//! Skips (paused jobs, instants skipped as misfires) and removals are
//! written under the job's key.

use async_nats::jetstream::kv::{self, Operation};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use jetcron_shared::wire::Cause;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireState {
    /// Revision of the definition the next instant was computed from.
    pub job_revision: u64,
    /// The instant the leader fires next; None when the schedule has ended.
    pub next_instant: Option<DateTime<Utc>>,
    /// The last instant dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_instant: Option<DateTime<Utc>>,
    /// When the last instant was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<DateTime<Utc>>,
    /// Epoch of the leader that wrote this.
    pub epoch: u64,
    /// Fires dispatched so far (also picks the run-history slot).
    #[serde(default)]
    pub fires: u64,
    /// Instants skipped because the job is paused, since it was paused.
    /// `job.resume` reports it; the engine resets it once the job runs again.
    #[serde(default)]
    pub paused_skipped: u64,
    /// The decision this write records, so that a successor can finish it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Tracked fires (see [`crate::ends`]) that have not ended yet, oldest
    /// first: one at most, unless the job's `overlap` is `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<Running>,
    /// `overlap: queue`: the instant that fires when the running fire ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<DateTime<Utc>>,
    /// `overlap: forbid` or `queue`: the first instant skipped while the
    /// running fire runs. The job sleeps after it; the instants it slept
    /// through are counted and reported when the fire ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_from: Option<DateTime<Utc>>,
}

/// A fire whose end the leader waits for: the shards that ended for good
/// so far, from the end notices workers publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub instant: DateTime<Utc>,
    /// Shards dispatched.
    pub shards: u32,
    /// Shards ended, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<u32>,
    /// Some ended shard did not succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// The latest finish among the ended shards' last results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_end: Option<DateTime<Utc>>,
    /// The fire of the parent job that fired this one (`on_success`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Parents above it in a chain of `on_success` fires.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Running {
    pub fn new(instant: DateTime<Utc>, shards: u32, parent: Option<String>, depth: u32) -> Running {
        Running {
            instant,
            shards,
            ended: Vec::new(),
            failed: false,
            last_end: None,
            parent,
            depth,
        }
    }

    /// Records that `shard` ended (at `at`, succeeded or not); false when it
    /// had already, or is no shard of this fire.
    pub fn end(&mut self, shard: u32, succeeded: bool, at: DateTime<Utc>) -> bool {
        if shard >= self.shards {
            return false;
        }
        match self.ended.binary_search(&shard) {
            Ok(_) => false,
            Err(i) => {
                self.ended.insert(i, shard);
                self.failed |= !succeeded;
                self.last_end = self.last_end.max(Some(at));
                true
            }
        }
    }

    /// Every shard ended.
    pub fn done(&self) -> bool {
        self.ended.len() as u64 >= u64::from(self.shards)
    }
}

/// Instants let pass in a row, `first` to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipSpan {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub count: u64,
}

/// What the leader decided for one job at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// When it was decided, by the deciding leader's clock.
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub what: Decided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decided", rename_all = "snake_case")]
pub enum Decided {
    /// `instant` was fired, standing for `missed` instants from `first_missed`.
    Fired {
        instant: DateTime<Utc>,
        cause: Cause,
        missed: u64,
        first_missed: DateTime<Utc>,
        /// Runs-bucket key of the fire record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<String>,
        /// `overlap: replace`: the running fire it replaced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<DateTime<Utc>>,
        /// An `on_success` fire: the parent's fire id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<String>,
        /// A queued fire: the instants skipped while it waited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skipped: Option<SkipSpan>,
    },
    /// `count` instants up to `instant` passed unfired, for `reason`
    /// ([`PAUSED`], [`MISFIRE`], [`MISFIRE_LIMIT`]).
    Skipped {
        instant: DateTime<Utc>,
        count: u64,
        reason: String,
        /// The first of them (records written before it was kept lack it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first: Option<DateTime<Utc>>,
    },
}

/// Skipped because the job is paused.
pub const PAUSED: &str = "paused";
/// Late, under `misfire: skip`.
pub const MISFIRE: &str = "misfire";
/// Late and older than the newest `misfire_limit`, under `misfire: fire_all`.
pub const MISFIRE_LIMIT: &str = "misfire_limit";
/// An earlier fire still ran, under `overlap: forbid` or `queue`.
pub const OVERLAP: &str = "overlap";
/// An `on_success` fire of a child whose definition is missing or invalid.
pub const NO_DEFINITION: &str = "no_definition";

/// One record of the fire states of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// Epoch of the leader that wrote it.
    pub epoch: u64,
    pub states: Vec<TickState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickState {
    pub job: String,
    pub state: FireState,
}

/// Everything a leader decided at or before `through` has all its shard
/// messages and events stored. Written by the leader of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: u64,
    pub through: DateTime<Utc>,
}

impl Checkpoint {
    /// Whether `state`'s decision may still lack some of its writes.
    pub fn leaves_open(checkpoint: Option<&Checkpoint>, state: &FireState) -> bool {
        let Some(d) = &state.decision else {
            return false;
        };
        match checkpoint {
            None => true,
            Some(c) if state.epoch > c.epoch => true,
            Some(c) if state.epoch == c.epoch => d.at > c.through,
            // An older leader's decisions were finished by the leader that
            // wrote the checkpoint, before it wrote any.
            Some(_) => false,
        }
    }
}

/// A state and the revision it was read at (0: never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub state: Option<FireState>,
    pub revision: u64,
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read the state bucket: {0}")]
    Store(String),
}

/// Reads one job's fire state (the API's `job.resume`); the engine keeps
/// them in memory ([`crate::mirror`]), and every write goes through
/// [`crate::persist`], fenced.
#[derive(Debug, Clone)]
pub struct StateStore {
    kv: kv::Store,
}

impl StateStore {
    pub fn new(kv: kv::Store) -> StateStore {
        StateStore { kv }
    }

    /// Reads a job's state. A state that does not decode is treated as
    /// absent (it is rewritten at the next fire), never as an error that
    /// would stop the job.
    pub async fn load(&self, job: &str) -> Result<Versioned, StateError> {
        let entry = self
            .kv
            .entry(job)
            .await
            .map_err(|e| StateError::Store(e.to_string()))?;
        Ok(match entry {
            None => Versioned {
                state: None,
                revision: 0,
            },
            Some(e) if e.operation != Operation::Put => Versioned {
                state: None,
                revision: e.revision,
            },
            Some(e) => Versioned {
                state: serde_json::from_slice(&e.value).ok(),
                revision: e.revision,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, s).unwrap()
    }

    fn state(epoch: u64, decided: Option<DateTime<Utc>>) -> FireState {
        FireState {
            job_revision: 1,
            next_instant: Some(t(30)),
            last_instant: Some(t(20)),
            last_fired_at: decided,
            epoch,
            fires: 3,
            paused_skipped: 0,
            decision: decided.map(|at| Decision {
                at,
                what: Decided::Fired {
                    instant: t(20),
                    cause: Cause::Schedule,
                    missed: 1,
                    first_missed: t(20),
                    record: Some("j.s2".into()),
                    replaces: None,
                    parent: None,
                    skipped: None,
                },
            }),
            running: Vec::new(),
            queued: None,
            overlap_from: None,
        }
    }

    #[test]
    fn the_checkpoint_says_which_decisions_may_be_unfinished() {
        let cp = Checkpoint {
            epoch: 7,
            through: t(21),
        };
        // Same leader: after the checkpoint is open, at or before is done.
        assert!(Checkpoint::leaves_open(Some(&cp), &state(7, Some(t(22)))));
        assert!(!Checkpoint::leaves_open(Some(&cp), &state(7, Some(t(21)))));
        // A later leader wrote it after the checkpoint: open.
        assert!(Checkpoint::leaves_open(Some(&cp), &state(9, Some(t(1)))));
        // An earlier leader's: finished by the checkpoint's writer.
        assert!(!Checkpoint::leaves_open(Some(&cp), &state(5, Some(t(59)))));
        // No checkpoint at all: open; no decision recorded: nothing to finish.
        assert!(Checkpoint::leaves_open(None, &state(1, Some(t(1)))));
        assert!(!Checkpoint::leaves_open(Some(&cp), &state(9, None)));
    }

    #[test]
    fn state_round_trips_with_its_decision_and_reads_old_records() {
        let s = state(7, Some(t(22)));
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""decided":"fired""#), "{json}");
        assert_eq!(serde_json::from_str::<FireState>(&json).unwrap(), s);
        let old = r#"{"job_revision":3,"next_instant":null,"epoch":2}"#;
        let s: FireState = serde_json::from_str(old).unwrap();
        assert_eq!((s.fires, s.decision), (0, None));
    }
}
