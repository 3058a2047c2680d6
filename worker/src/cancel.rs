//! Cancellation of replaced fires (`overlap: replace`).
//!
//! When a newer fire of a job replaces a running one, the leader publishes
//! a `replaced` event on `jetcron.events.replaced.<job>` naming the newer
//! fire's instant, `by`. The rule for workers:
//!
//! - Every shard of that job whose instant is before `by` is cancelled;
//!   shards of other jobs, and shards with an instant at or after `by`,
//!   are untouched.
//! - A delivery of a cancelled shard does not run it: it ends `cancelled`,
//!   unrun, like an expired shard (a result with a run id of its own and no
//!   exit code, the final record, the end notice if tracked, `+TERM`; no
//!   `dead` event). A shard whose record is already final is acked as
//!   always.
//! - A running attempt of a cancelled shard is stopped the way a timeout
//!   stops it (SIGTERM to its process group, SIGKILL after the kill
//!   grace), then ends `cancelled` with no retry, reported and settled
//!   like the unrun case.
//!
//! Each worker keeps, per job, the latest `by` it has seen (the largest;
//! replaces are never undone). [`follow`] feeds it from an ordered
//! consumer on the events stream that starts with the last `replaced`
//! event of every job, so a worker started later knows every replace still
//! stored, and is opened again whenever it fails. A worker starts pulling
//! once that first read is done (or after [`LOAD_LIMIT`]).
//!
//! A shard delivered before its worker learns of the replace starts, and is
//! stopped as soon as the event arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, ReplayPolicy, pull},
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jetcron_shared::Names;
use jetcron_shared::wire::{Event, EventBody};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;

/// Longest a worker waits, before it pulls, for the `replaced` events
/// already stored.
pub const LOAD_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum CancelError {
    #[error("cannot read the replaced events of stream {stream}: {reason}")]
    Follow { stream: String, reason: String },
    #[error("the replaced events of stream {stream} ended")]
    Ended { stream: String },
}

/// What the worker knows of replaced fires.
#[derive(Debug, Default)]
struct Seen {
    /// Per job, the latest instant that replaced its older fires.
    latest: HashMap<String, DateTime<Utc>>,
    /// The events stored when the worker started have all been read.
    loaded: bool,
}

/// The latest replace per job, shared by the follower and every attempt.
#[derive(Debug, Clone)]
pub struct Replacements {
    seen: Arc<watch::Sender<Seen>>,
}

impl Default for Replacements {
    fn default() -> Replacements {
        Replacements {
            seen: Arc::new(watch::Sender::new(Seen::default())),
        }
    }
}

impl Replacements {
    /// Notes that the fire of `by` replaced the older fires of `job`;
    /// true when that moves the job's latest replace.
    pub fn replaced(&self, job: &str, by: DateTime<Utc>) -> bool {
        self.seen
            .send_if_modified(|seen| match seen.latest.get_mut(job) {
                Some(latest) if *latest >= by => false,
                Some(latest) => {
                    *latest = by;
                    true
                }
                None => {
                    seen.latest.insert(job.to_string(), by);
                    true
                }
            })
    }

    /// The instant of the fire that replaced the fire of `job` at
    /// `instant`, if one did.
    pub fn replaced_by(&self, job: &str, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        replacing(&self.seen.borrow(), job, instant)
    }

    /// Completes when the fire of `job` at `instant` is replaced, with the
    /// instant of the fire replacing it.
    pub async fn until_replaced(&self, job: &str, instant: DateTime<Utc>) -> DateTime<Utc> {
        let mut seen = self.seen.subscribe();
        let by = match seen
            .wait_for(|s| replacing(s, job, instant).is_some())
            .await
        {
            Ok(s) => replacing(&s, job, instant),
            // Never: `self` holds the sender.
            Err(_) => None,
        };
        match by {
            Some(by) => by,
            None => std::future::pending().await,
        }
    }

    /// Marks the events stored at start as read.
    fn mark_loaded(&self) {
        self.seen
            .send_if_modified(|seen| !std::mem::replace(&mut seen.loaded, true));
    }

