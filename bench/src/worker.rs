//! Scenario 5: worker throughput. N shards (jobs of up to 1,000 shards,
//! `run: {"shell": "true"}`) are dispatched and stored first; then one
//! `jetcron-worker --allow-shell` is started and timed from its process
//! start until the work stream is empty again (every shard run, its result
//! published and acked).
//!
//! The same with a no-op handler (`run: {"handler": "noop"}`): N handler
//! shards stored first, then one worker embedded in this process (the
//! `jetcron-worker` library, on a runtime of its own) with that handler,
//! timed from its start until the work stream is empty again.
//!
//! Anchor: the same number of messages pulled and acked by one plain
//! consumer in the bench process, timed from the first pull until the
//! work-queue stream is empty.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use chrono::{DateTime, SecondsFormat};
use futures::StreamExt;
use jetcron_shared::connect::ConnectArgs;
use jetcron_worker::{HandlerResult, Output, ShardContext, Worker, WorkerConfig};
use serde::Serialize;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::clock::{ceil_second, now_ms};
use crate::deploy::{Deployment, connect, definition_running, job_id, shard_body};
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
    /// Run slots of the embedded worker's handler.
    pub handler_concurrency: usize,
    /// Embedded worker, no-op handler: from its start until the last shard
    /// is acked.
    pub handler_s: Option<f64>,
    pub handler_per_s: Option<f64>,
    pub handler_results: u64,
    /// jetcron-worker: from process start until the last shard is acked.
    pub jetcron_s: Option<f64>,
    pub jetcron_per_s: Option<f64>,
    /// Results published by the worker (one per shard when all succeed).
    pub jetcron_results: u64,
    /// Plain pull + ack: from the first pull until the stream is empty.
    pub raw_s: Option<f64>,
    pub raw_per_s: Option<f64>,
    /// Pull + confirmed ack, at most `handler_concurrency` at a time.
    pub settled_per_s: Option<f64>,
    /// The same with the protocol's store operations per shard (a record
    /// read, two record writes, a result publish), no executor.
    pub protocol_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn run(bench: &Bench) -> WorkerReport {
    let n = bench.config.worker_shards;
    let mut report = WorkerReport {
        shards: n,
        concurrency: bench.config.worker_concurrency,
        handler_concurrency: bench.config.handler_concurrency,
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
    let slots = bench.config.handler_concurrency;
    for writes in [false, true] {
        say(&format!(
            "worker: pull + confirmed ack of {n} messages, {slots} at a time{}",
            if writes {
                ", with the protocol's record and result writes"
            } else {
                ""
            }
        ));
        match settled_step(bench, n, slots, writes).await {
            Ok(s) if writes => report.protocol_per_s = rate(n, s),
            Ok(s) => report.settled_per_s = rate(n, s),
            Err(e) => errors.push(format!("settled (writes: {writes}): {e}")),
        }
    }
    say(&format!(
        "  {:?} / {:?} messages/s",
        report.settled_per_s.map(|r| r.round()),
        report.protocol_per_s.map(|r| r.round())
    ));
    say(&format!(
        "worker: embedded worker running {n} no-op handler shards"
    ));
    if let Err(e) = handler_step(bench, n, &mut report).await {
        errors.push(format!("handler: {e}"));
    }
    say(&format!(
        "  {:?} shards/s",
        report.handler_per_s.map(|r| r.round())
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

/// A deployment whose work stream holds `n` shards of jobs that `run`,
/// dispatched by a scheduler that has stopped since; and the number of
/// messages the stream held before them (the leader's fence).
async fn stored_shards(
    bench: &Bench,
    n: usize,
    run: serde_json::Value,
) -> Result<(Deployment, u64)> {
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
        let body = definition_running(&id, &format!("@at {at}"), GROUP, run.clone(), shards);
        (id, body)
    });
    dep.put_jobs(defs).await;
    let limit = Duration::from_millis((t - now_ms()).max(0) as u64) + bench.drain_limit(n);
    wait_messages(&dep.js, &work, limit, "all shards stored", |m| {
        m >= base + n as u64
    })
    .await?;
    scheduler.terminate(Duration::from_secs(10)).await?;
    Ok((dep, base))
}

async fn jetcron_step(bench: &Bench, n: usize, report: &mut WorkerReport) -> Result<()> {
    let (dep, base) = stored_shards(bench, n, serde_json::json!({"shell": "true"})).await?;
    let work = dep.names.work_stream();
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

async fn noop(_ctx: ShardContext) -> HandlerResult {
    Ok(Output::empty())
}

async fn handler_step(bench: &Bench, n: usize, report: &mut WorkerReport) -> Result<()> {
    let (dep, base) = stored_shards(bench, n, serde_json::json!({"handler": "noop"})).await?;
    let work = dep.names.work_stream();
    let config = WorkerConfig {
        connect: ConnectArgs {
            nats_url: dep.server.url(),
            ..ConnectArgs::default()
        },
        id: "embedded-1".into(),
        group: GROUP.into(),
        concurrency: bench.config.handler_concurrency,
        ..WorkerConfig::default()
    };
    let worker = Worker::builder(config)
        .handler("noop", noop)
        .build()
        .map_err(|e| BenchError::nats("building the embedded worker", e))?;
    // Its own runtime, as in a service that embeds it; the polling below
    // stays on the bench's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::nats("starting a runtime", e))?;
    let stop = CancellationToken::new();
    let start = Instant::now();
    let running = runtime.spawn(worker.run(stop.clone()));
    let done = wait_messages(
        &dep.js,
        &work,
        bench.drain_limit(n) * 4,
        "the embedded worker running every shard",
        |m| m <= base,
    )
    .await;
    stop.cancel();
    let _ = timeout(Duration::from_secs(35), running).await;
    runtime.shutdown_background();
    let s = (done? - start).as_secs_f64();
    report.handler_s = Some(s);
    report.handler_per_s = rate(n, s);
    report.handler_results = messages(&dep.js, &dep.names.results_stream()).await?;
    Ok(())
}

/// A fresh server whose work-queue stream `RAW_QUEUE` holds `n` shard
/// bodies.
async fn raw_queue(
    bench: &Bench,
    n: usize,
) -> Result<(Server, jetstream::Context, stream::Stream)> {
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
    Ok((server, js, s))
}

/// Seconds to pull and ack `n` messages with one plain consumer.
async fn raw_step(bench: &Bench, n: usize) -> Result<f64> {
    let limit = bench.drain_limit(n);
    let (_server, js, s) = raw_queue(bench, n).await?;
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

/// Seconds for one plain consumer to take `n` messages as a worker does:
/// at most `slots` at a time, each settled with a confirmed ack; and with
/// `writes`, also the store operations the work protocol makes per shard
/// (read the shard record, write it `running`, publish the result, write
/// the record final), in that order, with no executor in between.
async fn settled_step(bench: &Bench, n: usize, slots: usize, writes: bool) -> Result<f64> {
    let limit = bench.drain_limit(n) * 4;
    let (_server, js, s) = raw_queue(bench, n).await?;
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "RAW_RUNS".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::nats("creating RAW_RUNS", e))?;
    js.create_stream(stream::Config {
        name: "RAW_RESULTS".into(),
        subjects: vec!["rawresults.>".into()],
        ..Default::default()
    })
    .await
    .map_err(|e| BenchError::nats("creating RAW_RESULTS", e))?;
    let consumer = s
        .create_consumer(pull::Config {
            durable_name: Some("settled".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::nats("creating the consumer", e))?;
    let start = Instant::now();
    let mut stream = consumer
        .stream()
        .max_messages_per_batch(slots)
        .messages()
        .await
        .map_err(|e| BenchError::nats("pulling", e))?;
    let deadline = start + limit;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let (mut got, mut done) = (0usize, 0usize);
    while done < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::timeout(
                format!("settling {n} messages ({done} done)"),
                limit,
            ));
        }
        tokio::select! {
            next = stream.next(), if got < n && in_flight.len() < slots => match next {
                Some(Ok(m)) => {
                    got += 1;
                    let (js, kv) = (js.clone(), kv.clone());
                    in_flight.push(async move {
                        if writes {
                            let key = format!("shard.{got}");
                            let body = m.payload.clone();
                            kv.get(&key).await.map_err(|e| BenchError::nats("reading a record", e))?;
                            kv.put(&key, body.clone()).await.map_err(|e| BenchError::nats("writing a record", e))?;
                            js.publish(format!("rawresults.{got}"), body.clone())
                                .await
                                .map_err(|e| BenchError::nats("publishing a result", e))?
                                .await
                                .map_err(|e| BenchError::nats("storing a result", e))?;
                            kv.put(&key, body).await.map_err(|e| BenchError::nats("writing a record", e))?;
                        }
                        m.double_ack().await.map_err(|e| BenchError::nats("acking", e))
                    });
                }
                Some(Err(e)) => tracing::debug!(error = %e, "pull stream error"),
                None => return Err(BenchError::nats("pulling", "the message stream ended")),
            },
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                settled?;
                done += 1;
            }
            _ = sleep(left) => {}
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
