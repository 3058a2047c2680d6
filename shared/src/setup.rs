//! Creates the buckets and streams jetcron needs, idempotently.
//!
//! Several replicas may start at once: each one looks a resource up, creates
//! it when missing, and looks it up again when the create lost a race or met a
//! resource made with other settings. An existing resource is used as it is;
//! its settings are never changed behind an operator's back.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use thiserror::Error;
use tracing::{debug, warn};

use crate::job::MAX_HISTORY;
use crate::names::Names;

/// Settings of newly created resources.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// Replicas of every bucket and stream (1 for a single server, 3 for a cluster).
    pub replicas: usize,
    /// Lease lifetime; a leader that cannot renew within it loses leadership.
    pub lease_ttl: Duration,
    /// Worker heartbeat lifetime.
    pub worker_ttl: Duration,
    /// How long undelivered shard messages are kept.
    pub work_max_age: Duration,
    /// How long results are kept.
    pub results_max_age: Duration,
    /// How long events are kept.
    pub events_max_age: Duration,
    /// Events kept per subject (`jetcron.events.<kind>.<job>`), oldest
    /// dropped first; -1 keeps all of them for `events_max_age`. At least
    /// [`MAX_HISTORY`]: a job's `fired` events are its run history.
    pub events_per_subject: i64,
    /// Deduplication window of the work stream: a fire re-dispatched within it
    /// (after a failover) is dropped by the server.
    pub duplicate_window: Duration,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            replicas: 1,
            lease_ttl: Duration::from_secs(3),
            worker_ttl: Duration::from_secs(15),
            work_max_age: Duration::from_secs(7 * 24 * 3600),
            results_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_per_subject: i64::from(MAX_HISTORY),
            duplicate_window: Duration::from_secs(10 * 60),
        }
    }
}

#[derive(Debug, Error)]
pub enum SetupError {
    #[error("cannot create or open bucket {bucket}: {reason}")]
    Bucket { bucket: String, reason: String },
    #[error("cannot create or open stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
}

/// Handles on every resource.
#[derive(Debug, Clone)]
pub struct Resources {
    pub js: jetstream::Context,
    pub jobs: kv::Store,
    pub state: kv::Store,
    pub lease: kv::Store,
    pub workers: kv::Store,
    pub runs: kv::Store,
    pub work: stream::Stream,
    pub results: stream::Stream,
    pub events: stream::Stream,
}

/// Creates (or opens) every bucket and stream.
pub async fn ensure(
    js: &jetstream::Context,
    names: &Names,
    opts: &SetupOptions,
) -> Result<Resources, SetupError> {
    let jobs = ensure_bucket(
        js,
        kv::Config {
            bucket: names.jobs_bucket(),
            description: "jetcron job definitions, key = job id".into(),
            history: 5,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let state = ensure_bucket(
        js,
        kv::Config {
            bucket: names.state_bucket(),
            description: "jetcron per-job fire state".into(),
            history: 1,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let lease = ensure_bucket(
        js,
        kv::Config {
            bucket: names.lease_bucket(),
            description: "jetcron leader lease".into(),
            history: 1,
            max_age: opts.lease_ttl,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let workers = ensure_bucket(
        js,
        kv::Config {
            bucket: names.workers_bucket(),
            description: "jetcron worker heartbeats".into(),
            history: 1,
            max_age: opts.worker_ttl,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let runs = ensure_bucket(
        js,
        kv::Config {
            bucket: names.runs_bucket(),
            description: "jetcron run history: fire and shard records".into(),
            history: 1,
            max_age: opts.results_max_age,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let work = ensure_stream(
        js,
        stream::Config {
            name: names.work_stream(),
            description: Some("jetcron shard messages, one per shard per fire".into()),
            subjects: vec![names.work_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: opts.work_max_age,
            duplicate_window: opts.duplicate_window,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let results = ensure_stream(
        js,
        stream::Config {
            name: names.results_stream(),
            description: Some("jetcron run results, one per shard attempt".into()),
            subjects: vec![names.results_all()],
            max_age: opts.results_max_age,
            duplicate_window: Duration::from_secs(120),
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let events = ensure_stream(
        js,
        stream::Config {
            name: names.events_stream(),
            description: Some("jetcron events: fired, misfired, dead, invalid, leader".into()),
            subjects: vec![names.events_all()],
            max_age: opts.events_max_age,
            max_messages_per_subject: opts.events_per_subject,
            // As long as the work stream's: a successor that redoes a dead
            // leader's last fire sends its events again, deduplicated.
            duplicate_window: opts.duplicate_window,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(Resources {
        js: js.clone(),
        jobs,
        state,
        lease,
        workers,
        runs,
        work,
        results,
        events,
    })
}

async fn ensure_bucket(js: &jetstream::Context, cfg: kv::Config) -> Result<kv::Store, SetupError> {
    let bucket = cfg.bucket.clone();
    let err = |reason: String| SetupError::Bucket {
        bucket: bucket.clone(),
        reason,
    };
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    match js.create_key_value(cfg).await {
        Ok(store) => {
            debug!(bucket, "created bucket");
            Ok(store)
        }
        Err(create) => match js.get_key_value(&bucket).await {
            Ok(store) => {
                warn!(bucket, %create, "bucket exists with other settings; using it as it is");
                Ok(store)
            }
            Err(_) => Err(err(create.to_string())),
        },
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    cfg: stream::Config,
) -> Result<stream::Stream, SetupError> {
    let name = cfg.name.clone();
    if let Ok(s) = js.get_stream(&name).await {
        return Ok(s);
    }
    match js.create_stream(cfg).await {
        Ok(s) => {
            debug!(stream = name, "created stream");
            Ok(s)
        }
        Err(create) => match js.get_stream(&name).await {
            Ok(s) => {
                warn!(stream = name, %create, "stream exists with other settings; using it as it is");
                Ok(s)
            }
            Err(_) => Err(SetupError::Stream {
                stream: name,
                reason: create.to_string(),
            }),
        },
    }
}
