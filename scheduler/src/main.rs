use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use jetcron_scheduler::SchedulerConfig;
use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::job::parse_flag_duration;
use jetcron_shared::logging::{self, LogArgs};
use jetcron_shared::setup::{RetentionArgs, SetupOptions};
use tokio_util::sync::CancellationToken;

/// A fire makes many small short-lived allocations (subjects, headers,
/// message bodies). With the system allocator they took about a third of
/// the scheduler's CPU at 10,000 fires a second; with mimalloc the
/// scheduler spends about a quarter less CPU per fire.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jetcron scheduler: holds the leader lease and fires jobs on time.
#[derive(Debug, Parser)]
#[command(name = "jetcron-scheduler", version)]
struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// This replica's name, shown as the lease holder [default: <host>-<pid>].
    #[arg(long, env = "JETCRON_SCHEDULER_ID")]
    id: Option<String>,
    /// Replicas of buckets and streams created by this scheduler (3 on a cluster).
    #[arg(long, env = "JETCRON_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// Lifetime of the leader lease, used when the lease bucket is created.
    #[arg(long, env = "JETCRON_LEASE_TTL", default_value = "3s", value_parser = parse_flag_duration)]
    lease_ttl: Duration,
    /// A fire dispatched later than this after its instant is reported as a misfire.
    #[arg(long, default_value = "1s", value_parser = parse_flag_duration)]
    misfire_threshold: Duration,
    /// Serve Prometheus metrics at http://<ADDR>/metrics (for example
    /// 127.0.0.1:9464). Off when not given.
    #[arg(long, value_name = "ADDR", env = "JETCRON_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log.log_format, "info");
    let config = config(args);
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    jetcron_scheduler::run(config, shutdown)
        .await
        .context("scheduler failed")
}

/// The scheduler's settings from its flags.
fn config(args: Args) -> SchedulerConfig {
    SchedulerConfig {
        connect: args.connect,
        id: args
            .id
            .unwrap_or_else(jetcron_scheduler::config::default_id),
        setup: args.retention.apply(SetupOptions {
            replicas: args.replicas,
            lease_ttl: args.lease_ttl,
            ..SetupOptions::default()
        }),
        misfire_threshold: args.misfire_threshold,
        metrics_addr: args.metrics_addr,
        ..SchedulerConfig::default()
    }
}

async fn stop_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(flags: &[&str]) -> SetupOptions {
        let argv = std::iter::once("jetcron-scheduler").chain(flags.iter().copied());
        config(Args::try_parse_from(argv).unwrap()).setup
    }

    #[test]
    fn stream_limits_come_from_the_flags() {
        let d = parsed(&[]);
        assert_eq!(
            (d.results_max_bytes, d.events_max_bytes),
            (1 << 30, 512 << 20)
        );
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!((d.results_max_age, d.events_max_age), (week, week));
        let s = parsed(&[
            "--results-max-bytes",
            "-1",
            "--events-max-bytes",
            "64MiB",
            "--results-max-age",
            "2d",
            "--events-max-age",
            "12h",
        ]);
        assert_eq!((s.results_max_bytes, s.events_max_bytes), (-1, 64 << 20));
        assert_eq!(
            (s.results_max_age, s.events_max_age),
            (
                Duration::from_secs(2 * 86_400),
                Duration::from_secs(12 * 3600)
            )
        );
        let e =
            Args::try_parse_from(["jetcron-scheduler", "--events-max-bytes", "lots"]).unwrap_err();
        assert!(e.to_string().contains("is not a size"), "{e}");
    }
}
