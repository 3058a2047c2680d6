//! Runs one attempt's shell command; [`Outcome`] and [`Ended`] are what
//! every executor (this one, [`crate::http`]) comes back with.
//!
//! The command runs as `sh -c <script>` in a process group of its own, so that
//! a timeout, a shutdown or an aborted task can take down everything it
//! started, not just the shell. Stdout and stderr share one pipe, so the
//! output reads as it would on a terminal; only its tail is kept.
//!
//! An attempt owns its processes: when the shell exits, whatever it left
//! running in its group gets SIGTERM, then SIGKILL after the kill grace.
//!
//! Three things end a run early. Its timeout, and its `stop` future (its
//! fire was replaced, see [`crate::cancel`]), stop the group the same way:
//! SIGTERM, then SIGKILL after the kill grace, keeping the output. The
//! cancel token (shutdown's hand-back) kills the group at once with SIGKILL.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use jetcron_shared::wire::RunStatus;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::output::Tail;

/// Variables of the worker's own environment that a command does not
/// inherit: the worker's NATS secrets, and `JETCRON_PAYLOAD` and
/// `JETCRON_PAYLOAD_FILE`, which a job without payload (or with one too
/// large for the environment) must not pick up from the worker.
pub const CLEARED_ENV: [&str; 4] = [
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "JETCRON_PAYLOAD",
    "JETCRON_PAYLOAD_FILE",
];

/// How much output is read at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How long, beyond the kill grace, the rest of the output is awaited after
/// the shell exited. Only a process that left the group can hold it open.
const DRAIN_SLACK: Duration = Duration::from_secs(1);

/// One command line to run with `sh -c`.
#[derive(Debug, Clone)]
pub struct ShellCommand {
    pub script: String,
    /// Set on top of the worker's environment (minus [`CLEARED_ENV`]).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Bytes of output kept (the last ones).
    pub max_output: usize,
}

/// How an attempt ended, as far as the command is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub output: String,
    pub output_truncated: bool,
    /// Why it failed, when the exit code does not say it.
    pub error: Option<String>,
    /// An HTTP job's response status (see [`crate::http`]).
    pub http_status: Option<u16>,
}

impl Outcome {
    /// A failed attempt in which nothing ran.
    pub fn refused(error: impl Into<String>) -> Outcome {
        Outcome {
            status: RunStatus::Failed,
            exit_code: None,
            output: String::new(),
            output_truncated: false,
            error: Some(error.into()),
            http_status: None,
        }
    }
}

/// What [`execute`] comes back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Finished(Outcome),
    /// The stop future completed first: the process group was stopped like
    /// at a timeout; the output up to then is kept.
    Stopped {
        output: String,
        output_truncated: bool,
    },
    /// The cancel token fired first: the process group was killed and there
    /// is nothing to report.
    Cancelled,
}

/// Runs `cmd` to its end, its timeout, until `stop` completes, or until
/// `cancel` fires.
pub async fn execute(
    cmd: &ShellCommand,
    cancel: &CancellationToken,
    stop: impl Future<Output = ()>,
) -> Ended {
    match spawn(cmd) {
        Ok((child, group, output)) => supervise(cmd, child, group, output, cancel, stop).await,
        Err(e) => Ended::Finished(Outcome::refused(format!("cannot start sh: {e}"))),
    }
}

/// The process group of one run. Dropping it kills the group, so that an
/// attempt whose task is aborted leaves no process behind.
#[derive(Debug)]
struct Group(Pid);

impl Group {
    /// Signals every process of the group; false when none is left.
    fn signal(&self, signal: Signal) -> bool {
        match killpg(self.0, signal) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(e) => {
                warn!(pgid = self.0.as_raw(), %signal, error = %e, "cannot signal the process group");
                false
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

fn spawn(cmd: &ShellCommand) -> io::Result<(Child, Group, pipe::Receiver)> {
    let (reader, writer) = io::pipe()?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&cmd.script)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0)
        .kill_on_drop(true);
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    command.envs(cmd.env.iter().map(|(k, v)| (k, v)));
    let child = command.spawn()?;
    // The command holds our copies of the write end; they must close, or the
    // output would never reach its end.
    drop(command);
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("the shell has no process id"))?;
    // The shell leads its own group (process_group(0)), so its pid is the group id.
    let group = Group(Pid::from_raw(pid));
    let output = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    Ok((child, group, output))
}

