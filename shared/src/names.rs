//! Every NATS resource and subject name, derived from one prefix.
//!
//! With the default prefix `jetcron` the names are the ones in the README:
//! buckets `jetcron_jobs`, `jetcron_state`, `jetcron_lease`, `jetcron_workers`,
//! streams `JETCRON_WORK`, `JETCRON_RESULTS`, `JETCRON_EVENTS`, subjects under
//! `jetcron.>`. Two deployments with different prefixes share a NATS account
//! without seeing each other.

use thiserror::Error;

use crate::job::Run;

/// The default prefix for every name.
pub const DEFAULT_PREFIX: &str = "jetcron";

/// A prefix is refused when it could not be part of a subject or bucket name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("prefix '{0}' must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter")]
pub struct InvalidPrefix(pub String);

/// Start of every tick record key in the state bucket.
const TICK_PREFIX: &str = "=tick.";

/// All resource and subject names of one jetcron deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Names {
    pub fn new(prefix: &str) -> Result<Names, InvalidPrefix> {
        let ok = (1..=32).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Names {
                prefix: prefix.to_string(),
            })
        } else {
            Err(InvalidPrefix(prefix.to_string()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn upper(&self) -> String {
        self.prefix.to_ascii_uppercase().replace('-', "_")
    }

    fn bucket(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix.replace('-', "_"))
    }

    /// KV bucket holding job definitions, key = job id.
    pub fn jobs_bucket(&self) -> String {
        self.bucket("jobs")
    }

    /// KV bucket holding per-job fire state, key = job id.
    pub fn state_bucket(&self) -> String {
        self.bucket("state")
    }

    /// KV bucket holding the leader lease.
    pub fn lease_bucket(&self) -> String {
        self.bucket("lease")
    }

    /// KV bucket holding worker heartbeats.
    pub fn workers_bucket(&self) -> String {
        self.bucket("workers")
    }

    /// KV bucket holding run history: fire records and shard records.
    pub fn runs_bucket(&self) -> String {
        self.bucket("runs")
    }

    /// Key of a fire record in the runs bucket: `<job>.<slot>`. Slots form a
    /// ring of the job's history size (`s0`, `s1`, ... for scheduled fires,
    /// `m0`, `m1`, ... for triggered ones), so a new fire overwrites the
    /// oldest and history stays bounded without deleting anything.
    pub fn run_fire_key(&self, job: &str, slot: &str) -> String {
        format!("{job}.{slot}")
    }

    /// Filter of every record of a job in the runs bucket.
    pub fn run_job_filter(&self, job: &str) -> String {
        format!("{job}.>")
    }

    /// Key of a worker heartbeat in the workers bucket: `<group>.<worker id>`.
    /// Worker ids with characters a key cannot hold are mapped to `_`.
    pub fn worker_key(&self, group: &str, worker: &str) -> String {
        format!("{group}.{}", key_token(worker))
    }

    /// Key of a scheduler replica's heartbeat in the lease bucket.
    pub fn replica_key(&self, replica: &str) -> String {
        format!("replica.{}", key_token(replica))
    }

    /// The one key of the lease bucket.
    pub fn lease_key(&self) -> &'static str {
        "leader"
    }

    /// Key of the leader's fence in the state and runs buckets. `=` cannot
    /// appear in a job id, so it never names a job's state or record.
    pub fn fence_key(&self) -> &'static str {
        "=fence"
    }

    /// Key of the leader's dispatch checkpoint in the state bucket: every
    /// fire decided at or before it has all its shards and events stored.
    pub fn checkpoint_key(&self) -> &'static str {
        "=checkpoint"
    }

    /// Key of the `part`th record of tick `n` of the leader of `epoch` in
    /// the state bucket: the fire states of one batch of fires, stored as
    /// one message instead of one per job (see the scheduler's `state`).
    pub fn tick_key(&self, epoch: u64, n: u64, part: usize) -> String {
        format!("{TICK_PREFIX}{epoch}.{n}.{part}")
    }

    /// Whether a state bucket key is a tick record's.
    pub fn is_tick_key(key: &str) -> bool {
        key.starts_with(TICK_PREFIX)
    }

    /// Subject filter of every tick record in the state bucket.
    pub fn tick_filter(&self) -> String {
        format!("$KV.{}.{TICK_PREFIX}>", self.state_bucket())
    }

    /// `jetcron.work.fence`: the leader's fence inside the work stream. It has
    /// three tokens, so no consumer's filter (`jetcron.work.<group>.*`,
    /// `jetcron.work.<group>.*.<handler>`) matches it and no worker ever
    /// consumes it.
    pub fn work_fence_subject(&self) -> String {
        format!("{}.work.fence", self.prefix)
    }

    /// `jetcron.work.*.>`: every shard message of every group, without the fence.
    pub fn work_shards_all(&self) -> String {
        format!("{}.work.*.>", self.prefix)
    }

    /// `jetcron.events.leader`: leader events, which are also the leader's
    /// fence inside the events stream.
    pub fn events_fence_subject(&self) -> String {
        self.event_subject("leader", None)
    }

    /// `$KV.<bucket>.<key>`: the subject a KV entry is stored under.
    pub fn kv_subject(bucket: &str, key: &str) -> String {
        format!("$KV.{bucket}.{key}")
    }

    /// Work-queue stream of shard messages.
    pub fn work_stream(&self) -> String {
        format!("{}_WORK", self.upper())
    }

    /// Stream of run results.
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.upper())
    }

    /// Stream of events.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// `jetcron.work.>`: everything the work stream holds.
    pub fn work_all(&self) -> String {
        format!("{}.work.>", self.prefix)
    }

    /// `jetcron.work.<group>.>`: one group's shard messages.
    pub fn work_group(&self, group: &str) -> String {
        format!("{}.work.{group}.>", self.prefix)
    }

    /// `jetcron.work.<group>.<job>`: where a shell or HTTP job's shard
    /// messages go.
    pub fn work_subject(&self, group: &str, job: &str) -> String {
        format!("{}.work.{group}.{job}", self.prefix)
    }

    /// `jetcron.work.<group>.<job>.<handler>`: where a handler job's shard
    /// messages go, so that only workers with that handler read them.
    pub fn work_handler_subject(&self, group: &str, job: &str, handler: &str) -> String {
        format!("{}.work.{group}.{job}.{handler}", self.prefix)
    }

    /// Where the shard messages of a job that runs `run` go.
    pub fn shard_subject(&self, group: &str, job: &str, run: &Run) -> String {
        match run.handler() {
            Some(handler) => self.work_handler_subject(group, job, handler),
            None => self.work_subject(group, job),
        }
    }

    /// `jetcron.work.*.<job>`: a shell or HTTP job's shard messages, in
    /// whatever group they were dispatched to.
    pub fn work_job(&self, job: &str) -> String {
        format!("{}.work.*.{job}", self.prefix)
    }

    /// `jetcron.work.*.<job>.*`: a handler job's shard messages, in whatever
    /// group and for whatever handler they were dispatched.
    pub fn work_job_handlers(&self, job: &str) -> String {
        format!("{}.work.*.{job}.*", self.prefix)
    }

    /// `jetcron.work.<group>.*`: the filter of a group's shared consumer,
    /// its shell and HTTP shards (one token after the group).
    pub fn work_plain(&self, group: &str) -> String {
        format!("{}.work.{group}.*", self.prefix)
    }

    /// `jetcron.work.<group>.*.<handler>`: the filter of one handler's
    /// consumer in a group.
    pub fn work_handler(&self, group: &str, handler: &str) -> String {
        format!("{}.work.{group}.*.{handler}", self.prefix)
    }

    /// Durable pull consumer shared by every worker of a group, for its
    /// shell and HTTP shards.
    pub fn work_consumer(&self, group: &str) -> String {
        format!("{}-{group}", self.prefix)
    }

    /// Durable pull consumer shared by the workers of a group that know
    /// `handler`: `jetcron-<group>@<handler>`. `@` is in no group name, so
    /// it cannot be taken for another group's consumer.
    pub fn work_handler_consumer(&self, group: &str, handler: &str) -> String {
        format!("{}-{group}@{handler}", self.prefix)
    }

    /// `jetcron.results.>`
    pub fn results_all(&self) -> String {
        format!("{}.results.>", self.prefix)
    }

    /// `jetcron.results.<job>`
    pub fn results_subject(&self, job: &str) -> String {
        format!("{}.results.{job}", self.prefix)
    }

    /// Work-queue stream of the end notices of tracked fires' shards.
    pub fn ends_stream(&self) -> String {
        format!("{}_ENDS", self.upper())
    }

    /// `jetcron.ends.>`
    pub fn ends_all(&self) -> String {
        format!("{}.ends.>", self.prefix)
    }

    /// `jetcron.ends.<job>`
    pub fn ends_subject(&self, job: &str) -> String {
        format!("{}.ends.{job}", self.prefix)
    }

    /// Durable consumer of the ends stream, used by the leader.
    pub fn ends_consumer(&self) -> String {
        format!("{}-scheduler", self.prefix)
    }

    /// `jetcron.events.replaced.*`: the `replaced` events, one subject per job.
    pub fn replaced_all(&self) -> String {
        format!("{}.events.replaced.*", self.prefix)
    }

    /// `jetcron.events.>`
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `jetcron.events.<kind>.<job>`; the leader event has no job: `jetcron.events.leader`.
    pub fn event_subject(&self, kind: &str, job: Option<&str>) -> String {
        match job {
            Some(job) => format!("{}.events.{kind}.{job}", self.prefix),
            None => format!("{}.events.{kind}", self.prefix),
        }
    }

    /// Name of the control micro service.
    pub fn service_name(&self) -> String {
        self.prefix.clone()
    }

    /// `jetcron.api`: the control API's subject prefix.
    pub fn api_prefix(&self) -> String {
        format!("{}.api", self.prefix)
    }

    /// `jetcron.api.<endpoint>`, e.g. `jetcron.api.job.put`.
    pub fn api_subject(&self, endpoint: &str) -> String {
        format!("{}.api.{endpoint}", self.prefix)
    }
}

