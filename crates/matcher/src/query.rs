//! The compiled form of a `where` clause and its evaluation.
//!
//! Evaluation is infallible and allocation-free: every check that can fail was done by
//! the compiler, operands are pre-decoded, regexes pre-built. Field paths follow MongoDB
//! (the store behind Parse REST `find()`): a dotted path descends through nested objects
//! and through arrays of objects; a predicate holds if *any* value the path designates
//! satisfies it (an array field offers itself and each of its elements); negated
//! operators (`$ne`, `$nin`, `$exists: false`, `$nor`) are the negation of that.

use std::fmt;
use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use crate::geo;
use crate::value::{Operand, Val, compare, equals};

/// A compiled `where` clause. Build with [`Query::compile`], evaluate with
/// [`Query::matches`].
#[derive(Debug, Clone)]
pub struct Query {
    pub(crate) root: Node,
    pub(crate) canonical: Box<str>,
    pub(crate) object_id_lookup: Option<Box<str>>,
    pub(crate) fields: Box<[Box<str>]>,
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

    /// Top-level field names the clause reads (the part of each path before the first
    /// `.`, through `$or`/`$and`/`$nor`), deduplicated, for protected-field checks.
    pub fn referenced_fields(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| &**f)
    }

    /// The subqueries (`$inQuery`, `$notInQuery`, `$select`, `$dontSelect`,
    /// `$relatedTo`) of this clause, for a server that resolves them.
    pub fn subqueries(&self) -> Vec<&Subquery> {
        let mut out = Vec::new();
        self.root.collect_subqueries(&mut out);
        out
    }

    /// Restricts de-duplication: only queries isolated with the same `key` (and equal
    /// clauses) share an evaluation. Used when a query is bound to per-identity subquery
    /// sets.
    pub fn isolate(&mut self, key: &str) {
        self.canonical = format!("{}\u{1}{key}", self.canonical).into_boxed_str();
    }

    /// Attaches a resolved value set to every subquery; `resolve` is called once per
    /// subquery, in [`Query::subqueries`] order.
    pub fn bind_subqueries(&mut self, resolve: &mut dyn FnMut(&Subquery) -> Arc<dyn SubquerySet>) {
        self.root.bind_subqueries(resolve);
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
    RelatedTo(Subquery),
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

/// Range operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Lte,
    Gt,
    Gte,
}

/// An element of `$all`: a value, or a `$regex` (SDK `containsAllStartingWith`).
#[derive(Debug, Clone)]
pub(crate) enum AllElement {
    Value(Operand),
    Regex(Regex),
}

/// One predicate on a field.
#[derive(Debug, Clone)]
pub(crate) enum Pred {
    Eq(Operand),
    Ne(Operand),
    Cmp(Cmp, Operand),
    In(Box<[Operand]>),
    Nin(Box<[Operand]>),
    All(Box<[AllElement]>),
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
    ContainedBy(Box<[Operand]>),
    /// `$inQuery`/`$select` (or negated: `$notInQuery`/`$dontSelect`).
    Subquery {
        negated: bool,
        sub: Subquery,
    },
}

impl Pred {
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
            Self::In(ops) => path.any(object, &mut |v, _| ops.iter().any(|op| in_matches(v, op))),
            Self::Nin(ops) => !path.any(object, &mut |v, _| ops.iter().any(|op| in_matches(v, op))),
            Self::All(elements) => {
                !elements.is_empty()
                    && elements.iter().all(|element| {
                        path.any(object, &mut |v, _| match (element, v) {
                            (AllElement::Value(op), Some(v)) => equals(v, op),
                            (AllElement::Regex(re), Some(Val::Str(s))) => re.is_match(s),
                            _ => false,
                        })
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
            Self::ContainedBy(ops) => path.any(object, &mut |_, hit| match hit {
                Hit::Whole(Value::Array(items)) => items
                    .iter()
                    .all(|item| ops.iter().any(|op| equals(Val::of(item, false), op))),
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

/// `$in` membership: equality, plus a pointer field matching its bare objectId (the
/// reference LiveQuery server accepts `ptr: {$in: ["<objectId>"]}`).
fn in_matches(v: Option<Val<'_>>, op: &Operand) -> bool {
    match (v, op) {
        (Some(Val::Pointer { id, .. }), Operand::Str(s)) => id == &**s,
        _ => eq_or_missing(v, op),
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
    pub(crate) set: Option<Arc<dyn SubquerySet>>,
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
}
