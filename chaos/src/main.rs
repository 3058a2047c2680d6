//! `jetcron-chaos`: one chaos run against real processes, then the checker.
//!
//! Exit status: 0 no violation, 1 violations, 2 the run itself failed
//! (servers or processes did not come up, streams unreadable), 130 interrupted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use jetcron_chaos::console::Console;
use jetcron_chaos::report::CONSOLE_VIOLATIONS;
use jetcron_chaos::{Config, RunError};
use jetcron_shared::job::parse_flag_duration;
use tokio::signal::unix::{SignalKind, signal};

/// Runs nats-server, 3 schedulers and 3 workers (from `cargo build --workspace --bins`),
/// injects a seeded plan of faults (leader SIGKILL and SIGSTOP, worker SIGKILL, server
/// or node SIGKILL) and checks jetcron's guarantees on what the streams hold.
///
/// Short run: `cargo run -p jetcron-chaos -- --duration 75s`.
/// Long run: `cargo run -p jetcron-chaos -- --duration 30m --seed 7 --cluster`.
#[derive(Debug, Parser)]
#[command(name = "jetcron-chaos", version)]
struct Args {
    /// Length of the chaos phase (jobs put to schedulers stopped); faults stop 15 s before its end.
    #[arg(long, default_value = "90s", value_parser = parse_flag_duration)]
    duration: Duration,
    /// Seed of the fault plan; the same seed gives the same plan [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// A 3-node JetStream cluster with replicas 3 instead of one server.
    #[arg(long)]
    cluster: bool,
    /// Keep the run directory (logs, execution log, report) here; it must be new or empty.
    /// Without it, a temporary directory is kept only when the run fails.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Run the `jetcron-scheduler` and `jetcron-worker` found here instead of
    /// those next to this binary (e.g. another build to compare).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Print the fault plan for the seed and exit.
    #[arg(long)]
    plan: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config {
        duration: args.duration,
        seed: args.seed,
        cluster: args.cluster,
        keep: args.keep,
        bin_dir: args.bin_dir,
        ..Config::default()
    };
    if args.plan {
        let seed = config
            .seed
            .unwrap_or_else(jetcron_chaos::run::seed_from_clock);
        print!(
            "{}",
            jetcron_chaos::plan::Plan::generate(seed, &config.plan_settings())
        );
        return ExitCode::SUCCESS;
    }
    let console = Console::new();
    match jetcron_chaos::run(config, &console, interrupted()).await {
        Ok(finished) => {
            println!("{}", finished.report.render(CONSOLE_VIOLATIONS));
            if let Some(dir) = &finished.kept {
                println!("run directory kept: {}", dir.display());
            }
            if finished.report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(failure) => {
            eprintln!("jetcron-chaos: {failure}");
            match failure.error {
                RunError::Interrupted => ExitCode::from(130),
                _ => ExitCode::from(2),
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
