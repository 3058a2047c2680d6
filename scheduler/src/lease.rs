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
//!
//! A write whose answer is lost (the link stalled, the server restarted) may
//! still be stored later: the client delivers what it buffered once the
//! link is back. So the lease never forgets its writes. Each take carries a
//! fresh `term` in the value; a create that got no answer is remembered,
//! and when the key turns out to hold one of those terms, the replica
//! adopts it at once (renews and leads, or releases it if it cannot renew).
//! A late create therefore never holds the lease for a replica that does not
//! lead. Likewise a renewal refused as stale is checked against the stored
//! term: if it is ours, an earlier renewal landed late and the lease is kept.
//! What the lease cannot stop, a deposed leader's other late writes, the
//! server refuses through the fences ([`crate::fence`]).

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::SchedulerMetrics;

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
    /// Identifies one take of the lease by one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
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

    /// Longest wait for one lease read or write.
    fn attempt_limit(&self) -> Duration {
        self.renew_every().max(Duration::from_millis(200))
    }

    fn margin(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(100))
    }

    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl.saturating_sub(self.margin())
    }
}

/// The running lease: leadership changes, and a way for the engine to
/// give back a term it can no longer use (send its epoch).
#[derive(Debug)]
pub struct LeaseHandle {
    pub leadership: watch::Receiver<Leadership>,
    pub resign: mpsc::Sender<u64>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Runs the lease until `shutdown`, publishing changes on the returned channel.
/// On shutdown a held lease is deleted so that a standby takes over at once.
pub fn spawn(
    kv: kv::Store,
    settings: LeaseSettings,
    shutdown: CancellationToken,
    metrics: SchedulerMetrics,
) -> LeaseHandle {
    let (tx, rx) = watch::channel(Leadership::Follower);
    let (resign, mut resigned) = mpsc::channel::<u64>(4);
    let task = tokio::spawn(async move {
        let mut lease = Lease {
            kv,
            settings,
            tx,
            revision: 0,
            epoch: 0,
            term: String::new(),
            abandoned: VecDeque::new(),
            lapsed: None,
            since: Utc::now(),
            metrics,
        };
        loop {
            tokio::select! {
                _ = lease.run() => {}
                _ = shutdown.cancelled() => break,
                Some(epoch) = resigned.recv() => {
                    if lease.epoch == epoch {
                        info!(epoch, "giving the lease back");
                        lease.release().await;
                    }
                }
            }
        }
        lease.release().await;
    });
    LeaseHandle {
        leadership: rx,
        resign,
        task,
    }
}

struct Lease {
    kv: kv::Store,
    settings: LeaseSettings,
    tx: watch::Sender<Leadership>,
    /// Revision of our last write while leading, 0 when following.
    revision: u64,
    /// Revision at which we took the lease, 0 when following.
    epoch: u64,
    /// The term of the current take.
    term: String,
    /// Creates that got no answer, and when they were sent: any of them
    /// may still be stored.
    abandoned: VecDeque<(String, Instant)>,
    /// The term this replica stopped leading because it could not renew
    /// in time (not because another replica took the lease): the key may
    /// still hold it.
    lapsed: Option<String>,
    since: chrono::DateTime<Utc>,
    metrics: SchedulerMetrics,
}

/// How long an unanswered create is remembered (a client buffers writes
/// only while it reconnects).
const ABANDONED_KEEP: Duration = Duration::from_secs(600);
/// Most unanswered creates remembered.
const ABANDONED_MAX: usize = 256;

impl Lease {
    fn value(&self) -> Bytes {
        self.value_of(&self.term, self.epoch)
    }

