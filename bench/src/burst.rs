//! Scenario 2: a burst of jobs due in the same second.
//!
//! jetcron: N one-shard jobs `@at T` stored a few seconds ahead of `T`; the
//! time from `T` until the N-th shard message is stored in the work stream
//! (a consumer that is never pulled counts them; polled every 20 ms). Two
//! unrelated probe jobs (`* * * * * *` and `@every 100ms`) keep firing
//! meanwhile; their largest lateness around the burst is reported.
//!
//! Anchor: the same number of messages (same bodies, `Nats-Msg-Id` set) to
//! a work-queue stream with the raw async JetStream client, timed from the
//! first send to the last ack. A raw probe publishes one message every
//! 100 ms on the same connection meanwhile, and is consumed like jetcron's
//! probes: its largest lateness is what the server and the client alone
//! add to an unrelated message during such a burst.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use jetcron_shared::Job;
use jetcron_shared::wire::{Cause, ShardMessage};
use serde::Serialize;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::clock::{ceil_second, now_ms, sleep_until_ms};
use crate::collect::{Collector, Source};
use crate::deploy::{Deployment, connect, definition, job_id, shard_body};
use crate::error::{BenchError, Result};
use crate::publish::{Outgoing, WINDOW, publish_all};
use crate::server::Server;
use crate::{Bench, say};

