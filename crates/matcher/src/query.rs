//! The compiled form of a `where` clause and its evaluation.
//!
//! Evaluation is infallible and allocation-free: every check that can fail was done by
//! the compiler, operands are pre-decoded, regexes pre-built. Field paths follow MongoDB
//! (the store behind Parse REST `find()`): a dotted path descends through nested objects
//! and through arrays of objects, but not into GeoPoint, Date, File or Bytes values (not
//! objects in storage; pointers are read through, as the reference does); a predicate
//! holds if *any* value the path designates
//! satisfies it (an array field offers itself and each of its elements); negated
//! operators (`$ne`, `$nin`, `$exists: false`, `$nor`) are the negation of that.

use std::fmt;
use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use crate::geo;
use crate::set::OperandSet;
use crate::value::{Operand, Val, compare, equals};

/// A compiled `where` clause. Build with [`Query::compile`], evaluate with
/// [`Query::matches`].
#[derive(Debug, Clone)]
pub struct Query {
    pub(crate) root: Node,
    pub(crate) canonical: Box<str>,
    pub(crate) object_id_lookup: Option<Box<str>>,
    /// The objectId a top-level `objectId: "<id>"` constraint pins the clause to.
    pub(crate) pinned_object_id: Option<Box<str>>,
    pub(crate) fields: Box<[Box<str>]>,
    /// Conditions (predicates and logical branches) in the clause, its subqueries included.
    pub(crate) conditions: usize,
    /// The identity key this query's subqueries were bound for ([`Query::bind_subqueries`]).
    pub(crate) bound_for: Option<Box<str>>,
}

impl Query {
    /// Whether `object` (Parse REST JSON, as published) satisfies the clause.
    pub fn matches(&self, object: &Map<String, Value>) -> bool {
        self.root.eval(object)
    }

    /// The canonical text of the clause: two queries share evaluation exactly when their
    /// canonical texts are equal.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// `Some(id)` when the clause is exactly `{"objectId": "<id>"}` (Parse uses the `get`
    /// class-level permission for such queries, `find` otherwise).
    pub fn object_id_lookup(&self) -> Option<&str> {
        self.object_id_lookup.as_deref()
    }

    /// `Some(id)` when the clause requires `objectId` to equal `id` (a top-level
    /// `objectId: "<id>"` next to any other constraints): it can only ever match that object.
    pub fn pinned_object_id(&self) -> Option<&str> {
        self.pinned_object_id.as_deref()
    }

    /// Top-level field names the clause reads (the part of each path before the first
    /// `.`, through `$or`/`$and`/`$nor`), deduplicated, for protected-field checks. The
    /// fields of a subquery's inner clause belong to the inner class and are not listed.
    pub fn referenced_fields(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| &**f)
    }

    /// How many conditions the clause has (each predicate and each logical branch, those of
    /// subqueries included): a measure of the cost of one evaluation.
    pub fn conditions(&self) -> usize {
        self.conditions
    }

    /// Approximate heap bytes held by the compiled clause (for per-client budgets).
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.canonical.len()
            + self.fields.iter().map(|f| f.len() + 16).sum::<usize>()
            + self.object_id_lookup.as_ref().map_or(0, |s| s.len())
            + self.pinned_object_id.as_ref().map_or(0, |s| s.len())
            + self.root.footprint()
    }

    /// The subqueries (`$inQuery`, `$notInQuery`, `$select`, `$dontSelect`,
    /// `$relatedTo`) of this clause, for a server that resolves them.
    pub fn subqueries(&self) -> Vec<&Subquery> {
        let mut out = Vec::new();
        self.root.collect_subqueries(&mut out);
        out
    }

    /// Attaches a resolved value set to every subquery, computed for the identity whose
    /// key ([`crate::gate::Reader::identity_key`]) is `identity`; `resolve` is called once
    /// per subquery, in [`Query::subqueries`] order. Such a query is only shared with
    /// queries bound for the same identity, and only evaluated for readers that still have
    /// that identity ([`Query::bound_for`]).
    pub fn bind_subqueries(
        &mut self,
        identity: &str,
        resolve: &mut dyn FnMut(&Subquery) -> Arc<dyn SubquerySet>,
    ) {
        self.root.bind_subqueries(resolve);
        self.canonical = format!("{}\u{1}{identity}", self.canonical).into_boxed_str();
        self.bound_for = Some(identity.into());
    }

    /// The identity key the subqueries were bound for, if any.
    pub fn bound_for(&self) -> Option<&str> {
        self.bound_for.as_deref()
    }

    /// Whether the query can be evaluated for `identity` (a reader's
    /// [`crate::gate::Reader::identity_key`]): it has no bound subqueries, or they were
    /// bound for that identity and every set is still current.
    pub fn answers_for(&self, identity: impl FnOnce() -> String) -> bool {
        let Some(bound) = &self.bound_for else {
            return true;
        };
        **bound == *identity()
            && self
                .subqueries()
                .iter()
                .all(|sub| sub.set.as_ref().is_some_and(|set| set.is_current()))
    }
}

