//! One chaos run, start to finish:
//!
//! 1. print the seed and the fault plan; make the run directory;
//! 2. start nats-server (or a 3-node cluster), 3 schedulers and 3 workers as
//!    child processes; wait for a leader and the control API;
//! 3. put the jobs ([`crate::jobs`]);
//! 4. inject the planned faults one at a time ([`crate::faults`]), restarting
//!    any process that exits on its own (and reporting it);
//! 5. after the calm end, stop the schedulers (SIGTERM), wait until the work
//!    stream holds no shard message, stop the workers;
//! 6. read the streams ([`crate::history`]) and the execution log, run the
//!    checks ([`crate::check`]), and report ([`crate::report`]).
//!
//! Every wait is bounded. Children die with their owners (`Drop`), so an
//! error, a panic or an interrupt (the run future is dropped) leaves no
//! process behind; the run directory is then kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use jetcron_shared::api::ApiClient;
use jetcron_shared::setup::{self, SetupOptions};
use jetcron_shared::{Job, Names};
use thiserror::Error;
use tokio::time::{Instant, sleep};

use crate::check::{self, DueJob, Violation};
use crate::console::Console;
use crate::execlog::{ExecLog, ExecLogError};
use crate::faults::{FaultError, FaultRecord, Injector, Outcome};
use crate::history::{self, History, HistoryError};
use crate::jobs::{self, ChaosJob};
use crate::leader;
use crate::plan::{MIN_CALM, Plan, PlanSettings, PlannedFault};
use crate::procs::{Binaries, Fleet, FleetSettings, ProcError};
use crate::report::{self, Report};
use crate::servers::{ServerError, Servers};

/// Settings of a run; `Default` is what `jetcron-chaos` runs without flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// The chaos phase: from the jobs being put to the schedulers being stopped.
    pub duration: Duration,
    /// Plan seed; drawn from the clock when absent (and printed).
    pub seed: Option<u64>,
    pub cluster: bool,
    /// Keep the run directory here (must be new or empty); else a temporary
    /// directory, removed when the run passes.
    pub keep: Option<PathBuf>,
    /// Where `jetcron-scheduler` and `jetcron-worker` are; default: next to this binary.
    pub bin_dir: Option<PathBuf>,
    pub schedulers: usize,
    pub workers: usize,
    pub lease_ttl: Duration,
    pub misfire_threshold: Duration,
    pub concurrency: usize,
    /// How long the work stream may take to drain after the stop.
    pub drain_limit: Duration,
    /// No fault in the first part of the run ...
    pub warmup: Duration,
    /// ... nor in the last.
    pub quiet_end: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            duration: Duration::from_secs(90),
            seed: None,
            cluster: false,
            keep: None,
            bin_dir: None,
            schedulers: 3,
            workers: 3,
            lease_ttl: Duration::from_secs(3),
            misfire_threshold: Duration::from_secs(1),
            concurrency: 6,
            drain_limit: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
            quiet_end: Duration::from_secs(15),
        }
    }
}

impl Config {
    pub fn plan_settings(&self) -> PlanSettings {
        PlanSettings {
            duration: self.duration,
            cluster: self.cluster,
            lease_ttl: self.lease_ttl,
            warmup: self.warmup,
            quiet_end: self.quiet_end,
        }
    }
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    ExecLog(#[from] ExecLogError),
    #[error("run directory {path}: {reason}")]
    Dir { path: String, reason: String },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("cannot put job {job}: {reason}")]
    Put { job: String, reason: String },
    #[error("interrupted; every child process was killed")]
    Interrupted,
}

/// A run that did not get to its report.
#[derive(Debug, Error)]
#[error("{error} (run directory kept: {})", dir.display())]
pub struct RunFailure {
    pub dir: PathBuf,
    #[source]
    pub error: RunError,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    pub report: Report,
    /// The run directory, if it was kept.
    pub kept: Option<PathBuf>,
}

