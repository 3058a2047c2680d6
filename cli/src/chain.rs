//! `on_success` chains as `apply` sees them: the set's own definitions
//! instead of the stored ones they replace, the stored jobs outside the set
//! that the set reaches, and no jobs that `--prune` deletes.
//!
//! A set whose chains lead back to one of its jobs is refused as a whole,
//! before anything is written ([`Chains::check`]). Otherwise it is written
//! children first ([`Chains::order`]), the deletes of pruned jobs the set
//! reaches before any put, so that `job.put`, which checks each definition
//! against what is stored at that moment, never sees half of a change that
//! makes or breaks a chain as a cycle.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use jetcron_shared::api::{ApiClient, ClientError, ErrorCode};
use jetcron_shared::job::{children_first, find_cycle_in};

use crate::Failure;
use crate::apply::{Action, Step};
use crate::manifest::Manifest;

/// Job reads in flight at once.
const PARALLEL_READS: usize = 8;

/// One job of the set.
#[derive(Debug, Clone)]
struct SetJob {
    id: String,
    source: String,
    children: Vec<String>,
}

/// The `on_success` edges an apply's writes are checked and ordered by.
#[derive(Debug, Clone, Default)]
pub struct Chains {
    /// The set, in file order.
    set: Vec<SetJob>,
    /// Where each id of the set is in `set`.
    by_id: HashMap<String, usize>,
    /// Stored jobs outside the set, and not pruned, that the set reaches:
    /// their stored children.
    stored: HashMap<String, Vec<String>>,
    /// Stored jobs the apply deletes.
    pruned: HashSet<String>,
}

