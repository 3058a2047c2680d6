//! A fire and its shard messages; the unfenced publisher used by
//! `job.trigger` (the leader's own fires go through [`crate::persist`]).
//!
//! Every message carries `Nats-Msg-Id: <job>:<instant ms>:<shard>`, so a fire
//! re-dispatched by a new leader inside the stream's duplicate window is
//! dropped by the server: at most one message per (job, instant, shard).

use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use jetcron_shared::job::Misfire;
use jetcron_shared::wire::{Cause, ShardMessage};
use jetcron_shared::{Definition, Job, JobError, Names};
use thiserror::Error;
use tracing::debug;

use crate::state::SkipSpan;

/// Longest wait for a manual fire's acks.
const ACK_LIMIT: Duration = Duration::from_secs(5);

/// The job a fire runs: decoded already, or decoded once when its shard
/// messages are made (off the fire loop, in the batch that stores them).
#[derive(Debug, Clone)]
pub struct FireJob {
    stored: Option<Arc<Definition>>,
    full: Arc<OnceLock<Arc<Job>>>,
}

impl FireJob {
    pub fn full(job: Arc<Job>) -> FireJob {
        FireJob {
            stored: None,
            full: Arc::new(OnceLock::from(job)),
        }
    }

    pub fn stored(def: Arc<Definition>) -> FireJob {
        FireJob {
            stored: Some(def),
            full: Arc::new(OnceLock::new()),
        }
    }

    /// The full job, decoding it on first use.
    pub fn get(&self) -> Result<Arc<Job>, JobError> {
        if let Some(job) = self.full.get() {
            return Ok(job.clone());
        }
        let Some(def) = &self.stored else {
            return Err(JobError::Syntax("fire without a job".into()));
        };
        let job = Arc::new(def.job()?);
        Ok(self.full.get_or_init(|| job).clone())
    }

    /// The full job if it has been decoded.
    pub fn decoded(&self) -> Option<Arc<Job>> {
        self.full.get().cloned()
    }

    pub fn id(&self) -> &str {
        match (&self.stored, self.full.get()) {
            (Some(def), _) => def.id(),
            (None, Some(job)) => job.id(),
            (None, None) => "",
        }
    }

    pub fn shard_count(&self) -> u32 {
        match (&self.stored, self.full.get()) {
            (Some(def), _) => def.shard_count(),
            (None, Some(job)) => job.shard_count(),
            (None, None) => 0,
        }
    }

    pub fn misfire(&self) -> Misfire {
        match (&self.stored, self.full.get()) {
            (Some(def), _) => def.misfire(),
            (None, Some(job)) => job.misfire(),
            (None, None) => Misfire::default(),
        }
    }
}

/// One fire of one job.
#[derive(Debug, Clone)]
pub struct Fire {
    pub job: FireJob,
    /// Revision of the definition fired.
    pub revision: u64,
    pub instant: DateTime<Utc>,
    pub cause: Cause,
    /// Instants this fire stands for: 1 on time, more after a misfire.
    pub missed: u64,
    /// The earliest of those instants.
    pub first_missed: DateTime<Utc>,
    /// Only these shards (a trigger may choose); None: every shard.
    pub shards: Option<Vec<u32>>,
    /// Replaces the job's payload for this fire (trigger).
    pub payload: Option<serde_json::Value>,
    /// Runs-bucket key of this fire's record; workers write their shard
    /// records under `<record>.<shard>`.
    pub record: Option<String>,
    /// `overlap: replace`: the running fire this one replaces.
    pub replaces: Option<DateTime<Utc>>,
    /// An `on_success` fire: the parent's fire id.
    pub parent: Option<String>,
    /// A queued fire: the instants skipped while it waited.
    pub skipped: Option<SkipSpan>,
}

impl Fire {
    /// The shards this fire dispatches.
    pub fn shard_list(&self) -> Vec<u32> {
        match &self.shards {
            Some(s) => s.clone(),
            None => (0..self.job.shard_count()).collect(),
        }
    }

    /// The fire's shard messages, dispatched by the leader of `epoch`.
    pub fn messages(&self, epoch: u64) -> Result<Vec<ShardMessage>, JobError> {
        let job = self.job.get()?;
        Ok(self
            .shard_list()
            .into_iter()
            .map(move |shard| {
                let mut msg = ShardMessage::new(&job, self.instant, shard, epoch, self.cause);
                msg.record = self.record.clone();
                // A trigger's fire is neither held back nor waited for.
                msg.track &= self.cause != Cause::Manual;
                msg.parent = self.parent.clone();
                if let Some(p) = &self.payload {
                    msg.payload = Some(p.clone());
                }
                msg
            })
            .collect())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DispatchError {
    #[error("shard {shard} not stored: {reason}")]
    Publish { shard: u32, reason: String },
}

/// What happened to a dispatched fire's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dispatched {
    /// Shards the stream already held (dispatched by an earlier leader).
    pub duplicates: u32,
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    js: jetstream::Context,
    names: Names,
}

impl Dispatcher {
    pub fn new(js: jetstream::Context, names: Names) -> Dispatcher {
        Dispatcher { js, names }
    }

    /// Publishes every shard of a manual fire, stamped with `epoch` (the
    /// leader's at the time, for the record; a trigger is not fenced: it is
    /// one-off and any replica may serve it). Waits at most [`ACK_LIMIT`]
    /// for the stream's acks.
    pub async fn dispatch(&self, fire: &Fire, epoch: u64) -> Result<Dispatched, DispatchError> {
        let mut pending = Vec::new();
        let messages = fire.messages(epoch).map_err(|e| DispatchError::Publish {
            shard: 0,
            reason: e.to_string(),
        })?;
        for msg in messages {
            let subject = self.names.shard_subject(&msg.group, &msg.job, &msg.run);
            let ack = self
                .js
                .publish_with_headers(subject, msg.headers(), msg.encode().into())
                .await
                .map_err(|e| DispatchError::Publish {
                    shard: msg.shard,
                    reason: e.to_string(),
                })?;
            pending.push((msg.shard, ack));
        }
        let (shards, acks): (Vec<u32>, Vec<PublishAckFuture>) = pending.into_iter().unzip();
        let acked = tokio::time::timeout(
            ACK_LIMIT,
            join_all(acks.into_iter().map(IntoFuture::into_future)),
        )
        .await
        .map_err(|_| DispatchError::Publish {
            shard: shards.first().copied().unwrap_or(0),
            reason: format!("no ack within {ACK_LIMIT:?}"),
        })?;
        let mut out = Dispatched::default();
        for (shard, ack) in shards.into_iter().zip(acked) {
            match ack {
                Ok(a) if a.duplicate => out.duplicates += 1,
                Ok(_) => {}
                Err(e) => {
                    return Err(DispatchError::Publish {
                        shard,
                        reason: e.to_string(),
                    });
                }
            }
        }
        debug!(
            job = fire.job.id(),
            shards = out.duplicates,
            "manual fire dispatched"
        );
        Ok(out)
    }
}