/// Runs once. `interrupt` ends the run early (Ctrl-C): the run is dropped,
/// which kills every child.
pub async fn run(
    config: Config,
    console: &Console,
    interrupt: impl Future<Output = ()>,
) -> Result<Finished, RunFailure> {
    let seed = config.seed.unwrap_or_else(seed_from_clock);
    let plan = Plan::generate(seed, &config.plan_settings());
    console.say(format!(
        "seed {seed} (rerun the same plan with --seed {seed}); {}",
        if config.cluster {
            "3-node cluster"
        } else {
            "single server"
        }
    ));
    for line in plan.to_string().lines() {
        console.say(line);
    }
    let dir = match run_dir(config.keep.as_deref(), seed) {
        Ok(dir) => dir,
        Err(error) => {
            return Err(RunFailure {
                dir: PathBuf::new(),
                error,
            });
        }
    };
    console.log_to(&dir.join("chaos.log"));
    let _ = std::fs::write(dir.join("plan.txt"), plan.to_string());
    console.say(format!("run directory: {}", dir.display()));

    let outcome = tokio::select! {
        r = run_in(&config, seed, &plan, &dir, console) => r,
        () = interrupt => Err(RunError::Interrupted),
    };
    match outcome {
        Ok(report) => {
            let text = report.render(usize::MAX);
            let _ = std::fs::write(dir.join("report.txt"), &text);
            let kept = if report.passed() && config.keep.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
                None
            } else {
                Some(dir)
            };
            Ok(Finished { report, kept })
        }
        Err(error) => Err(RunFailure { dir, error }),
    }
}

/// A seed for runs that were not given one.
pub fn seed_from_clock() -> u64 {
    let now = Utc::now();
    (now.timestamp() as u64).wrapping_mul(1_000_000_007) ^ u64::from(now.timestamp_subsec_nanos())
}

