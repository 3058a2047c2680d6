//! What deleting a job does beyond its definition: its shard messages still
//! waiting in the work stream are purged, so that none of them runs when a
//! worker of its group comes back.
//!
//! # Who purges
//!
//! - `job.delete` purges `jetcron.work.*.<job>` (every group: a job may
//!   have moved) right after deleting the definition, whether a leader
//!   runs or not.
//! - The leader purges when its catalog watch sees the deletion, which
//!   also covers a key deleted or purged with the nats CLI. It does so in
//!   a batch of its own after any batch of the job still being stored (see
//!   [`crate::engine`]), so a fire decided just before the delete is
//!   purged once its shards are in the stream, and a job put again under
//!   the same id fires only after the purge.
//! - `job.trigger` and `job.retry` read the definition before they
//!   dispatch, so a delete can fall in between: after dispatching they read
//!   it again, and purge what they stored if it is gone.
//!
//! # Why not the workers
//!
//! Workers never read the jobs bucket: a shard message carries everything
//! a worker needs, workers in any language speak only the work protocol,
//! and one more read per shard would cost every run. Nor is it needed:
//! every way a shard message reaches the stream is covered above, each
//! purge coming after the last message it must remove. Refusing shards
//! whose definition revision changed would be wrong besides: an edit (a
//! pause, a new schedule) must not cancel the fires already dispatched.
//!
//! # What is not undone
//!
//! A shard a worker already holds is not in reach of a purge: one that has
//! started runs to its end and reports, as every execution does; one that
//! fails with retries left gets no retry, since its message is gone (its
//! result says `will_retry`, and its record stays as it was). On a cluster
//! a trigger's second read may come from a replica that has not yet applied
//! a delete made that very moment; the purges of the delete and of the
//! leader then remove its shards unless it stored them after both.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use jetcron_shared::Names;
use thiserror::Error;
use tokio::time::{sleep, timeout};

/// Longest wait for one purge request.
const LIMIT: Duration = Duration::from_secs(1);
/// Purge requests before giving up.
const TRIES: u32 = 3;
/// Pause between two tries.
const PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
#[error("cannot purge the shard messages of job '{job}' ({tries} tries): {last}")]
pub struct PurgeError {
    pub job: String,
    pub tries: u32,
    pub last: String,
}

/// Removes every shard message of `job` from the work stream, in every
/// group and for every handler; returns how many there were.
pub async fn purge_work<I>(work: &Stream<I>, names: &Names, job: &str) -> Result<u64, PurgeError> {
    let mut purged = 0;
    for filter in [names.work_job(job), names.work_job_handlers(job)] {
        purged += purge_filter(work, job, filter).await?;
    }
    Ok(purged)
}

async fn purge_filter<I>(work: &Stream<I>, job: &str, filter: String) -> Result<u64, PurgeError> {
    let mut last = String::new();
    for tries in 1..=TRIES {
        let purge = work.purge().filter(filter.clone());
        match timeout(LIMIT, std::future::IntoFuture::into_future(purge)).await {
            Ok(Ok(r)) => return Ok(r.purged),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {LIMIT:?}"),
        }
        if tries < TRIES {
            sleep(PAUSE).await;
        }
    }
    Err(PurgeError {
        job: job.to_string(),
        tries: TRIES,
        last,
    })
}
