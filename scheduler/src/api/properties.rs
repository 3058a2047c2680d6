//! Property tests over every control API request body, through the checks
//! each endpoint makes before it reads or writes anything (so millions of
//! bodies run without a server): valid bodies are accepted; a body with one
//! field broken (wrong type, bad value, unknown, missing) is refused as a
//! bad request whose message starts with that field; any bytes at all are
//! answered with a bounded refusal, never a panic.
//!
//! `job.put` bodies are the definitions and mutations of the shared
//! generators (`shared/tests/generate`), as `Job::decode`'s properties use.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

#[path = "../../../shared/tests/generate/mod.rs"]
mod generate;

use chrono::{DateTime, TimeDelta, Utc};
use jetcron_shared::Job;
use jetcron_shared::api::{ApiError, ErrorCode};
use jetcron_shared::job::{MAX_DEFINITION_BYTES, MAX_PAYLOAD_BYTES};
use jetcron_shared::quote::clip;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

use super::{Endpoint, jobs, list, next, no_params, retry, runs, trigger};
use generate::mutate::{Expect, garbage, mutation};
use generate::*;

/// When the properties put definitions: before every instant the
/// generators make (2000 on), so none is refused as past.
fn now() -> DateTime<Utc> {
    "1990-01-01T00:00:00Z".parse().unwrap()
}

/// What `handle` checks of a request before any I/O, for `ep`.
fn check(ep: Endpoint, body: &[u8]) -> Result<(), ApiError> {
    match ep {
        Endpoint::Put => {
            let (_, definition) = jobs::split_expected(body)?;
            jobs::checked(&definition, now())
                .map(drop)
                .map_err(|e| jobs::invalid(&e))
        }
        Endpoint::Get | Endpoint::Delete | Endpoint::Pause | Endpoint::Resume => {
            jobs::id_request(body).map(drop)
        }
        Endpoint::List => list::request(body).map(drop),
        Endpoint::Trigger => trigger::request(body).map(drop),
        Endpoint::Next => next::request(body).map(drop),
        Endpoint::Runs => runs::request(body).map(drop),
        Endpoint::Retry => retry::request(body).map(drop),
        Endpoint::Status | Endpoint::Workers => no_params(body),
    }
}

fn endpoint() -> BoxedStrategy<Endpoint> {
    prop::sample::select(Endpoint::ALL.to_vec()).boxed()
}

/// One field of a request body: how a valid value looks, values of the
/// wrong type, and values of the right type that are refused (with the
/// field then named, which for a list is the item).
struct Field {
    name: &'static str,
    required: bool,
    valid: BoxedStrategy<Value>,
    wrong: Vec<Value>,
    bad: BoxedStrategy<(Value, String)>,
}

fn id_field() -> Field {
    Field {
        name: "id",
        required: true,
        valid: id().prop_map(Value::from).boxed(),
        wrong: vec![
            json!(5),
            json!(true),
            Value::Null,
            json!(["a"]),
            json!({"id": "a"}),
        ],
        bad: bad_name(128)
            .prop_map(|v| (Value::from(v), "id".to_string()))
            .boxed(),
    }
}

/// An optional whole number `valid`, refused in `bad`.
fn count_field(name: &'static str, valid: BoxedStrategy<u64>, bad: BoxedStrategy<i64>) -> Field {
    Field {
        name,
        required: false,
        valid: valid.prop_map(Value::from).boxed(),
        wrong: vec![
            json!("5"),
            json!(1.5),
            json!(true),
            json!([1]),
            json!({"n": 1}),
        ],
        bad: prop_oneof![
            bad.prop_map(Value::from),
            Just(json!(4_294_967_296u64)),
            Just(json!(-1))
        ]
        .prop_map(move |v| (v, name.to_string()))
        .boxed(),
    }
}

