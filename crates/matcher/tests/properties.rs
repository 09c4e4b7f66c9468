//! Property tests for the matcher.

use std::cell::Cell;
use std::rc::Rc;

use livequery_matcher::{
    ChangeKind, Classification, CompileOptions, Knowledge, Member, Query, QueryId, Reads, Scratch,
    Side, SubscriptionIndex, classify, classify_uncertain,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Values from a small domain so that queries and objects actually meet.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..4).prop_map(Value::from),
        Just(json!(1.0)),
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(Value::from),
        prop_oneof![Just("p1"), Just("p2")]
            .prop_map(|id| json!({"__type": "Pointer", "className": "U", "objectId": id})),
        Just(json!({"__type": "Date", "iso": "2020-01-01T00:00:00.000Z"})),
        Just(json!("2026-11-22T08:49:51.247Z")),
    ]
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        1 => scalar().prop_map(|v| json!({"x": v})),
    ]
}

fn field() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("f"),
        Just("g"),
        Just("h"),
        Just("objectId"),
        Just("createdAt")
    ]
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((field(), field_value()), 0..5).prop_map(|entries| {
        let mut map: Map<String, Value> = entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        map.insert("className".into(), "C".into());
        map
    })
}

/// An item of an `$in`/`$nin` operand: a value, or an array of values (flattened one level
/// by parse-server's query transform).
fn set_item() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
    ]
}

fn constraint() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(set_item(), 0..3).prop_map(|items| json!({"$in": items})),
        1 => prop::collection::vec(set_item(), 0..3).prop_map(|items| json!({"$nin": items})),
        1 => scalar().prop_map(|v| json!({"$ne": v})),
        1 => (0i64..4).prop_map(|v| json!({"$gt": v})),
        1 => (0i64..4).prop_map(|v| json!({"$lte": v})),
        1 => any::<bool>().prop_map(|b| json!({"$exists": b})),
        1 => prop_oneof![Just("^a"), Just("b|c")].prop_map(|r| json!({"$regex": r})),
        1 => prop::collection::vec(scalar(), 1..3).prop_map(|items| json!({"$all": items})),
        1 => scalar().prop_map(|v| json!({"$eq": v})),
    ]
}

fn clause(depth: u32) -> BoxedStrategy<Map<String, Value>> {
    let leaf = prop::collection::vec((prop_oneof![field(), Just("f.x")], constraint()), 0..3)
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Map<String, Value>>()
        });
    if depth == 0 {
        return leaf.boxed();
    }
    (
        leaf,
        prop::option::of((
            prop_oneof![Just("$or"), Just("$and"), Just("$nor")],
            prop::collection::vec(clause(depth - 1), 1..3),
        )),
    )
        .prop_map(|(mut map, logical)| {
            if let Some((op, branches)) = logical {
                map.insert(
                    op.to_owned(),
                    Value::Array(branches.into_iter().map(Value::Object).collect()),
                );
            }
            map
        })
        .boxed()
}

