//! `GET /api/feed`: the live events and results, as server-sent events.
//!
//! The feed subscribes, on the session's connection, to the subjects the
//! events and results streams store, so a viewer needs no more than the
//! permission to watch them: every job's (`<prefix>.events.>`,
//! `<prefix>.results.>`), or with `?job=ID` that job's only (what a job's
//! page asks for). It carries what is stored from the moment the page
//! opens; history is `job.runs`'s.
//!
//! A busy system stores thousands of events and results a second; a page
//! can show a few. The feed relays at most [`FEED_RATE`] a second and then
//! sends a `dropped` event with how many it left out in that second.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{App, refusal};

/// Longest a result's output is relayed; the page shows only a tail.
const OUTPUT_RELAYED: usize = 4096;
/// Events and results relayed a second, at most.
pub const FEED_RATE: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    job: Option<String>,
}

pub async fn feed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<FeedQuery>,
) -> Response {
    let session = match app.sessions.signed_in(&headers, false) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let (events, results) = match &query.job {
        Some(job) if !jetcron_shared::job::is_valid_id(job) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("job: {}", jetcron_shared::job::not_an_id(job)),
            )
            .into_response();
        }
        Some(job) => (
            format!("{}.events.*.{job}", app.names.prefix()),
            app.names.results_subject(job),
        ),
        None => (app.names.events_all(), app.names.results_all()),
    };
    let client = session.client();
    let subscribed = async {
        let events = client.subscribe(events).await?;
        let results = client.subscribe(results).await?;
        Ok::<_, async_nats::SubscribeError>((events, results))
    };
    let (events, results) = match subscribed.await {
        Ok(s) => s,
        Err(e) => {
            return refusal(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                format!("cannot subscribe to the events and results: {e}"),
            )
            .into_response();
        }
    };
    let merged = futures::stream::select(
        events.map(|m| ("event", m.payload)),
        results.map(|m| ("result", m.payload)),
    );
    let (tx, rx) = mpsc::channel(FEED_RATE as usize);
    // The subscriptions end with this task, which ends when the page goes.
    tokio::spawn(relay(merged, tx, app.stopping.clone()));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Hands at most [`FEED_RATE`] messages a second to the page, and counts
/// the rest.
async fn relay(
    mut merged: impl futures::Stream<Item = (&'static str, Bytes)> + Unpin,
    tx: mpsc::Sender<Event>,
    stopping: CancellationToken,
) {
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let (mut sent, mut dropped) = (0u32, 0u64);
    loop {
        tokio::select! {
            next = merged.next() => {
                let Some((kind, payload)) = next else { return };
                if sent >= FEED_RATE {
                    dropped += 1;
                    continue;
                }
                let Some(event) = to_event(kind, &payload) else { continue };
                match tx.try_send(event) {
                    Ok(()) => sent += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            _ = second.tick() => {
                if dropped > 0
                    && tx
                        .try_send(Event::default().event("dropped").data(dropped.to_string()))
                        .is_ok()
                {
                    dropped = 0;
                }
                sent = 0;
            }
            _ = tx.closed() => return,
            // The page's stream ends with the sender, and its connection
            // with it.
            _ = stopping.cancelled() => return,
        }
    }
}

fn to_event(kind: &'static str, payload: &[u8]) -> Option<Event> {
    let data = match kind {
        "result" => shortened(payload)?,
        _ => String::from_utf8(payload.to_vec()).ok()?,
    };
    Some(Event::default().event(kind).data(data))
}

/// A result with its output cut to its last [`OUTPUT_RELAYED`] bytes.
fn shortened(payload: &[u8]) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if let Some(out) = v["output"].as_str()
        && out.len() > OUTPUT_RELAYED
    {
        v["output"] = jetcron_shared::runs::tail(out, OUTPUT_RELAYED).into();
    }
    serde_json::to_string(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_relay_hands_over_a_bounded_number_a_second_and_counts_the_rest() {
        let n = FEED_RATE as usize + 30;
        let items: Vec<(&'static str, Bytes)> = (0..n)
            .map(|i| ("event", Bytes::from(format!("{{\"i\":{i}}}"))))
            .collect();
        let (tx, mut rx) = mpsc::channel(FEED_RATE as usize);
        // The source stays open after its items, as a subscription does.
        let source = futures::stream::iter(items).chain(futures::stream::pending());
        let stopping = CancellationToken::new();
        let task = tokio::spawn(relay(Box::pin(source), tx, stopping.clone()));
        let mut got = 0;
        while got < FEED_RATE {
            let _relayed = rx.recv().await.unwrap();
            got += 1;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let dropped = rx.recv().await.unwrap();
        let text = format!("{dropped:?}");
        assert!(text.contains("dropped") && text.contains("30"), "{text}");
        drop(rx);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(task.is_finished(), "the relay ends with the page");
    }

    #[tokio::test(start_paused = true)]
    async fn the_relay_ends_when_the_scheduler_stops() {
        let (tx, mut rx) = mpsc::channel(FEED_RATE as usize);
        let stopping = CancellationToken::new();
        let source = futures::stream::pending::<(&'static str, Bytes)>();
        let task = tokio::spawn(relay(Box::pin(source), tx, stopping.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!task.is_finished(), "a quiet feed stays open");
        stopping.cancel();
        assert!(rx.recv().await.is_none(), "the page's stream ends");
        assert!(task.await.is_ok());
    }

    #[test]
    fn a_long_output_is_cut_to_its_tail() {
        let out = "x".repeat(10_000) + "end";
        let r = serde_json::json!({"job": "j", "output": out}).to_string();
        let short: serde_json::Value =
            serde_json::from_str(&shortened(r.as_bytes()).unwrap()).unwrap();
        let o = short["output"].as_str().unwrap();
        assert_eq!(o.len(), OUTPUT_RELAYED);
        assert!(o.ends_with("end"));
    }
}
