//! The control API: NATS micro service `jetcron` with endpoints under
//! `jetcron.api.`. Every replica serves it (queue group `q`), leader or not;
//! it reads the buckets and streams, writes job definitions (the engines pick
//! changes up from their watch) and dispatches manual fires.
//!
//! - [`micro`] - the micro protocol (endpoints, `$SRV.PING/INFO/STATS`, error
//!   counting).
//! - [`jobs`] - `job.put`, `job.get`, `job.delete`.
//! - [`chain`] - `job.put` refuses an `on_success` cycle.
//! - [`list`] - `job.list`, one page at a time from the job index.
//! - [`pause`] - `job.pause`, `job.resume`.
//! - [`trigger`] - `job.trigger`.
//! - [`next`] - `job.next`.
//! - [`runs`] - `job.runs`.
//! - [`status`] - `status` (job counts from the job index), `workers`.
//! - [`scan`] - reads the latest value of every key under a filter.
//!
//! `job.list` and `status` read the replica's [`JobIndex`], which the
//! catalog keeps current; they first wait (briefly) until it holds every
//! write the jobs bucket had when the request came ([`index_current`]), so
//! that a client reads its own writes whichever replica answers.
//!
//! A request travels: endpoint subscription -> [`spawn`]'s loop -> one task
//! per request -> handler (validates first; a bad request changes nothing) ->
//! [`micro::Responder::respond`] (`{"ok": true, ...}` or `{"ok": false,
//! "error": {...}}` with the micro error headers, counted in the stats).

pub mod micro;

mod chain;
mod jobs;
mod list;
mod next;
mod pause;
// Test-only (never in the binary): its unwraps build generated inputs, and
// a panic there is a failed property.
#[cfg(test)]
mod properties;
mod retry;
mod runs;
mod scan;
mod status;
mod trigger;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures::StreamExt;
use jetcron_shared::api::{ApiError, ErrorCode, encode_err, endpoint};
use jetcron_shared::quote::{clip, clip_quoted_runs};
use jetcron_shared::setup::Resources;
use jetcron_shared::{Job, Names};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::catalog::JobIndex;
use crate::dispatch::Dispatcher;
use crate::events::Events;
use crate::metrics::SchedulerMetrics;
use crate::state::StateStore;

/// Longest a request may take; the client (`nats req`, `jetcron`) waits 5 s.
const HANDLER_LIMIT: Duration = Duration::from_millis(4500);
/// How long in-flight requests may finish after shutdown.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long a read of the job index waits for it to catch up with the
/// bucket once it is loaded (a write a moment old).
const CATCH_UP_LIMIT: Duration = Duration::from_millis(100);
/// How long a read waits for the index's first full read of the bucket
/// (a replica that has just started).
const LOAD_LIMIT: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
#[error("cannot start the control API service: {0}")]
pub struct ServiceError(#[from] micro::MicroError);

/// The endpoints, by their name relative to `<prefix>.api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Put,
    Get,
    Delete,
    List,
    Pause,
    Resume,
    Trigger,
    Next,
    Runs,
    Retry,
    Status,
    Workers,
}

impl Endpoint {
    const ALL: [Endpoint; 12] = [
        Endpoint::Put,
        Endpoint::Get,
        Endpoint::Delete,
        Endpoint::List,
        Endpoint::Pause,
        Endpoint::Resume,
        Endpoint::Trigger,
        Endpoint::Next,
        Endpoint::Runs,
        Endpoint::Retry,
        Endpoint::Status,
        Endpoint::Workers,
    ];

    fn subject_name(self) -> &'static str {
        match self {
            Endpoint::Put => endpoint::JOB_PUT,
            Endpoint::Get => endpoint::JOB_GET,
            Endpoint::Delete => endpoint::JOB_DELETE,
            Endpoint::List => endpoint::JOB_LIST,
            Endpoint::Pause => endpoint::JOB_PAUSE,
            Endpoint::Resume => endpoint::JOB_RESUME,
            Endpoint::Trigger => endpoint::JOB_TRIGGER,
            Endpoint::Next => endpoint::JOB_NEXT,
            Endpoint::Runs => endpoint::JOB_RUNS,
            Endpoint::Retry => endpoint::JOB_RETRY,
            Endpoint::Status => endpoint::STATUS,
            Endpoint::Workers => endpoint::WORKERS,
        }
    }

    /// The micro endpoint name: ADR-32 allows no dots, so `job.put` is
    /// listed as `job_put` (its subject stays `jetcron.api.job.put`).
    fn micro_name(self) -> String {
        self.subject_name().replace('.', "_")
    }
}

