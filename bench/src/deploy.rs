//! One jetcron deployment under test: a fresh nats-server, jetcron's
//! buckets and streams, job definitions stored straight into the jobs
//! bucket, and scheduler and worker processes.
//!
//! Every scenario step gets its own deployment (and so its own server and
//! store): nothing a step leaves behind can slow the next one down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use jetcron_shared::Names;
use jetcron_shared::job::Job;
use jetcron_shared::setup::{self, SetupOptions};
use jetcron_shared::wire::{Cause, ShardMessage};
use serde::Deserialize;
use tokio::time::timeout;

use crate::error::{BenchError, Result};
use crate::procs::{Binaries, Proc};
use crate::publish::{Outgoing, Published, WINDOW, publish_all};
use crate::server::Server;

/// `<tag>-0000042`: the index is what the collector keys fires by.
pub fn job_id(tag: &str, i: usize) -> String {
    format!("{tag}-{i:07}")
}

/// A job definition as JSON, the way an operator would store it.
pub fn definition(id: &str, schedule: &str, group: &str, shell: &str, shards: u32) -> Vec<u8> {
    definition_running(
        id,
        schedule,
        group,
        serde_json::json!({"shell": shell}),
        shards,
    )
}

/// A definition whose `run` is `run`.
pub fn definition_running(
    id: &str,
    schedule: &str,
    group: &str,
    run: serde_json::Value,
    shards: u32,
) -> Vec<u8> {
    let v = serde_json::json!({
        "id": id,
        "schedule": schedule,
        "group": group,
        "shards": shards,
        "run": run,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// What jetcron would put on the work stream for a one-shard job `id`:
/// the payload of the raw anchors, so both carry the same bytes.
pub fn shard_body(id: &str, group: &str) -> Bytes {
    let def = definition(id, "* * * * * *", group, "true", 1);
    match Job::decode(&def, None) {
        Ok(job) => Bytes::from(ShardMessage::new(&job, Utc::now(), 0, 1, Cause::Schedule).encode()),
        Err(_) => Bytes::from(def),
    }
}

/// The lease value fields the bench needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    pub holder: String,
    #[serde(default)]
    pub epoch: Option<u64>,
}

#[derive(Debug)]
pub struct Deployment {
    pub server: Server,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub names: Names,
    pub lease_ttl: Duration,
    bins: Binaries,
    logs: PathBuf,
}

impl Deployment {
    /// A fresh server with jetcron's resources created, nothing running.
    pub async fn start(bins: &Binaries, lease_ttl: Duration, logs: &Path) -> Result<Deployment> {
        let server = Server::start(logs).await?;
        let client = connect(&server.url()).await?;
        let js = jetstream::new(client.clone());
        let names = Names::default();
        let opts = SetupOptions {
            lease_ttl,
            ..SetupOptions::default()
        };
        timeout(Duration::from_secs(30), setup::ensure(&js, &names, &opts))
            .await
            .map_err(|_| {
                BenchError::timeout("creating jetcron's resources", Duration::from_secs(30))
            })?
            .map_err(|e| BenchError::nats("creating jetcron's resources", e))?;
        Ok(Deployment {
            server,
            client,
            js,
            names,
            lease_ttl,
            bins: bins.clone(),
            logs: logs.to_path_buf(),
        })
    }

    pub fn server_pid(&self) -> u32 {
        self.server.pid()
    }

    /// Stores definitions straight into the jobs bucket.
    pub async fn put_jobs(&self, defs: impl IntoIterator<Item = (String, Vec<u8>)>) -> Published {
        let bucket = self.names.jobs_bucket();
        let messages = defs
            .into_iter()
            .map(|(id, body)| Outgoing::new(Names::kv_subject(&bucket, &id), body));
        publish_all(&self.js, messages, WINDOW).await
    }

    /// Starts `jetcron-scheduler --id <id>`.
    pub fn scheduler(&self, id: &str) -> Result<Proc> {
        let args = vec![
            "--nats-url".into(),
            self.server.url(),
            "--id".into(),
            id.into(),
            "--lease-ttl".into(),
            format!("{}ms", self.lease_ttl.as_millis()),
        ];
        Proc::spawn(id, &self.bins.scheduler, &args, self.log(id))
    }

    /// Starts `jetcron-worker --allow-shell` for `group`.
    pub fn worker(&self, id: &str, group: &str, concurrency: usize) -> Result<Proc> {
        let args = vec![
            "--nats-url".into(),
            self.server.url(),
            "--id".into(),
            id.into(),
            "--group".into(),
            group.into(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--allow-shell".into(),
        ];
        Proc::spawn(id, &self.bins.worker, &args, self.log(id))
    }

    fn log(&self, id: &str) -> PathBuf {
        let port = self.server.port();
        self.logs.join(format!("{port}-{id}.log"))
    }

    /// Who holds the lease, if anybody.
    /// Whether scheduler replica `id` says it is warm (every definition and
    /// fire state loaded), from its heartbeat in the lease bucket.
    pub async fn warm(&self, id: &str) -> bool {
        let read = async {
            let kv = self
                .js
                .get_key_value(self.names.lease_bucket())
                .await
                .ok()?;
            let value = kv.get(self.names.replica_key(id)).await.ok()??;
            let beat: serde_json::Value = serde_json::from_slice(&value).ok()?;
            beat["warm"].as_bool()
        };
        timeout(Duration::from_secs(2), read)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    pub async fn leader(&self) -> Option<Lease> {
        let read = async {
            let kv = self
                .js
                .get_key_value(self.names.lease_bucket())
                .await
                .ok()?;
            let value = kv.get(self.names.lease_key()).await.ok()??;
            serde_json::from_slice::<Lease>(&value).ok()
        };
        timeout(Duration::from_secs(2), read).await.ok().flatten()
    }
}

/// A client for the bench's own requests and consumers.
pub async fn connect(url: &str) -> Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        // Large bursts arrive faster than a small buffer drains.
        .client_capacity(65_536)
        .subscription_capacity(1 << 17);
    timeout(Duration::from_secs(10), options.connect(url))
        .await
        .map_err(|_| BenchError::timeout(format!("connecting to {url}"), Duration::from_secs(10)))?
        .map_err(|e| BenchError::nats(format!("connecting to {url}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetcron_shared::JobSpec;

    #[test]
    fn definitions_validate_as_jobs() {
        let def = definition(&job_id("lat", 42), "* * * * * *", "lat", "true", 1);
        let spec = JobSpec::decode(&def).unwrap();
        assert_eq!(spec.id, "lat-0000042");
        assert_eq!(spec.group, "lat");
        Job::decode(&def, None).unwrap();
        let at = definition("b-1", "@at 2030-01-01T00:00:00Z", "burst", "true", 1000);
        Job::decode(&at, None).unwrap();
    }

    #[test]
    fn the_anchor_body_is_a_shard_message() {
        let body = shard_body("raw-0000001", "raw");
        let m = ShardMessage::decode(&body).unwrap();
        assert_eq!(m.job, "raw-0000001");
    }

    #[test]
    fn the_lease_value_names_its_holder() {
        let v = br#"{"holder":"scheduler-2","since":"2026-01-01T00:00:00Z","epoch":17,"term":"x"}"#;
        let l: Lease = serde_json::from_slice(v).unwrap();
        assert_eq!(l.holder, "scheduler-2");
        assert_eq!(l.epoch, Some(17));
    }
}
