//! The NATS side of a run: one nats-server, or a 3-node cluster, started
//! through the test helper (`jetcron_tests::{NatsServer, NatsCluster}`:
//! random ports, private stores, kill -9 and restart on the same store).
//!
//! The helper panics when a server does not come up; here each of its calls
//! runs in a task of its own, so that such a panic becomes an error of the
//! run (with the servers killed by their own `Drop`) instead of ending it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use jetcron_shared::Names;
use jetcron_tests::{NatsCluster, NatsServer};
use thiserror::Error;
use tokio::time::{Instant, sleep, timeout};

/// Nodes of a cluster run.
pub const CLUSTER_NODES: usize = 3;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("nats-server: {0}")]
    Helper(String),
    #[error("cannot connect to {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("no such node: {0}")]
    NoNode(usize),
}

/// The running servers: one, or the nodes of a cluster (`n1`, `n2`, `n3`).
#[derive(Debug)]
pub struct Servers {
    nodes: Vec<NatsServer>,
}

/// Runs `work` on its own task; a panic in it becomes an error.
async fn guarded<T: Send + 'static>(
    what: &str,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::spawn(work).await.map_err(|e| {
        let reason = if e.is_panic() {
            let payload = e.into_panic();
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".to_string())
        } else {
            e.to_string()
        };
        ServerError::Helper(format!("{what}: {reason}"))
    })
}

impl Servers {
    pub async fn start(cluster: bool) -> Result<Servers, ServerError> {
        let nodes = if cluster {
            let c: NatsCluster =
                guarded("starting a cluster", NatsCluster::start(CLUSTER_NODES)).await?;
            c.nodes
        } else {
            vec![guarded("starting nats-server", NatsServer::start()).await?]
        };
        Ok(Servers { nodes })
    }

    /// Client URLs, one per node.
    pub fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Client URLs for a `--nats-url` flag.
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// A client that reconnects for ever (across server restarts).
    pub async fn connect(&self) -> Result<async_nats::Client, ServerError> {
        let urls = self.url_list();
        let connect = async_nats::ConnectOptions::new()
            .name("jetcron-chaos")
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None)
            .connect(urls.clone());
        match timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(ServerError::Connect {
                urls: urls.join(","),
                reason: e.to_string(),
            }),
            Err(_) => Err(ServerError::Connect {
                urls: urls.join(","),
                reason: "timed out".into(),
            }),
        }
    }

    /// Server name of a node (`n1`, ...; the single server has its own).
    pub fn node_name(&self, index: usize) -> Option<String> {
        self.nodes.get(index).map(|n| n.name().to_string())
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// SIGKILL one node (index 0 is the single server); the store stays.
    pub async fn kill(&mut self, index: usize) -> Result<(), ServerError> {
        match self.nodes.get_mut(index) {
            Some(node) => {
                node.kill().await;
                Ok(())
            }
            None => Err(ServerError::NoNode(index)),
        }
    }

    /// Restarts one node on its port and store (and config); returns once it
    /// answers JetStream requests.
    pub async fn restart(&mut self, index: usize) -> Result<(), ServerError> {
        if index >= self.nodes.len() {
            return Err(ServerError::NoNode(index));
        }
        let node = self.nodes.remove(index);
        let node = guarded("restarting nats-server", async move {
            let mut n = node;
            n.restart().await;
            n
        })
        .await?;
        self.nodes.insert(index, node);
        Ok(())
    }

    /// Copies the server logs into `dir` (the stores and logs themselves go
    /// away with the servers).
    pub fn copy_logs(&self, dir: &Path) {
        for node in &self.nodes {
            let to = dir.join(format!("nats-{}.log", node.name()));
            if let Err(e) = std::fs::copy(node.log_path(), &to) {
                tracing::warn!(from = %node.log_path().display(), error = %e, "cannot copy a server log");
            }
        }
    }
}

/// Every jetcron stream and bucket stream.
pub fn jetcron_streams(names: &Names) -> Vec<String> {
    let mut streams = vec![
        names.work_stream(),
        names.results_stream(),
        names.events_stream(),
    ];
    for bucket in [
        names.jobs_bucket(),
        names.state_bucket(),
        names.lease_bucket(),
        names.workers_bucket(),
        names.runs_bucket(),
    ] {
        streams.push(format!("KV_{bucket}"));
    }
    streams
}

/// Polls until every jetcron stream answers an info request with a leader:
/// one other than `gone` while `gone_is_back` is false, any once the killed
/// node is back (it may win the election itself). Returns how long that
/// took from `since`, or `None` if `limit` passed first.
pub async fn wait_streams_led(
    js: &jetstream::Context,
    names: &Names,
    gone: &str,
    gone_is_back: &AtomicBool,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let streams = jetcron_streams(names);
    let deadline = since + limit;
    loop {
        let mut all = true;
        for name in &streams {
            let led = match timeout(Duration::from_secs(1), js.get_stream(name)).await {
                Ok(Ok(stream)) => stream
                    .cached_info()
                    .cluster
                    .as_ref()
                    .and_then(|c| c.leader.as_deref())
                    .is_some_and(|leader| leader != gone || gone_is_back.load(Ordering::SeqCst)),
                _ => false,
            };
            if !led {
                all = false;
                break;
            }
        }
        if all {
            return Some(since.elapsed());
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(200)).await;
    }
}
