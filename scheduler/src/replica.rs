//! Replica heartbeats: each scheduler replica keeps a key `replica.<id>` in
//! the lease bucket, refreshed every second; the bucket's max age removes
//! the key of a replica that died. `status` lists them, with whether each
//! is warm: it holds every definition and fire state, so as a standby it
//! takes over at once (a replica just started is still loading them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::Utc;
use jetcron_shared::runs::{self, ReplicaHeartbeat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::catalog::JobIndex;
use crate::lease::Leadership;

const EVERY: Duration = Duration::from_secs(1);

/// What a heartbeat reports of this replica besides its identity.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub leadership: watch::Receiver<Leadership>,
    /// The job index has read the whole jobs bucket.
    pub index: JobIndex,
    /// The engine's fire states are current.
    pub states_current: Arc<AtomicBool>,
}

/// Beats until `shutdown`, then deletes the key.
pub async fn beat(
    kv: kv::Store,
    key: String,
    id: String,
    ready: Readiness,
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
            leader: ready.leadership.borrow().valid_epoch().is_some(),
            warm: ready.index.progress().loaded && ready.states_current.load(Ordering::Acquire),
        };
        let put = tokio::time::timeout(EVERY, kv.put(&key, Bytes::from(runs::encode(&hb))));
        if !matches!(put.await, Ok(Ok(_))) {
            debug!("replica heartbeat not written; next tick retries");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), kv.delete(&key)).await;
}
