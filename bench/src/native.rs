//! The NATS-native anchor: message schedules (nats-server 2.12+, ADR-51).
//!
//! A stream with `allow_msg_schedules` holds one schedule message per
//! schedule, on its own subject `nsched.<i>`, with the headers
//! `Nats-Schedule: * * * * * *` and `Nats-Schedule-Target: nfire.<i>`. At
//! each fire the server stores a copy of it on the target subject. The copy
//! does not say which instant it is for: the server strips every
//! `Nats-Schedule*` header and adds `Nats-Scheduler` (the schedule's
//! subject) and `Nats-Schedule-Next` (RFC 3339, when this schedule fires
//! next). A fire's own instant is therefore the `Nats-Schedule-Next` of the
//! schedule's previous fire; for the first fire seen it is `Next - period`
//! (see [`crate::collect`]).
//!
//! Other facts that shape the measurement (nats-server 2.15): fires are
//! stored straight into the stream, never published on core NATS, so only a
//! consumer sees them; the server adds `Nats-Rollup: sub` to each schedule
//! message; and its timer waits at least 250 ms, so the first fire after a
//! schedule is stored can be that late (the warm-up leaves it out).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use chrono::DateTime;
use tokio::time::timeout;

use crate::collect::key_of;
use crate::error::{BenchError, Result};
use crate::publish::Outgoing;

pub const STREAM: &str = "NATIVE_SCHEDULES";
/// Subjects of the fires: `nfire.<i>`.
pub const FIRE_FILTER: &str = "nfire.>";
pub const HEADER_SCHEDULE: &str = "Nats-Schedule";
pub const HEADER_TARGET: &str = "Nats-Schedule-Target";
/// Set by the server on each fire: the subject of the schedule that fired.
pub const HEADER_SCHEDULER: &str = "Nats-Scheduler";
/// Set by the server on each fire: the schedule's next instant.
pub const HEADER_NEXT: &str = "Nats-Schedule-Next";

/// Creates the stream holding the schedules and their fires.
pub async fn create_stream(js: &jetstream::Context) -> Result<()> {
    let config = stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["nsched.>".to_string(), FIRE_FILTER.to_string()],
        allow_message_schedules: true,
        ..Default::default()
    };
    timeout(Duration::from_secs(10), js.create_stream(config))
        .await
        .map_err(|_| BenchError::timeout("creating the schedule stream", Duration::from_secs(10)))?
        .map_err(|e| BenchError::nats("creating the schedule stream", e))?;
    Ok(())
}

/// The schedule message of schedule `i`, firing `body` by `pattern`.
pub fn schedule(i: usize, pattern: &str, body: Bytes) -> Outgoing {
    let mut h = HeaderMap::new();
    h.insert(HEADER_SCHEDULE, pattern);
    h.insert(HEADER_TARGET, format!("nfire.{i}").as_str());
    Outgoing::new(format!("nsched.{i}"), body).with_headers(h)
}

/// (schedule index, next instant in Unix ms) of a fire, from its headers.
pub fn fire_of(headers: Option<&HeaderMap>) -> Option<(u32, i64)> {
    let h = headers?;
    let key = key_of(h.get(HEADER_SCHEDULER)?.as_str())?;
    let next = DateTime::parse_from_rfc3339(h.get(HEADER_NEXT)?.as_str()).ok()?;
    Some((key, next.timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fire_names_its_schedule_and_next_instant() {
        let mut h = HeaderMap::new();
        h.insert(HEADER_SCHEDULER, "nsched.17");
        h.insert(HEADER_NEXT, "2026-03-01T10:00:05Z");
        let (key, next) = fire_of(Some(&h)).unwrap();
        assert_eq!(key, 17);
        assert_eq!(next, 1_772_359_205_000);
        // Nanosecond precision as the server writes it.
        h.insert(HEADER_NEXT, "2026-03-01T10:00:05.000000000Z");
        assert_eq!(fire_of(Some(&h)).unwrap().1, 1_772_359_205_000);
        assert_eq!(fire_of(None), None);
        assert_eq!(fire_of(Some(&HeaderMap::new())), None);
    }

    #[test]
    fn a_schedule_targets_its_own_fire_subject() {
        let m = schedule(3, "* * * * * *", Bytes::from_static(b"x"));
        assert_eq!(m.subject, "nsched.3");
        let h = m.headers.unwrap();
        assert_eq!(h.get(HEADER_TARGET).unwrap().as_str(), "nfire.3");
        assert_eq!(h.get(HEADER_SCHEDULE).unwrap().as_str(), "* * * * * *");
    }
}
