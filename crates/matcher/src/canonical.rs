//! Canonical text of a `where` clause, the key under which identical subscriptions share
//! one evaluation.
//!
//! Two clauses get the same text only if they are the same clause up to the order of
//! object keys (a `where` is an unordered map; so are operator objects and nested object
//! operands) and up to order and repetition where the query language makes them
//! irrelevant: the branches of `$or`/`$and`/`$nor` and the operands of the set operators
//! `$in`, `$nin`, `$all`, `$containedBy`. Those positions are recognised by walking the
//! clause as the compiler does: a key named `$in` inside an equality operand (`{f: {$eq:
//! {"$in": [1, 2]}}}`) is data, and its array keeps its order. Every other array keeps its
//! order too: `$box` corners, `$centerSphere` coordinates and polygon vertices mean
//! different things in a different order. Comparing the full text (not a hash of it)
//! means two different clauses can never share a group — unlike the reference, whose hash
//! drops every top-level key of a clause that has `$or`.

use serde_json::{Map, Value};

/// Operators whose array operand is a set of values.
const SET_OPERATORS: &[&str] = &["$in", "$nin", "$all", "$containedBy"];
/// Operators whose array operand is a set of clauses.
const LOGICAL_OPERATORS: &[&str] = &["$or", "$and", "$nor"];

/// The canonical text of a `where` clause.
pub(crate) fn canonical(where_: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(64);
    write_clause(where_, &mut out);
    out
}

fn sorted_keys(map: &Map<String, Value>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    keys
}

/// A clause: field constraints and logical operators.
fn write_clause(clause: &Map<String, Value>, out: &mut String) {
    out.push('{');
    for (i, key) in sorted_keys(clause).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        let value = &clause[key.as_str()];
        match value {
            Value::Array(branches) if LOGICAL_OPERATORS.contains(&key.as_str()) => {
                write_set(branches, out, |branch, s| match branch {
                    Value::Object(clause) => write_clause(clause, s),
                    other => write_value(other, s),
                });
            }
            _ if LOGICAL_OPERATORS.contains(&key.as_str()) => write_value(value, out),
            _ => write_constraint(value, out),
        }
    }
    out.push('}');
}

/// The value of a field: an operator object, or a value to equal.
fn write_constraint(value: &Value, out: &mut String) {
    let Some(ops) = value
        .as_object()
        .filter(|m| m.keys().any(|k| k.starts_with('$')))
    else {
        return write_value(value, out);
    };
    out.push('{');
    for (i, op) in sorted_keys(ops).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(op, out);
        out.push(':');
        let operand = &ops[op.as_str()];
        match (op.as_str(), operand) {
            (op, Value::Array(items)) if SET_OPERATORS.contains(&op) => {
                write_set(items, out, write_value);
            }
            ("$inQuery" | "$notInQuery", Value::Object(spec)) => write_subquery(spec, out),
            ("$select" | "$dontSelect", Value::Object(spec)) => {
                // {query: {className, where}, key}
                out.push('{');
                for (j, key) in sorted_keys(spec).into_iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    match (key.as_str(), &spec[key.as_str()]) {
                        ("query", Value::Object(query)) => write_subquery(query, out),
                        (_, other) => write_value(other, out),
                    }
                }
                out.push('}');
            }
            _ => write_value(operand, out),
        }
    }
    out.push('}');
}

/// `{className, where}` of a subquery: its `where` is a clause of its own.
fn write_subquery(spec: &Map<String, Value>, out: &mut String) {
    out.push('{');
    for (i, key) in sorted_keys(spec).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        match (key.as_str(), &spec[key.as_str()]) {
            ("where", Value::Object(clause)) => write_clause(clause, out),
            (_, other) => write_value(other, out),
        }
    }
    out.push('}');
}

/// Items whose order and repetition do not matter: rendered, sorted, de-duplicated.
fn write_set(items: &[Value], out: &mut String, render: impl Fn(&Value, &mut String)) {
    let mut rendered: Vec<String> = items
        .iter()
        .map(|item| {
            let mut s = String::new();
            render(item, &mut s);
            s
        })
        .collect();
    rendered.sort_unstable();
    rendered.dedup();
    out.push('[');
    out.push_str(&rendered.join(","));
    out.push(']');
}

/// A plain value (operand data): object keys sorted, arrays in order.
fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, key) in sorted_keys(map).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(&map[key.as_str()], out);
            }
            out.push('}');
        }
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
    // serde_json's escaping, without building a `Value`.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
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
        assert_eq!(
            text(json!({"p": {"$inQuery": {"className": "C", "where": {"t": {"$in": [2, 1]}}}}})),
            text(json!({"p": {"$inQuery": {"where": {"t": {"$in": [1, 2]}}, "className": "C"}}}))
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

    /// Only operator positions are sets: a key named `$in` inside an equality operand is
    /// data, and `[1, 2]` there is not `[2, 1]`.
    #[test]
    fn set_keys_inside_values_are_data() {
        assert_ne!(
            text(json!({"f": {"$eq": {"$in": [1, 2]}}})),
            text(json!({"f": {"$eq": {"$in": [2, 1]}}}))
        );
        assert_ne!(
            text(json!({"f": {"$in": [{"$or": [1, 2]}]}})),
            text(json!({"f": {"$in": [{"$or": [2, 1]}]}}))
        );
        assert_ne!(
            text(json!({"f": {"$ne": [1, 2]}})),
            text(json!({"f": {"$ne": [2, 1]}}))
        );
    }
}
