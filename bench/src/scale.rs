//! Scenario 3: many registered jobs (yearly, so they never fire during the
//! run) plus one probe job firing every second.
//!
//! - cold start: a scheduler started on the stored jobs; time from its
//!   process start until the probe fires on time (lateness < 100 ms);
//!   its memory (VmRSS) once loaded.
//! - takeover: a second scheduler joins and, once its heartbeat says it is
//!   warm (every definition and fire state loaded), the leader is killed
//!   with SIGKILL;
//!   time until the probe fires again (first fire of the new epoch) and
//!   until it is on time again, and the probe's instants lost in between:
//!   neither fired nor named by a `misfired` event.
//! - graceful stop: a fresh standby joins and gets warm; the leader gets SIGTERM; time
//!   until the lease holder changes and until the standby fires.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jetcron_shared::wire::{Event, EventBody};
use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::clock::{now_ms, secs};
use crate::collect::{Arrival, Collector, Source};
use crate::deploy::{Deployment, definition, job_id};
use crate::error::{BenchError, Result};
use crate::procs::Proc;
use crate::{Bench, api, say, usage};

/// Lateness under which the probe counts as on time.
const ON_TIME_MS: i64 = 100;
const YEARLY: &str = "0 0 0 1 1 *";

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleRow {
    pub jobs: usize,
    pub lease_ttl_s: f64,
    /// Storing the definitions (raw async KV puts).
    pub load_s: f64,
    pub cold_start_s: Option<f64>,
    pub scheduler_rss_kib: Option<u64>,
    pub server_rss_kib: Option<u64>,
    pub takeover_fire_s: Option<f64>,
    /// Lateness of the new leader's first probe fire.
    pub takeover_first_late_ms: Option<i64>,
    pub takeover_on_time_s: Option<f64>,
    pub takeover_lost: Option<usize>,
    pub takeover_reported_missed: Option<usize>,
    /// A standby started next to the leader: start → warm (its heartbeat
    /// says every definition and fire state is loaded).
    pub standby_warm_s: Option<f64>,
    pub graceful_lease_s: Option<f64>,
    pub graceful_fire_s: Option<f64>,
    pub graceful_first_late_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub rows: Vec<ScaleRow>,
}

/// A deployment with the jobs stored and the probe being received.
#[derive(Debug)]
pub struct Loaded {
    pub dep: Deployment,
    pub probes: Collector,
    pub load_s: f64,
    /// Jobs stored besides the probe.
    pub jobs: usize,
}

/// `n` yearly jobs and the probe, stored before any scheduler runs.
pub async fn load(bench: &Bench, n: usize) -> Result<Loaded> {
    let dep = Deployment::start(&bench.bins, bench.config.lease_ttl, &bench.logs).await?;
    let work = dep.names.work_stream();
    let probes = Collector::start(
        &dep.js,
        &work,
        "probe",
        &dep.names.work_group("probe"),
        Source::Jetcron,
    )
    .await?;
    let probe = job_id("probe", 0);
    let defs = (0..n)
        .map(|i| {
            let id = job_id("idle", i);
            let body = definition(&id, YEARLY, "idle", "true", 1);
            (id, body)
        })
        .chain(std::iter::once((
            probe.clone(),
            definition(&probe, "* * * * * *", "probe", "true", 1),
        )));
    say(&format!("scale: storing {n} jobs"));
    let put = dep.put_jobs(defs).await;
    if put.acked < n + 1 {
        return Err(BenchError::nats(
            format!("storing {} jobs ({} stored)", n + 1, put.acked),
            put.first_error.unwrap_or_default(),
        ));
    }
    say(&format!(
        "  stored in {:.1} s ({:.0}/s)",
        put.elapsed.as_secs_f64(),
        put.per_second()
    ));
    Ok(Loaded {
        dep,
        probes,
        load_s: put.elapsed.as_secs_f64(),
        jobs: n,
    })
}

/// How long a scheduler may take to load `n` jobs.
fn load_limit(bench: &Bench, n: usize) -> Duration {
    bench.ready_limit(n) + Duration::from_millis(n as u64 / 2)
}

/// Starts scheduler `name` and waits until the probe fires on time.
/// Returns the process and the seconds from its start to that fire.
pub async fn cold_start(bench: &Bench, loaded: &Loaded, name: &str) -> Result<(Proc, f64)> {
    let from = loaded.probes.count();
    let start = now_ms();
    let p = loaded.dep.scheduler(name)?;
    let limit = load_limit(bench, loaded.jobs);
    let on_time = loaded
        .probes
        .wait_for(from, limit, |a| {
            a.recv_ms > start && a.lateness_ms() < ON_TIME_MS
        })
        .await
        .ok_or_else(|| BenchError::timeout(format!("{name} firing the probe on time"), limit))?;
    Ok((p, secs(on_time.recv_ms - start)))
}

