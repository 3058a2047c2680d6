//! Where and what was measured: the machine (from /proc), the nats-server
//! version, the commit, the date and the exact command.

use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub nats_server: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub machine: Machine,
    pub command: String,
    pub commit: String,
    /// Whether the working tree had uncommitted changes.
    pub dirty: bool,
    pub date: String,
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The first `model name` of /proc/cpuinfo.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `MemTotal` of /proc/meminfo, in GiB.
pub fn parse_mem_gib(meminfo: &str) -> Option<f64> {
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let server = crate::server::nats_server_bin().unwrap_or_default();
    Machine {
        cpu: parse_cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: parse_mem_gib(&read("/proc/meminfo")).unwrap_or(0.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        nats_server: run(&server.to_string_lossy(), &["--version"])
            .map(|v| v.trim_start_matches("nats-server:").trim().to_string())
            .unwrap_or_else(|| "unknown".into()),
    }
}

pub fn run_info(command: String) -> RunInfo {
    RunInfo {
        machine: machine(),
        command,
        commit: run("git", &["rev-parse", "--short=12", "HEAD"])
            .unwrap_or_else(|| "unknown".into()),
        // The bench's own outputs from an earlier run do not count: they
        // are not what is measured.
        dirty: run(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)docs/performance.md",
                ":(exclude)docs/performance.json",
                ":(exclude)docs/lateness.svg",
            ],
        )
        .is_some_and(|s| !s.is_empty()),
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_memory() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(parse_cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(
            parse_mem_gib("MemTotal:        8152056 kB\nMemFree: 1 kB\n"),
            Some(7.8)
        );
        assert_eq!(parse_cpu_model(""), None);
    }
}