/// The fields of each endpoint's body.
fn fields(ep: Endpoint) -> Vec<Field> {
    match ep {
        Endpoint::Get | Endpoint::Delete | Endpoint::Pause | Endpoint::Resume => vec![id_field()],
        Endpoint::Next => vec![
            id_field(),
            count_field(
                "count",
                (1u64..=100).boxed(),
                prop_oneof![Just(0i64), 101..=i64::from(u32::MAX)].boxed(),
            ),
        ],
        Endpoint::Runs => vec![
            id_field(),
            count_field(
                "limit",
                (1u64..=u64::from(u32::MAX)).boxed(),
                Just(0i64).boxed(),
            ),
        ],
        Endpoint::Retry => vec![
            id_field(),
            Field {
                name: "fire_id",
                required: true,
                valid: prop_oneof!["[a-z0-9-]{1,20}:[0-9]{1,13}", any_text(20)]
                    .prop_filter("not blank", |f| !f.trim().is_empty())
                    .prop_map(Value::from)
                    .boxed(),
                wrong: vec![json!(5), Value::Null, json!(["x"]), json!({}), json!(false)],
                bad: prop_oneof![Just(String::new()), "[ \t\n]{1,4}"]
                    .prop_map(|v| (Value::from(v), "fire_id".to_string()))
                    .boxed(),
            },
        ],
        Endpoint::Trigger => vec![
            id_field(),
            Field {
                name: "shards",
                required: false,
                valid: prop::collection::vec(any::<u32>(), 0..5)
                    .prop_map(Value::from)
                    .boxed(),
                wrong: vec![json!("0,1"), json!(1), json!({"0": 1}), json!(true)],
                bad: (
                    prop::collection::vec(any::<u32>(), 0..4),
                    prop::sample::select(vec![
                        json!("1"),
                        json!(-1),
                        json!(1.5),
                        json!(4_294_967_296u64),
                        Value::Null,
                        json!([0]),
                    ]),
                    any::<Index>(),
                )
                    .prop_map(|(list, item, at)| {
                        let mut items: Vec<Value> = list.into_iter().map(Value::from).collect();
                        let i = at.index(items.len() + 1);
                        items.insert(i, item);
                        (Value::Array(items), format!("shards[{i}]"))
                    })
                    .boxed(),
            },
            Field {
                name: "payload",
                required: false,
                valid: json_value(),
                wrong: vec![],
                bad: Just(())
                    .prop_map(|()| {
                        (
                            Value::from("x".repeat(MAX_PAYLOAD_BYTES - 1)),
                            "payload".to_string(),
                        )
                    })
                    .boxed(),
            },
        ],
        Endpoint::List => vec![
            count_field(
                "limit",
                (1u64..=1000).boxed(),
                prop_oneof![Just(0i64), 1001..=i64::from(u32::MAX)].boxed(),
            ),
            Field {
                name: "cursor",
                required: false,
                valid: id().prop_map(Value::from).boxed(),
                wrong: vec![json!(5), json!(["a"]), json!({}), json!(true)],
                bad: bad_name(128)
                    .prop_map(|v| (Value::from(v), "cursor".to_string()))
                    .boxed(),
            },
            Field {
                name: "group",
                required: false,
                valid: name64().prop_map(Value::from).boxed(),
                wrong: vec![json!(5), json!(["a"]), json!({}), json!(true)],
                bad: bad_name(64)
                    .prop_map(|v| (Value::from(v), "group".to_string()))
                    .boxed(),
            },
            Field {
                name: "state",
                required: false,
                valid: prop::sample::select(vec!["active", "paused", "invalid"])
                    .prop_map(Value::from)
                    .boxed(),
                wrong: vec![json!(5), json!(["active"]), json!({}), json!(true)],
                bad: any_text(12)
                    .prop_filter("not a state", |s| {
                        !["active", "paused", "invalid"].contains(&s.as_str())
                    })
                    .prop_map(|v| (Value::from(v), "state".to_string()))
                    .boxed(),
            },
        ],
        Endpoint::Status | Endpoint::Workers | Endpoint::Put => vec![],
    }
}

/// A valid body of a field endpoint: every required field, each optional
/// one present or not (`null` being absent).
fn valid_body(ep: Endpoint) -> BoxedStrategy<Map<String, Value>> {
    let parts: Vec<BoxedStrategy<Option<(String, Value)>>> = fields(ep)
        .into_iter()
        .map(|f| {
            let name = f.name.to_string();
            let present = f.valid.prop_map(move |v| Some((name.clone(), v)));
            if f.required {
                present.boxed()
            } else {
                let name = f.name.to_string();
                prop_oneof![
                    2 => present,
                    1 => Just(None),
                    1 => Just(Some((name, Value::Null))),
                ]
                .boxed()
            }
        })
        .collect();
    parts
        .prop_map(|fields| fields.into_iter().flatten().collect())
        .boxed()
}

/// A valid body of `ep`, as bytes.
fn valid_request(ep: Endpoint) -> BoxedStrategy<Vec<u8>> {
    match ep {
        Endpoint::Put => (definition(), prop::option::of(any::<u64>()))
            .prop_map(|(mut def, expected)| {
                if let Some(n) = expected {
                    def.as_object_mut()
                        .unwrap()
                        .insert("expected_revision".into(), n.into());
                }
                serde_json::to_vec(&def).unwrap()
            })
            .boxed(),
        Endpoint::Status | Endpoint::Workers => prop::sample::select(vec!["", " ", "{}", " {\n} "])
            .prop_map(|b| b.as_bytes().to_vec())
            .boxed(),
        Endpoint::List => prop_oneof![
            1 => Just(Vec::new()),
            4 => valid_body(ep).prop_map(|m| serde_json::to_vec(&m).unwrap()),
        ]
        .boxed(),
        _ => valid_body(ep)
            .prop_map(|m| serde_json::to_vec(&m).unwrap())
            .boxed(),
    }
}

