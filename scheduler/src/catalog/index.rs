//! The job index: every definition in the jobs bucket as the catalog last
//! read it, in memory, so that `job.list` and `status` answer without
//! reading the bucket.
//!
//! Keys are ordered (`BTreeMap`) so that a page starts after a cursor; valid
//! definitions share the `Arc<Definition>` the catalog decoded for the engine.
//! Counts per state and per group are kept as entries come and go. The
//! index also says how far it has read ([`Progress`]): the highest stream
//! sequence applied, and whether the first full read of the bucket is done,
//! so that a reader can wait until it holds what the bucket held when a
//! request came.
//!
//! One writer (the catalog watch), many readers: a `RwLock` that readers
//! hold only to copy out a page (`Arc` clones) or the counts.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use jetcron_shared::api::JobState;
use jetcron_shared::{Definition, JobError};
use tokio::sync::watch;

use super::CatalogEvent;

/// Entries one page may look at before it stops and hands back a cursor, so
/// that a filter that matches little answers as fast as one that matches a
/// lot.
pub const SCAN_BUDGET: usize = 100_000;

/// What is stored under a key.
#[derive(Debug, Clone)]
pub enum Def {
    /// A valid definition: the catalog's decoded job.
    Valid(Arc<Definition>),
    /// What is stored does not decode or validate: why.
    Invalid(Arc<JobError>),
}

impl Def {
    pub fn state(&self) -> JobState {
        match self {
            Def::Valid(job) if job.paused() => JobState::Paused,
            Def::Valid(_) => JobState::Active,
            Def::Invalid(_) => JobState::Invalid,
        }
    }

    fn group(&self) -> Option<&str> {
        match self {
            Def::Valid(job) => Some(job.group()),
            Def::Invalid(_) => None,
        }
    }
}

#[derive(Debug)]
struct Slot {
    revision: u64,
    /// The read of the bucket that last saw this key (see [`JobIndex::begin_read`]).
    generation: u32,
    def: Def,
}

/// Valid jobs of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCount {
    pub active: u64,
    pub paused: u64,
}

impl GroupCount {
    pub fn total(&self) -> u64 {
        self.active + self.paused
    }
}

/// How far the index has read the jobs bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Highest stream sequence (revision) applied.
    pub applied: u64,
    /// The first full read of the bucket is done.
    pub loaded: bool,
}

#[derive(Debug, Default)]
struct Table {
    slots: BTreeMap<Box<str>, Slot>,
    /// Keys whose definition is invalid (few, normally), for `status` and
    /// the `invalid` filter.
    invalid: BTreeSet<Box<str>>,
    /// Groups with at least one valid job.
    groups: BTreeMap<Box<str>, GroupCount>,
    active: u64,
    paused: u64,
    generation: u32,
}

impl Table {
    fn put(&mut self, id: &str, revision: u64, def: Def) {
        let slot = Slot {
            revision,
            generation: self.generation,
            def: def.clone(),
        };
        // The old share first: an invalid key that stays invalid stays listed.
        if let Some(old) = self.slots.insert(id.into(), slot) {
            self.count(&old.def, false, id);
        }
        self.count(&def, true, id);
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.slots.remove(id) {
            self.count(&old.def, false, id);
        }
    }

    /// Adds (`add`) or takes away one definition's share of the counts.
    fn count(&mut self, def: &Def, add: bool, id: &str) {
        let step = |n: &mut u64| {
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        };
        match def {
            Def::Invalid(_) => {
                if add {
                    self.invalid.insert(id.into());
                } else {
                    self.invalid.remove(id);
                }
            }
            Def::Valid(job) => {
                let paused = job.paused();
                step(if paused {
                    &mut self.paused
                } else {
                    &mut self.active
                });
                let group = job.group();
                if !self.groups.contains_key(group) {
                    self.groups.insert(group.into(), GroupCount::default());
                }
                if let Some(g) = self.groups.get_mut(group) {
                    step(if paused { &mut g.paused } else { &mut g.active });
                    if g.total() == 0 {
                        self.groups.remove(group);
                    }
                }
            }
        }
    }
}

/// Which jobs a page holds.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Start after this id.
    pub after: Option<&'a str>,
    pub group: Option<&'a str>,
    pub state: Option<JobState>,
    /// At most this many jobs (at least 1).
    pub limit: usize,
}

impl Query<'_> {
    fn matches(&self, def: &Def) -> bool {
        self.state.is_none_or(|s| s == def.state())
            && self.group.is_none_or(|g| def.group() == Some(g))
    }
}

/// One listed job.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub revision: u64,
    pub def: Def,
}

/// A page of the index.
#[derive(Debug, Default)]
pub struct Page {
    pub jobs: Vec<Listed>,
    /// Where the next page starts; `None` when nothing matching follows.
    pub next: Option<String>,
}

