//! Carries out one planned fault and records what happened: its kind and
//! target, when it started, when its outage ended (the process continued,
//! the replica or worker was back, the server accepted clients again), and
//! the outage the stall check allows for.
//!
//! | kind | target | outage end | outage allowed for (invariant 6) |
//! |---|---|---|---|
//! | kill-leader | the lease holder | replica restarted | the lease TTL: a standby can take over only once the lease lapsed |
//! | stop-leader | the lease holder | SIGCONT | the lease TTL |
//! | kill-worker | a worker running a shard | worker restarted | none |
//! | kill-server | the nats-server | server accepts clients again | kill to accepting clients |
//! | kill-node | one cluster node | node answers JetStream again | kill until every jetcron stream has a leader again (measured) |

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use nix::sys::signal::Signal;
use thiserror::Error;
use tokio::time::{Instant, sleep, timeout};

use crate::execlog::ExecLog;
use crate::jobs::JobKind;
use crate::leader;
use crate::plan::{FaultKind, PlannedFault};
use crate::procs::{Fleet, ProcError};
use crate::servers::{self, ServerError, Servers};

/// Longest wait for a lease holder before a leader fault is skipped.
const FIND_LEADER: Duration = Duration::from_secs(10);
/// Longest wait for a worker that runs a shard ...
const FIND_RUNNING: Duration = Duration::from_secs(25);
/// ... of which so long for one with a long run (slow jobs start every 20 s).
const FIND_LONG_RUN: Duration = Duration::from_secs(21);
/// Tail of the execution log read to find running shards: the last 15 s
/// hold about 100 KiB (some 60 lines of ~100 bytes a second).
const RECENT_LOG_BYTES: u64 = 1 << 20;
/// Longest wait for every stream to be led again after a node kill.
const RELEAD_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum FaultError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A worker the plan SIGKILLed: results of its runs may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerKill {
    pub pid: u32,
    pub at: DateTime<Utc>,
}

/// One fault as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRecord {
    pub number: usize,
    pub kind: FaultKind,
    /// `scheduler-2`, `worker-1`, `nats-server`, `n3`.
    pub target: String,
    pub start: DateTime<Utc>,
    /// When the outage ended.
    pub ended: DateTime<Utc>,
    /// The outage the stall check allows for.
    pub outage: Duration,
    /// The lease epoch before a leader fault.
    pub epoch_before: Option<u64>,
    /// Details for the report.
    pub note: String,
}

/// What became of a planned fault.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(FaultRecord),
    Skipped(String),
}

/// Everything a fault may touch.
#[derive(Debug)]
pub struct Injector<'a> {
    pub fleet: &'a mut Fleet,
    pub servers: &'a mut Servers,
    pub js: jetstream::Context,
    pub names: Names,
    pub exec_log: PathBuf,
    pub job_kinds: HashMap<String, JobKind>,
    pub lease_ttl: Duration,
    pub worker_kills: Vec<WorkerKill>,
}

