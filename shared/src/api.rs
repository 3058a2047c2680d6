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
    /// Set when the stored definition does not validate: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// Reply of `job.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReply {
    pub jobs: Vec<JobSummary>,
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
        let subject = self.names.api_subject(endpoint);
        let request = async_nats::Request::new()
            .payload(body)
            .timeout(Some(self.timeout));
        let msg = self
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|source| ClientError::Request {
                subject: subject.clone(),
                source,
            })?;
        decode_reply(&subject, &msg.payload)
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

    pub async fn list(&self) -> Result<ListReply, ClientError> {
        self.call(endpoint::JOB_LIST, Bytes::new()).await
    }
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
