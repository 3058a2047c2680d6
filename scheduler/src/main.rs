use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use jetcron_scheduler::console::{ConsoleConfig, ConsoleToken};
use jetcron_scheduler::{SchedulerConfig, webhooks};
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
    /// Post events to this URL (repeatable, or comma-separated): a JSON body
    /// per event, retried until a 2xx answer, once per event however many
    /// schedulers run.
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "JETCRON_WEBHOOK",
        value_delimiter = ','
    )]
    webhooks: Vec<String>,
    /// Event kinds posted to the webhooks
    /// [default: dead,misfired,expired,invalid,leader].
    #[arg(
        long,
        value_name = "KINDS",
        env = "JETCRON_WEBHOOK_KINDS",
        value_delimiter = ','
    )]
    webhook_kinds: Vec<String>,
    /// Post only the events of these jobs (repeatable, or comma-separated;
    /// no `leader` events then) [default: every job].
    #[arg(
        long = "webhook-job",
        value_name = "JOB",
        env = "JETCRON_WEBHOOK_JOBS",
        value_delimiter = ','
    )]
    webhook_jobs: Vec<String>,
    /// Serve the web console at http://<ADDR>/ (for example
    /// 127.0.0.1:8080). Off when not given; needs a way to sign in.
    #[arg(long, value_name = "ADDR", env = "JETCRON_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
    /// A console token and its role, `operator:SECRET` or `viewer:SECRET`
    /// (repeatable, or comma-separated; at least 16 characters of secret).
    #[arg(
        long = "console-token",
        value_name = "ROLE:SECRET",
        env = "JETCRON_CONSOLE_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    console_tokens: Vec<String>,
    /// Let people sign in to the console as a NATS user (user and
    /// password), acting with that user's permissions.
    #[arg(long, env = "JETCRON_CONSOLE_NATS_LOGIN")]
    console_nats_login: bool,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log.log_format, "info");
    let config = config(args)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    jetcron_scheduler::run(config, shutdown)
        .await
        .context("scheduler failed")
}

/// The scheduler's settings from its flags.
fn config(args: Args) -> anyhow::Result<SchedulerConfig> {
    let kinds = webhooks::parse_kinds(&args.webhook_kinds).map_err(anyhow::Error::msg)?;
    for url in &args.webhooks {
        let parsed = url::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("webhook: '{url}' is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("webhook: '{url}' is not an http or https URL");
        }
    }
    let sinks = args
        .webhooks
        .iter()
        .map(|url| webhooks::Sink {
            url: url.clone(),
            kinds: kinds.clone(),
            jobs: args.webhook_jobs.clone(),
        })
        .collect();
    let tokens = args
        .console_tokens
        .iter()
        .map(|t| t.parse::<ConsoleToken>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let console = match args.http_addr {
        Some(addr) => Some(ConsoleConfig {
            addr,
            tokens,
            nats_login: args.console_nats_login,
        }),
        None if !tokens.is_empty() || args.console_nats_login => {
            anyhow::bail!(
                "http_addr: console sign-in options given, but no --http-addr to serve the console at"
            )
        }
        None => None,
    };
    Ok(SchedulerConfig {
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
        webhooks: sinks,
        console,
        ..SchedulerConfig::default()
    })
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
        config(Args::try_parse_from(argv).unwrap()).unwrap().setup
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

    #[test]
    fn webhook_flags_make_one_sink_per_url_and_bad_ones_are_refused() {
        let parse = |flags: &[&str]| {
            let argv = std::iter::once("jetcron-scheduler").chain(flags.iter().copied());
            config(Args::try_parse_from(argv).unwrap())
        };
        let c = parse(&[
            "--webhook",
            "https://a.example/x,http://b.example/y",
            "--webhook-kinds",
            "dead,leader",
            "--webhook-job",
            "nightly",
        ])
        .unwrap();
        assert_eq!(c.webhooks.len(), 2);
        assert_eq!(c.webhooks[1].url, "http://b.example/y");
        assert_eq!(c.webhooks[0].kinds, ["dead", "leader"]);
        assert_eq!(c.webhooks[0].jobs, ["nightly"]);
        let e = parse(&["--webhook", "ftp://x/y"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "webhook: 'ftp://x/y' is not an http or https URL"
        );
        let e = parse(&["--webhook", "http://x", "--webhook-kinds", "boom"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("webhook_kinds: 'boom' is not an event kind"),
            "{e}"
        );
    }

    #[test]
    fn console_flags_need_an_address_and_good_tokens() {
        let parse = |flags: &[&str]| {
            let argv = std::iter::once("jetcron-scheduler").chain(flags.iter().copied());
            config(Args::try_parse_from(argv).unwrap())
        };
        assert!(parse(&[]).unwrap().console.is_none());
        let c = parse(&[
            "--http-addr",
            "127.0.0.1:8080",
            "--console-token",
            "operator:0123456789abcdef,viewer:fedcba9876543210",
            "--console-nats-login",
        ])
        .unwrap()
        .console
        .unwrap();
        assert_eq!(c.addr.port(), 8080);
        assert_eq!(c.tokens.len(), 2);
        assert!(c.nats_login);
        let e = parse(&["--console-token", "operator:0123456789abcdef"]).unwrap_err();
        assert!(e.to_string().starts_with("http_addr: "), "{e}");
        let e = parse(&[
            "--http-addr",
            "127.0.0.1:8080",
            "--console-token",
            "root:0123456789abcdef",
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "console_token: 'root' is not a role (operator or viewer)"
        );
    }
}
