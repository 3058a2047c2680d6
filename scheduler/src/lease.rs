//! The leader lease: one key in the lease bucket whose lifetime is the
//! bucket's max age.
//!
//! A standby takes the lease with `create` (succeeds only when the key is
//! absent, i.e. the holder released it or stopped renewing and the server
//! expired it). The holder renews with `update` at the revision it last
//! wrote, well inside the lifetime. Each successful write moves a local
//! monotonic deadline to `send time + ttl - margin`: the server can only
//! expire the key after `receive time + ttl`, so a holder that stops firing
//! at its deadline never fires once another replica may hold the lease.
//! The epoch is the revision at which the lease was taken; it grows with
//! every takeover and travels in every shard message.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What this replica may do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    Follower,
    Leader { epoch: u64, deadline: Instant },
}

impl Leadership {
    /// The epoch, if leading and the local deadline has not passed.
    pub fn valid_epoch(&self) -> Option<u64> {
        match *self {
            Leadership::Leader { epoch, deadline } if Instant::now() < deadline => Some(epoch),
            _ => None,
        }
    }
}

/// Stored value of the lease key (for humans: `nats kv get jetcron_lease leader`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseValue {
    pub holder: String,
    pub since: chrono::DateTime<Utc>,
    pub renewed_at: chrono::DateTime<Utc>,
    /// The holder's epoch: the revision at which it took the lease. Absent
    /// only in the very first write, before the revision is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub holder: String,
    pub key: String,
    pub ttl: Duration,
    pub poll: Duration,
}

impl LeaseSettings {
    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn margin(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(100))
    }

    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl.saturating_sub(self.margin())
    }
}

/// Runs the lease until `shutdown`, publishing changes on the returned channel.
/// On shutdown a held lease is deleted so that a standby takes over at once.
pub fn spawn(
    kv: kv::Store,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> (watch::Receiver<Leadership>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Leadership::Follower);
    let task = tokio::spawn(async move {
        let mut lease = Lease {
            kv,
            settings,
            tx,
            revision: 0,
            epoch: 0,
            since: Utc::now(),
        };
        tokio::select! {
            _ = lease.run() => {}
            _ = shutdown.cancelled() => {}
        }
        lease.release().await;
    });
    (rx, task)
}

struct Lease {
    kv: kv::Store,
    settings: LeaseSettings,
    tx: watch::Sender<Leadership>,
    /// Revision of our last write while leading, 0 when following.
    revision: u64,
    /// Revision at which we took the lease, 0 when following.
    epoch: u64,
    since: chrono::DateTime<Utc>,
}

impl Lease {
    fn value(&self) -> Bytes {
        let v = LeaseValue {
            holder: self.settings.holder.clone(),
            since: self.since,
            renewed_at: Utc::now(),
            epoch: (self.epoch != 0).then_some(self.epoch),
        };
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    async fn run(&mut self) {
        loop {
            if self.revision == 0 {
                self.try_take().await;
                if self.revision == 0 {
                    sleep(self.settings.poll).await;
                }
            } else {
                sleep(self.settings.renew_every()).await;
                self.renew().await;
            }
        }
    }

    async fn try_take(&mut self) {
        self.since = Utc::now();
        let sent = Instant::now();
        match self.kv.create(&self.settings.key, self.value()).await {
            Ok(revision) => {
                self.revision = revision;
                self.epoch = revision;
                let deadline = self.settings.deadline(sent);
                info!(epoch = revision, holder = %self.settings.holder, "took the leader lease");
                self.tx.send_replace(Leadership::Leader {
                    epoch: revision,
                    deadline,
                });
                // Write the epoch into the value at once, for `status`.
                self.renew().await;
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => debug!(error = %e, "cannot reach the lease bucket"),
        }
    }

    /// Renews until it succeeds, the lease is lost to another replica, or the
    /// local deadline passes.
    async fn renew(&mut self) {
        loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout(
                self.settings.ttl,
                self.kv
                    .update(&self.settings.key, self.value(), self.revision),
            )
            .await;
            match attempt {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    let deadline = self.settings.deadline(sent);
                    self.tx.send_modify(|l| {
                        if let Leadership::Leader { deadline: d, .. } = l {
                            *d = deadline;
                        }
                    });
                    return;
                }
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    warn!("lost the leader lease to another replica");
                    return self.step_down();
                }
                Ok(Err(e)) => debug!(error = %e, "lease renewal failed; retrying"),
                Err(_) => debug!("lease renewal timed out; retrying"),
            }
            let expired = match *self.tx.borrow() {
                Leadership::Leader { deadline, .. } => Instant::now() >= deadline,
                Leadership::Follower => true,
            };
            if expired {
                warn!("could not renew the leader lease in time; stepping down");
                return self.step_down();
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    fn step_down(&mut self) {
        self.revision = 0;
        self.epoch = 0;
        self.tx.send_replace(Leadership::Follower);
    }

    async fn release(&mut self) {
        if self.revision == 0 {
            return;
        }
        let valid = self.tx.borrow().valid_epoch().is_some();
        self.tx.send_replace(Leadership::Follower);
        if valid {
            let res = tokio::time::timeout(
                Duration::from_secs(2),
                self.kv
                    .delete_expect_revision(&self.settings.key, Some(self.revision)),
            )
            .await;
            match res {
                Ok(Ok(())) => info!("released the leader lease"),
                _ => debug!("could not release the leader lease; it will expire"),
            }
        }
        self.revision = 0;
        self.epoch = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ttl_ms: u64) -> LeaseSettings {
        LeaseSettings {
            holder: "a".into(),
            key: "leader".into(),
            ttl: Duration::from_millis(ttl_ms),
            poll: Duration::from_millis(250),
        }
    }

    #[test]
    fn renewal_comes_well_inside_the_lifetime_and_the_deadline_before_it() {
        let s = settings(3000);
        assert_eq!(s.renew_every(), Duration::from_secs(1));
        let sent = Instant::now();
        // The server expires the key no earlier than receive time + ttl,
        // which is after send time + ttl; the deadline is a margin before.
        assert_eq!(s.deadline(sent), sent + Duration::from_millis(2700));
        assert!(s.deadline(sent) < sent + s.ttl);
        // Short lifetimes keep a margin of at least 100 ms.
        assert_eq!(
            settings(500).deadline(sent),
            sent + Duration::from_millis(400)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_past_its_deadline_has_no_valid_epoch() {
        let s = settings(3000);
        let l = Leadership::Leader {
            epoch: 7,
            deadline: s.deadline(Instant::now()),
        };
        assert_eq!(l.valid_epoch(), Some(7));
        tokio::time::advance(Duration::from_millis(2699)).await;
        assert_eq!(l.valid_epoch(), Some(7));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.valid_epoch(), None);
        assert_eq!(Leadership::Follower.valid_epoch(), None);
    }
}
