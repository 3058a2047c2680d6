//! Reading a definition's JSON. What is not one JSON object is a syntax
//! error; anything else that does not decode names the field at fault by its
//! path (`retry.backoff[1]`, `run.http.url`), a missing or repeated one
//! included.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::error::Category;

use super::{JobError, JobSpec};
use crate::quote::{clip, clip_quoted_runs};

/// Why an unknown top-level field is refused.
const UNKNOWN_REASON: &str = "unknown field (known: id, schedule, timezone, start_at, end_at, \
     shards, group, run, timeout, deadline, retry, payload, description, paused, history, \
     misfire, misfire_limit, overlap, on_success)";

/// Decodes a definition's JSON (size and emptiness are checked before).
pub(super) fn decode(bytes: &[u8]) -> Result<JobSpec, JobError> {
    // The common case, fast. Only from an object: serde would also read a
    // struct from an array, by position.
    if first_char(bytes) == Some(b'{')
        && let Ok(spec) = serde_json::from_slice(bytes)
    {
        return Ok(spec);
    }
    // Not JSON (trailing text included), or not an object: no field to name.
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| JobError::Syntax(clip_quoted_runs(&e.to_string())))?;
    if !value.is_object() {
        return Err(JobError::Syntax(format!(
            "a definition is a JSON object, found {}",
            kind(&value)
        )));
    }
    // Read again, tracking the path. From the bytes, so that a key given
    // twice is refused as such (the parsed value keeps the last one).
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, JobSpec>(de) {
        Err(e) if e.inner().classify() == Category::Data => Err(field_error(&e)),
        // serde_json refuses some shapes of an enum as syntax (`"run": {}`,
        // a `run` with two keys); read from the parsed value, the reason is
        // serde's, with its path.
        _ => serde_path_to_error::deserialize::<_, JobSpec>(value).map_err(|e| field_error(&e)),
    }
}

fn first_char(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The field a decode error is about, and why.
fn field_error(e: &serde_path_to_error::Error<serde_json::Error>) -> JobError {
    let path = match e.path().to_string() {
        // A key written `""`.
        empty if empty.is_empty() => "\"\"".to_string(),
        path => path,
    };
    let text = strip_position(e.inner());
    // A missing or repeated field is reported at the object holding it.
    for (marker, reason) in [
        ("missing field `", "is required"),
        ("duplicate field `", "is given twice"),
    ] {
        // The whole message is `` marker name` ``: the name may hold a backtick.
        if let Some(name) = text.strip_prefix(marker).and_then(|r| r.strip_suffix('`')) {
            let field = if path == "." {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            return JobError::field(clip(&field), reason);
        }
    }
    if path != "." {
        return JobError::field(clip(&path), clip_quoted_runs(&text));
    }
    // An unknown top-level field is reported without a path.
    // `` unknown field `name`, expected ... ``
    let unknown = text
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.find("`, ").map(|end| &rest[..end]));
    match unknown {
        Some(name) => JobError::field(clip(name), UNKNOWN_REASON),
        None => JobError::Syntax(clip_quoted_runs(&text)),
    }
}

fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A struct read only from a JSON object (`deserialize_with`): serde would
/// also read it from an array, by position, which no one writes on purpose.
pub(super) fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(ObjectVisitor(PhantomData))
}

/// A map whose keys are each given once (`deserialize_with`): a JSON object
/// read into a map otherwise keeps the last of a repeated key.
pub(super) fn unique_keys<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct UniqueVisitor;
    impl<'de> Visitor<'de> for UniqueVisitor {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                }
                let value = map.next_value::<String>()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(UniqueVisitor)
}

#[cfg(test)]
mod tests {
    use super::super::Job;
    use super::*;

    fn refusal(json: &str) -> JobError {
        Job::decode(json.as_bytes(), None).expect_err(json)
    }

    fn field(json: &str) -> (String, String) {
        match refusal(json) {
            JobError::Field { field, reason } => (field, reason),
            other => panic!("{json}: expected a field error, got {other:?}"),
        }
    }

