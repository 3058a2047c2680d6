//! `jetcron`: the operator CLI. Parses the command line and dispatches into
//! the library (see `lib.rs` for the modules).
//!
//! Exit codes: 0 success, 1 the API refused the request (invalid definition,
//! unknown job, conflict), 2 usage or local input error, 3 NATS unreachable or
//! no scheduler answering.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use jetcron_cli::apply::ApplyOptions;
use jetcron_cli::jobs::ListOptions;
use jetcron_cli::{Failure, Output, apply, jobs, status, watch};
use jetcron_shared::api::JobState;
use jetcron_shared::connect::ConnectArgs;

#[derive(Debug, Parser)]
#[command(
    name = "jetcron",
    version,
    about = "Operate a jetcron deployment over NATS",
    after_help = "Exit codes: 0 ok, 1 refused by the API (invalid, not found, conflict), \
                  2 usage or input error, 3 NATS or the API unreachable."
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
    /// Make the stored jobs match YAML/JSON files: add, change, (prune).
    ///
    /// Each file holds one job, a list of jobs, or (YAML) several documents
    /// separated by `---`; a directory means its .yaml, .yml and .json files
    /// (not recursive). Everything is validated before anything is written.
    /// Unchanged jobs are not written; a job whose file does not set `paused`
    /// keeps its live paused state.
    Apply {
        /// A job file or directory (repeatable; `-` reads standard input).
        #[arg(short = 'f', long = "file", alias = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete stored jobs that are in none of the files.
        #[arg(long)]
        prune: bool,
    },
    /// Define, inspect, pause, trigger and remove jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Leader, replicas, job counts, invalid jobs and worker groups.
    Status,
    /// Live workers, from their heartbeats.
    Workers,
    /// Print results and events as they happen, one line each, until Ctrl-C.
    Watch {
        /// Only this job (and leader changes).
        job: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Create or replace one job from a JSON or YAML file (`-`: JSON from
    /// standard input). Replaces the whole definition, `paused` included.
    Put {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show a job's stored definition.
    Get {
        /// The job's id.
        id: String,
    },
    /// Delete a job; it stops firing from its next instant.
    #[command(alias = "delete")]
    Rm {
        /// The job's id.
        id: String,
    },
    /// List jobs by id, printing each page as it arrives.
    #[command(alias = "list")]
    Ls {
        /// Only jobs of this group.
        #[arg(long)]
        group: Option<String>,
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// At most this many jobs in all (default: every one).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Stop firing a job; its instants are skipped until it is resumed.
    Pause {
        /// The job's id.
        id: String,
    },
    /// Fire a paused job again from its next instant (skipped ones are not replayed).
    Resume {
        /// The job's id.
        id: String,
    },
    /// Fire a job now, outside its schedule.
    Trigger {
        /// The job's id.
        id: String,
        /// Only this shard (repeatable, or comma-separated); default all.
        #[arg(long = "shard", value_name = "N", value_delimiter = ',')]
        shards: Vec<u32>,
        /// JSON payload replacing the job's for this fire.
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
    },
    /// Run again the failed and timed-out shards of one fire (a FIRE of `job runs`).
    Retry {
        /// The job's id.
        id: String,
        /// The fire, as `job runs` lists it (`<job>:<instant ms>`).
        fire_id: String,
    },
    /// Show a job's coming instants, in UTC and in its time zone.
    Next {
        /// The job's id.
        id: String,
        /// How many (1-100; the API's default is 5).
        #[arg(short = 'n', long, value_parser = clap::value_parser!(u32).range(1..=100))]
        count: Option<u32>,
    },
    /// Show a job's recent fires and how each shard ran, newest first.
    Runs {
        /// The job's id.
        id: String,
        /// At most this many fires.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Also print each shard's error and the end of its output (the
        /// last 1 KiB, as the run history keeps it).
        #[arg(long)]
        output: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    /// Valid and not paused.
    Active,
    Paused,
    /// The stored definition does not validate.
    Invalid,
}

impl From<StateArg> for JobState {
    fn from(s: StateArg) -> JobState {
        match s {
            StateArg::Active => JobState::Active,
            StateArg::Paused => JobState::Paused,
            StateArg::Invalid => JobState::Invalid,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output { json: cli.json };
    let args = &cli.connect;
    let result: Result<(), Failure> = match cli.command {
        Command::Apply {
            files,
            dry_run,
            prune,
        } => {
            let opts = ApplyOptions {
                files,
                dry_run,
                prune,
            };
            apply::apply(args, &out, &opts).await
        }
        Command::Job(cmd) => match cmd {
            JobCommand::Put { file } => jobs::put(args, &out, &file).await,
            JobCommand::Get { id } => jobs::get(args, &out, &id).await,
            JobCommand::Rm { id } => jobs::rm(args, &out, &id).await,
            JobCommand::Ls {
                group,
                state,
                limit,
            } => {
                let opts = ListOptions {
                    group,
                    state: state.map(JobState::from),
                    limit,
                };
                jobs::ls(args, &out, &opts).await
            }
            JobCommand::Pause { id } => jobs::pause(args, &out, &id).await,
            JobCommand::Resume { id } => jobs::resume(args, &out, &id).await,
            JobCommand::Trigger {
                id,
                shards,
                payload,
            } => jobs::trigger(args, &out, &id, shards, payload.as_deref()).await,
            JobCommand::Retry { id, fire_id } => jobs::retry(args, &out, &id, &fire_id).await,
            JobCommand::Next { id, count } => jobs::next(args, &out, &id, count).await,
            JobCommand::Runs { id, limit, output } => {
                jobs::runs(args, &out, &id, limit, output).await
            }
        },
        Command::Status => status::status(args, &out).await,
        Command::Workers => status::workers(args, &out).await,
        Command::Watch { job } => watch::watch(args, &out, job.as_deref()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jetcron: {}", e.one_line());
            ExitCode::from(e.exit_code())
        }
    }
}
