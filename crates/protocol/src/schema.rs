//! A validator that reports exactly what parse-server's tv4-based request validation reports.
//!
//! The reference validates every inbound JSON value against a general schema and then an
//! op-specific schema, and replies with the *first* violation tv4 finds. tv4's order is:
//! type, then enum; for arrays `minItems`, `uniqueItems`, then items; for objects the
//! `required` list in schema order, then each property of the *data* in JavaScript's key
//! order (integer-like keys first, ascending, then insertion order), each either validated
//! against its schema or rejected as an additional property. This module reproduces that
//! order so that the message a client sees is the reference's message.

use serde_json::{Map, Value};

use crate::error::msg;

/// The schema of one value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Schema {
    /// No constraint (the op-specific schemas list `op` with a non-schema value).
    Any,
    /// `type: "string"`.
    Str,
    /// `type: "string"` with an enum of allowed values.
    StrEnum(&'static [&'static str]),
    /// `type: "number"`.
    Num,
    /// `type: "object"` with nothing said about its content (`where`).
    FreeObject,
    /// `type: "object"` with properties.
    Object(&'static ObjectSchema),
    /// `type: "array"` of strings, `minItems: 1`, `uniqueItems: true`.
    StringSet,
}

/// An object schema: known properties, required ones, and whether others are allowed.
#[derive(Debug)]
pub(crate) struct ObjectSchema {
    pub(crate) properties: &'static [(&'static str, Schema)],
    pub(crate) required: &'static [&'static str],
    pub(crate) additional: bool,
}

impl ObjectSchema {
    fn property(&self, key: &str) -> Option<Schema> {
        self.properties
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, schema)| *schema)
    }
}

/// All ops livequery accepts. `query` is a livequery extension (the reference rejects it).
pub(crate) const OPS: &[&str] = &["connect", "subscribe", "unsubscribe", "update", "query"];

pub(crate) static GENERAL: ObjectSchema = ObjectSchema {
    properties: &[("op", Schema::StrEnum(OPS))],
    required: &["op"],
    additional: true,
};

pub(crate) static CONNECT: ObjectSchema = ObjectSchema {
    properties: &[
        ("op", Schema::Any),
        ("applicationId", Schema::Str),
        ("javascriptKey", Schema::Str),
        ("masterKey", Schema::Str),
        ("clientKey", Schema::Str),
        ("windowsKey", Schema::Str),
        ("restAPIKey", Schema::Str),
        ("sessionToken", Schema::Str),
        ("installationId", Schema::Str),
    ],
    required: &["op", "applicationId"],
    additional: false,
};

static QUERY_FIELD: ObjectSchema = ObjectSchema {
    properties: &[
        ("className", Schema::Str),
        ("where", Schema::FreeObject),
        ("keys", Schema::StringSet),
        ("watch", Schema::StringSet),
    ],
    required: &["where", "className"],
    additional: false,
};

/// Shared by `subscribe` and `update`.
pub(crate) static SUBSCRIBE: ObjectSchema = ObjectSchema {
    properties: &[
        ("op", Schema::Any),
        ("requestId", Schema::Num),
        ("query", Schema::Object(&QUERY_FIELD)),
        ("sessionToken", Schema::Str),
    ],
    required: &["op", "requestId", "query"],
    additional: false,
};

pub(crate) static UNSUBSCRIBE: ObjectSchema = ObjectSchema {
    properties: &[("op", Schema::Any), ("requestId", Schema::Num)],
    required: &["op", "requestId"],
    additional: false,
};

/// `{"op":"query","requestId":N}` as sent by Parse JS SDK 8's `subscription.find()`.
pub(crate) static QUERY: ObjectSchema = ObjectSchema {
    properties: &[("op", Schema::Any), ("requestId", Schema::Num)],
    required: &["op", "requestId"],
    additional: false,
};

/// tv4's name for the type of a value.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid_type(value: &Value, expected: &str) -> String {
    format!("Invalid type: {} (expected {expected})", type_name(value))
}

