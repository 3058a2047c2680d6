//! Heartbeats: who is alive in which group, and how busy it is.
//!
//! A worker puts its [`WorkerHeartbeat`] under `<group>.<id>` in the workers
//! bucket at start and then every heartbeat interval. The bucket's max age
//! does the rest: the key of a worker that died (or lost the server) expires
//! by itself. So the interval is kept to at most a third of that max age,
//! and two heartbeats in a row may be lost before a live worker disappears.
//! A worker that stops gracefully deletes its key, so it disappears at once.
//!
//! A heartbeat that fails (server down) is logged and tried again at the next
//! tick: heartbeats never stop a worker.

use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::runs::{self, WorkerHeartbeat};
use prometheus_client::metrics::gauge::Gauge;
use thiserror::Error;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{WorkerConfig, hostname};

/// Longest wait for the goodbye (the delete of the key) at shutdown.
pub const REMOVE_LIMIT: Duration = Duration::from_secs(2);
/// Shortest wait for one heartbeat's ack; longer intervals wait that long.
const PUT_LIMIT_MIN: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum HeartbeatError {
    #[error("cannot put heartbeat {key}: {reason}")]
    Put { key: String, reason: String },
    #[error("cannot delete heartbeat {key}: {reason}")]
    Delete { key: String, reason: String },
    #[error("heartbeat {key}: no answer within {limit:?}")]
    TimedOut { key: String, limit: Duration },
}

/// Shards running now on this worker. Clones count the same runs.
#[derive(Debug, Clone, Default)]
pub struct RunCount(Gauge);

impl RunCount {
    /// Counts in `gauge` (the metrics' `jetcron_worker_running`).
    pub fn new(gauge: Gauge) -> RunCount {
        RunCount(gauge)
    }

    /// Counts one more run until the guard is dropped.
    pub fn enter(&self) -> RunGuard {
        self.0.inc();
        RunGuard(self.0.clone())
    }

    pub fn get(&self) -> usize {
        usize::try_from(self.0.get()).unwrap_or(0)
    }
}

/// One run counted by a [`RunCount`].
#[derive(Debug)]
pub struct RunGuard(Gauge);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The interval to use: `wanted`, unless that would let the key of a live
/// worker expire (more than a third of the bucket's `max_age`; zero means
/// keys never expire).
pub fn effective_interval(wanted: Duration, max_age: Duration) -> Duration {
    if max_age.is_zero() {
        wanted
    } else {
        wanted.min(max_age / 3)
    }
}

/// The heartbeat of one worker.
#[derive(Debug)]
pub struct Heartbeat {
    store: kv::Store,
    key: String,
    beat: WorkerHeartbeat,
    running: RunCount,
    every: Duration,
}

impl Heartbeat {
    /// `store` is the workers bucket; `running` counts this worker's runs.
    pub fn new(
        store: kv::Store,
        names: &Names,
        config: &WorkerConfig,
        running: RunCount,
        started_at: DateTime<Utc>,
        handlers: Vec<String>,
    ) -> Heartbeat {
        let max_age = store.stream.cached_info().config.max_age;
        let every = effective_interval(config.heartbeat_interval, max_age);
        if max_age.is_zero() {
            warn!(
                bucket = store.name,
                "the workers bucket has no max age: heartbeats of dead workers never expire"
            );
        } else if every < config.heartbeat_interval {
            warn!(
                bucket = store.name,
                max_age = ?max_age,
                wanted = ?config.heartbeat_interval,
                using = ?every,
                "heartbeat interval too long for the workers bucket; using a third of its max age"
            );
        }
        Heartbeat {
            key: names.worker_key(&config.group, &config.id),
            beat: WorkerHeartbeat {
                id: config.id.clone(),
                group: config.group.clone(),
                host: hostname(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                concurrency: config.concurrency,
                running: 0,
                started_at,
                last_heartbeat: started_at,
                handlers,
            },
            store,
            running,
            every,
        }
    }

    /// Key of this worker in the workers bucket.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Time between two heartbeats, after clamping.
    pub fn interval(&self) -> Duration {
        self.every
    }

    /// What the next heartbeat says.
    pub fn current(&self) -> WorkerHeartbeat {
        WorkerHeartbeat {
            running: self.running.get(),
            last_heartbeat: Utc::now(),
            ..self.beat.clone()
        }
    }

    /// Puts one heartbeat now.
    pub async fn beat(&self) -> Result<(), HeartbeatError> {
        let body = runs::encode(&self.current());
        let limit = self.every.max(PUT_LIMIT_MIN);
        match timeout(limit, self.store.put(&self.key, body.into())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(HeartbeatError::Put {
                key: self.key.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(HeartbeatError::TimedOut {
                key: self.key.clone(),
                limit,
            }),
        }
    }

    /// Puts a heartbeat at once and then every interval, until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let mut ticks = interval(self.every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let beat = async {
                ticks.tick().await;
                self.beat().await
            };
            let done = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                done = beat => done,
            };
            match done {
                Ok(()) if failing => {
                    info!(key = self.key, "heartbeats stored again");
                    failing = false;
                }
                Ok(()) => debug!(key = self.key, "heartbeat"),
                Err(e) if failing => debug!(error = %e, "heartbeat failed again"),
                Err(e) => {
                    warn!(error = %e, "heartbeat failed; trying again at the next tick");
                    failing = true;
                }
            }
        }
    }

    /// Deletes the key, so that the worker disappears at once.
    pub async fn remove(&self) -> Result<(), HeartbeatError> {
        match timeout(REMOVE_LIMIT, self.store.delete(&self.key)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HeartbeatError::Delete {
                key: self.key.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(HeartbeatError::TimedOut {
                key: self.key.clone(),
                limit: REMOVE_LIMIT,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_stays_within_a_third_of_the_max_age() {
        let s = Duration::from_secs;
        assert_eq!(effective_interval(s(5), s(15)), s(5));
        assert_eq!(effective_interval(s(1), s(3)), s(1));
        assert_eq!(effective_interval(s(5), s(3)), s(1));
        assert_eq!(effective_interval(s(10), s(15)), s(5));
        assert_eq!(effective_interval(s(60), Duration::ZERO), s(60));
    }

    #[test]
    fn runs_are_counted_while_their_guards_live() {
        let count = RunCount::default();
        let a = count.enter();
        let b = count.clone().enter();
        assert_eq!(count.get(), 2);
        drop(a);
        assert_eq!(count.get(), 1);
        drop(b);
        assert_eq!(count.get(), 0);
    }
}
