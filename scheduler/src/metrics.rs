//! The scheduler's metrics, served at `--metrics-addr` (see
//! [`jetcron_shared::metrics`]). Every series carries the label `replica`
//! (its id). Fires, lateness, skips and write failures are counted by the
//! replica that leads while they happen (a trigger's fire by the replica
//! that answered it): sum them over replicas.
//!
//! | series | type | what |
//! |---|---|---|
//! | `jetcron_scheduler_fires_total{cause}` | counter | fires stored (shards and events), by cause: `schedule`, `misfire`, `parent`, `manual` |
//! | `jetcron_scheduler_fire_lateness_seconds` | histogram | scheduled and misfired fires: from the instant to the fire's writes stored |
//! | `jetcron_scheduler_misfired_instants_total` | counter | instants that fired late, or not at all, because no leader was there in time |
//! | `jetcron_scheduler_skipped_instants_total{reason}` | counter | instants let pass: `paused`, `misfire`, `misfire_limit`, `overlap`, `no_definition` |
//! | `jetcron_scheduler_write_failures_total{target}` | counter | writes not stored at the first try (retried), by stream: `work` (dispatch), `state`, `events` |
//! | `jetcron_scheduler_batch_failures_total` | counter | batches the leader could not store (it steps down; its successor finishes them) |
//! | `jetcron_scheduler_leader` | gauge | 1 while this replica leads |
//! | `jetcron_scheduler_epoch` | gauge | the epoch it leads in (0 when following) |
//! | `jetcron_scheduler_lease_renewals_total{result}` | counter | lease renewals, `ok` or `failed` (a failed one is retried) |
//! | `jetcron_scheduler_jobs{state}` | gauge | jobs, `active`, `paused`, `invalid` |
//! | `jetcron_scheduler_group_pending{group}` | gauge | shards waiting in the work stream |
//! | `jetcron_scheduler_group_in_flight{group}` | gauge | shards delivered to a worker, not settled |
//! | `jetcron_scheduler_group_oldest_age_seconds{group}` | gauge | age of the group's oldest message (0: none) |
//!
//! The job and group gauges are refreshed every [`BACKLOG_EVERY`].

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use chrono::{DateTime, Utc};
use jetcron_shared::Names;
use jetcron_shared::metrics::SharedRegistry;
use jetcron_shared::wire::Cause;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backlog::backlogs;
use crate::catalog::JobIndex;
use crate::fence::Target;
use crate::lease::Leadership;
use crate::persist::{Action, Item, StateWrite};

/// Between two refreshes of the job and group gauges.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(5);

macro_rules! label_set {
    ($name:ident, $field:ident) => {
        #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $name {
            $field: String,
        }
    };
}

label_set!(CauseLabel, cause);
label_set!(ReasonLabel, reason);
label_set!(TargetLabel, target);
label_set!(ResultLabel, result);
label_set!(StateLabel, state);
label_set!(GroupLabel, group);

/// The scheduler's series; cheap to clone, clones share them.
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    registry: SharedRegistry,
    fires: Family<CauseLabel, Counter>,
    /// The counters of `fires`, one per cause of [`CAUSES`], taken once:
    /// a fire costs no label lookup.
    by_cause: Arc<[Counter; 4]>,
    lateness: Histogram,
    misfired: Counter,
    skipped: Family<ReasonLabel, Counter>,
    write_failures: Family<TargetLabel, Counter>,
    batch_failures: Counter,
    leader: Gauge,
    epoch: Gauge,
    renewals: Family<ResultLabel, Counter>,
    jobs: Family<StateLabel, Gauge>,
    pending: Family<GroupLabel, Gauge>,
    in_flight: Family<GroupLabel, Gauge>,
    oldest: Family<GroupLabel, Gauge<f64, AtomicU64>>,
}

impl SchedulerMetrics {
    pub fn new(replica: &str) -> SchedulerMetrics {
        let labels = [("replica".into(), replica.to_string().into())];
        let mut r = Registry::with_prefix_and_labels("jetcron_scheduler", labels.into_iter());
        let m = SchedulerMetrics {
            registry: Arc::new(Registry::default()),
            fires: Family::default(),
            by_cause: Arc::new(Default::default()),
            // 1 ms to about 65 s.
            lateness: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            misfired: Counter::default(),
            skipped: Family::default(),
            write_failures: Family::default(),
            batch_failures: Counter::default(),
            leader: Gauge::default(),
            epoch: Gauge::default(),
            renewals: Family::default(),
            jobs: Family::default(),
            pending: Family::default(),
            in_flight: Family::default(),
            oldest: Family::default(),
        };
        r.register("fires", "Fires stored, by cause", m.fires.clone());
        r.register(
            "fire_lateness_seconds",
            "Scheduled and misfired fires: from the instant to the fire stored",
            m.lateness.clone(),
        );
        r.register(
            "misfired_instants",
            "Instants that fired late or not at all because no leader was there in time",
            m.misfired.clone(),
        );
        r.register(
            "skipped_instants",
            "Instants let pass, by reason",
            m.skipped.clone(),
        );
        r.register(
            "write_failures",
            "Writes not stored at the first try, by stream",
            m.write_failures.clone(),
        );
        r.register(
            "batch_failures",
            "Batches the leader could not store before stepping down",
            m.batch_failures.clone(),
        );
        r.register("leader", "1 while this replica leads", m.leader.clone());
        r.register("epoch", "The epoch this replica leads in", m.epoch.clone());
        r.register(
            "lease_renewals",
            "Lease renewals, by result",
            m.renewals.clone(),
        );
        r.register("jobs", "Jobs, by state", m.jobs.clone());
        r.register(
            "group_pending",
            "Shards waiting in the work stream",
            m.pending.clone(),
        );
        r.register(
            "group_in_flight",
            "Shards delivered to a worker and not settled",
            m.in_flight.clone(),
        );
        r.register(
            "group_oldest_age_seconds",
            "Age of the group's oldest message in the work stream",
            m.oldest.clone(),
        );
        let by_cause = CAUSES.map(|c| {
            m.fires
                .get_or_create(&CauseLabel {
                    cause: cause(c).into(),
                })
                .clone()
        });
        SchedulerMetrics {
            registry: Arc::new(r),
            by_cause: Arc::new(by_cause),
            ..m
        }
    }

