//! `jetcron apply -f FILE|DIR ... [--dry-run] [--prune]`: make the stored
//! jobs match a set of files, in the spirit of `kubectl apply`.
//!
//! Files -> [`manifest::load`] (everything validated locally; one bad job
//! refuses the whole apply) -> read what is stored (`job.list`, `job.get`)
//! -> [`Chains`]: an `on_success` cycle refuses the whole apply too ->
//! [`plan`]: added, changed (with a field diff), unchanged, pruned ->
//! writes, jobs fired on success before the jobs that fire them. Changed jobs are written with the revision they were read at, so
//! an edit made in between is a conflict, not a lost update; unchanged jobs
//! are not written at all, so applying twice changes nothing. The live
//! `paused` state is kept unless a file sets `paused` itself.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use jetcron_shared::JobSpec;
use jetcron_shared::api::{ApiClient, ClientError, EXPECTED_REVISION_FIELD, ErrorCode, GetReply};
use jetcron_shared::connect::ConnectArgs;
use serde::Serialize;
use serde_json::Value;

use crate::chain::Chains;
use crate::diff::{self, FieldChange};
use crate::manifest::{self, Manifest};
use crate::{Failure, Output, connect};

/// Job reads in flight at once.
const PARALLEL_READS: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Files, directories, or `-` for standard input.
    pub files: Vec<PathBuf>,
    /// Print what would change; write nothing.
    pub dry_run: bool,
    /// Delete stored jobs that are in none of the files.
    pub prune: bool,
}

/// A stored job, as read before planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub revision: u64,
    /// The definition if it validates.
    pub spec: Option<JobSpec>,
    /// Its canonical JSON (the raw JSON, as far as it parses, when invalid).
    pub value: Value,
    pub paused: bool,
    /// Why the stored definition does not validate.
    pub invalid: Option<String>,
}

impl Stored {
    pub fn from_reply(reply: GetReply) -> Stored {
        match reply.job {
            Some(spec) => Stored {
                revision: reply.revision,
                value: diff::canonical(&spec),
                paused: spec.paused,
                spec: Some(spec),
                invalid: None,
            },
            None => {
                // Canonical when it decodes (a bad value, such as a schedule,
                // fails only validation), so that only real differences show.
                let raw = reply.raw.as_deref().unwrap_or_default();
                let value: Value = match JobSpec::decode(raw.as_bytes()) {
                    Ok(spec) => diff::canonical(&spec),
                    Err(_) => serde_json::from_str(raw).unwrap_or(Value::Null),
                };
                Stored {
                    revision: reply.revision,
                    paused: value
                        .get("paused")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    value,
                    spec: None,
                    invalid: Some(reply.invalid.unwrap_or_default()),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Added,
    Changed,
    Unchanged,
    Pruned,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Added => "added",
            Action::Changed => "changed",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
        }
    }
}

/// What apply does (or did) to one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub id: String,
    pub action: Action,
    /// The file position the job was read from (none for pruned jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The stored revision read (0: not stored); the write expects it.
    pub stored_revision: u64,
    /// The revision written, once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    /// Why the stored definition was invalid, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_invalid: Option<String>,
    /// The definition to write (added and changed jobs).
    #[serde(skip)]
    pub spec: Option<JobSpec>,
}

/// Decides what to do with each job. `stored` holds the stored jobs that the
/// files define too; `elsewhere` the stored ids (with revisions) that no file
/// defines, pruned when `prune`.
pub fn plan(
    desired: Vec<Manifest>,
    stored: &BTreeMap<String, Stored>,
    elsewhere: &[(String, u64)],
    prune: bool,
) -> Vec<Step> {
    let mut steps: Vec<Step> = desired
        .into_iter()
        .map(|m| {
            let Manifest {
                mut spec,
                sets_paused,
                source,
            } = m;
            let mut step = Step {
                id: spec.id.clone(),
                action: Action::Added,
                source: Some(source),
                stored_revision: 0,
                revision: None,
                changes: Vec::new(),
                stored_invalid: None,
                spec: None,
            };
            if let Some(s) = stored.get(&spec.id) {
                if !sets_paused {
                    spec.paused = s.paused;
                }
                step.stored_revision = s.revision;
                step.stored_invalid = s.invalid.clone();
                if s.spec.as_ref() == Some(&spec) {
                    step.action = Action::Unchanged;
                } else {
                    step.action = Action::Changed;
                    step.changes = diff::diff(&s.value, &diff::canonical(&spec));
                }
            }
            step.spec = (step.action != Action::Unchanged).then_some(spec);
            step
        })
        .collect();
    if prune {
        steps.extend(elsewhere.iter().map(|(id, revision)| Step {
            id: id.clone(),
            action: Action::Pruned,
            source: None,
            stored_revision: *revision,
            revision: None,
            changes: Vec::new(),
            stored_invalid: None,
            spec: None,
        }));
    }
    steps
}

/// What apply did, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub jobs: Vec<Step>,
    pub added: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub pruned: usize,
    /// Stored jobs in none of the files, left alone (no `--prune`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_in_files: Vec<String>,
    /// Set when a write failed; `jobs` then holds what was done before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    fn new(dry_run: bool, not_in_files: Vec<String>) -> Report {
        Report {
            dry_run,
            jobs: Vec::new(),
            added: 0,
            changed: 0,
            unchanged: 0,
            pruned: 0,
            not_in_files,
            error: None,
        }
    }

    fn push(&mut self, step: Step) {
        match step.action {
            Action::Added => self.added += 1,
            Action::Changed => self.changed += 1,
            Action::Unchanged => self.unchanged += 1,
            Action::Pruned => self.pruned += 1,
        }
        self.jobs.push(step);
    }

    /// `3 added, 1 changed, 5 unchanged, 2 pruned`.
    pub fn summary(&self, prune: bool) -> String {
        let mut s = format!(
            "{} added, {} changed, {} unchanged",
            self.added, self.changed, self.unchanged
        );
        if prune {
            s.push_str(&format!(", {} pruned", self.pruned));
        }
        if self.dry_run {
            s.push_str(" (dry run: nothing written)");
        }
        s
    }
}

