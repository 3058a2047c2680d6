//! The engine's job table: per job, its definition, its fire state and its
//! next instant, under one shared id, plus one ordered set of next instants.
//! The engine sleeps until the earliest instant; nothing runs per job.
//!
//! At a million jobs memory is what limits a replica, so each job has one
//! entry and its id is allocated once (the timer shares it).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use jetcron_shared::Job;

use crate::decide::Known;

/// A job whose next instant is at most this far off keeps its decoded
/// definition between fires; others decode it again at each fire.
const HOT: chrono::Duration = chrono::Duration::seconds(60);
use crate::state::FireState;

#[derive(Debug, Default)]
struct Entry {
    /// The valid definition; None while the key holds an invalid one, or
    /// when only a stored state is known.
    known: Option<Known>,
    /// The fire state as stored (boxed: most of a million jobs fire
    /// rarely, and an empty entry stays small).
    state: Option<Box<FireState>>,
    /// Its instant in the timer.
    next: Option<DateTime<Utc>>,
    /// The full job, decoded, while it fires often.
    full: Option<Arc<Job>>,
}

#[derive(Debug, Default)]
pub struct Table {
    entries: HashMap<Arc<str>, Entry>,
    timer: BTreeSet<(DateTime<Utc>, Arc<str>)>,
    /// Jobs whose latest state is held only by a tick record, with the
    /// record's stream sequence (see [`crate::state`]).
    ticked: HashMap<Arc<str>, u64>,
    jobs: usize,
    states: usize,
}

impl Table {
    /// Valid definitions held.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// Fire states held.
    pub fn states(&self) -> usize {
        self.states
    }

    /// Jobs with a next instant.
    pub fn scheduled(&self) -> usize {
        self.timer.len()
    }

    pub fn known(&self, id: &str) -> Option<&Known> {
        self.entries.get(id)?.known.as_ref()
    }

    pub fn state(&self, id: &str) -> Option<&FireState> {
        self.entries.get(id)?.state.as_deref()
    }

    /// Every stored state with the definition it belongs to, if valid.
    pub fn with_states(&self) -> impl Iterator<Item = (&str, &FireState, Option<&Known>)> {
        self.entries
            .iter()
            .filter_map(|(id, e)| Some((&**id, e.state.as_deref()?, e.known.as_ref())))
    }

    fn entry(&mut self, id: &str) -> &mut Entry {
        let key = match self.entries.get_key_value(id) {
            Some((key, _)) => key.clone(),
            None => Arc::from(id),
        };
        self.entries.entry(key).or_default()
    }

    pub fn set_known(&mut self, id: &str, known: Known) {
        let e = self.entry(id);
        e.full = None;
        if e.known.replace(known).is_none() {
            self.jobs += 1;
        }
    }

    /// The full job, if decoded at an earlier fire and kept.
    pub fn decoded(&self, id: &str) -> Option<Arc<Job>> {
        self.entries.get(id)?.full.clone()
    }

    /// Keeps the decoded job of definition `revision` for the next fires
    /// (dropped when its next instant is more than [`HOT`] away).
    pub fn keep_decoded(&mut self, id: &str, revision: u64, job: Arc<Job>) {
        if let Some(e) = self.entries.get_mut(id)
            && e.known.as_ref().is_some_and(|k| k.revision == revision)
        {
            e.full = Some(job);
        }
    }

    /// Forgets the definition (deleted, or now invalid); the state stays.
    /// Whether there was one.
    pub fn remove_known(&mut self, id: &str) -> bool {
        self.set_next(id, None);
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        let had = e.known.take().is_some();
        e.full = None;
        if had {
            self.jobs -= 1;
        }
        self.collect(id);
        had
    }

    pub fn set_state(&mut self, id: &str, state: FireState) {
        let e = self.entry(id);
        if e.state.replace(Box::new(state)).is_none() {
            self.states += 1;
        }
    }

    /// The job's latest state is held by the tick record at `seq`.
    pub fn set_ticked(&mut self, id: &str, seq: u64) {
        if let Some((key, _)) = self.entries.get_key_value(id) {
            self.ticked.insert(key.clone(), seq);
        }
    }

    /// The job's latest state is stored under its own key.
    pub fn clear_ticked(&mut self, id: &str) {
        self.ticked.remove(id);
    }

    /// The tick record holding the job's latest state, if one does.
    pub fn ticked(&self, id: &str) -> Option<u64> {
        self.ticked.get(id).copied()
    }

    /// Every job whose state is held by a tick record, with its sequence.
    pub fn all_ticked(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.ticked.iter().map(|(id, seq)| (id, *seq))
    }

    /// The oldest tick record some job still needs.
    pub fn oldest_ticked(&self) -> Option<u64> {
        self.ticked.values().min().copied()
    }

