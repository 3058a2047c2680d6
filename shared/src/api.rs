//! Bodies of the control API (`jetcron.api.>`, micro service `jetcron`) and a
//! small client for it.
//!
//! Every reply is a JSON object: `{"ok": true, ...}` on success, or
//! `{"ok": false, "error": {"code": "...", "message": "..."}}`, with the micro
//! error headers `Nats-Service-Error` / `Nats-Service-Error-Code` set too.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::job::JobSpec;
use crate::names::Names;

/// Endpoint names, relative to `<prefix>.api`.
pub mod endpoint {
    pub const JOB_PUT: &str = "job.put";
    pub const JOB_GET: &str = "job.get";
    pub const JOB_DELETE: &str = "job.delete";
    pub const JOB_LIST: &str = "job.list";
    pub const JOB_PAUSE: &str = "job.pause";
    pub const JOB_RESUME: &str = "job.resume";
    pub const JOB_TRIGGER: &str = "job.trigger";
    pub const JOB_NEXT: &str = "job.next";
    pub const JOB_RUNS: &str = "job.runs";
    pub const JOB_RETRY: &str = "job.retry";
    pub const STATUS: &str = "status";
    pub const WORKERS: &str = "workers";
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not what the endpoint takes.
    BadRequest,
    /// The job definition does not validate; the message names the field.
    InvalidJob,
    NotFound,
    Conflict,
    /// NATS or the store failed; retrying may help.
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The HTTP-like status sent in `Nats-Service-Error-Code`.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidJob => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// Body of `job.get` and `job.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    pub id: String,
}

/// Body of `job.put`: the job definition itself, optionally with a top-level
/// `"expected_revision"`: the put applies only if the stored revision is
/// still that one (0: only if the job does not exist), else `conflict`.
pub const EXPECTED_REVISION_FIELD: &str = "expected_revision";

/// Body of `job.trigger`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    pub id: String,
    /// Only these shards (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<u32>>,
    /// Replaces the job's payload for this fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// Reply of `job.trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerReply {
    pub id: String,
    pub fire_id: String,
    pub instant: chrono::DateTime<chrono::Utc>,
    pub shards: Vec<u32>,
}

/// Body of `job.retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    pub id: String,
    /// The fire whose failed shards run again (a `fire_id` of `job.runs`).
    pub fire_id: String,
}

/// Reply of `job.retry`: the new fire that runs the failed shards again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryReply {
    pub id: String,
    pub fire_id: String,
    /// The fire retried.
    pub retry_of: String,
    pub instant: chrono::DateTime<chrono::Utc>,
    pub shards: Vec<u32>,
}

/// Reply of `job.pause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseReply {
    pub id: String,
    pub revision: u64,
    /// False when the job was paused already (nothing changed).
    pub changed: bool,
}

/// Reply of `job.resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeReply {
    pub id: String,
    pub revision: u64,
    pub changed: bool,
    /// Instants that passed while paused; they are not replayed.
    pub skipped: u64,
}

/// Body of `job.next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextRequest {
    pub id: String,
    /// How many instants (1-100, default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// One upcoming instant, in UTC and in the job's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextInstant {
    pub utc: chrono::DateTime<chrono::Utc>,
    /// RFC 3339 with the zone's offset at that instant.
    pub local: String,
}

/// Reply of `job.next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextReply {
    pub id: String,
    pub timezone: String,
    pub paused: bool,
    pub instants: Vec<NextInstant>,
}

/// Body of `job.runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsRequest {
    pub id: String,
    /// Most recent fires to return (default: the job's whole history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One shard of one fire in `job.runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRun {
    pub shard: u32,
    pub state: crate::runs::ShardState,
    /// Attempts so far (0 while pending).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The end of the latest attempt's output (at most 1 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One fire in `job.runs`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireRun {
    pub fire_id: String,
    pub instant: chrono::DateTime<chrono::Utc>,
    pub cause: crate::wire::Cause,
    pub fired_at: chrono::DateTime<chrono::Utc>,
    /// For a fire made by `job.retry`: the fire it retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    /// `succeeded` when every shard did; else the worst shard state
    /// (`failed`, `timed_out`, `running`, `pending`).
    pub state: crate::runs::ShardState,
    pub shards: Vec<ShardRun>,
}