/// Everything a handler reads or writes.
#[derive(Debug)]
struct Ctx {
    client: async_nats::Client,
    names: Names,
    jobs: kv::Store,
    state: StateStore,
    lease: kv::Store,
    workers: kv::Store,
    runs: kv::Store,
    work: stream::Stream,
    events: Events,
    /// The events stream, read by `job.runs`.
    events_stream: stream::Stream,
    dispatcher: Dispatcher,
    /// Every job definition, as this replica's catalog read it.
    index: JobIndex,
    /// Last manual instant (unix ms) this replica used, so two triggers of
    /// one job never share an instant (and so a dedup id).
    last_manual_ms: AtomicI64,
    metrics: SchedulerMetrics,
}

/// What the service shares with the rest of the replica.
#[derive(Debug, Clone)]
pub struct Shared {
    pub events: Events,
    /// Every job definition, as this replica's catalog read it.
    pub index: JobIndex,
    pub metrics: SchedulerMetrics,
}

/// Starts the service; it answers until `shutdown`, then lets the requests
/// in flight finish (bounded).
pub async fn spawn(
    client: async_nats::Client,
    names: &Names,
    res: &Resources,
    replica: &str,
    shared: Shared,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServiceError> {
    let Shared {
        events,
        index,
        metrics,
    } = shared;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        names: names.clone(),
        jobs: res.jobs.clone(),
        state: StateStore::new(res.state.clone()),
        lease: res.lease.clone(),
        workers: res.workers.clone(),
        runs: res.runs.clone(),
        work: res.work.clone(),
        events,
        events_stream: res.events.clone(),
        dispatcher: Dispatcher::new(res.js.clone(), names.clone()),
        index,
        last_manual_ms: AtomicI64::new(0),
        metrics,
    });
    let specs = Endpoint::ALL
        .iter()
        .map(|&ep| micro::EndpointSpec {
            key: ep,
            name: ep.micro_name(),
            subject: names.api_subject(ep.subject_name()),
        })
        .collect();
    let config = micro::Config {
        name: names.service_name(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        description: "jetcron control API: job definitions, pause, trigger, runs, status"
            .to_string(),
        metadata: BTreeMap::from([
            ("prefix".to_string(), names.prefix().to_string()),
            ("replica".to_string(), replica.to_string()),
        ]),
    };
    let (service, mut requests) = micro::Service::start(client, config, specs).await?;
    debug!(service_id = service.id(), "control API up");
    let responder = service.responder();
    Ok(tokio::spawn(async move {
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                req = requests.next() => {
                    let Some(req) = req else { break };
                    let ctx = ctx.clone();
                    let responder = responder.clone();
                    running.spawn(async move {
                        let reply = handle(&ctx, req.endpoint, &req.message.payload).await;
                        responder.respond(req, to_reply(reply)).await;
                    });
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Unsubscribe first so that other replicas take the new requests.
        drop(requests);
        service.stop().await;
        let drained = tokio::time::timeout(DRAIN_LIMIT, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("API requests still running at shutdown were abandoned");
        }
    }))
}

async fn handle(ctx: &Ctx, ep: Endpoint, body: &[u8]) -> Result<Bytes, ApiError> {
    let work = async {
        match ep {
            Endpoint::Put => jobs::put(ctx, body).await,
            Endpoint::Get => jobs::get(ctx, body).await,
            Endpoint::Delete => jobs::delete(ctx, body).await,
            Endpoint::List => list::list(ctx, body).await,
            Endpoint::Pause => pause::pause(ctx, body).await,
            Endpoint::Resume => pause::resume(ctx, body).await,
            Endpoint::Trigger => trigger::trigger(ctx, body).await,
            Endpoint::Next => next::next(ctx, body).await,
            Endpoint::Runs => runs::runs(ctx, body).await,
            Endpoint::Retry => retry::retry(ctx, body).await,
            Endpoint::Status => status::status(ctx, body).await,
            Endpoint::Workers => status::workers(ctx, body).await,
        }
    };
    match tokio::time::timeout(HANDLER_LIMIT, work).await {
        Ok(reply) => reply,
        Err(_) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "{} did not finish within {HANDLER_LIMIT:?}; NATS may be slow or unreachable",
                ep.subject_name()
            ),
        )),
    }
}