fn index_agrees_with_brute_force(
    clauses: &[Map<String, Value>],
    objects: &[Map<String, Value>],
    removals: &[prop::sample::Index],
) -> Result<(), TestCaseError> {
    let mut index = SubscriptionIndex::new();
    let mut live = Vec::new();
    for (i, clause) in clauses.iter().enumerate() {
        let Ok(query) = Query::compile(clause, &CompileOptions::default()) else {
            continue;
        };
        let id = index.insert("C", query, i);
        live.push((id, i));
    }
    for removal in removals {
        if live.is_empty() {
            break;
        }
        let (id, sub) = live.swap_remove(removal.index(live.len()));
        prop_assert!(index.remove(id, &sub));
    }
    prop_assert_eq!(index.subscription_count(), live.len());
    let mut scratch = Scratch::default();
    for object in objects {
        let mut candidates = Vec::new();
        index.candidates("C", &[object], &mut scratch, &mut candidates);
        let mut sorted = candidates.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), candidates.len(), "candidates are unique");
        prop_assert_eq!(index.has_candidates("C", &[object]), !candidates.is_empty());
        // The fields the index says it reads are all it reads.
        match index.reads("C") {
            Reads::Nothing => prop_assert!(candidates.is_empty()),
            Reads::Everything => prop_assert!(!candidates.is_empty()),
            Reads::Fields(fields) => {
                let read: Map<String, Value> = object
                    .iter()
                    .filter(|(key, _)| fields.contains(key))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                let mut from_read = Vec::new();
                index.candidates("C", &[&read], &mut scratch, &mut from_read);
                from_read.sort();
                prop_assert_eq!(&from_read, &sorted);
                // Its list of names says the same as its test of a name.
                let names: Vec<&str> = fields.names().collect();
                prop_assert!(names.iter().all(|name| fields.contains(name)));
                for key in object.keys() {
                    prop_assert_eq!(names.contains(&key.as_str()), fields.contains(key));
                }
            }
        }
        for (id, _) in &live {
            let entry = index.get(*id).expect("live query");
            if entry.query().matches(object) {
                prop_assert!(
                    candidates.contains(id),
                    "missed {} for {:?}",
                    entry.query().canonical(),
                    object
                );
            }
        }
        let mut matched = Vec::new();
        index.matching("C", object, &mut scratch, &mut matched);
        for id in &matched {
            prop_assert!(index.get(*id).expect("live").query().matches(object));
        }
    }
    // Candidates for another class are never returned.
    let mut other = Vec::new();
    index.candidates("D", &[&objects[0]], &mut scratch, &mut other);
    prop_assert!(other.is_empty());
    prop_assert!(!index.has_candidates("D", &[&objects[0]]));
    prop_assert!(matches!(index.reads("D"), Reads::Nothing));
    Ok(())
}

/// How a test subscriber keeps its place in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memory {
    /// Remembers the place the index gives it.
    Honest,
    /// Remembers nothing: searched for.
    Forgetful,
    /// Reports a wrong place (the one after its own): the index must not trust it blindly.
    Wrong,
}

