//! Generators for the property tests: job definitions (valid ones, and
//! mutations of them that each break one known field), schedules (valid and
//! broken), instants, durations and JSON.
//!
//! `shared/tests/properties.rs` and the scheduler's API properties
//! (`scheduler/src/api/properties.rs`, through `#[path]`) share this file, so
//! the definitions `job.put` is fed are the ones `Job::decode` is.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(dead_code)] // each including crate uses its own part

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, Utc};
use jetcron_shared::job::http::VARIABLES;
use jetcron_shared::schedule::CronField;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

pub mod mutate;

/// Largest error message accepted from any refusal: the reasons are short
/// and each piece of input they quote is cut to 80 characters.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// The top-level fields of a definition.
pub const DEFINITION_FIELDS: [&str; 19] = [
    "id",
    "schedule",
    "timezone",
    "start_at",
    "end_at",
    "shards",
    "group",
    "run",
    "timeout",
    "deadline",
    "retry",
    "payload",
    "description",
    "paused",
    "history",
    "misfire",
    "misfire_limit",
    "overlap",
    "on_success",
];

// ---- names, text, numbers ----

/// A valid job id (1-128 of `A-Z a-z 0-9 _ -`), short ones most often.
pub fn id() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,15}",
        1 => "[A-Za-z0-9_-]{1,128}",
    ]
    .boxed()
}

/// A valid group or handler name (1-64 of `A-Z a-z 0-9 _ -`).
pub fn name64() -> BoxedStrategy<String> {
    prop_oneof![3 => "[a-z][a-z0-9-]{0,10}", 1 => "[A-Za-z0-9_-]{1,64}"].boxed()
}

/// Any text: every Unicode scalar value may appear, NUL and controls included.
pub fn any_text(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(any::<char>(), 0..=max)
        .prop_map(String::from_iter)
        .boxed()
}

/// Text that is invalid as a name: empty, too long, or holding a character
/// outside `A-Z a-z 0-9 _ -` (NUL and controls included).
pub fn bad_name(max_len: usize) -> BoxedStrategy<String> {
    let bad_char = prop_oneof![
        Just('\0'),
        Just(' '),
        Just('.'),
        Just('*'),
        Just('>'),
        Just('\n'),
        Just('é'),
        Just('\u{7f}'),
        any::<char>().prop_filter("outside the name set", |c| !(c.is_ascii_alphanumeric()
            || *c == '_'
            || *c == '-')),
    ];
    prop_oneof![
        Just(String::new()),
        (max_len + 1..=max_len + 40).prop_map(|n| "a".repeat(n)),
        Just("x".repeat(5000)),
        ("[a-z0-9]{0,20}", bad_char, "[a-z0-9]{0,20}").prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
    .boxed()
}

/// A string with a NUL byte somewhere.
pub fn with_nul() -> BoxedStrategy<String> {
    ("[a-z ]{0,10}", "[a-z ]{0,10}")
        .prop_map(|(a, b)| format!("{a}\0{b}"))
        .boxed()
}

/// A key that no definition, request or nested object knows: any text but
/// a known field name, sometimes very long, sometimes with controls.
pub fn unknown_key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z_]{1,12}",
        1 => any_text(12).prop_filter("not empty", |k| !k.is_empty()),
        1 => Just("timout".to_string()),
        1 => Just(format!("x{}", "k".repeat(4999))),
    ]
    .prop_filter("unknown", |k| {
        !DEFINITION_FIELDS.contains(&k.as_str())
            && ![
                "max_attempts",
                "backoff",
                "method",
                "url",
                "headers",
                "body",
                "expect",
            ]
            .contains(&k.as_str())
            && !k.contains("`, ")
            && !k.is_empty()
    })
    .boxed()
}

// ---- durations and instants ----