/// A node of the compiled tree.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Nor(Box<[Node]>),
    /// All predicates on one field path.
    Field(Path, Box<[Pred]>),
    /// `$relatedTo`: the object is in another object's relation.
    /// (Boxed, as subqueries are rare and large: every node is the size of the largest.)
    RelatedTo(Box<Subquery>),
    /// A constant (e.g. `$lt: null`, which MongoDB never matches).
    Const(bool),
}

impl Node {
    pub(crate) fn eval(&self, object: &Map<String, Value>) -> bool {
        match self {
            Self::And(nodes) => nodes.iter().all(|n| n.eval(object)),
            Self::Or(nodes) => nodes.iter().any(|n| n.eval(object)),
            Self::Nor(nodes) => !nodes.iter().any(|n| n.eval(object)),
            Self::Field(path, preds) => preds.iter().all(|p| p.eval(object, path)),
            Self::RelatedTo(sub) => object
                .get("objectId")
                .is_some_and(|id| sub.set.as_ref().is_some_and(|s| s.contains(id))),
            Self::Const(value) => *value,
        }
    }

    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                Self::And(nodes) | Self::Or(nodes) | Self::Nor(nodes) => {
                    nodes.iter().map(Node::footprint).sum()
                }
                Self::Field(path, preds) => {
                    path.segments
                        .iter()
                        .map(|s| s.name.len() + 32)
                        .sum::<usize>()
                        + preds.iter().map(Pred::footprint).sum::<usize>()
                }
                Self::RelatedTo(sub) => sub.footprint(),
                Self::Const(_) => 0,
            }
    }

    fn collect_subqueries<'a>(&'a self, out: &mut Vec<&'a Subquery>) {
        match self {
            Self::And(nodes) | Self::Or(nodes) | Self::Nor(nodes) => {
                nodes.iter().for_each(|n| n.collect_subqueries(out));
            }
            Self::Field(_, preds) => {
                for pred in preds.iter() {
                    if let Pred::Subquery { sub, .. } = pred {
                        out.push(sub);
                    }
                }
            }
            Self::RelatedTo(sub) => out.push(sub),
            Self::Const(_) => {}
        }
    }

    fn bind_subqueries(&mut self, resolve: &mut dyn FnMut(&Subquery) -> Arc<dyn SubquerySet>) {
        match self {
            Self::And(nodes) | Self::Or(nodes) | Self::Nor(nodes) => {
                nodes.iter_mut().for_each(|n| n.bind_subqueries(resolve));
            }
            Self::Field(_, preds) => {
                for pred in preds.iter_mut() {
                    if let Pred::Subquery { sub, .. } = pred {
                        sub.set = Some(resolve(sub));
                    }
                }
            }
            Self::RelatedTo(sub) => sub.set = Some(resolve(sub)),
            Self::Const(_) => {}
        }
    }
}