fn to_reply(reply: Result<Bytes, ApiError>) -> micro::Reply {
    match reply {
        Ok(body) => micro::Reply { body, error: None },
        Err(err) => micro::Reply {
            body: encode_err(&err),
            error: Some(micro::ReplyError {
                code: err.code.status(),
                description: err.message,
            }),
        },
    }
}

// ---- errors shared by the handlers ----

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("{what}: {e}"))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("job '{id}' does not exist"))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

// ---- request bodies ----

/// `{"id": "<job id>"}`
const ID_SHAPE: &str = r#"{"id": "<job id>"}"#;

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// Decodes a request body. Errors say which field is wrong and what the
/// body should look like (`shape`); they quote at most 80 characters of any
/// input ([`quote`]).
fn parse<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    let bad = |why: String| bad_request(format!("body must be {shape}: {why}"));
    if is_blank(body) {
        return Err(bad("the body is empty".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("invalid JSON: {}", strip_position(&e))))?;
    if !value.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        match field_of(&path, &inner) {
            Some((field, reason)) => {
                bad_request(format!("{field}: {reason} (body must be {shape})"))
            }
            None => bad(clip_quoted_runs(&inner)),
        }
    })
}

/// The field a decode error is about, and why.
fn field_of(path: &str, message: &str) -> Option<(String, String)> {
    match path {
        // A key written `""`.
        "" => return Some(("\"\"".to_string(), clip_quoted_runs(message))),
        "." => {}
        _ => return Some((clip(path), clip_quoted_runs(message))),
    }
    // `` missing field `name` `` and `` unknown field `name`, expected ... ``;
    // the name may hold a backtick.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
        .map(|name| (name, "is required"));
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.find("`, ").map(|end| (&rest[..end], "unknown field")));
    missing
        .or(unknown)
        .map(|(name, reason)| (clip(name), reason.to_string()))
}

fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Endpoints without parameters take an empty body or `{}`.
fn no_params(body: &[u8]) -> Result<(), ApiError> {
    if is_blank(body) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        Ok(serde_json::Value::Object(m)) => Err(bad_request(format!(
            "{}: unknown field (this endpoint takes no parameters: send an empty body or {{}})",
            m.keys().next().map_or(String::new(), |k| match k.as_str() {
                "" => "\"\"".to_string(),
                k => clip(k),
            })
        ))),
        _ => Err(bad_request(
            "body must be empty or {}: this endpoint takes no parameters",
        )),
    }
}

fn valid_id(id: &str) -> bool {
    jetcron_shared::job::is_valid_id(id)
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(bad_request(format!(
            "id: {}",
            jetcron_shared::job::not_an_id(id)
        )))
    }
}

// ---- the jobs bucket ----

/// How the job index stood against the jobs bucket for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexState {
    /// It holds every write the bucket had when the request came.
    Current,
    /// It has read the whole bucket once but not yet the latest writes
    /// (within [`CATCH_UP_LIMIT`]): what it holds is a moment old.
    Behind,
    /// Its first read of the bucket is still going on (after [`LOAD_LIMIT`]).
    Loading,
}

/// Waits until the job index holds what the jobs bucket holds now, as far
/// as the limits allow. The bucket's last sequence is one small request
/// (stream state, no messages read).
async fn index_current(ctx: &Ctx) -> Result<IndexState, ApiError> {
    let info = ctx
        .jobs
        .stream
        .get_info()
        .await
        .map_err(|e| unavailable("jobs bucket", e))?;
    // A bucket emptied by a purge of its stream never delivers its last
    // sequence again; there is nothing to wait for.
    let target = if info.state.messages == 0 {
        0
    } else {
        info.state.last_sequence
    };
    let limit = if ctx.index.progress().loaded {
        CATCH_UP_LIMIT
    } else {
        LOAD_LIMIT
    };
    let reached = ctx.index.wait_for(target, limit).await;
    let loaded = ctx.index.progress().loaded;
    Ok(match (reached, loaded) {
        (true, _) => IndexState::Current,
        (false, true) => IndexState::Behind,
        (false, false) => IndexState::Loading,
    })
}

