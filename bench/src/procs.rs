//! The scheduler and worker binaries, run as child processes so that their
//! CPU time and memory can be read per process (see [`crate::usage`]).
//!
//! A [`Proc`] owns its child until it has seen it exit, so a signal never
//! reaches a recycled pid; dropping it (also while unwinding from a panic or
//! an error) kills the child and reaps it. Children run in their own process
//! group, so a Ctrl-C in the terminal reaches only the bench, which then
//! drops them.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

use crate::error::{BenchError, Result};

pub const SCHEDULER_BIN: &str = "jetcron-scheduler";
pub const WORKER_BIN: &str = "jetcron-worker";

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub scheduler: PathBuf,
    pub worker: PathBuf,
}

impl Binaries {
    /// The directory of the running bench executable: `target/release/`
    /// under `cargo run --release`.
    pub fn default_dir() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn in_dir(dir: &Path) -> Result<Binaries> {
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(BenchError::MissingBinary {
                    name: name.to_string(),
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

/// One running child process.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    pid: u32,
    /// When it was spawned.
    pub started: Instant,
}

impl Proc {
    /// Starts `bin` with `args`, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, bin: &Path, args: &[String], log: PathBuf) -> Result<Proc> {
        let out: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| BenchError::io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::io(format!("opening {}", log.display()), e))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env("NO_COLOR", "1")
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().map_err(|e| BenchError::Process {
            what: format!("starting {name} ({})", bin.display()),
            reason: e.to_string(),
        })?;
        Ok(Proc {
            name: name.to_string(),
            log,
            pid: child.id(),
            child: Some(child),
            started: Instant::now(),
        })
    }

    /// The pid it was started with, whether or not it still runs.
    pub fn os_pid(&self) -> u32 {
        self.pid
    }

    /// The pid while the child has not been seen to exit.
    pub fn pid(&mut self) -> Option<u32> {
        let exited = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited {
            self.child = None;
        }
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        match kill(Pid::from_raw(pid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(BenchError::Process {
                what: format!("sending {signal} to {} (pid {pid})", self.name),
                reason: e.to_string(),
            }),
        }
    }

    /// Waits up to `limit` for the child to exit; true when it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.pid().is_none() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)?;
        if self.wait_exit(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(BenchError::timeout(
                format!("{} exiting after SIGKILL", self.name),
                Duration::from_secs(10),
            ))
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `limit`.
    /// Returns whether it exited on its own.
    pub async fn terminate(&mut self, limit: Duration) -> Result<bool> {
        self.signal(Signal::SIGTERM)?;
        if self.wait_exit(limit).await {
            return Ok(true);
        }
        self.kill().await?;
        Ok(false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_a_proc_kills_its_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "exec sleep 30".into()],
            dir.path().join("sleeper.log"),
        )
        .unwrap();
        let pid = p.pid().unwrap();
        drop(p);
        assert!(kill(Pid::from_raw(pid as i32), None).is_err());
    }

    #[tokio::test]
    async fn terminate_reports_a_clean_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "exec sleep 30".into()],
            dir.path().join("sleeper.log"),
        )
        .unwrap();
        assert!(p.terminate(Duration::from_secs(5)).await.unwrap());
        assert_eq!(p.pid(), None);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = Binaries::in_dir(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo build --release"), "{err}");
    }
}
