//! Log output of the binaries, to stderr: `--log-format text` (default) or
//! `json` (one object per line, with the current span's fields and the
//! spans around it), the level from `RUST_LOG` (default `info`). Colours
//! only when stderr is a terminal, so a log file or a collector gets no
//! escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: `2026-11-26T10:00:00.123Z  INFO run{job=... shard=0}: run finished status="succeeded"`.
    #[default]
    Text,
    /// For collectors: one JSON object per line.
    Json,
}

/// The flag every binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr: text or json.
    #[arg(long, value_enum, env = "JETCRON_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the process's log output; `default_level` applies when
/// `RUST_LOG` is not set.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