/// A stored definition: what is there, and whether it validates.
#[derive(Debug)]
struct Stored {
    revision: u64,
    value: Bytes,
    job: Result<Job, jetcron_shared::JobError>,
}

/// Reads a job's definition; `not_found` when there is none.
async fn load_job(ctx: &Ctx, id: &str) -> Result<Stored, ApiError> {
    let entry = ctx
        .jobs
        .entry(id)
        .await
        .map_err(|e| unavailable("jobs bucket", e))?;
    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
        return Err(not_found(id));
    };
    Ok(Stored {
        revision: entry.revision,
        job: Job::decode(&entry.value, Some(id)),
        value: entry.value,
    })
}

/// A stored definition that must validate for `action` (e.g. "paused").
fn valid_job(id: &str, stored: Stored, action: &str) -> Result<(Job, u64), ApiError> {
    match stored.job {
        Ok(job) => Ok((job, stored.revision)),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidJob,
            format!("job '{id}' cannot be {action}: its stored definition is invalid: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetcron_shared::api::{IdRequest, NextRequest};

    fn err<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ApiError {
        r.expect_err("an error")
    }

    #[test]
    fn request_errors_name_the_field() {
        let e = err(parse::<NextRequest>(br#"{"id":"a","count":"x"}"#, "S"));
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(
            e.message.starts_with("count: invalid type"),
            "{}",
            e.message
        );
        let e = err(parse::<NextRequest>(br#"{"count":1}"#, "S"));
        assert!(e.message.starts_with("id: is required"), "{}", e.message);
        let e = err(parse::<IdRequest>(br#"{"id":"a","x":1}"#, "S"));
        assert!(e.message.starts_with("x: unknown field"), "{}", e.message);
        for body in ["", " ", "{", "[]", "3"] {
            let e = err(parse::<IdRequest>(body.as_bytes(), ID_SHAPE));
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains(ID_SHAPE), "{}", e.message);
        }
        assert_eq!(
            parse::<IdRequest>(br#"{"id":"a"}"#, ID_SHAPE).unwrap().id,
            "a"
        );
    }

    #[test]
    fn request_errors_quote_at_most_80_characters_of_the_input() {
        let long = "k".repeat(5000);
        let cut = format!("{}…", "k".repeat(80));
        let e = err(parse::<IdRequest>(
            format!(r#"{{"id":"a","{long}":1}}"#).as_bytes(),
            ID_SHAPE,
        ));
        assert!(e.message.starts_with(&format!("{cut}: ")), "{}", e.message);
        assert!(e.message.len() < 500, "{}", e.message);
        let e = err(parse::<NextRequest>(
            format!(r#"{{"id":"a","count":"{long}"}}"#).as_bytes(),
            "S",
        ));
        assert!(e.message.starts_with("count: "), "{}", e.message);
        assert!(e.message.len() < 500, "{}", e.message);
        let e = err(check_id(&long));
        assert_eq!(
            e.message,
            format!("id: '{cut}' must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
        );
        let e = err(no_params(format!(r#"{{"{long}":1}}"#).as_bytes()));
        assert!(
            e.message.starts_with(&format!("{cut}: unknown field")),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_unknown_key_is_named_whole_and_as_written() {
        let e = err(parse::<IdRequest>(br#"{"id":"a","x`y":1}"#, "S"));
        assert!(e.message.starts_with("x`y: unknown field"), "{}", e.message);
        let e = err(parse::<IdRequest>(br#"{"id":"a","":1}"#, "S"));
        assert!(
            e.message.starts_with(r#""": unknown field"#),
            "{}",
            e.message
        );
        let e = err(no_params(br#"{"":1}"#));
        assert!(
            e.message.starts_with(r#""": unknown field"#),
            "{}",
            e.message
        );
    }

    #[test]
    fn parameterless_endpoints_take_nothing_or_an_empty_object() {
        assert!(no_params(b"").is_ok());
        assert!(no_params(b" {} ").is_ok());
        assert!(
            err(no_params(br#"{"a":1}"#))
                .message
                .starts_with("a: unknown field")
        );
        assert_eq!(err(no_params(b"{")).code, ErrorCode::BadRequest);
    }

    #[test]
    fn micro_names_have_no_dots() {
        for ep in Endpoint::ALL {
            assert!(!ep.micro_name().contains('.'), "{ep:?}");
        }
        assert_eq!(Endpoint::Put.micro_name(), "job_put");
    }
}