async fn supervise(
    cmd: &ShellCommand,
    mut child: Child,
    group: Group,
    mut output: pipe::Receiver,
    cancel: &CancellationToken,
    stop: impl Future<Output = ()>,
) -> Ended {
    let mut stop = std::pin::pin!(stop);
    let mut tail = Tail::new(cmd.max_output);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut exit: Option<io::Result<ExitStatus>> = None;
    let mut eof = false;
    let mut timed_out = false;
    let mut stopped = false;
    let deadline = Instant::now() + cmd.timeout;
    // Set once the group got SIGTERM: when it gets SIGKILL.
    let mut kill_at: Option<Instant> = None;
    // Set once the shell exited: how long the rest of the output may take.
    let mut drain_until: Option<Instant> = None;

    while exit.is_none() || !eof {
        tokio::select! {
            _ = cancel.cancelled() => {
                group.signal(Signal::SIGKILL);
                return Ended::Cancelled;
            }
            read = output.read(&mut buf), if !eof => match read {
                Ok(0) => eof = true,
                Ok(n) => tail.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(error = %e, "cannot read the output of the run");
                    eof = true;
                }
            },
            status = child.wait(), if exit.is_none() => {
                exit = Some(status);
                if kill_at.is_none() && group.signal(Signal::SIGTERM) {
                    debug!("the shell exited; stopping what it left running");
                    kill_at = Some(Instant::now() + cmd.kill_grace);
                }
                drain_until = Some(Instant::now() + cmd.kill_grace + DRAIN_SLACK);
            }
            _ = sleep_until(deadline), if !timed_out && !stopped && exit.is_none() => {
                debug!(timeout = ?cmd.timeout, "timed out; stopping the process group");
                timed_out = true;
                group.signal(Signal::SIGTERM);
                kill_at = Some(Instant::now() + cmd.kill_grace);
            }
            _ = &mut stop, if !timed_out && !stopped && exit.is_none() => {
                debug!("told to stop; stopping the process group");
                stopped = true;
                group.signal(Signal::SIGTERM);
                kill_at = Some(Instant::now() + cmd.kill_grace);
            }
            _ = sleep_until(kill_at.unwrap_or(deadline)), if kill_at.is_some() => {
                group.signal(Signal::SIGKILL);
                kill_at = None;
            }
            _ = sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => {
                warn!("a process outside the group keeps the output open; not waiting for it");
                eof = true;
            }
        }
    }
    drop(group);

    let (output, output_truncated) = tail.into_text();
    if stopped {
        return Ended::Stopped {
            output,
            output_truncated,
        };
    }
    let (status, exit_code, error) = match exit {
        _ if timed_out => (
            RunStatus::TimedOut,
            None,
            Some(format!(
                "timed out after {}",
                humantime::format_duration(cmd.timeout)
            )),
        ),
        Some(Ok(status)) => classify(status),
        Some(Err(e)) => (
            RunStatus::Failed,
            None,
            Some(format!("cannot wait for sh: {e}")),
        ),
        None => (
            RunStatus::Failed,
            None,
            Some("the shell's exit status is unknown".to_string()),
        ),
    };
    Ended::Finished(Outcome {
        status,
        exit_code,
        output,
        output_truncated,
        error,
        http_status: None,
    })
}

