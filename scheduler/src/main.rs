use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use jetcron_scheduler::SchedulerConfig;
use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::job::parse_flag_duration;
use jetcron_shared::setup::SetupOptions;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = SchedulerConfig {
        connect: args.connect,
        id: args
            .id
            .unwrap_or_else(jetcron_scheduler::config::default_id),
        setup: SetupOptions {
            replicas: args.replicas,
            lease_ttl: args.lease_ttl,
            ..SetupOptions::default()
        },
        misfire_threshold: args.misfire_threshold,
        ..SchedulerConfig::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    jetcron_scheduler::run(config, shutdown)
        .await
        .context("scheduler failed")
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