/// A field path: `score`, `obj.a.b`, `arr.0.x`.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub(crate) segments: Box<[Segment]>,
    /// Top-level `createdAt`/`updatedAt`: ISO strings compare as dates.
    pub(crate) date_strings: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) name: Box<str>,
    pub(crate) index: Option<usize>,
}

impl Path {
    pub(crate) fn new(key: &str) -> Self {
        let segments: Box<[Segment]> = key
            .split('.')
            .map(|s| Segment {
                name: s.into(),
                index: s.parse().ok(),
            })
            .collect();
        let date_strings = segments.len() == 1 && matches!(key, "createdAt" | "updatedAt");
        Self {
            segments,
            date_strings,
        }
    }

    /// The top-level field this path starts with.
    pub(crate) fn head(&self) -> &str {
        &self.segments[0].name
    }

    /// Whether this is a single top-level field.
    pub(crate) fn is_top_level(&self) -> bool {
        self.segments.len() == 1
    }

    /// Calls `f` with every value the path designates (see the module documentation),
    /// or once with `None` when it designates nothing; stops as soon as `f` returns true.
    fn any<'a>(
        &self,
        object: &'a Map<String, Value>,
        f: &mut dyn FnMut(Option<Val<'a>>, Hit<'a>) -> bool,
    ) -> bool {
        let (first, rest) = self
            .segments
            .split_first()
            .expect("paths have at least one segment");
        visit(object.get(&*first.name), rest, self.date_strings, f)
    }
}

/// What the visitor found: the designated value itself, or one element of a designated
/// array.
#[derive(Debug, Clone, Copy)]
enum Hit<'a> {
    Whole(&'a Value),
    Element(&'a Value),
    Missing,
}

fn visit<'a>(
    value: Option<&'a Value>,
    rest: &[Segment],
    date_strings: bool,
    f: &mut dyn FnMut(Option<Val<'a>>, Hit<'a>) -> bool,
) -> bool {
    let Some((segment, tail)) = rest.split_first() else {
        return match value {
            None => f(None, Hit::Missing),
            Some(v) => {
                if f(Some(Val::of(v, date_strings)), Hit::Whole(v)) {
                    return true;
                }
                match v {
                    Value::Array(items) => items
                        .iter()
                        .any(|item| f(Some(Val::of(item, false)), Hit::Element(item))),
                    _ => false,
                }
            }
        };
    };
    match value {
        // MongoDB stores these as `[lng, lat]`, a date, a file name and binary data: a
        // path into their Parse JSON (`loc.latitude`) designates nothing in storage.
        Some(Value::Object(map)) if is_opaque(map) => f(None, Hit::Missing),
        Some(Value::Object(map)) => visit(map.get(&*segment.name), tail, false, f),
        Some(Value::Array(items)) => {
            let mut visited = false;
            if let Some(item) = segment.index.and_then(|i| items.get(i)) {
                visited = true;
                if visit(Some(item), tail, false, f) {
                    return true;
                }
            }
            for item in items {
                if let Value::Object(map) = item {
                    visited = true;
                    if visit(map.get(&*segment.name), tail, false, f) {
                        return true;
                    }
                }
            }
            !visited && f(None, Hit::Missing)
        }
        _ => f(None, Hit::Missing),
    }
}

/// Parse JSON values that MongoDB does not store as objects. Pointers are not opaque:
/// `ptr.objectId` reads through them, as the reference does.
fn is_opaque(map: &Map<String, Value>) -> bool {
    matches!(
        map.get("__type").and_then(Value::as_str),
        Some("GeoPoint" | "Date" | "File" | "Bytes")
    )
}

/// Range operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Lte,
    Gt,
    Gte,
}