/// Reply of `job.runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunsReply {
    pub id: String,
    pub runs: Vec<FireRun>,
}

/// The leader as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub holder: String,
    pub epoch: u64,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// An invalid job in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidJob {
    pub id: String,
    pub error: String,
}

/// Invalid jobs listed by name in `status`; the rest are counted.
pub const STATUS_INVALID_LISTED: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    pub total: u64,
    pub active: u64,
    pub paused: u64,
    /// Invalid definitions in all.
    #[serde(default)]
    pub invalid_count: u64,
    /// The first [`STATUS_INVALID_LISTED`] invalid definitions by id, with
    /// their errors (`job.list` with `"state": "invalid"` lists them all).
    pub invalid: Vec<InvalidJob>,
    /// False when the answering replica had not read the whole jobs bucket
    /// yet (it has just started): the counts are then too low.
    #[serde(default = "yes")]
    pub complete: bool,
}

fn yes() -> bool {
    true
}

/// A worker group in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: String,
    /// Valid jobs of the group, paused ones included.
    #[serde(default)]
    pub jobs: u64,
    pub workers: u64,
    /// Shard messages waiting for a worker.
    pub pending: u64,
    /// Shard messages delivered and not yet acked (running).
    pub in_flight: u64,
    /// Age of the oldest message of the group still in the work stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_age_ms: Option<i64>,
}

/// Reply of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub leader: Option<LeaderInfo>,
    pub replicas: Vec<crate::runs::ReplicaHeartbeat>,
    pub jobs: JobCounts,
    pub groups: Vec<GroupStatus>,
}

/// Reply of `workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersReply {
    pub workers: Vec<crate::runs::WorkerHeartbeat>,
}

/// Reply of `job.put`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutReply {
    pub job: JobSpec,
    pub revision: u64,
    pub created: bool,
}

/// Reply of `job.get`: the stored definition. `job` is absent when what is
/// stored does not validate; `raw` and `invalid` then say what is there and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetReply {
    pub id: String,
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// Reply of `job.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReply {
    pub id: String,
}

/// One line of `job.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    #[serde(default)]
    pub paused: bool,
    /// Set when the stored definition does not validate: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// Most jobs one `job.list` page holds.
pub const LIST_LIMIT_MAX: u32 = 1000;
/// Jobs per `job.list` page when the request does not say.
pub const LIST_LIMIT_DEFAULT: u32 = 100;

/// What state a job is in, as `job.list` filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Valid and not paused: it fires.
    Active,
    /// Valid and paused.
    Paused,
    /// What is stored does not decode or validate.
    Invalid,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Active => "active",
            JobState::Paused => "paused",
            JobState::Invalid => "invalid",
        }
    }
}

/// Body of `job.list`; every field is optional and an empty body asks for
/// the first page with the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// Jobs in this page, 1-[`LIST_LIMIT_MAX`] (default [`LIST_LIMIT_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The page starts after this job id (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only jobs of this group (invalid definitions have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Only jobs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
}

/// Reply of `job.list`: one page, ids in ascending order.
///
/// A page may hold fewer jobs than asked for (even none) when the reply
/// would not fit in one NATS message or a filter matched little of what was
/// looked at; only a page without `next` is the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReply {
    pub jobs: Vec<JobSummary>,
    /// The cursor of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Encodes a success reply: the fields of `body` next to `"ok": true`.
