//! Removes shard messages that a server crash stranded in the work stream.
//!
//! A work-queue stream deletes a message once its consumer has acked it.
//! When nats-server is killed at the wrong moment, the consumer's ack can
//! be kept while the deletion is lost: after the restart the message is
//! still in the stream, at or below the consumer's ack floor, and the
//! consumer never delivers it again. Its shard is finished (a worker only
//! acks after storing the result), but the message would sit in the stream
//! until its max age, counted as waiting work. So while it leads, the
//! scheduler looks for messages of each group at or below that group's ack
//! floor and deletes them: [`AFTER_TAKEOVER`] after it takes the lease (a
//! server restart usually moves the lease) and every [`EVERY`] after that.
//! Without stranded messages one pass costs one request per group.

use std::time::Duration;

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use futures::StreamExt;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::lease::Leadership;

/// Time between two passes.
pub const EVERY: Duration = Duration::from_secs(30);
/// First pass after taking the lease, once consumers have recovered.
pub const AFTER_TAKEOVER: Duration = Duration::from_secs(5);
/// Longest wait for one request.
const LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum SweepError {
    #[error("cannot list the work stream's consumers: {0}")]
    Consumers(String),
    #[error("cannot read the work stream: {0}")]
    Read(String),
    #[error("cannot delete message {seq} from the work stream: {reason}")]
    Delete { seq: u64, reason: String },
    #[error("the server did not answer within {LIMIT:?}")]
    TimedOut,
}

/// Sweeps while this replica leads, until `shutdown`.
pub async fn run(
    work: Stream,
    mut leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let mut epoch = None;
    let mut next = tokio::time::Instant::now() + EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = leadership.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = leadership.borrow_and_update().valid_epoch();
                if now.is_some() && now != epoch {
                    next = tokio::time::Instant::now() + AFTER_TAKEOVER;
                }
                epoch = now.or(epoch);
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        next = tokio::time::Instant::now() + EVERY;
        if leadership.borrow().valid_epoch().is_none() {
            continue;
        }
        match sweep(&work).await {
            Ok(0) => debug!("no stranded shard messages"),
            Ok(n) => info!(
                removed = n,
                "removed shard messages stranded below their consumer's ack floor"
            ),
            Err(e) => warn!(error = %e, "work stream sweep failed; next pass retries"),
        }
    }
}

/// One pass: deletes every message at or below the ack floor of the
/// consumer whose filter it matches. Returns how many were deleted.
pub async fn sweep(work: &Stream) -> Result<usize, SweepError> {
    let mut floors = Vec::new();
    let mut consumers = work.consumers();
    loop {
        let next = timeout(LIMIT, consumers.next())
            .await
            .map_err(|_| SweepError::TimedOut)?;
        match next {
            None => break,
            Some(Err(e)) => return Err(SweepError::Consumers(e.to_string())),
            Some(Ok(info)) => {
                let floor = info.ack_floor.stream_sequence;
                let mut filters = info.config.filter_subjects.clone();
                if !info.config.filter_subject.is_empty() {
                    filters.push(info.config.filter_subject.clone());
                }
                for f in filters {
                    floors.push((f, floor));
                }
            }
        }
    }
    let mut removed = 0;
    for (filter, floor) in floors {
        let mut from = 1;
        while from <= floor {
            let get = work
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(filter.clone())
                .send();
            let msg = match timeout(LIMIT, get).await {
                Err(_) => return Err(SweepError::TimedOut),
                Ok(Ok(m)) => m,
                Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Ok(Err(e)) => return Err(SweepError::Read(e.to_string())),
            };
            if msg.sequence > floor {
                break;
            }
            let delete = timeout(LIMIT, work.delete_message(msg.sequence))
                .await
                .map_err(|_| SweepError::TimedOut)?;
            match delete {
                Ok(_) => {
                    debug!(seq = msg.sequence, subject = %msg.subject, floor, "stranded shard message removed");
                    removed += 1;
                }
                Err(e) => {
                    return Err(SweepError::Delete {
                        seq: msg.sequence,
                        reason: e.to_string(),
                    });
                }
            }
            from = msg.sequence + 1;
        }
    }
    Ok(removed)
}
