//! JetStream publishing with a bounded window of outstanding acks: fast
//! enough to store a million job definitions in a minute or so, and never
//! more un-awaited acks than the client copes with (async-nats stops
//! handing out publish permits at 5,000).

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::{Instant, timeout};

/// Acks awaited at most at once.
pub const WINDOW: usize = 2_000;
/// How long one send may take to be handed to the client.
const SEND_LIMIT: Duration = Duration::from_secs(10);

/// One message to store.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl Outgoing {
    pub fn new(subject: String, payload: impl Into<Bytes>) -> Outgoing {
        Outgoing {
            subject,
            headers: None,
            payload: payload.into(),
        }
    }

    pub fn with_headers(mut self, headers: HeaderMap) -> Outgoing {
        self.headers = Some(headers);
        self
    }
}

/// What a publish run achieved.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub sent: usize,
    pub acked: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// From the first send to the last ack.
    pub elapsed: Duration,
}

impl Published {
    fn fail(&mut self, e: impl std::fmt::Display) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    pub fn per_second(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Publishes every message, keeping at most `window` acks outstanding.
/// Failures are counted, not fatal: the caller decides what a shortfall
/// means.
pub async fn publish_all(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = Outgoing>,
    window: usize,
) -> Published {
    let mut out = Published::default();
    let mut inflight = FuturesUnordered::new();
    let start = Instant::now();
    for m in messages {
        while inflight.len() >= window.max(1) {
            settle(&mut inflight, &mut out).await;
        }
        let mut publish = PublishMessage::build().payload(m.payload);
        if let Some(h) = m.headers {
            publish = publish.headers(h);
        }
        match timeout(SEND_LIMIT, js.send_publish(m.subject, publish)).await {
            Ok(Ok(ack)) => {
                out.sent += 1;
                inflight.push(ack.into_future());
            }
            Ok(Err(e)) => out.fail(e),
            Err(_) => out.fail("send timed out"),
        }
    }
    while !inflight.is_empty() {
        settle(&mut inflight, &mut out).await;
    }
    out.elapsed = start.elapsed();
    out
}

async fn settle<F, E>(inflight: &mut FuturesUnordered<F>, out: &mut Published)
where
    F: std::future::Future<Output = Result<jetstream::publish::PublishAck, E>>,
    E: std::fmt::Display,
{
    match inflight.next().await {
        Some(Ok(_)) => out.acked += 1,
        Some(Err(e)) => out.fail(e),
        None => {}
    }
}