/// A subscriber compared by its number, keeping its place as `memory` says. Its clones
/// share the place, as clones of a server's subscription handle share the subscription.
#[derive(Debug, Clone)]
struct Tracked {
    id: usize,
    memory: Memory,
    place: Rc<Cell<usize>>,
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Member for Tracked {
    fn place(&self) -> Option<usize> {
        match self.memory {
            Memory::Honest => Some(self.place.get()),
            Memory::Forgetful => None,
            Memory::Wrong => Some(self.place.get().wrapping_add(1)),
        }
    }

    fn set_place(&self, place: usize) {
        self.place.set(place);
    }
}

/// One step of a subscribe/unsubscribe sequence.
#[derive(Debug, Clone)]
enum Step {
    /// Subscribes a new subscriber to the clause of this number in the pool.
    Subscribe(prop::sample::Index, Memory),
    /// Unsubscribes one of the live subscribers.
    Unsubscribe(prop::sample::Index),
}

fn step() -> impl Strategy<Value = Step> {
    let memory = prop_oneof![
        3 => Just(Memory::Honest),
        1 => Just(Memory::Forgetful),
        1 => Just(Memory::Wrong),
    ];
    prop_oneof![
        3 => (any::<prop::sample::Index>(), memory).prop_map(|(clause, memory)| Step::Subscribe(clause, memory)),
        2 => any::<prop::sample::Index>().prop_map(Step::Unsubscribe),
    ]
}

/// Runs `steps` on an index; returns it with the model's live subscribers (a handle on
/// each, its query id and clause number), in subscription order. Each is removed with its
/// own handle, as the server removes a subscription.
fn run_steps(
    queries: &[Query],
    steps: &[Step],
) -> (SubscriptionIndex<Tracked>, Vec<(Tracked, QueryId, usize)>) {
    let mut index = SubscriptionIndex::new();
    let mut live = Vec::new();
    for (id, step) in steps.iter().enumerate() {
        match step {
            Step::Subscribe(clause, memory) => {
                let clause = clause.index(queries.len());
                let subscriber = Tracked {
                    id,
                    memory: *memory,
                    place: Rc::new(Cell::new(usize::MAX)),
                };
                let handle = subscriber.clone();
                let mut given = None;
                let query_id = index.insert_with("C", queries[clause].clone(), |query_id| {
                    given = Some(query_id);
                    subscriber
                });
                assert_eq!(
                    given,
                    Some(query_id),
                    "the subscriber is made with its query's id"
                );
                live.push((handle, query_id, clause));
            }
            Step::Unsubscribe(which) => {
                if live.is_empty() {
                    continue;
                }
                let (handle, query_id, _) = live.remove(which.index(live.len()));
                assert!(
                    index.remove(query_id, &handle),
                    "a live subscriber is found"
                );
                assert!(!index.remove(query_id, &handle), "and removed only once");
            }
        }
    }
    (index, live)
}

fn subscribe_unsubscribe_sequences_agree_with_a_naive_model(
    clauses: &[Map<String, Value>],
    steps: &[Step],
    objects: &[Map<String, Value>],
) -> Result<(), TestCaseError> {
    let queries: Vec<Query> = clauses
        .iter()
        .filter_map(|clause| Query::compile(clause, &CompileOptions::default()).ok())
        .collect();
    if queries.is_empty() {
        return Ok(());
    }
    let (index, live) = run_steps(&queries, steps);
    prop_assert_eq!(index.subscription_count(), live.len());
    // Every live subscriber is held once, under its query, at the place it was told
    // (whatever place it reports).
    let mut held: Vec<usize> = index
        .entries()
        .flat_map(|entry| entry.subscribers().iter().map(|s| s.id))
        .collect();
    held.sort_unstable();
    let mut expected: Vec<usize> = live.iter().map(|(handle, _, _)| handle.id).collect();
    expected.sort_unstable();
    prop_assert_eq!(held, expected);
    for (handle, query_id, _) in &live {
        let subscribers = index.get(*query_id).expect("live query").subscribers();
        let at = subscribers.iter().position(|s| s == handle);
        prop_assert!(at.is_some(), "subscriber {} under its query", handle.id);
        prop_assert_eq!(handle.place.get(), at.unwrap_or_default());
    }
    let mut canonical: Vec<&str> = live
        .iter()
        .map(|(_, _, clause)| queries[*clause].canonical())
        .collect();
    canonical.sort_unstable();
    canonical.dedup();
    prop_assert_eq!(index.query_count(), canonical.len());
    // The subscribers of the matching queries are those whose query matches.
    let mut scratch = Scratch::default();
    for object in objects {
        let mut matched = Vec::new();
        index.matching("C", object, &mut scratch, &mut matched);
        let mut found: Vec<usize> = matched
            .iter()
            .flat_map(|id| {
                index
                    .get(*id)
                    .expect("live")
                    .subscribers()
                    .iter()
                    .map(|s| s.id)
            })
            .collect();
        found.sort_unstable();
        let mut naive: Vec<usize> = live
            .iter()
            .filter(|(_, _, clause)| queries[*clause].matches(object))
            .map(|(handle, _, _)| handle.id)
            .collect();
        naive.sort_unstable();
        prop_assert_eq!(found, naive);
    }
    // The same steps give the same order of subscribers.
    let (again, _) = run_steps(&queries, steps);
    for (_, query_id, _) in &live {
        let order = |index: &SubscriptionIndex<Tracked>| -> Vec<usize> {
            index
                .get(*query_id)
                .expect("live")
                .subscribers()
                .iter()
                .map(|s| s.id)
                .collect()
        };
        prop_assert_eq!(order(&index), order(&again));
    }
    Ok(())
}

/// Values around range bounds: numbers (signed zeros, huge integers that round as
/// doubles, fractions), strings whose byte order and UTF-16 order differ, dates as Parse
/// dates and as ISO strings, and values of other brackets.
fn range_scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (-3i64..4).prop_map(Value::from),
        1 => prop_oneof![
            Just(json!(-0.0)),
            Just(json!(0.0)),
            Just(json!(1.5)),
            Just(json!(-2.5)),
            Just(json!(1e300)),
            Just(json!(-1e300)),
            Just(json!(9_007_199_254_740_993u64)),
            Just(json!(9_007_199_254_740_992.0)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
        ],
        3 => prop_oneof![
            Just(""), Just("a"), Just("ab"), Just("b"), Just("B"), Just("é"),
            Just("\u{ffff}"), Just("\u{10000}"), Just("\u{e000}"),
        ]
        .prop_map(Value::from),
        2 => prop_oneof![
            Just("2020-01-01T00:00:00.000Z"),
            Just("2020-01-01T00:00:00.001Z"),
            Just("2026-11-22T08:49:51.247Z"),
            Just("1969-12-31T23:59:59.999Z"),
        ]
        .prop_flat_map(|iso| prop_oneof![
            Just(json!({"__type": "Date", "iso": iso})),
            Just(json!(iso)),
        ]),
        1 => prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            Just(json!({"__type": "Pointer", "className": "U", "objectId": "a"})),
            Just(json!({"x": 1})),
        ],
    ]
    .boxed()
}

