//! `job.next`: the next instants of a job's schedule after now, in UTC and
//! in the job's time zone (with the offset in force at each instant, so a
//! DST change shows as a change of offset).

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use jetcron_shared::api::{ApiError, NextInstant, NextReply, NextRequest, encode_ok};

use super::{Ctx, bad_request, check_id, load_job, parse, valid_job};

const SHAPE: &str = r#"{"id": "<job id>", "count": <1-100, default 5>}"#;
const DEFAULT_COUNT: u32 = 5;
const MAX_COUNT: u32 = 100;

pub(super) async fn next(ctx: &Ctx, body: &[u8]) -> Result<Bytes, ApiError> {
    let (req, count) = request(body)?;
    let (job, _) = valid_job(&req.id, load_job(ctx, &req.id).await?, "planned")?;
    let tz = job.schedule.timezone();
    let instants = job
        .schedule
        .upcoming(Utc::now(), count as usize)
        .into_iter()
        .map(|utc| NextInstant {
            utc,
            local: local(utc, tz),
        })
        .collect();
    Ok(encode_ok(&NextReply {
        id: req.id,
        timezone: job.spec.timezone.clone(),
        paused: job.paused(),
        instants,
    }))
}

/// Decodes and checks a request: the request and how many instants.
pub(super) fn request(body: &[u8]) -> Result<(NextRequest, u32), ApiError> {
    let req: NextRequest = parse(body, SHAPE)?;
    check_id(&req.id)?;
    let count = req.count.unwrap_or(DEFAULT_COUNT);
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(bad_request(format!(
            "count: must be 1-{MAX_COUNT}, found {count}"
        )));
    }
    Ok((req, count))
}

/// RFC 3339 in `tz`, with fractions of a second only when there are some.
fn local(utc: DateTime<Utc>, tz: Tz) -> String {
    utc.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn local_times_carry_the_offset_in_force() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let winter = Utc.with_ymd_and_hms(2026, 3, 28, 1, 30, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 3, 30, 0, 30, 0).unwrap();
        assert_eq!(local(winter, berlin), "2026-03-28T02:30:00+01:00");
        assert_eq!(local(summer, berlin), "2026-03-30T02:30:00+02:00");
        let utc: Tz = "UTC".parse().unwrap();
        let ms = Utc.timestamp_millis_opt(1_500).unwrap();
        assert_eq!(local(ms, utc), "1970-01-01T00:00:01.500+00:00");
    }
}
