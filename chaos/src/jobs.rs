//! The jobs a run puts through the control API.
//!
//! Most fire every second or two with 1-3 shards, so that any stall or loss
//! shows within seconds; a few run longer than the workers' ack wait (their
//! shards live on progress acks), fail and retry, or time out and retry.
//! Every command appends a `start` line and, when it gets to its end, an
//! `end` line to the execution log (see [`crate::execlog`]): that file is
//! what really ran, whatever jetcron stored about it.

use std::path::Path;
use std::time::Duration;

use jetcron_shared::JobSpec;
use jetcron_shared::job::{RetrySpec, Run, Shards};

/// The ack wait the workers are started with; slow jobs run longer than it.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// What a job's command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Returns at once.
    Quick,
    /// Sleeps 12 s, longer than the ack wait.
    Slow,
    /// Exits 1; 3 attempts, 1 s apart.
    Failing,
    /// Sleeps 5 s with a 2 s timeout; 2 attempts.
    TimingOut,
}

impl JobKind {
    fn body(self) -> &'static str {
        match self {
            JobKind::Quick => ":",
            JobKind::Slow => "sleep 12",
            JobKind::Failing => "false",
            JobKind::TimingOut => "sleep 5",
        }
    }

    /// How long one attempt can be running; a `start` line older than this
    /// without an `end` line is not running any more (timed out, killed).
    pub fn longest_run(self) -> Duration {
        match self {
            JobKind::Quick | JobKind::Failing => Duration::from_secs(1),
            JobKind::Slow => Duration::from_secs(12),
            JobKind::TimingOut => Duration::from_secs(2),
        }
    }
}

/// One job of the run.
#[derive(Debug, Clone)]
pub struct ChaosJob {
    pub kind: JobKind,
    pub spec: JobSpec,
}

impl ChaosJob {
    pub fn id(&self) -> &str {
        &self.spec.id
    }
}

/// The 30 jobs of a run, writing to the execution log at `log`.
pub fn job_set(log: &Path) -> Vec<ChaosJob> {
    let mut jobs = Vec::new();
    let quick = ["* * * * * *", "@every 1s", "@every 2s"];
    for i in 0..18u32 {
        jobs.push(job(
            format!("tick-{i:02}"),
            quick[i as usize % quick.len()],
            1 + i % 3,
            JobKind::Quick,
            log,
        ));
    }
    for i in 0..4u32 {
        jobs.push(job(
            format!("slow-{i}"),
            "@every 20s",
            1 + i % 2,
            JobKind::Slow,
            log,
        ));
        jobs.push(job(
            format!("fail-{i}"),
            "@every 5s",
            1 + i % 2,
            JobKind::Failing,
            log,
        ));
        jobs.push(job(
            format!("timeout-{i}"),
            "@every 10s",
            1 + i % 2,
            JobKind::TimingOut,
            log,
        ));
    }
    jobs
}

fn job(id: String, schedule: &str, shards: u32, kind: JobKind, log: &Path) -> ChaosJob {
    let (timeout, retry) = match kind {
        JobKind::Quick => ("10s", RetrySpec::default()),
        JobKind::Slow => ("30s", RetrySpec::default()),
        JobKind::Failing => (
            "10s",
            RetrySpec {
                max_attempts: 3,
                backoff: vec!["1s".to_string()],
            },
        ),
        JobKind::TimingOut => (
            "2s",
            RetrySpec {
                max_attempts: 2,
                backoff: vec!["1s".to_string()],
            },
        ),
    };
    ChaosJob {
        kind,
        spec: JobSpec {
            id,
            schedule: schedule.to_string(),
            timezone: "UTC".to_string(),
            start_at: None,
            end_at: None,
            shards: Shards::Count(shards),
            group: "default".to_string(),
            run: Run::Shell(command(log, kind.body())),
            timeout: Some(timeout.to_string()),
            deadline: None,
            retry,
            payload: None,
            description: Some("chaos suite".to_string()),
            paused: false,
            history: None,
            misfire: Default::default(),
            misfire_limit: None,
            overlap: Default::default(),
            on_success: Vec::new(),
        },
    }
}

/// `body` between a `start` and an `end` line in the execution log. `$PPID`
/// is the worker (the shell is its child); `date +%s.%N` stamps the line.
pub fn command(log: &Path, body: &str) -> String {
    format!(
        "log={log}; w() {{ echo \"$1 $(date +%s.%N) $JETCRON_JOB $JETCRON_INSTANT $JETCRON_SHARD \
         $JETCRON_ATTEMPT $JETCRON_RUN_ID $PPID $2\" >> \"$log\"; }}; w start; {body}; rc=$?; \
         w end $rc; exit $rc",
        log = sh_quote(&log.to_string_lossy()),
    )
}

/// Quotes a word for `sh`.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetcron_shared::Job;

    #[test]
    fn thirty_valid_jobs_with_distinct_ids() {
        let jobs = job_set(Path::new("/tmp/run dir/exec.log"));
        assert_eq!(jobs.len(), 30);
        let mut ids: Vec<&str> = jobs.iter().map(ChaosJob::id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 30);
        for j in &jobs {
            Job::validate(j.spec.clone()).unwrap_or_else(|e| panic!("{}: {e}", j.id()));
        }
        let quick = jobs.iter().filter(|j| j.kind == JobKind::Quick).count();
        assert!(quick >= 15);
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_command_logs_start_and_end_around_the_body_and_keeps_its_status() {
        let dir = std::env::temp_dir().join(format!("jetcron-chaos-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("it's a log");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command(&log, "false"))
            .env("JETCRON_JOB", "j")
            .env("JETCRON_INSTANT", "2026-01-01T00:00:00Z")
            .env("JETCRON_SHARD", "2")
            .env("JETCRON_ATTEMPT", "1")
            .env("JETCRON_RUN_ID", "R1")
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1));
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0][0], "start");
        assert_eq!(lines[1][0], "end");
        assert_eq!(
            &lines[1][2..7],
            ["j", "2026-01-01T00:00:00Z", "2", "1", "R1"]
        );
        assert_eq!(lines[1][7], std::process::id().to_string());
        assert_eq!(lines[1][8], "1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