/// Maps a free-form name onto one KV key token.
pub fn key_token(name: &str) -> String {
    let t: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '=' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "_".to_string() } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_readme() {
        let n = Names::default();
        assert_eq!(n.jobs_bucket(), "jetcron_jobs");
        assert_eq!(n.state_bucket(), "jetcron_state");
        assert_eq!(n.lease_bucket(), "jetcron_lease");
        assert_eq!(n.workers_bucket(), "jetcron_workers");
        assert_eq!(n.work_stream(), "JETCRON_WORK");
        assert_eq!(n.results_stream(), "JETCRON_RESULTS");
        assert_eq!(n.events_stream(), "JETCRON_EVENTS");
        assert_eq!(
            n.work_subject("billing", "nightly"),
            "jetcron.work.billing.nightly"
        );
        assert_eq!(n.work_job("nightly"), "jetcron.work.*.nightly");
        assert_eq!(
            n.shard_subject("billing", "remind", &Run::Handler("send-reminders".into())),
            "jetcron.work.billing.remind.send-reminders"
        );
        assert_eq!(
            n.shard_subject("billing", "nightly", &Run::Shell("true".into())),
            "jetcron.work.billing.nightly"
        );
        assert_eq!(n.work_job_handlers("remind"), "jetcron.work.*.remind.*");
        assert_eq!(n.work_plain("billing"), "jetcron.work.billing.*");
        assert_eq!(
            n.work_handler("billing", "send-reminders"),
            "jetcron.work.billing.*.send-reminders"
        );
        assert_eq!(
            n.work_handler_consumer("billing", "send-reminders"),
            "jetcron-billing@send-reminders"
        );
        assert_eq!(n.results_subject("nightly"), "jetcron.results.nightly");
        assert_eq!(n.event_subject("dead", Some("x")), "jetcron.events.dead.x");
        assert_eq!(n.event_subject("leader", None), "jetcron.events.leader");
        assert_eq!(n.api_subject("job.put"), "jetcron.api.job.put");
        assert_eq!(n.work_consumer("default"), "jetcron-default");
        assert_eq!(n.work_fence_subject(), "jetcron.work.fence");
        assert_eq!(n.events_fence_subject(), "jetcron.events.leader");
        assert_eq!(
            Names::kv_subject("jetcron_state", n.fence_key()),
            "$KV.jetcron_state.=fence"
        );
    }

    #[test]
    fn fence_names_never_collide_with_jobs_or_groups() {
        let n = Names::default();
        // Job ids and group names are A-Z a-z 0-9 _ -, so '=' keeps the
        // fence and checkpoint keys apart from every job's key.
        for key in [n.fence_key(), n.checkpoint_key()] {
            assert!(!crate::job::is_valid_id(key), "{key}");
        }
        // The work fence has one token fewer than any shard subject.
        assert_eq!(n.work_fence_subject().split('.').count(), 3);
        assert_eq!(n.work_subject("g", "j").split('.').count(), 4);
    }

    #[test]
    fn prefix_with_dash_maps_to_valid_bucket_and_stream_names() {
        let n = Names::new("team-a").unwrap();
        assert_eq!(n.jobs_bucket(), "team_a_jobs");
        assert_eq!(n.work_stream(), "TEAM_A_WORK");
        assert_eq!(n.work_subject("g", "j"), "team-a.work.g.j");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["", "Jetcron", "a.b", "a b", "1abc", "a>", &"x".repeat(33)] {
            assert_eq!(
                Names::new(bad),
                Err(InvalidPrefix(bad.to_string())),
                "{bad}"
            );
        }
    }
}
