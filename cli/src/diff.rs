//! Field-level differences between two job definitions, top-level field by
//! top-level field, as JSON values.
//!
//! Definitions are compared in their canonical form (a `JobSpec` encoded
//! back to JSON, defaults filled in), so `timezone: UTC` and no timezone at
//! all are the same, and key order or YAML-versus-JSON never matter.

use jetcron_shared::JobSpec;
use serde::Serialize;
use serde_json::{Map, Value};

/// The fields of a definition in the order people read them; fields not in
/// this list (added later) follow in alphabetical order.
const FIELD_ORDER: &[&str] = &[
    "id",
    "schedule",
    "timezone",
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
];

/// One changed top-level field; `None` is a field that is not set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// A definition in its canonical JSON form.
pub fn canonical(spec: &JobSpec) -> Value {
    // A JobSpec holds only strings, numbers, lists and JSON values.
    serde_json::to_value(spec).unwrap_or(Value::Null)
}

/// The top-level fields whose values differ. Anything but an object counts
/// as an object without fields.
pub fn diff(old: &Value, new: &Value) -> Vec<FieldChange> {
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut others: Vec<&String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| !FIELD_ORDER.contains(&k.as_str()))
        .collect();
    others.sort();
    others.dedup();
    FIELD_ORDER
        .iter()
        .copied()
        .chain(others.into_iter().map(String::as_str))
        .filter_map(|field| {
            let (o, n) = (old.get(field), new.get(field));
            (o != n).then(|| FieldChange {
                field: field.to_string(),
                old: o.cloned(),
                new: n.cloned(),
            })
        })
        .collect()
}

/// One line per changed field: `schedule: - "0 0 2 * * *" + "0 30 2 * * *"`,
/// field names padded to the same width.
pub fn render(changes: &[FieldChange]) -> Vec<String> {
    let width = changes
        .iter()
        .map(|c| c.field.chars().count() + 1)
        .max()
        .unwrap_or(0);
    changes
        .iter()
        .map(|c| {
            let name = format!("{}:", c.field);
            format!(
                "{name:<width$} - {} + {}",
                value_text(c.old.as_ref()),
                value_text(c.new.as_ref())
            )
        })
        .collect()
}

fn value_text(v: Option<&Value>) -> String {
    match v {
        None => "(unset)".to_string(),
        Some(v) => serde_json::to_string(v).unwrap_or_else(|_| v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(json: Value) -> JobSpec {
        JobSpec::decode(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    #[test]
    fn defaults_and_key_order_do_not_count_as_changes() {
        let a = spec(json!({"id":"a","schedule":"@hourly","run":{"shell":"x"},
            "payload":{"k":1,"j":[1,2]}}));
        let b = spec(
            json!({"payload":{"j":[1,2],"k":1},"run":{"shell":"x"},"id":"a",
            "schedule":"@hourly","timezone":"UTC","group":"default","shards":1,
            "retry":{"max_attempts":1},"paused":false}),
        );
        assert_eq!(a, b);
        assert!(diff(&canonical(&a), &canonical(&b)).is_empty());
    }

    #[test]
    fn changed_added_and_removed_fields_in_reading_order() {
        let old = spec(
            json!({"id":"a","schedule":"0 0 2 * * *","run":{"shell":"x"},
            "description":"old","payload":{"k":1}}),
        );
        let new = spec(
            json!({"id":"a","schedule":"0 30 2 * * *","run":{"shell":"x"},
            "timeout":"10m","payload":{"k":2},"paused":true}),
        );
        let changes = diff(&canonical(&old), &canonical(&new));
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["schedule", "timeout", "payload", "description", "paused"]
        );
        assert_eq!(changes[1].old, None);
        assert_eq!(changes[1].new, Some(json!("10m")));
        assert_eq!(changes[3].new, None);
        assert_eq!(
            render(&changes),
            [
                r#"schedule:    - "0 0 2 * * *" + "0 30 2 * * *""#,
                r#"timeout:     - (unset) + "10m""#,
                r#"payload:     - {"k":1} + {"k":2}"#,
                r#"description: - "old" + (unset)"#,
                r#"paused:      - (unset) + true"#,
            ]
        );
    }

    #[test]
    fn unknown_fields_and_non_objects_still_diff() {
        let changes = diff(&json!({"zeta":1,"id":"a"}), &json!({"id":"a","alpha":2}));
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["alpha", "zeta"]);
        let changes = diff(&Value::Null, &json!({"id":"a"}));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].old, None);
    }
}
