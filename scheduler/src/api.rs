//! The control API: NATS micro service `jetcron` with endpoints under
//! `jetcron.api.`. Every replica serves it (one queue group), leader or not;
//! it reads and writes the jobs bucket, and the engines pick changes up from
//! their watch.
//!
//! A request is validated before anything is written; a bad one gets
//! `{"ok": false, "error": {...}}` plus the micro error headers and changes
//! nothing.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::service::{Request, ServiceExt};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use jetcron_shared::api::{
    ApiError, DeleteReply, ErrorCode, GetReply, IdRequest, JobSummary, ListReply, PutReply,
    encode_err, encode_ok, endpoint,
};
use jetcron_shared::wire::{Event, EventBody};
use jetcron_shared::{Job, JobSpec, Names};

use crate::events::Events;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

#[derive(Debug, Error)]
#[error("cannot start the control API service: {0}")]
pub struct ServiceError(String);

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Put,
    Get,
    Delete,
    List,
}

/// Starts the service; it answers until `shutdown`.
pub async fn spawn(
    client: async_nats::Client,
    names: &Names,
    jobs: kv::Store,
    events: Events,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServiceError> {
    let service = client
        .service_builder()
        .description("jetcron control API: job definitions")
        .start(names.service_name(), env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ServiceError(e.to_string()))?;
    let group = service.group(names.api_prefix());
    let mut streams = Vec::new();
    for (ep, name) in [
        (Endpoint::Put, endpoint::JOB_PUT),
        (Endpoint::Get, endpoint::JOB_GET),
        (Endpoint::Delete, endpoint::JOB_DELETE),
        (Endpoint::List, endpoint::JOB_LIST),
    ] {
        let e = group
            .endpoint(name)
            .await
            .map_err(|e| ServiceError(e.to_string()))?;
        streams.push(e.map(move |r| (ep, r)).boxed());
    }
    let mut requests = stream::select_all(streams);
    let jobs = Arc::new(jobs);
    Ok(tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                r = requests.next() => r,
                _ = shutdown.cancelled() => break,
            };
            let Some((ep, req)) = next else { break };
            let jobs = jobs.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let reply = match ep {
                    Endpoint::Put => put(&jobs, &events, &req.message.payload).await,
                    Endpoint::Get => get(&jobs, &req.message.payload).await,
                    Endpoint::Delete => delete(&jobs, &req.message.payload).await,
                    Endpoint::List => list(&jobs).await,
                };
                respond(req, reply).await;
            });
        }
        if let Err(e) = service.stop().await {
            debug!(error = %e, "service stop");
        }
    }))
}

async fn respond(req: Request, reply: Result<Bytes, ApiError>) {
    let sent = match reply {
        Ok(body) => req.respond(Ok(body)).await,
        Err(err) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::service::NATS_SERVICE_ERROR,
                err.message.as_str(),
            );
            headers.insert(
                async_nats::service::NATS_SERVICE_ERROR_CODE,
                err.code.status().to_string().as_str(),
            );
            req.respond_with_headers(Ok(encode_err(&err)), headers)
                .await
        }
    };
    if let Err(e) = sent {
        warn!(error = %e, "cannot send API reply");
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("jobs bucket: {e}"))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("job '{id}' does not exist"))
}

async fn put(jobs: &kv::Store, events: &Events, body: &[u8]) -> Result<Bytes, ApiError> {
    let job = match Job::decode(body, None) {
        Ok(job) => job,
        Err(e) => {
            let id = claimed_id(body);
            warn!(job = %id, error = %e, "refused an invalid job definition");
            let event = Event::now(EventBody::Invalid {
                job: id,
                revision: 0,
                error: e.to_string(),
            });
            events.publish(&event, None).await;
            return Err(ApiError::new(ErrorCode::InvalidJob, e.to_string()));
        }
    };
    let spec = job.spec;
    let previous = jobs.entry(spec.id.as_str()).await.map_err(unavailable)?;
    let created = previous.is_none_or(|e| e.operation != Operation::Put);
    let revision = jobs
        .put(spec.id.as_str(), Bytes::from(spec.encode()))
        .await
        .map_err(unavailable)?;
    Ok(encode_ok(&PutReply {
        job: spec,
        revision,
        created,
    }))
}

/// The id a refused definition claims, if it is usable in a subject;
/// `_unknown` otherwise.
fn claimed_id(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .filter(|id| valid_id(id))
        .unwrap_or_else(|| "_unknown".to_string())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses `{"id": "..."}` and checks the id is a possible job id.
fn id_request(body: &[u8]) -> Result<String, ApiError> {
    let bad = |why: String| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("body must be {{\"id\": \"<job id>\"}}: {why}"),
        )
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the body is empty".into()));
    }
    let req: IdRequest = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !valid_id(&req.id) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "id: '{}' must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'",
                req.id
            ),
        ));
    }
    Ok(req.id)
}

async fn get(jobs: &kv::Store, body: &[u8]) -> Result<Bytes, ApiError> {
    let id = id_request(body)?;
    let entry = jobs.entry(id.as_str()).await.map_err(unavailable)?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
        return Err(not_found(&id));
    };
    let reply = match Job::decode(&entry.value, Some(&id)) {
        Ok(job) => GetReply {
            id,
            revision: entry.revision,
            job: Some(job.spec),
            invalid: None,
            raw: None,
        },
        Err(e) => GetReply {
            id,
            revision: entry.revision,
            job: None,
            invalid: Some(e.to_string()),
            raw: Some(
                String::from_utf8_lossy(&entry.value)
                    .chars()
                    .take(4096)
                    .collect(),
            ),
        },
    };
    Ok(encode_ok(&reply))
}

async fn delete(jobs: &kv::Store, body: &[u8]) -> Result<Bytes, ApiError> {
    let id = id_request(body)?;
    let entry = jobs.entry(id.as_str()).await.map_err(unavailable)?;
    if !entry.is_some_and(|e| e.operation == Operation::Put) {
        return Err(not_found(&id));
    }
    jobs.delete(id.as_str()).await.map_err(unavailable)?;
    Ok(encode_ok(&DeleteReply { id }))
}

async fn list(jobs: &kv::Store) -> Result<Bytes, ApiError> {
    let keys: Vec<String> = jobs
        .keys()
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)?;
    let mut summaries: Vec<JobSummary> = stream::iter(keys)
        .map(|key| async move {
            let entry = jobs.entry(key.as_str()).await.ok().flatten()?;
            (entry.operation == Operation::Put)
                .then(|| summarize(&key, entry.revision, &entry.value))
        })
        .buffer_unordered(64)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    summaries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(encode_ok(&ListReply { jobs: summaries }))
}

fn summarize(id: &str, revision: u64, value: &[u8]) -> JobSummary {
    match Job::decode(value, Some(id)) {
        Ok(job) => {
            let JobSpec {
                schedule,
                timezone,
                group,
                ..
            } = &job.spec;
            JobSummary {
                id: id.to_string(),
                revision,
                schedule: Some(schedule.clone()),
                timezone: Some(timezone.clone()),
                group: Some(group.clone()),
                shards: Some(job.shard_count()),
                paused: job.paused(),
                invalid: None,
            }
        }
        Err(e) => JobSummary {
            id: id.to_string(),
            revision,
            schedule: None,
            timezone: None,
            group: None,
            shards: None,
            paused: false,
            invalid: Some(e.to_string()),
        },
    }
}
