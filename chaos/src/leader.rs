//! Who leads: the holder named by the lease (bucket `jetcron_lease`, key
//! `leader`, JSON `{"holder", "since", "renewed_at", "epoch"}`).

use std::time::Duration;

use async_nats::jetstream;
use jetcron_shared::Names;
use serde::Deserialize;
use tokio::time::timeout;

/// The fields of the lease value the runner needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    pub holder: String,
    #[serde(default)]
    pub epoch: Option<u64>,
}

impl Lease {
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The current lease, or `None` when nobody holds it or it cannot be read
/// right now (server down, bucket not created yet).
pub async fn current(js: &jetstream::Context, names: &Names) -> Option<Lease> {
    let read = async {
        let kv = js.get_key_value(names.lease_bucket()).await.ok()?;
        let value = kv.get(names.lease_key()).await.ok()??;
        Lease::decode(&value)
    };
    timeout(Duration::from_secs(2), read).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_stored_lease() {
        let v = br#"{"holder":"scheduler-2","since":"2026-01-01T00:00:00Z","renewed_at":"2026-01-01T00:00:01Z","epoch":17}"#;
        assert_eq!(
            Lease::decode(v),
            Some(Lease {
                holder: "scheduler-2".into(),
                epoch: Some(17)
            })
        );
        // The very first write has no epoch yet.
        let first =
            br#"{"holder":"s","since":"2026-01-01T00:00:00Z","renewed_at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(Lease::decode(first).map(|l| l.epoch), Some(None));
        assert_eq!(Lease::decode(b"garbage"), None);
    }
}
