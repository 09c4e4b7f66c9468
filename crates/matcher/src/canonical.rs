//! Canonical text of a `where` clause, the key under which identical subscriptions share
//! one evaluation.
//!
//! Two clauses get the same text only if they are the same clause up to the order of
//! object keys (a `where` is an unordered map; so are operator objects and nested object
//! operands) and up to order and repetition inside operands that are sets (`$in`, `$nin`,
//! `$all`, `$containedBy`) and inside `$or`/`$and`/`$nor`. Every other array keeps its
//! order: `$box` corners, `$centerSphere` coordinates and polygon vertices mean different
//! things in a different order. Comparing the full text (not a hash of it) means two
//! different clauses can never share a group — unlike the reference, whose hash drops
//! every top-level key of a clause that has `$or`.

use serde_json::{Map, Value};

/// Operators whose array operand is a set.
const SET_OPERATORS: &[&str] = &["$in", "$nin", "$all", "$containedBy", "$or", "$and", "$nor"];

/// The canonical text of a `where` clause.
pub(crate) fn canonical(where_: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(64);
    write_object(where_, &mut out);
    out
}

fn write_object(map: &Map<String, Value>, out: &mut String) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        let value = &map[key.as_str()];
        match value {
            Value::Array(items) if SET_OPERATORS.contains(&key.as_str()) => {
                let mut rendered: Vec<String> = items
                    .iter()
                    .map(|item| {
                        let mut s = String::new();
                        write_value(item, &mut s);
                        s
                    })
                    .collect();
                rendered.sort_unstable();
                rendered.dedup();
                out.push('[');
                out.push_str(&rendered.join(","));
                out.push(']');
            }
            _ => write_value(value, out),
        }
    }
    out.push('}');
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        // `1` and `1.0` are the same number to Parse.
        Value::Number(n) => match n.as_f64() {
            Some(f) => out.push_str(&format!("{f:?}")),
            None => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&Value::String(s.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(value: Value) -> String {
        canonical(value.as_object().unwrap())
    }

    #[test]
    fn key_order_and_set_order_do_not_matter() {
        assert_eq!(
            text(json!({"a": 1, "b": {"$in": [2, 1, 1]}})),
            text(json!({"b": {"$in": [1, 2]}, "a": 1.0}))
        );
        assert_eq!(
            text(json!({"$or": [{"x": 1}, {"y": 2}]})),
            text(json!({"$or": [{"y": 2}, {"x": 1}]}))
        );
    }

    #[test]
    fn different_clauses_never_collide() {
        // The reference's hash ignores `a1` when `$or` is present.
        assert_ne!(
            text(json!({"a1": 1, "$or": [{"b": 1}, {"c": 1}]})),
            text(json!({"a1": 2, "$or": [{"b": 1}, {"c": 1}]}))
        );
        // Order-sensitive operands keep their order.
        let sw = json!({"__type": "GeoPoint", "latitude": 0, "longitude": 0});
        let ne = json!({"__type": "GeoPoint", "latitude": 1, "longitude": 1});
        assert_ne!(
            text(json!({"loc": {"$within": {"$box": [sw, ne]}}})),
            text(json!({"loc": {"$within": {"$box": [ne, sw]}}}))
        );
        assert_ne!(text(json!({"a": "1"})), text(json!({"a": 1})));
    }
}