pub async fn run(bench: &Bench, api_at: Option<usize>) -> (ScaleReport, Option<api::ApiReport>) {
    let mut rows = Vec::new();
    let mut api_report = None;
    for &n in &bench.config.jobs_scale {
        let mut row = ScaleRow {
            jobs: n,
            lease_ttl_s: bench.config.lease_ttl.as_secs_f64(),
            ..ScaleRow::default()
        };
        let with_api = api_at == Some(n);
        if let Err(e) = step(bench, n, &mut row, with_api.then_some(&mut api_report)).await {
            say(&format!("  failed: {e}"));
            row.error = Some(e.to_string());
        }
        if with_api && api_report.is_none() {
            let limit = api::call_timeout(bench);
            api_report = Some(api::ApiReport::failed(
                n,
                limit,
                "the scale setup failed".into(),
            ));
        }
        rows.push(row);
    }
    (ScaleReport { rows }, api_report)
}

async fn step(
    bench: &Bench,
    n: usize,
    row: &mut ScaleRow,
    api_report: Option<&mut Option<api::ApiReport>>,
) -> Result<()> {
    let loaded = load(bench, n).await?;
    row.load_s = loaded.load_s;
    let missed = watch_misfires(&loaded).await?;
    let mut procs: Vec<Proc> = Vec::new();

    say(&format!("scale: cold start on {n} jobs"));
    let (p, cold) = cold_start(bench, &loaded, "scheduler-1").await?;
    procs.push(p);
    row.cold_start_s = Some(cold);
    sleep(bench.settle()).await;
    row.scheduler_rss_kib = procs[0].pid().and_then(usage::rss_kib);
    row.server_rss_kib = usage::rss_kib(loaded.dep.server_pid());
    say(&format!(
        "  on time {cold:.2} s after start, RSS {:?} KiB",
        row.scheduler_rss_kib
    ));
    if let Some(slot) = api_report {
        *slot = Some(api::measure(bench, &loaded.dep.client, &loaded.dep.names, n).await);
    }
    // A standby loads every job before it can take over quickly; it says
    // so in its heartbeat.
    let warm_limit = load_limit(bench, n).max(Duration::from_secs_f64(cold * 4.0));

    say(&format!(
        "scale: takeover after SIGKILL (lease TTL {:?})",
        bench.config.lease_ttl
    ));
    procs.push(loaded.dep.scheduler("scheduler-2")?);
    row.standby_warm_s = Some(standby_warm(&loaded.dep, "scheduler-2", warm_limit).await?);
    sleep(bench.settle()).await;
    let killed = stop_leader(&loaded, &mut procs, true).await?;
    let (from, t_kill, old) = (killed.from, killed.at, killed.epoch);
    let limit = load_limit(bench, n) + bench.config.lease_ttl;
    let probes = &loaded.probes;
    let back = probes
        .wait_for(from, limit, |a| a.epoch != old)
        .await
        .ok_or_else(|| BenchError::timeout("the probe firing after the kill", limit))?;
    row.takeover_fire_s = Some(secs(back.recv_ms - t_kill));
    row.takeover_first_late_ms = Some(back.lateness_ms());
    let on_time = probes
        .wait_for(from, limit, |a| {
            a.epoch != old && a.lateness_ms() < ON_TIME_MS
        })
        .await
        .ok_or_else(|| BenchError::timeout("the probe on time after the kill", limit))?;
    row.takeover_on_time_s = Some(secs(on_time.recv_ms - t_kill));
    // The misfired event follows the late fire.
    sleep(Duration::from_millis(1_500)).await;
    let ranges = missed.lock().map(|m| m.clone()).unwrap_or_default();
    let (lost, reported) = lost_instants(&probes.snapshot(), old, on_time.instant_ms, &ranges);
    row.takeover_lost = Some(lost);
    row.takeover_reported_missed = Some(reported);
    say(&format!(
        "  fired again {:.2} s after the kill, on time after {:.2} s, {lost} instants lost, {reported} reported missed",
        secs(back.recv_ms - t_kill),
        secs(on_time.recv_ms - t_kill)
    ));

    say("scale: graceful stop (SIGTERM)");
    procs.push(loaded.dep.scheduler("scheduler-3")?);
    standby_warm(&loaded.dep, "scheduler-3", warm_limit).await?;
    sleep(bench.settle()).await;
    let stopped = stop_leader(&loaded, &mut procs, false).await?;
    let (from, t_term, old) = (stopped.from, stopped.at, stopped.epoch);
    row.graceful_lease_s = lease_change(&loaded.dep, &stopped.holder, t_term, limit).await;
    let fired = probes.wait_for(from, limit, |a| a.epoch != old).await;
    row.graceful_fire_s = fired.map(|a| secs(a.recv_ms - t_term));
    row.graceful_first_late_ms = fired.map(|a| a.lateness_ms());
    say(&format!(
        "  lease moved after {:?} s, standby fired after {:?} s",
        row.graceful_lease_s, row.graceful_fire_s
    ));
    for p in procs.iter_mut() {
        p.terminate(Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// A leader the bench stopped.
#[derive(Debug)]
struct Stopped {
    holder: String,
    /// Probe arrivals before the stop.
    from: usize,
    /// When the signal was sent, Unix ms.
    at: i64,
    /// The epoch of its last probe fire.
    epoch: u64,
}

/// Finds the leader among `procs` and kills it (SIGKILL) or stops it
/// (SIGTERM).
async fn stop_leader(loaded: &Loaded, procs: &mut [Proc], kill: bool) -> Result<Stopped> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        if let Some(l) = loaded.dep.leader().await {
            break l.holder;
        }
        if Instant::now() >= deadline {
            return Err(BenchError::timeout(
                "finding the leader",
                Duration::from_secs(10),
            ));
        }
        sleep(Duration::from_millis(50)).await;
    };
    let leader =
        procs
            .iter_mut()
            .find(|p| p.name == holder)
            .ok_or_else(|| BenchError::Process {
                what: "finding the leader".into(),
                reason: format!("the lease names '{holder}', which the bench did not start"),
            })?;
    let arrivals = loaded.probes.snapshot();
    let epoch = arrivals.last().map(|a| a.epoch).unwrap_or_default();
    let from = arrivals.len();
    let at = now_ms();
    if kill {
        leader.kill().await?;
    } else {
        leader.signal(nix::sys::signal::Signal::SIGTERM)?;
    }
    Ok(Stopped {
        holder,
        from,
        at,
        epoch,
    })
}

/// Seconds from `since` until the lease names another holder than `old`.
async fn lease_change(dep: &Deployment, old: &str, since: i64, limit: Duration) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(l) = dep.leader().await
            && l.holder != old
        {
            return Some(secs(now_ms() - since));
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribes to the probe's `misfired` events; returns the missed ranges
/// (first, last instant in Unix ms) as they come.
async fn watch_misfires(loaded: &Loaded) -> Result<Arc<Mutex<Vec<(i64, i64)>>>> {
    let subject = loaded
        .dep
        .names
        .event_subject("misfired", Some(&job_id("probe", 0)));
    let mut sub = loaded
        .dep
        .client
        .subscribe(subject)
        .await
        .map_err(|e| BenchError::nats("subscribing to misfired events", e))?;
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let out = ranges.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(Event {
                body:
                    EventBody::Misfired {
                        first_missed,
                        last_missed,
                        ..
                    },
                ..
            }) = Event::decode(&m.payload)
                && let Ok(mut r) = out.lock()
            {
                r.push((
                    first_missed.timestamp_millis(),
                    last_missed.timestamp_millis(),
                ));
            }
        }
    });
    Ok(ranges)
}

