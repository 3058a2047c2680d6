//! Webhooks: events posted to HTTP endpoints (`--webhook URL`), for
//! alerting without more infrastructure.
//!
//! Each sink reads the events stream through a durable consumer of its own,
//! `jetcron-webhook-<hash>` (the hash of its URL, kinds and jobs), which
//! every scheduler replica pulls from: the server hands each event to one
//! replica, so an event is posted once however many schedulers run. The
//! consumer starts with the events stored after it was first created.
//!
//! An event is posted as the JSON body stored in the stream, with the
//! headers `Content-Type: application/json`, `Jetcron-Event-Kind` and
//! `Jetcron-Event-Id` (`<stream sequence>`: the same on a retry, so a
//! receiver can drop a repeat). A 2xx answer acks it. Anything else, or no
//! answer within [`POST_LIMIT`], and the event is retried after
//! [`RETRY_DELAYS`], at most [`MAX_ATTEMPTS`] times. Events are pulled a few
//! at a time with requests that expire within a second; a stopping replica
//! posts what it pulled before it goes. One that dies mid-post leaves its
//! events to another after [`ACK_WAIT`]. Redirects are not followed.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use jetcron_shared::Names;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Event kinds posted when a sink names none.
pub const DEFAULT_KINDS: [&str; 5] = ["dead", "misfired", "expired", "invalid", "leader"];
/// Longest one post may take.
pub const POST_LIMIT: Duration = Duration::from_secs(10);
/// How long an event taken by a replica waits for it before going to
/// another: a post's limit and some slack.
pub const ACK_WAIT: Duration = Duration::from_secs(15);
/// Events asked for at a time, and how long one request for them waits at
/// the server. Short: a replica that stops leaves at most that many events
/// for the ack wait, and only those delivered within that second.
const BATCH: usize = 16;
const BATCH_EXPIRES: Duration = Duration::from_secs(1);
/// How long a stopping replica goes on posting the batch it pulled.
const STOP_SLACK: Duration = Duration::from_secs(3);
/// Posts of one event, the first included.
pub const MAX_ATTEMPTS: i64 = 8;
/// Pause before attempt 2, 3, ...; the last repeats.
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];

/// Where events go, and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub url: String,
    /// Event kinds posted.
    pub kinds: Vec<String>,
    /// Only events of these jobs (and then no `leader` events); empty: all.
    pub jobs: Vec<String>,
}

impl Sink {
    /// The sink's durable consumer: the same name on every replica.
    pub fn consumer_name(&self) -> String {
        // FNV-1a: stable across processes and versions, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let text = format!(
            "{}|{}|{}",
            self.url,
            self.kinds.join(","),
            self.jobs.join(",")
        );
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("jetcron-webhook-{h:016x}")
    }

    fn filters(&self, names: &Names) -> Vec<String> {
        let mut filters = Vec::new();
        for kind in &self.kinds {
            if kind == "leader" {
                if self.jobs.is_empty() {
                    filters.push(names.event_subject("leader", None));
                }
            } else if self.jobs.is_empty() {
                filters.push(format!("{}.events.{kind}.>", names.prefix()));
            } else {
                for job in &self.jobs {
                    filters.push(names.event_subject(kind, Some(job)));
                }
            }
        }
        filters
    }
}

/// Checks `--webhook-kinds`: known kinds only.
pub fn parse_kinds(kinds: &[String]) -> Result<Vec<String>, String> {
    const KNOWN: [&str; 11] = [
        "fired",
        "skipped",
        "misfired",
        "dead",
        "expired",
        "replaced",
        "paused",
        "resumed",
        "triggered",
        "invalid",
        "leader",
    ];
    if kinds.is_empty() {
        return Ok(DEFAULT_KINDS.map(str::to_string).to_vec());
    }
    for k in kinds {
        if !KNOWN.contains(&k.as_str()) {
            return Err(format!(
                "webhook_kinds: '{k}' is not an event kind ({})",
                KNOWN.join(", ")
            ));
        }
    }
    Ok(kinds.to_vec())
}

/// Posts events to every sink until `shutdown`.
pub async fn run(events: Stream, names: Names, sinks: Vec<Sink>, shutdown: CancellationToken) {
    if sinks.is_empty() {
        return;
    }
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(POST_LIMIT)
        .user_agent(concat!("jetcron-scheduler/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot set up the webhook client; no webhooks will be posted");
            return;
        }
    };
    let loops = sinks.into_iter().map(|sink| {
        deliver(
            events.clone(),
            names.clone(),
            http.clone(),
            sink,
            shutdown.clone(),
        )
    });
    futures::future::join_all(loops).await;
}

