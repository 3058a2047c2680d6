//! `jetcron`: the operator CLI. Every command is a plain NATS request to the
//! control API (or a subscription), so anything it does can also be done
//! with the `nats` CLI.
//!
//! Exit codes: 0 success, 1 the API refused the request (bad definition,
//! unknown job), 2 usage error, 3 NATS unreachable or no scheduler answering.

mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jetcron_shared::connect::ConnectArgs;

#[derive(Debug, Parser)]
#[command(
    name = "jetcron",
    version,
    about = "Operate a jetcron deployment over NATS"
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Define, inspect and remove jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Print results and events as they happen, one line each, until Ctrl-C.
    Watch {
        /// Only this job.
        job: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Create or replace a job from a JSON file (`-` reads standard input).
    Put {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Show a job's stored definition.
    Get { id: String },
    /// Delete a job; it stops firing from its next instant.
    #[command(alias = "delete")]
    Rm { id: String },
    /// List jobs.
    #[command(alias = "list")]
    Ls,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Output { json: cli.json };
    let result = match cli.command {
        Command::Job(JobCommand::Put { file }) => commands::put(&cli.connect, &out, &file).await,
        Command::Job(JobCommand::Get { id }) => commands::get(&cli.connect, &out, &id).await,
        Command::Job(JobCommand::Rm { id }) => commands::rm(&cli.connect, &out, &id).await,
        Command::Job(JobCommand::Ls) => commands::ls(&cli.connect, &out).await,
        Command::Watch { job } => commands::watch(&cli.connect, &out, job.as_deref()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jetcron: {}", e.message);
            ExitCode::from(e.exit_code)
        }
    }
}