/// `ms` milliseconds as humantime reads them, in one of a few spellings.
pub fn duration_text(ms: u64, style: u8) -> String {
    let units = [
        (86_400_000, "d", "days"),
        (3_600_000, "h", "hours"),
        (60_000, "m", "min"),
        (1000, "s", "sec"),
        (1, "ms", "ms"),
    ];
    if ms == 0 || style.is_multiple_of(4) {
        return format!("{ms}ms");
    }
    let mut rest = ms;
    let mut parts = Vec::new();
    for (size, short, long) in units {
        if rest >= size {
            let unit = if style % 4 == 3 { long } else { short };
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    parts.join(if style % 4 == 2 { " " } else { "" })
}

/// A duration from `min_ms` to `max_ms`, as text.
pub fn duration(min_ms: u64, max_ms: u64) -> BoxedStrategy<String> {
    let round = prop_oneof![Just(1u64), Just(1000), Just(60_000)];
    (min_ms..=max_ms, round, any::<u8>())
        .prop_map(move |(ms, round, style)| {
            let r = (ms / round) * round;
            let ms = if r >= min_ms { r } else { ms };
            duration_text(ms, style)
        })
        .boxed()
}

/// Text humantime does not read as a duration.
pub fn bad_duration() -> BoxedStrategy<String> {
    prop_oneof![
        Just("soon".to_string()),
        Just(String::new()),
        "[a-z]{1,8}",
        "[1-9][0-9]{0,3}",
        "-[0-9]{1,3}s",
        "[0-9]{1,3}[xyzq]",
        "[0-9]{1,3}s [a-z]{2,5}",
        Just("1".repeat(40) + "h"),
        Just(format!("1{}", "a".repeat(5000))),
        with_nul(),
    ]
    .boxed()
}

/// An instant from 2000 to 2200, whole milliseconds.
pub fn instant() -> BoxedStrategy<DateTime<Utc>> {
    (946_684_800_000i64..7_258_118_400_000)
        .prop_map(|ms| DateTime::from_timestamp_millis(ms).unwrap())
        .boxed()
}

/// `at` in RFC 3339, in some UTC offset (whole minutes), with `Z` or not.
pub fn rfc3339(at: DateTime<Utc>, offset_min: i32, z: bool) -> String {
    let offset = FixedOffset::east_opt(offset_min * 60).unwrap();
    at.with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::AutoSi, z && offset_min == 0)
}

pub fn offset_minutes() -> BoxedStrategy<i32> {
    prop_oneof![Just(0), -14 * 60..=14 * 60].boxed()
}

/// Text that is not an RFC 3339 instant.
pub fn bad_instant() -> BoxedStrategy<String> {
    prop_oneof![
        Just("tomorrow".to_string()),
        Just("2026-13-01T00:00:00Z".to_string()),
        Just("2026-02-30T00:00:00Z".to_string()),
        Just("2026-01-01 00:00:00".to_string()),
        Just("2026-01-01T25:00:00Z".to_string()),
        "[0-9]{1,12}",
        Just("2".repeat(5000)),
        with_nul(),
    ]
    .boxed()
}

// ---- time zones ----

pub fn timezone() -> BoxedStrategy<chrono_tz::Tz> {
    prop::sample::select(chrono_tz::TZ_VARIANTS.to_vec()).boxed()
}

/// Time zones where DST and odd offsets make schedules interesting, and any.
pub fn timezone_often_tricky() -> BoxedStrategy<chrono_tz::Tz> {
    prop_oneof![
        1 => Just(chrono_tz::UTC),
        1 => Just(chrono_tz::Europe::Berlin),
        1 => Just(chrono_tz::America::New_York),
        1 => Just(chrono_tz::Australia::Lord_Howe),
        1 => Just(chrono_tz::Pacific::Apia),
        1 => Just(chrono_tz::America::Santiago),
        4 => timezone(),
    ]
    .boxed()
}

// ---- schedules ----

/// What a valid schedule is, for the definitions that carry it.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleKind {
    Cron,
    /// Period and offset, in milliseconds.
    Every(u64, u64),
    /// Delay, in milliseconds.
    After(u64),
    At(DateTime<Utc>),
    Manual,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenSchedule {
    pub text: String,
    pub kind: ScheduleKind,
}

/// The bounds of a field's values as a valid schedule uses them: day of
/// month stops at 28 so that every month has each day named and no
/// expression is refused as one that never fires.
fn field_bounds(field: CronField) -> (u32, u32) {
    match field {
        CronField::Second | CronField::Minute => (0, 59),
        CronField::Hour => (0, 23),
        CronField::DayOfMonth => (1, 28),
        CronField::Month => (1, 12),
        CronField::DayOfWeek => (0, 7),
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One value of `field`: a number, or a name where the field has names.
fn value_text(field: CronField, v: u32, as_name: bool, lower: bool) -> String {
    let name = match field {
        CronField::Month if as_name => Some(MONTHS[(v - 1) as usize]),
        CronField::DayOfWeek if as_name && v < 7 => Some(DAYS[v as usize]),
        _ => None,
    };
    match name {
        Some(n) if lower => n.to_ascii_lowercase(),
        Some(n) => n.to_string(),
        None => v.to_string(),
    }
}

/// One item of a cron field: `*`, `*/n`, `v`, `a-b`, `a-b/n`, `a/n`.
fn cron_item(field: CronField) -> BoxedStrategy<String> {
    let (min, max) = field_bounds(field);
    let names = matches!(field, CronField::Month | CronField::DayOfWeek);
    (
        0u8..6,
        min..=max,
        min..=max,
        1..=max.max(2),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(shape, a, b, step, named, lower)| {
            let (lo, hi) = (a.min(b), a.max(b));
            let named = names && named;
            let v = |x| value_text(field, x, named, lower);
            match shape {
                0 => "*".to_string(),
                1 => format!("*/{step}"),
                2 => v(a),
                3 => format!("{}-{}", v(lo), v(hi)),
                4 => format!("{}-{}/{step}", v(lo), v(hi)),
                _ => format!("{}/{step}", v(a)),
            }
        })
        .boxed()
}

/// A whole cron field: a list of one to three items, or `?` in a day field.
pub fn cron_field(field: CronField) -> BoxedStrategy<String> {
    let list = prop::collection::vec(cron_item(field), 1..=3).prop_map(|items| items.join(","));
    if matches!(field, CronField::DayOfMonth | CronField::DayOfWeek) {
        prop_oneof![8 => list, 1 => Just("?".to_string())].boxed()
    } else {
        list.boxed()
    }
}

pub const CRON_FIELDS: [CronField; 6] = [
    CronField::Second,
    CronField::Minute,
    CronField::Hour,
    CronField::DayOfMonth,
    CronField::Month,
    CronField::DayOfWeek,
];

/// The fields of a valid cron expression: six (with seconds) or five.
pub fn cron_fields() -> BoxedStrategy<Vec<(CronField, String)>> {
    let six = CRON_FIELDS.map(|f| cron_field(f).prop_map(move |t| (f, t)).boxed());
    let [s, mi, h, dom, mo, dow] = six;
    (any::<bool>(), s, mi, h, dom, mo, dow)
        .prop_map(|(seconds, s, mi, h, dom, mo, dow)| {
            let mut all = vec![s, mi, h, dom, mo, dow];
            if !seconds {
                all.remove(0);
            }
            all
        })
        .boxed()
}

/// Fields joined by blanks (spaces or tabs), sometimes padded.
pub fn join_fields(fields: &[String], sep: u8) -> String {
    let gap = match sep % 4 {
        0 | 1 => " ",
        2 => "  ",
        _ => "\t",
    };
    let joined = fields.join(gap);
    if sep % 8 == 7 {
        format!("  {joined} ")
    } else {
        joined
    }
}

pub fn cron() -> BoxedStrategy<String> {
    (cron_fields(), any::<u8>())
        .prop_map(|(fields, sep)| {
            let texts: Vec<String> = fields.into_iter().map(|(_, t)| t).collect();
            join_fields(&texts, sep)
        })
        .boxed()
}

/// Every form of schedule, each valid.
pub fn schedule() -> BoxedStrategy<GenSchedule> {
    let cron = cron().prop_map(|text| GenSchedule {
        text,
        kind: ScheduleKind::Cron,
    });
    let macros = prop::sample::select(vec![
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
        "@minutely",
        "@secondly",
        "@Daily",
        "@HOURLY",
    ])
    .prop_map(|m| GenSchedule {
        text: m.to_string(),
        kind: ScheduleKind::Cron,
    });
    let every = (
        100u64..=366 * 86_400_000,
        any::<u8>(),
        any::<u8>(),
        any::<f64>(),
    )
        .prop_map(|(period, style, offset_style, fraction)| {
            let offset = (period as f64 * fraction.abs().fract()) as u64;
            let offset = if offset_style % 3 == 0 { offset } else { 0 };
            let text = if offset_style % 3 == 0 {
                format!(
                    "@every {} offset {}",
                    duration_text(period, style),
                    duration_text(offset, offset_style)
                )
            } else {
                format!("@every {}", duration_text(period, style))
            };
            GenSchedule {
                text,
                kind: ScheduleKind::Every(period, offset),
            }
        });
    let after = (100u64..=366 * 86_400_000, any::<u8>()).prop_map(|(delay, style)| GenSchedule {
        text: format!("@after {}", duration_text(delay, style)),
        kind: ScheduleKind::After(delay),
    });
    let at = (instant(), offset_minutes(), any::<bool>()).prop_map(|(at, off, z)| GenSchedule {
        text: format!("@at {}", rfc3339(at, off, z)),
        kind: ScheduleKind::At(at),
    });
    prop_oneof![
        6 => cron,
        2 => macros,
        2 => every,
        1 => after,
        1 => at,
        1 => Just(GenSchedule { text: "@manual".into(), kind: ScheduleKind::Manual }),
    ]
    .boxed()
}

/// A token no cron field takes, for the field it is put in.
pub fn bad_cron_token(field: CronField) -> BoxedStrategy<String> {
    let (min, max) = match field {
        CronField::DayOfMonth => (1, 31),
        CronField::DayOfWeek => (0, 7),
        other => field_bounds(other),
    };
    let out_of_range = prop_oneof![
        (max + 1..=max + 100).prop_map(|v| v.to_string()),
        Just("99999999999999999999".to_string()),
    ];
    let mut options: Vec<BoxedStrategy<String>> = vec![
        out_of_range.clone().boxed(),
        out_of_range.prop_map(|v| format!("1,{v}")).boxed(),
        Just("*/0".to_string()).boxed(),
        Just(format!("{min}-")).boxed(),
        Just(format!("-{max}")).boxed(),
        Just(format!("{min},,{max}")).boxed(),
        Just(format!("{min}/")).boxed(),
        "[a-z]{4,8}".boxed(),
        prop::sample::select(vec!["L", "W", "5L", "1#2", "x", "*/*", "**", "1-2-3"])
            .prop_map(str::to_string)
            .boxed(),
        "[0-9]{1,2}[a-z]{1,2}".boxed(),
    ];
    if min > 0 {
        options.push(Just((min - 1).to_string()).boxed());
    }
    if max > min + 1 {
        // A range whose start is after its end.
        options.push(
            (min + 1..=max)
                .prop_map(move |hi| format!("{hi}-{}", hi - 1))
                .boxed(),
        );
    }
    if !matches!(field, CronField::DayOfMonth | CronField::DayOfWeek) {
        options.push(Just("?".to_string()).boxed());
    }
    prop::strategy::Union::new(options).boxed()
}

/// A cron expression with one field broken, and that field.
pub fn cron_with_bad_field() -> BoxedStrategy<(String, CronField)> {
    (cron_fields(), any::<Index>(), any::<u8>())
        .prop_flat_map(|(fields, which, sep)| {
            let i = which.index(fields.len());
            let field = fields[i].0;
            bad_cron_token(field).prop_map(move |bad| {
                let mut texts: Vec<String> = fields.iter().map(|(_, t)| t.clone()).collect();
                texts[i] = bad;
                (join_fields(&texts, sep), field)
            })
        })
        .boxed()
}

/// Schedule text that is refused whatever the time zone.
pub fn bad_schedule() -> BoxedStrategy<String> {
    prop_oneof![
        4 => cron_with_bad_field().prop_map(|(text, _)| text),
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
        // Four, seven or more fields.
        1 => prop::collection::vec(Just("*"), 7..12).prop_map(|f| f.join(" ")),
        1 => Just("* * * *".to_string()),
        1 => Just("0 0 30 2 *".to_string()),
        1 => Just("0 0 31 4,6,9,11 *".to_string()),
        1 => "@[a-z]{1,10}".prop_filter("unknown macro", |m| !matches!(
            m.as_str(),
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
                | "@hourly" | "@minutely" | "@secondly" | "@every" | "@after" | "@at" | "@manual"
        )),
        1 => prop::sample::select(vec![
            "@every", "@every 10ms", "@every 367d", "@every 1.5ms", "@every soon",
            "@every 10m offset 10m", "@every 10m offset 1h", "@every 1s offset x",
            "@every 1s offset 0.5ms", "@after", "@after 1ms", "@after 400d", "@at",
            "@at tomorrow", "@manual 5m", "@hourly 5", "@daily x",
        ])
        .prop_map(str::to_string),
        1 => ("[0-9 */,-]{1,20}", "[a-z]{4,6}").prop_map(|(a, b)| format!("{a} {b} * * *")),
        1 => Just("1 ".repeat(2500)),
        1 => Just(format!("@every {}", "9".repeat(5000))),
        1 => Just(format!("0 0 * * {}", "MON,".repeat(1250))),
        1 => with_nul().prop_map(|s| format!("0 0 * * *{s}x")),
    ]
    .boxed()
}

/// Any schedule text: valid, broken, or arbitrary.
pub fn any_schedule_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => schedule().prop_map(|s| s.text),
        3 => bad_schedule(),
        1 => any_text(40),
        1 => "[0-9*/,?A-Za-z@ -]{0,40}",
    ]
    .boxed()
}

// ---- JSON ----

/// Any JSON value, a few levels deep; strings hold any character.
pub fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any_text(12).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(any_text(6), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// JSON without `{{` in any string: a valid HTTP body.
fn template_free_json() -> BoxedStrategy<Value> {
    json_value().prop_map(|v| strip_braces(&v)).boxed()
}

fn strip_braces(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace('{', "(")),
        Value::Array(items) => Value::Array(items.iter().map(strip_braces).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), strip_braces(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---- run.http ----

/// Text with variables: literal pieces from `chars` and known `{{var}}`s.
fn template(chars: &'static str) -> BoxedStrategy<String> {
    prop::collection::vec(
        prop_oneof![
            2 => chars.prop_map(|s| s),
            1 => (prop::sample::select(VARIABLES.to_vec()), any::<bool>())
                .prop_map(|(v, pad)| if pad { format!("{{{{ {v} }}}}") } else { format!("{{{{{v}}}}}") }),
        ],
        0..4,
    )
    .prop_map(|parts| parts.concat())
    .boxed()
}

/// A header name that is a token and not one the worker sets.
pub fn header_name() -> BoxedStrategy<String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}"
        .prop_filter("not a framing header", |n| {
            !["content-length", "transfer-encoding", "host"]
                .contains(&n.to_ascii_lowercase().as_str())
        })
        .boxed()
}

fn http_spec(timeout_ms: u64) -> BoxedStrategy<Value> {
    let url = (
        any::<bool>(),
        "[a-z][a-z0-9-]{0,12}(\\.[a-z]{2,5}){0,2}"
            // `xn--` opens a Punycode label, which must then decode.
            .prop_filter("not Punycode", |h| !h.contains("xn--")),
        prop::option::of(1u16..),
        template("[a-zA-Z0-9/_.-]{0,12}"),
        prop::option::of(template("[a-zA-Z0-9=&_.-]{0,12}")),
    )
        .prop_map(|(tls, host, port, path, query)| {
            let scheme = if tls { "https" } else { "http" };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{scheme}://{host}{port}/{path}{query}")
        });
    let method = prop::option::of(prop_oneof![
        prop::sample::select(vec![
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"
        ])
        .prop_map(str::to_string),
        "[A-Z]{1,10}",
    ]);
    let headers = prop::collection::btree_map(header_name(), template("[ -z|~\t]{0,16}"), 0..4)
        .prop_map(|h| {
            // Header names ignore case: keep one of each.
            let mut seen = std::collections::BTreeSet::new();
            h.into_iter()
                .filter(|(k, _)| seen.insert(k.to_ascii_lowercase()))
                .map(|(k, v)| (k, Value::from(v)))
                .collect::<Map<String, Value>>()
        });
    let body = prop::option::of(prop_oneof![
        template("[ -z|~]{0,16}").prop_map(Value::from),
        template_free_json(),
        (
            prop::sample::select(VARIABLES.to_vec()),
            template_free_json()
        )
            .prop_map(|(v, rest)| json!({"var": format!("{{{{{v}}}}}"), "rest": rest})),
    ]);
    let expect = prop::collection::vec(100u16..=599, 0..4);
    let timeout = prop::option::of(duration(1, timeout_ms));
    (url, method, headers, body, expect, timeout)
        .prop_map(|(url, method, headers, body, expect, timeout)| {
            let mut m = Map::new();
            m.insert("url".into(), url.into());
            if let Some(x) = method {
                m.insert("method".into(), x.into());
            }
            if !headers.is_empty() {
                m.insert("headers".into(), Value::Object(headers));
            }
            if let Some(b) = body {
                m.insert("body".into(), b);
            }
            if !expect.is_empty() {
                m.insert("expect".into(), expect.into());
            }
            if let Some(t) = timeout {
                m.insert("timeout".into(), t.into());
            }
            Value::Object(m)
        })
        .boxed()
}

/// `run`: a shell command, an HTTP request (its timeout within
/// `timeout_ms`), or a handler.
fn run(timeout_ms: u64) -> BoxedStrategy<Value> {
    let shell = prop_oneof![
        8 => "[ -~]{0,40}[!-~]",
        1 => any_text(30).prop_map(|s| format!("x{}", s.replace('\0', ""))),
        1 => (1usize..=4).prop_map(|k| "e".repeat(k * 32_767)),
    ];
    prop_oneof![
        3 => shell.prop_map(|s| json!({"shell": s})),
        2 => http_spec(timeout_ms).prop_map(|h| json!({"http": h})),
        1 => name64().prop_map(|h| json!({"handler": h})),
    ]
    .boxed()
}

// ---- definitions ----

/// The time zones a definition names, by name.
fn timezone_name() -> BoxedStrategy<String> {
    timezone().prop_map(|tz| tz.name().to_string()).boxed()
}

/// `start_at` and `end_at` as written, and the end as an instant.
type Bounds = (Option<String>, Option<String>, Option<DateTime<Utc>>);

/// `start_at` / `end_at`: none, one, or both with at least 15 years between
/// them (any valid schedule fires within that).
fn bounds() -> BoxedStrategy<Bounds> {
    (
        0u8..4,
        instant(),
        15i64 * 366..=40 * 366,
        offset_minutes(),
        offset_minutes(),
        any::<bool>(),
    )
        .prop_map(|(which, start, span_days, o1, o2, z)| {
            let end = start + TimeDelta::days(span_days);
            match which {
                0 => (None, None, None),
                1 => (Some(rfc3339(start, o1, z)), None, None),
                2 => (None, Some(rfc3339(end, o2, z)), Some(end)),
                _ => (
                    Some(rfc3339(start, o1, z)),
                    Some(rfc3339(end, o2, z)),
                    Some(end),
                ),
            }
        })
        .boxed()
}

/// A valid definition, as JSON: every field of the reference, each present
/// or not.
pub fn definition() -> BoxedStrategy<Value> {
    let timeout_ms = prop_oneof![Just(None), (1u64..=7 * 86_400_000).prop_map(Some)];
    let head = (
        id(),
        schedule(),
        prop::option::of(timezone_name()),
        bounds(),
        prop::option::of(prop_oneof![
            (1u32..=1000).prop_map(Value::from),
            prop::collection::vec(
                prop_oneof![4 => any_text(8).prop_map(|s| s.replace('\0', "")), 1 => Just("p".repeat(4096))],
                1..6
            )
            .prop_map(Value::from),
        ]),
        prop::option::of(name64()),
        timeout_ms.prop_flat_map(|t| (Just(t), run(t.unwrap_or(3_600_000)), any::<u8>())),
    );
    let tail = (
        prop::option::of(duration(1000, 7 * 86_400_000)),
        prop::option::of((
            prop::option::of(1u32..=100),
            prop::collection::vec(duration(0, 86_400_000), 0..4),
        )),
        prop::option::of(json_value()),
        prop::option::of(any_text(20)),
        prop::option::of(any::<bool>()),
        prop::option::of(1u32..=1000),
        prop::option::of(prop::sample::select(vec!["fire_once", "skip", "fire_all"])),
        prop::option::of(1u32..=1000),
        prop::option::of(prop::sample::select(vec![
            "allow", "forbid", "queue", "replace",
        ])),
        prop::collection::vec(id(), 0..5),
    );
    (head, tail)
        .prop_map(|(head, tail)| {
            let (id, schedule, tz, bounds, shards, group, (timeout, run, style)) = head;
            let (
                deadline,
                retry,
                payload,
                description,
                paused,
                history,
                misfire,
                limit,
                overlap,
                children,
            ) = tail;
            let mut m = Map::new();
            m.insert("id".into(), id.clone().into());
            let (mut start_at, mut end_at, end) = bounds;
            // Bounds that leave the schedule an instant.
            match schedule.kind {
                ScheduleKind::Manual => end_at = None,
                ScheduleKind::At(at)
                    if end.is_some_and(|e| at > e) || start_at.is_some() && end_at.is_some() =>
                {
                    start_at = Some(rfc3339(at, 0, true));
                    end_at = end.filter(|e| *e >= at).map(|e| rfc3339(e, 0, true));
                }
                _ => {}
            }
            m.insert("schedule".into(), schedule.text.into());
            if let Some(tz) = tz {
                m.insert("timezone".into(), tz.into());
            }
            if let Some(s) = start_at {
                m.insert("start_at".into(), s.into());
            }
            if let Some(e) = end_at {
                m.insert("end_at".into(), e.into());
            }
            if let Some(s) = shards {
                m.insert("shards".into(), s);
            }
            if let Some(g) = group {
                m.insert("group".into(), g.into());
            }
            m.insert("run".into(), run);
            if let Some(t) = timeout {
                m.insert("timeout".into(), duration_text(t, style).into());
            }
            if let Some(d) = deadline {
                m.insert("deadline".into(), d.into());
            }
            if let Some((max, backoff)) = retry {
                let mut r = Map::new();
                if let Some(max) = max {
                    r.insert("max_attempts".into(), max.into());
                }
                if !backoff.is_empty() {
                    r.insert("backoff".into(), backoff.into());
                }
                m.insert("retry".into(), Value::Object(r));
            }
            if let Some(p) = payload {
                m.insert("payload".into(), p);
            }
            if let Some(d) = description {
                m.insert("description".into(), d.into());
            }
            if let Some(p) = paused {
                m.insert("paused".into(), p.into());
            }
            if let Some(h) = history {
                m.insert("history".into(), h.into());
            }
            if let Some(policy) = misfire {
                m.insert("misfire".into(), policy.into());
                if policy == "fire_all"
                    && let Some(n) = limit
                {
                    m.insert("misfire_limit".into(), n.into());
                }
            }
            if let Some(o) = overlap {
                m.insert("overlap".into(), o.into());
            }
            let mut seen = std::collections::BTreeSet::new();
            let children: Vec<String> = children
                .into_iter()
                .filter(|c| *c != id && seen.insert(c.clone()))
                .collect();
            if !children.is_empty() {
                m.insert("on_success".into(), children.into());
            }
            Value::Object(m)
        })
        .boxed()
}

// ---- paths into JSON ----

/// A step of a path, as serde_path_to_error writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

pub fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

pub fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.as_object_mut()?.get_mut(k)?,
            Seg::Index(i) => cur.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// Sets (or adds) the value at `path`; the parents must exist.
pub fn set(v: &mut Value, path: &[Seg], new: Value) {
    let (last, parent) = path.split_last().unwrap();
    let parent = get_mut(v, parent).unwrap();
    match last {
        Seg::Key(k) => {
            parent.as_object_mut().unwrap().insert(k.clone(), new);
        }
        Seg::Index(i) => parent.as_array_mut().unwrap()[*i] = new,
    }
}

pub fn remove(v: &mut Value, path: &[Seg]) {
    let (last, parent) = path.split_last().unwrap();
    if let (Some(parent), Seg::Key(k)) = (get_mut(v, parent), last) {
        parent.as_object_mut().unwrap().remove(k);
    }
}

/// `value` as JSON text with `key: extra` written first in the object at
/// `path` (before its own `key`, which is thus given twice).
pub fn text_with_duplicate(value: &Value, path: &[Seg], key: &str, extra: &Value) -> String {
    match (value, path.split_first()) {
        (Value::Object(m), None) => {
            let mut parts = vec![format!("{}:{}", Value::from(key), extra)];
            parts.extend(
                m.iter()
                    .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v)),
            );
            format!("{{{}}}", parts.join(","))
        }
        (Value::Object(m), Some((Seg::Key(step), rest))) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    let inner = if k == step {
                        text_with_duplicate(v, rest, key, extra)
                    } else {
                        v.to_string()
                    };
                    format!("{}:{inner}", Value::from(k.as_str()))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        (Value::Array(items), Some((Seg::Index(i), rest))) => {
            let parts: Vec<String> = items
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    if j == *i {
                        text_with_duplicate(v, rest, key, extra)
                    } else {
                        v.to_string()
                    }
                })
                .collect();
            format!("[{}]", parts.join(","))
        }
        (other, _) => other.to_string(),
    }
}

