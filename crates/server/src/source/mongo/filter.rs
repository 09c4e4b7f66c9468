//! A Parse `where` clause → a MongoDB filter that selects a *superset* of its matches.
//!
//! Used to read current objects (the `query` op, subquery sets) without scanning whole
//! collections. Constraints with a faithful MongoDB translation (equality, `$in`, `$nin`,
//! `$ne`, ranges, `$exists` on top-level fields, `objectId`, `createdAt`/`updatedAt`, pointers
//! as `_p_` strings, `$and`, and `$or` whose branches all translate) are translated; the
//! others are left out, which only widens the selection. The matcher then decides exactly.

use bson::{Bson, DateTime, Document, doc};
use livequery_matcher::date::parse_iso_millis;
use serde_json::{Map, Value};

use super::schema::{ClassSchema, FieldType};

/// The filter, and whether it is exact (every constraint translated).
pub fn prefilter(where_: &Map<String, Value>, schema: Option<&ClassSchema>) -> (Document, bool) {
    let mut exact = true;
    let document = clause(where_, schema, &mut exact);
    (document, exact)
}

fn clause(where_: &Map<String, Value>, schema: Option<&ClassSchema>, exact: &mut bool) -> Document {
    let mut out = Document::new();
    let mut and = Vec::new();
    for (key, value) in where_ {
        match key.as_str() {
            "$and" => match value.as_array() {
                Some(items) => {
                    for item in items.iter().filter_map(Value::as_object) {
                        let inner = clause(item, schema, exact);
                        if !inner.is_empty() {
                            and.push(Bson::Document(inner));
                        }
                    }
                }
                None => *exact = false,
            },
            "$or" => {
                let mut branch_exact = true;
                let branches: Option<Vec<Bson>> = value.as_array().map(|items| {
                    items
                        .iter()
                        .filter_map(Value::as_object)
                        .map(|item| Bson::Document(clause(item, schema, &mut branch_exact)))
                        .collect()
                });
                match branches {
                    // An empty branch matches everything: the `$or` constrains nothing.
                    Some(branches)
                        if !branches.is_empty()
                            && branches
                                .iter()
                                .all(|b| b.as_document().is_some_and(|d| !d.is_empty())) =>
                    {
                        and.push(Bson::Document(doc! {"$or": branches}));
                        *exact &= branch_exact;
                    }
                    _ => *exact = false,
                }
            }
            _ => match field(key, value, schema) {
                Some((name, condition)) => and.push(Bson::Document(doc! {name: condition})),
                None => *exact = false,
            },
        }
    }
    match and.len() {
        0 => {}
        1 => {
            if let Some(Bson::Document(single)) = and.pop() {
                out = single;
            }
        }
        _ => {
            out.insert("$and", and);
        }
    }
    out
}

/// A stored field name and a translated condition, or `None` when not translatable.
fn field(key: &str, value: &Value, schema: Option<&ClassSchema>) -> Option<(String, Bson)> {
    if key.contains('.') || key.starts_with('$') {
        return None;
    }
    let kind = schema.map_or(&FieldType::Plain, |s| s.field(key));
    let (name, dates) = match key {
        "objectId" => ("_id".to_owned(), false),
        "createdAt" => ("_created_at".to_owned(), true),
        "updatedAt" => ("_updated_at".to_owned(), true),
        _ => match kind {
            FieldType::Pointer(_) => (format!("_p_{key}"), false),
            FieldType::Plain | FieldType::Date => (key.to_owned(), *kind == FieldType::Date),
            _ => return None,
        },
    };
    let pointer = matches!(kind, FieldType::Pointer(_)) && key != "objectId";
    let atom = |value: &Value| -> Option<Bson> { operand(value, dates, pointer) };
    let condition = match value {
        Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => {
            let mut out = Document::new();
            for (op, operand_value) in ops {
                match op.as_str() {
                    "$eq" | "$ne" | "$lt" | "$lte" | "$gt" | "$gte" => {
                        out.insert(op.clone(), atom(operand_value)?);
                    }
                    "$in" | "$nin" => {
                        let items: Option<Vec<Bson>> =
                            operand_value.as_array()?.iter().map(&atom).collect();
                        out.insert(op.clone(), items?);
                    }
                    "$exists" => {
                        out.insert("$exists", operand_value.as_bool()?);
                    }
                    _ => return None,
                }
            }
            Bson::Document(out)
        }
        other => atom(other)?,
    };
    Some((name, condition))
}

