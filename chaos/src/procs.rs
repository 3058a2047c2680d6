//! The schedulers and workers, as real child processes of the binaries built
//! next to this one.
//!
//! A [`Proc`] owns its child until it has seen it exit, so a signal can never
//! reach a recycled pid. Dropping a `Proc` (also while unwinding from a panic,
//! or when an interrupted run is dropped) kills the child with SIGKILL and
//! reaps it. Children run in process groups of their own: a Ctrl-C in the
//! terminal reaches only the chaos runner, which then cleans up.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::time::{Instant, sleep};

pub const SCHEDULER_BIN: &str = "jetcron-scheduler";
pub const WORKER_BIN: &str = "jetcron-worker";

/// How long a killed process may take to disappear.
const KILL_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ProcError {
    #[error(
        "{name} not found in {dir} (next to this binary); build it with `cargo build --workspace --bins`"
    )]
    MissingBinary { name: &'static str, dir: String },
    #[error("cannot find this binary's own path: {0}")]
    OwnPath(#[source] std::io::Error),
    #[error("cannot open the log {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send {signal} to {name} (pid {pid}): {errno}")]
    Signal {
        name: String,
        pid: u32,
        signal: Signal,
        errno: Errno,
    },
    #[error("{name} (pid {pid}) did not exit within {limit:?} of SIGKILL")]
    Stuck {
        name: String,
        pid: u32,
        limit: Duration,
    },
}

/// Where the scheduler and worker binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub scheduler: PathBuf,
    pub worker: PathBuf,
}

impl Binaries {
    /// Next to the running executable (`target/debug/` under `cargo run`).
    pub fn next_to_self() -> Result<Binaries, ProcError> {
        let exe = std::env::current_exe().map_err(ProcError::OwnPath)?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        Binaries::in_dir(dir)
    }

    pub fn in_dir(dir: &Path) -> Result<Binaries, ProcError> {
        let find = |name: &'static str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ProcError::MissingBinary {
                    name,
                    dir: dir.display().to_string(),
                })
            }
        };
        Ok(Binaries {
            scheduler: find(SCHEDULER_BIN)?,
            worker: find(WORKER_BIN)?,
        })
    }
}

/// One scheduler or worker: how to start it, and the running child.
#[derive(Debug)]
pub struct Proc {
    /// `scheduler-1`, `worker-2`, ...: also its `--id`.
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    /// Its stdout and stderr, appended over restarts.
    pub log: PathBuf,
    child: Option<Child>,
    /// Set while SIGSTOPped.
    stopped: bool,
    /// Times started.
    pub starts: u32,
}

impl Proc {
    pub fn new(name: String, bin: PathBuf, args: Vec<String>, log: PathBuf) -> Proc {
        Proc {
            name,
            bin,
            args,
            log,
            child: None,
            stopped: false,
            starts: 0,
        }
    }

    pub fn start(&mut self) -> Result<(), ProcError> {
        let log_err = |source| ProcError::Log {
            path: self.log.display().to_string(),
            source,
        };
        let out: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain log files, without colour codes.
        cmd.env("NO_COLOR", "1");
        let child = cmd.spawn().map_err(|source| ProcError::Spawn {
            name: self.name.clone(),
            source,
        })?;
        self.child = Some(child);
        self.stopped = false;
        self.starts += 1;
        Ok(())
    }

    /// The pid while the child exists (not yet seen to exit).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the child exited since we last looked; the child is
    /// then forgotten.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
            self.stopped = false;
        }
        status
    }

    pub fn is_running(&mut self) -> bool {
        self.exited();
        self.child.is_some()
    }

    pub fn signal(&mut self, signal: Signal) -> Result<(), ProcError> {
        if !self.is_running() {
            return Ok(());
        }
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        match kill(Pid::from_raw(pid as i32), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => {
                return Err(ProcError::Signal {
                    name: self.name.clone(),
                    pid,
                    signal,
                    errno,
                });
            }
        }
        match signal {
            Signal::SIGSTOP => self.stopped = true,
            Signal::SIGCONT => self.stopped = false,
            _ => {}
        }
        Ok(())
    }

    /// Waits up to `limit` for the child to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) -> Result<(), ProcError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        self.signal(Signal::SIGKILL)?;
        if self.child.is_some()
            && self.wait_exit(KILL_LIMIT).await.is_none()
            && self.child.is_some()
        {
            return Err(ProcError::Stuck {
                name: self.name.clone(),
                pid,
                limit: KILL_LIMIT,
            });
        }
        Ok(())
    }

    /// SIGTERM (after SIGCONT, so a stopped child can act on it), then SIGKILL
    /// if it has not exited within `limit`. Returns the exit status, if seen.
    pub async fn terminate(&mut self, limit: Duration) -> Result<Option<ExitStatus>, ProcError> {
        if self.child.is_none() {
            return Ok(None);
        }
        if self.stopped {
            self.signal(Signal::SIGCONT)?;
        }
        self.signal(Signal::SIGTERM)?;
        if let Some(status) = self.wait_exit(limit).await {
            return Ok(Some(status));
        }
        self.kill().await?;
        Ok(None)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // std does not signal a child it has already reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How the fleet is started.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub bins: Binaries,
    /// `--nats-url`, comma-separated for a cluster.
    pub urls: String,
    pub replicas: usize,
    pub schedulers: usize,
    pub workers: usize,
    pub lease_ttl: Duration,
    pub misfire_threshold: Duration,
    pub ack_wait: Duration,
    pub concurrency: usize,
    /// Where the logs go.
    pub dir: PathBuf,
}