    const RUN: &str = r#""schedule":"@hourly","run":{"shell":"t"}"#;

    #[test]
    fn a_key_given_twice_is_named_at_any_depth() {
        for (body, name) in [
            (format!(r#"{{"id":"x","id":"y",{RUN}}}"#), "id"),
            (format!(r#"{{"id":"x",{RUN},"run":{{"shell":"u"}}}}"#), "run"),
            (
                format!(r#"{{"id":"x",{RUN},"retry":{{"max_attempts":1,"max_attempts":2}}}}"#),
                "retry.max_attempts",
            ),
            (
                r#"{"id":"x","schedule":"@hourly","run":{"http":{"url":"http://h","url":"http://i"}}}"#
                    .to_string(),
                "run.http.url",
            ),
            (
                r#"{"id":"x","schedule":"@hourly","run":{"http":{"url":"http://h","headers":{"A":"1","A":"2"}}}}"#
                    .to_string(),
                "run.http.headers.A",
            ),
        ] {
            assert_eq!(field(&body), (name.to_string(), "is given twice".to_string()));
        }
    }

    #[test]
    fn a_missing_nested_field_is_named_by_its_path() {
        let body = r#"{"id":"x","schedule":"@hourly","run":{"http":{"method":"GET"}}}"#;
        assert_eq!(field(body), ("run.http.url".into(), "is required".into()));
    }

    #[test]
    fn text_after_the_definition_is_refused() {
        for tail in [" x", "}", r#"{"id":"y"}"#, ","] {
            let body = format!(r#"{{"id":"x",{RUN}}}{tail}"#);
            assert!(matches!(refusal(&body), JobError::Syntax(_)), "{body}");
        }
        assert!(Job::decode(format!("{{\"id\":\"x\",{RUN}}}\n ").as_bytes(), None).is_ok());
    }

    #[test]
    fn structs_are_read_only_from_objects() {
        // serde reads a struct from an array by position; a definition is not.
        let positional = r#"["x","@hourly","UTC",null,null,1,"default",{"shell":"t"},null,null,
            {"max_attempts":1},null,null,false,null,"fire_once",null,"allow",[]]"#;
        assert_eq!(
            refusal(positional),
            JobError::Syntax("a definition is a JSON object, found an array".into())
        );
        let (f, r) = field(&format!(r#"{{"id":"x",{RUN},"retry":[3,["1s"]]}}"#));
        assert_eq!(
            (f.as_str(), r.as_str()),
            ("retry", "invalid type: sequence, expected an object")
        );
        let (f, _) = field(r#"{"id":"x","schedule":"@hourly","run":{"http":["http://h"]}}"#);
        assert_eq!(f, "run.http");
    }

    #[test]
    fn a_run_without_exactly_one_kind_is_named() {
        for run in ["{}", r#"{"shell":"t","handler":"h"}"#] {
            let (f, r) = field(&format!(r#"{{"id":"x","schedule":"@hourly","run":{run}}}"#));
            assert_eq!(
                (f.as_str(), r.as_str()),
                ("run", "invalid value: map, expected map with a single key"),
                "{run}"
            );
        }
    }

    #[test]
    fn an_empty_key_is_named_as_written() {
        let (f, r) = field(&format!(r#"{{"id":"x",{RUN},"":1}}"#));
        assert_eq!(f, r#""""#);
        assert!(r.starts_with("unknown field"), "{r}");
    }

    #[test]
    fn numbers_in_a_payload_survive_being_stored_again() {
        // Parsed inexactly, this one came back one unit in the last place
        // off each time a definition was stored again.
        let body = format!(r#"{{"id":"x",{RUN},"payload":[-4.7759434525956854e-257]}}"#);
        let job = Job::decode(body.as_bytes(), None).unwrap();
        let again = Job::decode(&job.spec.encode(), None).unwrap();
        assert_eq!(again.spec.payload, job.spec.payload);
        assert_eq!(
            job.spec.payload,
            Some(serde_json::json!([-4.7759434525956854e-257_f64]))
        );
    }
}
