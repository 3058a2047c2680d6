//! The figures of a run and how they are printed.
//!
//! - takeover (leader faults): from the fault's start to the first `leader`
//!   event of a newer epoch;
//! - resume (server kills): from the server accepting clients again to the
//!   first `fired` event after that;
//! - re-election (node kills): from the kill until every jetcron stream had
//!   a leader again (measured by the runner while the node was down).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jetcron_shared::wire::{Event, EventBody};

use crate::check::{Counts, Violation, stall, ts};
use crate::faults::FaultRecord;
use crate::plan::{FaultKind, PlannedFault};

/// Violations printed on the console; all of them go to `report.txt`.
pub const CONSOLE_VIOLATIONS: usize = 60;

/// Everything a run reports.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub duration: Duration,
    pub cluster: bool,
    pub faults: Vec<FaultRecord>,
    pub skipped: Vec<(PlannedFault, String)>,
    pub counts: Counts,
    pub results: usize,
    pub events: usize,
    pub fences: usize,
    pub undecodable: Vec<String>,
    pub undecodable_count: usize,
    /// How long the work stream took to drain after the stop, if it did.
    pub drained_in: Option<Duration>,
    /// Per fault number.
    pub takeovers: BTreeMap<usize, Option<Duration>>,
    pub resumes: BTreeMap<usize, Option<Duration>>,
    /// Longest stretch without a fire in each fault's window.
    pub stalls: BTreeMap<usize, Duration>,
    pub violations: Vec<Violation>,
}

/// Time from `from` to the first event at or after it that `matches`.
fn first_after(
    events: &[Event],
    from: DateTime<Utc>,
    matches: impl Fn(&Event) -> bool,
) -> Option<Duration> {
    events
        .iter()
        .filter(|e| e.at >= from && matches(e))
        .map(|e| e.at)
        .min()
        .and_then(|at| (at - from).to_std().ok())
}

/// Takeover time of each leader fault.
pub fn takeovers(faults: &[FaultRecord], events: &[Event]) -> BTreeMap<usize, Option<Duration>> {
    faults
        .iter()
        .filter(|f| matches!(f.kind, FaultKind::KillLeader | FaultKind::StopLeader))
        .map(|f| {
            let before = f.epoch_before.unwrap_or(0);
            let t = first_after(
                events,
                f.start,
                |e| matches!(e.body, EventBody::Leader { epoch, .. } if epoch > before),
            );
            (f.number, t)
        })
        .collect()
}