    /// The registry to serve.
    pub fn registry(&self) -> SharedRegistry {
        self.registry.clone()
    }

    /// A batch's items were stored at `at`.
    pub fn stored(&self, items: &[Item], at: DateTime<Utc>) {
        for item in items {
            // Finishing an earlier leader's decision: counted by that leader.
            if matches!(item.state, StateWrite::Stored) {
                continue;
            }
            match &item.action {
                Action::Fire(f) => {
                    self.fired(f.cause);
                    if matches!(f.cause, Cause::Schedule | Cause::Misfire) {
                        let late = (at - f.instant).to_std().unwrap_or_default();
                        self.lateness.observe(late.as_secs_f64());
                    }
                    if f.cause == Cause::Misfire {
                        self.misfired.inc_by(f.missed);
                    }
                }
                Action::Skip { count, reason, .. } => {
                    self.skipped
                        .get_or_create(&ReasonLabel {
                            reason: reason.clone(),
                        })
                        .inc_by(*count);
                    if reason == crate::state::MISFIRE || reason == crate::state::MISFIRE_LIMIT {
                        self.misfired.inc_by(*count);
                    }
                }
                Action::Forget | Action::Track => {}
            }
        }
    }

    /// A fire was stored (a trigger's by the API, any other by the leader).
    pub fn fired(&self, c: Cause) {
        self.by_cause[slot(c)].inc();
    }

    pub fn batch_failed(&self) {
        self.batch_failures.inc();
    }

    pub fn write_failed(&self, target: Target) {
        let target = match target {
            Target::Work => "work",
            Target::State => "state",
            Target::Events => "events",
        };
        self.write_failures
            .get_or_create(&TargetLabel {
                target: target.into(),
            })
            .inc();
    }

    pub fn renewal(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.renewals
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    fn lead(&self, leadership: &Leadership) {
        let epoch = match leadership {
            Leadership::Leader { epoch, .. } => *epoch,
            Leadership::Follower => 0,
        };
        self.leader.set(i64::from(epoch > 0));
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// Keeps the leader gauges in step with the lease until it ends.
    pub async fn follow_leadership(self, mut leadership: watch::Receiver<Leadership>) {
        loop {
            self.lead(&leadership.borrow_and_update());
            if leadership.changed().await.is_err() {
                self.lead(&Leadership::Follower);
                return;
            }
        }
    }

    /// Refreshes the job and group gauges every [`BACKLOG_EVERY`] until
    /// `shutdown`.
    pub async fn follow_backlog(
        self,
        work: Stream,
        names: Names,
        index: JobIndex,
        shutdown: CancellationToken,
    ) {
        let mut every = tokio::time::interval(BACKLOG_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let counts = index.counts(0);
            for (state, n) in [
                ("active", counts.active),
                ("paused", counts.paused),
                ("invalid", counts.invalid),
            ] {
                self.jobs
                    .get_or_create(&StateLabel {
                        state: state.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let groups = counts.groups.into_iter().map(|(g, _)| g).collect();
            match backlogs(&work, &names, groups).await {
                Ok(all) => {
                    for (group, b) in all {
                        let label = GroupLabel { group };
                        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                        self.pending.get_or_create(&label).set(n(b.pending));
                        self.in_flight.get_or_create(&label).set(n(b.in_flight));
                        let age = b.oldest_age_ms.unwrap_or(0) as f64 / 1000.0;
                        self.oldest.get_or_create(&label).set(age);
                    }
                }
                Err(e) => debug!(error = %e, "metrics: cannot read the groups' backlog"),
            }
        }
    }
}

/// Every cause, in the order of [`slot`].
const CAUSES: [Cause; 4] = [
    Cause::Schedule,
    Cause::Misfire,
    Cause::Manual,
    Cause::Parent,
];

fn slot(c: Cause) -> usize {
    match c {
        Cause::Schedule => 0,
        Cause::Misfire => 1,
        Cause::Manual => 2,
        Cause::Parent => 3,
    }
}

fn cause(c: Cause) -> &'static str {
    match c {
        Cause::Schedule => "schedule",
        Cause::Misfire => "misfire",
        Cause::Manual => "manual",
        Cause::Parent => "parent",
    }
}
