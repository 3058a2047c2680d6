//! The worker's metrics, served at `--metrics-addr` (see
//! [`jetcron_shared::metrics`]). Every series carries the labels `group`
//! and `worker` (its id).
//!
//! | series | type | what |
//! |---|---|---|
//! | `jetcron_worker_deliveries_total` | counter | shard messages received |
//! | `jetcron_worker_redeliveries_total` | counter | of those, deliveries after the first (the server's count) |
//! | `jetcron_worker_runs_total{status}` | counter | results stored, by status (`succeeded`, `failed`, `timed_out`, `cancelled`, `expired`) |
//! | `jetcron_worker_run_duration_seconds` | histogram | attempts that ran, start to end |
//! | `jetcron_worker_dead_letters_total` | counter | shards that ended dead (a `dead` event) |
//! | `jetcron_worker_expired_total` | counter | shards not run past their deadline (an `expired` event) |
//! | `jetcron_worker_handed_back_total` | counter | runs stopped at shutdown and handed back |
//! | `jetcron_worker_running` | gauge | shards running now |
//! | `jetcron_worker_slots` | gauge | run slots in all (`--concurrency` per consumer) |

use std::sync::Arc;
use std::time::Duration;

use jetcron_shared::metrics::SharedRegistry;
use jetcron_shared::wire::RunStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

/// The worker's series; cheap to clone, clones share them.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: SharedRegistry,
    deliveries: Counter,
    redeliveries: Counter,
    runs: Family<Status, Counter>,
    duration: Histogram,
    dead: Counter,
    expired: Counter,
    handed_back: Counter,
    running: Gauge,
    slots: Gauge,
}

impl WorkerMetrics {
    pub fn new(group: &str, worker: &str) -> WorkerMetrics {
        let labels = [
            ("group".into(), group.to_string().into()),
            ("worker".into(), worker.to_string().into()),
        ];
        let mut registry = Registry::with_prefix_and_labels("jetcron_worker", labels.into_iter());
        let m = WorkerMetrics {
            registry: Arc::new(Registry::default()),
            deliveries: Counter::default(),
            redeliveries: Counter::default(),
            runs: Family::default(),
            // 5 ms to about 22 minutes.
            duration: Histogram::new(exponential_buckets(0.005, 4.0, 10)),
            dead: Counter::default(),
            expired: Counter::default(),
            handed_back: Counter::default(),
            running: Gauge::default(),
            slots: Gauge::default(),
        };
        registry.register(
            "deliveries",
            "Shard messages received",
            m.deliveries.clone(),
        );
        registry.register(
            "redeliveries",
            "Deliveries after the first, by the server's delivery count",
            m.redeliveries.clone(),
        );
        registry.register("runs", "Results stored, by status", m.runs.clone());
        registry.register(
            "run_duration_seconds",
            "Attempts that ran, from start to end",
            m.duration.clone(),
        );
        registry.register(
            "dead_letters",
            "Shards that ended dead after their last attempt",
            m.dead.clone(),
        );
        registry.register(
            "expired",
            "Shards not run because their deadline had passed",
            m.expired.clone(),
        );
        registry.register(
            "handed_back",
            "Runs stopped at shutdown and handed back to other workers",
            m.handed_back.clone(),
        );
        registry.register("running", "Shards running now", m.running.clone());
        registry.register("slots", "Run slots in all", m.slots.clone());
        WorkerMetrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The registry to serve.
    pub fn registry(&self) -> SharedRegistry {
        self.registry.clone()
    }

    pub fn delivered(&self, delivery_count: u32) {
        self.deliveries.inc();
        if delivery_count > 1 {
            self.redeliveries.inc();
        }
    }

    /// A result was stored.
    pub fn result(&self, status: RunStatus) {
        self.runs
            .get_or_create(&Status {
                status: status.as_str().to_string(),
            })
            .inc();
    }

    pub fn ran(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    pub fn dead_letter(&self) {
        self.dead.inc();
    }

    pub fn expired(&self) {
        self.expired.inc();
    }

    pub fn handed_back(&self) {
        self.handed_back.inc();
    }

    /// The gauge of shards running now, which [`crate::heartbeat::RunCount`]
    /// keeps.
    pub fn running_gauge(&self) -> Gauge {
        self.running.clone()
    }

    pub fn set_slots(&self, n: usize) {
        self.slots.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
