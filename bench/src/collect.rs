//! The measuring end: a JetStream pull consumer that stamps every fire it
//! receives with the local clock and acks it.
//!
//! Both systems are measured here the same way: jetcron's shard messages on
//! the work stream, and the messages NATS-native schedules produce. Each
//! arrival is reduced to (job index, scheduled instant, receive time,
//! leader epoch); lateness is receive time minus scheduled instant, both on
//! this machine's clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use chrono::Utc;
use futures::StreamExt;
use jetcron_shared::wire::ShardMessage;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::error::{BenchError, Result};
use crate::native;

/// One fire as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The job (or native schedule) index, from its id.
    pub key: u32,
    /// The scheduled instant, Unix ms.
    pub instant_ms: i64,
    /// When the bench received it, Unix ms.
    pub recv_ms: i64,
    /// The leader epoch that dispatched it (0 for native schedules).
    pub epoch: u64,
}

impl Arrival {
    pub fn lateness_ms(&self) -> i64 {
        self.recv_ms - self.instant_ms
    }
}

/// What the consumed messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// jetcron shard messages (`ShardMessage` JSON).
    Jetcron,
    /// Messages produced by a native schedule repeating every `period_ms`.
    Native { period_ms: i64 },
}

/// The index in a bench job id such as `lat-0000042`.
pub fn key_of(id: &str) -> Option<u32> {
    id.rsplit(['-', '.']).next()?.parse().ok()
}

#[derive(Debug, Default)]
struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicUsize,
    undecodable: AtomicUsize,
}

/// A running consumer task.
#[derive(Debug)]
pub struct Collector {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<Option<String>>,
}

impl Collector {
    /// Creates the durable pull consumer `name` on `stream` for `filter`
    /// and starts receiving.
    pub async fn start(
        js: &jetstream::Context,
        stream: &str,
        name: &str,
        filter: &str,
        source: Source,
    ) -> Result<Collector> {
        let what = format!("consumer {name} on {stream}");
        let s = timeout(Duration::from_secs(10), js.get_stream(stream))
            .await
            .map_err(|_| BenchError::timeout(format!("opening {stream}"), Duration::from_secs(10)))?
            .map_err(|e| BenchError::nats(format!("opening {stream}"), e))?;
        let config = pull::Config {
            durable_name: Some(name.to_string()),
            filter_subject: filter.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 200_000,
            ..Default::default()
        };
        let consumer = timeout(Duration::from_secs(10), s.create_consumer(config))
            .await
            .map_err(|_| BenchError::timeout(what.clone(), Duration::from_secs(10)))?
            .map_err(|e| BenchError::nats(what.clone(), e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(2_000)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| BenchError::nats(what, e))?;
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(receive(messages, source, shared.clone(), stop.clone()));
        Ok(Collector { shared, stop, task })
    }

    /// Fires received so far.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Messages that did not decode (should stay 0).
    pub fn undecodable(&self) -> usize {
        self.shared.undecodable.load(Ordering::Relaxed)
    }

    /// A copy of every arrival so far.
    pub fn snapshot(&self) -> Vec<Arrival> {
        self.shared
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Arrivals from index `from` on (in receive order).
    pub fn since(&self, from: usize) -> Vec<Arrival> {
        self.shared
            .arrivals
            .lock()
            .map(|a| a.get(from..).map(<[Arrival]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits until at least `n` fires arrived; false after `limit`.
    pub async fn wait_count(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits for the first arrival after index `from` that satisfies `pred`.
    pub async fn wait_for(
        &self,
        from: usize,
        limit: Duration,
        pred: impl Fn(&Arrival) -> bool,
    ) -> Option<Arrival> {
        let deadline = Instant::now() + limit;
        let mut seen = from;
        loop {
            let new = self.since(seen);
            seen += new.len();
            if let Some(a) = new.into_iter().find(|a| pred(a)) {
                return Some(a);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops receiving and hands back every arrival.
    pub async fn stop(self) -> Result<Vec<Arrival>> {
        self.stop.cancel();
        match timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(e))) => return Err(BenchError::nats("receiving fires", e)),
            Ok(Err(e)) => return Err(BenchError::nats("receiving fires", e)),
            Err(_) => {
                return Err(BenchError::timeout(
                    "stopping the consumer",
                    Duration::from_secs(10),
                ));
            }
        }
        let arrivals = self
            .shared
            .arrivals
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        Ok(arrivals)
    }
}

/// The receive loop; returns the error that ended it, if any.
async fn receive(
    mut messages: pull::Stream,
    source: Source,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Option<String> {
    // Native: the instant of a schedule's next fire is the `Nats-Schedule-Next`
    // of its previous one.
    let mut next_of: HashMap<u32, i64> = HashMap::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return None,
            m = messages.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Missed heartbeats and the like: the stream goes on.
                tracing::debug!(error = %e, "consumer stream error");
                continue;
            }
            None => return Some("the consumer stream ended".into()),
        };
        let recv_ms = Utc::now().timestamp_millis();
        let arrival = match source {
            Source::Jetcron => ShardMessage::decode(&msg.payload).ok().and_then(|m| {
                Some(Arrival {
                    key: key_of(&m.job)?,
                    instant_ms: m.instant.timestamp_millis(),
                    recv_ms,
                    epoch: m.epoch,
                })
            }),
            Source::Native { period_ms } => {
                native::fire_of(msg.headers.as_ref()).map(|(key, next_ms)| {
                    let instant_ms = next_of.get(&key).copied().unwrap_or(next_ms - period_ms);
                    next_of.insert(key, next_ms);
                    Arrival {
                        key,
                        instant_ms,
                        recv_ms,
                        epoch: 0,
                    }
                })
            }
        };
        match arrival {
            Some(a) => {
                if let Ok(mut v) = shared.arrivals.lock() {
                    v.push(a);
                }
                shared.count.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                shared.undecodable.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = msg.ack().await {
            tracing::debug!(error = %e, "ack failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_id_suffix() {
        assert_eq!(key_of("lat-0000042"), Some(42));
        assert_eq!(key_of("nsched.7"), Some(7));
        assert_eq!(key_of("probe"), None);
    }
}
