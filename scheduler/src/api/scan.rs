//! Bounded reads with ordered consumers: the latest value of every key
//! under a filter of a KV bucket ([`latest`]), and the last messages of one
//! subject of a stream ([`tail`]).
//!
//! An ordered consumer on the bucket's stream with `LastPerSubject` delivers
//! exactly one message per key; its pending count says how many are left,
//! so the read stops at the last one (at once when nothing matches) instead
//! of waiting for more. Deleted and purged keys are left out.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Ordered;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use futures::StreamExt;
use thiserror::Error;

/// Longest a scan may take.
const LIMIT: Duration = Duration::from_secs(4);

#[derive(Debug, Error)]
pub enum ScanError {
    #[error("cannot read bucket {bucket}: {reason}")]
    Read { bucket: String, reason: String },
    #[error("reading bucket {bucket} took longer than {LIMIT:?}")]
    TimedOut { bucket: String },
    #[error("cannot read {subject} in stream {stream}: {reason}")]
    Subject {
        stream: String,
        subject: String,
        reason: String,
    },
}

/// One key's latest value.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub revision: u64,
    pub value: Bytes,
}

/// Every live key under `filter` (`>` for all, `job.>`, `replica.>`).
pub async fn latest(kv: &kv::Store, filter: &str) -> Result<Vec<Record>, ScanError> {
    match tokio::time::timeout(LIMIT, read(kv, filter)).await {
        Ok(r) => r,
        Err(_) => Err(ScanError::TimedOut {
            bucket: kv.name.clone(),
        }),
    }
}

async fn read(kv: &kv::Store, filter: &str) -> Result<Vec<Record>, ScanError> {
    let err = |e: &dyn std::fmt::Display| ScanError::Read {
        bucket: kv.name.clone(),
        reason: e.to_string(),
    };
    let consumer = kv
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}{filter}", kv.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    let pending = consumer.cached_info().num_pending;
    let mut out = Vec::with_capacity(usize::try_from(pending).unwrap_or(0));
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| err(&e))?;
        let info = msg.info().map_err(|e| err(&e))?;
        let (revision, left) = (info.stream_sequence, info.pending);
        if is_live(msg.headers.as_ref())
            && let Some(key) = msg.subject.strip_prefix(kv.prefix.as_str())
        {
            out.push(Record {
                key: key.to_string(),
                revision,
                value: msg.payload.clone(),
            });
        }
        if left == 0 {
            break;
        }
    }
    Ok(out)
}

/// False for delete and purge markers (by `KV-Operation`, or a server
/// marker such as a max-age removal).
fn is_live(headers: Option<&async_nats::HeaderMap>) -> bool {
    let Some(h) = headers else { return true };
    if h.get("Nats-Marker-Reason").is_some() {
        return false;
    }
    h.get("KV-Operation")
        .is_none_or(|op| op.as_str().eq_ignore_ascii_case("PUT"))
}

/// The payloads of the last `want` messages stored on `subject` (no wildcards), oldest
/// first, in bounded time whatever the stream holds.
///
/// A subject with few messages is read whole. Otherwise the read starts
/// at a sequence below the subject's last message, moved back until the
/// pending count from there covers `want`, so it delivers at most a few
/// times `want` messages however many the subject keeps.
pub async fn tail(stream: &Stream, subject: &str, want: usize) -> Result<Vec<Bytes>, ScanError> {
    let name = stream.cached_info().config.name.clone();
    let err = |e: &dyn std::fmt::Display| ScanError::Subject {
        stream: name.clone(),
        subject: subject.to_string(),
        reason: e.to_string(),
    };
    let read = async {
        let want_u64 = want as u64;
        let consumer = ordered(stream, subject, DeliverPolicy::All)
            .await
            .map_err(|e| err(&e))?;
        let pending = consumer.cached_info().num_pending;
        if pending <= want_u64.saturating_mul(4) {
            return deliver(consumer, want).await.map_err(|e| err(&e));
        }
        let last = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(Vec::new()),
            Err(e) => return Err(err(&e)),
        };
        let mut back = want_u64.saturating_mul(4).max(64);
        loop {
            let start = last.saturating_sub(back).max(1);
            let consumer = ordered(
                stream,
                subject,
                DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
            )
            .await
            .map_err(|e| err(&e))?;
            if consumer.cached_info().num_pending >= want_u64 || start == 1 {
                return deliver(consumer, want).await.map_err(|e| err(&e));
            }
            back = back.saturating_mul(8);
        }
    };
    match tokio::time::timeout(LIMIT, read).await {
        Ok(r) => r,
        Err(_) => Err(err(&format!("took longer than {LIMIT:?}"))),
    }
}

async fn ordered(
    stream: &Stream,
    subject: &str,
    deliver_policy: DeliverPolicy,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>, String> {
    stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// Everything the consumer has pending, keeping the last `want`.
async fn deliver(
    consumer: async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>,
    want: usize,
) -> Result<Vec<Bytes>, String> {
    let mut out = std::collections::VecDeque::with_capacity(want);
    if consumer.cached_info().num_pending == 0 || want == 0 {
        return Ok(Vec::new());
    }
    let mut messages: Ordered = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let left = msg.info().map_err(|e| e.to_string())?.pending;
        if out.len() == want {
            out.pop_front();
        }
        out.push_back(msg.payload.clone());
        if left == 0 {
            break;
        }
    }
    Ok(out.into())
}