/// The lines that show one step: the action and id, then the field diff.
pub fn step_lines(step: &Step) -> Vec<String> {
    let mut head = format!("{:<9}  {}", step.action.as_str(), step.id);
    match (step.action, step.revision) {
        (Action::Added | Action::Changed, Some(rev)) => {
            head.push_str(&format!(" (revision {rev})"))
        }
        (Action::Unchanged, _) => head.push_str(&format!(" (revision {})", step.stored_revision)),
        _ => {}
    }
    let mut lines = vec![head];
    if let Some(why) = &step.stored_invalid {
        lines.push(format!("    stored definition is invalid: {why}"));
    }
    lines.extend(
        diff::render(&step.changes)
            .into_iter()
            .map(|l| format!("    {l}")),
    );
    lines
}

pub async fn apply(args: &ConnectArgs, out: &Output, opts: &ApplyOptions) -> Result<(), Failure> {
    let desired = manifest::load(&opts.files).map_err(|e| Failure::Input(e.to_string()))?;
    let api = connect::api(args).await?;
    let (stored, elsewhere) = read_stored(&api, &desired).await?;
    let chains = Chains::read(&api, &desired, &elsewhere, opts.prune).await?;
    chains.check()?;
    let steps = chains.order(plan(desired, &stored, &elsewhere, opts.prune));
    let not_in_files = if opts.prune {
        Vec::new()
    } else {
        elsewhere.into_iter().map(|(id, _)| id).collect()
    };
    let mut report = Report::new(opts.dry_run, not_in_files);
    let mut failure = None;
    for mut step in steps {
        if !opts.dry_run
            && let Err(f) = write(&api, &mut step).await
        {
            failure = Some(f);
            break;
        }
        if !out.json {
            for line in step_lines(&step) {
                println!("{line}");
            }
        }
        report.push(step);
    }
    if let Some(f) = failure {
        if out.json {
            report.error = Some(f.one_line());
            out.json(&report);
        }
        return Err(f);
    }
    if out.json {
        out.json(&report);
    } else {
        if let [one] = report.not_in_files.as_slice() {
            println!("1 stored job is in none of these files ({one}): --prune deletes it");
        } else if !report.not_in_files.is_empty() {
            println!(
                "{} stored jobs are in none of these files ({}): --prune deletes them",
                report.not_in_files.len(),
                report.not_in_files.join(", ")
            );
        }
        println!("{}", report.summary(opts.prune));
    }
    Ok(())
}

