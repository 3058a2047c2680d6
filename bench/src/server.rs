//! A fresh nats-server with JetStream for each scenario step: loopback, a
//! random free port, its own store in a temporary directory; killed and
//! removed on drop.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use crate::error::{BenchError, Result};
use crate::procs::Proc;

/// How long a server may take to answer JetStream requests.
const READY_LIMIT: Duration = Duration::from_secs(15);

fn executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `$NATS_SERVER_BIN`, then `.tools/nats-server/bin/nats-server` of this
/// workspace (`./scripts/install-nats-server.sh`), then `PATH`.
pub fn nats_server_bin() -> Result<PathBuf> {
    let env = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from);
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats-server/bin/nats-server");
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    env.into_iter()
        .chain(std::iter::once(tools))
        .chain(on_path)
        .find(|p| executable(p))
        .ok_or_else(|| BenchError::MissingBinary {
            name: "nats-server".into(),
            dir: "$NATS_SERVER_BIN, .tools/ or PATH (install it with ./scripts/install-nats-server.sh)"
                .into(),
        })
}

#[derive(Debug)]
pub struct Server {
    proc: Proc,
    port: u16,
    /// Holds the store; removed on drop (after the process is killed).
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server, retrying with another port if the first is taken
    /// between probing and binding. Its log goes to `logs`.
    pub async fn start(logs: &Path) -> Result<Server> {
        let bin = nats_server_bin()?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let dir = tempfile::Builder::new()
                .prefix("jetcron-bench-nats-")
                .tempdir()
                .map_err(|e| BenchError::io("creating a store directory", e))?;
            // A set file-store ceiling: by default the server allows its
            // streams to reserve 75% of the disk's free space at most, and
            // jetcron's bounded streams are refused on a nearly full disk.
            let store = dir.path().join("store");
            let config = dir.path().join("nats-server.conf");
            let text = format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 1TB\n}}\n",
                store = store.to_string_lossy(),
            );
            std::fs::write(&config, text)
                .map_err(|e| BenchError::io(format!("writing {}", config.display()), e))?;
            let args = vec!["-c".to_string(), config.to_string_lossy().into_owned()];
            let log = logs.join(format!("{port}-nats-server.log"));
            let proc = Proc::spawn("nats-server", &bin, &args, log)?;
            let mut server = Server {
                proc,
                port,
                _dir: dir,
            };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| BenchError::timeout("starting nats-server", READY_LIMIT)))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_LIMIT;
        let url = self.url();
        loop {
            if self.proc.pid().is_none() {
                return Err(BenchError::Process {
                    what: "starting nats-server".into(),
                    reason: format!("it exited (log: {})", self.proc.log.display()),
                });
            }
            if js_ready(&url).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::timeout(
                    format!(
                        "nats-server answering on {url} (log: {})",
                        self.proc.log.display()
                    ),
                    READY_LIMIT,
                ));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.proc.os_pid()
    }
}

fn free_port() -> Result<u16> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("finding a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("finding a free port", e))
}

/// Whether JetStream at `url` answers `$JS.API.INFO` without an error.
async fn js_ready(url: &str) -> bool {
    let probe = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .ok()?;
        let reply = client
            .request("$JS.API.INFO", bytes::Bytes::new())
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
        v.get("error").is_none().then_some(())
    };
    timeout(Duration::from_secs(3), probe)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_starts_and_is_gone_after_drop() {
        let logs = tempfile::tempdir().unwrap();
        let server = Server::start(logs.path()).await.unwrap();
        let pid = server.pid();
        assert!(js_ready(&server.url()).await);
        drop(server);
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err();
        assert!(gone, "nats-server {pid} survived the drop");
    }
}