fn run_dir(keep: Option<&Path>, seed: u64) -> Result<PathBuf, RunError> {
    let dir = match keep {
        Some(dir) => dir.to_path_buf(),
        None => {
            std::env::temp_dir().join(format!("jetcron-chaos-{seed}-{}", Utc::now().timestamp()))
        }
    };
    let bad = |reason: String| RunError::Dir {
        path: dir.display().to_string(),
        reason,
    };
    if let Ok(mut entries) = std::fs::read_dir(&dir)
        && entries.next().is_some()
    {
        return Err(bad(
            "exists and is not empty; give a new or empty directory".into(),
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
    // Absolute, because the job commands run in the workers' directory.
    std::fs::canonicalize(&dir).map_err(|e| bad(e.to_string()))
}

async fn run_in(
    config: &Config,
    seed: u64,
    plan: &Plan,
    dir: &Path,
    console: &Console,
) -> Result<Report, RunError> {
    let bins = match &config.bin_dir {
        Some(d) => Binaries::in_dir(d)?,
        None => Binaries::next_to_self()?,
    };
    let mut servers = Servers::start(config.cluster).await?;
    console.say(format!("nats-server up: {}", servers.urls()));
    let result = with_servers(config, seed, plan, dir, console, bins, &mut servers).await;
    servers.copy_logs(dir);
    result
}

#[allow(clippy::too_many_arguments)]
async fn with_servers(
    config: &Config,
    seed: u64,
    plan: &Plan,
    dir: &Path,
    console: &Console,
    bins: Binaries,
    servers: &mut Servers,
) -> Result<Report, RunError> {
    let names = Names::default();
    let client = servers.connect().await?;
    let js = jetstream::new(client.clone());
    let replicas = if config.cluster { 3 } else { 1 };
    // Created here, before any scheduler or worker would: the checks read
    // every event of the run, so none may be dropped for the per-subject
    // bound that keeps a production events stream small.
    let opts = SetupOptions {
        replicas,
        lease_ttl: config.lease_ttl,
        events_per_subject: -1,
        ..SetupOptions::default()
    };
    tokio::time::timeout(Duration::from_secs(30), setup::ensure(&js, &names, &opts))
        .await
        .map_err(|_| RunError::NotReady("creating the streams and buckets timed out".into()))?
        .map_err(|e| RunError::NotReady(e.to_string()))?;
    let mut fleet = Fleet::start(&FleetSettings {
        bins,
        urls: servers.urls(),
        replicas,
        schedulers: config.schedulers,
        workers: config.workers,
        lease_ttl: config.lease_ttl,
        misfire_threshold: config.misfire_threshold,
        ack_wait: jobs::ACK_WAIT,
        concurrency: config.concurrency,
        dir: dir.to_path_buf(),
    })?;
    console.say(format!(
        "started {} schedulers and {} workers (logs in the run directory)",
        fleet.schedulers.len(),
        fleet.workers.len()
    ));
    let api = ApiClient::new(client.clone(), names.clone()).with_timeout(Duration::from_secs(3));
    wait_ready(&js, &names, &api, Duration::from_secs(60)).await?;

    let exec_log = dir.join("exec.log");
    let job_set = jobs::job_set(&exec_log);
    let due_jobs = put_jobs(&api, &job_set).await?;
    console.say(format!(
        "put {} jobs; chaos for {}s",
        job_set.len(),
        config.duration.as_secs()
    ));

    let mut unplanned: Vec<Violation> = Vec::new();
    let mut injector = Injector {
        fleet: &mut fleet,
        servers,
        js: js.clone(),
        names: names.clone(),
        exec_log: exec_log.clone(),
        job_kinds: job_set
            .iter()
            .map(|j| (j.id().to_string(), j.kind))
            .collect::<HashMap<_, _>>(),
        lease_ttl: config.lease_ttl,
        worker_kills: Vec::new(),
    };
    let t0 = Instant::now();
    let faults_end = t0 + config.plan_settings().faults_end();
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut skipped: Vec<(PlannedFault, String)> = Vec::new();
    let mut calm_from: Option<Instant> = None;
    for fault in &plan.faults {
        let mut at = t0 + fault.at;
        if let Some(c) = calm_from {
            at = at.max(c + MIN_CALM);
        }
        if at + fault.length() > faults_end {
            console.say(format!(
                "fault #{} {}: not run, out of time",
                fault.number, fault.kind
            ));
            skipped.push((fault.clone(), "out of time".into()));
            continue;
        }
        watch_until(&mut injector, at, console, &mut unplanned).await;
        console.say(format!("fault #{} {}: starting", fault.number, fault.kind));
        match injector.inject(fault).await? {
            Outcome::Done(record) => {
                console.say(format!(
                    "fault #{} {} on {}: outage ended after {:.1}s; {}",
                    record.number,
                    record.kind,
                    record.target,
                    (record.ended - record.start).num_milliseconds() as f64 / 1000.0,
                    record.note
                ));
                records.push(record);
            }
            Outcome::Skipped(why) => {
                console.say(format!(
                    "fault #{} {}: not run, {why}",
                    fault.number, fault.kind
                ));
                skipped.push((fault.clone(), why));
            }
        }
        calm_from = Some(Instant::now());
    }
    watch_until(&mut injector, t0 + config.duration, console, &mut unplanned).await;
    let worker_kills = std::mem::take(&mut injector.worker_kills);
    drop(injector);

    let stopped_at = Utc::now();
    console.say("stopping the schedulers (SIGTERM)");
    let killed = Fleet::terminate_all(&mut fleet.schedulers, Duration::from_secs(10)).await?;
    if !killed.is_empty() {
        console.say(format!(
            "did not stop within 10s, killed: {}",
            killed.join(", ")
        ));
    }
    let drained_in = drain(&js, &names, config.drain_limit, console).await;
    note_unplanned(&mut fleet, console, &mut unplanned);
    console.say("stopping the workers (SIGTERM)");
    let killed = Fleet::terminate_all(&mut fleet.workers, Duration::from_secs(40)).await?;
    if !killed.is_empty() {
        console.say(format!(
            "did not stop within 40s, killed: {}",
            killed.join(", ")
        ));
    }

    console.say("reading the results and events streams and the work fences");
    let history = History::read(&js, &names).await?;
    let log = ExecLog::read(&exec_log)?;
    console.say(format!(
        "checking {} results, {} events, {} fences, {} logged executions",
        history.results.len(),
        history.events.len(),
        history.fences.len(),
        log.executions.len()
    ));
    let input = check::Input {
        results: &history.results,
        events: &history.events,
        fences: &history.fences,
        work_left: &history.work_left,
        executions: &log.executions,
        worker_kills: &worker_kills,
        jobs: &due_jobs,
        faults: &records,
        stopped_at,
    };
    let (mut violations, counts) = check::check_all(&input);
    violations.extend(unplanned);
    Ok(Report {
        seed,
        duration: config.duration,
        cluster: config.cluster,
        takeovers: report::takeovers(&records, &history.events),
        resumes: report::resumes(&records, &history.events),
        stalls: check::stall::stalls(&records, &history.events, stopped_at),
        faults: records,
        skipped,
        counts,
        results: history.results.len(),
        events: history.events.len(),
        fences: history.fences.len(),
        undecodable: history.undecodable,
        undecodable_count: history.undecodable_count,
        drained_in,
        violations,
    })
}

/// Waits for a lease holder and an answering control API.
async fn wait_ready(
    js: &jetstream::Context,
    names: &Names,
    api: &ApiClient,
    limit: Duration,
) -> Result<(), RunError> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match (leader::current(js, names).await, api.status().await) {
            (Some(_), Ok(_)) => return Ok(()),
            (None, _) => "no lease holder".to_string(),
            (_, Err(e)) => format!("control API: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(RunError::NotReady(format!(
                "{last} after {limit:?}; see the scheduler logs"
            )));
        }
        sleep(Duration::from_millis(250)).await;
    }
}

