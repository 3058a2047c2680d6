//! A NATS micro service (ADR-32, "NATS Service API") on plain subscriptions.
//!
//! async-nats has a `service` module, but it counts a request as an error
//! only when the reply has an empty body. Our error replies carry a JSON body
//! (`{"ok": false, "error": {...}}`), so `nats micro stats` would show no
//! errors at all. Here every reply goes through [`Responder::respond`], which
//! counts it as an error whenever it is one.
//!
//! - Each endpoint subscribes to its subject in queue group `q`, so the
//!   replicas of one deployment share the requests.
//! - Each replica (one id each, a nuid) answers discovery on `$SRV.<VERB>`,
//!   `$SRV.<VERB>.<name>` and `$SRV.<VERB>.<name>.<id>` for the verbs `PING`,
//!   `INFO` and `STATS`, without a queue group: `nats micro ls` sees every
//!   replica, `nats micro stats jetcron` sums them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::{self, BoxStream, SelectAll};
use serde::Serialize;
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Queue group of every endpoint (the ADR's default).
pub const QUEUE_GROUP: &str = "q";
/// Header carrying an error reply's description.
pub const ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying an error reply's status code.
pub const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

const PING_TYPE: &str = "io.nats.micro.v1.ping_response";
const INFO_TYPE: &str = "io.nats.micro.v1.info_response";
const STATS_TYPE: &str = "io.nats.micro.v1.stats_response";
const VERBS: [&str; 3] = ["PING", "INFO", "STATS"];

#[derive(Debug, Error)]
pub enum MicroError {
    #[error("service name '{0}' must be 1 or more of A-Z, a-z, 0-9, '-' or '_'")]
    Name(String),
    #[error("endpoint name '{0}' must be 1 or more of A-Z, a-z, 0-9, '-' or '_'")]
    EndpointName(String),
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
}

/// What the service says about itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// Service name, shared by every replica (`jetcron`).
    pub name: String,
    /// SemVer of the service.
    pub version: String,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
}

/// One endpoint: `key` comes back with each of its requests.
#[derive(Debug, Clone)]
pub struct EndpointSpec<E> {
    pub key: E,
    /// `[A-Za-z0-9_-]+`, as the ADR requires.
    pub name: String,
    pub subject: String,
}

/// A request to one endpoint; answer it with [`Responder::respond`].
#[derive(Debug)]
pub struct Request<E> {
    pub endpoint: E,
    pub message: Message,
    index: usize,
    received: Instant,
}

/// A reply: the body, and when it is an error, its description and code.
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: Bytes,
    pub error: Option<ReplyError>,
}

#[derive(Debug, Clone)]
pub struct ReplyError {
    pub code: u16,
    pub description: String,
}

/// Incoming requests of every endpoint.
pub type Requests<E> = SelectAll<BoxStream<'static, Request<E>>>;

#[derive(Debug, Default)]
struct Stats {
    requests: u64,
    errors: u64,
    last_error: String,
    processing: Duration,
}

#[derive(Debug)]
struct EndpointState {
    name: String,
    subject: String,
    stats: Mutex<Stats>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    id: String,
    started: DateTime<Utc>,
    endpoints: Vec<EndpointState>,
}

/// Answers requests and keeps the endpoint statistics.
#[derive(Debug, Clone)]
pub struct Responder {
    client: Client,
    shared: Arc<Shared>,
}