/// What a field of a definition holds, for values of the wrong type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// A string; `null` reads as absent when optional.
    Text {
        optional: bool,
    },
    /// A whole number; `null` reads as absent when optional.
    Count {
        optional: bool,
    },
    Flag,
    /// A shard count or a list of strings.
    Shards,
    /// A list of strings.
    Texts,
    /// An object (a struct or a map).
    Object,
    /// `run`: an object with one key.
    Run,
    /// A list of status codes.
    Codes,
    /// A status code.
    Code,
}

/// Every typed field present in a definition, with its path.
pub fn typed_paths(def: &Value) -> Vec<(Vec<Seg>, Shape)> {
    let mut out = Vec::new();
    let Some(m) = def.as_object() else {
        return out;
    };
    use Shape::*;
    for k in m.keys() {
        let shape = match k.as_str() {
            "id" | "schedule" | "misfire" | "overlap" => Text { optional: false },
            "timezone" | "group" => Text { optional: false },
            "start_at" | "end_at" | "timeout" | "deadline" | "description" => {
                Text { optional: true }
            }
            "shards" => Shards,
            "history" | "misfire_limit" => Count { optional: true },
            "paused" => Flag,
            "on_success" => Texts,
            "retry" => Object,
            "run" => Run,
            _ => continue,
        };
        out.push((vec![key(k)], shape));
    }
    for (list, shape) in [
        ("shards", Text { optional: false }),
        ("on_success", Text { optional: false }),
    ] {
        if let Some(items) = m.get(list).and_then(Value::as_array) {
            for i in 0..items.len() {
                out.push((vec![key(list), Seg::Index(i)], shape));
            }
        }
    }
    if let Some(r) = m.get("retry").and_then(Value::as_object) {
        if r.contains_key("max_attempts") {
            out.push((
                vec![key("retry"), key("max_attempts")],
                Count { optional: false },
            ));
        }
        if let Some(b) = r.get("backoff").and_then(Value::as_array) {
            out.push((vec![key("retry"), key("backoff")], Texts));
            for i in 0..b.len() {
                out.push((
                    vec![key("retry"), key("backoff"), Seg::Index(i)],
                    Text { optional: false },
                ));
            }
        }
    }
    let run = m.get("run").and_then(Value::as_object);
    if let Some(run) = run {
        for (kind, v) in run {
            let base = vec![key("run"), key(kind)];
            if kind != "http" {
                out.push((base, Text { optional: false }));
                continue;
            }
            out.push((base.clone(), Object));
            let Some(h) = v.as_object() else { continue };
            for (hk, hv) in h {
                let p = [base.clone(), vec![key(hk)]].concat();
                match hk.as_str() {
                    "url" => out.push((p, Text { optional: false })),
                    "method" | "timeout" => out.push((p, Text { optional: true })),
                    "headers" => {
                        out.push((p.clone(), Object));
                        for name in hv.as_object().into_iter().flat_map(|o| o.keys()) {
                            out.push((
                                [p.clone(), vec![key(name)]].concat(),
                                Text { optional: false },
                            ));
                        }
                    }
                    "expect" => {
                        out.push((p.clone(), Codes));
                        for i in 0..hv.as_array().map_or(0, Vec::len) {
                            out.push(([p.clone(), vec![Seg::Index(i)]].concat(), Code));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// Values that a field of `shape` does not take, `pick`ed among.
pub fn wrong_value(shape: Shape, pick: usize) -> Value {
    let text_like = [
        json!(7),
        json!(true),
        json!(["a"]),
        json!({"a": 1}),
        json!(-1.5),
    ];
    let options: Vec<Value> = match shape {
        Shape::Text { optional } => {
            let mut v = text_like.to_vec();
            if !optional {
                v.push(Value::Null);
            }
            v
        }
        Shape::Count { optional } => {
            let mut v = vec![
                json!("7"),
                json!(1.5),
                json!(true),
                json!([1]),
                json!({"n": 1}),
                json!(-1),
                json!(4_294_967_296u64),
                json!(1e30),
            ];
            if !optional {
                v.push(Value::Null);
            }
            v
        }
        Shape::Flag => vec![
            json!("yes"),
            json!(1),
            json!([true]),
            json!({}),
            Value::Null,
        ],
        // (A list with a wrong item is refused at the item: see `Text`.)
        Shape::Shards => vec![
            json!("many"),
            json!(true),
            json!({"n": 2}),
            Value::Null,
            json!(2.5),
        ],
        Shape::Texts => vec![
            json!("a"),
            json!(3),
            json!({"a": "b"}),
            Value::Null,
            json!(true),
        ],
        Shape::Object => vec![
            json!([1, 2]),
            json!("x"),
            json!(5),
            Value::Null,
            json!(false),
        ],
        Shape::Run => vec![
            json!(5),
            json!(["shell", "t"]),
            Value::Null,
            json!(true),
            json!({}),
            json!({"shell": "t", "handler": "h"}),
            json!({"python": "x"}),
        ],
        Shape::Codes => vec![json!("200"), json!(200), json!({"a": 200}), Value::Null],
        Shape::Code => vec![
            json!("200"),
            json!(-1),
            json!(70_000),
            json!(200.5),
            Value::Null,
            json!([200]),
        ],
    };
    options[pick % options.len()].clone()
}