/// A body of `ep` with one thing broken, and the refusal it must get: its
/// code and how its message starts (`<field>: `). `None`: accepted.
#[derive(Clone)]
struct Broken {
    body: Vec<u8>,
    refusal: Option<(ErrorCode, String)>,
}

impl std::fmt::Debug for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        f.debug_struct("Broken")
            .field("bytes", &self.body.len())
            .field("body", &body.chars().take(2000).collect::<String>())
            .field("refusal", &self.refusal)
            .finish()
    }
}

fn broken(body: &Map<String, Value>, field: &str, code: ErrorCode) -> Broken {
    Broken {
        body: Value::Object(body.clone()).to_string().into_bytes(),
        refusal: Some((code, format!("{field}: "))),
    }
}

/// A body of a field endpoint with one field broken.
fn broken_fields(ep: Endpoint) -> BoxedStrategy<Broken> {
    let names: Vec<&'static str> = fields(ep).iter().map(|f| f.name).collect();
    let required: Vec<&'static str> = fields(ep)
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let per_field: Vec<BoxedStrategy<Broken>> = fields(ep)
        .into_iter()
        .map(|f| {
            let name = f.name;
            let wrong = f.wrong.clone();
            let wrongs = if wrong.is_empty() {
                f.bad.clone().prop_map(|(v, _)| v).boxed()
            } else {
                prop::sample::select(wrong).boxed()
            };
            let type_error = (valid_body(ep), wrongs).prop_map(move |(mut body, v)| {
                body.insert(name.to_string(), v);
                broken(&body, name, ErrorCode::BadRequest)
            });
            let bad_value = (valid_body(ep), f.bad).prop_map(move |(mut body, (v, field))| {
                body.insert(name.to_string(), v);
                broken(&body, &clip(&field), ErrorCode::BadRequest)
            });
            prop_oneof![type_error, bad_value].boxed()
        })
        .collect();
    let unknown = (valid_body(ep), unknown_key(), json_value())
        .prop_filter("unknown here", move |(_, k, _)| {
            !names.contains(&k.as_str())
        })
        .prop_map(|(mut body, k, v)| {
            body.insert(k.clone(), v);
            broken(&body, &clip(&k), ErrorCode::BadRequest)
        });
    let mut all = vec![unknown.boxed()];
    all.extend(per_field);
    if !required.is_empty() {
        all.push(
            (valid_body(ep), any::<Index>())
                .prop_map(move |(mut body, which)| {
                    let name = required[which.index(required.len())];
                    body.remove(name);
                    broken(&body, name, ErrorCode::BadRequest)
                })
                .boxed(),
        );
    }
    prop::strategy::Union::new(all).boxed()
}

/// A `job.put` body with one field broken: the shared mutations of a
/// definition, a bad `expected_revision`, or an instant already past.
fn broken_put() -> BoxedStrategy<Broken> {
    let mutated = mutation().prop_map(|case| {
        let invalid = |start: &str| Some((ErrorCode::InvalidJob, start.to_string()));
        let refusal = match &case.expect {
            // `job.put` takes no key: stored under another, it is fine.
            _ if case.key.is_some() => None,
            _ if case.body.len() > MAX_DEFINITION_BYTES => invalid("definition is "),
            Expect::Field(f) => invalid(&format!("{f}: ")),
            Expect::Syntax => invalid("invalid JSON: "),
            Expect::TooLarge => invalid("definition is "),
            Expect::Ok => None,
        };
        Broken {
            body: case.body,
            refusal,
        }
    });
    let revision = (
        definition(),
        prop::sample::select(vec![
            json!("5"),
            json!(-1),
            json!(1.5),
            Value::Null,
            json!([1]),
            json!("9".repeat(5000)),
        ]),
    )
        .prop_map(|(mut def, bad)| {
            def.as_object_mut()
                .unwrap()
                .insert("expected_revision".into(), bad);
            Broken {
                body: def.to_string().into_bytes(),
                refusal: Some((ErrorCode::BadRequest, "expected_revision: ".into())),
            }
        });
    let past = (definition(), 1i64..=10 * 365 * 86_400_000, any::<bool>()).prop_map(
        |(mut def, back, at)| {
            let m = def.as_object_mut().unwrap();
            let before = now() - TimeDelta::milliseconds(back);
            let field = if at {
                m.insert(
                    "schedule".into(),
                    format!("@at {}", rfc3339(before, 0, true)).into(),
                );
                m.remove("start_at");
                m.remove("end_at");
                "schedule"
            } else {
                m.insert("schedule".into(), "@hourly".into());
                m.remove("start_at");
                m.insert("end_at".into(), rfc3339(before, 0, true).into());
                "end_at"
            };
            Broken {
                body: def.to_string().into_bytes(),
                refusal: Some((ErrorCode::InvalidJob, format!("{field}: "))),
            }
        },
    );
    prop_oneof![6 => mutated, 1 => revision, 1 => past].boxed()
}

