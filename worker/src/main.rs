//! `jetcron-worker`: pulls the shard messages of one group and runs them.

use clap::Parser;
use jetcron_shared::logging::{self, LogArgs};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "jetcron-worker", version, about)]
struct Cli {
    #[command(flatten)]
    config: jetcron_worker::WorkerConfig,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log.log_format, "info");
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = int.recv() => info!("SIGINT: shutting down"),
            }
            shutdown.cancel();
        }
    });
    jetcron_worker::run(cli.config, shutdown).await?;
    Ok(())
}
