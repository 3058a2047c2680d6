//! jetcron benchmark: the real binaries next to plain NATS anchors, in one
//! run, with the figures written into the docs.
//!
//! - [`lateness`]: jobs firing every second at several loads, jetcron and
//!   NATS-native schedules ([`native`]) alternating.
//! - [`burst`]: many jobs due in one second, next to raw async publishing.
//! - [`scale`]: many registered jobs: cold start, memory, takeover after
//!   SIGKILL, graceful stop.
//! - [`api`]: control API latency with many jobs stored.
//! - [`worker`]: one worker's shards/s next to plain pull + ack.
//! - [`deploy`]: a fresh nats-server with jetcron's resources, job
//!   definitions, scheduler and worker processes ([`procs`]); [`server`]
//!   starts the nats-servers.
//! - [`collect`]: the consumer every fire is measured at; [`publish`] the
//!   bounded async publisher; [`usage`] CPU and memory from /proc;
//!   [`stats`], [`clock`].
//! - [`report`], [`tables`], [`svg`], [`machine`]: performance.json, the
//!   markdown tables and the chart.
//!
//! A run: [`Config`] -> each chosen scenario on fresh servers -> a
//! [`report::Report`] -> printed, and written to the output directory.

pub mod api;
pub mod burst;
pub mod clock;
pub mod collect;
pub mod deploy;
pub mod error;
pub mod lateness;
pub mod machine;
pub mod native;
pub mod procs;
pub mod publish;
pub mod report;
pub mod scale;
pub mod server;
pub mod stats;
pub mod svg;
pub mod tables;
pub mod usage;
pub mod worker;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Result;
use crate::procs::Binaries;
use crate::report::Report;

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Lateness,
    Burst,
    Scale,
    Api,
    Worker,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Lateness,
        Scenario::Burst,
        Scenario::Scale,
        Scenario::Api,
        Scenario::Worker,
    ];
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Scenario, String> {
        match s.trim() {
            "lateness" => Ok(Scenario::Lateness),
            "burst" => Ok(Scenario::Burst),
            "scale" => Ok(Scenario::Scale),
            "api" => Ok(Scenario::Api),
            "worker" => Ok(Scenario::Worker),
            other => Err(format!(
                "unknown scenario '{other}' (lateness, burst, scale, api, worker)"
            )),
        }
    }
}

/// What to run and how long.
#[derive(Debug, Clone)]
pub struct Config {
    pub scenarios: Vec<Scenario>,
    /// Lateness: jobs firing every second, one step per load.
    pub loads: Vec<usize>,
    /// Lateness: the measured window.
    pub duration: Duration,
    /// Lateness: warm-up before the window.
    pub warmup: Duration,
    /// Burst: jobs due in the same second.
    pub bursts: Vec<usize>,
    /// Scale: registered jobs; the API scenario uses the largest.
    pub jobs_scale: Vec<usize>,
    pub api_calls: usize,
    pub worker_shards: usize,
    pub worker_concurrency: usize,
    /// Run slots of the embedded worker's no-op handler.
    pub handler_concurrency: usize,
    pub lease_ttl: Duration,
    pub bin_dir: PathBuf,
    /// Tiny counts, short waits: proves every scenario runs.
    pub smoke: bool,
}

impl Config {
    /// The full run.
    pub fn full() -> Config {
        Config {
            scenarios: Scenario::ALL.to_vec(),
            loads: vec![100, 1_000, 10_000, 20_000],
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(5),
            bursts: vec![10_000, 50_000],
            jobs_scale: vec![100_000, 1_000_000],
            api_calls: 50,
            worker_shards: 20_000,
            worker_concurrency: 16,
            handler_concurrency: 64,
            lease_ttl: Duration::from_secs(3),
            bin_dir: Binaries::default_dir(),
            smoke: false,
        }
    }

    /// A few seconds per scenario, for CI.
    pub fn smoke() -> Config {
        Config {
            loads: vec![20],
            duration: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            bursts: vec![200],
            jobs_scale: vec![1_000],
            api_calls: 5,
            worker_shards: 200,
            worker_concurrency: 8,
            handler_concurrency: 8,
            smoke: true,
            ..Config::full()
        }
    }
}

/// A run in progress: the settings, the binaries, where child logs go.
#[derive(Debug)]
pub struct Bench {
    pub config: Config,
    pub bins: Binaries,
    pub logs: PathBuf,
}

impl Bench {
    /// How long a system may take until `n` jobs fire (a scheduler loading
    /// them, the first fires arriving).
    pub fn ready_limit(&self, n: usize) -> Duration {
        let base = if self.config.smoke { 20_000 } else { 30_000 };
        Duration::from_millis(base + n as u64 * 2)
    }

    /// How long after a lateness window late fires are still counted.
    pub fn grace(&self) -> Duration {
        if self.config.smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3)
        }
    }

    /// A pause for a process to settle (memory after load, a standby
    /// loading the jobs).
    pub fn settle(&self) -> Duration {
        if self.config.smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3)
        }
    }

    /// How long `n` messages may take to be stored or drained.
    pub fn drain_limit(&self, n: usize) -> Duration {
        Duration::from_millis(30_000 + n as u64 * 5)
    }
}

/// A progress line on stderr.
pub fn say(line: &str) {
    eprintln!("{line}");
}

/// Runs the chosen scenarios and returns every figure.
pub async fn run(config: Config, command: String) -> Result<Report> {
    let bins = Binaries::in_dir(&config.bin_dir)?;
    let logs = tempfile::Builder::new()
        .prefix("jetcron-bench-")
        .tempdir()
        .map_err(|e| error::BenchError::io("creating a log directory", e))?;
    let run_info = machine::run_info(command);
    let bench = Bench {
        config,
        bins,
        logs: logs.path().to_path_buf(),
    };
    let has = |s: Scenario| bench.config.scenarios.contains(&s);
    let mut report = Report {
        run: run_info,
        smoke: bench.config.smoke,
        lateness: None,
        burst: None,
        scale: None,
        api: None,
        worker: None,
    };
    if has(Scenario::Lateness) {
        report.lateness = Some(lateness::run(&bench).await);
    }
    if has(Scenario::Burst) {
        report.burst = Some(burst::run(&bench).await);
    }
    let api_jobs = bench.config.jobs_scale.iter().copied().max();
    if has(Scenario::Scale) {
        let api_at = api_jobs.filter(|_| has(Scenario::Api));
        let (scale, api) = scale::run(&bench, api_at).await;
        report.scale = Some(scale);
        report.api = api;
    } else if has(Scenario::Api) {
        report.api = Some(api::standalone(&bench, api_jobs.unwrap_or(1_000_000)).await);
    }
    if has(Scenario::Worker) {
        report.worker = Some(worker::run(&bench).await);
    }
    if report.missing().is_empty() {
        drop(logs);
    } else {
        let kept = logs.keep();
        say(&format!("process logs kept in {}", kept.display()));
    }
    Ok(report)
}