/// Bytes charged for one posting of a query in the subscription index (a `(field, value)`
/// term of an equality or an `$in` item): its hash-map slot, key and posting list
/// (calibrated on the resident memory of 10,000-item `$in` subscriptions, BENCHMARKS.md).
pub(crate) const POSTING_FOOTPRINT: usize = 192;

/// Bytes charged for one range predicate in the subscription index: an interval-tree node
/// (about 64 bytes with its arena slot) and the posted term that removes it.
pub(crate) const RANGE_POSTING_FOOTPRINT: usize = 96;

/// Heap bytes charged for one compiled regex: its program and its share of the lazy DFA
/// caches (bounded by the compiler's size limits), which the regex crate does not report.
pub(crate) const REGEX_FOOTPRINT: usize = 32 * 1024;

/// One predicate on a field.
#[derive(Debug, Clone)]
pub(crate) enum Pred {
    Eq(Operand),
    Ne(Operand),
    Cmp(Cmp, Operand),
    In(OperandSet),
    Nin(OperandSet),
    /// `$all`: every value of `values` and every regex of `regexes` must be met by some
    /// value the path designates.
    All {
        values: OperandSet,
        regexes: Box<[Regex]>,
    },
    Exists(bool),
    Regex(Regex),
    Near {
        lat: f64,
        lng: f64,
        max_radians: Option<f64>,
    },
    /// `$within: {$box}`; `wraps` when the box crosses the antimeridian.
    Box {
        south: f64,
        west: f64,
        north: f64,
        east: f64,
    },
    Polygon(Box<[(f64, f64)]>),
    CenterSphere {
        lat: f64,
        lng: f64,
        radius: f64,
    },
    Intersects {
        lat: f64,
        lng: f64,
    },
    ContainedBy(OperandSet),
    /// `$inQuery`/`$select` (or negated: `$notInQuery`/`$dontSelect`).
    Subquery {
        negated: bool,
        /// Boxed, as subqueries are rare and large: every predicate is the size of the
        /// largest.
        sub: Box<Subquery>,
    },
}

impl Pred {
    fn footprint(&self) -> usize {
        match self {
            Self::Eq(op) => op.footprint() + POSTING_FOOTPRINT,
            Self::Ne(op) => op.footprint(),
            Self::Cmp(_, op) => op.footprint() + RANGE_POSTING_FOOTPRINT,
            Self::In(set) => set.footprint() + set.len() * POSTING_FOOTPRINT,
            Self::Nin(set) | Self::ContainedBy(set) => set.footprint(),
            Self::All { values, regexes } => values.footprint() + regexes.len() * REGEX_FOOTPRINT,
            Self::Regex(_) => REGEX_FOOTPRINT,
            Self::Polygon(vertices) => vertices.len() * 16,
            Self::Subquery { sub, .. } => sub.footprint(),
            Self::Exists(_)
            | Self::Near { .. }
            | Self::Box { .. }
            | Self::CenterSphere { .. }
            | Self::Intersects { .. } => 0,
        }
    }

