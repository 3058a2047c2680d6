//! The leader's fences: the server, not the leader's clock, decides whether
//! a leader's write is still allowed.
//!
//! A local lease deadline cannot stop a deposed leader on its own: the NATS
//! client keeps what it publishes while the link is stalled or down and
//! sends it all when the link is back, long after the deadline was checked.
//! So on taking the lease, the leader stores a fence, its epoch, in each
//! stream it writes to, and every later write to that stream carries
//! `Nats-Expected-Last-Subject-Sequence: <fence sequence>` with
//! `Nats-Expected-Last-Subject-Sequence-Subject: <fence subject>`. Once a
//! newer leader has stored its own fence, the server refuses (err_code
//! 10071) whatever the deposed leader's client still delivers.
//!
//! A fence is itself written with compare-and-set on its subject, after
//! reading the fence there: a leader never covers a newer epoch's fence, and
//! a fence from a deposed leader that arrives late is refused like its
//! other writes. The streams and their fence subjects:
//!
//! | stream | fence subject | fenced writes |
//! |---|---|---|
//! | work | `jetcron.work.fence` | shard messages |
//! | state bucket | key `=fence` | fire state, checkpoint, state removal |
//! | events | `jetcron.events.leader` (the leader event) | fired, misfired, skipped |
//!
//! A fence can vanish (the streams have a max age); a
//! refused write then re-reads it and, while this leader still holds the
//! lease and no newer fence exists, stores it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self};
use bytes::Bytes;
use chrono::Utc;
use jetcron_shared::Names;
use jetcron_shared::setup::Resources;
use jetcron_shared::wire::{Event, EventBody, Fence};
use thiserror::Error;
use tokio::sync::{Mutex, watch};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::lease::Leadership;

/// Wait for an answer to a fence read or write while a stream may be
/// electing a leader (a cluster node lost): a request sent then is lost,
/// not refused, so it is sent again soon.
const FENCE_SHORT_WAIT: Duration = Duration::from_millis(400);
/// Requests given the short wait; an election takes a few seconds.
const FENCE_SHORT_TRIES: u32 = 12;
/// Wait for an answer after that, for a server that is merely slow.
const FENCE_LIMIT: Duration = Duration::from_secs(2);
/// Pause before trying a fence again after the server did not answer.
const FENCE_RETRY: Duration = Duration::from_millis(100);

pub const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
pub const EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// The streams a leader writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Work,
    State,
    Events,
}

const TARGETS: [Target; 3] = [Target::Work, Target::State, Target::Events];

