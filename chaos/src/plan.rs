//! The fault plan: which fault, when, and for how long, drawn from one seed.
//!
//! Faults come one at a time. Kinds are dealt from a shuffled deck (every
//! kind once per round, in a random order), so a short run still sees
//! different kinds and a long run sees them all about equally often. Start
//! times are nominal: the runner never starts a fault less than
//! [`MIN_CALM`] after the previous outage ended, and skips a fault that
//! could no longer finish before faults stop.

use std::fmt;
use std::time::Duration;

use crate::rng::SplitMix64;

/// Least time between the end of one outage and the start of the next fault:
/// the stall check looks 10 s past an outage, and that window must be calm.
pub const MIN_CALM: Duration = Duration::from_secs(12);

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL the lease holder, restart that replica `hold` later.
    KillLeader,
    /// SIGSTOP the lease holder for `hold` (longer than the lease TTL), then SIGCONT.
    StopLeader,
    /// SIGKILL a worker while it runs a shard, restart it `hold` later.
    KillWorker,
    /// SIGKILL the nats-server, restart it on the same store `hold` later.
    KillServer,
    /// SIGKILL one cluster node, restart it on the same store `hold` later.
    KillNode,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::KillLeader,
        FaultKind::StopLeader,
        FaultKind::KillWorker,
        FaultKind::KillServer,
        FaultKind::KillNode,
    ];

    /// The kinds a deployment offers: a cluster has nodes, a single server a server.
    pub fn offered(cluster: bool) -> Vec<FaultKind> {
        let mut kinds = vec![
            FaultKind::KillLeader,
            FaultKind::StopLeader,
            FaultKind::KillWorker,
        ];
        kinds.push(if cluster {
            FaultKind::KillNode
        } else {
            FaultKind::KillServer
        });
        kinds
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::StopLeader => "stop-leader",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillServer => "kill-server",
            FaultKind::KillNode => "kill-node",
        }
    }

    /// The range `hold` is drawn from.
    fn hold_range(self, lease_ttl: Duration) -> (Duration, Duration) {
        let s = Duration::from_secs;
        match self {
            FaultKind::KillLeader => (s(2), s(5)),
            FaultKind::StopLeader => (lease_ttl + s(1), lease_ttl + s(3)),
            FaultKind::KillWorker => (s(1), s(4)),
            FaultKind::KillServer => (s(1), s(5)),
            // Long enough, often, for the surviving nodes to elect new stream
            // leaders while the node is down; short enough, sometimes, for it
            // to be back first.
            FaultKind::KillNode => (s(2), s(10)),
        }
    }

    /// Expected time from the start of the fault until its outage ended,
    /// beyond `hold`: finding the target, restarting, a node catching up.
    pub fn overhead(self) -> Duration {
        match self {
            FaultKind::KillLeader | FaultKind::StopLeader => Duration::from_secs(1),
            // Waiting for a worker in the middle of a long run.
            FaultKind::KillWorker => Duration::from_secs(9),
            FaultKind::KillServer => Duration::from_secs(2),
            FaultKind::KillNode => Duration::from_secs(5),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFault {
    /// 1-based position in the plan.
    pub number: usize,
    /// Nominal start, from the start of the chaos phase.
    pub at: Duration,
    pub kind: FaultKind,
    /// Restart delay, stop length or server down time.
    pub hold: Duration,
    /// Which node of a cluster (index), or a draw to pick among candidates.
    pub pick: u64,
}

impl PlannedFault {
    /// Nominal length: `hold` plus the kind's overhead.
    pub fn length(&self) -> Duration {
        self.hold + self.kind.overhead()
    }
}

impl fmt::Display for PlannedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hold = self.hold.as_secs_f64();
        write!(
            f,
            "#{:<3} +{:>6.1}s  {:<11} ",
            self.number,
            self.at.as_secs_f64(),
            self.kind
        )?;
        match self.kind {
            FaultKind::KillLeader => {
                write!(f, "SIGKILL the lease holder, restart it after {hold:.1}s")
            }
            FaultKind::StopLeader => write!(f, "SIGSTOP the lease holder for {hold:.1}s"),
            FaultKind::KillWorker => write!(
                f,
                "SIGKILL a worker running a shard, restart it after {hold:.1}s"
            ),
            FaultKind::KillServer => write!(
                f,
                "SIGKILL nats-server, restart it on its store after {hold:.1}s"
            ),
            FaultKind::KillNode => write!(
                f,
                "SIGKILL node n{}, restart it on its store after {hold:.1}s",
                self.pick % 3 + 1
            ),
        }
    }
}

