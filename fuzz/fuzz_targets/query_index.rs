//! Queries and the subscription index on structured input: random clauses (every operator
//! the matcher knows, set operands large enough to be hashed, logical nesting) and objects
//! from a small domain so that they meet. Checks that
//! - compiling never panics and evaluation never panics;
//! - the canonical form does not depend on key order, and equal canonical forms evaluate
//!   equally;
//! - the index never misses a match (candidates ⊇ brute force), across removals, and
//!   `matching` returns only matches — range queries included: bounds are drawn from the
//!   values objects hold (numbers with signed zeros and huge integers, strings whose byte
//!   and UTF-16 orders differ, dates as Parse dates and ISO strings), alone, as intervals
//!   and in arrays.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use livequery_matcher::{CompileOptions, Query, Scratch, SubscriptionIndex};
use serde_json::{Map, Value, json};

const FIELDS: &[&str] = &[
    "f",
    "g",
    "h",
    "objectId",
    "createdAt",
    "tags",
    "f.x",
    "tags.0",
    "loc",
];

fn scalar(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=12)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.int_in_range(0..=20)?),
        3 => json!(f64::from(u.int_in_range(0..=4)?) + 0.5),
        4 => json!(["a", "b", "c", "", "A"][u.choose_index(5)?]),
        5 => {
            json!({"__type": "Pointer", "className": (["U", "_User"][u.choose_index(2)?]), "objectId": (["p1", "p2"][u.choose_index(2)?])})
        }
        6 => {
            json!({"__type": "Date", "iso": (["2020-01-01T00:00:00.000Z", "2026-11-22T08:49:51.247Z"][u.choose_index(2)?])})
        }
        7 => json!(["2026-11-22T08:49:51.247Z", "2020-01-01T00:00:00Z"][u.choose_index(2)?]),
        8 => {
            json!({"__type": "GeoPoint", "latitude": u.int_in_range(-2..=2)?, "longitude": u.int_in_range(-2..=2)?})
        }
        9 => json!(-0.0),
        10 => [
            json!(9_007_199_254_740_993u64),
            json!(9_007_199_254_740_992.0),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(-1e300),
        ][u.choose_index(6)?]
            .clone(),
        11 => json!(["\u{ffff}", "\u{10000}", "\u{e000}", "é", "ab"][u.choose_index(5)?]),
        _ => json!(u.int_in_range(1000..=1030)?),
    })
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    if depth == 0 {
        return scalar(u);
    }
    Ok(match u.int_in_range(0..=5)? {
        0 => {
            let n = u.int_in_range(0..=14)?;
            Value::Array((0..n).map(|_| value(u, depth - 1)).collect::<Result<_>>()?)
        }
        1 => json!({"x": value(u, depth - 1)?}),
        2 => json!({"x": value(u, depth - 1)?, "y": scalar(u)?}),
        _ => scalar(u)?,
    })
}

fn items(u: &mut Unstructured<'_>) -> Result<Vec<Value>> {
    let n = u.int_in_range(0..=20)?;
    (0..n).map(|_| value(u, 1)).collect()
}

fn constraint(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=16)? {
        0 => json!({"$in": items(u)?}),
        1 => json!({"$nin": items(u)?}),
        2 => json!({"$all": items(u)?}),
        3 => json!({"$containedBy": items(u)?}),
        4 => json!({"$ne": value(u, 1)?}),
        5 => json!({"$eq": value(u, 1)?}),
        6 => {
            let op = ["$gt", "$gte", "$lt", "$lte"][u.choose_index(4)?];
            json!({ op: scalar(u)? })
        }
        7 => json!({"$exists": u.arbitrary::<bool>()?}),
        8 => {
            json!({"$regex": (["^a", "b|c", "(?i)x", "\\Qa.b", "^$"][u.choose_index(5)?]), "$options": (["", "i", "m"][u.choose_index(3)?])})
        }
        9 => json!({"$within": {"$box": [
            {"__type": "GeoPoint", "latitude": -1, "longitude": u.int_in_range(-2..=0)?},
            {"__type": "GeoPoint", "latitude": 1, "longitude": u.int_in_range(0..=2)?}]}}),
        10 => json!({"$gt": scalar(u)?, "$lt": scalar(u)?}),
        11 => {
            let low = ["$gt", "$gte"][u.choose_index(2)?];
            let high = ["$lt", "$lte"][u.choose_index(2)?];
            json!({ low: scalar(u)?, high: scalar(u)? })
        }
        12 => {
            let op = ["$gt", "$gte", "$lt", "$lte"][u.choose_index(4)?];
            json!({ op: scalar(u)?, "$exists": u.arbitrary::<bool>()? })
        }
        _ => value(u, 2)?,
    })
}

fn clause(u: &mut Unstructured<'_>, depth: u32) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for _ in 0..u.int_in_range(0..=3)? {
        map.insert(
            FIELDS[u.choose_index(FIELDS.len())?].to_owned(),
            constraint(u)?,
        );
    }
    if depth > 0 && u.ratio(1, 3)? {
        let op = ["$or", "$and", "$nor"][u.choose_index(3)?];
        let n = u.int_in_range(1..=3)?;
        let branches = (0..n)
            .map(|_| clause(u, depth - 1).map(Value::Object))
            .collect::<Result<Vec<_>>>()?;
        map.insert(op.to_owned(), Value::Array(branches));
    }
    Ok(map)
}

fn object(u: &mut Unstructured<'_>) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let field = ["f", "g", "h", "objectId", "createdAt", "tags", "loc"][u.choose_index(7)?];
        map.insert(field.to_owned(), value(u, 2)?);
    }
    map.insert("className".into(), "C".into());
    Ok(map)
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let n = u.int_in_range(1..=8)?;
    let clauses = (0..n).map(|_| clause(u, 2)).collect::<Result<Vec<_>>>()?;
    let m = u.int_in_range(1..=4)?;
    let objects = (0..m).map(|_| object(u)).collect::<Result<Vec<_>>>()?;
    let options = CompileOptions::default();
    let mut index = SubscriptionIndex::new();
    let mut live = Vec::new();
    for (i, clause) in clauses.iter().enumerate() {
        let Ok(query) = Query::compile(clause, &options) else {
            continue;
        };
        let reversed: Map<String, Value> = clause
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let same =
            Query::compile(&reversed, &options).expect("the same clause compiles in any key order");
        assert_eq!(query.canonical(), same.canonical());
        for object in &objects {
            assert_eq!(query.matches(object), same.matches(object));
        }
        let id = index.insert("C", query, i);
        live.push((id, i));
    }
    for _ in 0..u.int_in_range(0..=3)? {
        if live.is_empty() {
            break;
        }
        let (id, sub) = live.swap_remove(u.choose_index(live.len())?);
        assert!(index.remove(id, &sub));
    }
    assert_eq!(index.subscription_count(), live.len());
    let mut scratch = Scratch::default();
    for object in &objects {
        let mut candidates = Vec::new();
        index.candidates("C", &[object], &mut scratch, &mut candidates);
        for (id, _) in &live {
            let entry = index.get(*id).expect("live query");
            if entry.query().matches(object) {
                assert!(
                    candidates.contains(id),
                    "the index missed {} for {object:?}",
                    entry.query().canonical()
                );
            }
        }
        let mut matched = Vec::new();
        index.matching("C", object, &mut scratch, &mut matched);
        for id in &matched {
            assert!(index.get(*id).expect("live").query().matches(object));
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
