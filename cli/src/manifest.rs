//! Job files: YAML or JSON (by extension), each holding one job, a list of
//! jobs, or (YAML) several documents separated by `---`; a directory stands
//! for its `.yaml`, `.yml` and `.json` files (not recursive, sorted by name).
//!
//! Every job is decoded and validated with the same code as the scheduler's
//! ([`JobSpec::decode`], [`Job::validate`]), so a file that loads here is
//! accepted by the API, and errors name the file, the job and the field.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use jetcron_shared::{Job, JobError, JobSpec};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use thiserror::Error;

/// `-f -`: read job definitions from standard input (YAML or JSON).
pub const STDIN: &str = "-";

/// One job as read from a file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub spec: JobSpec,
    /// Whether the file sets `paused` at all. `JobSpec` reads a missing key
    /// as `false`; `apply` keeps the live value instead.
    pub sets_paused: bool,
    /// Where the job was read: `jobs/a.yaml:12`, `jobs/b.json (item 2)`.
    pub source: String,
}

/// One job as written, before decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct RawJob {
    pub source: String,
    pub value: Value,
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a job file (use .yaml, .yml or .json)")]
    Extension { path: String },
    #[error("{path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{at}: {}{error}", job_prefix(.job))]
    Invalid {
        at: String,
        job: Option<String>,
        error: JobError,
    },
    #[error("job '{id}' is defined twice: {first} and {second}")]
    Duplicate {
        id: String,
        first: String,
        second: String,
    },
    #[error("no job definitions found in {0}")]
    Empty(String),
    /// Several problems: the first one, and how many more.
    #[error("{first} (and {more} more problem{})", if *.more == 1 { "" } else { "s" })]
    Many { first: Box<LoadError>, more: usize },
}

fn job_prefix(job: &Option<String>) -> String {
    job.as_deref()
        .map(|j| format!("job '{j}': "))
        .unwrap_or_default()
}

/// How a file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// YAML 1.2; also reads JSON (standard input, whose format is unknown).
    Yaml,
}

impl Format {
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Loads and validates every job of `inputs` (files, directories, `-`).
/// Refuses the whole set if any job is invalid, an id appears twice, or no
/// job is found at all.
pub fn load(inputs: &[PathBuf]) -> Result<Vec<Manifest>, LoadError> {
    let mut problems = Vec::new();
    let mut jobs = Vec::new();
    for file in expand(inputs)? {
        let raw = match read_file(&file) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for r in raw {
            match decode(r) {
                Ok(m) => jobs.push(m),
                Err(e) => problems.push(e),
            }
        }
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for m in &jobs {
        if let Some(first) = seen.insert(&m.spec.id, &m.source) {
            problems.push(LoadError::Duplicate {
                id: m.spec.id.clone(),
                first: first.to_string(),
                second: m.source.clone(),
            });
        }
    }
    let mut problems = problems.into_iter();
    if let Some(first) = problems.next() {
        let more = problems.count();
        return Err(if more == 0 {
            first
        } else {
            LoadError::Many {
                first: Box::new(first),
                more,
            }
        });
    }
    if jobs.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(LoadError::Empty(names.join(", ")));
    }
    Ok(jobs)
}

/// The files `inputs` stand for, in order, each once.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for input in inputs {
        let read_err = |source| LoadError::Read {
            path: input.display().to_string(),
            source,
        };
        if input.as_os_str() == STDIN {
            files.push(input.clone());
            continue;
        }
        if std::fs::metadata(input).map_err(read_err)?.is_dir() {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(input).map_err(read_err)? {
                let path = entry.map_err(read_err)?.path();
                if Format::of(&path).is_some() && path.is_file() {
                    found.push(path);
                }
            }
            found.sort();
            files.extend(found);
        } else if Format::of(input).is_some() {
            files.push(input.clone());
        } else {
            return Err(LoadError::Extension {
                path: input.display().to_string(),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    Ok(files)
}

/// Reads one file (or standard input) into its raw jobs.
pub fn read_file(path: &Path) -> Result<Vec<RawJob>, LoadError> {
    let name = path.display().to_string();
    let read_err = |source| LoadError::Read {
        path: name.clone(),
        source,
    };
    let (text, format, name) = if path.as_os_str() == STDIN {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_err)?;
        (text, Format::Yaml, "<stdin>".to_string())
    } else {
        let format = Format::of(path).ok_or_else(|| LoadError::Extension { path: name.clone() })?;
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        (text, format, name)
    };
    parse(&name, &text, format)
}

/// Splits a file's text into raw jobs, each with where it starts.
pub fn parse(name: &str, text: &str, format: Format) -> Result<Vec<RawJob>, LoadError> {
    let syntax = |reason: String| LoadError::Syntax {
        path: name.to_string(),
        reason,
    };
    match format {
        Format::Json => {
            let value: Value = serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?;
            Ok(match value {
                Value::Array(items) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, value)| RawJob {
                        source: format!("{name} (item {})", i + 1),
                        value,
                    })
                    .collect(),
                value => vec![RawJob {
                    source: name.to_string(),
                    value,
                }],
            })
        }
        Format::Yaml => {
            // YAML 1.2 booleans only: shard parameters such as `no` or `on`
            // stay strings. No snippets: errors must fit on one line.
            let options = serde_saphyr::options! {
                strict_booleans: true,
                with_snippet: false,
            };
            let docs: Vec<serde_saphyr::Spanned<YamlDoc>> =
                serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
                    syntax(
                        e.to_string()
                            .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
                    )
                })?;
            Ok(docs
                .into_iter()
                .flat_map(|doc| {
                    let doc_line = doc.referenced.line();
                    doc.value.0.into_iter().map(move |(line, value)| RawJob {
                        source: format!("{name}:{}", line.unwrap_or(doc_line)),
                        value,
                    })
                })
                .collect())
        }
    }
}