/// What shapes a plan.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// Length of the chaos phase (from the jobs being put to the schedulers being stopped).
    pub duration: Duration,
    pub cluster: bool,
    pub lease_ttl: Duration,
    /// No fault before this.
    pub warmup: Duration,
    /// No fault may still be going on this long before the end.
    pub quiet_end: Duration,
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            duration: Duration::from_secs(90),
            cluster: false,
            lease_ttl: Duration::from_secs(3),
            warmup: Duration::from_secs(10),
            quiet_end: Duration::from_secs(15),
        }
    }
}

impl PlanSettings {
    /// Faults must have ended by this offset.
    pub fn faults_end(&self) -> Duration {
        self.duration.saturating_sub(self.quiet_end)
    }
}

/// The whole plan of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub seed: u64,
    pub faults: Vec<PlannedFault>,
}

impl Plan {
    pub fn generate(seed: u64, settings: &PlanSettings) -> Plan {
        let mut rng = SplitMix64::new(seed);
        let offered = FaultKind::offered(settings.cluster);
        let mut deck: Vec<FaultKind> = Vec::new();
        let mut faults = Vec::new();
        let mut at = settings.warmup;
        loop {
            if deck.is_empty() {
                deck = offered.clone();
                rng.shuffle(&mut deck);
            }
            let Some(kind) = deck.pop() else {
                break;
            };
            let (lo, hi) = kind.hold_range(settings.lease_ttl);
            let fault = PlannedFault {
                number: faults.len() + 1,
                at,
                kind,
                hold: rng.duration(lo, hi),
                pick: rng.next_u64(),
            };
            if at + fault.length() > settings.faults_end() {
                break;
            }
            let calm = rng.duration(MIN_CALM, MIN_CALM + Duration::from_secs(4));
            at += fault.length() + calm;
            faults.push(fault);
        }
        Plan { seed, faults }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fault plan for seed {} ({} faults):",
            self.seed,
            self.faults.len()
        )?;
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secs: u64, cluster: bool) -> PlanSettings {
        PlanSettings {
            duration: Duration::from_secs(secs),
            cluster,
            ..PlanSettings::default()
        }
    }

    #[test]
    fn one_seed_one_plan() {
        let s = settings(600, false);
        assert_eq!(Plan::generate(7, &s), Plan::generate(7, &s));
        assert_eq!(
            Plan::generate(7, &s).to_string(),
            Plan::generate(7, &s).to_string()
        );
        assert_ne!(Plan::generate(7, &s), Plan::generate(8, &s));
    }

    #[test]
    fn faults_fit_the_window_one_at_a_time_with_calm_between() {
        for seed in 0..50 {
            let s = settings(1800, seed % 2 == 0);
            let plan = Plan::generate(seed, &s);
            assert!(!plan.faults.is_empty());
            let mut previous_end: Option<Duration> = None;
            for f in &plan.faults {
                assert!(f.at >= s.warmup);
                assert!(f.at + f.length() <= s.faults_end(), "{f}");
                if let Some(end) = previous_end {
                    assert!(f.at >= end + MIN_CALM, "{f} starts too soon");
                }
                previous_end = Some(f.at + f.length());
                let (lo, hi) = f.kind.hold_range(s.lease_ttl);
                assert!((lo..=hi).contains(&f.hold), "{f}");
            }
        }
    }

    #[test]
    fn a_short_run_still_sees_several_kinds_and_a_long_one_all() {
        let short = Plan::generate(1, &settings(75, false));
        assert!(short.faults.len() >= 3, "{short}");
        let first: std::collections::HashSet<FaultKind> =
            short.faults.iter().map(|f| f.kind).collect();
        assert_eq!(first.len(), short.faults.len().min(4), "{short}");

        let long = Plan::generate(1, &settings(1800, true));
        for kind in FaultKind::offered(true) {
            let n = long.faults.iter().filter(|f| f.kind == kind).count();
            assert!(n >= 10, "{kind}: {n}");
        }
        assert!(long.faults.iter().all(|f| f.kind != FaultKind::KillServer));
        let single = Plan::generate(1, &settings(1800, false));
        assert!(single.faults.iter().all(|f| f.kind != FaultKind::KillNode));
    }

    #[test]
    fn stopping_the_leader_outlasts_the_lease() {
        let plan = Plan::generate(3, &settings(1800, false));
        for f in plan
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::StopLeader)
        {
            assert!(f.hold > Duration::from_secs(3), "{f}");
        }
    }
}
