//! `job.put`, `job.get`, `job.delete`: job definitions in the jobs bucket.
//!
//! A put stores what is sent, literally (a definition without `paused`
//! un-pauses the job). It is refused if the definition does not validate, or
//! if it could never fire from now on (an `@at` instant already passed); a
//! stored job whose instant passed stays valid. With `expected_revision` it
//! is a compare-and-set: KV `create` for 0 (must not exist), `update` at that
//! revision otherwise, so of two concurrent edits from the same revision only
//! one applies. A definition is stored indented unless that would make it
//! too large to load; one too large even compact is refused. One whose
//! `on_success` leads back to itself through the stored jobs is refused as
//! a bad request naming the cycle (see [`super::chain`]).
//!
//! A delete also purges the job's shard messages still waiting in the work
//! stream (see [`crate::deletion`]).

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jetcron_shared::api::{
    ApiError, DeleteReply, EXPECTED_REVISION_FIELD, ErrorCode, GetReply, IdRequest, PutReply,
    encode_ok,
};
use jetcron_shared::job::MAX_DEFINITION_BYTES;
use jetcron_shared::quote::clip;
use jetcron_shared::wire::{Event, EventBody};
use jetcron_shared::{Job, JobError};
use tracing::{info, warn};

use super::chain::refuse_cycle;
use super::{Ctx, ID_SHAPE, check_id, load_job, not_found, parse, unavailable};
use crate::deletion::purge_work;

/// Raw stored definitions shown by `job.get` are cut to this many characters.
const RAW_LIMIT: usize = 4096;

pub(super) async fn put(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let (expected, definition) = split_expected(body)?;
    let (job, value) = match checked(&definition, Utc::now()) {
        Ok(checked) => checked,
        Err(e) => {
            let id = claimed_id(&definition);
            warn!(job = %id, error = %e, "refused an invalid job definition");
            let event = Event::now(EventBody::Invalid {
                job: id,
                revision: 0,
                error: e.to_string(),
            });
            ctx.events.publish(&event, None).await;
            return Err(invalid(&e));
        }
    };
    // Checked against what is stored now: see `chain` for the race two
    // puts closing half a cycle each have.
    refuse_cycle(ctx, &job).await?;
    let spec = job.spec;
    let id = spec.id.clone();
    let current = current_revision(ctx, &id).await?;
    let revision = match expected {
        None => ctx
            .jobs
            .put(id.as_str(), value)
            .await
            .map_err(|e| unavailable("jobs bucket", e))?,
        Some(want) if want != current => return Err(conflict(&id, current, want)),
        Some(0) => match ctx.jobs.create(id.as_str(), value).await {
            Ok(r) => r,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                return Err(conflict(&id, current_revision(ctx, &id).await?, 0));
            }
            Err(e) => return Err(unavailable("jobs bucket", e)),
        },
        Some(want) => match ctx.jobs.update(id.as_str(), value, want).await {
            Ok(r) => r,
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                return Err(conflict(&id, current_revision(ctx, &id).await?, want));
            }
            Err(e) => return Err(unavailable("jobs bucket", e)),
        },
    };
    Ok(encode_ok(&PutReply {
        job: spec,
        revision,
        created: current == 0,
    }))
}

/// A definition being put, validated as of `now`, and the bytes to store.
pub(super) fn checked(definition: &[u8], now: DateTime<Utc>) -> Result<(Job, Bytes), JobError> {
    let job = Job::decode(definition, None)?;
    job.check_put(now)?;
    let value = stored_form(&job)?;
    Ok((job, value))
}

/// The reply to a definition that does not validate.
pub(super) fn invalid(e: &JobError) -> ApiError {
    ApiError::new(ErrorCode::InvalidJob, e.to_string())
}

/// The bytes to store: what the catalog loads must pass the size limit,
/// whatever the body was (a number such as `1e5` is written `100000.0`).
fn stored_form(job: &Job) -> Result<Bytes, JobError> {
    let value = job.spec.encode();
    if value.len() > MAX_DEFINITION_BYTES {
        return Err(JobError::TooLarge(value.len()));
    }
    Ok(Bytes::from(value))
}

/// Takes a top-level `expected_revision` out of a put body. The rest is the
/// definition, byte for byte when there is no such field.
pub(super) fn split_expected(body: &[u8]) -> Result<(Option<u64>, Bytes), ApiError> {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(body) else {
        // Not a JSON object: the definition check says what is wrong.
        return Ok((None, Bytes::copy_from_slice(body)));
    };
    let Some(raw) = map.remove(EXPECTED_REVISION_FIELD) else {
        return Ok((None, Bytes::copy_from_slice(body)));
    };
    let Some(expected) = raw.as_u64() else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{EXPECTED_REVISION_FIELD}: must be a revision number (0: the job must not \
                 exist yet), found {}",
                clip(&raw.to_string())
            ),
        ));
    };
    let rest = serde_json::to_vec(&serde_json::Value::Object(map))
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok((Some(expected), Bytes::from(rest)))
}

