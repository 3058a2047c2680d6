//! Invariant 2: no execution hidden.
//!
//! Reads: the execution log (every command that wrote its `end` line ran to
//! its end), the results' run ids, and the worker kills of the fault plan.
//! Every execution with an end line must have a result with its run id,
//! filed under the same job, instant, shard and attempt, unless the plan
//! SIGKILLed its worker (the shell's parent) before the result could be
//! stored: at most [`RESULT_GRACE`] after the end line. A run id must not
//! appear in two results.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::wire::RunResult;

use super::{Violation, ts};
use crate::execlog::Execution;
use crate::faults::WorkerKill;

/// How long after its end line a worker may take to store the result. A
/// worker killed later than this had the time and must have stored it.
pub const RESULT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VisibleCounts {
    pub checked: usize,
    pub excused: usize,
}

pub fn every_execution_visible(
    executions: &[Execution],
    results: &[RunResult],
    kills: &[WorkerKill],
) -> (Vec<Violation>, VisibleCounts) {
    let mut violations = Vec::new();
    let mut counts = VisibleCounts::default();
    let mut by_run: HashMap<&str, Vec<&RunResult>> = HashMap::new();
    for r in results {
        by_run.entry(r.run_id.as_str()).or_default().push(r);
    }
    let mut reused: Vec<(&str, &Vec<&RunResult>)> = by_run
        .iter()
        .filter(|(_, rs)| rs.len() > 1)
        .map(|(k, v)| (*k, v))
        .collect();
    reused.sort_by_key(|(k, _)| *k);
    for (run_id, rs) in reused {
        violations.push(Violation::RunIdReused {
            run_id: run_id.to_string(),
            results: rs.iter().map(|r| describe(r)).collect(),
        });
    }
    let grace = chrono::Duration::from_std(RESULT_GRACE).unwrap_or_default();
    for e in executions.iter().filter(|e| e.ended_line) {
        counts.checked += 1;
        match by_run.get(e.run_id.as_str()) {
            Some(rs) => {
                for r in rs {
                    if !same_run(e, r) {
                        violations.push(Violation::MisattributedResult {
                            run_id: e.run_id.clone(),
                            logged: format!(
                                "{} {} shard {} attempt {}",
                                e.job, e.instant, e.shard, e.attempt
                            ),
                            stored: describe(r),
                        });
                    }
                }
            }
            None => {
                let killed = kills.iter().any(|k| {
                    k.pid == e.worker_pid && e.ended.is_none_or(|end| k.at <= end + grace)
                });
                if killed {
                    counts.excused += 1;
                } else {
                    violations.push(Violation::HiddenExecution {
                        job: e.job.clone(),
                        instant: e.instant.clone(),
                        shard: e.shard,
                        attempt: e.attempt,
                        run_id: e.run_id.clone(),
                        worker_pid: e.worker_pid,
                        ended: e.ended,
                    });
                }
            }
        }
    }
    (violations, counts)
}

fn same_run(e: &Execution, r: &RunResult) -> bool {
    let instant: Option<DateTime<Utc>> = DateTime::parse_from_rfc3339(&e.instant)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    e.job == r.job && instant == Some(r.instant) && e.shard == r.shard && e.attempt == r.attempt
}

fn describe(r: &RunResult) -> String {
    format!(
        "{} {} shard {} attempt {} ({}, worker {})",
        r.job,
        ts(r.instant),
        r.shard,
        r.attempt,
        r.status.as_str(),
        r.worker
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{result, t};
    use super::*;

    fn exec(run: &str, pid: u32, ended: Option<DateTime<Utc>>) -> Execution {
        Execution {
            job: "a".into(),
            instant: ts(t(1)),
            shard: 0,
            attempt: 1,
            run_id: run.into(),
            worker_pid: pid,
            started: Some(t(1)),
            ended,
            ended_line: true,
            exit_code: Some(0),
        }
    }

    #[test]
    fn every_ended_execution_with_its_result_passes() {
        let execs = vec![
            exec("r1", 100, Some(t(2))),
            Execution {
                ended_line: false,
                ..exec("r2", 100, None)
            },
        ];
        let rs = vec![result("a", t(1), 0, 1, "r1")];
        let (v, c) = every_execution_visible(&execs, &rs, &[]);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(
            c,
            VisibleCounts {
                checked: 1,
                excused: 0
            }
        );
    }

    #[test]
    fn an_execution_without_result_is_reported() {
        let execs = vec![exec("r1", 100, Some(t(2))), exec("r2", 100, Some(t(3)))];
        let rs = vec![result("a", t(1), 0, 1, "r1")];
        let (v, _) = every_execution_visible(&execs, &rs, &[]);
        assert_eq!(v.len(), 1);
        assert!(matches!(&v[0], Violation::HiddenExecution { run_id, .. } if run_id == "r2"));
        assert!(v[0].to_string().starts_with("[2] hidden execution: a "));
    }

    #[test]
    fn a_killed_worker_excuses_only_results_it_could_not_store() {
        let execs = vec![exec("r1", 100, Some(t(10))), exec("r2", 200, Some(t(10)))];
        // Worker 100 killed a second after the end line: excused. Worker 200
        // killed a minute later: it had the time, so the loss is real.
        let kills = [
            WorkerKill {
                pid: 100,
                at: t(11),
            },
            WorkerKill {
                pid: 200,
                at: t(70),
            },
        ];
        let (v, c) = every_execution_visible(&execs, &[], &kills);
        assert_eq!(
            c,
            VisibleCounts {
                checked: 2,
                excused: 1
            }
        );
        assert_eq!(v.len(), 1);
        assert!(matches!(
            &v[0],
            Violation::HiddenExecution {
                worker_pid: 200,
                ..
            }
        ));
    }

    #[test]
    fn reused_run_ids_and_misfiled_results_are_reported() {
        let execs = vec![exec("r1", 100, Some(t(2)))];
        let rs = vec![result("a", t(1), 0, 1, "r1"), result("a", t(1), 1, 1, "r1")];
        let (v, _) = every_execution_visible(&execs, &rs, &[]);
        assert!(
            v.iter()
                .any(|v| matches!(v, Violation::RunIdReused { results, .. } if results.len() == 2)),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|v| matches!(v, Violation::MisattributedResult { .. })),
            "{v:?}"
        );
    }
}
