//! How the leader learns that a tracked fire ended.
//!
//! A fire is tracked when its job's `overlap` is not `allow`, its schedule
//! is `@after`, or it has `on_success` children (see `Job::tracked`). Its
//! shard messages say `track`, and the worker that ends such a shard for
//! good (no attempt follows: succeeded, dead, expired, cancelled) also
//! publishes that last result on the ends stream, `<prefix>.ends.<job>`,
//! deduplicated per shard. An untracked job costs nothing here.
//!
//! The leader alone reads the stream, through one durable pull consumer,
//! while it leads ([`EndFeed`]). The engine applies the notices to the job's
//! fire state ([`crate::decide::Ended`]) and acks them only once that state
//! is stored, fenced: a notice whose effect a leader did not store comes
//! back to the next leader after the ack wait. Applying a notice twice
//! changes nothing (a shard ends once per fire), and a notice of no running
//! fire (a trigger's shard, a replaced fire) is acked and dropped.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use jetcron_shared::Names;
use jetcron_shared::setup::Resources;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How long a notice delivered to a leader that stopped waits before it is
/// delivered again.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Notices delivered and not yet acked, at most.
const MAX_ACK_PENDING: i64 = 20_000;
/// Notices handed to the engine and not yet taken.
const QUEUE: usize = 4096;
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The leader's feed of end notices; stops when dropped.
#[derive(Debug)]
pub struct EndFeed {
    pub notices: mpsc::Receiver<jetstream::Message>,
    task: JoinHandle<()>,
}

impl Drop for EndFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndFeed {
    pub fn start(res: &Resources, names: &Names) -> EndFeed {
        let (tx, notices) = mpsc::channel(QUEUE);
        let task = tokio::spawn(pump(res.ends.clone(), names.clone(), tx));
        EndFeed { notices, task }
    }
}

/// The consumer's settings when the leader creates it.
pub fn consumer_config(names: &Names) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names.ends_consumer()),
        description: Some("jetcron leader: end notices of tracked fires".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    }
}

/// Pulls notices into `tx` until the engine drops the feed, opening the
/// consumer again after any failure.
async fn pump(
    stream: jetstream::stream::Stream,
    names: Names,
    tx: mpsc::Sender<jetstream::Message>,
) {
    let mut pause = RETRY_FIRST;
    loop {
        let failed = async {
            let consumer = stream
                .get_or_create_consumer(&names.ends_consumer(), consumer_config(&names))
                .await
                .map_err(|e| format!("cannot open the ends consumer: {e}"))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| format!("cannot pull end notices: {e}"))?;
            debug!("reading end notices");
            while let Some(next) = messages.next().await {
                let message = next.map_err(|e| format!("pulling end notices: {e}"))?;
                if tx.send(message).await.is_err() {
                    return Ok(());
                }
            }
            Err("the end notices stopped".to_string())
        }
        .await;
        match failed {
            Ok(()) => return,
            Err(e) => warn!(error = e, "end notices: retrying"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Acks notices whose effects are stored (or that have none), off the
/// engine's loop. A lost ack only brings a notice back, which changes
/// nothing.
pub fn ack_all(notices: Vec<jetstream::Message>) {
    if notices.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for n in notices {
            if let Err(e) = n.ack().await {
                debug!(error = %e, "end notice not acked; it comes back");
            }
        }
    });
}

/// Drops a notice that cannot be read: delivering it again cannot help.
pub fn refuse(notice: jetstream::Message) {
    tokio::spawn(async move {
        let _ = notice.ack_with(AckKind::Term).await;
    });
}