    /// Forgets the state; whether there was one.
    pub fn remove_state(&mut self, id: &str) -> bool {
        self.ticked.remove(id);
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        let had = e.state.take().is_some();
        if had {
            self.states -= 1;
        }
        self.collect(id);
        had
    }

    /// Sets (or with None removes) the job's instant in the timer.
    pub fn set_next(&mut self, id: &str, next: Option<DateTime<Utc>>) {
        let Some((key, e)) = self.entries.get_key_value(id) else {
            return;
        };
        if e.next == next {
            return;
        }
        let key = key.clone();
        if let Some(old) = e.next {
            self.timer.remove(&(old, key.clone()));
        }
        if let Some(t) = next {
            self.timer.insert((t, key.clone()));
        }
        if let Some(e) = self.entries.get_mut(id) {
            e.next = next;
            if e.full.is_some() && next.is_none_or(|t| t - Utc::now() > HOT) {
                e.full = None;
            }
        }
        self.collect(id);
    }

    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        self.timer.first().map(|(t, _)| *t)
    }

    /// Removes from the timer and returns every job due at or before
    /// `now`, earliest first.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<(Arc<str>, DateTime<Utc>)> {
        let mut due = Vec::new();
        while self.timer.first().is_some_and(|(t, _)| *t <= now) {
            if let Some((t, id)) = self.timer.pop_first() {
                if let Some(e) = self.entries.get_mut(&*id) {
                    e.next = None;
                }
                due.push((id, t));
            }
        }
        due
    }

    /// Drops an entry that holds nothing any more.
    fn collect(&mut self, id: &str) {
        if self
            .entries
            .get(id)
            .is_some_and(|e| e.known.is_none() && e.state.is_none() && e.next.is_none())
        {
            self.entries.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jetcron_shared::Definition;

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, s).unwrap()
    }

    fn known(id: &str) -> Known {
        let body = format!(r#"{{"id":"{id}","schedule":"@every 1s","run":{{"shell":"true"}}}}"#);
        Known {
            job: Arc::new(Definition::decode(body.as_bytes(), None).unwrap()),
            revision: 1,
            written: t(0),
        }
    }

    fn state() -> FireState {
        FireState {
            job_revision: 1,
            next_instant: Some(t(5)),
            last_instant: None,
            last_fired_at: None,
            epoch: 1,
            fires: 0,
            paused_skipped: 0,
            decision: None,
            running: Vec::new(),
            queued: None,
            overlap_from: None,
        }
    }

    #[test]
    fn due_jobs_come_out_earliest_first_and_leave_the_timer() {
        let mut table = Table::default();
        for (id, s) in [("b", 3), ("a", 1), ("c", 9)] {
            table.set_known(id, known(id));
            table.set_next(id, Some(t(s)));
        }
        table.set_next("b", Some(t(2)));
        assert_eq!(table.earliest(), Some(t(1)));
        let due: Vec<(String, DateTime<Utc>)> = table
            .pop_due(t(5))
            .into_iter()
            .map(|(id, at)| (id.to_string(), at))
            .collect();
        assert_eq!(due, vec![("a".into(), t(1)), ("b".into(), t(2))]);
        assert_eq!((table.scheduled(), table.earliest()), (1, Some(t(9))));
        // Popped jobs can be planned again.
        table.set_next("a", Some(t(7)));
        assert_eq!(table.earliest(), Some(t(7)));
    }

    #[test]
    fn an_entry_lives_while_it_holds_a_definition_a_state_or_an_instant() {
        let mut table = Table::default();
        table.set_known("j", known("j"));
        table.set_state("j", state());
        table.set_next("j", Some(t(5)));
        assert_eq!((table.jobs(), table.states(), table.scheduled()), (1, 1, 1));
        // Deleted definition: off the timer, the state stays (an invalid
        // definition fixed later continues from it).
        assert!(table.remove_known("j"));
        assert_eq!((table.jobs(), table.states(), table.scheduled()), (0, 1, 0));
        assert!(table.state("j").is_some());
        assert_eq!(table.with_states().count(), 1);
        table.set_ticked("j", 40);
        assert_eq!(
            (table.ticked("j"), table.oldest_ticked()),
            (Some(40), Some(40))
        );
        let all: Vec<(String, u64)> = table
            .all_ticked()
            .map(|(id, s)| (id.to_string(), s))
            .collect();
        assert_eq!(all, vec![("j".to_string(), 40)]);
        assert!(table.remove_state("j"));
        assert_eq!(table.oldest_ticked(), None);
        assert!(!table.remove_state("j"));
        assert_eq!(table.entries.len(), 0);
        // Planning an unknown id does nothing.
        table.set_next("nobody", Some(t(1)));
        assert_eq!(table.scheduled(), 0);
    }
}
