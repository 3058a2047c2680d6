//! `run.http`: a shard as one HTTP request, and the `{{var}}` templates its
//! URL, headers and body may hold.
//!
//! The shard's context (job, instant, shard, ...) reaches the request two
//! ways. Templates: `{{shard}}` in the URL, a header value or the body is
//! replaced by its value, for endpoints whose shape is given (a query
//! parameter, an auth header). And the envelope: a POST, PUT or PATCH
//! without a `body` sends the whole context as one JSON object, which needs
//! no configuration and cannot get JSON escaping wrong. The variables are
//! exactly the envelope's keys ([`VARIABLES`]); the worker builds both.
//!
//! Everything that can be checked without a shard is checked when the job
//! is put, naming the field: the URL (after replacing every variable by a
//! sample value), the scheme, the method, header names and values, unknown
//! variables, the expected status codes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::JobError;
use crate::quote::{clip, quote};

/// Method of a request whose definition names none: a job asks a service
/// to do something, and the envelope it sends by default is a body.
pub const DEFAULT_METHOD: &str = "POST";
/// The template variables, which are also the keys of the envelope.
pub const VARIABLES: [&str; 11] = [
    "job", "instant", "fire_id", "shard", "shards", "param", "attempt", "run_id", "worker",
    "payload", "parent",
];
/// Most headers a definition may set.
pub const MAX_HEADERS: usize = 64;
/// Most expected status codes.
const MAX_EXPECT: usize = 100;
/// Headers the client writes itself, from the body it sends.
const FRAMING_HEADERS: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// `run.http` as written in a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Default [`DEFAULT_METHOD`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `http://` or `https://`; may hold variables.
    pub url: String,
    /// Values may hold variables.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "super::decode::unique_keys"
    )]
    pub headers: BTreeMap<String, String>,
    /// A string is sent as it is (after substitution); any other JSON value
    /// is sent as JSON, a string in it that is exactly one `{{var}}` becoming
    /// the variable's JSON value. None: the envelope, for POST, PUT, PATCH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Status codes that succeed; empty: any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<u16>,
    /// The request's limit (default: the job's `timeout`, at most it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl HttpSpec {
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or(DEFAULT_METHOD)
    }

    /// Whether the envelope is the body: no `body`, and a method that
    /// carries one.
    pub fn sends_envelope(&self) -> bool {
        self.body.is_none() && matches!(self.method(), "POST" | "PUT" | "PATCH")
    }

    /// Whether `status` succeeds.
    pub fn expects(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }

    /// What `expect` means, for errors: `2xx`, or the list.
    pub fn expected(&self) -> String {
        match self.expect.as_slice() {
            [] => "2xx".to_string(),
            [one] => one.to_string(),
            many => {
                let list: Vec<String> = many.iter().map(u16::to_string).collect();
                format!("one of {}", list.join(", "))
            }
        }
    }

    /// Checks every field but `timeout` (see `Job::validate`).
    pub fn validate(&self) -> Result<(), JobError> {
        let method = self.method();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(JobError::field(
                "run.http.method",
                format!(
                    "{} is not a method: use upper-case letters, such as GET, POST, PUT",
                    quote(method)
                ),
            ));
        }
        check_template("run.http.url", &self.url)?;
        let sample = render(&self.url, |_| "0".to_string()).unwrap_or_default();
        let url = url::Url::parse(&sample).map_err(|e| {
            JobError::field(
                "run.http.url",
                format!("{} is not a URL: {e}", quote(&self.url)),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(JobError::field(
                "run.http.url",
                format!(
                    "{}: scheme {} is not http or https",
                    quote(&self.url),
                    quote(url.scheme())
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(JobError::field(
                "run.http.url",
                format!("{} has no host", quote(&self.url)),
            ));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(JobError::field(
                "run.http.headers",
                format!(
                    "at most {MAX_HEADERS} headers, found {}",
                    self.headers.len()
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in &self.headers {
            let field = clip(&format!("run.http.headers.{name}"));
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(JobError::field(
                    "run.http.headers",
                    format!(
                        "{} is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
                        quote(name)
                    ),
                ));
            }
            let lower = name.to_ascii_lowercase();
            if FRAMING_HEADERS.contains(&lower.as_str()) {
                return Err(JobError::field(
                    field,
                    "is set by the worker from the URL and the body",
                ));
            }
            if !seen.insert(lower) {
                return Err(JobError::field(
                    field,
                    "is given twice (header names ignore case)",
                ));
            }
            if let Some(bad) = value.chars().find(|c| !is_header_char(*c)) {
                return Err(JobError::field(
                    field,
                    format!(
                        "value holds {bad:?}, which a header cannot carry (visible ASCII, \
                         spaces and tabs)"
                    ),
                ));
            }
            check_template(&field, value)?;
        }
        if let Some(body) = &self.body {
            check_json("run.http.body", body)?;
        }
        if self.expect.len() > MAX_EXPECT {
            return Err(JobError::field(
                "run.http.expect",
                format!("at most {MAX_EXPECT} codes, found {}", self.expect.len()),
            ));
        }
        for (i, code) in self.expect.iter().enumerate() {
            if !(100..=599).contains(code) {
                return Err(JobError::field(
                    format!("run.http.expect[{i}]"),
                    format!("{code} is not an HTTP status code (100-599)"),
                ));
            }
        }
        Ok(())
    }
}

/// RFC 9110 token characters: header names and methods.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a header value may hold: visible ASCII, space and tab.
fn is_header_char(c: char) -> bool {
    c == '\t' || (' '..='~').contains(&c)
}

/// One part of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    /// A variable's name, trimmed.
    Var(&'a str),
}

/// Splits a template into text and variables. `{{` always opens a
/// variable; there is no escape.
pub fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!(
                "{{{{ without a closing }}}} in {}",
                quote(template)
            ));
        };
        let name = after[..close].trim();
        if !VARIABLES.contains(&name) {
            return Err(format!(
                "unknown variable {{{{{}}}}} in {} (known: {})",
                clip(name),
                quote(template),
                VARIABLES.join(", ")
            ));
        }
        out.push(Piece::Var(name));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn check_template(field: &str, template: &str) -> Result<(), JobError> {
    pieces(template)
        .map(|_| ())
        .map_err(|e| JobError::field(field, e))
}

fn check_json(field: &str, value: &Value) -> Result<(), JobError> {
    match value {
        Value::String(s) => check_template(field, s),
        Value::Array(items) => items.iter().try_for_each(|v| check_json(field, v)),
        Value::Object(map) => map.values().try_for_each(|v| check_json(field, v)),
        _ => Ok(()),
    }
}

/// `template` with each variable replaced by `value(name)`.
pub fn render(template: &str, value: impl Fn(&str) -> String) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => out.push_str(&value(name)),
        }
    }
    Ok(out)
}

/// A variable's value as text: strings as they are, `null` as nothing,
/// anything else as compact JSON.
pub fn text_of(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `template` with each variable replaced by its value in `vars`, as text.
pub fn render_text(template: &str, vars: &Map<String, Value>) -> Result<String, String> {
    render(template, |name| text_of(vars.get(name)))
}

/// A JSON body with its strings rendered: a string that is exactly one
/// variable becomes the variable's JSON value (a number, the payload, null).
pub fn render_json(body: &Value, vars: &Map<String, Value>) -> Result<Value, String> {
    Ok(match body {
        Value::String(s) => match pieces(s)?.as_slice() {
            [Piece::Var(name)] => vars.get(*name).cloned().unwrap_or(Value::Null),
            _ => Value::String(render_text(s, vars)?),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_json(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> HttpSpec {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: Value) -> (String, String) {
        match spec(v).validate().unwrap_err() {
            JobError::Field { field, reason } => (field, reason),
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn errors_quote_at_most_80_characters_of_a_name() {
        let long = "v".repeat(5000);
        let (field, reason) = err(json!({"url": format!("http://h/{{{{{long}}}}}")}));
        assert_eq!(field, "run.http.url");
        assert!(reason.chars().count() < 400, "{reason}");
        assert!(reason.starts_with(&format!("unknown variable {{{{{}…}}}}", "v".repeat(80))));
        let name = "H".repeat(5000);
        let (field, _) = err(json!({"url": "http://h", "headers": {name.clone(): "a\nb"}}));
        assert_eq!(field, format!("run.http.headers.{}…", "H".repeat(63)));
    }

    #[test]
    fn defaults_post_and_2xx() {
        let s = spec(json!({"url": "https://example.com/run"}));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.method(), "POST");
        assert!(s.sends_envelope());
        assert!(s.expects(200) && s.expects(204) && s.expects(299));
        assert!(!s.expects(199) && !s.expects(301) && !s.expects(500));
        assert_eq!(s.expected(), "2xx");
        let get = spec(json!({"method": "GET", "url": "http://h/x?s={{shard}}"}));
        assert!(!get.sends_envelope());
        let listed = spec(json!({"url": "http://h", "expect": [200, 302]}));
        assert!(listed.expects(302) && !listed.expects(201));
        assert_eq!(listed.expected(), "one of 200, 302");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                json!({"url": "example.com/x"}),
                "run.http.url",
                "'example.com/x' is not a URL: relative URL without a base",
            ),
            (
                json!({"url": "ftp://example.com/x"}),
                "run.http.url",
                "'ftp://example.com/x': scheme 'ftp' is not http or https",
            ),
            (
                json!({"url": "http://h/{{region}}"}),
                "run.http.url",
                "unknown variable {{region}} in 'http://h/{{region}}' (known: job, instant, \
                 fire_id, shard, shards, param, attempt, run_id, worker, payload, parent)",
            ),
            (
                json!({"url": "http://h/{{shard"}),
                "run.http.url",
                "{{ without a closing }} in 'http://h/{{shard'",
            ),
            (
                json!({"url": "http://h", "method": "get"}),
                "run.http.method",
                "'get' is not a method: use upper-case letters, such as GET, POST, PUT",
            ),
            (
                json!({"url": "http://h", "headers": {"X Bad": "1"}}),
                "run.http.headers",
                "'X Bad' is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                json!({"url": "http://h", "headers": {"X-A": "a\nb"}}),
                "run.http.headers.X-A",
                "value holds '\\n', which a header cannot carry (visible ASCII, spaces and tabs)",
            ),
            (
                json!({"url": "http://h", "headers": {"X-A": "1", "x-a": "2"}}),
                "run.http.headers.x-a",
                "is given twice (header names ignore case)",
            ),
            (
                json!({"url": "http://h", "headers": {"Content-Length": "2"}}),
                "run.http.headers.Content-Length",
                "is set by the worker from the URL and the body",
            ),
            (
                json!({"url": "http://h", "headers": {"X-Run": "{{run}}"}}),
                "run.http.headers.X-Run",
                "unknown variable {{run}} in '{{run}}' (known: job, instant, fire_id, shard, \
                 shards, param, attempt, run_id, worker, payload, parent)",
            ),
            (
                json!({"url": "http://h", "body": {"a": ["{{nope}}"]}}),
                "run.http.body",
                "unknown variable {{nope}} in '{{nope}}' (known: job, instant, fire_id, shard, \
                 shards, param, attempt, run_id, worker, payload, parent)",
            ),
            (
                json!({"url": "http://h", "expect": [200, 99]}),
                "run.http.expect[1]",
                "99 is not an HTTP status code (100-599)",
            ),
            (
                json!({"url": "http://h", "expect": [600]}),
                "run.http.expect[0]",
                "600 is not an HTTP status code (100-599)",
            ),
        ];
        for (v, field, reason) in cases {
            assert_eq!(
                err(v.clone()),
                (field.to_string(), reason.to_string()),
                "{v}"
            );
        }
        // A variable in the host is checked with a sample value.
        assert_eq!(
            spec(json!({"url": "https://{{param}}.example.com/{{job}}?a={{attempt}}"})).validate(),
            Ok(())
        );
    }

    #[test]
    fn templates_render_text_and_typed_json() {
        let vars: Map<String, Value> = json!({
            "job": "sync", "shard": 2, "param": null, "payload": {"n": 1}, "run_id": "R1"
        })
        .as_object()
        .unwrap()
        .clone();
        assert_eq!(
            render_text("/{{job}}/{{ shard }}?p={{param}}&x={{payload}}", &vars).unwrap(),
            "/sync/2?p=&x={\"n\":1}"
        );
        let body = json!({"id": "{{run_id}}", "shard": "{{shard}}", "data": "{{payload}}",
                          "label": "shard {{shard}}", "list": ["{{param}}", 3]});
        assert_eq!(
            render_json(&body, &vars).unwrap(),
            json!({"id": "R1", "shard": 2, "data": {"n": 1}, "label": "shard 2",
                   "list": [null, 3]})
        );
        assert_eq!(
            pieces("a{{job}}b").unwrap(),
            vec![Piece::Text("a"), Piece::Var("job"), Piece::Text("b")]
        );
    }
}