fn range_field() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("n"), Just("s"), Just("createdAt"), Just("updatedAt")]
}

fn range_constraint() -> BoxedStrategy<Value> {
    let op = || prop_oneof![Just("$gt"), Just("$gte"), Just("$lt"), Just("$lte")];
    prop_oneof![
        4 => (op(), range_scalar()).prop_map(|(op, v)| json!({ op: v })),
        4 => (op(), range_scalar(), op(), range_scalar()).prop_map(|(a, x, b, y)| {
            let mut map = Map::new();
            map.insert(a.into(), x);
            map.insert(b.into(), y);
            Value::Object(map)
        }),
        1 => (op(), range_scalar(), any::<bool>())
            .prop_map(|(op, v, e)| json!({ op: v, "$exists": e })),
        1 => (op(), range_scalar(), range_scalar())
            .prop_map(|(op, v, ne)| json!({ op: v, "$ne": ne })),
        1 => range_scalar(),
    ]
    .boxed()
}

fn range_clause() -> impl Strategy<Value = Map<String, Value>> {
    let leaf = || {
        prop::collection::vec((range_field(), range_constraint()), 1..3).prop_map(|entries| {
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Map<String, Value>>()
        })
    };
    prop_oneof![
        4 => leaf(),
        1 => prop::collection::vec(leaf(), 1..3).prop_map(|branches| {
            let mut map = Map::new();
            map.insert(
                "$or".into(),
                Value::Array(branches.into_iter().map(Value::Object).collect()),
            );
            map
        }),
        1 => (leaf(), prop::collection::vec(leaf(), 1..3)).prop_map(|(mut map, branches)| {
            map.insert(
                "$and".into(),
                Value::Array(branches.into_iter().map(Value::Object).collect()),
            );
            map
        }),
    ]
}

