//! `on_success` chains across definitions: a job fires its children, they
//! fire theirs. One definition can only refuse naming itself
//! ([`super::check`]); a longer cycle needs the other definitions, so the
//! API looks for one at `job.put` ([`find_cycle`]) and `jetcron apply`
//! for a whole set, which it then writes children first
//! ([`children_first`]) so that no single put closes a cycle on the way.
//!
//! Both take the definitions as a lookup, `children(id)`: the `on_success`
//! of the definition that counts for `id` (the one being put, or stored),
//! empty when there is none. A child that does not exist yet has no
//! children: it may be put later.

use std::collections::{HashMap, HashSet, VecDeque};

use thiserror::Error;

/// A chain of `on_success` edges from a job back to itself, the job first
/// and last: `a -> b -> c -> a`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("on_success: a cycle: {}", .jobs.join(" -> "))]
pub struct Cycle {
    jobs: Vec<String>,
}

impl Cycle {
    /// The jobs along the cycle, the first repeated at the end.
    pub fn jobs(&self) -> &[String] {
        &self.jobs
    }
}

/// The shortest chain of `on_success` edges from `root` back to `root`, if
/// there is one. Only what `root` reaches is looked up, each job once, so
/// a cycle elsewhere (stored by two racing puts) cannot loop it.
pub fn find_cycle<F>(root: &str, mut children: F) -> Option<Cycle>
where
    F: FnMut(&str) -> Vec<String>,
{
    // Breadth first, each job remembering who reached it first.
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut queue: VecDeque<String> = VecDeque::from([root.to_string()]);
    while let Some(job) = queue.pop_front() {
        for child in children(&job) {
            if child == root {
                // Back from `job` to `root`, which has no parent.
                let mut jobs = vec![root.to_string(), job];
                while let Some(p) = jobs.last().and_then(|last| parent.get(last)) {
                    jobs.push(p.clone());
                }
                jobs.reverse();
                return Some(Cycle { jobs });
            }
            if !parent.contains_key(&child) {
                parent.insert(child.clone(), job.clone());
                queue.push_back(child);
            }
        }
    }
    None
}

/// The first cycle through any job of `set`, looked for from each in turn.
pub fn find_cycle_in<'a, F>(
    set: impl IntoIterator<Item = &'a str>,
    mut children: F,
) -> Option<Cycle>
where
    F: FnMut(&str) -> Vec<String>,
{
    set.into_iter()
        .find_map(|root| find_cycle(root, &mut children))
}

/// The jobs of `set` in an order to write them one by one: each after
/// every job of the set it reaches through `on_success` (directly or
/// through jobs outside the set), the order of `set` kept otherwise. When
/// the set has no cycle, no write in this order closes one: whatever a job
/// reaches once written is already as the set has it.
pub fn children_first<F>(set: &[&str], mut children: F) -> Vec<String>
where
    F: FnMut(&str) -> Vec<String>,
{
    let members: HashSet<&str> = set.iter().copied().collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut order = Vec::with_capacity(set.len());
    for &root in set {
        if seen.contains(root) {
            continue;
        }
        seen.insert(root.to_string());
        // Depth first, a job leaving the stack once its children have.
        let mut stack: Vec<(String, std::vec::IntoIter<String>)> =
            vec![(root.to_string(), children(root).into_iter())];
        while let Some((job, rest)) = stack.last_mut() {
            match rest.next() {
                Some(child) => {
                    if seen.insert(child.clone()) {
                        let grandchildren = children(&child).into_iter();
                        stack.push((child, grandchildren));
                    }
                }
                None => {
                    if members.contains(job.as_str()) {
                        order.push(job.clone());
                    }
                    stack.pop();
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> impl FnMut(&str) -> Vec<String> + use<> {
        let map: HashMap<String, Vec<String>> = edges
            .iter()
            .map(|(id, cs)| (id.to_string(), cs.iter().map(|c| c.to_string()).collect()))
            .collect();
        move |id| map.get(id).cloned().unwrap_or_default()
    }

    #[test]
    fn a_cycle_is_named_from_the_job_back_to_it() {
        let two = find_cycle("a", graph(&[("a", &["b"]), ("b", &["a"])])).unwrap();
        assert_eq!(two.to_string(), "on_success: a cycle: a -> b -> a");
        let three = find_cycle(
            "a",
            graph(&[("a", &["x", "b"]), ("b", &["c"]), ("c", &["a"])]),
        )
        .unwrap();
        assert_eq!(three.jobs(), ["a", "b", "c", "a"]);
        // The shortest one when there are several.
        let short = find_cycle(
            "a",
            graph(&[
                ("a", &["b", "d"]),
                ("b", &["c"]),
                ("c", &["a"]),
                ("d", &["a"]),
            ]),
        )
        .unwrap();
        assert_eq!(short.jobs(), ["a", "d", "a"]);
        // Itself (refused earlier, by the definition's own check).
        let own = find_cycle("a", graph(&[("a", &["a"])])).unwrap();
        assert_eq!(own.jobs(), ["a", "a"]);
    }

    #[test]
    fn chains_and_diamonds_are_fine_and_other_cycles_do_not_loop() {
        let chain = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["missing"])]);
        assert_eq!(find_cycle("a", chain), None);
        let diamond = graph(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"])]);
        assert_eq!(find_cycle("a", diamond), None);
        // b and c loop (two racing puts), but never back to a.
        let mut looked = 0;
        let mut elsewhere = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["b"])]);
        let found = find_cycle("a", |id| {
            looked += 1;
            elsewhere(id)
        });
        assert_eq!((found, looked), (None, 3));
    }

    #[test]
    fn a_set_is_checked_from_each_of_its_jobs() {
        let edges = graph(&[("a", &["b"]), ("x", &["y"]), ("y", &["x"])]);
        let found = find_cycle_in(["a", "y"], edges).unwrap();
        assert_eq!(found.jobs(), ["y", "x", "y"]);
    }

    #[test]
    fn a_set_is_written_children_first_in_its_order_otherwise() {
        // a -> b, and a -> out -> c where `out` is stored, not in the set.
        let edges = graph(&[("a", &["b", "out"]), ("out", &["c"]), ("d", &[])]);
        assert_eq!(
            children_first(&["a", "d", "c", "b"], edges),
            ["b", "c", "a", "d"]
        );
        let none = graph(&[]);
        assert_eq!(children_first(&["z", "y", "x"], none), ["z", "y", "x"]);
    }
}
