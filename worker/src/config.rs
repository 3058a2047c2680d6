//! What a worker is told at start: which group it serves, how many shards it
//! runs at once, the timings of acks, timeouts, heartbeats and shutdown, and
//! how many lost attempts end a crash loop.
//!
//! [`WorkerConfig`] is a plain struct with documented defaults; the
//! `jetcron-worker` binary fills it from flags and environment variables
//! (it derives `clap::Args`), tests build it by hand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::setup::RetentionArgs;
use thiserror::Error;

use crate::http::{HostPolicy, PatternError};

/// Group served when none is given.
pub const DEFAULT_GROUP: &str = "default";
/// Shards run at once when not told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Ack wait of a newly created group consumer.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(15);
/// How long runs in flight may finish after a shutdown request.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Bytes of output kept per attempt (the last ones).
pub const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;
/// Between SIGTERM and SIGKILL when a run times out.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
/// Replicas of the streams and buckets this worker creates, if missing.
pub const DEFAULT_REPLICAS: usize = 1;
/// Between two heartbeats of a worker; a third of the workers bucket's
/// default max age (15 s), so that two may be lost before the key expires.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval accepted.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts of a shard lost in a row (each one's worker died before it
/// reported) after which it is not run again.
pub const DEFAULT_MAX_LOST_ATTEMPTS: u32 = 5;
/// Most shards one worker runs at once.
pub const MAX_CONCURRENCY: usize = 10_000;
/// Largest output kept per attempt: a result must fit in one NATS message.
pub const MAX_OUTPUT_LIMIT: usize = 512 * 1024;

/// Everything a worker needs to run.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Worker group to serve: this worker runs the shards of jobs whose
    /// `group` is this one.
    #[arg(long, env = "JETCRON_GROUP", default_value = DEFAULT_GROUP)]
    pub group: String,

    /// Shards run at once. The worker never pulls more shard messages than
    /// it has free slots.
    #[arg(long, env = "JETCRON_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,

    /// Run `shell` jobs. Off by default: a shell job runs any command line
    /// whoever can write job definitions chose.
    #[arg(long)]
    pub allow_shell: bool,

    /// Refuse `http` jobs: each attempt fails, saying so. HTTP jobs run
    /// without --allow-shell otherwise.
    #[arg(long, conflicts_with = "allow_http_host")]
    pub no_http: bool,

    /// Hosts `http` jobs may call (repeatable, or comma-separated):
    /// `api.example.com`, `*.example.com` (names below it), `10.0.0.5:8080`,
    /// `[::1]:8080`, `*:443`. None given: any host.
    #[arg(
        long = "allow-http-host",
        value_name = "PATTERN",
        env = "JETCRON_ALLOW_HTTP_HOST",
        value_delimiter = ','
    )]
    pub allow_http_host: Vec<String>,

    /// A PEM file of certificate authorities that `http` jobs trust besides
    /// the machine's roots (an internal CA, say).
    #[arg(long, value_name = "FILE", env = "JETCRON_HTTP_CA")]
    pub http_ca: Option<PathBuf>,

    /// Name of this worker in results and logs (default: `<hostname>-<pid>`).
    #[arg(long, env = "JETCRON_WORKER_ID", default_value_t = default_id(), hide_default_value = true)]
    pub id: String,

    /// Ack wait of the group's consumer when this worker creates it; an
    /// unacknowledged shard is redelivered after it. Runs in progress keep
    /// their shard by acking progress every third of it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    pub ack_wait: Duration,

    /// After a shutdown request, how long runs in flight may finish before
    /// they are killed and their shards handed back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,

    /// Bytes of output kept per attempt; the last ones are kept.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTPUT)]
    pub max_output: usize,

    /// When a run times out: time between SIGTERM and SIGKILL to its
    /// process group.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub kill_grace: Duration,

    /// Replicas of the streams and buckets, when this worker creates them.
    #[arg(long, default_value_t = DEFAULT_REPLICAS)]
    pub replicas: usize,

    /// Between two heartbeats in the workers bucket. Kept to at most a third
    /// of the bucket's max age, after which a silent worker's key expires.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub heartbeat_interval: Duration,

    /// A shard whose last this many attempts were lost (each started, and
    /// its worker died before reporting: a command that kills its worker,
    /// an OOM kill) is not run again: it ends as dead, with a failed result
    /// and a `dead` event.
    #[arg(long, env = "JETCRON_MAX_LOST_ATTEMPTS", default_value_t = DEFAULT_MAX_LOST_ATTEMPTS)]
    pub max_lost_attempts: u32,

    /// Serve Prometheus metrics at http://<ADDR>/metrics (for example
    /// 127.0.0.1:9465). Off when not given.
    #[arg(long, value_name = "ADDR", env = "JETCRON_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// The results and events streams' limits, when this worker creates them.
    #[command(flatten)]
    pub retention: RetentionArgs,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            connect: ConnectArgs::default(),
            group: DEFAULT_GROUP.to_string(),
            concurrency: DEFAULT_CONCURRENCY,
            allow_shell: false,
            no_http: false,
            allow_http_host: Vec::new(),
            http_ca: None,
            id: default_id(),
            ack_wait: DEFAULT_ACK_WAIT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_output: DEFAULT_MAX_OUTPUT,
            kill_grace: DEFAULT_KILL_GRACE,
            replicas: DEFAULT_REPLICAS,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_lost_attempts: DEFAULT_MAX_LOST_ATTEMPTS,
            metrics_addr: None,
            retention: RetentionArgs::default(),
        }
    }
}

