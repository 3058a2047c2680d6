//! Mutations of valid job definitions, each breaking one known field (or
//! the JSON itself), with what decoding must come to; and garbage made from
//! definitions and bytes.

use chrono::TimeDelta;
use jetcron_shared::quote::clip;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use super::*;

/// What a mutated definition must come to.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Refused, naming this field.
    Field(String),
    /// Refused as not a JSON object.
    Syntax,
    /// Accepted.
    Ok,
    /// Refused as larger than a definition may be (a mutation that made it
    /// so: a long command given twice).
    TooLarge,
}

/// A definition to decode, with the key it is stored under, and what it must
/// come to.
#[derive(Clone)]
pub struct Case {
    pub body: Vec<u8>,
    pub key: Option<String>,
    pub expect: Expect,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        f.debug_struct("Case")
            .field("bytes", &self.body.len())
            .field("body", &body.chars().take(2000).collect::<String>())
            .field("key", &self.key)
            .field("expect", &self.expect)
            .finish()
    }
}

fn case(def: &Value, expect: Expect) -> Case {
    Case {
        body: serde_json::to_vec(def).unwrap(),
        key: None,
        expect,
    }
}

fn field(name: &str) -> Expect {
    Expect::Field(clip(name))
}

/// `def` with `path` set to `value`, refused naming `expect`.
fn with(def: &Value, path: &[Seg], value: Value, expect: &str) -> Case {
    let mut def = def.clone();
    set(&mut def, path, value);
    case(&def, field(expect))
}

fn top(def: &Value, name: &str, value: Value) -> Case {
    with(def, &[key(name)], value, name)
}

// ---- mutations of a definition, each with the field it breaks ----

/// A field given a value of the wrong type.
fn wrong_type(def: Value) -> BoxedStrategy<Case> {
    let paths = typed_paths(&def);
    (any::<Index>(), any::<usize>())
        .prop_map(move |(which, pick)| {
            let (path, shape) = &paths[which.index(paths.len())];
            with(&def, path, wrong_value(*shape, pick), &path_text(path))
        })
        .boxed()
}

/// A value of the right type that no field of its kind takes.
fn bad_value(def: Value) -> BoxedStrategy<Case> {
    let d = def.clone();
    let id = def["id"].as_str().unwrap_or_default().to_string();
    prop_oneof![
        bad_name(128).prop_map({
            let d = d.clone();
            move |v| top(&d, "id", v.into())
        }),
        bad_name(64).prop_map({
            let d = d.clone();
            move |v| top(&d, "group", v.into())
        }),
        prop_oneof![
            any_text(20).prop_map(|t| format!("Nowhere/{t}")),
            Just(String::new()),
            Just("x".repeat(5000))
        ]
        .prop_map({
            let d = d.clone();
            move |v| top(&d, "timezone", v.into())
        }),
        bad_schedule().prop_map({
            let d = d.clone();
            move |v| top(&d, "schedule", v.into())
        }),
        bad_instant().prop_map({
            let d = d.clone();
            move |v| top(&d, "start_at", v.into())
        }),
        bad_instant().prop_map({
            let d = d.clone();
            move |v| top(&d, "end_at", v.into())
        }),
        bounds_out_of_order(d.clone()),
        bad_shards(d.clone()),
        bad_run(d.clone()),
        prop_oneof![
            bad_duration(),
            Just("0s".to_string()),
            Just("8d".to_string()),
            Just("169h".to_string())
        ]
        .prop_map({
            let d = d.clone();
            move |v| top(&d, "timeout", v.into())
        }),
        prop_oneof![
            bad_duration(),
            Just("999ms".to_string()),
            Just("0s".to_string()),
            Just("8d".to_string())
        ]
        .prop_map({
            let d = d.clone();
            move |v| top(&d, "deadline", v.into())
        }),
        bad_retry(d.clone()),
        prop_oneof![Just(0u64), 1001u64..=u64::from(u32::MAX)].prop_map({
            let d = d.clone();
            move |v| top(&d, "history", v.into())
        }),
        bad_policy(d.clone(), "misfire"),
        bad_policy(d.clone(), "overlap"),
        bad_misfire_limit(d.clone()),
        bad_children(d, id),
    ]
    .boxed()
}