    /// Completes once the events stored at start have been read.
    pub async fn loaded(&self) {
        let mut seen = self.seen.subscribe();
        let _ = seen.wait_for(|s| s.loaded).await;
    }
}

fn replacing(seen: &Seen, job: &str, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
    seen.latest.get(job).copied().filter(|by| *by > instant)
}

/// Reads the `replaced` events into `replacements` until `stop` fires;
/// reopens the consumer, from the last event of every job, when it fails.
pub async fn follow(
    js: jetstream::Context,
    names: Names,
    replacements: Replacements,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let read = read_once(&js, &names, &replacements, &mut backoff);
        let failed = tokio::select! {
            _ = stop.cancelled() => return,
            failed = read => failed,
        };
        warn!(error = %failed, "following replaced events failed; reopening");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One ordered consumer, from the last `replaced` event of every job on;
/// returns only when it fails.
async fn read_once(
    js: &jetstream::Context,
    names: &Names,
    replacements: &Replacements,
    backoff: &mut Backoff,
) -> CancelError {
    let stream = names.events_stream();
    let fail = |e: &dyn std::fmt::Display| CancelError::Follow {
        stream: stream.clone(),
        reason: e.to_string(),
    };
    let events = match js.get_stream(&stream).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let consumer = match events
        .create_consumer(pull::OrderedConfig {
            filter_subject: names.replaced_all(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if consumer.cached_info().num_pending == 0 {
        replacements.mark_loaded();
    }
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    backoff.reset();
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(m) => m,
            Err(e) => return fail(&e),
        };
        match Event::decode(&message.payload) {
            Ok(Event {
                body: EventBody::Replaced { job, by, .. },
                ..
            }) => {
                if replacements.replaced(&job, by) {
                    info!(job, %by, "fires of the job before {by} are cancelled");
                }
            }
            Ok(other) => debug!(kind = other.kind(), "not a replaced event; ignored"),
            Err(e) => {
                warn!(subject = %message.subject, error = %e, "malformed replaced event; ignored")
            }
        }
        if message.info().is_ok_and(|i| i.pending == 0) {
            replacements.mark_loaded();
        }
    }
    CancelError::Ended { stream }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, secs).unwrap()
    }

    #[test]
    fn a_replace_cancels_only_older_fires_of_its_job() {
        let r = Replacements::default();
        assert_eq!(r.replaced_by("sync", at(0)), None);
        assert!(r.replaced("sync", at(10)));
        assert_eq!(r.replaced_by("sync", at(0)), Some(at(10)));
        assert_eq!(r.replaced_by("sync", at(9)), Some(at(10)));
        // The replacing fire itself, and later ones, run.
        assert_eq!(r.replaced_by("sync", at(10)), None);
        assert_eq!(r.replaced_by("sync", at(11)), None);
        // Other jobs are untouched.
        assert_eq!(r.replaced_by("other", at(0)), None);
    }

    #[test]
    fn the_latest_replace_is_kept() {
        let r = Replacements::default();
        assert!(r.replaced("sync", at(20)));
        // An older event read late (a reopened consumer) changes nothing.
        assert!(!r.replaced("sync", at(10)));
        assert!(!r.replaced("sync", at(20)));
        assert_eq!(r.replaced_by("sync", at(15)), Some(at(20)));
        assert!(r.replaced("sync", at(30)));
        assert_eq!(r.replaced_by("sync", at(25)), Some(at(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_fire_learns_of_its_replace() {
        let r = Replacements::default();
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.until_replaced("sync", at(10)).await }
        });
        tokio::task::yield_now().await;
        // Neither another job nor a fire before this one's replaces it.
        r.replaced("other", at(50));
        r.replaced("sync", at(5));
        r.replaced("sync", at(10));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        r.replaced("sync", at(11));
        assert_eq!(waiting.await.unwrap(), at(11));
        // Already replaced: at once.
        assert_eq!(r.until_replaced("sync", at(0)).await, at(11));
    }

    #[tokio::test(start_paused = true)]
    async fn loaded_completes_once_marked() {
        let r = Replacements::default();
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.loaded().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        r.mark_loaded();
        waiting.await.unwrap();
        r.loaded().await;
    }
}
