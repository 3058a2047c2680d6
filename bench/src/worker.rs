//! Scenario 5: worker throughput. N shards (jobs of up to 1,000 shards,
//! `run: {"shell": "true"}`) are dispatched and stored first; then one
//! `jetcron-worker --allow-shell` is started and timed from its process
//! start until the work stream is empty again (every shard run, its result
//! published and acked).
//!
//! Anchor: the same number of messages pulled and acked by one plain
//! consumer in the bench process, timed from the first pull until the
//! work-queue stream is empty.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use chrono::{DateTime, SecondsFormat};
use futures::StreamExt;
use serde::Serialize;
use tokio::time::{Instant, sleep, timeout};

use crate::clock::{ceil_second, now_ms};
use crate::deploy::{Deployment, connect, definition, job_id, shard_body};
use crate::error::{BenchError, Result};
use crate::publish::{Outgoing, WINDOW, publish_all};
use crate::server::Server;
use crate::stats::rate;
use crate::{Bench, say};

const GROUP: &str = "work";

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    pub shards: usize,
    pub concurrency: usize,
    /// jetcron-worker: from process start until the last shard is acked.
    pub jetcron_s: Option<f64>,
    pub jetcron_per_s: Option<f64>,
    /// Results published by the worker (one per shard when all succeed).
    pub jetcron_results: u64,
    /// Plain pull + ack: from the first pull until the stream is empty.
    pub raw_s: Option<f64>,
    pub raw_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn run(bench: &Bench) -> WorkerReport {
    let n = bench.config.worker_shards;
    let mut report = WorkerReport {
        shards: n,
        concurrency: bench.config.worker_concurrency,
        ..WorkerReport::default()
    };
    let mut errors = Vec::new();
    say(&format!("worker: raw pull + ack of {n} messages"));
    match raw_step(bench, n).await {
        Ok(s) => {
            report.raw_s = Some(s);
            report.raw_per_s = rate(n, s);
        }
        Err(e) => errors.push(format!("raw: {e}")),
    }
    say(&format!(
        "  {:?} messages/s",
        report.raw_per_s.map(|r| r.round())
    ));
    say(&format!("worker: jetcron-worker running {n} shards"));
    if let Err(e) = jetcron_step(bench, n, &mut report).await {
        errors.push(format!("jetcron: {e}"));
    }
    say(&format!(
        "  {:?} shards/s",
        report.jetcron_per_s.map(|r| r.round())
    ));
    if !errors.is_empty() {
        report.error = Some(errors.join("; "));
    }
    report
}

/// Messages in `stream` right now.
async fn messages(js: &jetstream::Context, stream: &str) -> Result<u64> {
    let info = timeout(Duration::from_secs(5), async {
        js.get_stream(stream)
            .await?
            .get_info()
            .await
            .map_err(Into::into)
    })
    .await
    .map_err(|_| BenchError::timeout(format!("info of {stream}"), Duration::from_secs(5)))?
    .map_err(|e: async_nats::Error| BenchError::nats(format!("info of {stream}"), e))?;
    Ok(info.state.messages)
}

/// Polls until `pred(messages in stream)` holds; the instant it did.
async fn wait_messages(
    js: &jetstream::Context,
    stream: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(u64) -> bool,
) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if pred(messages(js, stream).await?) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::timeout(what, limit));
        }
        sleep(Duration::from_millis(20)).await;
    }
}

async fn jetcron_step(bench: &Bench, n: usize, report: &mut WorkerReport) -> Result<()> {
    let dep = Deployment::start(&bench.bins, bench.config.lease_ttl, &bench.logs).await?;
    let work = dep.names.work_stream();
    let mut scheduler = dep.scheduler("scheduler-1")?;
    // Once it leads, the work stream holds the leader's fence besides shards:
    // count from what is there then.
    let ready = bench.ready_limit(0);
    let deadline = Instant::now() + ready;
    while dep.leader().await.is_none() {
        if Instant::now() >= deadline {
            return Err(BenchError::timeout("the scheduler taking the lease", ready));
        }
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_millis(500)).await;
    let base = messages(&dep.js, &work).await?;
    let t = ceil_second(now_ms() + if bench.config.smoke { 2_000 } else { 4_000 });
    let at = DateTime::from_timestamp_millis(t)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    let defs = (0..n.div_ceil(1000)).map(|j| {
        let shards = (n - j * 1000).min(1000) as u32;
        let id = job_id(GROUP, j);
        let body = definition(&id, &format!("@at {at}"), GROUP, "true", shards);
        (id, body)
    });
    dep.put_jobs(defs).await;
    let limit = Duration::from_millis((t - now_ms()).max(0) as u64) + bench.drain_limit(n);
    wait_messages(&dep.js, &work, limit, "all shards stored", |m| {
        m >= base + n as u64
    })
    .await?;
    scheduler.terminate(Duration::from_secs(10)).await?;

    let start = Instant::now();
    let mut worker = dep.worker("worker-1", GROUP, bench.config.worker_concurrency)?;
    let done = wait_messages(
        &dep.js,
        &work,
        bench.drain_limit(n) * 4,
        "the worker running every shard",
        |m| m <= base,
    )
    .await?;
    let s = (done - start).as_secs_f64();
    report.jetcron_s = Some(s);
    report.jetcron_per_s = rate(n, s);
    report.jetcron_results = messages(&dep.js, &dep.names.results_stream()).await?;
    worker.terminate(Duration::from_secs(35)).await?;
    Ok(())
}

/// Seconds to pull and ack `n` messages with one plain consumer.
async fn raw_step(bench: &Bench, n: usize) -> Result<f64> {
    let limit = bench.drain_limit(n);
    let server = Server::start(&bench.logs).await?;
    let js = jetstream::new(connect(&server.url()).await?);
    let config = stream::Config {
        name: "RAW_QUEUE".into(),
        subjects: vec!["raw.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    };
    let s = timeout(Duration::from_secs(10), js.create_stream(config))
        .await
        .map_err(|_| BenchError::timeout("creating RAW_QUEUE", Duration::from_secs(10)))?
        .map_err(|e| BenchError::nats("creating RAW_QUEUE", e))?;
    let messages_out = (0..n).map(|i| {
        let id = job_id(GROUP, i);
        Outgoing::new(format!("raw.{GROUP}.{id}"), shard_body(&id, GROUP))
    });
    let put = publish_all(&js, messages_out, WINDOW).await;
    if put.acked < n {
        return Err(BenchError::nats(
            format!("storing {n} messages ({} stored)", put.acked),
            put.first_error.unwrap_or_default(),
        ));
    }
    let consumer = s
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::nats("creating the raw consumer", e))?;
    let start = Instant::now();
    let mut stream = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await
        .map_err(|e| BenchError::nats("pulling", e))?;
    let deadline = start + limit;
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.next()).await {
            Ok(Some(Ok(m))) => {
                m.ack().await.map_err(|e| BenchError::nats("acking", e))?;
                got += 1;
            }
            Ok(Some(Err(e))) => tracing::debug!(error = %e, "pull stream error"),
            Ok(None) => return Err(BenchError::nats("pulling", "the message stream ended")),
            Err(_) => {
                return Err(BenchError::timeout(
                    format!("pulling {n} messages ({got} got)"),
                    limit,
                ));
            }
        }
    }
    let done = wait_messages(
        &js,
        "RAW_QUEUE",
        limit,
        "the acks removing every message",
        |m| m == 0,
    )
    .await?;
    Ok((done - start).as_secs_f64())
}