    fn eval(&self, object: &Map<String, Value>, path: &Path) -> bool {
        match self {
            Self::Eq(op) => path.any(object, &mut |v, _| eq_or_missing(v, op)),
            Self::Ne(op) => !path.any(object, &mut |v, _| eq_or_missing(v, op)),
            Self::Cmp(cmp, op) => path.any(object, &mut |v, _| {
                v.and_then(|v| compare(v, op)).is_some_and(|ord| match cmp {
                    Cmp::Lt => ord.is_lt(),
                    Cmp::Lte => ord.is_le(),
                    Cmp::Gt => ord.is_gt(),
                    Cmp::Gte => ord.is_ge(),
                })
            }),
            Self::In(set) => path.any(object, &mut |v, _| in_set(v, set)),
            Self::Nin(set) => !path.any(object, &mut |v, _| in_set(v, set)),
            Self::All { values, regexes } => {
                (!values.is_empty() || !regexes.is_empty())
                    && all_values_present(object, path, values)
                    && regexes.iter().all(|re| {
                        path.any(
                            object,
                            &mut |v, _| matches!(v, Some(Val::Str(s)) if re.is_match(s)),
                        )
                    })
            }
            Self::Exists(expected) => path.any(object, &mut |v, _| v.is_some()) == *expected,
            Self::Regex(re) => path.any(
                object,
                &mut |v, _| matches!(v, Some(Val::Str(s)) if re.is_match(s)),
            ),
            Self::Near {
                lat,
                lng,
                max_radians,
            } => path.any(object, &mut |v, _| match v {
                Some(Val::GeoPoint { lat: la, lng: lo }) => {
                    max_radians.is_none_or(|max| geo::distance_radians(*lat, *lng, la, lo) <= max)
                }
                _ => false,
            }),
            Self::Box {
                south,
                west,
                north,
                east,
            } => path.any(object, &mut |v, _| match v {
                Some(Val::GeoPoint { lat, lng }) => {
                    let lng_inside = if west <= east {
                        (*west..=*east).contains(&lng)
                    } else {
                        lng >= *west || lng <= *east
                    };
                    (*south..=*north).contains(&lat) && lng_inside
                }
                _ => false,
            }),
            Self::Polygon(vertices) => path.any(object, &mut |v, _| match v {
                Some(Val::GeoPoint { lat, lng }) => geo::polygon_contains(vertices, lat, lng),
                _ => false,
            }),
            Self::CenterSphere { lat, lng, radius } => path.any(object, &mut |v, _| match v {
                Some(Val::GeoPoint { lat: la, lng: lo }) => {
                    geo::distance_radians(*lat, *lng, la, lo) <= *radius
                }
                _ => false,
            }),
            Self::Intersects { lat, lng } => path.any(object, &mut |v, _| match v {
                Some(Val::Polygon(points)) => polygon_json_contains(points, *lat, *lng),
                _ => false,
            }),
            Self::ContainedBy(set) => path.any(object, &mut |_, hit| match hit {
                Hit::Whole(Value::Array(items)) => {
                    items.iter().all(|item| set.contains(Val::of(item, false)))
                }
                _ => false,
            }),
            Self::Subquery { negated, sub } => {
                let Some(set) = &sub.set else {
                    // Unbound subqueries only exist when the caller compiled with
                    // `SubqueryPolicy::Represent` and has not bound them yet.
                    return false;
                };
                let found = path.any(object, &mut |_, hit| match hit {
                    Hit::Whole(v) | Hit::Element(v) => set.contains(v),
                    Hit::Missing => false,
                });
                found != *negated
            }
        }
    }
}

fn eq_or_missing(v: Option<Val<'_>>, op: &Operand) -> bool {
    match v {
        None => matches!(op, Operand::Null),
        Some(v) => equals(v, op),
    }
}

/// `$in` membership: equality (a missing value equals `null`), plus a pointer field
/// matching its bare objectId (the reference LiveQuery server accepts
/// `ptr: {$in: ["<objectId>"]}`). O(1) in the size of the set.
fn in_set(v: Option<Val<'_>>, set: &OperandSet) -> bool {
    match v {
        None => set.contains(Val::Null),
        Some(pointer @ Val::Pointer { id, .. }) => set.contains(pointer) || set.contains_str(id),
        Some(v) => set.contains(v),
    }
}

/// `$all` over values: every item of `values` equals some value the path designates. The
/// path is walked once, marking the items met, so the cost is O(values met + items) rather
/// than O(items × values).
fn all_values_present(object: &Map<String, Value>, path: &Path, values: &OperandSet) -> bool {
    match values.len() {
        0 => true,
        1 => {
            let item = &values.items()[0];
            path.any(object, &mut |v, _| v.is_some_and(|v| equals(v, item)))
        }
        n => {
            // Items are distinct, so a value equals at most one of them.
            let mut met = vec![false; n];
            let mut missing = n;
            path.any(object, &mut |v, _| {
                if let Some(position) = v.and_then(|v| values.position(v))
                    && !std::mem::replace(&mut met[position], true)
                {
                    missing -= 1;
                }
                missing == 0
            });
            missing == 0
        }
    }
}