/// Exit 0 succeeds; any other exit code or a signal fails.
fn classify(status: ExitStatus) -> (RunStatus, Option<i32>, Option<String>) {
    match (status.code(), status.signal()) {
        (Some(0), _) => (RunStatus::Succeeded, Some(0), None),
        (Some(code), _) => (RunStatus::Failed, Some(code), None),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map_or("unknown", Signal::as_str);
            (
                RunStatus::Failed,
                None,
                Some(format!("killed by signal {signal} ({name})")),
            )
        }
        (None, None) => (
            RunStatus::Failed,
            None,
            Some(format!("ended with {status}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> ShellCommand {
        ShellCommand {
            script: script.to_string(),
            env: Vec::new(),
            timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            max_output: 64 * 1024,
        }
    }

    async fn finish(cmd: &ShellCommand) -> Outcome {
        match execute(cmd, &CancellationToken::new(), std::future::pending()).await {
            Ended::Finished(o) => o,
            other => panic!("not cancelled nor stopped: {other:?}"),
        }
    }

    /// Whether a process of group `pgid` is still alive (zombies do not
    /// count: nobody may reap them in a container).
    fn group_alive(pgid: i32) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return false;
        };
        dir.flatten().any(|entry| {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
    }

    async fn assert_group_gone(pgid: i32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(pgid) {
            assert!(
                Instant::now() < deadline,
                "process group {pgid} still alive"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn first_line_pid(output: &str) -> i32 {
        output
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {output:?}"))
    }

    #[tokio::test]
    async fn success_captures_stdout_stderr_and_sees_the_env() {
        let mut cmd =
            shell(r#"echo "param=$JETCRON_SHARD_PARAM shard=$JETCRON_SHARD"; echo oops >&2"#);
        cmd.env = vec![
            ("JETCRON_SHARD_PARAM".into(), "beijing".into()),
            ("JETCRON_SHARD".into(), "2".into()),
        ];
        let o = finish(&cmd).await;
        assert_eq!(o.status, RunStatus::Succeeded);
        assert_eq!(o.exit_code, Some(0));
        assert_eq!(o.output, "param=beijing shard=2\noops\n");
        assert!(!o.output_truncated);
        assert_eq!(o.error, None);
    }

    #[tokio::test]
    async fn stdin_is_empty() {
        let o = finish(&shell("wc -c")).await;
        assert_eq!(o.output.trim(), "0");
    }

    #[tokio::test]
    async fn non_zero_exit_fails_with_the_code() {
        let o = finish(&shell("echo bad; exit 3")).await;
        assert_eq!(o.status, RunStatus::Failed);
        assert_eq!(o.exit_code, Some(3));
        assert_eq!(o.output, "bad\n");
        assert_eq!(o.error, None);
    }

    #[tokio::test]
    async fn death_by_signal_fails_without_a_code() {
        let o = finish(&shell("kill -KILL $$")).await;
        assert_eq!(o.status, RunStatus::Failed);
        assert_eq!(o.exit_code, None);
        assert_eq!(o.error.as_deref(), Some("killed by signal 9 (SIGKILL)"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let mut cmd = shell("echo $$; sleep 30 & sleep 30");
        cmd.timeout = Duration::from_millis(500);
        let started = Instant::now();
        let o = finish(&cmd).await;
        let took = started.elapsed();
        assert_eq!(o.status, RunStatus::TimedOut);
        assert_eq!(o.exit_code, None);
        assert_eq!(o.error.as_deref(), Some("timed out after 500ms"));
        // SIGTERM is enough for sleep: no need to wait for the kill grace.
        assert!(took < Duration::from_secs(4), "took {took:?}");
        assert_group_gone(first_line_pid(&o.output)).await;
    }

    #[tokio::test]
    async fn stop_ends_the_run_like_a_timeout_and_keeps_the_output() {
        let mut cmd = shell("echo $$; trap '' TERM; sleep 30 & sleep 30");
        cmd.kill_grace = Duration::from_millis(300);
        let started = Instant::now();
        let stop = tokio::time::sleep(Duration::from_millis(500));
        let ended = execute(&cmd, &CancellationToken::new(), stop).await;
        let took = started.elapsed();
        let Ended::Stopped {
            output,
            output_truncated,
        } = ended
        else {
            panic!("not stopped: {ended:?}")
        };
        assert!(!output_truncated);
        // SIGTERM is ignored: SIGKILL follows after the kill grace.
        assert!(took >= Duration::from_millis(800), "took {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_group_gone(first_line_pid(&output)).await;
    }

    #[tokio::test]
    async fn a_stop_after_the_end_changes_nothing() {
        let stop = tokio::time::sleep(Duration::from_millis(300));
        let ended = execute(&shell("echo hi"), &CancellationToken::new(), stop).await;
        let Ended::Finished(o) = ended else {
            panic!("not finished: {ended:?}")
        };
        assert_eq!(
            (o.status, o.output.as_str()),
            (RunStatus::Succeeded, "hi\n")
        );
    }

    #[tokio::test]
    async fn sigkill_follows_when_sigterm_is_ignored() {
        let mut cmd = shell("trap '' TERM; echo $$; sleep 30 & sleep 30");
        cmd.timeout = Duration::from_millis(300);
        cmd.kill_grace = Duration::from_millis(300);
        let started = Instant::now();
        let o = finish(&cmd).await;
        let took = started.elapsed();
        assert_eq!(o.status, RunStatus::TimedOut);
        assert!(took >= Duration::from_millis(600), "took {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_group_gone(first_line_pid(&o.output)).await;
    }

    #[tokio::test]
    async fn what_the_shell_leaves_running_is_stopped() {
        let started = Instant::now();
        let o = finish(&shell("echo $$; sleep 30 & echo started")).await;
        assert_eq!(o.status, RunStatus::Succeeded);
        assert!(o.output.ends_with("started\n"), "{:?}", o.output);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_group_gone(first_line_pid(&o.output)).await;
    }

    #[tokio::test]
    async fn output_is_bounded_to_its_tail() {
        let mut cmd = shell("head -c 100000 /dev/zero | tr '\\0' a; echo; echo END >&2");
        cmd.max_output = 1000;
        let o = finish(&cmd).await;
        assert_eq!(o.status, RunStatus::Succeeded);
        assert!(o.output_truncated);
        assert_eq!(o.output.len(), 1000);
        assert!(o.output.ends_with("aaaa\nEND\n"), "{:?}", &o.output[990..]);
    }

    #[tokio::test]
    async fn cancel_kills_the_group_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = shell(&format!("echo $$ > {}; sleep 30", pidfile.display()));
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let cancel = cancel.clone();
            async move { execute(&cmd, &cancel, std::future::pending()).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let pgid = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the command did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(group_alive(pgid), "the helper must see the running group");
        cancel.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended, Ended::Cancelled);
        assert_group_gone(pgid).await;
    }

    #[tokio::test]
    async fn an_aborted_run_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = shell(&format!(
            "echo $$ > {}; sleep 30 & sleep 30",
            pidfile.display()
        ));
        let run = tokio::spawn(async move {
            execute(&cmd, &CancellationToken::new(), std::future::pending()).await
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let pgid = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the command did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(group_alive(pgid), "the helper must see the running group");
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        assert_group_gone(pgid).await;
    }
}
