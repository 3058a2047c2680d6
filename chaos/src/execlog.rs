//! The execution log: what the job commands themselves say they ran.
//!
//! Each line is written by the command's shell (see [`crate::jobs::command`]):
//!
//! ```text
//! start <unix s.ns> <job> <instant> <shard> <attempt> <run id> <worker pid>
//! end   <unix s.ns> <job> <instant> <shard> <attempt> <run id> <worker pid> <exit code>
//! ```
//!
//! Lines are short single `write`s with `O_APPEND`, so they never interleave.
//! A line cut short (the machine stopped mid-write) is counted, not fatal.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use chrono::{DateTime, Utc};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExecLogError {
    #[error("cannot read the execution log {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One execution (one run id), from its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub job: String,
    pub instant: String,
    pub shard: u32,
    pub attempt: u32,
    pub run_id: String,
    /// Pid of the worker that ran it.
    pub worker_pid: u32,
    pub started: Option<DateTime<Utc>>,
    /// When the `end` line was written, if it was.
    pub ended: Option<DateTime<Utc>>,
    pub ended_line: bool,
    pub exit_code: Option<i32>,
}

/// Everything in the log.
#[derive(Debug, Clone, Default)]
pub struct ExecLog {
    /// In the order their first line appears.
    pub executions: Vec<Execution>,
    /// Lines that do not parse.
    pub bad_lines: usize,
}

impl ExecLog {
    pub fn read(path: &Path) -> Result<ExecLog, ExecLogError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(ExecLog::parse(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ExecLog::default()),
            Err(source) => Err(ExecLogError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Only the last `bytes` of the log (from its first whole line): what
    /// ran recently, without reading a long run's whole log again.
    pub fn read_tail(path: &Path, bytes: u64) -> Result<ExecLog, ExecLogError> {
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = std::fs::File::open(path)?;
            let len = file.metadata()?.len();
            let from = len.saturating_sub(bytes);
            file.seek(SeekFrom::Start(from))?;
            let mut tail = Vec::new();
            file.read_to_end(&mut tail)?;
            if from > 0 {
                // Drop the line the cut fell into.
                let first = tail
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(tail.len(), |i| i + 1);
                tail.drain(..first);
            }
            Ok(tail)
        };
        match read() {
            Ok(tail) => Ok(ExecLog::parse(&String::from_utf8_lossy(&tail))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ExecLog::default()),
            Err(source) => Err(ExecLogError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn parse(text: &str) -> ExecLog {
        let mut log = ExecLog::default();
        let mut by_run: HashMap<String, usize> = HashMap::new();
        for line in text.lines() {
            let Some(line) = Line::parse(line) else {
                log.bad_lines += 1;
                continue;
            };
            let i = *by_run.entry(line.run_id.to_string()).or_insert_with(|| {
                log.executions.push(Execution {
                    job: line.job.to_string(),
                    instant: line.instant.to_string(),
                    shard: line.shard,
                    attempt: line.attempt,
                    run_id: line.run_id.to_string(),
                    worker_pid: line.pid,
                    started: None,
                    ended: None,
                    ended_line: false,
                    exit_code: None,
                });
                log.executions.len() - 1
            });
            let e = &mut log.executions[i];
            if line.end {
                e.ended_line = true;
                e.ended = line.at;
                e.exit_code = line.code;
            } else {
                e.started = line.at;
            }
        }
        log
    }

    /// Executions that started at or after `after` and have not written
    /// their end line (yet: a timed-out or killed one never will).
    pub fn running_since(&self, after: DateTime<Utc>) -> Vec<&Execution> {
        self.executions
            .iter()
            .filter(|e| !e.ended_line && e.started.is_some_and(|s| s >= after))
            .collect()
    }
}

struct Line<'a> {
    end: bool,
    at: Option<DateTime<Utc>>,
    job: &'a str,
    instant: &'a str,
    shard: u32,
    attempt: u32,
    run_id: &'a str,
    pid: u32,
    code: Option<i32>,
}

impl<'a> Line<'a> {
    fn parse(line: &'a str) -> Option<Line<'a>> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let end = match f.first().copied() {
            Some("start") if f.len() == 8 => false,
            Some("end") if f.len() == 9 => true,
            _ => return None,
        };
        Some(Line {
            end,
            at: parse_stamp(f[1]),
            job: f[2],
            instant: f[3],
            shard: f[4].parse().ok()?,
            attempt: f[5].parse().ok()?,
            run_id: f[6],
            pid: f[7].parse().ok()?,
            code: if end { f[8].parse().ok() } else { None },
        })
    }
}

/// `date +%s.%N`: seconds, a dot, nanoseconds.
fn parse_stamp(s: &str) -> Option<DateTime<Utc>> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{digits:0<9}").parse().ok()?;
    DateTime::from_timestamp(secs, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_start_and_end_by_run_id() {
        let text = "\
start 1700000000.250000000 j 2026-01-01T00:00:00Z 1 1 R1 4242 
start 1700000000.5 k 2026-01-01T00:00:00Z 0 2 R2 4243 
end 1700000001.000000001 j 2026-01-01T00:00:00Z 1 1 R1 4242 0
garbage line
end 17000 k 2026-01-01T00:00:00Z
";
        let log = ExecLog::parse(text);
        assert_eq!(log.bad_lines, 2);
        assert_eq!(log.executions.len(), 2);
        let r1 = &log.executions[0];
        assert_eq!((r1.job.as_str(), r1.shard, r1.attempt), ("j", 1, 1));
        assert_eq!(r1.worker_pid, 4242);
        assert!(r1.ended_line);
        assert_eq!(r1.exit_code, Some(0));
        assert_eq!(r1.started.unwrap().timestamp_subsec_millis(), 250);
        assert_eq!(r1.ended.unwrap().timestamp_subsec_nanos(), 1);
        let r2 = &log.executions[1];
        assert!(!r2.ended_line);
        assert_eq!(r2.started.unwrap().timestamp_subsec_millis(), 500);
        let since = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let running: Vec<&str> = log
            .running_since(since)
            .iter()
            .map(|e| e.run_id.as_str())
            .collect();
        assert_eq!(running, ["R2"]);
    }

    #[test]
    fn the_tail_starts_at_a_whole_line() {
        let path =
            std::env::temp_dir().join(format!("jetcron-chaos-tail-{}.log", std::process::id()));
        let line = |run: &str| format!("start 1700000000.5 k 2026-01-01T00:00:00Z 0 1 {run} 7 \n");
        std::fs::write(&path, format!("{}{}{}", line("R1"), line("R2"), line("R3"))).unwrap();
        let one = line("R3").len() as u64;
        let tail = ExecLog::read_tail(&path, one + 5).unwrap();
        let runs: Vec<&str> = tail.executions.iter().map(|e| e.run_id.as_str()).collect();
        assert_eq!(runs, ["R3"]);
        assert_eq!(tail.bad_lines, 0);
        assert_eq!(
            ExecLog::read_tail(&path, 1 << 20).unwrap().executions.len(),
            3
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_missing_file_is_an_empty_log() {
        let log = ExecLog::read(Path::new("/nonexistent/jetcron-chaos/exec.log")).unwrap();
        assert!(log.executions.is_empty());
    }
}