/// A body of `ep` with one thing broken.
fn broken_request(ep: Endpoint) -> BoxedStrategy<Broken> {
    match ep {
        Endpoint::Put => broken_put(),
        _ => broken_fields(ep),
    }
}

fn refusal_is_bounded(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(e.code, ErrorCode::BadRequest | ErrorCode::InvalidJob),
        "{e:?}"
    );
    prop_assert!(!e.message.is_empty());
    prop_assert!(
        e.message.chars().count() <= MAX_MESSAGE_CHARS,
        "{} characters: {}",
        e.message.chars().count(),
        e.message.chars().take(300).collect::<String>()
    );
    Ok(())
}

/// A job to check a trigger's shards against, and a list of them with one
/// wrong (out of the job's range, or twice), with the field named.
fn job_and_bad_shards() -> BoxedStrategy<(Job, Vec<u32>, String)> {
    definition()
        .prop_filter_map("a job", |def| {
            Job::decode(&serde_json::to_vec(&def).ok()?, None).ok()
        })
        .prop_flat_map(|job| {
            let count = job.shard_count();
            (
                Just(job),
                prop::collection::btree_set(0..count, 0..4),
                any::<Index>(),
                0u8..3,
                count..=u32::MAX,
            )
        })
        .prop_map(|(job, valid, at, how, beyond)| {
            let mut list: Vec<u32> = valid.into_iter().collect();
            let i = at.index(list.len() + 1);
            match how {
                0 => {
                    list.insert(i, beyond);
                    (job, list, format!("shards[{i}]"))
                }
                1 if !list.is_empty() => {
                    let again = list[at.index(list.len())];
                    let n = list.len();
                    list.push(again);
                    (job, list, format!("shards[{n}]"))
                }
                _ => (job, Vec::new(), "shards".to_string()),
            }
        })
        .boxed()
}

proptest! {
    /// Every endpoint accepts each of its valid bodies.
    #[test]
    fn valid_requests_are_accepted(body in endpoint().prop_flat_map(|ep| (Just(ep), valid_request(ep)))) {
        let (ep, body) = body;
        let got = check(ep, &body);
        prop_assert!(got.is_ok(), "{:?} {} refused: {:?}", ep, String::from_utf8_lossy(&body), got);
    }

    /// A body with one field broken is refused, and the refusal starts with
    /// that field.
    #[test]
    fn a_broken_field_is_refused_by_name(
        (ep, case) in endpoint().prop_flat_map(|ep| (Just(ep), broken_request(ep)))
    ) {
        let got = check(ep, &case.body);
        match (&case.refusal, got) {
            (None, Ok(())) => {}
            (Some((code, start)), Err(e)) => {
                prop_assert_eq!(e.code, *code, "{:?} {:?}: {:?}", ep, case, e);
                prop_assert!(e.message.starts_with(start.as_str()), "{:?} {:?}: {}", ep, case, e.message);
                refusal_is_bounded(&e)?;
            }
            (_, got) => prop_assert!(false, "{:?} {:?}: {:?}", ep, case, got),
        }
    }

    /// Whatever the bytes, every endpoint answers: accepted, or a bounded
    /// bad request (or invalid job, for `job.put`).
    #[test]
    fn any_body_is_answered(
        ep in endpoint(),
        body in prop_oneof![
            3 => garbage(),
            1 => endpoint().prop_flat_map(broken_request).prop_map(|b| b.body),
            1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        ],
    ) {
        if let Err(e) = check(ep, &body) {
            refusal_is_bounded(&e)?;
        }
    }

    /// A trigger's shards are checked against the job: one out of range or
    /// listed twice is named by its place in the list.
    #[test]
    fn a_triggers_wrong_shard_is_named((job, list, field) in job_and_bad_shards()) {
        let e = trigger::chosen_shards(&job, Some(&list)).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::BadRequest);
        prop_assert!(e.message.starts_with(&format!("{field}: ")), "{:?}: {}", list, e.message);
        refusal_is_bounded(&e)?;
    }
}
