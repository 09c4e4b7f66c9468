//! Compile, evaluate, and index-lookup costs.
//!
//! `index/*` measures one event against N distinct subscriptions: candidates from the
//! index plus exact evaluation of each candidate, i.e. the whole matching cost of an event.
//! `set_operands/*` measures one evaluation of a large `$in`/`$nin`/`$all`/`$containedBy`
//! against a 5,000-element array (a hostile subscriber and a hostile writer together).
//! `normalize_dates/*` measures the re-encoding of a published object's dates.
//! `teardown/*` measures the removal of every subscriber of one shared query (19,600
//! clients on `{}` closing), by subscribers that remember their place and by ones that are
//! searched for.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use livequery_matcher::{CompileOptions, Member, Query, Scratch, SubscriptionIndex};
use serde_json::{Map, Value, json};
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("object")
}

fn object() -> Map<String, Value> {
    map(json!({
        "room": "room-7", "score": 42.5, "name": "Player 1", "tags": ["a", "b", "c"],
        "owner": {"__type": "Pointer", "className": "_User", "objectId": "u123"},
        "loc": {"__type": "GeoPoint", "latitude": 37.8044, "longitude": -122.2712},
        "when": {"__type": "Date", "iso": "2026-01-02T03:04:05.678Z"},
        "ACL": {"*": {"read": true}}, "createdAt": "2026-11-22T08:49:51.247Z",
        "updatedAt": "2026-11-22T08:49:51.247Z", "className": "Msg", "objectId": "o1"
    }))
}

fn queries() -> Vec<(&'static str, Map<String, Value>)> {
    vec![
        ("equality", map(json!({"room": "room-7"}))),
        ("range", map(json!({"score": {"$gt": 10, "$lte": 50}}))),
        (
            "in",
            map(json!({"room": {"$in": ["room-1", "room-3", "room-7", "room-9"]}})),
        ),
        (
            "pointer",
            map(json!({"owner": {"__type": "Pointer", "className": "_User", "objectId": "u123"}})),
        ),
        (
            "regex_prefix",
            map(json!({"name": {"$regex": "^\\QPlay\\E"}})),
        ),
        (
            "or3",
            map(json!({"$or": [{"room": "room-1"}, {"score": {"$lt": 0}}, {"tags": "c"}]})),
        ),
        (
            "created_at_range",
            map(
                json!({"createdAt": {"$gt": {"__type": "Date", "iso": "2026-01-01T00:00:00.000Z"}}}),
            ),
        ),
        (
            "near_sphere",
            map(
                json!({"loc": {"$nearSphere": {"__type": "GeoPoint", "latitude": 37.7749, "longitude": -122.4194}, "$maxDistanceInKilometers": 20}}),
            ),
        ),
    ]
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    for (name, where_) in queries() {
        group.bench_function(name, |b| {
            b.iter(|| Query::compile(black_box(&where_), &CompileOptions::default()))
        });
    }
    group.finish();
}

fn evaluate(c: &mut Criterion) {
    let object = object();
    let mut group = c.benchmark_group("evaluate");
    for (name, where_) in queries() {
        let query =
            Query::compile(&where_, &CompileOptions::default()).expect("bench queries compile");
        assert!(
            query.matches(&object),
            "{name} should match the bench object"
        );
        group.bench_function(name, |b| {
            b.iter(|| black_box(&query).matches(black_box(&object)))
        });
    }
    group.finish();
}

/// N distinct equality subscriptions; the event matches none (selectivity 0) or 1 % of
/// them.
fn build(n: usize, selectivity_percent: usize) -> SubscriptionIndex<u32> {
    let mut index = SubscriptionIndex::new();
    for i in 0..n {
        let where_ = match 100usize.checked_div(selectivity_percent) {
            None => json!({"room": format!("room-{i}"), "score": {"$gt": 1}}),
            // 100 / selectivity rooms; each query is distinct through `n`.
            Some(rooms) => json!({"room": format!("room-{}", i % rooms), "n": {"$ne": i}}),
        };
        let query = Query::compile(
            where_.as_object().expect("object"),
            &CompileOptions::default(),
        )
        .expect("compiles");
        index.insert("Msg", query, i as u32);
    }
    index
}

fn index_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("index");
    for n in [1_000usize, 100_000] {
        for selectivity in [0usize, 1] {
            let index = build(n, selectivity);
            let mut event = object();
            event.insert(
                "room".into(),
                json!(if selectivity == 0 {
                    "room-none".to_owned()
                } else {
                    "room-7".to_owned()
                }),
            );
            let mut scratch = Scratch::default();
            let mut out = Vec::with_capacity(n);
            out.clear();
            index.matching("Msg", &event, &mut scratch, &mut out);
            assert_eq!(out.len(), n * selectivity / 100, "selectivity check");
            group.bench_with_input(
                BenchmarkId::new(format!("sel{selectivity}pct"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        out.clear();
                        index.matching("Msg", black_box(&event), &mut scratch, &mut out);
                        out.len()
                    });
                },
            );
        }
    }
    // Range-only queries: `score > 1000 + i` (the event's score, 42.5, meets none of them,
    // or 1 % of them with a score of 1000 + n / 100), and disjoint one-second `createdAt`
    // windows none of which holds the event's date.
    for n in [1_000usize, 10_000] {
        for (name, percent) in [("range_sel0pct", 0), ("range_sel1pct", 1)] {
            let index = build_range(n, |i| json!({"score": {"$gt": 1000 + i}}));
            let mut event = object();
            if percent == 1 {
                event.insert("score".into(), json!(1000 + n / 100));
            }
            bench_matching(&mut group, name, n, &index, &event, n * percent / 100);
        }
        let index = build_range(n, |i| {
            let second = |s: usize| {
                format!(
                    "2025-01-01T{:02}:{:02}:{:02}.000Z",
                    s / 3600,
                    s / 60 % 60,
                    s % 60
                )
            };
            json!({"createdAt": {"$gte": second(i), "$lt": second(i + 1)}})
        });
        bench_matching(
            &mut group,
            "range_interval_sel0pct",
            n,
            &index,
            &object(),
            0,
        );
    }
    group.finish();
}