/// The schedulers and workers of a run.
#[derive(Debug)]
pub struct Fleet {
    pub schedulers: Vec<Proc>,
    pub workers: Vec<Proc>,
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Fleet {
    /// Starts every scheduler, then every worker. Whatever started is
    /// killed again (by `Drop`) if a later one fails.
    pub fn start(s: &FleetSettings) -> Result<Fleet, ProcError> {
        let mut fleet = Fleet {
            schedulers: Vec::new(),
            workers: Vec::new(),
        };
        for i in 1..=s.schedulers {
            let name = format!("scheduler-{i}");
            let args = vec![
                "--nats-url".into(),
                s.urls.clone(),
                "--id".into(),
                name.clone(),
                "--lease-ttl".into(),
                secs(s.lease_ttl),
                "--replicas".into(),
                s.replicas.to_string(),
                "--misfire-threshold".into(),
                secs(s.misfire_threshold),
            ];
            let log = s.dir.join(format!("{name}.log"));
            let mut p = Proc::new(name, s.bins.scheduler.clone(), args, log);
            p.start()?;
            fleet.schedulers.push(p);
        }
        for i in 1..=s.workers {
            let name = format!("worker-{i}");
            let args = vec![
                "--nats-url".into(),
                s.urls.clone(),
                "--id".into(),
                name.clone(),
                "--group".into(),
                "default".into(),
                "--concurrency".into(),
                s.concurrency.to_string(),
                "--allow-shell".into(),
                "--ack-wait".into(),
                secs(s.ack_wait),
                "--replicas".into(),
                s.replicas.to_string(),
            ];
            let log = s.dir.join(format!("{name}.log"));
            let mut p = Proc::new(name, s.bins.worker.clone(), args, log);
            p.start()?;
            fleet.workers.push(p);
        }
        Ok(fleet)
    }

    pub fn scheduler(&mut self, id: &str) -> Option<&mut Proc> {
        self.schedulers.iter_mut().find(|p| p.name == id)
    }

    /// Processes that exited although nobody stopped them: (name, status, log).
    /// They are started again, so the run goes on with its full fleet.
    pub fn restart_unplanned(&mut self) -> Vec<(String, ExitStatus, PathBuf)> {
        let mut gone = Vec::new();
        for p in self.schedulers.iter_mut().chain(self.workers.iter_mut()) {
            if let Some(status) = p.exited() {
                gone.push((p.name.clone(), status, p.log.clone()));
                if let Err(e) = p.start() {
                    tracing::warn!(process = %p.name, error = %e, "cannot restart");
                }
            }
        }
        gone
    }

    /// SIGTERM to all of `procs` at once, then waits for each until the
    /// shared deadline; whoever is left gets SIGKILL. Returns the names of
    /// those that had to be killed.
    pub async fn terminate_all(
        procs: &mut [Proc],
        limit: Duration,
    ) -> Result<Vec<String>, ProcError> {
        for p in procs.iter_mut() {
            if p.stopped {
                p.signal(Signal::SIGCONT)?;
            }
            p.signal(Signal::SIGTERM)?;
        }
        let deadline = Instant::now() + limit;
        let mut killed = Vec::new();
        for p in procs.iter_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.pid().is_some() && p.wait_exit(left).await.is_none() && p.pid().is_some() {
                p.kill().await?;
                killed.push(p.name.clone());
            }
        }
        Ok(killed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> Proc {
        Proc::new(
            "sleeper".into(),
            PathBuf::from("/bin/sh"),
            vec!["-c".into(), "echo up; exec sleep 30".into()],
            dir.join("sleeper.log"),
        )
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("jetcron-chaos-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Waits until the log holds `n` lines (the shell has run its `echo`).
    async fn wait_lines(log: &Path, n: usize) {
        for _ in 0..250 {
            if std::fs::read_to_string(log).is_ok_and(|t| t.lines().count() >= n) {
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!("{} never had {n} lines", log.display());
    }

    #[tokio::test]
    async fn kill_stop_continue_and_terminate() {
        let dir = temp_dir("procs");
        let mut p = sleeper(&dir);
        p.start().unwrap();
        assert!(p.is_running());
        wait_lines(&p.log, 1).await;
        p.signal(Signal::SIGSTOP).unwrap();
        // A stopped child still takes SIGTERM (terminate sends SIGCONT first).
        let status = p.terminate(Duration::from_secs(5)).await.unwrap();
        assert!(status.is_some());
        assert!(!p.is_running());
        p.start().unwrap();
        wait_lines(&p.log, 2).await;
        let pid = p.pid().unwrap();
        p.kill().await.unwrap();
        assert_eq!(p.pid(), None);
        assert_eq!(p.starts, 2);
        // Signalling an exited child is a no-op, not an error.
        p.signal(Signal::SIGKILL).unwrap();
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "pid {pid} still exists"
        );
        let log = std::fs::read_to_string(dir.join("sleeper.log")).unwrap();
        assert_eq!(log.lines().count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dropping_a_proc_kills_its_child() {
        let dir = temp_dir("drop");
        let mut p = sleeper(&dir);
        p.start().unwrap();
        let pid = p.pid().unwrap();
        drop(p);
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "pid {pid} survived the drop"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = Binaries::in_dir(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("jetcron-scheduler"), "{err}");
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
    }
}
