//! Scenario 1: lateness of jobs firing every second, at several loads,
//! jetcron next to two anchors, each system on a fresh server: NATS-native
//! schedules first, then a raw publisher, then jetcron.
//!
//! The raw publisher is the floor of any scheduler that runs as a NATS
//! client: one plain client that at every whole second publishes one
//! message per job (the shard message jetcron would store, with
//! `Nats-Msg-Id`) to a work-queue stream with async JetStream publishes.
//!
//! Each step: store the jobs (or schedules), wait until every job fired
//! twice (or a limit), warm up, then measure a window of whole seconds:
//! every fire whose instant lies in the window and that arrives before the
//! window's end plus a grace period counts as delivered, with its lateness.
//! CPU is the utime + stime the measured processes spent in the window:
//! nats-server and the scheduler for jetcron, nats-server alone for native
//! and raw (the raw publisher runs inside the bench process).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use jetcron_shared::Job;
use jetcron_shared::wire::{Cause, ShardMessage};
use serde::Serialize;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::clock::{ceil_second, now_ms, sleep_until_ms};
use crate::collect::{Arrival, Collector, Source};
use crate::deploy::{Deployment, connect, definition, job_id, shard_body};
use crate::error::{BenchError, Result};
use crate::publish::{Outgoing, Published, WINDOW, publish_all};
use crate::server::Server;
use crate::stats::Summary;
use crate::{Bench, native, say, usage};

const GROUP: &str = "lat";
const EVERY_SECOND: &str = "* * * * * *";
/// The raw anchor's work-queue stream and the subjects it holds.
const RAW_STREAM: &str = "RAW_LAT";
const RAW_SUBJECTS: &str = "raw.>";