async fn put_jobs(api: &ApiClient, jobs: &[ChaosJob]) -> Result<Vec<DueJob>, RunError> {
    const TRIES: u32 = 5;
    let mut due = Vec::with_capacity(jobs.len());
    for job in jobs {
        let put_at: DateTime<Utc> = Utc::now();
        let mut tries = 0;
        loop {
            tries += 1;
            match api.put(&job.spec).await {
                Ok(_) => break,
                Err(e) if tries >= TRIES => {
                    return Err(RunError::Put {
                        job: job.id().to_string(),
                        reason: e.to_string(),
                    });
                }
                Err(_) => sleep(Duration::from_secs(1)).await,
            }
        }
        let parsed = Job::validate(job.spec.clone()).map_err(|e| RunError::Put {
            job: job.id().to_string(),
            reason: e.to_string(),
        })?;
        due.push(DueJob {
            id: job.id().to_string(),
            schedule: parsed.schedule,
            put_at,
        });
    }
    Ok(due)
}

/// Sleeps until `until`, restarting (and reporting) processes that exit on their own.
async fn watch_until(
    injector: &mut Injector<'_>,
    until: Instant,
    console: &Console,
    unplanned: &mut Vec<Violation>,
) {
    loop {
        note_unplanned(injector.fleet, console, unplanned);
        let now = Instant::now();
        if now >= until {
            return;
        }
        sleep((until - now).min(Duration::from_millis(250))).await;
    }
}

fn note_unplanned(fleet: &mut Fleet, console: &Console, unplanned: &mut Vec<Violation>) {
    for (name, status, log) in fleet.restart_unplanned() {
        console.say(format!("{name} exited on its own ({status}); restarted it"));
        unplanned.push(Violation::UnplannedExit {
            process: name,
            status: status.to_string(),
            at: Utc::now(),
            log: log.display().to_string(),
        });
    }
}

/// Waits until the work stream holds no shard message; how long that took.
/// Gives up early when messages remain that no consumer will deliver again
/// (nothing pending, nothing waiting for an ack, for [`IDLE_LIMIT`]).
async fn drain(
    js: &jetstream::Context,
    names: &Names,
    limit: Duration,
    console: &Console,
) -> Option<Duration> {
    const IDLE_LIMIT: Duration = Duration::from_secs(10);
    let start = Instant::now();
    let mut last_said = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        match history::work_left(js, names).await {
            Ok(0) => {
                console.say(format!(
                    "work stream drained in {:.1}s",
                    start.elapsed().as_secs_f64()
                ));
                return Some(start.elapsed());
            }
            Ok(n) => {
                if history::work_idle(js, names).await.unwrap_or(false) {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= IDLE_LIMIT {
                        console.say(format!(
                            "{n} shard message(s) left that no consumer will deliver (nothing \
                             pending or unacked for {IDLE_LIMIT:?}); not waiting for them"
                        ));
                        return None;
                    }
                } else {
                    idle_since = None;
                }
                if last_said.elapsed() >= Duration::from_secs(5) {
                    console.say(format!("waiting for {n} shard message(s) to finish"));
                    last_said = Instant::now();
                }
            }
            Err(e) => console.say(format!("cannot count the shard messages left: {e}")),
        }
        if start.elapsed() >= limit {
            console.say(format!("work stream not drained within {limit:?}"));
            return None;
        }
        sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_directory_must_be_new_or_empty() {
        let base = std::env::temp_dir().join(format!("jetcron-chaos-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let made = run_dir(Some(&base), 1).unwrap();
        assert!(made.is_absolute());
        std::fs::write(made.join("exec.log"), "x").unwrap();
        assert!(matches!(run_dir(Some(&base), 1), Err(RunError::Dir { .. })));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn default_config_plans_faults_inside_the_run() {
        let config = Config {
            duration: Duration::from_secs(75),
            ..Config::default()
        };
        let plan = Plan::generate(7, &config.plan_settings());
        assert!(!plan.faults.is_empty());
        for f in &plan.faults {
            assert!(f.at + f.length() <= config.duration - config.quiet_end);
        }
    }
}
