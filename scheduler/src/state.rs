//! Per-job fire state in the state bucket, written with compare-and-set.
//!
//! The state says which instant the leader will fire next for which
//! definition revision, and which it fired last. A new leader reads it and
//! continues exactly there: an instant recorded as fired is never fired
//! again, and one that was due while nobody led is fired late (misfire).

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireState {
    /// Revision of the definition the next instant was computed from.
    pub job_revision: u64,
    /// The instant the leader fires next; None when the schedule has ended.
    pub next_instant: Option<DateTime<Utc>>,
    /// The last instant dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_instant: Option<DateTime<Utc>>,
    /// When the last instant was dispatched.
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
}

/// A state and the revision it was read or written at (0: never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub state: Option<FireState>,
    pub revision: u64,
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state of job {job} was changed by another leader")]
    Conflict { job: String },
    #[error("cannot access the state bucket: {0}")]
    Store(String),
}

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

    /// Writes `state` if the stored revision is still `expected`.
    pub async fn write(
        &self,
        job: &str,
        state: &FireState,
        expected: u64,
    ) -> Result<u64, StateError> {
        let body = Bytes::from(serde_json::to_vec(state).unwrap_or_default());
        self.kv
            .update(job, body, expected)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => StateError::Conflict {
                    job: job.to_string(),
                },
                _ => StateError::Store(e.to_string()),
            })
    }

    /// Forgets a deleted job's state.
    pub async fn remove(&self, job: &str) -> Result<(), StateError> {
        self.kv
            .purge(job)
            .await
            .map_err(|e| StateError::Store(e.to_string()))
    }
}