/// A running service. Dropping it stops the discovery answers; dropping the
/// [`Requests`] unsubscribes the endpoints.
#[derive(Debug)]
pub struct Service {
    responder: Responder,
    discovery: Option<JoinHandle<()>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Service {
    /// Subscribes every endpoint and the discovery subjects.
    pub async fn start<E: Copy + Send + 'static>(
        client: Client,
        config: Config,
        endpoints: Vec<EndpointSpec<E>>,
    ) -> Result<(Service, Requests<E>), MicroError> {
        if !valid_name(&config.name) {
            return Err(MicroError::Name(config.name));
        }
        if let Some(bad) = endpoints.iter().find(|e| !valid_name(&e.name)) {
            return Err(MicroError::EndpointName(bad.name.clone()));
        }
        let shared = Arc::new(Shared {
            id: nuid::next().to_string(),
            started: Utc::now(),
            endpoints: endpoints
                .iter()
                .map(|e| EndpointState {
                    name: e.name.clone(),
                    subject: e.subject.clone(),
                    stats: Mutex::new(Stats::default()),
                })
                .collect(),
            config,
        });
        let mut requests: Requests<E> = stream::select_all(Vec::new());
        for (index, spec) in endpoints.into_iter().enumerate() {
            let sub = client
                .queue_subscribe(spec.subject.clone(), QUEUE_GROUP.to_string())
                .await
                .map_err(|e| MicroError::Subscribe {
                    subject: spec.subject.clone(),
                    reason: e.to_string(),
                })?;
            let key = spec.key;
            requests.push(
                sub.map(move |message| Request {
                    endpoint: key,
                    message,
                    index,
                    received: Instant::now(),
                })
                .boxed(),
            );
        }
        let mut verbs = Vec::new();
        for verb in VERBS {
            for subject in verb_subjects(verb, &shared.config.name, &shared.id) {
                let sub =
                    client
                        .subscribe(subject.clone())
                        .await
                        .map_err(|e| MicroError::Subscribe {
                            subject: subject.clone(),
                            reason: e.to_string(),
                        })?;
                verbs.push(sub.map(move |m| (verb, m)).boxed());
            }
        }
        // Subscribed on the server before anyone is told the service is up.
        if let Err(e) = client.flush().await {
            debug!(error = %e, "flush after subscribing");
        }
        let responder = Responder { client, shared };
        let discovery = tokio::spawn(answer_discovery(
            responder.clone(),
            stream::select_all(verbs),
        ));
        Ok((
            Service {
                responder,
                discovery: Some(discovery),
            },
            requests,
        ))
    }

    pub fn responder(&self) -> Responder {
        self.responder.clone()
    }

    /// This replica's service id.
    pub fn id(&self) -> &str {
        &self.responder.shared.id
    }

    /// Stops answering discovery requests.
    pub async fn stop(mut self) {
        if let Some(task) = self.discovery.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(task) = self.discovery.take() {
            task.abort();
        }
    }
}

/// `$SRV.<verb>`, `$SRV.<verb>.<name>`, `$SRV.<verb>.<name>.<id>`.
fn verb_subjects(verb: &str, name: &str, id: &str) -> [String; 3] {
    [
        format!("$SRV.{verb}"),
        format!("$SRV.{verb}.{name}"),
        format!("$SRV.{verb}.{name}.{id}"),
    ]
}

async fn answer_discovery(
    responder: Responder,
    mut verbs: SelectAll<BoxStream<'static, (&'static str, Message)>>,
) {
    while let Some((verb, msg)) = verbs.next().await {
        let Some(reply) = msg.reply else { continue };
        let body = match verb {
            "PING" => responder.ping(),
            "INFO" => responder.info(),
            _ => responder.stats(),
        };
        if let Err(e) = responder.client.publish(reply, body).await {
            debug!(error = %e, verb, "cannot answer a discovery request");
        }
    }
}

#[derive(Serialize)]
struct Ping<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Info<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a BTreeMap<String, String>,
    description: &'a str,
    endpoints: Vec<EndpointInfo<'a>>,
}

#[derive(Serialize)]
struct EndpointInfo<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'static str,
    metadata: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct StatsResponse<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a BTreeMap<String, String>,
    /// RFC 3339, UTC.
    started: String,
    endpoints: Vec<EndpointStats<'a>>,
}