/// Revision of the job's live definition; 0 when it does not exist.
async fn current_revision(ctx: &Ctx, id: &str) -> Result<u64, ApiError> {
    match load_job(ctx, id).await {
        Ok(stored) => Ok(stored.revision),
        Err(e) if e.code == ErrorCode::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn conflict(id: &str, current: u64, expected: u64) -> ApiError {
    let message = if current == 0 {
        format!("job '{id}' does not exist, not at revision {expected}")
    } else {
        format!("job '{id}' is at revision {current}, not {expected}")
    };
    ApiError::new(ErrorCode::Conflict, message)
}

/// The id a refused definition claims, if it is usable in a subject;
/// `_unknown` otherwise.
fn claimed_id(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .filter(|id| super::valid_id(id))
        .unwrap_or_else(|| "_unknown".to_string())
}

/// Parses `{"id": "..."}` and checks the id is a possible job id.
pub(super) fn id_request(body: &[u8]) -> Result<String, ApiError> {
    let req: IdRequest = parse(body, ID_SHAPE)?;
    check_id(&req.id)?;
    Ok(req.id)
}

pub(super) async fn get(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let id = id_request(body)?;
    let stored = load_job(ctx, &id).await?;
    let reply = match stored.job {
        Ok(job) => GetReply {
            id,
            revision: stored.revision,
            job: Some(job.spec),
            invalid: None,
            raw: None,
        },
        Err(e) => GetReply {
            id,
            revision: stored.revision,
            job: None,
            invalid: Some(e.to_string()),
            raw: Some(
                String::from_utf8_lossy(&stored.value)
                    .chars()
                    .take(RAW_LIMIT)
                    .collect(),
            ),
        },
    };
    Ok(encode_ok(&reply))
}

pub(super) async fn delete(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let id = id_request(body)?;
    if current_revision(ctx, &id).await? == 0 {
        return Err(not_found(&id));
    }
    ctx.jobs
        .delete(id.as_str())
        .await
        .map_err(|e| unavailable("jobs bucket", e))?;
    // The job is gone either way; the leader purges again when its watch
    // sees the delete.
    match purge_work(&ctx.work, &ctx.names, &id).await {
        Ok(0) => {}
        Ok(n) => info!(job = %id, purged = n, "deleted job: its waiting shard messages removed"),
        Err(e) => warn!(error = %e, "deleted job: its waiting shard messages stay for the leader"),
    }
    Ok(encode_ok(&DeleteReply { id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_revision_is_taken_out_of_the_definition() {
        let (e, rest) =
            split_expected(br#"{"id":"a","schedule":"@hourly","expected_revision":5}"#).unwrap();
        assert_eq!(e, Some(5));
        let v: serde_json::Value = serde_json::from_slice(&rest).unwrap();
        assert!(v.get(EXPECTED_REVISION_FIELD).is_none());
        assert_eq!(v["id"], "a");

        let body = br#"{"id":"a", "schedule":"@hourly"}"#;
        let (e, rest) = split_expected(body).unwrap();
        assert_eq!((e, rest.as_ref()), (None, &body[..]));
        let (e, rest) = split_expected(b"{broken").unwrap();
        assert_eq!((e, rest.as_ref()), (None, &b"{broken"[..]));

        let long = format!("\"{}\"", "9".repeat(5000));
        for bad in [r#""5""#, "-1", "1.5", "null", long.as_str()] {
            let body = format!(r#"{{"id":"a","expected_revision":{bad}}}"#);
            let err = split_expected(body.as_bytes()).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(
                err.message.starts_with("expected_revision: "),
                "{}",
                err.message
            );
            assert!(err.message.len() < 300, "{}", err.message);
        }
    }

    #[test]
    fn what_is_stored_must_load_whatever_the_body_was() {
        let definition = |payload: &str| {
            let body = format!(
                r#"{{"id":"x","schedule":"@hourly","run":{{"shell":"t"}},"payload":[{payload}]}}"#
            );
            assert!(body.len() < MAX_DEFINITION_BYTES);
            Job::decode(body.as_bytes(), None).unwrap()
        };
        // Many small values: too large indented, stored compact.
        let job = definition(&vec!["7"; 100_000].join(","));
        let stored = stored_form(&job).unwrap();
        assert_eq!(Job::decode(&stored, Some("x")).unwrap().spec, job.spec);
        // `1e5` is written back as `100000.0`: too large even compact.
        let job = definition(&vec!["1e5"; 60_000].join(","));
        match stored_form(&job) {
            Err(JobError::TooLarge(n)) => assert!(n > MAX_DEFINITION_BYTES, "{n}"),
            other => panic!("expected too large, got {other:?}"),
        }
    }

    #[test]
    fn conflicts_say_where_the_job_is() {
        assert_eq!(
            conflict("x", 7, 5).message,
            "job 'x' is at revision 7, not 5"
        );
        assert_eq!(
            conflict("x", 0, 5).message,
            "job 'x' does not exist, not at revision 5"
        );
        assert_eq!(conflict("x", 7, 5).code, ErrorCode::Conflict);
    }
}
