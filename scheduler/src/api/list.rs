//! `job.list`: one page of jobs, ids ascending, from the job index.
//!
//! A page holds at most `limit` jobs, and never more bytes than one NATS
//! message may carry (the server's `max_payload`): a page cut short by
//! either, or by the index's scan budget for sparse filters, hands back
//! `next`, the cursor the following page starts after. Only the last page
//! has no `next`.

use bytes::Bytes;
use jetcron_shared::api::{
    ApiError, ErrorCode, JobSummary, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, ListRequest,
};

use jetcron_shared::quote::quote;

use super::{Ctx, IndexState, bad_request, index_current, is_blank, parse, valid_id};
use crate::catalog::{Def, Listed, Page, Query};

/// What a `job.list` body looks like.
const LIST_SHAPE: &str = r#"{"limit": 1-1000, "cursor": "<job id>", "group": "<group>", "state": "active|paused|invalid"} (every field optional; an empty body is the first page)"#;
/// Longest group name (as the job definition allows).
const MAX_GROUP_LEN: usize = 64;
/// Room kept after the lines for the end of the reply: `],"next":"<id>"}`.
const TAIL_ROOM: usize = 256;

pub(super) async fn list(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let req = request(body)?;
    if index_current(ctx).await? == IndexState::Loading {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "this replica is still reading the jobs bucket (up to revision {}); retry in a \
                 moment",
                ctx.index.progress().applied
            ),
        ));
    }
    let limit = req.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    let page = ctx.index.page(&Query {
        after: req.cursor.as_deref(),
        group: req.group.as_deref(),
        state: req.state,
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    });
    encode(page, ctx.client.server_info().max_payload)
}

/// Decodes and checks a request; an empty body asks for the first page.
pub(super) fn request(body: &[u8]) -> Result<ListRequest, ApiError> {
    let req: ListRequest = if is_blank(body) {
        ListRequest::default()
    } else {
        parse(body, LIST_SHAPE)?
    };
    if let Some(limit) = req.limit
        && !(1..=LIST_LIMIT_MAX).contains(&limit)
    {
        return Err(bad_request(format!(
            "limit: must be 1-{LIST_LIMIT_MAX}, found {limit}"
        )));
    }
    if let Some(cursor) = &req.cursor
        && !valid_id(cursor)
    {
        return Err(bad_request(format!(
            "cursor: {} is not a job id (1-128 characters of A-Z, a-z, 0-9, '_' or '-'); pass \
             the `next` of the previous page",
            quote(cursor)
        )));
    }
    if let Some(group) = &req.group
        && !(valid_id(group) && group.len() <= MAX_GROUP_LEN)
    {
        return Err(bad_request(format!(
            "group: {} must be 1-{MAX_GROUP_LEN} characters of A-Z, a-z, 0-9, '_' or '-'",
            quote(group)
        )));
    }
    Ok(req)
}

