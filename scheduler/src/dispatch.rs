//! Publishes the shard messages of due fires to the work stream.
//!
//! Every message carries `Nats-Msg-Id: <job>:<instant ms>:<shard>`, so a fire
//! re-dispatched by a new leader inside the stream's duplicate window is
//! dropped by the server: at most one message per (job, instant, shard).
//! Publishes are pipelined and their acks awaited in bounded chunks (the
//! client holds at most a few thousand un-acked publishes).

use std::future::IntoFuture;
use std::sync::Arc;

use async_nats::jetstream::{self, context::PublishAckFuture};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use jetcron_shared::Job;
use jetcron_shared::Names;
use jetcron_shared::wire::{Cause, ShardMessage};
use thiserror::Error;
use tracing::debug;

/// Un-acked publishes held at once.
const CHUNK: usize = 1000;

/// One fire of one job.
#[derive(Debug, Clone)]
pub struct Fire {
    pub job: Arc<Job>,
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
}

impl Fire {
    /// The shards this fire dispatches.
    pub fn shard_list(&self) -> Vec<u32> {
        match &self.shards {
            Some(s) => s.clone(),
            None => (0..self.job.shard_count()).collect(),
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DispatchError {
    #[error("leadership lapsed before every shard was published")]
    NotLeader,
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

    /// Publishes every shard of every fire. `epoch` returns the current
    /// leader epoch, or None once leadership has lapsed; it is checked before
    /// each chunk so a deposed leader stops publishing.
    pub async fn dispatch(
        &self,
        fires: &[Fire],
        epoch: impl Fn() -> Option<u64>,
    ) -> Vec<Result<Dispatched, DispatchError>> {
        let mut results: Vec<Result<Dispatched, DispatchError>> =
            vec![Ok(Dispatched::default()); fires.len()];
        let mut pending: Vec<(usize, u32, PublishAckFuture)> = Vec::with_capacity(CHUNK);
        let mut lapsed = false;
        'fires: for (i, fire) in fires.iter().enumerate() {
            for shard in fire.shard_list() {
                if pending.len() >= CHUNK {
                    settle(&mut pending, &mut results).await;
                }
                let Some(epoch) = epoch() else {
                    lapsed = true;
                    for r in &mut results[i..] {
                        *r = Err(DispatchError::NotLeader);
                    }
                    break 'fires;
                };
                let mut msg = ShardMessage::new(&fire.job, fire.instant, shard, epoch, fire.cause);
                msg.record = fire.record.clone();
                if let Some(p) = &fire.payload {
                    msg.payload = Some(p.clone());
                }
                let subject = self.names.work_subject(fire.job.group(), fire.job.id());
                match self
                    .js
                    .publish_with_headers(subject, msg.headers(), msg.encode().into())
                    .await
                {
                    Ok(ack) => pending.push((i, shard, ack)),
                    Err(e) => {
                        results[i] = Err(DispatchError::Publish {
                            shard,
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
        settle(&mut pending, &mut results).await;
        if lapsed {
            debug!("leadership lapsed mid-dispatch; the rest is left to the next leader");
        }
        results
    }
}

async fn settle(
    pending: &mut Vec<(usize, u32, PublishAckFuture)>,
    results: &mut [Result<Dispatched, DispatchError>],
) {
    let batch = std::mem::take(pending);
    let (keys, futs): (Vec<_>, Vec<_>) = batch.into_iter().map(|(i, s, f)| ((i, s), f)).unzip();
    for ((i, shard), ack) in keys
        .into_iter()
        .zip(join_all(futs.into_iter().map(IntoFuture::into_future)).await)
    {
        match (ack, &mut results[i]) {
            (Ok(ack), Ok(d)) if ack.duplicate => d.duplicates += 1,
            (Ok(_), _) => {}
            (Err(e), r) => {
                if r.is_ok() {
                    *r = Err(DispatchError::Publish {
                        shard,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
}