fn operand(value: &Value, dates: bool, pointer: bool) -> Option<Bson> {
    match value {
        Value::Null => Some(Bson::Null),
        Value::Bool(b) => Some(Bson::Boolean(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(Bson::Int64)
            .or_else(|| n.as_f64().map(Bson::Double)),
        Value::String(s) if dates => {
            parse_iso_millis(s).map(|ms| Bson::DateTime(DateTime::from_millis(ms)))
        }
        Value::String(s) if !pointer => Some(Bson::String(s.clone())),
        Value::Object(map) => match map.get("__type").and_then(Value::as_str) {
            Some("Date") => map
                .get("iso")?
                .as_str()
                .and_then(parse_iso_millis)
                .map(|ms| Bson::DateTime(DateTime::from_millis(ms))),
            Some("Pointer") if pointer => Some(Bson::String(format!(
                "{}${}",
                map.get("className")?.as_str()?,
                map.get("objectId")?.as_str()?
            ))),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use serde_json::json;

    fn schema() -> ClassSchema {
        ClassSchema::from_document(
            &doc! {"_id": "Msg", "owner": "*_User", "when": "date", "loc": "geopoint", "room": "string"},
        )
    }

    fn translate(where_: Value) -> (Document, bool) {
        prefilter(where_.as_object().unwrap(), Some(&schema()))
    }

    #[test]
    fn translates_what_mongodb_evaluates_the_same_way() {
        assert_eq!(translate(json!({"room": "r"})), (doc! {"room": "r"}, true));
        assert_eq!(
            translate(json!({"objectId": "x"})),
            (doc! {"_id": "x"}, true)
        );
        assert_eq!(
            translate(
                json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "u1"}})
            ),
            (doc! {"_p_owner": "_User$u1"}, true)
        );
        assert_eq!(
            translate(json!({"createdAt": {"$gt": "2020-01-01T00:00:00.000Z"}})),
            (
                doc! {"_created_at": {"$gt": DateTime::from_millis(1_577_836_800_000)}},
                true
            )
        );
        assert_eq!(
            translate(json!({"room": {"$in": ["a", "b"]}, "n": {"$gte": 2}})),
            (
                doc! {"$and": [{"room": {"$in": ["a", "b"]}}, {"n": {"$gte": 2_i64}}]},
                true
            )
        );
        assert_eq!(
            translate(json!({"$or": [{"room": "a"}, {"n": 1}]})),
            (doc! {"$or": [{"room": "a"}, {"n": 1_i64}]}, true)
        );
    }

    #[test]
    fn leaves_out_what_it_cannot_translate() {
        assert_eq!(
            translate(json!({"room": {"$regex": "^a"}})),
            (doc! {}, false)
        );
        assert_eq!(
            translate(json!({"room": "a", "loc": {"$nearSphere": {}}})),
            (doc! {"room": "a"}, false)
        );
        assert_eq!(
            translate(json!({"$or": [{"room": "a"}, {"room": {"$regex": "b"}}]})),
            (doc! {}, false)
        );
        assert_eq!(translate(json!({"obj.a": 1})), (doc! {}, false));
        assert_eq!(
            translate(json!({"owner": {"$in": ["u1"]}})),
            (doc! {}, false),
            "bare ids on pointers"
        );
        assert_eq!(
            translate(json!({"$nor": [{"room": "a"}]})),
            (doc! {}, false)
        );
    }
}