/// One system at one load.
#[derive(Debug, Clone, Serialize)]
pub struct LatenessRow {
    /// `jetcron`, `raw` or `native`.
    pub system: String,
    pub jobs: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lateness: Option<Summary>,
    /// Distinct (job, instant) received / instants due in the window.
    pub delivered: f64,
    pub received: usize,
    pub due: usize,
    /// CPU seconds of the measured processes during the window.
    pub cpu_s: f64,
    /// The nats-server's part of `cpu_s`.
    pub server_cpu_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_1000_fires: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib: Option<u64>,
    /// Set when the step failed; the other fields are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LatenessRow {
    fn failed(system: &str, jobs: usize, e: BenchError) -> LatenessRow {
        LatenessRow {
            system: system.into(),
            jobs,
            lateness: None,
            delivered: 0.0,
            received: 0,
            due: 0,
            cpu_s: 0.0,
            server_cpu_s: 0.0,
            cpu_s_per_1000_fires: None,
            scheduler_rss_kib: None,
            server_rss_kib: None,
            error: Some(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatenessReport {
    pub warmup_s: f64,
    pub window_s: f64,
    pub grace_s: f64,
    pub rows: Vec<LatenessRow>,
}

impl LatenessReport {
    /// The row of `system` at `jobs`.
    pub fn row(&self, system: &str, jobs: usize) -> Option<&LatenessRow> {
        self.rows
            .iter()
            .find(|r| r.system == system && r.jobs == jobs)
    }
}

pub async fn run(bench: &Bench) -> LatenessReport {
    let c = &bench.config;
    let mut rows = Vec::new();
    for &n in &c.loads {
        say(&format!("lateness: native schedules, {n} jobs"));
        let row = native_step(bench, n)
            .await
            .unwrap_or_else(|e| LatenessRow::failed("native", n, e));
        say(&format!("  {}", line(&row)));
        rows.push(row);
        say(&format!("lateness: raw publish, {n} jobs"));
        let row = raw_step(bench, n)
            .await
            .unwrap_or_else(|e| LatenessRow::failed("raw", n, e));
        say(&format!("  {}", line(&row)));
        rows.push(row);
        say(&format!("lateness: jetcron, {n} jobs"));
        let row = jetcron_step(bench, n)
            .await
            .unwrap_or_else(|e| LatenessRow::failed("jetcron", n, e));
        say(&format!("  {}", line(&row)));
        rows.push(row);
    }
    LatenessReport {
        warmup_s: c.warmup.as_secs_f64(),
        window_s: window(bench).as_secs_f64(),
        grace_s: bench.grace().as_secs_f64(),
        rows,
    }
}

fn line(r: &LatenessRow) -> String {
    match (&r.error, &r.lateness) {
        (Some(e), _) => format!("failed: {e}"),
        (None, Some(l)) => format!(
            "p50 {} ms, p99 {} ms, max {} ms, delivered {:.4}, cpu {:.2} s",
            l.p50_ms, l.p99_ms, l.max_ms, r.delivered, r.cpu_s
        ),
        (None, None) => "nothing delivered".into(),
    }
}

/// The measured window: whole seconds, at least one.
fn window(bench: &Bench) -> Duration {
    Duration::from_secs(bench.config.duration.as_secs().max(1))
}

async fn native_step(bench: &Bench, n: usize) -> Result<LatenessRow> {
    let server = Server::start(&bench.logs).await?;
    let client = connect(&server.url()).await?;
    let js = jetstream::new(client);
    native::create_stream(&js).await?;
    let collector = Collector::start(
        &js,
        native::STREAM,
        "bench",
        native::FIRE_FILTER,
        Source::Native { period_ms: 1000 },
    )
    .await?;
    let schedules =
        (0..n).map(|i| native::schedule(i, EVERY_SECOND, shard_body(&job_id(GROUP, i), GROUP)));
    let put = publish_all(&js, schedules, WINDOW).await;
    if put.acked < n {
        return Err(BenchError::nats(
            format!("storing {n} schedules ({} stored)", put.acked),
            put.first_error.unwrap_or_default(),
        ));
    }
    let pids = [server.pid()];
    let m = measure(bench, "native", n, &collector, &pids).await;
    let server_rss_kib = usage::rss_kib(server.pid());
    let mut row = finish(bench, collector, "native", n, m).await?;
    row.server_rss_kib = server_rss_kib;
    Ok(row)
}

async fn raw_step(bench: &Bench, n: usize) -> Result<LatenessRow> {
    let server = Server::start(&bench.logs).await?;
    let js = jetstream::new(connect(&server.url()).await?);
    create_raw_stream(&js).await?;
    let collector =
        Collector::start(&js, RAW_STREAM, "bench", RAW_SUBJECTS, Source::Jetcron).await?;
    let jobs = raw_jobs(n)?;
    let stop = CancellationToken::new();
    // Stops the publisher on every way out, before the server goes.
    let _stop_on_exit = stop.clone().drop_guard();
    let publisher = tokio::spawn(publish_every_second(js.clone(), jobs, stop.clone()));
    let pids = [server.pid()];
    let m = measure(bench, "raw", n, &collector, &pids).await;
    let server_rss_kib = usage::rss_kib(server.pid());
    let mut row = finish(bench, collector, "raw", n, m).await?;
    row.server_rss_kib = server_rss_kib;
    stop.cancel();
    if let Ok(Ok(tally)) = timeout(Duration::from_secs(10), publisher).await
        && tally.failed > 0
    {
        say(&format!(
            "  raw: {} of {} publishes failed, first: {}",
            tally.failed,
            tally.sent + tally.failed,
            tally.first_error.unwrap_or_default()
        ));
    }
    Ok(row)
}

/// The raw anchor's stream: a work queue with a dedup window, like
/// jetcron's work stream.
async fn create_raw_stream(js: &jetstream::Context) -> Result<()> {
    let config = stream::Config {
        name: RAW_STREAM.into(),
        subjects: vec![RAW_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    let limit = Duration::from_secs(10);
    let what = format!("creating {RAW_STREAM}");
    timeout(limit, js.create_stream(config))
        .await
        .map_err(|_| BenchError::timeout(what.clone(), limit))?
        .map_err(|e| BenchError::nats(what, e))?;
    Ok(())
}

/// Jobs `0..n` of the lateness group, decoded once: what a client
/// scheduler holds in memory.
fn raw_jobs(n: usize) -> Result<Vec<Job>> {
    (0..n)
        .map(|i| {
            let id = job_id(GROUP, i);
            let def = definition(&id, EVERY_SECOND, GROUP, "true", 1);
            Job::decode(&def, None).map_err(|e| BenchError::nats(format!("decoding {id}"), e))
        })
        .collect()
}

/// What the raw publisher did over its life.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, p: Published) {
        self.sent += p.sent;
        self.failed += p.failed;
        if self.first_error.is_none() {
            self.first_error = p.first_error;
        }
    }
}

/// The raw anchor: at every whole second, one message per job, until
/// `stop`. A round that overruns its second moves on to the next whole
/// second after it; the instants skipped that way are never fired, and show
/// as delivered < 1.
async fn publish_every_second(
    js: jetstream::Context,
    jobs: Vec<Job>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut last = None;
    loop {
        let instant = next_instant(now_ms(), last);
        let Some(at) = DateTime::from_timestamp_millis(instant) else {
            return tally;
        };
        let round = async {
            sleep_until_ms(instant).await;
            // Encoded each second anew, as a client must.
            let messages: Vec<Outgoing> = jobs.iter().map(|job| raw_message(job, at)).collect();
            publish_all(&js, messages, WINDOW).await
        };
        tokio::select! {
            _ = stop.cancelled() => return tally,
            put = round => tally.add(put),
        }
        last = Some(instant);
    }
}

/// The whole second to fire next: the first at or after `now_ms`, and never
/// the one fired `last` again.
fn next_instant(now_ms: i64, last: Option<i64>) -> i64 {
    let next = ceil_second(now_ms);
    last.map_or(next, |l| next.max(l + 1000))
}

/// `job`'s shard message for the fire at `at`, deduplicated by
/// `<job>:<instant ms>:0`.
fn raw_message(job: &Job, at: DateTime<Utc>) -> Outgoing {
    let shard = ShardMessage::new(job, at, 0, 1, Cause::Schedule);
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, shard.msg_id().as_str());
    Outgoing::new(format!("raw.lat.{}", shard.job), shard.encode()).with_headers(h)
}

async fn jetcron_step(bench: &Bench, n: usize) -> Result<LatenessRow> {
    let dep = Deployment::start(&bench.bins, bench.config.lease_ttl, &bench.logs).await?;
    let collector = Collector::start(
        &dep.js,
        &dep.names.work_stream(),
        "bench",
        &dep.names.work_group(GROUP),
        Source::Jetcron,
    )
    .await?;
    let defs = (0..n).map(|i| {
        let id = job_id(GROUP, i);
        let body = definition(&id, EVERY_SECOND, GROUP, "true", 1);
        (id, body)
    });
    let put = dep.put_jobs(defs).await;
    if put.acked < n {
        return Err(BenchError::nats(
            format!("storing {n} jobs ({} stored)", put.acked),
            put.first_error.unwrap_or_default(),
        ));
    }
    let mut scheduler = dep.scheduler("scheduler-1")?;
    let pids: Vec<u32> = std::iter::once(dep.server_pid())
        .chain(scheduler.pid())
        .collect();
    let m = measure(bench, "jetcron", n, &collector, &pids).await;
    let scheduler_rss_kib = scheduler.pid().and_then(usage::rss_kib);
    let server_rss_kib = usage::rss_kib(dep.server_pid());
    let exited = scheduler.pid().is_none();
    let mut row = finish(bench, collector, "jetcron", n, m).await?;
    scheduler.terminate(Duration::from_secs(5)).await?;
    row.scheduler_rss_kib = scheduler_rss_kib;
    row.server_rss_kib = server_rss_kib;
    if exited {
        row.error = Some(format!(
            "the scheduler exited during the run (log: {})",
            scheduler.log.display()
        ));
    }
    Ok(row)
}

/// The measured window (Unix ms) and the CPU spent in it.
#[derive(Debug, Clone, Copy)]
struct Measured {
    t0: i64,
    t1: i64,
    cpu_s: f64,
    server_cpu_s: f64,
}

/// Waits until the system is ready and warm, then measures one window.
async fn measure(
    bench: &Bench,
    system: &str,
    n: usize,
    collector: &Collector,
    pids: &[u32],
) -> Measured {
    // Ready when every job fired twice; a system that cannot keep up is
    // measured anyway after the limit.
    let limit = bench.ready_limit(n);
    if !collector.wait_count(2 * n, limit).await {
        say(&format!(
            "  {system}: only {} of {} fires within {limit:?}; measuring anyway",
            collector.count(),
            2 * n
        ));
    }
    sleep(bench.config.warmup).await;
    let t0 = ceil_second(now_ms());
    let t1 = t0 + window(bench).as_millis() as i64;
    sleep_until_ms(t0).await;
    let cpu0 = usage::cpu_seconds(pids);
    let server0 = usage::cpu_seconds(&pids[..1]);
    sleep_until_ms(t1).await;
    let cpu1 = usage::cpu_seconds(pids);
    let server1 = usage::cpu_seconds(&pids[..1]);
    Measured {
        t0,
        t1,
        cpu_s: cpu1 - cpu0,
        server_cpu_s: server1 - server0,
    }
}

/// Waits the grace period, stops the consumer and computes the figures.
async fn finish(
    bench: &Bench,
    collector: Collector,
    system: &str,
    n: usize,
    m: Measured,
) -> Result<LatenessRow> {
    sleep(bench.grace()).await;
    let arrivals = collector.stop().await?;
    let deadline = m.t1 + bench.grace().as_millis() as i64;
    let w = window_figures(&arrivals, n, m.t0, m.t1, deadline);
    Ok(LatenessRow {
        system: system.into(),
        jobs: n,
        delivered: w.received as f64 / w.due.max(1) as f64,
        cpu_s_per_1000_fires: (w.received > 0).then(|| m.cpu_s / w.received as f64 * 1000.0),
        lateness: w.lateness,
        received: w.received,
        due: w.due,
        cpu_s: m.cpu_s,
        server_cpu_s: m.server_cpu_s,
        scheduler_rss_kib: None,
        server_rss_kib: None,
        error: None,
    })
}

/// What arrived for a window of instants [t0, t1).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowFigures {
    pub lateness: Option<Summary>,
    pub received: usize,
    pub due: usize,
}

/// Figures of jobs `0..n` firing every second, over instants in
/// `[t0, t1)` received by `deadline` (all Unix ms). A repeated (job,
/// instant) counts once, with its first arrival.
pub fn window_figures(
    arrivals: &[Arrival],
    n: usize,
    t0: i64,
    t1: i64,
    deadline: i64,
) -> WindowFigures {
    let mut seen = HashSet::new();
    let mut late = Vec::new();
    for a in arrivals {
        let in_window = a.instant_ms >= t0 && a.instant_ms < t1 && (a.key as usize) < n;
        if in_window && a.recv_ms <= deadline && seen.insert((a.key, a.instant_ms)) {
            late.push(a.lateness_ms());
        }
    }
    let seconds = ((t1 - t0) / 1000).max(0) as usize;
    WindowFigures {
        received: late.len(),
        lateness: Summary::of(late),
        due: n * seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(key: u32, instant_ms: i64, recv_ms: i64) -> Arrival {
        Arrival {
            key,
            instant_ms,
            recv_ms,
            epoch: 1,
        }
    }

    #[test]
    fn counts_each_job_and_instant_once_inside_the_window() {
        let arrivals = vec![
            a(0, 999, 1005),  // before the window
            a(0, 1000, 1010), // in
            a(1, 1000, 1030), // in
            a(1, 1000, 1500), // duplicate
            a(0, 2000, 2020), // in
            a(1, 2000, 9000), // after the deadline
            a(0, 3000, 3001), // after the window
            a(7, 2000, 2001), // not one of the n jobs
        ];
        let w = window_figures(&arrivals, 2, 1000, 3000, 5000);
        assert_eq!(w.due, 4);
        assert_eq!(w.received, 3);
        let l = w.lateness.unwrap();
        assert_eq!((l.p50_ms, l.max_ms), (20, 30));
    }

    #[test]
    fn the_raw_publisher_fires_each_whole_second_once() {
        assert_eq!(next_instant(5300, None), 6000);
        assert_eq!(next_instant(6000, None), 6000);
        // A round that ended within its own second: the next second.
        assert_eq!(next_instant(6000, Some(6000)), 7000);
        // A round that overran: the next whole second after it.
        assert_eq!(next_instant(8200, Some(6000)), 9000);
    }

    #[test]
    fn raw_messages_are_what_the_collector_reads() {
        let jobs = raw_jobs(3).unwrap();
        let at = DateTime::from_timestamp_millis(7000).unwrap();
        let m = raw_message(&jobs[2], at);
        assert_eq!(m.subject, "raw.lat.lat-0000002");
        let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
        assert_eq!(id.map(|v| v.as_str()), Some("lat-0000002:7000:0"));
        let shard = ShardMessage::decode(&m.payload).unwrap();
        assert_eq!(shard.instant.timestamp_millis(), 7000);
        assert_eq!(crate::collect::key_of(&shard.job), Some(2));
    }

    #[test]
    fn an_empty_window_has_no_lateness() {
        let w = window_figures(&[], 10, 0, 5000, 6000);
        assert_eq!((w.received, w.due, w.lateness), (0, 50, None));
    }
}
