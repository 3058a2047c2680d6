//! Replica heartbeats: each scheduler replica keeps a key `replica.<id>` in
//! the lease bucket, refreshed every second; the bucket's max age removes
//! the key of a replica that died. `status` lists them.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::Utc;
use jetcron_shared::runs::{self, ReplicaHeartbeat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::lease::Leadership;

const EVERY: Duration = Duration::from_secs(1);

/// Beats until `shutdown`, then deletes the key.
pub async fn beat(
    kv: kv::Store,
    key: String,
    id: String,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let started_at = Utc::now();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let hb = ReplicaHeartbeat {
            id: id.clone(),
            host: host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at,
            last_heartbeat: Utc::now(),
            leader: leadership.borrow().valid_epoch().is_some(),
        };
        let put = tokio::time::timeout(EVERY, kv.put(&key, Bytes::from(runs::encode(&hb))));
        if !matches!(put.await, Ok(Ok(_))) {
            debug!("replica heartbeat not written; next tick retries");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), kv.delete(&key)).await;
}