/// One sink's loop: opens its consumer (again after trouble) and posts.
async fn deliver(
    events: Stream,
    names: Names,
    http: reqwest::Client,
    sink: Sink,
    shutdown: CancellationToken,
) {
    let name = sink.consumer_name();
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("jetcron webhook to {}", sink.url)),
        filter_subjects: sink.filters(&names),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: MAX_ATTEMPTS,
        ..Default::default()
    };
    info!(url = %sink.url, kinds = ?sink.kinds, jobs = ?sink.jobs, consumer = %name, "posting events");
    loop {
        let pass = async {
            let consumer: consumer::PullConsumer = events
                .get_or_create_consumer(&name, config.clone())
                .await
                .map_err(|e| e.to_string())?;
            while !shutdown.is_cancelled() {
                let mut batch = consumer
                    .batch()
                    .max_messages(BATCH)
                    .expires(BATCH_EXPIRES)
                    .messages()
                    .await
                    .map_err(|e| e.to_string())?;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| e.to_string())?;
                    post(&http, &sink, &m).await;
                }
            }
            Ok::<(), String>(())
        };
        // A batch under way is finished (posted, settled) at shutdown, for
        // a while: an event dropped here would wait out the ack wait.
        let stopped = async {
            shutdown.cancelled().await;
            tokio::time::sleep(STOP_SLACK).await;
        };
        tokio::select! {
            ended = pass => {
                if let Err(e) = ended {
                    warn!(url = %sink.url, error = %e, "webhook consumer failed; retrying");
                }
            }
            _ = stopped => return,
        }
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Posts one event and settles it.
async fn post(http: &reqwest::Client, sink: &Sink, m: &jetstream::Message) {
    let Ok(info) = m.info() else {
        return;
    };
    let (seq, attempt) = (info.stream_sequence, info.delivered);
    let kind = m.subject.split('.').nth(2).unwrap_or_default().to_string();
    let sent = http
        .post(&sink.url)
        .header("Content-Type", "application/json")
        .header("Jetcron-Event-Kind", &kind)
        .header("Jetcron-Event-Id", seq.to_string())
        .body(m.payload.to_vec())
        .send()
        .await;
    let failure = match sent {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("status {}", r.status())),
        Err(e) => Some(e.to_string()),
    };
    let settle = match &failure {
        None => {
            debug!(url = %sink.url, seq, kind, "event posted");
            AckKind::Ack
        }
        Some(why) if attempt >= MAX_ATTEMPTS => {
            error!(url = %sink.url, seq, kind, attempt, error = %why, "webhook gave up on an event");
            AckKind::Term
        }
        Some(why) => {
            let i = usize::try_from(attempt - 1).unwrap_or(0);
            let delay = RETRY_DELAYS[i.min(RETRY_DELAYS.len() - 1)];
            warn!(url = %sink.url, seq, kind, attempt, error = %why, retry_in = ?delay, "webhook post failed");
            AckKind::Nak(Some(delay))
        }
    };
    if let Err(e) = m.ack_with(settle).await {
        warn!(error = %e, "cannot settle a webhook event; it comes back after the ack wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(kinds: &[&str], jobs: &[&str]) -> Sink {
        Sink {
            url: "http://127.0.0.1:9/hook".into(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn filters_follow_kinds_and_jobs() {
        let n = Names::default();
        assert_eq!(
            sink(&["dead", "leader"], &[]).filters(&n),
            ["jetcron.events.dead.>", "jetcron.events.leader"]
        );
        assert_eq!(
            sink(&["dead", "leader", "expired"], &["a", "b"]).filters(&n),
            [
                "jetcron.events.dead.a",
                "jetcron.events.dead.b",
                "jetcron.events.expired.a",
                "jetcron.events.expired.b"
            ]
        );
    }

    #[test]
    fn a_sink_has_one_consumer_name_everywhere() {
        let a = sink(&["dead"], &[]);
        assert_eq!(a.consumer_name(), sink(&["dead"], &[]).consumer_name());
        assert_ne!(a.consumer_name(), sink(&["dead"], &["x"]).consumer_name());
        assert!(a.consumer_name().starts_with("jetcron-webhook-"));
    }

    #[test]
    fn kinds_default_and_unknown_ones_are_refused() {
        assert_eq!(parse_kinds(&[]).unwrap(), DEFAULT_KINDS);
        let e = parse_kinds(&["dead".into(), "explode".into()]).unwrap_err();
        assert!(
            e.starts_with("webhook_kinds: 'explode' is not an event kind"),
            "{e}"
        );
    }
}