    fn value_of(&self, term: &str, epoch: u64) -> Bytes {
        let v = LeaseValue {
            holder: self.settings.holder.clone(),
            since: self.since,
            renewed_at: Utc::now(),
            epoch: (epoch != 0).then_some(epoch),
            term: Some(term.to_string()),
        };
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    async fn run(&mut self) {
        let mut released: Option<kv::Watch> = None;
        loop {
            if self.revision == 0 {
                self.try_take().await;
                if self.revision == 0 {
                    self.await_release(&mut released).await;
                }
            } else {
                released = None;
                sleep(self.settings.renew_every()).await;
                self.renew().await;
            }
        }
    }

    /// Waits for the next try at the lease: a poll interval, cut short when
    /// the holder deletes the key (a graceful stop), so that a standby takes
    /// over at once. A key that expires is noticed by the poll.
    async fn await_release(&self, watch: &mut Option<kv::Watch>) {
        if watch.is_none() {
            let open = timeout(
                self.settings.attempt_limit(),
                self.kv.watch(&self.settings.key),
            );
            *watch = match open.await {
                Ok(Ok(w)) => Some(w),
                _ => None,
            };
        }
        let Some(w) = watch.as_mut() else {
            return sleep(self.settings.poll).await;
        };
        let poll = sleep(self.settings.poll);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                _ = &mut poll => return,
                change = w.next() => match change {
                    Some(Ok(e)) if e.operation != Operation::Put => return,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        *watch = None;
                        return poll.await;
                    }
                },
            }
        }
    }

    async fn try_take(&mut self) {
        let term = nuid::next().to_string();
        self.since = Utc::now();
        let sent = Instant::now();
        let create = self.kv.create(&self.settings.key, self.value_of(&term, 0));
        match timeout(self.settings.attempt_limit(), create).await {
            Ok(Ok(revision)) => self.lead(term, revision, sent).await,
            Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => self.adopt().await,
            Ok(Err(e)) => {
                debug!(error = %e, "lease create failed; it may still land");
                self.abandon(term, sent);
            }
            Err(_) => {
                debug!("lease create unanswered; it may still land");
                self.abandon(term, sent);
            }
        }
    }

    fn abandon(&mut self, term: String, sent: Instant) {
        self.abandoned.push_back((term, sent));
        while self.abandoned.len() > ABANDONED_MAX {
            self.abandoned.pop_front();
        }
    }

    /// Took the lease at `revision` with a write sent at `sent`.
    async fn lead(&mut self, term: String, revision: u64, sent: Instant) {
        self.leading(term, revision, revision, sent);
        // Write the epoch into the value at once, for `status`.
        self.renew().await;
    }

    /// Leads in the term taken at revision `epoch`; `revision` is the last
    /// write, sent at `sent`.
    fn leading(&mut self, term: String, epoch: u64, revision: u64, sent: Instant) {
        self.revision = revision;
        self.epoch = epoch;
        self.term = term;
        self.abandoned.clear();
        let deadline = self.settings.deadline(sent);
        info!(epoch, holder = %self.settings.holder, "took the leader lease");
        self.tx.send_replace(Leadership::Leader { epoch, deadline });
    }

    /// The key is held: if by one of our unanswered creates, lead with it
    /// now (or give it back), instead of letting it block takeover until it
    /// expires; if by our own lapsed term, take it back.
    async fn adopt(&mut self) {
        let now = Instant::now();
        self.abandoned
            .retain(|(_, sent)| now.duration_since(*sent) < ABANDONED_KEEP);
        if self.abandoned.is_empty() && self.lapsed.is_none() {
            return;
        }
        let Some((revision, value)) = self.read().await else {
            return;
        };
        if value.holder == self.settings.holder && value.term.is_some() && value.term == self.lapsed
        {
            return self.reclaim(revision).await;
        }
        let ours = value.holder == self.settings.holder
            && value
                .term
                .as_ref()
                .is_some_and(|t| self.abandoned.iter().any(|(a, _)| a == t));
        if !ours {
            return;
        }
        let term = value.term.unwrap_or_default();
        info!(
            epoch = revision,
            "a lease create whose answer was lost has been stored; adopting it"
        );
        // Nobody renewed it, so its revision is the one it was created at.
        let sent = Instant::now();
        let update = self
            .kv
            .update(&self.settings.key, self.value_of(&term, revision), revision);
        match timeout(self.settings.attempt_limit(), update).await {
            Ok(Ok(renewed)) => self.leading(term, revision, renewed, sent),
            _ => {
                warn!("cannot renew the adopted lease; releasing it");
                let release = self
                    .kv
                    .delete_expect_revision(&self.settings.key, Some(revision));
                let _ = timeout(self.settings.attempt_limit(), release).await;
            }
        }
    }

    /// The key still holds the term this replica let lapse (its server was
    /// unreachable, say): nobody else can have led since, so it takes the
    /// lease back at that revision as a new term with a new epoch, instead
    /// of waiting for the key to expire.
    async fn reclaim(&mut self, revision: u64) {
        let term = nuid::next().to_string();
        let sent = Instant::now();
        let update = self
            .kv
            .update(&self.settings.key, self.value_of(&term, 0), revision);
        match timeout(self.settings.attempt_limit(), update).await {
            Ok(Ok(taken)) => {
                info!(
                    epoch = taken,
                    "taking back the lease this replica let lapse"
                );
                self.lapsed = None;
                self.lead(term, taken, sent).await;
            }
            Ok(Err(e)) => debug!(error = %e, "cannot take back the lapsed lease"),
            Err(_) => {
                debug!("taking back the lapsed lease unanswered; it may still land");
                self.abandon(term, sent);
            }
        }
    }

    /// The stored lease: its revision and value.
    async fn read(&self) -> Option<(u64, LeaseValue)> {
        let entry = timeout(
            self.settings.attempt_limit(),
            self.kv.entry(&self.settings.key),
        )
        .await
        .ok()?
        .ok()??;
        if entry.operation != Operation::Put {
            return None;
        }
        let value = serde_json::from_slice(&entry.value).ok()?;
        Some((entry.revision, value))
    }

    /// Renews until it succeeds, the lease is lost to another replica, or the
    /// local deadline passes.
    async fn renew(&mut self) {
        loop {
            let sent = Instant::now();
            let attempt = timeout(
                self.settings.attempt_limit(),
                self.kv
                    .update(&self.settings.key, self.value(), self.revision),
            )
            .await;
            self.metrics.renewal(matches!(attempt, Ok(Ok(_))));
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
                    match self.read().await {
                        // An earlier renewal of ours was stored after we
                        // stopped waiting for it: carry on from it.
                        Some((revision, v))
                            if v.holder == self.settings.holder
                                && v.term.as_deref() == Some(self.term.as_str()) =>
                        {
                            debug!(revision, "a late renewal of ours was stored");
                            self.revision = revision;
                        }
                        _ => {
                            warn!("lost the leader lease to another replica");
                            return self.step_down(false);
                        }
                    }
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
                return self.step_down(true);
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops leading; `lapsed`: because renewing failed, so the key may
    /// still hold this term.
    fn step_down(&mut self, lapsed: bool) {
        self.lapsed = lapsed.then(|| std::mem::take(&mut self.term));
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
        } else {
            self.lapsed = Some(std::mem::take(&mut self.term));
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