fn polygon_json_contains(points: &[Value], lat: f64, lng: f64) -> bool {
    let pair = |p: &Value| -> Option<(f64, f64)> {
        match p.as_array()?.as_slice() {
            [a, b] => Some((a.as_f64()?, b.as_f64()?)),
            _ => None,
        }
    };
    if !points.iter().all(|p| pair(p).is_some()) {
        return false;
    }
    geo::polygon_contains_by(
        points.len(),
        |i| pair(&points[i]).unwrap_or_default(),
        lat,
        lng,
    )
}

/// Which subquery operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubqueryKind {
    /// `{field: {$inQuery: {className, where}}}`: the field points to a matching object.
    InQuery,
    /// `$notInQuery`.
    NotInQuery,
    /// `{field: {$select: {query: {className, where}, key}}}`: the field's value equals the
    /// `key` of some matching object.
    Select,
    /// `$dontSelect`.
    DontSelect,
    /// `{$relatedTo: {object: <pointer>, key}}`: the object is in that relation.
    RelatedTo,
}

/// A subquery the server must resolve against the database.
#[derive(Clone)]
pub struct Subquery {
    /// Which operator.
    pub kind: SubqueryKind,
    /// The class the inner query runs on (for `$relatedTo`: the owner's class).
    pub class_name: String,
    /// The inner `where` clause (`$relatedTo`: empty).
    pub where_: Map<String, Value>,
    /// `$select`/`$dontSelect`: the key to collect; `$relatedTo`: the relation field.
    pub key: Option<String>,
    /// `$relatedTo`: the owner object's id.
    pub owner_id: Option<String>,
    /// The inner clause, compiled (not for `$relatedTo`). Nested subqueries are rejected.
    pub inner: Option<Box<Query>>,
    pub(crate) set: Option<Arc<dyn SubquerySet>>,
}

impl Subquery {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.class_name.len()
            + self.inner.as_ref().map_or(0, |inner| 2 * inner.footprint())
            + self.key.as_ref().map_or(0, String::len)
            + self.owner_id.as_ref().map_or(0, String::len)
    }
}

impl fmt::Debug for Subquery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subquery")
            .field("kind", &self.kind)
            .field("class_name", &self.class_name)
            .field("where_", &self.where_)
            .field("key", &self.key)
            .field("owner_id", &self.owner_id)
            .field("bound", &self.set.is_some())
            .finish()
    }
}

/// The resolved result of a subquery, maintained by the server.
pub trait SubquerySet: Send + Sync + fmt::Debug {
    /// For `$inQuery`/`$notInQuery`: whether `value` is a pointer to a matching object;
    /// for `$select`/`$dontSelect`: whether `value` is one of the selected values; for
    /// `$relatedTo`: whether `value` (an objectId) is in the relation.
    fn contains(&self, value: &Value) -> bool;