impl Injector<'_> {
    pub async fn inject(&mut self, f: &PlannedFault) -> Result<Outcome, FaultError> {
        match f.kind {
            FaultKind::KillLeader | FaultKind::StopLeader => self.leader_fault(f).await,
            FaultKind::KillWorker => self.kill_worker(f).await,
            FaultKind::KillServer => self.kill_server(f).await,
            FaultKind::KillNode => self.kill_node(f).await,
        }
    }

    async fn leader_fault(&mut self, f: &PlannedFault) -> Result<Outcome, FaultError> {
        let deadline = Instant::now() + FIND_LEADER;
        let lease = loop {
            if let Some(lease) = leader::current(&self.js, &self.names).await {
                break lease;
            }
            if Instant::now() >= deadline {
                return Ok(Outcome::Skipped(format!(
                    "no lease holder within {FIND_LEADER:?}"
                )));
            }
            sleep(Duration::from_millis(200)).await;
        };
        let Some(proc) = self.fleet.scheduler(&lease.holder) else {
            return Ok(Outcome::Skipped(format!(
                "lease holder '{}' is not one of ours",
                lease.holder
            )));
        };
        let pid = proc.pid().unwrap_or(0);
        let start = Utc::now();
        if f.kind == FaultKind::KillLeader {
            proc.kill().await?;
            sleep(f.hold).await;
            proc.start()?;
        } else {
            proc.signal(Signal::SIGSTOP)?;
            sleep(f.hold).await;
            proc.signal(Signal::SIGCONT)?;
        }
        let ended = Utc::now();
        let what = if f.kind == FaultKind::KillLeader {
            "restarted"
        } else {
            "continued"
        };
        Ok(Outcome::Done(FaultRecord {
            number: f.number,
            kind: f.kind,
            target: lease.holder.clone(),
            start,
            ended,
            outage: self.lease_ttl,
            epoch_before: lease.epoch,
            note: format!(
                "pid {pid}, epoch {:?}, {what} after {:.1}s",
                lease.epoch,
                f.hold.as_secs_f64()
            ),
        }))
    }

    /// Worker pids with a shard running now, per the execution log, with
    /// that shard; `long` keeps only shards with a second or more to go.
    fn running_workers(&mut self, long: bool) -> Vec<(u32, String)> {
        let ours: BTreeSet<u32> = self.fleet.workers.iter().filter_map(|w| w.pid()).collect();
        let Ok(log) = ExecLog::read_tail(&self.exec_log, RECENT_LOG_BYTES) else {
            return Vec::new();
        };
        let now = Utc::now();
        let to_go = if long {
            chrono::Duration::seconds(1)
        } else {
            chrono::Duration::zero()
        };
        let mut running: Vec<(u32, String)> = log
            .running_since(now - chrono::Duration::seconds(15))
            .into_iter()
            .filter(|e| ours.contains(&e.worker_pid))
            .filter(|e| {
                let longest = self
                    .job_kinds
                    .get(&e.job)
                    .map_or(Duration::ZERO, |k| k.longest_run());
                let longest = chrono::Duration::from_std(longest).unwrap_or_default();
                e.started.is_some_and(|s| s + longest > now + to_go)
            })
            .map(|e| {
                let run = format!(
                    "{} {} shard {} attempt {} run {}",
                    e.job, e.instant, e.shard, e.attempt, e.run_id
                );
                (e.worker_pid, run)
            })
            .collect();
        running.sort();
        running
    }

    async fn kill_worker(&mut self, f: &PlannedFault) -> Result<Outcome, FaultError> {
        // Prefer a worker in the middle of a long run (slow and timing-out
        // jobs start every few seconds); settle for any running shard late.
        let start_looking = Instant::now();
        let mut running = self.running_workers(true);
        while running.is_empty() && start_looking.elapsed() < FIND_RUNNING {
            sleep(Duration::from_millis(200)).await;
            running = self.running_workers(start_looking.elapsed() < FIND_LONG_RUN);
        }
        let pids: Vec<u32> = running
            .iter()
            .map(|(p, _)| *p)
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        let (index, note) = if pids.is_empty() {
            (
                (f.pick % self.fleet.workers.len().max(1) as u64) as usize,
                format!("no shard was running within {FIND_RUNNING:?}"),
            )
        } else {
            let pid = pids[(f.pick % pids.len() as u64) as usize];
            let runs: Vec<&str> = running
                .iter()
                .filter(|(p, _)| *p == pid)
                .map(|(_, r)| r.as_str())
                .collect();
            let index = self
                .fleet
                .workers
                .iter()
                .position(|w| w.pid() == Some(pid))
                .unwrap_or(0);
            (index, format!("running: {}", runs.join("; ")))
        };
        let Some(worker) = self.fleet.workers.get_mut(index) else {
            return Ok(Outcome::Skipped("no worker".into()));
        };
        let pid = worker.pid().unwrap_or(0);
        let start = Utc::now();
        worker.kill().await?;
        self.worker_kills.push(WorkerKill { pid, at: start });
        sleep(f.hold).await;
        worker.start()?;
        Ok(Outcome::Done(FaultRecord {
            number: f.number,
            kind: f.kind,
            target: worker.name.clone(),
            start,
            ended: Utc::now(),
            outage: Duration::ZERO,
            epoch_before: None,
            note: format!("pid {pid}, {note}"),
        }))
    }

    async fn kill_server(&mut self, f: &PlannedFault) -> Result<Outcome, FaultError> {
        let target = self.servers.node_name(0).unwrap_or_default();
        let start = Utc::now();
        self.servers.kill(0).await?;
        sleep(f.hold).await;
        self.servers.restart(0).await?;
        let ended = Utc::now();
        let outage = (ended - start).to_std().unwrap_or_default();
        Ok(Outcome::Done(FaultRecord {
            number: f.number,
            kind: f.kind,
            target: format!("nats-server {target}"),
            start,
            ended,
            outage,
            epoch_before: None,
            note: format!(
                "down {:.1}s, accepting clients again after {:.2}s",
                f.hold.as_secs_f64(),
                outage.as_secs_f64()
            ),
        }))
    }

    async fn kill_node(&mut self, f: &PlannedFault) -> Result<Outcome, FaultError> {
        let index = (f.pick % self.servers.node_count().max(1) as u64) as usize;
        let name = self.servers.node_name(index).unwrap_or_default();
        let led = stream_leaders(&self.js, &self.names).await;
        let led_here: Vec<&str> = led
            .iter()
            .filter(|(_, l)| *l == name)
            .map(|(s, _)| s.as_str())
            .collect();
        let start = Utc::now();
        let t0 = Instant::now();
        self.servers.kill(index).await?;
        let back = AtomicBool::new(false);
        let probe =
            servers::wait_streams_led(&self.js, &self.names, &name, &back, t0, RELEAD_LIMIT);
        let servers = &mut *self.servers;
        let restart = async {
            sleep(f.hold).await;
            let restarted = servers.restart(index).await.map(|()| Utc::now());
            back.store(true, Ordering::SeqCst);
            restarted
        };
        let (releaded, restarted) = tokio::join!(probe, restart);
        let ended = restarted?;
        let (outage, how) = match releaded {
            Some(d) => (
                d,
                format!("every stream led again after {:.2}s", d.as_secs_f64()),
            ),
            None => (
                RELEAD_LIMIT,
                format!("streams not all led again within {RELEAD_LIMIT:?}"),
            ),
        };
        Ok(Outcome::Done(FaultRecord {
            number: f.number,
            kind: f.kind,
            target: name,
            start,
            ended,
            outage,
            epoch_before: None,
            note: format!(
                "led {}; {how}; node back after {:.1}s",
                if led_here.is_empty() {
                    "no jetcron stream".to_string()
                } else {
                    led_here.join(", ")
                },
                (ended - start).num_milliseconds() as f64 / 1000.0
            ),
        }))
    }
}

/// (stream, leader) of every jetcron stream that answers now.
async fn stream_leaders(js: &jetstream::Context, names: &Names) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in servers::jetcron_streams(names) {
        if let Ok(Ok(stream)) = timeout(Duration::from_secs(2), js.get_stream(&name)).await
            && let Some(leader) = stream
                .cached_info()
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
        {
            out.push((name, leader));
        }
    }
    out
}