/// N distinct range-only subscriptions, the i-th built by `clause(i)`.
fn build_range(n: usize, clause: impl Fn(usize) -> Value) -> SubscriptionIndex<u32> {
    let mut index = SubscriptionIndex::new();
    for i in 0..n {
        let query = Query::compile(
            clause(i).as_object().expect("object"),
            &CompileOptions::default(),
        )
        .expect("compiles");
        index.insert("Msg", query, i as u32);
    }
    index
}

/// Measures the whole matching cost of `event`, after checking that it matches `expected`
/// queries.
fn bench_matching(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    index: &SubscriptionIndex<u32>,
    event: &Map<String, Value>,
    expected: usize,
) {
    let mut scratch = Scratch::default();
    let mut out = Vec::with_capacity(n);
    index.matching("Msg", event, &mut scratch, &mut out);
    assert_eq!(out.len(), expected, "selectivity check for {name}/{n}");
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| {
            out.clear();
            index.matching("Msg", black_box(event), &mut scratch, &mut out);
            out.len()
        });
    });
}

fn set_operands(c: &mut Criterion) {
    let mut group = c.benchmark_group("set_operands");
    let options = CompileOptions {
        max_set_items: 100_000,
        ..CompileOptions::default()
    };
    // 5,000 tags, none of them in the operands: every element is looked up.
    let tags: Vec<Value> = (200_000..205_000).map(Value::from).collect();
    let object = map(json!({"tags": tags}));
    for items in [10_000usize, 100_000] {
        let operand: Vec<Value> = (0..items).map(Value::from).collect();
        for op in ["$in", "$nin", "$all", "$containedBy"] {
            let query =
                Query::compile(&map(json!({"tags": {op: operand}})), &options).expect("compiles");
            group.bench_with_input(
                BenchmarkId::new(
                    format!("{}_vs_5000_tags", op.trim_start_matches('$')),
                    items,
                ),
                &items,
                |b, _| b.iter(|| black_box(query.matches(black_box(&object)))),
            );
        }
    }
    group.finish();
}

/// Re-encoding the dates of one published object (done once per event, before matching):
/// already normalised (the common case: nothing to rewrite), and with dates to rewrite.
fn normalize_dates(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_dates");
    let normal = object();
    let mut rewritten = object();
    rewritten.insert("createdAt".into(), json!("2026-11-22T09:49:51+01:00"));
    rewritten.remove("updatedAt");
    rewritten.insert(
        "when".into(),
        json!({"__type": "Date", "iso": "2026-01-02T03:04:05Z"}),
    );
    for (name, object) in [("already_normal", normal), ("rewritten", rewritten)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || object.clone(),
                |mut o| {
                    livequery_matcher::date::normalize_object_dates(&mut o);
                    o
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A subscriber compared by identity, as the server's handles are; `remembers` says
/// whether it keeps the place the index gives it.
#[derive(Debug, Clone)]
struct Handle {
    place: Rc<Cell<usize>>,
    remembers: bool,
}

impl PartialEq for Handle {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.place, &other.place)
    }
}

impl Member for Handle {
    fn place(&self) -> Option<usize> {
        self.remembers.then(|| self.place.get())
    }

    fn set_place(&self, place: usize) {
        self.place.set(place);
    }
}

/// Every subscriber of one shared query leaves, in the order they came.
fn teardown(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 19_600;
    let mut group = c.benchmark_group("teardown");
    group.sample_size(10);
    let query = Query::compile(&Map::new(), &CompileOptions::default()).expect("compiles");
    for (name, remembers) in [("remembering_place", true), ("searched_for", false)] {
        group.bench_function(BenchmarkId::new(name, SUBSCRIBERS), |b| {
            b.iter_batched(
                || {
                    let mut index = SubscriptionIndex::new();
                    let handles: Vec<Handle> = (0..SUBSCRIBERS)
                        .map(|_| Handle {
                            place: Rc::new(Cell::new(0)),
                            remembers,
                        })
                        .collect();
                    let mut id = None;
                    for handle in &handles {
                        id = Some(index.insert("C", query.clone(), handle.clone()));
                    }
                    (index, handles, id.expect("subscribed"))
                },
                |(mut index, handles, id)| {
                    for handle in &handles {
                        assert!(index.remove(id, handle));
                    }
                    index
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    compile,
    evaluate,
    index_lookup,
    set_operands,
    normalize_dates,
    teardown
);
criterion_main!(benches);
