//! Publishes events to the events stream. Events are advisory: a failure to
//! publish one is logged and never stops a fire.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use jetcron_shared::Names;
use jetcron_shared::wire::Event;
use tracing::{debug, warn};

#[derive(Debug, Clone)]
pub struct Events {
    js: jetstream::Context,
    names: Names,
}

impl Events {
    pub fn new(js: jetstream::Context, names: Names) -> Events {
        Events { js, names }
    }

    /// Sends an event and returns the ack to await (or drop). `msg_id`
    /// deduplicates events that several replicas report alike.
    pub async fn send(&self, event: &Event, msg_id: Option<String>) -> Option<PublishAckFuture> {
        let subject = self.names.event_subject(event.kind(), event.job());
        let mut headers = HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        match self
            .js
            .publish_with_headers(subject, headers, event.encode().into())
            .await
        {
            Ok(ack) => Some(ack),
            Err(e) => {
                warn!(kind = event.kind(), error = %e, "cannot publish event");
                None
            }
        }
    }

    /// Sends an event and waits (bounded) for the stream to store it.
    pub async fn publish(&self, event: &Event, msg_id: Option<String>) {
        if let Some(ack) = self.send(event, msg_id).await {
            match tokio::time::timeout(Duration::from_secs(5), ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(kind = event.kind(), error = %e, "event not stored"),
                Err(_) => debug!(kind = event.kind(), "event ack timed out"),
            }
        }
    }
}