fn range_object() -> impl Strategy<Value = Map<String, Value>> {
    let value = prop_oneof![
        4 => range_scalar(),
        1 => prop::collection::vec(range_scalar(), 0..4).prop_map(Value::Array),
    ];
    prop::collection::vec((range_field(), value), 0..4).prop_map(|entries| {
        let mut map: Map<String, Value> = entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        map.insert("className".into(), "C".into());
        map
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z$_.\\\\(\\[QE*+?]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("$or".to_owned()),
                        Just("$and".to_owned()),
                        Just("$in".to_owned()),
                        Just("$regex".to_owned()),
                        Just("$options".to_owned()),
                        Just("$nearSphere".to_owned()),
                        Just("$maxDistance".to_owned()),
                        Just("$within".to_owned()),
                        Just("$box".to_owned()),
                        Just("$geoWithin".to_owned()),
                        Just("$polygon".to_owned()),
                        Just("$centerSphere".to_owned()),
                        Just("__type".to_owned()),
                        Just("latitude".to_owned()),
                        Just("longitude".to_owned()),
                        Just("$all".to_owned()),
                        Just("$containedBy".to_owned()),
                        Just("$exists".to_owned()),
                        "[a-z]{1,3}",
                    ],
                    inner
                ),
                0..4,
            )
            .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The index returns every query that brute-force evaluation finds matching.
    #[test]
    fn index_never_misses_a_match(
        clauses in prop::collection::vec(clause(2), 1..12),
        objects in prop::collection::vec(object(), 1..6),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        index_agrees_with_brute_force(&clauses, &objects, &removals)?;
    }

    /// The same with range predicates (alone, as intervals, next to other predicates and
    /// under `$or`) over numbers, strings and dates, objects whose values sit on the
    /// bounds, in other type brackets, or in arrays.
    #[test]
    fn range_index_never_misses_a_match(
        clauses in prop::collection::vec(range_clause(), 1..16),
        objects in prop::collection::vec(range_object(), 1..8),
        removals in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        index_agrees_with_brute_force(&clauses, &objects, &removals)?;
    }

    /// Random subscribe/unsubscribe sequences over a few shared queries leave the index
    /// with what a naive list of live subscribers says: the same subscribers, each where it
    /// was told it is, and the same subscribers for the matching queries of an object —
    /// whether a subscriber remembers its place, forgets it or reports a wrong one.
    #[test]
    fn subscribe_unsubscribe_sequences_keep_the_subscribers(
        clauses in prop::collection::vec(clause(1), 1..4),
        steps in prop::collection::vec(step(), 0..64),
        objects in prop::collection::vec(object(), 1..4),
    ) {
        subscribe_unsubscribe_sequences_agree_with_a_naive_model(&clauses, &steps, &objects)?;
    }

    /// Clauses with the same canonical text behave identically.
    #[test]
    fn canonical_equality_implies_same_results(clause in clause(2), objects in prop::collection::vec(object(), 1..6)) {
        let Ok(a) = Query::compile(&clause, &CompileOptions::default()) else { return Ok(()) };
        let reversed: Map<String, Value> = clause.iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
        let b = Query::compile(&reversed, &CompileOptions::default()).expect("same clause compiles");
        prop_assert_eq!(a.canonical(), b.canonical());
        for object in &objects {
            prop_assert_eq!(a.matches(object), b.matches(object));
        }
    }

    /// Classification follows the truth table of `protocol-spec/frames.md`.
    #[test]
    fn classification_follows_the_truth_table(
        has_original in any::<bool>(), om in any::<bool>(), or in any::<bool>(),
        cm in any::<bool>(), cr in any::<bool>(), delete in any::<bool>(),
    ) {
        let object = Map::new();
        let original = has_original.then_some(Side { object: &object, matches: om, readable: or });
        let current = Side { object: &object, matches: cm, readable: cr };
        let kind = if delete { ChangeKind::Delete } else { ChangeKind::Save };
        let got = classify(kind, if delete { None } else { original }, current, None);
        let ro = !delete && has_original && om && or;
        let rc = cm && cr;
        let expected = if delete {
            if rc { Classification::Delete } else { Classification::Nothing }
        } else {
            match (ro, rc, has_original) {
                (true, true, _) => Classification::Update,
                (true, false, _) => Classification::Leave { object_is_original: !cr },
                (false, true, true) => Classification::Enter { with_original: or },
                (false, true, false) => Classification::Create,
                (false, false, _) => Classification::Nothing,
            }
        };
        prop_assert_eq!(got, expected);
    }

    /// Large set operands (hashed, not scanned) answer exactly like the logical clauses they
    /// abbreviate: `$in` like `$or` of equalities, `$nin` like `$nor`, `$all` like `$and`.
    #[test]
    fn hashed_set_operators_agree_with_their_logical_equivalents(
        items in prop::collection::vec(scalar(), 9..24),
        field in prop_oneof![Just("f"), Just("g"), Just("createdAt"), Just("f.x")],
        objects in prop::collection::vec(object(), 1..8),
    ) {
        let compile = |v: Value| Query::compile(v.as_object().expect("object"), &CompileOptions::default()).expect("compiles");
        // Values no object holds, so that the sets are large enough to be hashed.
        let mut items = items;
        items.extend((0..10).map(|i| json!(format!("pad-{i}"))));
        let equalities: Vec<Value> = items.iter().map(|item| json!({ field: item })).collect();
        let non_null: Vec<Value> = items.iter().filter(|v| !v.is_null()).cloned().collect();
        let pairs = [
            (compile(json!({ field: {"$in": items} })), compile(json!({"$or": equalities}))),
            (compile(json!({ field: {"$nin": items} })), compile(json!({"$nor": equalities}))),
            (
                compile(json!({ field: {"$all": non_null} })),
                compile(json!({"$and": non_null.iter().map(|item| json!({ field: item })).collect::<Vec<_>>()})),
            ),
        ];
        for object in &objects {
            for (set, logical) in &pairs {
                prop_assert_eq!(set.matches(object), logical.matches(object), "{} vs {} on {:?}", set.canonical(), logical.canonical(), object);
            }
        }
    }

    /// `$in`/`$nin` operands are flattened one level, as parse-server's query transform does:
    /// `{f: {$in: [[a, b], c]}}` answers like `{f: {$in: [a, b, c]}}`.
    #[test]
    fn set_operands_are_flattened_one_level(
        items in prop::collection::vec(set_item(), 0..5),
        field in prop_oneof![Just("f"), Just("g"), Just("f.x")],
        objects in prop::collection::vec(object(), 1..8),
    ) {
        let compile = |v: Value| Query::compile(v.as_object().expect("object"), &CompileOptions::default()).expect("compiles");
        let flat: Vec<Value> = items
            .iter()
            .flat_map(|item| match item {
                Value::Array(inner) => inner.clone(),
                other => vec![other.clone()],
            })
            .collect();
        for op in ["$in", "$nin"] {
            let nested = compile(json!({ field: { op: items } }));
            let flattened = compile(json!({ field: { op: flat } }));
            for object in &objects {
                prop_assert_eq!(nested.matches(object), flattened.matches(object), "{} vs {} on {:?}", nested.canonical(), flattened.canonical(), object);
            }
        }
    }

    /// With a partly known original, classification agrees with the truth table wherever
    /// the unknowns do not matter, and otherwise picks what some completion of them would:
    /// never an `update`/`leave` unless the original is known to have matched, never an
    /// original it cannot show (`enter` carries none; a `leave` needing the last readable
    /// state is not sent), and `watch` judged on the changed fields.
    #[test]
    fn uncertain_classification_follows_the_truth_table(
        om in prop::option::of(any::<bool>()), or in prop::option::of(any::<bool>()),
        cm in any::<bool>(), cr in any::<bool>(), watch_changed in prop::option::of(any::<bool>()),
    ) {
        let knowledge = |v: Option<bool>| v.map_or(Knowledge::Unknown, Knowledge::Known);
        let got = classify_uncertain(knowledge(om), knowledge(or), cm && cr, cr, watch_changed);
        // The truth table for one completion of the unknowns, adjusted to what can be sent
        // without the original.
        let before = serde_json::json!({"w": 0}).as_object().cloned().unwrap_or_default();
        let after = serde_json::json!({"w": i32::from(watch_changed != Some(false))})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let watch = watch_changed.map(|_| vec!["w".to_owned()]);
        let exact = |om: bool, or: bool| {
            match classify(
                ChangeKind::Save,
                Some(Side { object: &before, matches: om, readable: or }),
                Side { object: &after, matches: cm, readable: cr },
                watch.as_deref(),
            ) {
                Classification::Enter { .. } => Classification::Enter { with_original: false },
                Classification::Leave { object_is_original: true } => Classification::Nothing,
                other => other,
            }
        };
        let completions: Vec<Classification> = [false, true]
            .iter()
            .filter(|&&m| om.is_none_or(|known| known == m))
            .flat_map(|&m| {
                [false, true]
                    .into_iter()
                    .filter(move |&r| or.is_none_or(|known| known == r))
                    .map(move |r| (m, r))
            })
            .map(|(m, r)| exact(m, r))
            .collect();
        match (om, or) {
            (Some(_), Some(_)) => prop_assert_eq!(got, completions[0]),
            _ => {
                prop_assert!(
                    got == Classification::Nothing || completions.contains(&got),
                    "{:?} is no completion's answer ({:?})", got, completions
                );
                if om != Some(true) {
                    let sends_original = matches!(got, Classification::Update | Classification::Leave { .. });
                    prop_assert!(!sends_original, "{:?} without a known match", got);
                }
                // A visible object is never silently missed when it is visible now and
                // every completion would send it.
                if cm && cr && completions.iter().all(|c| *c != Classification::Nothing) {
                    prop_assert_ne!(got, Classification::Nothing);
                }
            }
        }
    }

    /// Compiling arbitrary JSON never panics, and neither does evaluating what compiles.
    #[test]
    fn compiling_and_evaluating_arbitrary_json_never_panics(where_ in json_value(), objects in prop::collection::vec(json_value(), 1..4)) {
        let Value::Object(where_) = where_ else { return Ok(()) };
        if let Ok(query) = Query::compile(&where_, &CompileOptions::default()) {
            for object in objects {
                if let Value::Object(object) = object {
                    let _ = query.matches(&object);
                }
            }
        }
    }
}