/// The counts `status` shows.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub active: u64,
    pub paused: u64,
    pub invalid: u64,
    /// The first invalid definitions by id: (id, error).
    pub first_invalid: Vec<(String, String)>,
    /// Every group with a valid job, by name.
    pub groups: Vec<(String, GroupCount)>,
    pub progress: Progress,
}

/// The shared index; clones are handles on the same one.
#[derive(Debug, Clone)]
pub struct JobIndex {
    table: Arc<RwLock<Table>>,
    progress: Arc<watch::Sender<Progress>>,
}

impl Default for JobIndex {
    fn default() -> Self {
        JobIndex::new()
    }
}

impl JobIndex {
    pub fn new() -> JobIndex {
        JobIndex {
            table: Arc::default(),
            progress: Arc::new(watch::Sender::new(Progress::default())),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    // ---- the catalog's side ----

    /// A new read of the whole bucket starts (a new watch). Keys it does not
    /// deliver again are dropped when it is complete.
    pub fn begin_read(&self) {
        let mut t = self.write();
        t.generation = t.generation.wrapping_add(1);
    }

    /// Applies one watched entry at `revision`.
    pub fn apply(&self, revision: u64, event: &CatalogEvent) {
        {
            let mut t = self.write();
            match event {
                CatalogEvent::Upsert { job, .. } => {
                    t.put(job.id(), revision, Def::Valid(job.clone()))
                }
                CatalogEvent::Invalid { id, error, .. } => {
                    t.put(id, revision, Def::Invalid(Arc::new(error.clone())))
                }
                CatalogEvent::Remove { id } => t.remove(id),
            }
        }
        self.progress.send_if_modified(|p| {
            let newer = revision > p.applied;
            p.applied = p.applied.max(revision);
            newer
        });
    }

    /// The current read has delivered everything the bucket held when it
    /// began: whatever it did not deliver again is gone.
    pub fn read_complete(&self) {
        {
            let mut t = self.write();
            let current = t.generation;
            let stale: Vec<Box<str>> = t
                .slots
                .iter()
                .filter(|(_, s)| s.generation != current)
                .map(|(k, _)| k.clone())
                .collect();
            for id in stale {
                t.remove(&id);
            }
        }
        self.progress
            .send_if_modified(|p| !std::mem::replace(&mut p.loaded, true));
    }

    // ---- the readers' side ----

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Waits until the index has applied `revision` (at most `limit`);
    /// true when it has.
    pub async fn wait_for(&self, revision: u64, limit: Duration) -> bool {
        let mut rx = self.progress.subscribe();
        let reached = tokio::time::timeout(limit, rx.wait_for(|p| p.applied >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Jobs in the index.
    pub fn len(&self) -> usize {
        self.read().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The revision and definition stored under `id`.
    pub fn get(&self, id: &str) -> Option<(u64, Def)> {
        self.read()
            .slots
            .get(id)
            .map(|s| (s.revision, s.def.clone()))
    }

    /// One page, looking at no more than [`SCAN_BUDGET`] entries.
    pub fn page(&self, query: &Query<'_>) -> Page {
        self.page_within(query, SCAN_BUDGET)
    }

    /// One page, looking at no more than `budget` entries: when they run
    /// out, the page ends early and `next` is the last id looked at.
    pub fn page_within(&self, query: &Query<'_>, budget: usize) -> Page {
        let limit = query.limit.max(1);
        let budget = budget.max(1);
        let t = self.read();
        let from = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Page::default();
        let listed = |id: &str, slot: &Slot| Listed {
            id: id.to_string(),
            revision: slot.revision,
            def: slot.def.clone(),
        };
        if query.state == Some(JobState::Invalid) {
            // Invalid definitions have no group.
            if query.group.is_some() {
                return page;
            }
            for id in t.invalid.range::<str, _>((from, Bound::Unbounded)) {
                if page.jobs.len() == limit {
                    page.next = page.jobs.last().map(|j| j.id.clone());
                    break;
                }
                if let Some(slot) = t.slots.get(id) {
                    page.jobs.push(listed(id, slot));
                }
            }
            return page;
        }
        let mut last_looked: Option<&str> = None;
        let entries = t.slots.range::<str, _>((from, Bound::Unbounded));
        for (looked, (id, slot)) in entries.enumerate() {
            if looked == budget {
                page.next = last_looked.map(str::to_string);
                return page;
            }
            last_looked = Some(id);
            if !query.matches(&slot.def) {
                continue;
            }
            if page.jobs.len() == limit {
                page.next = page.jobs.last().map(|j| j.id.clone());
                return page;
            }
            page.jobs.push(listed(id, slot));
        }
        page
    }

    /// The counts, with at most `invalid_listed` invalid definitions named.
    pub fn counts(&self, invalid_listed: usize) -> Counts {
        let t = self.read();
        let first_invalid = t
            .invalid
            .iter()
            .take(invalid_listed)
            .filter_map(|id| match t.slots.get(id).map(|s| &s.def) {
                Some(Def::Invalid(e)) => Some((id.to_string(), e.to_string())),
                _ => None,
            })
            .collect();
        Counts {
            active: t.active,
            paused: t.paused,
            invalid: t.invalid.len() as u64,
            first_invalid,
            groups: t.groups.iter().map(|(g, c)| (g.to_string(), *c)).collect(),
            progress: self.progress(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn job(id: &str, group: &str, paused: bool) -> CatalogEvent {
        let json = format!(
            r#"{{"id":"{id}","schedule":"@yearly","group":"{group}","paused":{paused},"run":{{"shell":"true"}}}}"#
        );
        CatalogEvent::Upsert {
            job: Arc::new(Definition::decode(json.as_bytes(), Some(id)).unwrap()),
            revision: 0,
            written: Utc::now(),
        }
    }

    fn broken(id: &str) -> CatalogEvent {
        CatalogEvent::Invalid {
            id: id.into(),
            revision: 0,
            error: JobError::Syntax("nope".into()),
        }
    }

    fn remove(id: &str) -> CatalogEvent {
        CatalogEvent::Remove { id: id.into() }
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.jobs.iter().map(|j| j.id.as_str()).collect()
    }

    fn all() -> Query<'static> {
        Query {
            after: None,
            group: None,
            state: None,
            limit: 1000,
        }
    }

    #[test]
    fn counts_follow_puts_changes_and_removals() {
        let index = JobIndex::new();
        index.apply(1, &job("a", "g1", false));
        index.apply(2, &job("b", "g1", true));
        index.apply(3, &job("c", "g2", false));
        index.apply(4, &broken("d"));
        let c = index.counts(20);
        assert_eq!((c.active, c.paused, c.invalid), (2, 1, 1));
        assert_eq!(
            c.groups,
            vec![
                (
                    "g1".to_string(),
                    GroupCount {
                        active: 1,
                        paused: 1
                    }
                ),
                (
                    "g2".to_string(),
                    GroupCount {
                        active: 1,
                        paused: 0
                    }
                ),
            ]
        );
        assert_eq!(
            c.first_invalid,
            vec![("d".to_string(), "invalid JSON: nope".to_string())]
        );
        assert_eq!(c.progress.applied, 4);

        // A change moves a job between states and groups; a fixed
        // definition is no longer invalid; a removal counts down.
        index.apply(5, &job("a", "g2", true));
        index.apply(6, &job("d", "g2", false));
        index.apply(7, &remove("c"));
        index.apply(8, &remove("nothing"));
        let c = index.counts(20);
        assert_eq!((c.active, c.paused, c.invalid), (1, 2, 0));
        assert_eq!(
            c.groups,
            vec![
                (
                    "g1".to_string(),
                    GroupCount {
                        active: 0,
                        paused: 1
                    }
                ),
                (
                    "g2".to_string(),
                    GroupCount {
                        active: 1,
                        paused: 1
                    }
                ),
            ]
        );
        index.apply(9, &remove("b"));
        let groups: Vec<String> = index.counts(20).groups.into_iter().map(|g| g.0).collect();
        assert_eq!(groups, vec!["g2"], "an emptied group is gone");
        assert_eq!(
            index.get("a").map(|(r, d)| (r, d.state())),
            Some((5, JobState::Paused))
        );
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn pages_walk_in_id_order_after_the_cursor() {
        let index = JobIndex::new();
        for (i, id) in ["e", "a", "d", "b", "c"].iter().enumerate() {
            index.apply(i as u64 + 1, &job(id, "g", false));
        }
        let q = Query { limit: 2, ..all() };
        let p = index.page(&q);
        assert_eq!((ids(&p), p.next.as_deref()), (vec!["a", "b"], Some("b")));
        let p = index.page(&Query {
            after: Some("b"),
            ..q
        });
        assert_eq!((ids(&p), p.next.as_deref()), (vec!["c", "d"], Some("d")));
        let p = index.page(&Query {
            after: Some("d"),
            ..q
        });
        assert_eq!((ids(&p), p.next.as_deref()), (vec!["e"], None));
        // A cursor need not exist; the page starts after where it would be.
        let p = index.page(&Query {
            after: Some("bb"),
            ..q
        });
        assert_eq!(ids(&p), vec!["c", "d"]);
        let p = index.page(&Query {
            after: Some("e"),
            ..q
        });
        assert_eq!((p.jobs.len(), p.next), (0, None));
        // An exactly full last page has no next.
        let p = index.page(&Query { limit: 5, ..all() });
        assert_eq!((p.jobs.len(), p.next), (5, None));
    }

    #[test]
    fn filters_by_group_and_state() {
        let index = JobIndex::new();
        index.apply(1, &job("a", "g1", false));
        index.apply(2, &job("b", "g2", true));
        index.apply(3, &broken("c"));
        index.apply(4, &job("d", "g2", false));
        index.apply(5, &broken("e"));
        let p = index.page(&Query {
            group: Some("g2"),
            ..all()
        });
        assert_eq!(ids(&p), vec!["b", "d"]);
        let p = index.page(&Query {
            state: Some(JobState::Paused),
            ..all()
        });
        assert_eq!(ids(&p), vec!["b"]);
        let p = index.page(&Query {
            state: Some(JobState::Active),
            group: Some("g2"),
            ..all()
        });
        assert_eq!(ids(&p), vec!["d"]);
        let q = Query {
            state: Some(JobState::Invalid),
            limit: 1,
            ..all()
        };
        let p = index.page(&q);
        assert_eq!((ids(&p), p.next.as_deref()), (vec!["c"], Some("c")));
        let p = index.page(&Query {
            after: Some("c"),
            ..q
        });
        assert_eq!((ids(&p), p.next.as_deref()), (vec!["e"], None));
        let p = index.page(&Query {
            state: Some(JobState::Invalid),
            group: Some("g1"),
            ..all()
        });
        assert!(p.jobs.is_empty() && p.next.is_none());
        assert_eq!(index.counts(1).first_invalid.len(), 1);
        // Invalid again at a new revision: still listed once.
        index.apply(6, &broken("c"));
        let c = index.counts(20);
        assert_eq!((c.invalid, c.first_invalid.len()), (2, 2));
        assert_eq!(index.get("c").map(|(r, _)| r), Some(6));
    }

    #[test]
    fn a_sparse_filter_hands_back_a_cursor_when_its_budget_runs_out() {
        let index = JobIndex::new();
        for i in 0..10 {
            index.apply(i + 1, &job(&format!("j{i}"), "many", false));
        }
        index.apply(11, &job("j5x", "rare", false));
        let q = Query {
            group: Some("rare"),
            ..all()
        };
        let p = index.page_within(&q, 4);
        assert_eq!((p.jobs.len(), p.next.as_deref()), (0, Some("j3")));
        let p = index.page_within(
            &Query {
                after: Some("j3"),
                ..q
            },
            4,
        );
        assert_eq!((ids(&p), p.next.as_deref()), (vec!["j5x"], Some("j6")));
        let p = index.page_within(
            &Query {
                after: Some("j6"),
                ..q
            },
            4,
        );
        assert_eq!((p.jobs.len(), p.next), (0, None));
    }

    #[test]
    fn a_new_read_drops_what_it_did_not_deliver_again() {
        let index = JobIndex::new();
        index.begin_read();
        index.apply(1, &job("a", "g", false));
        index.apply(2, &job("b", "g", false));
        index.apply(3, &broken("c"));
        assert!(!index.progress().loaded);
        index.read_complete();
        assert!(index.progress().loaded);
        // The watch broke; meanwhile b and c went away without a trace.
        index.begin_read();
        index.apply(1, &job("a", "g", false));
        assert_eq!(index.len(), 3, "kept until the read is complete");
        index.read_complete();
        assert_eq!(ids(&index.page(&all())), vec!["a"]);
        let c = index.counts(20);
        assert_eq!((c.active, c.paused, c.invalid), (1, 0, 0));
        assert_eq!(c.progress.applied, 3, "applied never goes back");
    }

    #[tokio::test]
    async fn readers_wait_until_a_revision_is_applied() {
        let index = JobIndex::new();
        assert!(index.wait_for(0, Duration::from_millis(1)).await);
        assert!(!index.wait_for(2, Duration::from_millis(10)).await);
        let writer = index.clone();
        let wait = tokio::spawn(async move { index.wait_for(2, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer.apply(1, &job("a", "g", false));
        writer.apply(2, &job("b", "g", false));
        assert!(wait.await.unwrap());
    }

    #[test]
    fn a_valid_job_is_shared_not_copied() {
        let index = JobIndex::new();
        let ev = job("a", "g", false);
        index.apply(1, &ev);
        let CatalogEvent::Upsert { job, .. } = &ev else {
            unreachable!()
        };
        match index.get("a") {
            Some((_, Def::Valid(stored))) => assert!(Arc::ptr_eq(&stored, job)),
            other => panic!("{other:?}"),
        }
    }
}