impl Chains {
    /// From what is known already: the set, the stored children of the
    /// outside jobs it reaches, the pruned ids.
    pub fn new(
        desired: &[Manifest],
        stored: HashMap<String, Vec<String>>,
        pruned: HashSet<String>,
    ) -> Chains {
        let set: Vec<SetJob> = desired
            .iter()
            .map(|m| SetJob {
                id: m.spec.id.clone(),
                source: m.source.clone(),
                children: m.spec.on_success.clone(),
            })
            .collect();
        let by_id = set
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.clone(), i))
            .collect();
        Chains {
            set,
            by_id,
            stored,
            pruned,
        }
    }

    /// Reads the stored children the set reaches outside itself.
    /// `elsewhere` holds the stored jobs in none of the files.
    pub async fn read(
        api: &ApiClient,
        desired: &[Manifest],
        elsewhere: &[(String, u64)],
        prune: bool,
    ) -> Result<Chains, Failure> {
        let outside: HashSet<&str> = elsewhere.iter().map(|(id, _)| id.as_str()).collect();
        let pruned: HashSet<String> = if prune {
            outside.iter().map(|id| id.to_string()).collect()
        } else {
            HashSet::new()
        };
        let mut chains = Chains::new(desired, HashMap::new(), pruned);
        if prune {
            // Every outside job is deleted: none has children.
            return Ok(chains);
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut next: Vec<String> = Vec::new();
        let mut follow = |children: &[String], next: &mut Vec<String>| {
            for c in children {
                if outside.contains(c.as_str()) && seen.insert(c.clone()) {
                    next.push(c.clone());
                }
            }
        };
        for job in &chains.set {
            follow(&job.children, &mut next);
        }
        while !next.is_empty() {
            let level: Vec<(String, Vec<String>)> =
                futures::stream::iter(std::mem::take(&mut next))
                    .map(|id| async move {
                        match api.get(&id).await {
                            // An invalid definition fires nothing.
                            Ok(reply) => {
                                Ok((id, reply.job.map(|j| j.on_success).unwrap_or_default()))
                            }
                            // Deleted since the list.
                            Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => {
                                Ok((id, Vec::new()))
                            }
                            Err(e) => Err(Failure::from(e)),
                        }
                    })
                    .buffer_unordered(PARALLEL_READS)
                    .try_collect()
                    .await?;
            for (id, children) in level {
                follow(&children, &mut next);
                chains.stored.insert(id, children);
            }
        }
        Ok(chains)
    }

    /// The children that count for `id` once the set is written.
    fn children(&self, id: &str) -> Vec<String> {
        match self.by_id.get(id).and_then(|&i| self.set.get(i)) {
            Some(job) => job.children.clone(),
            None => self.stored.get(id).cloned().unwrap_or_default(),
        }
    }

    /// Refuses a set with a cycle, naming it and where its first job is
    /// defined.
    pub fn check(&self) -> Result<(), Failure> {
        let ids = self.set.iter().map(|j| j.id.as_str());
        let Some(cycle) = find_cycle_in(ids, |id| self.children(id)) else {
            return Ok(());
        };
        let first = cycle.jobs().first().map(String::as_str).unwrap_or_default();
        let source = self
            .by_id
            .get(first)
            .and_then(|&i| self.set.get(i))
            .map_or("", |j| j.source.as_str());
        Err(Failure::Refused(format!(
            "{source}: job '{first}': {cycle}; nothing was written"
        )))
    }

    /// The steps in the order to carry them out: deletes of pruned jobs
    /// that the set names, then the set children first (in file order
    /// where chains do not decide), then the other deletes.
    pub fn order(&self, steps: Vec<Step>) -> Vec<Step> {
        let ids: Vec<&str> = self.set.iter().map(|j| j.id.as_str()).collect();
        let rank: HashMap<String, usize> = children_first(&ids, |id| self.children(id))
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        let named: HashSet<&str> = self
            .set
            .iter()
            .flat_map(|j| j.children.iter())
            .chain(self.stored.values().flatten())
            .map(String::as_str)
            .filter(|c| self.pruned.contains(*c))
            .collect();
        let mut keyed: Vec<((u8, usize), Step)> = steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| {
                let key = match (step.action, rank.get(&step.id)) {
                    (Action::Pruned, _) if named.contains(step.id.as_str()) => (0, i),
                    (Action::Pruned, _) => (2, i),
                    (_, Some(r)) => (1, *r),
                    (_, None) => (1, i),
                };
                (key, step)
            })
            .collect();
        keyed.sort_by_key(|(key, _)| *key);
        keyed.into_iter().map(|(_, step)| step).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::plan;
    use crate::manifest;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn manifest(id: &str, children: &[&str], source: &str) -> Manifest {
        let value =
            json!({"id": id, "schedule": "@hourly", "run": {"shell": "x"}, "on_success": children});
        manifest::decode(manifest::RawJob {
            source: source.to_string(),
            value,
        })
        .unwrap()
    }

    fn stored(edges: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(id, cs)| (id.to_string(), cs.iter().map(|c| c.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_cycle_in_the_set_or_through_stored_jobs_is_refused() {
        let set = [
            manifest("a", &["b"], "a.yaml:1"),
            manifest("b", &["a"], "a.yaml:5"),
        ];
        let err = Chains::new(&set, HashMap::new(), HashSet::new())
            .check()
            .unwrap_err();
        assert!(matches!(err, Failure::Refused(_)));
        assert_eq!(
            err.to_string(),
            "a.yaml:1: job 'a': on_success: a cycle: a -> b -> a; nothing was written"
        );
        // Through a stored job outside the set.
        let set = [manifest("a", &["out"], "f:1")];
        let chains = Chains::new(&set, stored(&[("out", &["a"])]), HashSet::new());
        assert_eq!(
            chains.check().unwrap_err().to_string(),
            "f:1: job 'a': on_success: a cycle: a -> out -> a; nothing was written"
        );
        // Pruned: gone, so no cycle.
        let pruned = HashSet::from(["out".to_string()]);
        assert!(Chains::new(&set, HashMap::new(), pruned).check().is_ok());
        // The set's definition replaces the stored one: `b` no longer
        // names `a` once the set is written.
        let set = [manifest("a", &["b"], "f:1"), manifest("b", &[], "f:2")];
        assert!(
            Chains::new(&set, HashMap::new(), HashSet::new())
                .check()
                .is_ok()
        );
    }

    #[test]
    fn children_are_written_first_and_named_pruned_jobs_deleted_before() {
        let set = [
            manifest("a", &["b", "gone"], "f:1"),
            manifest("c", &[], "f:2"),
            manifest("b", &[], "f:3"),
        ];
        let chains = Chains::new(
            &set,
            HashMap::new(),
            HashSet::from(["gone".to_string(), "other".to_string()]),
        );
        let elsewhere = [("other".to_string(), 1), ("gone".to_string(), 2)];
        let steps = plan(set.to_vec(), &BTreeMap::new(), &elsewhere, true);
        let order: Vec<(String, Action)> = chains
            .order(steps)
            .into_iter()
            .map(|s| (s.id, s.action))
            .collect();
        let want = [
            ("gone", Action::Pruned),
            ("b", Action::Added),
            ("a", Action::Added),
            ("c", Action::Added),
            ("other", Action::Pruned),
        ];
        let want: Vec<(String, Action)> = want.iter().map(|(i, a)| (i.to_string(), *a)).collect();
        assert_eq!(order, want);
    }
}
