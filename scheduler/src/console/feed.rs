//! `GET /api/feed`: the live events and results, as server-sent events.
//!
//! The feed subscribes, on the session's connection, to the subjects the
//! events and results streams store (`<prefix>.events.>`,
//! `<prefix>.results.>`), so a viewer needs no more than the permission to
//! watch them. It carries what is stored from the moment the page opens;
//! history is `job.runs`'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::{App, refusal};

/// Longest a result's output is relayed; the page shows only a tail.
const OUTPUT_RELAYED: usize = 4096;

pub async fn feed(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let session = match app.sessions.signed_in(&headers, false) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let client = session.client();
    let subscribed = async {
        let events = client.subscribe(app.names.events_all()).await?;
        let results = client.subscribe(app.names.results_all()).await?;
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
    let events = events.map(|m| ("event", m.payload));
    let results = results.map(|m| ("result", m.payload));
    let stream =
        futures::stream::select(events, results).filter_map(|(kind, payload)| async move {
            let data = match kind {
                "result" => shortened(&payload)?,
                _ => String::from_utf8(payload.to_vec()).ok()?,
            };
            Some(Ok::<_, Infallible>(Event::default().event(kind).data(data)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
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