#[derive(Debug, Clone, Default, Serialize)]
pub struct BurstRow {
    pub jobs: usize,
    /// From the instant to the last shard stored.
    pub jetcron_last_ms: Option<i64>,
    /// From the instant to the first shard stored.
    pub jetcron_first_ms: Option<i64>,
    pub stored: usize,
    /// How long storing the definitions took, and how far ahead of the
    /// instant they were all stored.
    pub load_s: f64,
    pub lead_s: f64,
    /// Largest lateness of the probes' fires around the burst, but for
    /// those at the burst's own instant.
    pub probe_second_max_ms: Option<i64>,
    pub probe_100ms_max_ms: Option<i64>,
    /// Lateness of the probes' fires at the burst's instant (in the crowd).
    pub probe_at_instant_ms: Option<i64>,
    /// Raw publish of the same number of messages: first send to last ack.
    pub raw_ms: Option<i64>,
    pub raw_acked: usize,
    /// Largest lateness of the raw probe (every 100 ms) around the raw burst.
    pub raw_probe_max_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BurstReport {
    pub rows: Vec<BurstRow>,
}

pub async fn run(bench: &Bench) -> BurstReport {
    let mut rows = Vec::new();
    for &n in &bench.config.bursts {
        let mut row = BurstRow {
            jobs: n,
            ..BurstRow::default()
        };
        say(&format!("burst: raw publish of {n} messages"));
        match raw_step(bench, n).await {
            Ok((ms, acked, probe)) => {
                row.raw_ms = Some(ms);
                row.raw_acked = acked;
                row.raw_probe_max_ms = probe;
                say(&format!(
                    "  {acked} acked in {ms} ms, raw probe max lateness {probe:?} ms"
                ));
            }
            Err(e) => row.error = Some(format!("raw: {e}")),
        }
        say(&format!("burst: jetcron, {n} jobs due at once"));
        if let Err(e) = jetcron_step(bench, n, &mut row).await {
            let prev = row
                .error
                .take()
                .map(|p| format!("{p}; "))
                .unwrap_or_default();
            row.error = Some(format!("{prev}jetcron: {e}"));
        }
        say(&format!(
            "  last shard {:?} ms after the instant ({} stored), probe max lateness {:?} / {:?} ms",
            row.jetcron_last_ms, row.stored, row.probe_second_max_ms, row.probe_100ms_max_ms
        ));
        rows.push(row);
    }
    BurstReport { rows }
}

/// Returns (first send to last ack in ms, messages acked, the raw probe's
/// largest lateness).
async fn raw_step(bench: &Bench, n: usize) -> Result<(i64, usize, Option<i64>)> {
    let server = Server::start(&bench.logs).await?;
    let js = jetstream::new(connect(&server.url()).await?);
    let config = stream::Config {
        name: "RAW_WORK".into(),
        subjects: vec!["raw.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    timeout(Duration::from_secs(10), js.create_stream(config))
        .await
        .map_err(|_| BenchError::timeout("creating RAW_WORK", Duration::from_secs(10)))?
        .map_err(|e| BenchError::nats("creating RAW_WORK", e))?;
    let probes = Collector::start(&js, "RAW_WORK", "probe", "raw.probe.>", Source::Jetcron).await?;
    let stop = CancellationToken::new();
    let publisher = tokio::spawn(publish_probes(js.clone(), stop.clone()));
    if !probes.wait_count(3, bench.ready_limit(2)).await {
        return Err(BenchError::timeout("the raw probe", bench.ready_limit(2)));
    }
    let instant = ceil_second(now_ms());
    let start = now_ms();
    let messages = (0..n).map(|i| {
        let id = job_id("burst", i);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("{id}:{instant}:0").as_str());
        Outgoing::new(format!("raw.burst.{id}"), shard_body(&id, "burst")).with_headers(h)
    });
    let put = publish_all(&js, messages, WINDOW).await;
    let end = now_ms();
    // Let the probes around the end arrive.
    sleep(Duration::from_millis(1_500)).await;
    stop.cancel();
    let _ = publisher.await;
    let probe_max = probes
        .stop()
        .await?
        .iter()
        .filter(|a| a.instant_ms >= start - 1_000 && a.instant_ms <= end + 1_000)
        .map(|a| a.lateness_ms())
        .max();
    if put.acked < n {
        return Err(BenchError::nats(
            format!("raw publish ({} of {n} acked)", put.acked),
            put.first_error.unwrap_or_default(),
        ));
    }
    Ok((put.elapsed.as_millis() as i64, put.acked, probe_max))
}

/// The raw probe: a shard-sized message every 100 ms, on the tick, until
/// `stop`; each publish awaited before the next tick, as a scheduler
/// awaits its fire.
async fn publish_probes(js: jetstream::Context, stop: CancellationToken) {
    let def = definition(&job_id("probe", 1), "@every 100ms", "probe", "true", 1);
    let Ok(job) = Job::decode(&def, None) else {
        return;
    };
    let mut tick = (now_ms() / 100 + 1) * 100;
    loop {
        let Some(at) = DateTime::from_timestamp_millis(tick) else {
            return;
        };
        let round = async {
            sleep_until_ms(tick).await;
            let shard = ShardMessage::new(&job, at, 0, 1, Cause::Schedule);
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", shard.msg_id().as_str());
            let subject = format!("raw.probe.{}", shard.job);
            if let Ok(ack) = js
                .publish_with_headers(subject, h, Bytes::from(shard.encode()))
                .await
            {
                let _ = ack.await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            () = round => {}
        }
        // The next tick not yet passed: a late round skips ticks.
        tick = ((now_ms() / 100) + 1) * 100;
    }
}

async fn jetcron_step(bench: &Bench, n: usize, row: &mut BurstRow) -> Result<()> {
    let dep = Deployment::start(&bench.bins, bench.config.lease_ttl, &bench.logs).await?;
    let mut scheduler = dep.scheduler("scheduler-1")?;
    let work = dep.names.work_stream();
    let probes = Collector::start(
        &dep.js,
        &work,
        "probe",
        &dep.names.work_group("probe"),
        Source::Jetcron,
    )
    .await?;
    let probe_defs = [("* * * * * *", 0), ("@every 100ms", 1)].map(|(schedule, i)| {
        let id = job_id("probe", i);
        let body = definition(&id, schedule, "probe", "true", 1);
        (id, body)
    });
    dep.put_jobs(probe_defs).await;
    if !probes.wait_count(3, bench.ready_limit(2)).await {
        return Err(BenchError::timeout(
            "the probes firing",
            bench.ready_limit(2),
        ));
    }
    // Counts the burst's shard messages as they are stored; never pulled.
    let stream = dep
        .js
        .get_stream(&work)
        .await
        .map_err(|e| BenchError::nats("opening the work stream", e))?;
    let mut counter = stream
        .create_consumer(pull::Config {
            durable_name: Some("burst-count".into()),
            filter_subject: dep.names.work_group("burst"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::nats("creating the counting consumer", e))?;

    let margin = if bench.config.smoke {
        3_000
    } else {
        5_000 + n as i64 / 5
    };
    let t = ceil_second(now_ms() + margin);
    let at = DateTime::from_timestamp_millis(t)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    let defs = (0..n).map(|i| {
        let id = job_id("burst", i);
        let body = definition(&id, &format!("@at {at}"), "burst", "true", 1);
        (id, body)
    });
    let put = dep.put_jobs(defs).await;
    row.load_s = put.elapsed.as_secs_f64();
    row.lead_s = (t - now_ms()) as f64 / 1000.0;
    if put.acked < n {
        return Err(BenchError::nats(
            format!("storing {n} jobs ({} stored)", put.acked),
            put.first_error.unwrap_or_default(),
        ));
    }
    if row.lead_s < 1.0 {
        say(&format!(
            "  the definitions were stored only {:.1} s before the instant",
            row.lead_s
        ));
    }

    let limit = Duration::from_millis(60_000 + n as u64 * 5);
    let deadline = t + limit.as_millis() as i64;
    let mut first = None;
    let done = loop {
        let pending = match timeout(Duration::from_secs(2), counter.info()).await {
            Ok(Ok(info)) => info.num_pending as usize,
            _ => row.stored,
        };
        let seen = now_ms();
        row.stored = pending;
        if pending > 0 && first.is_none() {
            first = Some(seen);
        }
        if pending >= n {
            break Some(seen);
        }
        if seen > deadline {
            break None;
        }
        sleep(Duration::from_millis(20)).await;
    };
    row.jetcron_first_ms = first.map(|f| f - t);
    row.jetcron_last_ms = done.map(|d| d - t);
    // Let the probes' fires around the end arrive.
    sleep(Duration::from_millis(1_500)).await;
    let end = done.unwrap_or_else(now_ms);
    let arrivals = probes.stop().await?;
    // The probes' fires at the burst's own instant are part of the crowd
    // (both probes fire on every whole second); the others are unrelated
    // jobs due while the burst is stored.
    let max_of = |key: u32| {
        arrivals
            .iter()
            .filter(|a| a.key == key && a.instant_ms >= t - 1_000 && a.instant_ms <= end + 1_000)
            .filter(|a| a.instant_ms != t)
            .map(|a| a.lateness_ms())
            .max()
    };
    row.probe_at_instant_ms = arrivals
        .iter()
        .filter(|a| a.instant_ms == t)
        .map(|a| a.lateness_ms())
        .max();
    row.probe_second_max_ms = max_of(0);
    row.probe_100ms_max_ms = max_of(1);
    scheduler.terminate(Duration::from_secs(10)).await?;
    match done {
        Some(_) => Ok(()),
        None => Err(BenchError::timeout(
            format!("all {n} shards stored ({} were)", row.stored),
            limit,
        )),
    }
}
