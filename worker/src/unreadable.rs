//! A shard message this worker cannot read whole: most likely one written
//! by a newer jetcron (a `run` kind this version does not know). When its
//! envelope (job, instant, shard) can still be read, the shard is ended as
//! dead with an `error` that says why, exactly like a crash loop ends one
//! unrun: a result, a `dead` event, the final record, the end notice of a
//! tracked fire, `+TERM`. Only a message without even that envelope is
//! terminated with nothing but a log line.

use chrono::{DateTime, Utc};
use jetcron_shared::job::{RetryPolicy, Run};
use jetcron_shared::wire::{Cause, ShardMessage, WireError};
use serde::Deserialize;

/// The fields every shard message has had, each version alike.
#[derive(Debug, Deserialize)]
struct Envelope {
    job: String,
    instant: DateTime<Utc>,
    shard: u32,
    #[serde(default = "one")]
    shards: u32,
    #[serde(default)]
    group: String,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    track: bool,
    #[serde(default)]
    parent: Option<String>,
}

fn one() -> u32 {
    1
}

/// The shard `bytes` names, as far as it can be read, to be ended unrun;
/// None when not even its envelope reads.
pub fn envelope(bytes: &[u8]) -> Option<ShardMessage> {
    let e: Envelope = serde_json::from_slice(bytes).ok()?;
    Some(ShardMessage {
        job: e.job,
        group: e.group,
        instant: e.instant,
        shard: e.shard,
        shards: e.shards,
        param: None,
        // Never run: the shard is ended before anything looks at it.
        run: Run::Shell(String::new()),
        timeout_ms: 0,
        retry: RetryPolicy::default(),
        payload: None,
        epoch: e.epoch,
        cause: Cause::Schedule,
        dispatched_at: Utc::now(),
        record: e.record,
        expires_at: None,
        track: e.track,
        parent: e.parent,
    })
}

/// The `error` of a shard ended because its message could not be read.
pub fn error(e: &WireError) -> String {
    format!(
        "this worker cannot read the shard message ({e}); not run. A newer jetcron may have \
         written it: upgrade the workers of this group"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_of_an_unknown_run_kind_keeps_its_envelope() {
        let body =
            br#"{"job":"j","group":"g","instant":"2026-05-01T10:00:00Z","shard":2,"shards":3,
            "run":{"future":{"x":1}},"timeout_ms":5,"retry":{"max_attempts":1,"backoff":[]},
            "epoch":7,"cause":"schedule","dispatched_at":"2026-05-01T10:00:00Z",
            "record":"j.s1","track":true}"#;
        let err = ShardMessage::decode(body).unwrap_err();
        let m = envelope(body).unwrap();
        assert_eq!(
            (m.job.as_str(), m.shard, m.shards, m.epoch, m.track),
            ("j", 2, 3, 7, true)
        );
        assert_eq!(m.record_key().as_deref(), Some("j.s1.2"));
        assert!(
            error(&err).contains("upgrade the workers"),
            "{}",
            error(&err)
        );
        assert!(envelope(b"{\"job\":\"j\"}").is_none());
        assert!(envelope(b"not json").is_none());
    }
}