/// Reads the stored jobs: those the files define (in full) and the ids of
/// the others.
async fn read_stored(
    api: &ApiClient,
    desired: &[Manifest],
) -> Result<(BTreeMap<String, Stored>, Vec<(String, u64)>), Failure> {
    let wanted: HashSet<&str> = desired.iter().map(|m| m.spec.id.as_str()).collect();
    let list = api.list().await?;
    let (both, elsewhere): (Vec<_>, Vec<_>) = list
        .jobs
        .into_iter()
        .partition(|j| wanted.contains(j.id.as_str()));
    let stored: BTreeMap<String, Stored> = futures::stream::iter(both)
        .map(|summary| async move {
            match api.get(&summary.id).await {
                Ok(reply) => Ok(Some((summary.id, Stored::from_reply(reply)))),
                // Deleted since the list: it is simply not stored.
                Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => Ok(None),
                Err(e) => Err(Failure::from(e)),
            }
        })
        .buffer_unordered(PARALLEL_READS)
        .try_filter_map(|found| async move { Ok(found) })
        .try_collect()
        .await?;
    let elsewhere = elsewhere.into_iter().map(|j| (j.id, j.revision)).collect();
    Ok((stored, elsewhere))
}

/// Carries out one step; records the written revision.
async fn write(api: &ApiClient, step: &mut Step) -> Result<(), Failure> {
    match (step.action, &step.spec) {
        (Action::Added | Action::Changed, Some(spec)) => {
            let reply = api
                .put_expecting(spec, step.stored_revision)
                .await
                .map_err(|e| write_failure(step, e))?;
            step.revision = Some(reply.revision);
        }
        (Action::Pruned, _) => match api.delete(&step.id).await {
            // Deleted by someone else meanwhile: the goal is reached.
            Ok(_) => {}
            Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(write_failure(step, e)),
        },
        _ => {}
    }
    Ok(())
}