impl Target {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FenceError {
    #[error("a newer leader (epoch {newer}) has fenced stream {stream}")]
    Superseded { stream: String, newer: u64 },
    #[error("no longer holding the lease")]
    NotLeader,
}

/// One stream's fence.
#[derive(Debug)]
struct Slot {
    target: Target,
    stream: Stream,
    subject: String,
    /// Sequence of this leader's fence message, 0 before it is stored.
    seq: AtomicU64,
    /// One re-take at a time.
    retake: Mutex<()>,
}

/// The fences of one leadership term.
#[derive(Debug)]
pub struct Fences {
    epoch: u64,
    holder: String,
    js: jetstream::Context,
    leadership: watch::Receiver<Leadership>,
    slots: Vec<Slot>,
}

impl Fences {
    /// Stores this leader's fence in every stream it writes to. Keeps
    /// trying while the lease is held; fails once it is not, or when a newer
    /// leader has fenced a stream.
    pub async fn take(
        js: jetstream::Context,
        names: &Names,
        res: &Resources,
        holder: &str,
        epoch: u64,
        leadership: watch::Receiver<Leadership>,
    ) -> Result<Fences, FenceError> {
        let kv_fence = |bucket: &str| Names::kv_subject(bucket, names.fence_key());
        let slot = |target, stream: &Stream, subject: String| Slot {
            target,
            stream: stream.clone(),
            subject,
            seq: AtomicU64::new(0),
            retake: Mutex::new(()),
        };
        let slots = TARGETS
            .iter()
            .map(|&t| match t {
                Target::Work => slot(t, &res.work, names.work_fence_subject()),
                Target::State => slot(t, &res.state.stream, kv_fence(&names.state_bucket())),
                Target::Events => slot(t, &res.events, names.events_fence_subject()),
            })
            .collect();
        let fences = Fences {
            epoch,
            holder: holder.to_string(),
            js,
            leadership,
            slots,
        };
        let taken =
            futures::future::join_all(fences.slots.iter().map(|s| fences.store(s, 0))).await;
        for r in taken {
            r?;
        }
        info!(
            epoch,
            "fences stored in the work and events streams and the state bucket"
        );
        Ok(fences)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sequence of this leader's fence in `target`'s stream.
    pub fn seq(&self, target: Target) -> u64 {
        self.slots[target.index()].seq.load(Ordering::Acquire)
    }

    /// Adds the fence headers for a write to `target`'s stream; returns the
    /// fence sequence they expect, to hand to [`Fences::refused`].
    pub fn apply(&self, target: Target, headers: &mut HeaderMap) -> u64 {
        let slot = &self.slots[target.index()];
        let seq = slot.seq.load(Ordering::Acquire);
        headers.insert(EXPECTED_LAST_SUBJECT_SEQ, seq.to_string().as_str());
        headers.insert(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, slot.subject.as_str());
        seq
    }

    /// The server refused a write that expected fence `seen`. Ok: write
    /// again with the fence as it is now (this leader's own fence moved, or
    /// had expired and is stored again). Err: this leader must stop.
    pub async fn refused(&self, target: Target, seen: u64) -> Result<(), FenceError> {
        let slot = &self.slots[target.index()];
        let _one = slot.retake.lock().await;
        if slot.seq.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        warn!(stream = %slot.stream.cached_info().config.name, seen, "fenced write refused; checking the fence");
        self.store(slot, seen).await
    }

    /// Whether a publish error is the server refusing a fenced write.
    pub fn is_refusal(kind: PublishErrorKind) -> bool {
        kind == PublishErrorKind::WrongLastSequence
    }

    /// Whether a publish error says only that another write checking the
    /// same fence is still being replicated: a clustered stream lets one
    /// such write be in flight at a time (err_code 10164). Send it again.
    pub fn is_busy(e: &PublishError) -> bool {
        std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|j| j.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
    }

    /// Whether this term's lease is still held (by the local deadline).
    pub fn is_valid(&self) -> bool {
        self.leadership.borrow().valid_epoch() == Some(self.epoch)
    }

    fn stream_name(slot: &Slot) -> String {
        slot.stream.cached_info().config.name.clone()
    }

    /// Reads the fence in `slot` and stores ours over it unless it is newer;
    /// if it already is ours, adopts its sequence.
    async fn store(&self, slot: &Slot, previous: u64) -> Result<(), FenceError> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let wait = if tries <= FENCE_SHORT_TRIES {
                FENCE_SHORT_WAIT
            } else {
                FENCE_LIMIT
            };
            if !self.is_valid() {
                return Err(FenceError::NotLeader);
            }
            let last = match self.read(slot, wait).await {
                Ok(last) => last,
                Err(reason) => {
                    debug!(stream = %Self::stream_name(slot), reason, "cannot read the fence; retrying");
                    tokio::time::sleep(FENCE_RETRY).await;
                    continue;
                }
            };
            let expect = match last {
                Some((_, epoch)) if epoch > self.epoch => {
                    return Err(FenceError::Superseded {
                        stream: Self::stream_name(slot),
                        newer: epoch,
                    });
                }
                // Ours already (stored by a concurrent re-take, or the
                // answer to our write was lost): use it.
                Some((seq, epoch)) if epoch == self.epoch && seq != previous => {
                    slot.seq.store(seq, Ordering::Release);
                    return Ok(());
                }
                Some((seq, _)) => seq,
                None => 0,
            };
            let mut headers = HeaderMap::new();
            headers.insert(EXPECTED_LAST_SUBJECT_SEQ, expect.to_string().as_str());
            let body = self.body(slot.target);
            let sent = self
                .js
                .publish_with_headers(slot.subject.clone(), headers, body)
                .await;
            let acked = match sent {
                Ok(ack) => timeout(wait, ack).await,
                Err(e) => Ok(Err(e)),
            };
            match acked {
                Ok(Ok(ack)) => {
                    slot.seq.store(ack.sequence, Ordering::Release);
                    debug!(stream = %Self::stream_name(slot), seq = ack.sequence, epoch = self.epoch, "fence stored");
                    return Ok(());
                }
                // Another write to the fence subject came first: read again.
                Ok(Err(e)) if Self::is_refusal(e.kind()) || Self::is_busy(&e) => {}
                Ok(Err(e)) => {
                    debug!(stream = %Self::stream_name(slot), error = %e, "fence not stored; retrying");
                    tokio::time::sleep(FENCE_RETRY).await;
                }
                Err(_) => {
                    debug!(stream = %Self::stream_name(slot), "fence write timed out; retrying");
                }
            }
        }
    }

    /// The last fence on the slot's subject: its sequence and epoch.
    async fn read(&self, slot: &Slot, wait: Duration) -> Result<Option<(u64, u64)>, String> {
        let got = timeout(
            wait,
            slot.stream.get_last_raw_message_by_subject(&slot.subject),
        )
        .await
        .map_err(|_| "timed out".to_string())?;
        match got {
            Ok(m) => Ok(Some((m.sequence, fence_epoch(slot.target, &m.payload)))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn body(&self, target: Target) -> Bytes {
        match target {
            Target::Events => Event::now(EventBody::Leader {
                holder: self.holder.clone(),
                epoch: self.epoch,
            })
            .encode()
            .into(),
            _ => Fence {
                epoch: self.epoch,
                holder: self.holder.clone(),
                at: Utc::now(),
            }
            .encode()
            .into(),
        }
    }
}

/// The epoch a stored fence names; 0 for a message that is not a fence (a
/// fence can only be covered by a leader whose epoch is higher).
fn fence_epoch(target: Target, payload: &[u8]) -> u64 {
    match target {
        Target::Events => match Event::decode(payload).map(|e| e.body) {
            Ok(EventBody::Leader { epoch, .. }) => epoch,
            _ => 0,
        },
        _ => Fence::decode(payload).map_or(0, |f| f.epoch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_epochs_are_read_from_either_shape() {
        let f = Fence {
            epoch: 12,
            holder: "a".into(),
            at: Utc::now(),
        };
        assert_eq!(fence_epoch(Target::Work, &f.encode()), 12);
        assert_eq!(fence_epoch(Target::State, &f.encode()), 12);
        let leader = Event::now(EventBody::Leader {
            holder: "b".into(),
            epoch: 40,
        });
        assert_eq!(fence_epoch(Target::Events, &leader.encode()), 40);
        // Garbage never outranks a real leader.
        assert_eq!(fence_epoch(Target::Work, b"junk"), 0);
        assert_eq!(fence_epoch(Target::Events, &f.encode()), 0);
    }
}