pub fn encode_ok<T: Serialize>(body: &T) -> Bytes {
    let mut v = serde_json::to_value(body).unwrap_or(serde_json::Value::Null);
    match v.as_object_mut() {
        Some(map) => {
            map.insert("ok".into(), serde_json::Value::Bool(true));
        }
        None => v = serde_json::json!({"ok": true, "result": v}),
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// Encodes an error reply.
pub fn encode_err(err: &ApiError) -> Bytes {
    let v = serde_json::json!({"ok": false, "error": err});
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

/// What can go wrong calling the API.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("the API refused the request: {0}")]
    Api(#[from] ApiError),
    #[error("no reply from {subject}: {source} (is a jetcron scheduler running with this prefix?)")]
    Request {
        subject: String,
        #[source]
        source: async_nats::RequestError,
    },
    #[error("malformed reply from {subject}: {reason}")]
    Reply { subject: String, reason: String },
}

/// Decodes a reply into `T`, or the API error it carries.
pub fn decode_reply<T: DeserializeOwned>(subject: &str, bytes: &[u8]) -> Result<T, ClientError> {
    let bad = |reason: String| ClientError::Reply {
        subject: subject.to_string(),
        reason,
    };
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if !env.ok {
        return Err(ClientError::Api(env.error.unwrap_or_else(|| {
            ApiError::new(ErrorCode::Internal, "error reply without an error")
        })));
    }
    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
}

/// A typed client of the control API over plain NATS requests.
#[derive(Debug, Clone)]
pub struct ApiClient {
    client: async_nats::Client,
    names: Names,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(client: async_nats::Client, names: Names) -> ApiClient {
        ApiClient {
            client,
            names,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// Sends `body` to an endpoint and decodes the reply.
    pub async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let reply = self.call_raw(endpoint, body).await?;
        decode_reply(&self.subject(endpoint), &reply)
    }

    /// Sends `body` to an endpoint; the reply as it came, error or not.
    pub async fn call_raw(&self, endpoint: &str, body: Bytes) -> Result<Bytes, ClientError> {
        let subject = self.subject(endpoint);
        let request = async_nats::Request::new()
            .payload(body)
            .timeout(Some(self.timeout));
        let msg = self
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|source| ClientError::Request { subject, source })?;
        Ok(msg.payload)
    }

    /// The subject of an endpoint: `<prefix>.api.<endpoint>`.
    pub fn subject(&self, endpoint: &str) -> String {
        self.names.api_subject(endpoint)
    }

    /// Stores a definition given as raw JSON (validated by the server).
    pub async fn put_raw(&self, json: Bytes) -> Result<PutReply, ClientError> {
        self.call(endpoint::JOB_PUT, json).await
    }

    pub async fn put(&self, spec: &JobSpec) -> Result<PutReply, ClientError> {
        self.put_raw(Bytes::from(spec.encode())).await
    }

    pub async fn get(&self, id: &str) -> Result<GetReply, ClientError> {
        self.call(endpoint::JOB_GET, id_body(id)).await
    }

    pub async fn delete(&self, id: &str) -> Result<DeleteReply, ClientError> {
        self.call(endpoint::JOB_DELETE, id_body(id)).await
    }

    /// One page of `job.list`.
    pub async fn list_page(&self, request: &ListRequest) -> Result<ListReply, ClientError> {
        self.call(endpoint::JOB_LIST, json_body(request)).await
    }

    /// Walks `job.list` from `request` on, page by page; a page holds
    /// [`LIST_LIMIT_MAX`] jobs unless `request.limit` says otherwise.
    pub fn pages(&self, request: ListRequest) -> Pages<'_> {
        Pages {
            api: self,
            request,
            left: None,
            done: false,
        }
    }

    /// Every job, all pages read into one reply (without `next`). For many
    /// jobs, walk [`ApiClient::pages`] instead.
    pub async fn list(&self) -> Result<ListReply, ClientError> {
        let mut pages = self.pages(ListRequest::default());
        let mut jobs = Vec::new();
        while let Some(page) = pages.next_page().await? {
            jobs.extend(page.jobs);
        }
        Ok(ListReply { jobs, next: None })
    }

    /// Stores a definition only if the stored revision is still `expected`
    /// (0: only if the job does not exist yet).
    pub async fn put_expecting(
        &self,
        spec: &JobSpec,
        expected: u64,
    ) -> Result<PutReply, ClientError> {
        let mut v = serde_json::to_value(spec).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert(EXPECTED_REVISION_FIELD.into(), expected.into());
        }
        self.put_raw(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
            .await
    }

    pub async fn pause(&self, id: &str) -> Result<PauseReply, ClientError> {
        self.call(endpoint::JOB_PAUSE, id_body(id)).await
    }

    pub async fn resume(&self, id: &str) -> Result<ResumeReply, ClientError> {
        self.call(endpoint::JOB_RESUME, id_body(id)).await
    }

    pub async fn trigger(&self, req: &TriggerRequest) -> Result<TriggerReply, ClientError> {
        self.call(endpoint::JOB_TRIGGER, json_body(req)).await
    }

    pub async fn retry(&self, id: &str, fire_id: &str) -> Result<RetryReply, ClientError> {
        let req = RetryRequest {
            id: id.to_string(),
            fire_id: fire_id.to_string(),
        };
        self.call(endpoint::JOB_RETRY, json_body(&req)).await
    }

    pub async fn next(&self, id: &str, count: Option<u32>) -> Result<NextReply, ClientError> {
        let req = NextRequest {
            id: id.to_string(),
            count,
        };
        self.call(endpoint::JOB_NEXT, json_body(&req)).await
    }

    pub async fn runs(&self, id: &str, limit: Option<u32>) -> Result<RunsReply, ClientError> {
        let req = RunsRequest {
            id: id.to_string(),
            limit,
        };
        self.call(endpoint::JOB_RUNS, json_body(&req)).await
    }

    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        self.call(endpoint::STATUS, Bytes::new()).await
    }

    pub async fn workers(&self) -> Result<WorkersReply, ClientError> {
        self.call(endpoint::WORKERS, Bytes::new()).await
    }
}

/// `job.list` page by page: `while let Some(page) = pages.next_page().await? {...}`.
#[derive(Debug)]
pub struct Pages<'a> {
    api: &'a ApiClient,
    request: ListRequest,
    /// Jobs still wanted in all; `None`: every one.
    left: Option<u64>,
    done: bool,
}