fn write_failure(step: &Step, e: ClientError) -> Failure {
    let id = &step.id;
    match e {
        ClientError::Api(e) if e.code == ErrorCode::Conflict => Failure::Refused(format!(
            "job '{id}' changed while apply ran ({}); it and the jobs after it were not \
             written: run apply again",
            e.message
        )),
        // A scheduler from before conditional writes refuses the field as
        // unknown; writing without it could lose a concurrent edit.
        ClientError::Api(e)
            if e.code == ErrorCode::InvalidJob
                && e.message
                    .starts_with(&format!("{EXPECTED_REVISION_FIELD}: unknown field")) =>
        {
            Failure::Refused(format!(
                "job '{id}' was not written: the scheduler does not support conditional writes \
                 ({EXPECTED_REVISION_FIELD} in job.put); upgrade it"
            ))
        }
        other => match Failure::from(other) {
            Failure::Refused(m) => Failure::Refused(format!("job '{id}': {m}")),
            Failure::Input(m) => Failure::Input(format!("job '{id}': {m}")),
            Failure::Unavailable(m) => Failure::Unavailable(format!("job '{id}': {m}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(json: Value, source: &str) -> Manifest {
        let raw = manifest::RawJob {
            source: source.to_string(),
            value: json,
        };
        manifest::decode(raw).unwrap()
    }

    fn stored(json: Value, revision: u64) -> Stored {
        let spec = JobSpec::decode(&serde_json::to_vec(&json).unwrap()).unwrap();
        Stored::from_reply(GetReply {
            id: spec.id.clone(),
            revision,
            job: Some(spec),
            invalid: None,
            raw: None,
        })
    }

    #[test]
    fn plans_added_changed_unchanged_and_pruned() {
        let desired = vec![
            manifest(
                json!({"id":"new","schedule":"@hourly","run":{"shell":"x"}}),
                "a.yaml:1",
            ),
            manifest(
                json!({"id":"same","schedule":"@hourly","run":{"shell":"x"},"timezone":"UTC"}),
                "a.yaml:5",
            ),
            manifest(
                json!({"id":"edit","schedule":"@daily","run":{"shell":"x"}}),
                "b.json",
            ),
        ];
        let mut have = BTreeMap::new();
        have.insert(
            "same".to_string(),
            stored(
                json!({"id":"same","schedule":"@hourly","run":{"shell":"x"}}),
                3,
            ),
        );
        have.insert(
            "edit".to_string(),
            stored(
                json!({"id":"edit","schedule":"@hourly","run":{"shell":"x"}}),
                7,
            ),
        );
        let elsewhere = [("old".to_string(), 2)];
        let steps = plan(desired.clone(), &have, &elsewhere, true);
        let actions: Vec<(&str, Action, u64)> = steps
            .iter()
            .map(|s| (s.id.as_str(), s.action, s.stored_revision))
            .collect();
        assert_eq!(
            actions,
            [
                ("new", Action::Added, 0),
                ("same", Action::Unchanged, 3),
                ("edit", Action::Changed, 7),
                ("old", Action::Pruned, 2),
            ]
        );
        assert!(steps[1].spec.is_none(), "nothing to write for unchanged");
        assert_eq!(steps[2].changes.len(), 1);
        assert_eq!(steps[2].changes[0].field, "schedule");
        assert_eq!(
            step_lines(&steps[2]),
            ["changed    edit", r#"    schedule: - "@hourly" + "@daily""#]
        );
        // Without --prune, jobs elsewhere are left alone.
        let steps = plan(desired, &have, &elsewhere, false);
        assert!(steps.iter().all(|s| s.action != Action::Pruned));
    }

    #[test]
    fn live_paused_state_is_kept_unless_the_file_sets_it() {
        let mut have = BTreeMap::new();
        have.insert(
            "p".to_string(),
            stored(
                json!({"id":"p","schedule":"@hourly","run":{"shell":"x"},"paused":true}),
                4,
            ),
        );
        let silent = manifest(
            json!({"id":"p","schedule":"@hourly","run":{"shell":"x"}}),
            "f",
        );
        let steps = plan(vec![silent], &have, &[], false);
        assert_eq!(steps[0].action, Action::Unchanged);

        let edited = manifest(
            json!({"id":"p","schedule":"@daily","run":{"shell":"x"}}),
            "f",
        );
        let steps = plan(vec![edited], &have, &[], false);
        assert_eq!(steps[0].action, Action::Changed);
        assert!(steps[0].spec.as_ref().unwrap().paused, "stays paused");
        let fields: Vec<&str> = steps[0].changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["schedule"]);

        let resumed = manifest(
            json!({"id":"p","schedule":"@hourly","run":{"shell":"x"},"paused":false}),
            "f",
        );
        let steps = plan(vec![resumed], &have, &[], false);
        assert_eq!(steps[0].action, Action::Changed);
        assert!(!steps[0].spec.as_ref().unwrap().paused);
        assert_eq!(steps[0].changes[0].field, "paused");
    }

    #[test]
    fn an_invalid_stored_definition_is_replaced() {
        let mut have = BTreeMap::new();
        have.insert(
            "x".to_string(),
            Stored::from_reply(GetReply {
                id: "x".into(),
                revision: 9,
                job: None,
                invalid: Some("schedule: bad".into()),
                raw: Some(
                    r#"{"id":"x","schedule":"bad","run":{"shell":"x"},"paused":true}"#.into(),
                ),
            }),
        );
        let m = manifest(
            json!({"id":"x","schedule":"@hourly","run":{"shell":"x"}}),
            "f",
        );
        let steps = plan(vec![m], &have, &[], false);
        assert_eq!(steps[0].action, Action::Changed);
        assert_eq!(steps[0].stored_revision, 9);
        assert!(steps[0].spec.as_ref().unwrap().paused);
        assert_eq!(
            step_lines(&steps[0]),
            [
                "changed    x",
                "    stored definition is invalid: schedule: bad",
                r#"    schedule: - "bad" + "@hourly""#,
            ]
        );
    }

    #[test]
    fn write_failures_say_what_happened() {
        use jetcron_shared::api::ApiError;
        let step = plan(
            vec![manifest(
                json!({"id":"a","schedule":"@hourly","run":{"shell":"x"}}),
                "f",
            )],
            &BTreeMap::new(),
            &[],
            false,
        )
        .remove(0);
        let api = |code, msg: &str| ClientError::Api(ApiError::new(code, msg));
        let f = write_failure(
            &step,
            api(ErrorCode::Conflict, "job 'a' is at revision 6, not 5"),
        );
        assert!(matches!(f, Failure::Refused(_)));
        assert_eq!(
            f.to_string(),
            "job 'a' changed while apply ran (job 'a' is at revision 6, not 5); it and the jobs \
             after it were not written: run apply again"
        );
        let f = write_failure(
            &step,
            api(
                ErrorCode::InvalidJob,
                "expected_revision: unknown field (known: id, ...)",
            ),
        );
        assert!(
            f.to_string()
                .contains("does not support conditional writes"),
            "{f}"
        );
        let f = write_failure(&step, api(ErrorCode::Unavailable, "jobs bucket: down"));
        assert!(matches!(f, Failure::Unavailable(_)));
        assert_eq!(f.to_string(), "job 'a': jobs bucket: down");
    }

    #[test]
    fn summary_line() {
        let mut r = Report::new(true, Vec::new());
        r.added = 3;
        r.changed = 1;
        r.unchanged = 5;
        r.pruned = 2;
        assert_eq!(
            r.summary(true),
            "3 added, 1 changed, 5 unchanged, 2 pruned (dry run: nothing written)"
        );
        r.dry_run = false;
        assert_eq!(r.summary(false), "3 added, 1 changed, 5 unchanged");
    }
}