#[derive(Serialize)]
struct EndpointStats<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'static str,
    num_requests: u64,
    num_errors: u64,
    last_error: String,
    /// Nanoseconds.
    processing_time: u64,
    /// Nanoseconds.
    average_processing_time: u64,
}

fn json<T: Serialize>(v: &T) -> Bytes {
    // Strings, numbers and string maps only: serialization cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Responder {
    fn ping(&self) -> Bytes {
        let s = &self.shared;
        json(&Ping {
            kind: PING_TYPE,
            name: &s.config.name,
            id: &s.id,
            version: &s.config.version,
            metadata: &s.config.metadata,
        })
    }

    fn info(&self) -> Bytes {
        let s = &self.shared;
        json(&Info {
            kind: INFO_TYPE,
            name: &s.config.name,
            id: &s.id,
            version: &s.config.version,
            metadata: &s.config.metadata,
            description: &s.config.description,
            endpoints: s
                .endpoints
                .iter()
                .map(|e| EndpointInfo {
                    name: &e.name,
                    subject: &e.subject,
                    queue_group: QUEUE_GROUP,
                    metadata: BTreeMap::new(),
                })
                .collect(),
        })
    }

    fn stats(&self) -> Bytes {
        let s = &self.shared;
        json(&StatsResponse {
            kind: STATS_TYPE,
            name: &s.config.name,
            id: &s.id,
            version: &s.config.version,
            metadata: &s.config.metadata,
            started: s
                .started
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| {
                    let st = e.stats.lock().unwrap_or_else(|p| p.into_inner());
                    let avg = match u32::try_from(st.requests) {
                        Ok(0) => Duration::ZERO,
                        Ok(n) => st.processing / n,
                        Err(_) => Duration::from_nanos(nanos(st.processing) / st.requests),
                    };
                    EndpointStats {
                        name: &e.name,
                        subject: &e.subject,
                        queue_group: QUEUE_GROUP,
                        num_requests: st.requests,
                        num_errors: st.errors,
                        last_error: st.last_error.clone(),
                        processing_time: nanos(st.processing),
                        average_processing_time: nanos(avg),
                    }
                })
                .collect(),
        })
    }

    /// Counts the request (as an error when the reply is one), then sends
    /// the reply with the micro error headers for an error. Counted first,
    /// so that whoever has the reply finds it in `$SRV.STATS`.
    pub async fn respond<E>(&self, req: Request<E>, reply: Reply) {
        if let Some(endpoint) = self.shared.endpoints.get(req.index) {
            let mut st = endpoint.stats.lock().unwrap_or_else(|p| p.into_inner());
            st.requests += 1;
            st.processing += req.received.elapsed();
            if let Some(err) = &reply.error {
                st.errors += 1;
                st.last_error = format!("{}:{}", err.code, err.description);
            }
        }
        let Some(to) = req.message.reply.clone() else {
            return;
        };
        let sent = match &reply.error {
            None => self.client.publish(to, reply.body).await,
            Some(err) => {
                let mut headers = HeaderMap::new();
                headers.insert(ERROR_HEADER, err.description.as_str());
                headers.insert(ERROR_CODE_HEADER, err.code.to_string().as_str());
                self.client
                    .publish_with_headers(to, headers, reply.body)
                    .await
            }
        };
        if let Err(e) = sent {
            warn!(error = %e, subject = %req.message.subject, "cannot send a reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_subjects_follow_the_adr() {
        assert_eq!(
            verb_subjects("PING", "jetcron", "abc"),
            [
                "$SRV.PING".to_string(),
                "$SRV.PING.jetcron".to_string(),
                "$SRV.PING.jetcron.abc".to_string()
            ]
        );
    }

    #[test]
    fn names_are_checked_against_the_adr_pattern() {
        assert!(valid_name("job_put"));
        assert!(valid_name("jetcron-team_a"));
        assert!(!valid_name("job.put"));
        assert!(!valid_name(""));
    }
}