/// The reply `{"ok":true,"jobs":[...],"next":"..."}`, at most `max_bytes`
/// long unless its first line alone is longer: lines that do not fit are
/// left to the next page.
fn encode(page: Page, max_bytes: usize) -> Result<Bytes, ApiError> {
    let Page { jobs, mut next } = page;
    let mut out = Vec::with_capacity(64 + jobs.len() * 128);
    out.extend_from_slice(br#"{"ok":true,"jobs":["#);
    for (i, job) in jobs.iter().enumerate() {
        let line = serde_json::to_vec(&summary(job)).map_err(internal)?;
        if i > 0 {
            if out.len() + 1 + line.len() + TAIL_ROOM > max_bytes {
                next = Some(jobs[i - 1].id.clone());
                break;
            }
            out.push(b',');
        }
        out.extend_from_slice(&line);
    }
    out.push(b']');
    if let Some(next) = next {
        out.extend_from_slice(br#","next":"#);
        out.extend_from_slice(&serde_json::to_vec(&next).map_err(internal)?);
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("cannot encode a job.list page: {e}"),
    )
}

/// One line of the list: what the definition says, nothing read per job.
pub(super) fn summary(job: &Listed) -> JobSummary {
    match &job.def {
        Def::Valid(valid) => JobSummary {
            id: job.id.clone(),
            revision: job.revision,
            schedule: Some(valid.schedule().expression().to_string()),
            timezone: Some(valid.schedule().timezone().name().to_string()),
            group: Some(valid.group().to_string()),
            shards: Some(valid.shard_count()),
            paused: valid.paused(),
            invalid: None,
        },
        Def::Invalid(error) => JobSummary {
            id: job.id.clone(),
            revision: job.revision,
            schedule: None,
            timezone: None,
            group: None,
            shards: None,
            paused: false,
            invalid: Some(error.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use jetcron_shared::api::{ListReply, decode_reply};
    use jetcron_shared::{Definition, JobError};

    fn listed(id: &str) -> Listed {
        let json = format!(
            r#"{{"id":"{id}","schedule":"0 30 2 * * *","timezone":"Europe/Berlin","shards":3,"group":"g","run":{{"shell":"true"}}}}"#
        );
        Listed {
            id: id.into(),
            revision: 7,
            def: Def::Valid(Arc::new(
                Definition::decode(json.as_bytes(), Some(id)).unwrap(),
            )),
        }
    }

    fn decode(bytes: &Bytes) -> ListReply {
        decode_reply("jetcron.api.job.list", bytes).unwrap()
    }

    #[test]
    fn a_refused_cursor_or_group_is_quoted_cut_to_80_characters() {
        let long = "a.".repeat(2500);
        for field in ["cursor", "group"] {
            let body = format!(r#"{{"{field}":"{long}"}}"#);
            let e = request(body.as_bytes()).unwrap_err();
            assert!(
                e.message
                    .starts_with(&format!("{field}: '{}…'", "a.".repeat(40))),
                "{}",
                e.message
            );
            assert!(e.message.len() < 400, "{}", e.message);
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let req = request(b"").unwrap();
        assert_eq!(req, ListRequest::default());
        let req =
            request(br#"{"limit":5,"cursor":"a-1","group":"billing","state":"paused"}"#).unwrap();
        assert_eq!(req.limit, Some(5));
        for (body, start) in [
            (r#"{"limit":0}"#, "limit: must be 1-1000, found 0"),
            (r#"{"limit":1001}"#, "limit: must be 1-1000, found 1001"),
            (r#"{"limit":-1}"#, "limit: invalid value"),
            (
                r#"{"state":"sleeping"}"#,
                "state: unknown variant `sleeping`",
            ),
            (r#"{"cursor":"a.b"}"#, "cursor: 'a.b' is not a job id"),
            (r#"{"cursor":""}"#, "cursor: '' is not a job id"),
            (r#"{"group":"a b"}"#, "group: 'a b' must be 1-64 characters"),
            (r#"{"page":2}"#, "page: unknown field"),
            ("{", "body must be {\"limit\""),
        ] {
            let e = request(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{body}");
            assert!(e.message.starts_with(start), "{body}: {}", e.message);
        }
    }

    #[test]
    fn lines_keep_the_fields_of_a_definition_or_its_error() {
        let s = summary(&listed("a"));
        assert_eq!(
            (
                s.schedule.as_deref(),
                s.timezone.as_deref(),
                s.group.as_deref()
            ),
            (Some("0 30 2 * * *"), Some("Europe/Berlin"), Some("g"))
        );
        assert_eq!((s.shards, s.paused, s.revision), (Some(3), false, 7));
        let bad = Listed {
            id: "b".into(),
            revision: 9,
            def: Def::Invalid(Arc::new(JobError::Syntax("eof".into()))),
        };
        let s = summary(&bad);
        assert_eq!(s.invalid.as_deref(), Some("invalid JSON: eof"));
        assert_eq!((s.schedule, s.group, s.shards), (None, None, None));
    }

    #[test]
    fn a_page_is_cut_where_the_bytes_run_out_and_says_where_to_go_on() {
        let page = || Page {
            jobs: (0..50).map(|i| listed(&format!("job-{i:03}"))).collect(),
            next: Some("job-049".into()),
        };
        let whole = encode(page(), 1 << 20).unwrap();
        let reply = decode(&whole);
        assert_eq!(reply.jobs.len(), 50);
        assert_eq!(reply.next.as_deref(), Some("job-049"));

        let cut = encode(page(), 2000).unwrap();
        assert!(cut.len() <= 2000, "{}", cut.len());
        let reply = decode(&cut);
        assert!((1..50).contains(&reply.jobs.len()), "{}", reply.jobs.len());
        assert_eq!(
            reply.next.as_deref(),
            Some(reply.jobs.last().unwrap().id.as_str())
        );

        // The last page: no next.
        let last = Page {
            jobs: vec![listed("z")],
            next: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(last, 1 << 20).unwrap()).unwrap();
        assert_eq!(v["ok"], true);
        assert!(v.get("next").is_none(), "{v}");
        let empty = encode(Page::default(), 1 << 20).unwrap();
        assert_eq!(&empty[..], br#"{"ok":true,"jobs":[]}"#);
        // A line longer than the room still goes out alone, so a walk
        // always moves on.
        let tiny = decode(&encode(page(), 10).unwrap());
        assert_eq!(tiny.jobs.len(), 1);
        assert_eq!(tiny.next.as_deref(), Some("job-000"));
    }
}
