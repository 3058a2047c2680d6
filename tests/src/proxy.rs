//! A TCP proxy between one client and a nats-server that a test can stall.
//!
//! [`Proxy::pause`] stops forwarding in both directions without closing
//! anything: the client still believes it is connected, and whatever it
//! sends (publishes, acks, requests) waits in the socket buffers. After
//! [`Proxy::resume`] all of it reaches the server at once, exactly as a
//! client's buffered writes do when a stalled link or a partition heals.
//! [`Proxy::cut`] closes every connection, as a broken link does.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct Proxy {
    port: u16,
    paused: Arc<watch::Sender<bool>>,
    generation: Arc<watch::Sender<u64>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a random loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let paused = Arc::new(watch::channel(false).0);
        let generation = Arc::new(watch::channel(0u64).0);
        let upstream = upstream.to_string();
        let (p, g) = (paused.clone(), generation.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let born = *g.borrow();
                tokio::spawn(pipe(cr, sw, p.subscribe(), g.subscribe(), born));
                tokio::spawn(pipe(sr, cw, p.subscribe(), g.subscribe(), born));
            }
        });
        Proxy {
            port,
            paused,
            generation,
            accept,
        }
    }

    /// `nats://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding; nothing is closed or lost.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forwards again, first everything held back.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Closes every connection made so far; new ones are accepted.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to` while not paused, until either side closes or the
/// connection's generation is cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !hold(&mut paused, &mut generation, born).await {
            return;
        }
        let n = tokio::select! {
            biased;
            _ = paused.changed() => continue,
            _ = generation.changed() => {
                if *generation.borrow() != born { return }
                continue;
            }
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        // Bytes read as a pause came are held back too: a paused link
        // forwards nothing, however the wake-ups were ordered.
        if !hold(&mut paused, &mut generation, born).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits while paused (the bytes stay in the kernel's buffers); false when
/// the connection's generation was cut meanwhile.
async fn hold(
    paused: &mut watch::Receiver<bool>,
    generation: &mut watch::Receiver<u64>,
    born: u64,
) -> bool {
    while *paused.borrow_and_update() {
        tokio::select! {
            r = paused.changed() => if r.is_err() { return false },
            _ = generation.changed() => {}
        }
        if *generation.borrow() != born {
            return false;
        }
    }
    true
}
