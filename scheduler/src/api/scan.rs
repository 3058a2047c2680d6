//! Reads the latest value of every key under a filter of a KV bucket, in one
//! pass and in bounded time.
//!
//! An ordered consumer on the bucket's stream with `LastPerSubject` delivers
//! exactly one message per key; its pending count says how many are left,
//! so the read stops at the last one (at once when nothing matches) instead
//! of waiting for more. Deleted and purged keys are left out.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::kv;
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