/// Validates `value` against `schema`, returning tv4's first violation.
pub(crate) fn validate(value: &Value, schema: Schema) -> Result<(), String> {
    match schema {
        Schema::Any => Ok(()),
        Schema::Str => match value {
            Value::String(_) => Ok(()),
            other => Err(invalid_type(other, "string")),
        },
        Schema::StrEnum(allowed) => match value {
            Value::String(s) if allowed.contains(&s.as_str()) => Ok(()),
            Value::String(_) => Err(format!(
                "No enum match for: {}",
                serde_json::to_string(value).unwrap_or_default()
            )),
            other => Err(invalid_type(other, "string")),
        },
        Schema::Num => match value {
            Value::Number(_) => Ok(()),
            other => Err(invalid_type(other, "number")),
        },
        Schema::FreeObject => match value {
            Value::Object(_) => Ok(()),
            other => Err(invalid_type(other, "object")),
        },
        Schema::Object(object_schema) => match value {
            Value::Object(map) => validate_object(map, object_schema),
            other => Err(invalid_type(other, "object")),
        },
        Schema::StringSet => match value {
            Value::Array(items) => validate_string_set(items),
            other => Err(invalid_type(other, "array")),
        },
    }
}

/// Validates an object value against an object schema (required, then properties).
pub(crate) fn validate_object(
    map: &Map<String, Value>,
    schema: &ObjectSchema,
) -> Result<(), String> {
    for key in schema.required {
        if !map.contains_key(*key) {
            return Err(format!("Missing required property: {key}"));
        }
    }
    for key in js_key_order(map) {
        match schema.property(key) {
            Some(property) => validate(&map[key], property)?,
            None if !schema.additional => return Err(msg::ADDITIONAL_PROPERTIES.to_owned()),
            None => {}
        }
    }
    Ok(())
}

fn validate_string_set(items: &[Value]) -> Result<(), String> {
    if items.is_empty() {
        return Err("Array is too short (0), minimum 1".to_owned());
    }
    if let Some((i, j)) = first_duplicate_pair(items) {
        return Err(format!("Array items are not unique (indices {i} and {j})"));
    }
    for item in items {
        if !item.is_string() {
            return Err(invalid_type(item, "string"));
        }
    }
    Ok(())
}

/// The pair tv4's O(n²) scan would report first (smallest `i`, then smallest `j > i`),
/// found in O(n) expected time so that a hostile array cannot stall the server.
fn first_duplicate_pair(items: &[Value]) -> Option<(usize, usize)> {
    use std::collections::HashMap;
    let mut first_seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
    let mut best: Option<(usize, usize)> = None;
    for (j, item) in items.iter().enumerate() {
        let key = match item {
            Value::String(s) => format!("s{s}"),
            other => format!("j{other}"),
        };
        match first_seen.get(&key) {
            // The first repeat of the value whose first occurrence is smallest wins; a
            // later `j` can only improve on `best` if its `i` is smaller.
            Some(&i) => {
                if best.is_none_or(|(bi, _)| i < bi) {
                    best = Some((i, j));
                }
            }
            None => {
                first_seen.insert(key, j);
            }
        }
    }
    best
}

/// Keys in the order a JavaScript `for…in` loop visits them after `JSON.parse`:
/// canonical array-index keys ascending, then the rest in insertion order.
fn js_key_order(map: &Map<String, Value>) -> Vec<&str> {
    let mut indices: Vec<(u32, &str)> = Vec::new();
    let mut others: Vec<&str> = Vec::with_capacity(map.len());
    for key in map.keys() {
        match array_index(key) {
            Some(index) => indices.push((index, key)),
            None => others.push(key),
        }
    }
    indices.sort_unstable_by_key(|(index, _)| *index);
    indices
        .into_iter()
        .map(|(_, key)| key)
        .chain(others)
        .collect()
}

/// A canonical array index: decimal digits without leading zeros, below 2³² − 1.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || key.len() > 10 || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    if !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = key.parse().ok()?;
    (value < u64::from(u32::MAX)).then_some(value as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_like_keys_come_first() {
        let Value::Object(map) = json!({"b": 1, "10": 2, "a": 3, "2": 4, "01": 5}) else {
            unreachable!()
        };
        assert_eq!(js_key_order(&map), vec!["2", "10", "b", "a", "01"]);
    }

    #[test]
    fn duplicate_pair_matches_the_quadratic_scan() {
        let items: Vec<Value> = ["a", "b", "c", "b", "a"].iter().map(|s| json!(s)).collect();
        assert_eq!(first_duplicate_pair(&items), Some((0, 4)));
        let items: Vec<Value> = ["x", "b", "c", "b", "c"].iter().map(|s| json!(s)).collect();
        assert_eq!(first_duplicate_pair(&items), Some((1, 3)));
    }

    #[test]
    fn large_arrays_validate_quickly() {
        let items: Vec<Value> = (0..200_000).map(|i| json!(format!("k{i}"))).collect();
        assert_eq!(validate_string_set(&items), Ok(()));
    }
}