    /// Whether the set still answers for its subquery (`false`: it could not be kept — it
    /// outgrew its bound, or could not be read again). A query with such a set must not
    /// decide anything.
    fn is_current(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CompileOptions;
    use crate::test_support::{compile, object};
    use serde_json::json;

    /// One clause's `$regex` patterns share the budget of one maximal pattern: compiling
    /// costs time in their size, so many conditions cannot multiply it.
    #[test]
    fn regex_patterns_of_one_clause_share_one_budget() {
        let half = "a".repeat(8 * 1024);
        let two = json!({"$or": [{"f": {"$regex": half}}, {"g": {"$regex": half}}]});
        assert!(Query::compile(two.as_object().unwrap(), &CompileOptions::default()).is_ok());
        let three = json!({"$or": [
            {"f": {"$regex": half}}, {"g": {"$regex": half}}, {"h": {"$regex": "b"}}
        ]});
        let err = Query::compile(three.as_object().unwrap(), &CompileOptions::default())
            .expect_err("over the budget");
        assert_eq!(
            err.to_string(),
            "bad $regex: the patterns of one query may total at most 16384 bytes"
        );
    }

    /// Large operands are hashed and still answer by value (numbers, key order, pointers).
    #[test]
    fn large_set_operands() {
        let many: Vec<Value> = (0..1000).map(|i| json!(i)).collect();
        let tags: Vec<Value> = (500..2500).map(|i| json!(i)).collect();
        let with_tags = object(json!({"tags": tags}));
        let q = compile(json!({"tags": {"$all": many[500..].to_vec()}}));
        assert!(q.matches(&with_tags));
        let q = compile(json!({"tags": {"$all": many.clone()}}));
        assert!(!q.matches(&with_tags), "0..500 are missing");
        let q = compile(json!({"tags": {"$in": many.clone()}}));
        assert!(q.matches(&with_tags));
        let q = compile(json!({"tags": {"$nin": many.clone()}}));
        assert!(!q.matches(&with_tags));
        let q = compile(
            json!({"tags": {"$containedBy": (0..3000).map(|i| json!(i as f64)).collect::<Vec<_>>()}}),
        );
        assert!(q.matches(&with_tags));
        let q = compile(json!({"tags": {"$containedBy": many.clone()}}));
        assert!(!q.matches(&with_tags));
        let mut ids: Vec<Value> = (0..20).map(|i| json!(format!("id{i}"))).collect();
        ids.push(json!({"b": 1, "a": [1, 2]}));
        let q = compile(json!({"p": {"$in": ids}}));
        let pointer = |id: &str| {
            object(json!({"p": {"__type": "Pointer", "className": "U", "objectId": id}}))
        };
        assert!(
            q.matches(&pointer("id7")),
            "a pointer matches its bare objectId"
        );
        assert!(!q.matches(&pointer("id70")));
        assert!(q.matches(&object(json!({"p": {"a": [1.0, 2], "b": 1.0}}))));
        assert!(!q.matches(&object(json!({"p": {"a": [2, 1], "b": 1}}))));
        assert!(!q.matches(&object(json!({}))));
        let mut with_null = (0..20).map(|i| json!(i)).collect::<Vec<_>>();
        with_null.push(Value::Null);
        assert!(compile(json!({"p": {"$in": with_null}})).matches(&object(json!({}))));
        match &q.root {
            Node::Field(_, preds) => assert!(matches!(&preds[0], Pred::In(set) if set.len() == 21)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn operand_and_condition_limits() {
        let options = CompileOptions {
            max_set_items: 100,
            max_conditions: 10,
            ..CompileOptions::default()
        };
        let compile = |v: Value| Query::compile(v.as_object().expect("object"), &options);
        let items: Vec<Value> = (0..101).map(|i| json!(i)).collect();
        for op in ["$in", "$nin", "$all", "$containedBy"] {
            let err = compile(json!({"f": {op: items}})).expect_err("too many items");
            assert_eq!(
                err.to_string(),
                format!("bad {op} value: 101 items, at most 100 are allowed")
            );
            assert!(compile(json!({"f": {op: items[..100].to_vec()}})).is_ok());
        }
        let branches: Vec<Value> = (0..6).map(|i| json!({"f": i})).collect();
        let err = compile(json!({"$or": branches})).expect_err("too complex");
        assert_eq!(
            err.to_string(),
            "Query is too complex: more than 10 conditions"
        );
        assert_eq!(
            compile(json!({"$or": branches[..4].to_vec()}))
                .map(|q| q.conditions())
                .ok(),
            Some(8)
        );
    }
}
