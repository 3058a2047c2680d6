//! Scheduler settings: a plain struct with documented defaults, filled by
//! the binary's flags or built directly by tests.

use std::net::SocketAddr;
use std::time::Duration;

use jetcron_shared::connect::ConnectArgs;
use jetcron_shared::setup::SetupOptions;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub connect: ConnectArgs,
    /// This replica's name, shown as the lease holder. Default `<host>-<pid>`.
    pub id: String,
    /// Settings of the buckets and streams, used when they are created.
    /// `setup.lease_ttl` (default 3 s) is the lease lifetime.
    pub setup: SetupOptions,
    /// How often a standby tries to take a free lease. Default 250 ms.
    pub takeover_poll: Duration,
    /// A fire dispatched later than this after its instant counts as a misfire
    /// and is reported by a `misfired` event. Default 1 s.
    pub misfire_threshold: Duration,
    /// Serve Prometheus metrics at `http://<addr>/metrics`. Default: off.
    pub metrics_addr: Option<SocketAddr>,
    /// Where events are posted (see [`crate::webhooks`]). Default: none.
    pub webhooks: Vec<crate::webhooks::Sink>,
    /// Serve the web console (see [`crate::console`]). Default: off.
    pub console: Option<crate::console::ConsoleConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            connect: ConnectArgs::default(),
            id: default_id(),
            setup: SetupOptions::default(),
            takeover_poll: Duration::from_millis(250),
            misfire_threshold: Duration::from_secs(1),
            metrics_addr: None,
            webhooks: Vec::new(),
            console: None,
        }
    }
}

/// `<hostname>-<pid>`, unique enough to tell replicas apart.
pub fn default_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "scheduler".to_string());
    format!("{host}-{}", std::process::id())
}
