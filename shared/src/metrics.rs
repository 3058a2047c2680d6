//! The metrics endpoint of the scheduler and the worker (`--metrics-addr`):
//! `GET /metrics` answers the process's registry in the OpenMetrics text
//! format (which Prometheus scrapes), encoded by `prometheus-client`.
//!
//! Off unless an address is given. The endpoint reads nothing but the
//! registry, and answers only `GET /metrics` (anything else gets 404, a
//! request that is not HTTP gets 400), so this small server is all it
//! needs; put it on loopback or behind whatever guards the host's other
//! metrics ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest a scrape may take to send its request.
const READ_LIMIT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug, Error)]
#[error("metrics_addr: cannot listen on {addr}: {reason}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// The registry, shareable between the code that updates metrics and the
/// endpoint that reads them.
pub type SharedRegistry = Arc<Registry>;

/// A bound endpoint; [`Endpoint::serve`] answers scrapes until shutdown.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
    registry: SharedRegistry,
}

impl Endpoint {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(
        addr: SocketAddr,
        registry: SharedRegistry,
    ) -> Result<Endpoint, MetricsError> {
        let listener = TcpListener::bind(addr).await.map_err(|e| MetricsError {
            addr,
            reason: e.to_string(),
        })?;
        Ok(Endpoint { listener, registry })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers scrapes until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) {
        if let Some(addr) = self.local_addr() {
            info!(%addr, "metrics at http://{addr}/metrics");
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((conn, _)) => {
                        tokio::spawn(answer(conn, self.registry.clone()));
                    }
                    Err(e) => {
                        warn!(error = %e, "metrics endpoint: cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

/// Reads one request and answers it; the connection is then closed.
async fn answer(mut conn: TcpStream, registry: SharedRegistry) {
    let head = match timeout(READ_LIMIT, read_head(&mut conn)).await {
        Ok(Some(head)) => head,
        _ => return,
    };
    let (status, content_type, body) = respond(&head, &registry);
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let sent = async {
        conn.write_all(reply.as_bytes()).await?;
        conn.write_all(body.as_bytes()).await?;
        conn.shutdown().await
    };
    if let Err(e) = sent.await {
        debug!(error = %e, "metrics endpoint: cannot answer");
    }
}

/// The request head, up to its blank line; `None` if the peer went away
/// or sent too much.
async fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Status line, content type and body for a request head.
fn respond(head: &str, registry: &Registry) -> (&'static str, &'static str, String) {
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    match (method, path, words.next()) {
        (Some("GET"), Some("/metrics"), Some(v)) if v.starts_with("HTTP/") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => ("200 OK", CONTENT_TYPE, body),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    format!("cannot encode the metrics: {e}\n"),
                ),
            }
        }
        (Some(_), Some(_), Some(v)) if v.starts_with("HTTP/") => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_string(),
        ),
        _ => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "not an HTTP request\n".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn registry() -> Registry {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(3);
        r.register("jetcron_test_things", "Things counted", c);
        r
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let r = registry();
        let (status, ct, body) = respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &r);
        assert_eq!((status, ct), ("200 OK", CONTENT_TYPE));
        assert!(body.contains("jetcron_test_things_total 3\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.0\r\n\r\n", &r).0, "200 OK");
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", &r).0,
            "404 Not Found"
        );
        assert_eq!(respond("GET / HTTP/1.1\r\n\r\n", &r).0, "404 Not Found");
        assert_eq!(respond("hello\r\n\r\n", &r).0, "400 Bad Request");
    }
}