/// Decodes and validates one raw job.
pub fn decode(raw: RawJob) -> Result<Manifest, LoadError> {
    let RawJob { source, value } = raw;
    let invalid = |job: Option<String>, error: JobError| LoadError::Invalid {
        at: source.clone(),
        job,
        error,
    };
    let Value::Object(fields) = &value else {
        return Err(invalid(
            None,
            JobError::Syntax(format!(
                "a job definition is a mapping of fields, found {}",
                kind_of(&value)
            )),
        ));
    };
    let claimed = fields.get("id").and_then(Value::as_str).map(str::to_string);
    let sets_paused = fields.contains_key("paused");
    // Through JSON bytes, so that errors read exactly as the API's would.
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| invalid(claimed.clone(), JobError::Syntax(e.to_string())))?;
    let spec = JobSpec::decode(&bytes).map_err(|e| invalid(claimed.clone(), e))?;
    let job = Job::validate(spec).map_err(|e| invalid(claimed.clone(), e))?;
    Ok(Manifest {
        spec: job.spec,
        sets_paused,
        source,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// One YAML document: a job, or a list of jobs each with the line it starts
/// on (the document's own line is in the `Spanned` around it).
struct YamlDoc(Vec<(Option<u64>, Value)>);

impl<'de> Deserialize<'de> for YamlDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DocVisitor;
        impl<'de> Visitor<'de> for DocVisitor {
            type Value = YamlDoc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a job (a mapping of fields) or a list of jobs")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<YamlDoc, A::Error> {
                let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(YamlDoc(vec![(None, v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YamlDoc, A::Error> {
                let mut jobs = Vec::new();
                while let Some(item) = seq.next_element::<serde_saphyr::Spanned<Value>>()? {
                    jobs.push((Some(item.referenced.line()), item.value));
                }
                Ok(YamlDoc(jobs))
            }
        }
        d.deserialize_any(DocVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetcron_shared::job::Shards;

    const MULTI: &str = "\
# nightly jobs
id: report
schedule: 0 30 6 * * MON-FRI
timezone: Europe/Berlin
shards: [no, se, dk]
run:
  shell: ./report
---
- id: cleanup
  schedule: '@daily'
  run: {shell: ./cleanup}
  paused: true
- id: sync
  schedule: '@every 90s'
  run: {shell: ./sync}
---
";

    fn yaml(text: &str) -> Result<Vec<Manifest>, LoadError> {
        parse("jobs.yaml", text, Format::Yaml)?
            .into_iter()
            .map(decode)
            .collect()
    }

    #[test]
    fn yaml_documents_and_lists_become_jobs_with_their_lines() {
        let jobs = yaml(MULTI).unwrap();
        let ids: Vec<&str> = jobs.iter().map(|m| m.spec.id.as_str()).collect();
        assert_eq!(ids, ["report", "cleanup", "sync"]);
        let sources: Vec<&str> = jobs.iter().map(|m| m.source.as_str()).collect();
        assert_eq!(sources, ["jobs.yaml:2", "jobs.yaml:9", "jobs.yaml:13"]);
        // YAML 1.2: `no` is a string, not false.
        assert_eq!(
            jobs[0].spec.shards,
            Shards::Params(vec!["no".into(), "se".into(), "dk".into()])
        );
        assert_eq!(jobs[0].spec.timezone, "Europe/Berlin");
        assert!(!jobs[0].sets_paused && !jobs[0].spec.paused);
        assert!(jobs[1].sets_paused && jobs[1].spec.paused);
    }

    #[test]
    fn json_objects_and_lists_become_jobs() {
        let one = r#"{"id":"a","schedule":"@hourly","run":{"shell":"x"},"paused":false}"#;
        let jobs = parse("a.json", one, Format::Json).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].source, "a.json");
        let m = decode(jobs[0].clone()).unwrap();
        assert!(m.sets_paused && !m.spec.paused);

        let list = format!("[{one}, {}]", one.replace("\"a\"", "\"b\""));
        let jobs = parse("l.json", &list, Format::Json).unwrap();
        assert_eq!(jobs[1].source, "l.json (item 2)");
        assert_eq!(decode(jobs[1].clone()).unwrap().spec.id, "b");
    }

    #[test]
    fn invalid_jobs_name_file_job_and_field() {
        let err = yaml("id: bad\nschedule: 0 0 25 * * *\nrun: {shell: x}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "jobs.yaml:1: job 'bad': schedule: '0 0 25 * * *': hour must be 0-23"
        );
        let err = yaml("- id: ok\n  schedule: '@hourly'\n  run: {shell: x}\n- id: t\n  schedule: '@hourly'\n  run: {shell: x}\n  timout: 5s\n").unwrap_err();
        match &err {
            LoadError::Invalid { at, job, error } => {
                assert_eq!(at, "jobs.yaml:4");
                assert_eq!(job.as_deref(), Some("t"));
                assert_eq!(error.field_name(), Some("timout"));
            }
            other => panic!("{other:?}"),
        }
        let err = yaml("schedule: '@hourly'\nrun: {shell: x}\n").unwrap_err();
        assert_eq!(err.to_string(), "jobs.yaml:1: id: is required");
        let err = yaml("just a string\n").unwrap_err();
        assert!(matches!(err, LoadError::Syntax { .. }), "{err}");
        let err = parse("j.json", "[1]", Format::Json)
            .unwrap()
            .into_iter()
            .map(decode)
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("found a number"), "{err}");
    }

    #[test]
    fn syntax_errors_are_one_line_with_a_position() {
        for (text, format) in [
            ("id: a\n  bad: : x\n", Format::Yaml),
            ("id: a\nid: b\n", Format::Yaml),
            ("{\"id\": \"a\",", Format::Json),
        ] {
            let err = parse("f", text, format).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, LoadError::Syntax { .. }), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
            assert!(msg.contains("line"), "{msg}");
        }
        let dup = parse("f", "id: a\nid: b\n", Format::Yaml).unwrap_err();
        assert_eq!(
            dup.to_string(),
            "f: duplicate mapping key: id at line 2, column 1"
        );
    }

    #[test]
    fn directories_duplicates_and_empty_sets() {
        let dir = tempfile::tempdir().unwrap();
        let job = |id: &str| format!("id: {id}\nschedule: '@hourly'\nrun: {{shell: x}}\n");
        std::fs::write(dir.path().join("b.yml"), job("b")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), job("a")).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a job").unwrap();
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let files = expand(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yml"]);
        // The same file twice (directory and file) is read once.
        let both = [dir.path().to_path_buf(), dir.path().join("a.yaml")];
        assert_eq!(load(&both).unwrap().len(), 2);

        std::fs::write(
            dir.path().join("c.json"),
            format!(
                "[{}]",
                r#"{"id":"a","schedule":"@daily","run":{"shell":"y"}}"#
            ),
        )
        .unwrap();
        match load(&[dir.path().to_path_buf()]).unwrap_err() {
            LoadError::Duplicate { id, first, second } => {
                assert_eq!(id, "a");
                assert!(first.ends_with("a.yaml:1"), "{first}");
                assert!(second.ends_with("c.json (item 1)"), "{second}");
            }
            other => panic!("{other:?}"),
        }

        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("x.yaml"), "---\n").unwrap();
        assert!(matches!(
            load(&[empty.path().to_path_buf()]),
            Err(LoadError::Empty(_))
        ));
        assert!(matches!(
            load(&[dir.path().join("README.md")]),
            Err(LoadError::Extension { .. })
        ));
        assert!(matches!(
            load(&[dir.path().join("missing.yaml")]),
            Err(LoadError::Read { .. })
        ));
    }

    #[test]
    fn several_problems_are_counted_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "id: a\nschedule: nope\nrun: {shell: x}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.json"), "{").unwrap();
        let err = load(&[dir.path().to_path_buf()]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LoadError::Many { more: 1, .. }), "{msg}");
        assert!(msg.contains("a.yaml:1: job 'a': schedule: "), "{msg}");
        assert!(msg.ends_with("(and 1 more problem)"), "{msg}");
    }
}