fn bounds_out_of_order(def: Value) -> BoxedStrategy<Case> {
    (
        instant(),
        1i64..=10_000_000_000,
        offset_minutes(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(at, back_ms, offset, z, empty_window)| {
            let mut d = def.clone();
            if empty_window {
                // Bounds in order with no instant of the schedule between.
                let before = at - TimeDelta::milliseconds(back_ms);
                set(
                    &mut d,
                    &[key("schedule")],
                    format!("@at {}", rfc3339(before, offset, z)).into(),
                );
                set(&mut d, &[key("start_at")], rfc3339(at, offset, z).into());
                set(
                    &mut d,
                    &[key("end_at")],
                    rfc3339(at + TimeDelta::days(1), 0, z).into(),
                );
                return case(&d, field("schedule"));
            }
            set(&mut d, &[key("start_at")], rfc3339(at, offset, z).into());
            let end = at - TimeDelta::milliseconds(back_ms);
            set(&mut d, &[key("end_at")], rfc3339(end, 0, z).into());
            case(&d, field("end_at"))
        })
        .boxed()
}

fn bad_shards(def: Value) -> BoxedStrategy<Case> {
    let params = prop::collection::vec("[a-z]{1,5}", 1..5);
    (
        0u8..8,
        params,
        any::<Index>(),
        1001u64..=u64::from(u32::MAX),
        1u64..=u64::MAX,
    )
        .prop_map(move |(how, mut params, at, big, huge)| {
            let i = at.index(params.len());
            let (value, name) = match how {
                0 => (json!(0), "shards".to_string()),
                1 => (json!(big), "shards".to_string()),
                2 => (
                    json!(huge.saturating_add(u64::from(u32::MAX))),
                    "shards".to_string(),
                ),
                3 => (json!(-(big as i64)), "shards".to_string()),
                4 => (json!([]), "shards".to_string()),
                5 => (json!(vec!["p"; 1001]), "shards".to_string()),
                6 => {
                    params[i] = format!("{}\0", params[i]);
                    (json!(params), format!("shards[{i}]"))
                }
                _ => {
                    params[i] = "p".repeat(4097);
                    (json!(params), format!("shards[{i}]"))
                }
            };
            with(&def, &[key("shards")], value, &name)
        })
        .boxed()
}

fn bad_run(def: Value) -> BoxedStrategy<Case> {
    let d = def.clone();
    prop_oneof![
        prop_oneof![
            Just(String::new()),
            "[ \t\n]{1,5}",
            with_nul(),
            Just("x".repeat(131_072)),
        ]
        .prop_map({
            let d = d.clone();
            move |s| with(&d, &[key("run")], json!({"shell": s}), "run.shell")
        }),
        bad_name(64).prop_map({
            let d = d.clone();
            move |s| with(&d, &[key("run")], json!({"handler": s}), "run.handler")
        }),
        bad_http(d),
    ]
    .boxed()
}

/// `run.http`: the definition's own request (or a plain one) with one part
/// broken.
fn bad_http(def: Value) -> BoxedStrategy<Case> {
    let base = match def["run"].get("http") {
        Some(h) => h.clone(),
        None => json!({"url": "https://example.com/run"}),
    };
    let url = prop_oneof![
        Just("ftp://h/x".to_string()),
        Just("mailto:a@b.c".to_string()),
        Just("http://:80/x".to_string()),
        Just("h/x".to_string()),
        Just(String::new()),
        Just("http://[::1/x".to_string()),
        Just("http://h/{{shard".to_string()),
        "[a-z]{1,10}"
            .prop_filter("not a variable", |v| !VARIABLES_LIST.contains(&v.as_str()))
            .prop_map(|v| format!("http://h/{{{{{v}}}}}")),
        Just(format!("http://h/{{{{{}}}}}", "v".repeat(5000))),
        Just(format!("gopher://{}", "h".repeat(5000))),
    ];
    let method = prop_oneof![
        Just("get".to_string()),
        Just(String::new()),
        Just("P0ST".to_string()),
        Just("GE T".to_string()),
        Just("X".repeat(5000) + "x"),
    ];
    let bad_header_name = prop_oneof![
        Just(String::new()),
        "[A-Za-z]{1,5}[ :()\"/é\0][A-Za-z]{0,5}",
        Just("N".repeat(5000) + " "),
    ];
    let bad_header_value = prop_oneof![
        "[a-z]{0,5}[\n\r\0\u{7f}é][a-z]{0,5}",
        Just("{{nope}}".to_string()),
        Just("{{shard".to_string()),
        Just(format!("{{{{{}}}}}", "w".repeat(5000))),
    ];
    let framing = prop::sample::select(vec!["Content-Length", "host", "Transfer-Encoding", "HOST"]);
    let bad_body = prop_oneof![
        Just(json!("{{nope}}")),
        Just(json!({"a": ["ok", "{{shard"]})),
        Just(json!([1, {"b": "{{ missing }}"}])),
    ];
    let code = prop_oneof![0u16..100, 600u16..=u16::MAX];
    let b = base;
    let http = move |b: &Value, part: &str, value: Value, expect: &str| {
        let mut h = b.clone();
        h.as_object_mut().unwrap().insert(part.to_string(), value);
        with(&def, &[key("run")], json!({"http": h}), expect)
    };
    let h = http.clone();
    let b2 = b.clone();
    let one = move |name: &str, value: Value, expect: &str| {
        let mut m = serde_json::Map::new();
        m.insert(name.to_string(), value);
        h(&b2, "headers", Value::Object(m), expect)
    };
    prop_oneof![
        url.prop_map({
            let (h, b) = (http.clone(), b.clone());
            move |u| h(&b, "url", u.into(), "run.http.url")
        }),
        method.prop_map({
            let (h, b) = (http.clone(), b.clone());
            move |m| h(&b, "method", m.into(), "run.http.method")
        }),
        bad_header_name.prop_map({
            let one = one.clone();
            move |n| one(&n, json!("v"), "run.http.headers")
        }),
        (
            prop_oneof![4 => header_name(), 1 => Just("H".repeat(5000))],
            bad_header_value
        )
            .prop_map({
                let one = one.clone();
                move |(n, v)| one(&n, v.into(), &format!("run.http.headers.{n}"))
            }),
        framing.prop_map({
            let one = one.clone();
            move |n| one(n, json!("1"), &format!("run.http.headers.{n}"))
        }),
        header_name()
            .prop_filter("has a letter", |n| n
                .chars()
                .any(|c| c.is_ascii_alphabetic()))
            .prop_map({
                let (h, b) = (http.clone(), b.clone());
                move |n| {
                    let other: String = n
                        .chars()
                        .map(|c| {
                            if c.is_ascii_uppercase() {
                                c.to_ascii_lowercase()
                            } else {
                                c.to_ascii_uppercase()
                            }
                        })
                        .collect();
                    let second = n.clone().max(other.clone());
                    let pair: serde_json::Map<String, Value> =
                        [(n, json!("a")), (other, json!("b"))].into_iter().collect();
                    h(
                        &b,
                        "headers",
                        Value::Object(pair),
                        &format!("run.http.headers.{second}"),
                    )
                }
            }),
        Just(()).prop_map({
            let (h, b) = (http.clone(), b.clone());
            move |()| {
                let many: serde_json::Map<String, Value> =
                    (0..65).map(|i| (format!("h{i}"), json!("v"))).collect();
                h(&b, "headers", Value::Object(many), "run.http.headers")
            }
        }),
        bad_body.prop_map({
            let (h, b) = (http.clone(), b.clone());
            move |v| h(&b, "body", v, "run.http.body")
        }),
        (
            prop::collection::vec(100u16..=599, 0..4),
            code,
            any::<Index>()
        )
            .prop_map({
                let (h, b) = (http.clone(), b.clone());
                move |(mut codes, bad, at)| {
                    let i = at.index(codes.len() + 1);
                    codes.insert(i, bad);
                    h(&b, "expect", json!(codes), &format!("run.http.expect[{i}]"))
                }
            }),
        Just(()).prop_map({
            let (h, b) = (http.clone(), b.clone());
            move |()| h(&b, "expect", json!(vec![200; 101]), "run.http.expect")
        }),
        prop_oneof![bad_duration(), Just("0ms".to_string())].prop_map({
            let (h, b) = (http.clone(), b.clone());
            move |t| h(&b, "timeout", t.into(), "run.http.timeout")
        }),
        (1u64..=1000).prop_map({
            let (h, b) = (http, b);
            move |s| {
                // Longer than the job's own timeout.
                let mut case = h(
                    &b,
                    "timeout",
                    format!("{}s", s + 1).into(),
                    "run.http.timeout",
                );
                let mut d: Value = serde_json::from_slice(&case.body).unwrap();
                set(&mut d, &[key("timeout")], format!("{s}s").into());
                case.body = serde_json::to_vec(&d).unwrap();
                case
            }
        }),
    ]
    .boxed()
}

const VARIABLES_LIST: [&str; 11] = jetcron_shared::job::http::VARIABLES;

fn bad_retry(def: Value) -> BoxedStrategy<Case> {
    let mut base = def["retry"].as_object().cloned().unwrap_or_default();
    base.remove("backoff");
    let backoff = (
        prop::collection::vec(duration(0, 86_400_000), 0..3),
        prop_oneof![bad_duration(), Just("25h".to_string())],
        any::<Index>(),
    );
    prop_oneof![
        prop_oneof![Just(0u64), 101u64..=u64::from(u32::MAX)].prop_map({
            let (d, base) = (def.clone(), base.clone());
            move |n| {
                let mut r = base.clone();
                r.insert("max_attempts".into(), n.into());
                with(&d, &[key("retry")], Value::Object(r), "retry.max_attempts")
            }
        }),
        backoff.prop_map(move |(mut list, bad, at)| {
            let i = at.index(list.len() + 1);
            list.insert(i, bad);
            let mut r = base.clone();
            r.insert("backoff".into(), json!(list));
            with(
                &def,
                &[key("retry")],
                Value::Object(r),
                &format!("retry.backoff[{i}]"),
            )
        }),
    ]
    .boxed()
}

fn bad_policy(def: Value, name: &'static str) -> BoxedStrategy<Case> {
    prop_oneof![
        any_text(12),
        Just("FIRE_ALL".to_string()),
        Just("x".repeat(5000))
    ]
    .prop_filter("not a policy", |p| {
        ![
            "fire_once",
            "skip",
            "fire_all",
            "allow",
            "forbid",
            "queue",
            "replace",
        ]
        .contains(&p.as_str())
    })
    .prop_map(move |p| top(&def, name, p.into()))
    .boxed()
}

fn bad_misfire_limit(def: Value) -> BoxedStrategy<Case> {
    (
        prop_oneof![Just(0u64), 1001u64..=u64::from(u32::MAX)],
        1u32..=1000,
        0u8..3,
    )
        .prop_map(move |(out, fine, how)| {
            let mut d = def.clone();
            match how {
                0 => {
                    set(&mut d, &[key("misfire")], "fire_all".into());
                    set(&mut d, &[key("misfire_limit")], out.into());
                }
                1 => {
                    set(&mut d, &[key("misfire")], "skip".into());
                    set(&mut d, &[key("misfire_limit")], fine.into());
                }
                _ => {
                    remove(&mut d, &[key("misfire")]);
                    set(&mut d, &[key("misfire_limit")], fine.into());
                }
            }
            case(&d, field("misfire_limit"))
        })
        .boxed()
}

fn bad_children(def: Value, own: String) -> BoxedStrategy<Case> {
    let valid = prop::collection::btree_set(id(), 0..4);
    (valid, bad_name(128), 0u8..4)
        .prop_map(move |(valid, bad, how)| {
            let mut list: Vec<String> = valid.into_iter().filter(|c| *c != own).collect();
            let i = list.len();
            let expect = match how {
                0 => {
                    list.push(bad);
                    format!("on_success[{i}]")
                }
                1 => {
                    list.push(own.clone());
                    format!("on_success[{i}]")
                }
                2 if i > 0 => {
                    list.push(list[0].clone());
                    format!("on_success[{i}]")
                }
                _ => {
                    list = (0..33).map(|n| format!("child-{n}")).collect();
                    "on_success".to_string()
                }
            };
            with(&def, &[key("on_success")], json!(list), &expect)
        })
        .boxed()
}

/// A field no definition (or nested object) has.
fn unknown_field(def: Value) -> BoxedStrategy<Case> {
    let http = def["run"].get("http").is_some();
    (unknown_key(), 0u8..3, json_value())
        .prop_map(move |(k, place, value)| {
            let mut d = def.clone();
            let path = match place {
                1 => {
                    if d.get("retry").is_none() {
                        set(&mut d, &[key("retry")], json!({}));
                    }
                    vec![key("retry"), key(&k)]
                }
                2 if http => vec![key("run"), key("http"), key(&k)],
                _ => vec![key(&k)],
            };
            with(&d, &path, value, &path_text(&path))
        })
        .boxed()
}

/// A required field left out.
fn missing_field(def: Value) -> BoxedStrategy<Case> {
    let mut paths = vec![vec![key("id")], vec![key("schedule")], vec![key("run")]];
    if def["run"].get("http").is_some() {
        paths.push(vec![key("run"), key("http"), key("url")]);
    }
    any::<Index>()
        .prop_map(move |which| {
            let path = &paths[which.index(paths.len())];
            let mut d = def.clone();
            remove(&mut d, path);
            case(&d, field(&path_text(path)))
        })
        .boxed()
}

/// A key given twice in one object.
fn duplicate_key(def: Value) -> BoxedStrategy<Case> {
    let mut objects: Vec<Vec<Seg>> = vec![vec![]];
    if def["retry"].as_object().is_some_and(|r| !r.is_empty()) {
        objects.push(vec![key("retry")]);
    }
    if def["run"].get("http").is_some() {
        objects.push(vec![key("run"), key("http")]);
        if def["run"]["http"].get("headers").is_some() {
            objects.push(vec![key("run"), key("http"), key("headers")]);
        }
    }
    (any::<Index>(), any::<Index>())
        .prop_map(move |(which, pick)| {
            let object = &objects[which.index(objects.len())];
            let mut d = def.clone();
            let keys: Vec<String> = get_mut(&mut d, object)
                .and_then(|o| o.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let k = &keys[pick.index(keys.len())];
            let path = [object.clone(), vec![key(k)]].concat();
            // The same value again: only the repetition is wrong.
            let extra = get_mut(&mut d, &path).cloned().unwrap();
            Case {
                body: text_with_duplicate(&d, object, k, &extra).into_bytes(),
                key: None,
                expect: field(&path_text(&path)),
            }
        })
        .boxed()
}

/// Stored under another key than its id.
fn other_key(def: Value) -> BoxedStrategy<Case> {
    let own = def["id"].as_str().unwrap_or_default().to_string();
    id().prop_filter("another id", move |k| *k != own)
        .prop_map(move |k| Case {
            key: Some(k),
            ..case(&def, field("id"))
        })
        .boxed()
}

/// Cut short: not JSON.
fn truncated(def: Value) -> BoxedStrategy<Case> {
    (any::<Index>(), any::<bool>())
        .prop_map(move |(at, pretty)| {
            let body = if pretty {
                serde_json::to_vec_pretty(&def).unwrap()
            } else {
                serde_json::to_vec(&def).unwrap()
            };
            let cut = at.index(body.len());
            Case {
                body: body[..cut].to_vec(),
                key: None,
                expect: Expect::Syntax,
            }
        })
        .boxed()
}

/// Text after the object: not one JSON value.
fn trailing(def: Value) -> BoxedStrategy<Case> {
    prop_oneof![
        Just(" x".to_string()),
        Just("}".to_string()),
        Just(",".to_string()),
        Just(format!("\n{}", json!({"id": "other"}))),
        "[ \t\n]{0,3}[a-z0-9\\[\\]{}\",:]{1,8}",
    ]
    .prop_map(move |tail| {
        let mut body = serde_json::to_vec(&def).unwrap();
        body.extend_from_slice(tail.as_bytes());
        Case {
            body,
            key: None,
            expect: Expect::Syntax,
        }
    })
    .boxed()
}

/// JSON, but not an object: the definition's values as a list among them.
fn not_an_object(def: Value) -> BoxedStrategy<Case> {
    let positional: Vec<Value> = def.as_object().unwrap().values().cloned().collect();
    prop_oneof![
        json_value().prop_filter("not an object", |v| !v.is_object()),
        Just(Value::Array(positional)),
    ]
    .prop_map(|v| case(&v, Expect::Syntax))
    .boxed()
}

/// Changes that keep a definition valid: `null` for an optional field,
/// NUL and controls where they are plain data.
fn harmless(def: Value) -> BoxedStrategy<Case> {
    let mut optional = vec![
        "start_at",
        "end_at",
        "deadline",
        "payload",
        "description",
        "history",
        "misfire_limit",
    ];
    // Without the job's timeout, a request's own may be too long.
    if def["run"]
        .get("http")
        .and_then(|h| h.get("timeout"))
        .is_none()
    {
        optional.push("timeout");
    }
    (any::<Index>(), with_nul(), any::<bool>())
        .prop_map(move |(which, text, null)| {
            let mut d = def.clone();
            if null {
                set(
                    &mut d,
                    &[key(optional[which.index(optional.len())])],
                    Value::Null,
                );
            } else {
                set(&mut d, &[key("description")], text.clone().into());
                set(&mut d, &[key("payload")], json!({"text": text}));
            }
            case(&d, Expect::Ok)
        })
        .boxed()
}

pub fn mutation() -> BoxedStrategy<Case> {
    definition()
        .prop_flat_map(|def| {
            prop_oneof![
                4 => wrong_type(def.clone()),
                8 => bad_value(def.clone()),
                2 => unknown_field(def.clone()),
                1 => missing_field(def.clone()),
                2 => duplicate_key(def.clone()),
                1 => other_key(def.clone()),
                1 => truncated(def.clone()),
                1 => trailing(def.clone()),
                1 => not_an_object(def.clone()),
                1 => harmless(def),
            ]
        })
        .boxed()
}

/// A definition's bytes edited at random, or random bytes, or any JSON.
pub fn garbage() -> BoxedStrategy<Vec<u8>> {
    let edited = (
        definition(),
        prop::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..6),
    )
        .prop_map(|(def, edits)| {
            let mut body = serde_json::to_vec(&def).unwrap();
            for (at, byte, how) in edits {
                let i = at.index(body.len() + 1);
                match how {
                    0 if i < body.len() => body[i] = byte,
                    1 if i < body.len() => {
                        body.remove(i);
                    }
                    _ => body.insert(i, byte),
                }
            }
            body
        });
    prop_oneof![
        4 => edited,
        2 => prop::collection::vec(any::<u8>(), 0..200),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => mutation().prop_map(|c| c.body),
    ]
    .boxed()
}