/// `<hostname>-<pid>`: unique among the workers of one machine.
pub fn default_id() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

/// This machine's name, or `worker` when it has none.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

/// A setting the worker cannot run with.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("group: '{0}' must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    Group(String),
    #[error("concurrency: {0} must be 1-{MAX_CONCURRENCY}")]
    Concurrency(usize),
    #[error("id: must not be empty")]
    EmptyId,
    #[error("ack_wait: must be at least 1s")]
    AckWait,
    #[error("max_output: {0} must be at most {MAX_OUTPUT_LIMIT} bytes")]
    MaxOutput(usize),
    #[error("replicas: {0} must be 1-5")]
    Replicas(usize),
    #[error("heartbeat_interval: must be at least {MIN_HEARTBEAT_INTERVAL:?}")]
    HeartbeatInterval,
    #[error("max_lost_attempts: must be at least 1")]
    MaxLostAttempts,
    #[error(transparent)]
    HttpHost(#[from] PatternError),
    #[error("http_ca: {file}: {reason}")]
    HttpCa { file: String, reason: String },
}

impl WorkerConfig {
    /// Checks what the server or the run loop would trip over later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let group_ok = (1..=64).contains(&self.group.len())
            && self
                .group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !group_ok {
            return Err(ConfigError::Group(self.group.clone()));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(ConfigError::Concurrency(self.concurrency));
        }
        if self.id.trim().is_empty() {
            return Err(ConfigError::EmptyId);
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::AckWait);
        }
        if self.max_output > MAX_OUTPUT_LIMIT {
            return Err(ConfigError::MaxOutput(self.max_output));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::Replicas(self.replicas));
        }
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL {
            return Err(ConfigError::HeartbeatInterval);
        }
        if self.max_lost_attempts == 0 {
            return Err(ConfigError::MaxLostAttempts);
        }
        self.http_policy()?;
        Ok(())
    }

    /// What HTTP jobs may do on this worker.
    pub fn http_policy(&self) -> Result<HostPolicy, PatternError> {
        HostPolicy::new(self.no_http, &self.allow_http_host)
    }

    /// The certificates of `http_ca`, read and parsed (none without it).
    pub fn http_roots(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        let Some(path) = &self.http_ca else {
            return Ok(Vec::new());
        };
        let refuse = |reason: String| ConfigError::HttpCa {
            file: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| refuse(format!("cannot read it: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| refuse(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(refuse("holds no PEM certificate".into()));
        }
        Ok(certs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: WorkerConfig,
    }

    #[test]
    fn flag_defaults_match_default() {
        // Holds unless JETCRON_GROUP and friends are set around the test run.
        let parsed = Cli::try_parse_from(["jetcron-worker"]).unwrap().config;
        let d = WorkerConfig::default();
        assert_eq!(parsed.group, d.group);
        assert_eq!(parsed.concurrency, d.concurrency);
        assert_eq!(parsed.allow_shell, d.allow_shell);
        assert_eq!(parsed.no_http, d.no_http);
        assert_eq!(parsed.allow_http_host, d.allow_http_host);
        assert_eq!(d.http_policy(), Ok(HostPolicy::Any));
        assert_eq!(parsed.id, d.id);
        assert_eq!(parsed.ack_wait, d.ack_wait);
        assert_eq!(parsed.shutdown_grace, d.shutdown_grace);
        assert_eq!(parsed.max_output, d.max_output);
        assert_eq!(parsed.kill_grace, d.kill_grace);
        assert_eq!(parsed.replicas, d.replicas);
        assert_eq!(parsed.heartbeat_interval, d.heartbeat_interval);
        assert_eq!(parsed.max_lost_attempts, d.max_lost_attempts);
        assert_eq!(d.max_lost_attempts, 5);
        assert_eq!(parsed.retention, d.retention);
        assert_eq!(
            (d.retention.results_max_bytes, d.retention.events_max_bytes),
            (1 << 30, 512 << 20)
        );
        assert!(d.validate().is_ok());
    }

    #[test]
    fn flags_fill_the_config() {
        let c = Cli::try_parse_from([
            "jetcron-worker",
            "--group",
            "billing",
            "--concurrency",
            "8",
            "--allow-shell",
            "--allow-http-host",
            "*.example.com,10.0.0.5:8080",
            "--allow-http-host",
            "[::1]:9000",
            "--id",
            "w1",
            "--ack-wait",
            "2s",
            "--shutdown-grace",
            "1m",
            "--kill-grace",
            "500ms",
            "--max-output",
            "1024",
            "--replicas",
            "3",
            "--heartbeat-interval",
            "2s",
            "--max-lost-attempts",
            "2",
            "--events-max-bytes",
            "-1",
            "--results-max-age",
            "1d",
            "--nats-url",
            "nats://example:4222",
        ])
        .unwrap()
        .config;
        assert_eq!(c.group, "billing");
        assert_eq!(c.concurrency, 8);
        assert!(c.allow_shell);
        assert_eq!(
            c.allow_http_host,
            ["*.example.com", "10.0.0.5:8080", "[::1]:9000"]
        );
        assert!(matches!(c.http_policy(), Ok(HostPolicy::Only(p)) if p.len() == 3));
        assert_eq!(c.id, "w1");
        assert_eq!(c.ack_wait, Duration::from_secs(2));
        assert_eq!(c.shutdown_grace, Duration::from_secs(60));
        assert_eq!(c.kill_grace, Duration::from_millis(500));
        assert_eq!(c.max_output, 1024);
        assert_eq!(c.replicas, 3);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.max_lost_attempts, 2);
        assert_eq!(c.retention.events_max_bytes, -1);
        assert_eq!(c.retention.results_max_age, Duration::from_secs(86_400));
        assert_eq!(c.connect.nats_url, "nats://example:4222");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn default_id_is_host_and_pid() {
        assert!(default_id().ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = |f: fn(&mut WorkerConfig)| {
            let mut c = WorkerConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            bad(|c| c.group = "a.b".into()),
            ConfigError::Group("a.b".into())
        );
        assert_eq!(
            bad(|c| c.group = String::new()),
            ConfigError::Group(String::new())
        );
        assert_eq!(bad(|c| c.concurrency = 0), ConfigError::Concurrency(0));
        assert_eq!(bad(|c| c.id = " ".into()), ConfigError::EmptyId);
        assert_eq!(
            bad(|c| c.ack_wait = Duration::from_millis(10)),
            ConfigError::AckWait
        );
        assert_eq!(
            bad(|c| c.max_output = 10 << 20),
            ConfigError::MaxOutput(10 << 20)
        );
        assert_eq!(bad(|c| c.replicas = 0), ConfigError::Replicas(0));
        assert_eq!(
            bad(|c| c.heartbeat_interval = Duration::from_millis(10)),
            ConfigError::HeartbeatInterval
        );
        assert_eq!(
            bad(|c| c.max_lost_attempts = 0),
            ConfigError::MaxLostAttempts
        );
        assert_eq!(
            bad(|c| c.allow_http_host = vec!["ok.com".into(), "x.com:99999".into()]).to_string(),
            "allow_http_host: \"x.com:99999\" has a port that is not 1-65535"
        );
    }

    #[test]
    fn no_http_turns_http_jobs_off_and_excludes_host_patterns() {
        let c = Cli::try_parse_from(["jetcron-worker", "--no-http"])
            .unwrap()
            .config;
        assert_eq!(c.http_policy(), Ok(HostPolicy::Off));
        let both =
            Cli::try_parse_from(["jetcron-worker", "--no-http", "--allow-http-host", "a.com"]);
        assert!(both.is_err());
    }
}
