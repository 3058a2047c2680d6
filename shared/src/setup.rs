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

use crate::job::{MAX_HISTORY, parse_flag_duration};
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
    /// Most bytes of results kept, oldest dropped first; -1 for no limit.
    pub results_max_bytes: i64,
    /// How long events are kept.
    pub events_max_age: Duration,
    /// Most bytes of events kept, oldest dropped first; -1 for no limit.
    pub events_max_bytes: i64,
    /// Events kept per subject (`jetcron.events.<kind>.<job>`), oldest
    /// dropped first; -1 keeps all of them for `events_max_age`. At least
    /// [`MAX_HISTORY`]: a job's `fired` events are its run history.
    pub events_per_subject: i64,
    /// Deduplication window of the work stream: a fire re-dispatched within it
    /// (after a failover) is dropped by the server.
    pub duplicate_window: Duration,
}

const GIB: i64 = 1 << 30;

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            replicas: 1,
            lease_ttl: Duration::from_secs(3),
            worker_ttl: Duration::from_secs(15),
            work_max_age: Duration::from_secs(7 * 24 * 3600),
            results_max_age: Duration::from_secs(7 * 24 * 3600),
            results_max_bytes: GIB,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: GIB / 2,
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
    pub ends: stream::Stream,
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
        None,
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
        None,
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
        None,
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
        None,
    )
    .await?;
    let runs = ensure_bucket(
        js,
        kv::Config {
            bucket: names.runs_bucket(),
            description: "jetcron run history: fire and shard records".into(),
            history: 1,
            max_age: opts.results_max_age,
            max_bytes: opts.results_max_bytes,
            num_replicas: opts.replicas,
            ..Default::default()
        },
        Some("--results-max-bytes"),
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
        None,
    )
    .await?;
    let ends = ensure_stream(
        js,
        stream::Config {
            name: names.ends_stream(),
            description: Some(
                "jetcron end notices: the last result of each shard of a tracked fire".into(),
            ),
            subjects: vec![names.ends_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: opts.work_max_age,
            duplicate_window: opts.duplicate_window,
            num_replicas: opts.replicas,
            ..Default::default()
        },
        None,
    )
    .await?;
    let results = ensure_stream(
        js,
        stream::Config {
            name: names.results_stream(),
            description: Some("jetcron run results, one per shard attempt".into()),
            subjects: vec![names.results_all()],
            max_age: opts.results_max_age,
            max_bytes: opts.results_max_bytes,
            duplicate_window: Duration::from_secs(120),
            num_replicas: opts.replicas,
            ..Default::default()
        },
        Some("--results-max-bytes"),
    )
    .await?;
    let events = ensure_stream(
        js,
        stream::Config {
            name: names.events_stream(),
            description: Some("jetcron events: fired, misfired, dead, invalid, leader".into()),
            subjects: vec![names.events_all()],
            max_age: opts.events_max_age,
            max_bytes: opts.events_max_bytes,
            max_messages_per_subject: opts.events_per_subject,
            // As long as the work stream's: a successor that redoes a dead
            // leader's last fire sends its events again, deduplicated.
            duplicate_window: opts.duplicate_window,
            num_replicas: opts.replicas,
            ..Default::default()
        },
        Some("--events-max-bytes"),
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
        ends,
        results,
        events,
    })
}

/// How long and how much the results and events streams keep, as flags of
/// every binary that may create them (the scheduler and the worker).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RetentionArgs {
    /// How long results are kept, used when the results stream is created.
    #[arg(long, env = "JETCRON_RESULTS_MAX_AGE", default_value = "7days", value_parser = parse_flag_duration)]
    pub results_max_age: Duration,
    /// Most bytes of results kept (oldest dropped first; -1: no limit), used
    /// when the results stream is created.
    #[arg(long, env = "JETCRON_RESULTS_MAX_BYTES", default_value = "1GiB", value_parser = parse_flag_bytes, allow_hyphen_values = true)]
    pub results_max_bytes: i64,
    /// How long events are kept, used when the events stream is created.
    #[arg(long, env = "JETCRON_EVENTS_MAX_AGE", default_value = "7days", value_parser = parse_flag_duration)]
    pub events_max_age: Duration,
    /// Most bytes of events kept (oldest dropped first; -1: no limit), used
    /// when the events stream is created.
    #[arg(long, env = "JETCRON_EVENTS_MAX_BYTES", default_value = "512MiB", value_parser = parse_flag_bytes, allow_hyphen_values = true)]
    pub events_max_bytes: i64,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        let d = SetupOptions::default();
        RetentionArgs {
            results_max_age: d.results_max_age,
            results_max_bytes: d.results_max_bytes,
            events_max_age: d.events_max_age,
            events_max_bytes: d.events_max_bytes,
        }
    }
}

impl RetentionArgs {
    /// `opts` with these limits.
    pub fn apply(&self, opts: SetupOptions) -> SetupOptions {
        SetupOptions {
            results_max_age: self.results_max_age,
            results_max_bytes: self.results_max_bytes,
            events_max_age: self.events_max_age,
            events_max_bytes: self.events_max_bytes,
            ..opts
        }
    }
}

/// Parses a size flag: bytes (`1048576`), or a number with a unit: `KB`,
/// `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of
/// 1024), in any case; `-1` or `unlimited` for no limit.
pub fn parse_flag_bytes(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if t == "-1" || t.eq_ignore_ascii_case("unlimited") {
        return Ok(-1);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || format!("'{text}' is not a size; use e.g. 512MiB, 4GiB, 1GB, or -1 for no limit");
    let n: i64 = number.parse().map_err(|_| bad())?;
    let scale: i64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(bad()),
        Some(bytes) => Ok(bytes),
    }
}

/// The flag that bounds a resource's bytes, named when the server cannot
/// reserve them.
type BoundFlag = Option<&'static str>;

/// `reason` with a way out when the server refused the resource because its
/// file store cannot reserve `max_bytes` more (error code 10047).
fn explain(reason: String, max_bytes: i64, flag: BoundFlag) -> String {
    if !reason.contains("10047") || max_bytes <= 0 {
        return reason;
    }
    let way = match flag {
        Some(flag) => format!("lower {flag} or raise"),
        None => "raise".to_owned(),
    };
    format!(
        "{reason}; the server's JetStream file store cannot reserve {max_bytes} more bytes for it: \
         {way} max_file_store in the server's jetstream config (its default is 75% of the disk's free space)"
    )
}

async fn ensure_bucket(
    js: &jetstream::Context,
    cfg: kv::Config,
    flag: BoundFlag,
) -> Result<kv::Store, SetupError> {
    let bucket = cfg.bucket.clone();
    let max_bytes = cfg.max_bytes;
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
            Err(_) => Err(err(explain(create.to_string(), max_bytes, flag))),
        },
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    cfg: stream::Config,
    flag: BoundFlag,
) -> Result<stream::Stream, SetupError> {
    let name = cfg.name.clone();
    let max_bytes = cfg.max_bytes;
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
                reason: explain(create.to_string(), max_bytes, flag),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_their_units() {
        assert_eq!(parse_flag_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_flag_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_flag_bytes("4 gib"), Ok(4 << 30));
        assert_eq!(parse_flag_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_flag_bytes("2kb"), Ok(2_000));
        assert_eq!(parse_flag_bytes("-1"), Ok(-1));
        assert_eq!(parse_flag_bytes("Unlimited"), Ok(-1));
        for bad in [
            "",
            "GiB",
            "0",
            "1.5GiB",
            "12 parsecs",
            "-2",
            "99999999999TiB",
        ] {
            let e = parse_flag_bytes(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
    }
}
