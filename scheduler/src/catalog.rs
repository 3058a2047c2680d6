//! Watches the jobs bucket and turns every change into a [`CatalogEvent`].
//!
//! Every replica watches, leader or not, so that a standby already knows
//! every job when it takes over. Definitions that do not decode or validate
//! (written straight into KV) are reported with an `invalid` event and a log
//! line; they never reach the timer, and every other job keeps firing. A
//! broken watch (server restart) is re-established from a full snapshot.
//!
//! Every entry is also applied to the [`JobIndex`] ([`index`]) before the
//! engine hears of it, so that the control API lists and counts jobs from
//! memory.

mod index;

pub use index::{Counts, Def, GroupCount, JobIndex, Listed, Page, Progress, Query};

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Entry, Operation};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use jetcron_shared::wire::{Event, EventBody};
use jetcron_shared::{Definition, JobError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::events::Events;

#[derive(Debug, Clone)]
pub enum CatalogEvent {
    /// A valid definition, new or changed.
    Upsert {
        job: Arc<Definition>,
        revision: u64,
        /// When this revision was written (server time).
        written: DateTime<Utc>,
    },
    /// The job was deleted or purged.
    Remove { id: String },
    /// What is stored under `id` does not decode or validate.
    Invalid {
        id: String,
        revision: u64,
        error: JobError,
    },
}

impl CatalogEvent {
    pub fn id(&self) -> &str {
        match self {
            CatalogEvent::Upsert { job, .. } => job.id(),
            CatalogEvent::Remove { id } | CatalogEvent::Invalid { id, .. } => id,
        }
    }
}

/// Decodes one watched entry.
pub fn classify(entry: &Entry) -> CatalogEvent {
    if entry.operation != Operation::Put {
        return CatalogEvent::Remove {
            id: entry.key.clone(),
        };
    }
    match Definition::decode(&entry.value, Some(&entry.key)) {
        Ok(job) => CatalogEvent::Upsert {
            job: Arc::new(job),
            revision: entry.revision,
            written: to_chrono(entry.created),
        },
        Err(error) => CatalogEvent::Invalid {
            id: entry.key.clone(),
            revision: entry.revision,
            error,
        },
    }
}

fn to_chrono(t: time::OffsetDateTime) -> DateTime<Utc> {
    let nanos = t.unix_timestamp_nanos();
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// Runs the watch until `shutdown`, keeping `index` current and sending
/// events on `tx`.
pub async fn watch(
    kv: kv::Store,
    events: Events,
    index: JobIndex,
    tx: mpsc::Sender<CatalogEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let watch = tokio::select! {
            w = kv.watch_with_history(">") => w,
            _ = shutdown.cancelled() => return,
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the jobs bucket; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // An empty bucket delivers nothing, not even the end of its history:
        // asked after the watch began, it is complete at once.
        let info = tokio::select! {
            i = kv.stream.get_info() => i,
            _ = shutdown.cancelled() => return,
        };
        let empty = match info {
            Ok(info) => info.state.messages == 0,
            Err(e) => {
                warn!(error = %e, "cannot read the jobs bucket's stream info; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        index.begin_read();
        let mut read_complete = empty;
        if read_complete {
            index.read_complete();
        }
        loop {
            let next = tokio::select! {
                n = watch.next() => n,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Some(Ok(entry)) => {
                    let ev = classify(&entry);
                    index.apply(entry.revision, &ev);
                    if !read_complete && entry.seen_current {
                        read_complete = true;
                        index.read_complete();
                    }
                    if let CatalogEvent::Invalid {
                        id,
                        revision,
                        error: err,
                    } = &ev
                    {
                        error!(job = %id, revision, error = %err, "invalid job definition");
                        let event = Event::now(EventBody::Invalid {
                            job: id.clone(),
                            revision: *revision,
                            error: err.to_string(),
                        });
                        // Every replica reports it; the id keeps one copy.
                        events
                            .publish(&event, Some(format!("invalid:{id}:{revision}")))
                            .await;
                    }
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "jobs watch failed; re-reading the bucket");
                    break;
                }
                None => {
                    warn!("jobs watch ended; re-reading the bucket");
                    break;
                }
            }
        }
    }
}