impl Pages<'_> {
    /// Stops after this many jobs in all.
    pub fn total(mut self, total: u64) -> Self {
        self.left = Some(total);
        self
    }

    /// The next page, or `None` after the last one. A page may be empty
    /// and still not be the last (see [`ListReply`]).
    pub async fn next_page(&mut self) -> Result<Option<ListReply>, ClientError> {
        if self.done || self.left == Some(0) {
            return Ok(None);
        }
        let mut request = self.request.clone();
        let size = u64::from(request.limit.unwrap_or(LIST_LIMIT_MAX));
        let size = self.left.map_or(size, |left| size.min(left));
        request.limit = Some(u32::try_from(size).unwrap_or(LIST_LIMIT_MAX));
        let mut page = self.api.list_page(&request).await?;
        if let Some(left) = &mut self.left {
            page.jobs
                .truncate(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= page.jobs.len() as u64;
        }
        match &page.next {
            Some(next) => self.request.cursor = Some(next.clone()),
            None => self.done = true,
        }
        Ok(Some(page))
    }
}

fn json_body<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn id_body(id: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&IdRequest { id: id.to_string() }).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_through_the_envelope() {
        let ok = encode_ok(&DeleteReply { id: "a".into() });
        let v: serde_json::Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(decode_reply::<DeleteReply>("s", &ok).unwrap().id, "a");

        let err = encode_err(&ApiError::new(
            ErrorCode::NotFound,
            "job 'a' does not exist",
        ));
        let v: serde_json::Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "not_found");
        match decode_reply::<DeleteReply>("s", &err) {
            Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::NotFound),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_reply::<DeleteReply>("s", b"nope"),
            Err(ClientError::Reply { .. })
        ));
    }
}
