//! One ordered structure holding the next instant of every scheduled job.
//! The engine sleeps until the earliest one; nothing runs per job.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
pub struct Timer {
    order: BTreeSet<(DateTime<Utc>, String)>,
    at: HashMap<String, DateTime<Utc>>,
}

impl Timer {
    /// Schedules `job` at `instant`, replacing its previous instant.
    pub fn set(&mut self, job: &str, instant: DateTime<Utc>) {
        self.remove(job);
        self.order.insert((instant, job.to_string()));
        self.at.insert(job.to_string(), instant);
    }

    pub fn remove(&mut self, job: &str) -> Option<DateTime<Utc>> {
        let old = self.at.remove(job)?;
        self.order.remove(&(old, job.to_string()));
        Some(old)
    }

    pub fn get(&self, job: &str) -> Option<DateTime<Utc>> {
        self.at.get(job).copied()
    }

    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Removes and returns every job due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
        let mut due = Vec::new();
        while let Some((t, _)) = self.order.first() {
            if *t > now {
                break;
            }
            if let Some((t, job)) = self.order.pop_first() {
                self.at.remove(&job);
                due.push((job, t));
            }
        }
        due
    }

    pub fn clear(&mut self) {
        self.order.clear();
        self.at.clear();
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, s).unwrap()
    }

    #[test]
    fn pops_due_jobs_in_order_and_reschedules_replace() {
        let mut timer = Timer::default();
        timer.set("b", t(5));
        timer.set("a", t(3));
        timer.set("c", t(9));
        timer.set("b", t(4)); // replaces 5
        assert_eq!(timer.len(), 3);
        assert_eq!(timer.earliest(), Some(t(3)));
        let due = timer.pop_due(t(5));
        assert_eq!(due, vec![("a".to_string(), t(3)), ("b".to_string(), t(4))]);
        assert_eq!(timer.get("b"), None);
        assert_eq!(timer.remove("c"), Some(t(9)));
        assert!(timer.is_empty());
        assert_eq!(timer.earliest(), None);
    }
}
