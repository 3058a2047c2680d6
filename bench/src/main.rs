//! `jetcron-bench`: measures jetcron next to its NATS anchors and writes
//! the figures into the docs.
//!
//! Exit status: 0 every chosen scenario produced figures, 1 some did not
//! (the rest is still written), 2 the bench could not run at all.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use jetcron_bench::{Config, Scenario, say};
use jetcron_shared::job::parse_flag_duration;

/// Runs nats-server, jetcron-scheduler and jetcron-worker as real processes
/// and measures lateness, bursts, scale, API latency and worker throughput,
/// each next to a plain NATS anchor in the same run.
///
/// Full run (about half an hour): `cargo run --release -p jetcron-bench -- --out docs`.
/// CI: `cargo run --release -p jetcron-bench -- --smoke`.
#[derive(Debug, Parser)]
#[command(name = "jetcron-bench", version)]
struct Args {
    /// Tiny counts and short waits: checks that every scenario runs and
    /// produces figures. Writes to a temporary directory unless --out is given.
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run, comma-separated: lateness,burst,scale,api,worker [default: all].
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Lateness: loads (jobs firing every second) [default: 100,1000,10000,20000].
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    loads: Vec<usize>,
    /// Lateness: measured window per load [default: 20s].
    #[arg(long, value_parser = parse_flag_duration)]
    duration: Option<Duration>,
    /// Lateness: warm-up before the window [default: 5s].
    #[arg(long, value_parser = parse_flag_duration)]
    warmup: Option<Duration>,
    /// Burst: jobs due in the same second [default: 10000,50000].
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    bursts: Vec<usize>,
    /// Scale: registered jobs; the API is measured at the largest [default: 100000,1000000].
    #[arg(long, value_delimiter = ',', value_parser = parse_count)]
    jobs_scale: Vec<usize>,
    /// API: calls per endpoint [default: 50].
    #[arg(long)]
    api_calls: Option<usize>,
    /// Worker: shards to run [default: 20000].
    #[arg(long, value_parser = parse_count)]
    worker_shards: Option<usize>,
    /// Worker: --concurrency of the jetcron-worker [default: 16].
    #[arg(long)]
    worker_concurrency: Option<usize>,
    /// Worker: run slots of the embedded worker's no-op handler [default: 64].
    #[arg(long)]
    handler_concurrency: Option<usize>,
    /// Scheduler --lease-ttl (the lease bucket is created with it).
    #[arg(long, default_value = "3s", value_parser = parse_flag_duration)]
    lease_ttl: Duration,
    /// Where jetcron-scheduler and jetcron-worker are [default: next to this binary].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Output directory of performance.json, lateness.svg and performance.md
    /// [default: docs, or a temporary directory with --smoke].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `20000`, `20_000` or `20k`.
fn parse_count(s: &str) -> Result<usize, String> {
    let t = s.trim().replace('_', "").to_ascii_lowercase();
    let (digits, factor) = match t.strip_suffix('k') {
        Some(d) => (d.to_string(), 1_000),
        None => match t.strip_suffix('m') {
            Some(d) => (d.to_string(), 1_000_000),
            None => (t.clone(), 1),
        },
    };
    digits
        .parse::<usize>()
        .map(|n| n * factor)
        .map_err(|_| format!("'{s}' is not a count"))
}

fn config(args: &Args) -> Config {
    let mut c = if args.smoke {
        Config::smoke()
    } else {
        Config::full()
    };
    if !args.scenarios.is_empty() {
        c.scenarios = args.scenarios.clone();
        c.scenarios.sort();
        c.scenarios.dedup();
    }
    let list = |v: &Vec<usize>, d: &mut Vec<usize>| {
        if !v.is_empty() {
            *d = v.clone();
        }
    };
    list(&args.loads, &mut c.loads);
    list(&args.bursts, &mut c.bursts);
    list(&args.jobs_scale, &mut c.jobs_scale);
    c.duration = args.duration.unwrap_or(c.duration);
    c.warmup = args.warmup.unwrap_or(c.warmup);
    c.api_calls = args.api_calls.unwrap_or(c.api_calls);
    c.worker_shards = args.worker_shards.unwrap_or(c.worker_shards);
    c.worker_concurrency = args.worker_concurrency.unwrap_or(c.worker_concurrency);
    c.handler_concurrency = args.handler_concurrency.unwrap_or(c.handler_concurrency);
    c.lease_ttl = args.lease_ttl;
    if let Some(dir) = &args.bin_dir {
        c.bin_dir = dir.clone();
    }
    c
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let argv: Vec<String> = std::env::args().collect();
    let command = std::iter::once("jetcron-bench".to_string())
        .chain(argv.into_iter().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let out = match (&args.out, args.smoke) {
        (Some(dir), _) => dir.clone(),
        (None, false) => PathBuf::from("docs"),
        (None, true) => match tempfile::Builder::new()
            .prefix("jetcron-bench-smoke-")
            .tempdir()
        {
            Ok(d) => d.keep(),
            Err(e) => {
                eprintln!("jetcron-bench: cannot create a temporary directory: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let report = match jetcron_bench::run(config(&args), command).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jetcron-bench: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.markdown());
    match report.write(&out) {
        Ok(paths) => {
            for p in paths {
                say(&format!("wrote {}", p.display()));
            }
        }
        Err(e) => {
            eprintln!("jetcron-bench: {e}");
            return ExitCode::from(2);
        }
    }
    let missing = report.missing();
    if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        for m in &missing {
            eprintln!("jetcron-bench: {m}");
        }
        ExitCode::from(1)
    }
}
