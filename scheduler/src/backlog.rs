//! A group's backlog in the work stream: the shards waiting, the shards
//! delivered to a worker and not settled yet, and the age of the oldest
//! message. For `status` and the metrics.
//!
//! A group's shards are read through several consumers: the group's own,
//! `jetcron-<group>`, for shell and HTTP shards, and one per handler,
//! `jetcron-<group>@<handler>`. Shards of a handler no worker serves have no
//! consumer at all. So the backlog is counted from the stream: every
//! message the group's subjects hold (a work queue drops a message once it
//! is acked) less those the group's consumers have delivered and await.

use std::collections::BTreeMap;

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt, stream};
use jetcron_shared::Names;

/// Groups queried at once.
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Stored and not delivered (or handed back).
    pub pending: u64,
    /// Delivered to a worker, not settled yet.
    pub in_flight: u64,
    /// Age of the group's oldest message in the work stream.
    pub oldest_age_ms: Option<i64>,
}

/// The backlog of each of `groups`.
pub async fn backlogs(
    work: &Stream,
    names: &Names,
    groups: Vec<String>,
) -> Result<BTreeMap<String, Backlog>, String> {
    // Delivered and unsettled, per consumer name.
    let consumers: Vec<(String, u64)> = work
        .consumers()
        .map_ok(|info| (info.name, info.num_ack_pending as u64))
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    stream::iter(groups)
        .map(|group| {
            let own = names.work_consumer(&group);
            let handlers = format!("{own}@");
            let in_flight = consumers
                .iter()
                .filter(|(name, _)| *name == own || name.starts_with(&handlers))
                .map(|(_, n)| n)
                .sum::<u64>();
            async move {
                let (stored, oldest_age_ms) = tokio::try_join!(
                    stored(work, names, &group),
                    oldest_age_ms(work, names, &group)
                )?;
                let backlog = Backlog {
                    pending: stored.saturating_sub(in_flight),
                    in_flight,
                    oldest_age_ms,
                };
                Ok((group, backlog))
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// Messages the work stream holds for a group.
async fn stored(work: &Stream, names: &Names, group: &str) -> Result<u64, String> {
    work.info_with_subjects(names.work_group(group))
        .await
        .map_err(|e| e.to_string())?
        .map_ok(|(_, n)| u64::try_from(n).unwrap_or(0))
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await
        .map_err(|e| e.to_string())
}

async fn oldest_age_ms(work: &Stream, names: &Names, group: &str) -> Result<Option<i64>, String> {
    match work
        .get_first_raw_message_by_subject(names.work_group(group), 0)
        .await
    {
        Ok(m) => {
            let stored_ms = i64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok();
            Ok(stored_ms.map(|ms| (Utc::now().timestamp_millis() - ms).max(0)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