/// The probe's instants after the last one the old leader (epoch `old`)
/// fired, up to `until`: (lost, reported missed). An instant is fired if any
/// shard message carries it, reported if a misfired range covers it, and
/// lost if neither.
pub fn lost_instants(
    arrivals: &[Arrival],
    old: u64,
    until: i64,
    missed: &[(i64, i64)],
) -> (usize, usize) {
    let fired: HashSet<i64> = arrivals.iter().map(|a| a.instant_ms).collect();
    let Some(last_old) = arrivals
        .iter()
        .filter(|a| a.epoch == old)
        .map(|a| a.instant_ms)
        .max()
    else {
        return (0, 0);
    };
    let (mut lost, mut reported) = (0, 0);
    let mut s = last_old + 1000;
    while s <= until {
        if !fired.contains(&s) {
            if missed.iter().any(|&(a, b)| a <= s && s <= b) {
                reported += 1;
            } else {
                lost += 1;
            }
        }
        s += 1000;
    }
    (lost, reported)
}

/// Waits until scheduler `id` says it is warm; the seconds it took.
async fn standby_warm(dep: &Deployment, id: &str, limit: Duration) -> Result<f64> {
    let started = Instant::now();
    while !dep.warm(id).await {
        if started.elapsed() > limit {
            return Err(BenchError::timeout(format!("standby {id} warm"), limit));
        }
        sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64();
    say(&format!("  standby {id} warm after {took:.2} s"));
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(instant_s: i64, epoch: u64) -> Arrival {
        Arrival {
            key: 0,
            instant_ms: instant_s * 1000,
            recv_ms: instant_s * 1000 + 5,
            epoch,
        }
    }

    #[test]
    fn instants_are_fired_reported_or_lost() {
        // Old leader fired 1..=3; new leader fired 7 (late, for 4..=6 per the
        // event, which names only 5..=6) and 8 on time.
        let arrivals = vec![a(1, 1), a(2, 1), a(3, 1), a(7, 2), a(8, 2)];
        let missed = vec![(5_000, 6_000)];
        assert_eq!(lost_instants(&arrivals, 1, 8_000, &missed), (1, 2));
        // Nothing lost when the event covers the gap.
        assert_eq!(
            lost_instants(&arrivals, 1, 8_000, &[(4_000, 6_000)]),
            (0, 3)
        );
        assert_eq!(lost_instants(&[], 1, 8_000, &[]), (0, 0));
    }
}
