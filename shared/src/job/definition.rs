//! [`Definition`]: the compact form of a valid job that every scheduler
//! replica keeps for each job.

use super::{Job, JobError, JobSpec, Misfire, Overlap};
use crate::schedule::Schedule;

/// A valid definition as a scheduler replica keeps it, possibly for a
/// million jobs at once: the bytes as stored and what planning needs (about
/// half the memory of a decoded [`Job`]). The full job is decoded from the
/// bytes when a fire or an API reply needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    raw: Box<[u8]>,
    schedule: Schedule,
    id: Box<str>,
    group: Box<str>,
    shards: u32,
    history: u32,
    paused: bool,
    misfire: Misfire,
    misfire_limit: u16,
    overlap: Overlap,
    on_success: Box<[Box<str>]>,
}

impl Definition {
    /// Decodes and validates, like [`Job::decode`].
    pub fn decode(bytes: &[u8], key: Option<&str>) -> Result<Definition, JobError> {
        let job = Job::decode(bytes, key)?;
        Ok(Definition {
            raw: bytes.into(),
            id: job.spec.id.as_str().into(),
            group: job.spec.group.as_str().into(),
            shards: job.shard_count(),
            history: job.history(),
            paused: job.paused(),
            misfire: job.misfire(),
            misfire_limit: u16::try_from(job.misfire_limit()).unwrap_or(u16::MAX),
            overlap: job.overlap(),
            on_success: job.on_success().iter().map(|c| c.as_str().into()).collect(),
            schedule: job.schedule,
        })
    }

    /// The full job. The bytes were valid when this was made, so this fails
    /// only if validation itself changed since.
    pub fn job(&self) -> Result<Job, JobError> {
        Job::decode(&self.raw, Some(&self.id))
    }

    /// The definition as written, without validating it again.
    pub fn spec(&self) -> Result<JobSpec, JobError> {
        JobSpec::decode(&self.raw)
    }

    /// The bytes as stored.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// Fires kept in the run history.
    pub fn history(&self) -> u32 {
        self.history
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// Jobs fired when every shard of a fire of this one succeeded.
    pub fn on_success(&self) -> &[Box<str>] {
        &self.on_success
    }

    /// Whether the scheduler waits for each fire's end (see [`Job::tracked`]).
    pub fn tracked(&self) -> bool {
        !self.overlap.is_allow()
            || self.schedule.fixed_delay().is_some()
            || !self.on_success.is_empty()
    }

    pub fn misfire(&self) -> Misfire {
        self.misfire
    }

    /// Most late instants `fire_all` fires.
    pub fn misfire_limit(&self) -> u32 {
        u32::from(self.misfire_limit)
    }
}
