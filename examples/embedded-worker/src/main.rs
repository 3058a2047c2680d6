//! A service that embeds a jetcron worker: it registers two handlers and
//! runs the shards of the jobs that name them, next to (or instead of)
//! `jetcron-worker` processes. The README's "Handlers in Rust" walks
//! through it.
//!
//! ```text
//! cargo run -p jetcron-example-worker -- --group billing
//! ```
//!
//! It takes every `jetcron-worker` flag (`--server`, `--group`,
//! `--concurrency`, ...), since `WorkerConfig` is a `clap::Args`.

use std::time::Duration;

use clap::Parser;
use jetcron_worker::{HandlerResult, Output, ShardContext, Worker, WorkerConfig};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "jetcron-example-worker", about)]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
}

/// What the `send-reminders` job's payload holds.
#[derive(Debug, Deserialize)]
struct Reminders {
    template: String,
    #[serde(default = "hundred")]
    customers: u32,
}

fn hundred() -> u32 {
    100
}

/// Sends this shard's part of the reminders: customer `c` belongs to shard
/// `c % shards`. Stops between two sends when told to.
async fn send_reminders(ctx: ShardContext) -> HandlerResult {
    let job: Reminders = ctx.payload()?;
    let mut sent = 0;
    for customer in (0..job.customers).filter(|c| c % ctx.shards() == ctx.shard()) {
        if ctx.is_cancelled() {
            return Err(format!("stopped after {sent} reminders").into());
        }
        // Here a real service would render `job.template` and send it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        sent += 1;
        if sent % 10 == 0 {
            ctx.print(format!("{sent} sent, last to customer {customer}"));
        }
    }
    Ok(Output::text(format!(
        "sent {sent} reminders with template {} (shard {} of {})",
        job.template,
        ctx.shard() + 1,
        ctx.shards()
    )))
}

/// Compacts one table, named by the shard's parameter; fails on purpose
/// for a table called `broken`, to show a failure and its retries.
async fn compact(ctx: ShardContext) -> HandlerResult {
    let table = ctx.param().ok_or("compact needs one table per shard")?;
    if table == "broken" {
        return Err(format!("table {table} is locked (attempt {})", ctx.attempt()).into());
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(200)) => {
            Ok(Output::text(format!("compacted {table}")))
        }
        _ = ctx.cancelled() => Err(format!("compaction of {table} interrupted").into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt().init();
    let worker = Worker::builder(cli.config)
        .handler("send-reminders", send_reminders)
        .handler("compact", compact)
        .build()?;

    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            shutdown.cancel();
        }
    });
    worker.run(shutdown).await?;
    Ok(())
}