/// Resume time of each server kill.
pub fn resumes(faults: &[FaultRecord], events: &[Event]) -> BTreeMap<usize, Option<Duration>> {
    faults
        .iter()
        .filter(|f| f.kind == FaultKind::KillServer)
        .map(|f| {
            (
                f.number,
                first_after(events, f.ended, |e| {
                    matches!(e.body, EventBody::Fired { .. })
                }),
            )
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn worst(map: &BTreeMap<usize, Option<Duration>>) -> String {
    if map.is_empty() {
        return "n/a (no such fault)".into();
    }
    if let Some((n, _)) = map.iter().find(|(_, d)| d.is_none()) {
        return format!("none seen (fault #{n})");
    }
    map.iter()
        .filter_map(|(n, d)| d.map(|d| (d, *n)))
        .max()
        .map_or_else(
            || "n/a".into(),
            |(d, n)| format!("{} (fault #{n})", secs(d)),
        )
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    fn by_kind(&self) -> String {
        let kinds = FaultKind::offered(self.cluster);
        kinds
            .iter()
            .map(|k| {
                format!(
                    "{k} {}",
                    self.faults.iter().filter(|f| f.kind == *k).count()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn worst_node_outage(&self) -> String {
        self.faults
            .iter()
            .filter(|f| f.kind == FaultKind::KillNode)
            .map(|f| (f.outage, f.number))
            .max()
            .map_or_else(
                || "n/a (no such fault)".into(),
                |(d, n)| format!("{} (fault #{n})", secs(d)),
            )
    }

    /// The report; `limit` bounds the violations listed.
    pub fn render(&self, limit: usize) -> String {
        let mut out = String::new();
        let _ = self.write(&mut out, limit);
        out
    }

    fn write(&self, out: &mut String, limit: usize) -> fmt::Result {
        let setup = if self.cluster {
            "3-node cluster"
        } else {
            "single server"
        };
        writeln!(
            out,
            "== jetcron chaos: seed {}, {}s, {setup} ==",
            self.seed,
            self.duration.as_secs()
        )?;
        writeln!(out, "faults:")?;
        for f in &self.faults {
            let extra = match (self.takeovers.get(&f.number), self.resumes.get(&f.number)) {
                (Some(t), _) => format!(", takeover {}", t.map_or("none seen".into(), secs)),
                (_, Some(r)) => format!(
                    ", first fire {} after restart",
                    r.map_or("none seen".into(), secs)
                ),
                _ => String::new(),
            };
            writeln!(
                out,
                "  #{} {} {} at {}, outage ended +{}, longest stall {} (allowed {}){extra}; {}",
                f.number,
                f.kind,
                f.target,
                ts(f.start),
                secs((f.ended - f.start).to_std().unwrap_or_default()),
                self.stalls
                    .get(&f.number)
                    .map_or("n/a".into(), |d| secs(*d)),
                secs(stall::allowed(f.outage)),
                f.note
            )?;
        }
        for (p, why) in &self.skipped {
            writeln!(out, "  #{} {} not run: {why}", p.number, p.kind)?;
        }
        let c = &self.counts;
        writeln!(out, "figures:")?;
        writeln!(
            out,
            "  faults survived: {} (not run: {})",
            self.by_kind(),
            self.skipped.len()
        )?;
        writeln!(
            out,
            "  fires checked: {} (due instants checked: {})",
            c.fires, c.due_instants
        )?;
        writeln!(out, "  shards checked: {}", c.shards)?;
        writeln!(
            out,
            "  executions checked: {} (without result, excused by a worker kill: {})",
            c.executions, c.excused_executions
        )?;
        writeln!(
            out,
            "  read: {} results, {} events, {} work fences",
            self.results, self.events, self.fences
        )?;
        if c.results_without_seq > 0 {
            writeln!(
                out,
                "  results without stream_seq (invariants 1 and 3 cannot judge them): {}",
                c.results_without_seq
            )?;
        }
        if self.undecodable_count > 0 {
            writeln!(
                out,
                "  undecodable messages (skipped): {}",
                self.undecodable_count
            )?;
            for u in &self.undecodable {
                writeln!(out, "    {u}")?;
            }
        }
        writeln!(
            out,
            "  work stream drained after the stop in: {}",
            self.drained_in.map_or("did not drain".into(), secs)
        )?;
        writeln!(
            out,
            "  worst takeover after a leader fault: {}",
            worst(&self.takeovers)
        )?;
        writeln!(
            out,
            "  worst resume after a server restart: {}",
            worst(&self.resumes)
        )?;
        if self.cluster {
            writeln!(
                out,
                "  worst stream re-election after a node kill: {}",
                self.worst_node_outage()
            )?;
        }
        let mut per: BTreeMap<u8, usize> = BTreeMap::new();
        for v in &self.violations {
            *per.entry(v.invariant()).or_default() += 1;
        }
        let per: Vec<String> = per.iter().map(|(i, n)| format!("[{i}] {n}")).collect();
        writeln!(
            out,
            "  violations: {}{}",
            self.violations.len(),
            if per.is_empty() {
                String::new()
            } else {
                format!(" ({})", per.join(", "))
            }
        )?;
        for v in self.violations.iter().take(limit) {
            writeln!(out, "    {v}")?;
        }
        if self.violations.len() > limit {
            writeln!(
                out,
                "    ... {} more in report.txt",
                self.violations.len() - limit
            )?;
        }
        writeln!(
            out,
            "result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixture::{fired, t};

    fn leader(at: i64, epoch: u64) -> Event {
        Event {
            at: t(at),
            body: EventBody::Leader {
                holder: "scheduler-2".into(),
                epoch,
            },
        }
    }

    fn record(number: usize, kind: FaultKind, start: i64, ended: i64) -> FaultRecord {
        FaultRecord {
            number,
            kind,
            target: "x".into(),
            start: t(start),
            ended: t(ended),
            outage: Duration::from_secs(3),
            epoch_before: Some(5),
            note: String::new(),
        }
    }

    #[test]
    fn takeover_is_the_first_newer_epoch_and_resume_the_first_fire() {
        let events = [
            leader(1, 5),
            leader(13, 9),
            fired("a", t(20), 1, t(22)),
            fired("a", t(24), 1, t(24)),
        ];
        let faults = [
            record(1, FaultKind::KillLeader, 10, 14),
            record(2, FaultKind::KillServer, 15, 21),
        ];
        let tk = takeovers(&faults, &events);
        assert_eq!(tk.get(&1), Some(&Some(Duration::from_secs(3))));
        let rs = resumes(&faults, &events);
        assert_eq!(rs.get(&2), Some(&Some(Duration::from_secs(1))));
        assert_eq!(worst(&tk), "3.00s (fault #1)");
        assert_eq!(worst(&BTreeMap::new()), "n/a (no such fault)");
        assert_eq!(worst(&BTreeMap::from([(4, None)])), "none seen (fault #4)");
    }
}
