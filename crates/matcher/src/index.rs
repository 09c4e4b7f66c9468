//! The subscription index: which distinct queries can match an object, without looking
//! at the queries that cannot.
//!
//! Identical queries (same class, same canonical text) are stored once with the list of
//! their subscribers. Each distinct query gets a *plan*: a set of terms on top-level fields
//! such that an object can only match the query if it meets one of them.
//! - An equality or `$in` on a top-level field gives `(field, value)` terms. The index keeps
//!   a posting list per `(class, field, value)` and probes, for each field some query of
//!   the class is indexed on, the object's value(s) of that field.
//! - A field with only range predicates (`$gt`/`$gte`/`$lt`/`$lte` on a number, string or
//!   date, alone or together as an interval) gives a range term: the query is posted as
//!   one interval in the field's interval tree for that type bracket (`range`). The
//!   object's values of the field in that bracket (one value, or the elements of an array)
//!   span `[min, max]`, and the tree returns the intervals that overlap it. Comparisons are
//!   the evaluator's (numbers as doubles with `-0 = 0` and NaN comparing with nothing,
//!   strings by bytes, dates by milliseconds; `createdAt`/`updatedAt` ISO strings as
//!   dates); an interval is tested against the span, not one value, because in an array
//!   each bound may be met by a different element. Ranges on booleans, on nested paths or
//!   across brackets are not indexed.
//! - An `$and` takes the best plan of its children (an equality plan before a range plan,
//!   then the shortest worst posting list), an `$or` whose branches all have plans the
//!   union of theirs; a clause that can never match needs no terms. A query without a plan
//!   (`$nor`, `$ne` or `$regex` alone, …) goes on the class's scan list.
//!
//! A lookup returns the posting lists and intervals hit plus the scan list. Its cost is
//! O(indexed fields of the class + log(range-indexed queries) + candidates), independent of
//! the number of queries that cannot match. Candidates are then evaluated exactly; the
//! index never decides a match on its own. Inserting and removing a query cost O(terms)
//! hash operations plus O(log n) per range term. A subscriber joins or leaves a query
//! shared by many in O(1) when it remembers its place in the query's list ([`Member`]), so
//! tearing down n subscribers of one query costs O(n), not O(n²).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, Equivalent, HashMap, HashTable};
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::query::{Cmp, Node, Path, Pred, Query};
use crate::range::{IntervalTree, Lower, NumKey, Upper};
use crate::value::{Operand, Val};

/// Identifies one distinct query in a [`SubscriptionIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(u32);

impl QueryId {
    #[cfg(test)]
    pub(crate) fn new(slot: u32) -> Self {
        Self(slot)
    }

    /// The slot number (dense, reused after removal).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An indexed value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexKey {
    Null,
    Bool(bool),
    Num(u64),
    Str(Box<str>),
    Date(i64),
    Pointer(Box<str>, Box<str>),
}

/// The borrowed form of [`IndexKey`] used for lookups (hashes identically).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRef<'a> {
    Null,
    Bool(bool),
    Num(u64),
    Str(&'a str),
    Date(i64),
    Pointer(&'a str, &'a str),
}

impl KeyRef<'_> {
    fn to_owned(self) -> IndexKey {
        match self {
            Self::Null => IndexKey::Null,
            Self::Bool(b) => IndexKey::Bool(b),
            Self::Num(n) => IndexKey::Num(n),
            Self::Str(s) => IndexKey::Str(s.into()),
            Self::Date(d) => IndexKey::Date(d),
            Self::Pointer(c, i) => IndexKey::Pointer(c.into(), i.into()),
        }
    }
}

impl IndexKey {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Self::Null => KeyRef::Null,
            Self::Bool(b) => KeyRef::Bool(*b),
            Self::Num(n) => KeyRef::Num(*n),
            Self::Str(s) => KeyRef::Str(s),
            Self::Date(d) => KeyRef::Date(*d),
            Self::Pointer(c, i) => KeyRef::Pointer(c, i),
        }
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Self::Null => 0u8.hash(state),
            Self::Bool(b) => (1u8, b).hash(state),
            Self::Num(n) => (2u8, n).hash(state),
            Self::Str(s) => (3u8, s).hash(state),
            Self::Date(d) => (4u8, d).hash(state),
            Self::Pointer(c, i) => (5u8, c, i).hash(state),
        }
    }
}

impl Hash for IndexKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl Equivalent<IndexKey> for KeyRef<'_> {
    fn equivalent(&self, key: &IndexKey) -> bool {
        *self == key.as_ref()
    }
}

fn num_key(n: f64) -> u64 {
    // -0.0 and 0.0 are equal numbers.
    if n == 0.0 { 0 } else { n.to_bits() }
}

fn operand_key(op: &Operand) -> Option<KeyRef<'_>> {
    Some(match op {
        Operand::Null => KeyRef::Null,
        Operand::Bool(b) => KeyRef::Bool(*b),
        Operand::Num(n) => KeyRef::Num(num_key(*n)),
        Operand::Str(s) => KeyRef::Str(s),
        Operand::Date(d) => KeyRef::Date(*d),
        Operand::Pointer { class, id } => KeyRef::Pointer(class, id),
        _ => return None,
    })
}

/// Calls `f` with every key under which a query could have indexed `value` (the value
/// itself, each element of an array, and a pointer's bare objectId).
fn value_keys<'a>(value: Option<&'a Value>, date_strings: bool, f: &mut impl FnMut(KeyRef<'a>)) {
    let Some(value) = value else {
        f(KeyRef::Null);
        return;
    };
    match Val::of(value, date_strings) {
        Val::Array(items) => {
            for item in items {
                if !item.is_array() {
                    value_keys(Some(item), false, f);
                }
            }
        }
        Val::Null => f(KeyRef::Null),
        Val::Bool(b) => f(KeyRef::Bool(b)),
        Val::Num(n) => f(KeyRef::Num(num_key(n))),
        Val::Str(s) => f(KeyRef::Str(s)),
        Val::Date(d) => f(KeyRef::Date(d)),
        Val::Pointer { class, id } => {
            f(KeyRef::Pointer(class, id));
            f(KeyRef::Str(id));
        }
        _ => {}
    }
}

/// One term of a plan: an object can only match a query if, for one of its terms, the
/// object's top-level `field` holds `key` (equality) or a value inside the interval
/// (range).
#[derive(Debug)]
enum Term<'q> {
    Eq(&'q str, KeyRef<'q>),
    Range(&'q str, Interval<'q>),
}

/// The bounds of the range predicates of one field, within one type bracket.
#[derive(Debug)]
enum Interval<'q> {
    Num(Lower<NumKey>, Upper<NumKey>),
    Str(Lower<&'q str>, Upper<&'q str>),
    Date(Lower<i64>, Upper<i64>),
}

/// A plan: the terms of a query; `None` = must be scanned.
type Terms<'q> = Vec<Term<'q>>;

/// How an indexed query is posted under one field.
#[derive(Debug)]
enum Posting {
    /// In the posting list of this value.
    Eq(IndexKey),
    /// In the interval tree of this bracket, under this handle.
    Range(Bracket, u32),
}

/// The type brackets a range can be indexed in (MongoDB compares only within one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bracket {
    Num,
    Str,
    Date,
}

/// The terms an indexed query is posted under (the field names are shared with the
/// index's maps).
type PostedTerms = Box<[(Arc<str>, Posting)]>;

fn field_terms<'q>(path: &'q Path, preds: &'q [Pred]) -> Option<Terms<'q>> {
    if !path.is_top_level() {
        return None;
    }
    let field = path.head();
    preds
        .iter()
        .find_map(|pred| match pred {
            Pred::Eq(op) => operand_key(op).map(|k| vec![Term::Eq(field, k)]),
            Pred::In(ops) => ops
                .items()
                .iter()
                .map(|op| operand_key(op).map(|k| Term::Eq(field, k)))
                .collect(),
            _ => None,
        })
        .or_else(|| range_term(field, preds).map(|term| vec![term]))
}

/// The interval of the range predicates (`$gt`/`$gte`/`$lt`/`$lte`) of one field, in the
/// bracket of the first one that can be indexed: every predicate must hold, so any of
/// their bounds is a necessary condition, and the tightest of each side is kept. Bounds in
/// other brackets, and booleans, are left to the exact evaluation.
fn range_term<'q>(field: &'q str, preds: &'q [Pred]) -> Option<Term<'q>> {
    let bracket = preds.iter().find_map(|pred| match pred {
        Pred::Cmp(_, Operand::Num(n)) if !n.is_nan() => Some(Bracket::Num),
        Pred::Cmp(_, Operand::Str(_)) => Some(Bracket::Str),
        Pred::Cmp(_, Operand::Date(_)) => Some(Bracket::Date),
        _ => None,
    })?;
    let interval = match bracket {
        Bracket::Num => {
            let (lower, upper) = bounds(preds, |op| match op {
                Operand::Num(n) => NumKey::new(*n),
                _ => None,
            });
            Interval::Num(lower, upper)
        }
        Bracket::Str => {
            let (lower, upper) = bounds(preds, |op| match op {
                Operand::Str(s) => Some(&**s),
                _ => None,
            });
            Interval::Str(lower, upper)
        }
        Bracket::Date => {
            let (lower, upper) = bounds(preds, |op| match op {
                Operand::Date(d) => Some(*d),
                _ => None,
            });
            Interval::Date(lower, upper)
        }
    };
    Some(Term::Range(field, interval))
}

fn bounds<'q, K: Ord>(
    preds: &'q [Pred],
    key: impl Fn(&'q Operand) -> Option<K>,
) -> (Lower<K>, Upper<K>) {
    let mut lower = Lower::Unbounded;
    let mut upper = Upper::Unbounded;
    for pred in preds {
        let Pred::Cmp(cmp, op) = pred else { continue };
        let Some(k) = key(op) else { continue };
        match cmp {
            Cmp::Gt | Cmp::Gte => lower = lower.max(Lower::At(k)),
            Cmp::Lt | Cmp::Lte => upper = upper.min(Upper::At(k)),
        }
    }
    (lower, upper)
}

/// Picks among alternatives an equality plan over a range plan (a range term may post a
/// query under many values), then the plan whose worst posting list is currently shortest
/// (ties: fewest terms).
fn plan<'q>(node: &'q Node, cost: &impl Fn(&str, KeyRef<'_>) -> usize) -> Option<Terms<'q>> {
    match node {
        Node::Field(path, preds) => field_terms(path, preds),
        Node::And(children) => children
            .iter()
            .filter_map(|child| plan(child, cost))
            .min_by_key(|terms| {
                let worst = terms
                    .iter()
                    .map(|term| match term {
                        Term::Eq(f, k) => cost(f, *k),
                        Term::Range(..) => 0,
                    })
                    .max()
                    .unwrap_or(0);
                let ranged = terms.iter().any(|term| matches!(term, Term::Range(..)));
                (ranged, worst, terms.len())
            }),
        Node::Or(children) => {
            let mut all = Vec::new();
            for child in children.iter() {
                all.extend(plan(child, cost)?);
            }
            Some(all)
        }
        // A clause that can never match needs no terms at all.
        Node::Const(false) => Some(Vec::new()),
        Node::Nor(_) | Node::RelatedTo(_) | Node::Const(true) => None,
    }
}

/// The range-indexed queries of one field: one interval tree per bracket.
#[derive(Debug, Default)]
struct RangeField {
    num: IntervalTree<NumKey>,
    str: IntervalTree<Box<str>>,
    date: IntervalTree<i64>,
}

impl RangeField {
    fn is_empty(&self) -> bool {
        self.num.len() == 0 && self.str.len() == 0 && self.date.len() == 0
    }
}

/// What an object offers the range predicates of one field, per bracket: the lowest and
/// highest value the evaluator would compare (the field's value, and each element of an
/// array; NaN compares with nothing).
#[derive(Debug, Default)]
struct Spans<'a> {
    num: Option<(NumKey, NumKey)>,
    str: Option<(&'a str, &'a str)>,
    date: Option<(i64, i64)>,
}

fn widen<T: Ord + Copy>(span: &mut Option<(T, T)>, v: T) {
    *span = Some(match *span {
        None => (v, v),
        Some((min, max)) => (min.min(v), max.max(v)),
    });
}

impl<'a> Spans<'a> {
    fn of(value: &'a Value, date_strings: bool) -> Self {
        let mut spans = Self::default();
        spans.note(Val::of(value, date_strings));
        if let Value::Array(items) = value {
            for item in items {
                spans.note(Val::of(item, false));
            }
        }
        spans
    }

    fn note(&mut self, value: Val<'a>) {
        match value {
            Val::Num(n) => {
                if let Some(k) = NumKey::new(n) {
                    widen(&mut self.num, k);
                }
            }
            Val::Str(s) => widen(&mut self.str, s),
            Val::Date(d) => widen(&mut self.date, d),
            _ => {}
        }
    }
}

/// A subscriber as the index holds it: compared by identity when it is removed. One that
/// remembers where the index put it in its query's list ([`Member::place`]) is removed in
/// O(1), without searching that list; one that does not (the default) is searched for, in
/// O(subscribers of its query).
///
/// The place is a hint: the index checks it against the subscriber before using it, so a
/// wrong one costs a search, never a wrong removal.
pub trait Member: PartialEq {
    /// Where the index last put this subscriber ([`Member::set_place`]), if it remembers.
    fn place(&self) -> Option<usize> {
        None
    }

    /// Called by the index whenever it puts this subscriber at `place` in its query's list.
    fn set_place(&self, place: usize) {
        let _ = place;
    }
}

/// Plain numbers (tests, benches) are searched for.
impl Member for u32 {}

/// Plain numbers (tests, benches) are searched for.
impl Member for usize {}

/// One distinct query and its subscribers.
#[derive(Debug)]
pub struct Entry<S> {
    class_name: Arc<str>,
    query: Query,
    /// Most distinct queries have one subscriber: it is held inline.
    subscribers: SmallVec<[S; 1]>,
    /// Terms the query is posted under; `None` when it is on the scan list.
    terms: Option<PostedTerms>,
    scan_position: usize,
}

impl<S> Entry<S> {
    /// The class of the query.
    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// The compiled query.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Everyone subscribed to this query: in subscription order until one leaves, when the
    /// last one takes its place (the order is deterministic, not part of any contract).
    pub fn subscribers(&self) -> &[S] {
        &self.subscribers
    }

    /// Whether the index had to put this query on the scan list.
    pub fn is_scanned(&self) -> bool {
        self.terms.is_none()
    }
}

#[derive(Debug, Default)]
struct ClassIndex {
    /// The queries by canonical text (hashed with `hasher`; the text itself is read from
    /// the entry, not copied).
    by_canonical: HashTable<QueryId>,
    hasher: DefaultHashBuilder,
    /// Field → value → the queries posted under it. Most values are posted by one or two
    /// queries: their lists live inline, without an allocation each.
    postings: HashMap<Arc<str>, HashMap<IndexKey, SmallVec<[QueryId; 2]>>>,
    /// Field → the queries posted under an interval of it.
    ranges: HashMap<Arc<str>, RangeField>,
    scan: Vec<QueryId>,
}

impl ClassIndex {
    /// Calls `found` with every query posted under a value of one of `objects` (an equality
    /// posting or an overlapping interval); a query may come more than once. The scanned
    /// queries are the caller's.
    fn indexed_candidates(&self, objects: &[&Map<String, Value>], found: &mut impl FnMut(QueryId)) {
        for (field, by_key) in &self.postings {
            let date_strings = matches!(&**field, "createdAt" | "updatedAt");
            for object in objects {
                value_keys(object.get(&**field), date_strings, &mut |key| {
                    if let Some(list) = by_key.get(&key) {
                        list.iter().copied().for_each(&mut *found);
                    }
                });
            }
        }
        for (field, trees) in &self.ranges {
            let date_strings = matches!(&**field, "createdAt" | "updatedAt");
            for object in objects {
                // A missing field satisfies no range predicate.
                let Some(value) = object.get(&**field) else {
                    continue;
                };
                let spans = Spans::of(value, date_strings);
                if let Some((min, max)) = spans.num {
                    trees.num.overlapping(&min, &max, found);
                }
                if let Some((min, max)) = spans.str {
                    trees.str.overlapping(min, max, found);
                }
                if let Some((min, max)) = spans.date {
                    trees.date.overlapping(&min, &max, found);
                }
            }
        }
    }

    fn posting_len(&self, field: &str, key: KeyRef<'_>) -> usize {
        self.postings
            .get(field)
            .and_then(|p| p.get(&key))
            .map_or(0, |list| list.len())
    }

    /// Posts `id` under `term`.
    fn post(&mut self, term: Term<'_>, id: QueryId) -> (Arc<str>, Posting) {
        match term {
            Term::Eq(field, key) => {
                if !self.postings.contains_key(field) {
                    self.postings.insert(field.into(), HashMap::new());
                }
                let (field, by_key) = self
                    .postings
                    .get_key_value_mut(field)
                    .expect("inserted above");
                let field = Arc::clone(field);
                let key = key.to_owned();
                let list = by_key.entry(key.clone()).or_default();
                if !list.contains(&id) {
                    list.push(id);
                }
                (field, Posting::Eq(key))
            }
            Term::Range(field, interval) => {
                if !self.ranges.contains_key(field) {
                    self.ranges.insert(field.into(), RangeField::default());
                }
                let (field, trees) = self
                    .ranges
                    .get_key_value_mut(field)
                    .expect("inserted above");
                let field = Arc::clone(field);
                let posting = match interval {
                    Interval::Num(lower, upper) => {
                        Posting::Range(Bracket::Num, trees.num.insert(lower, upper, id))
                    }
                    Interval::Str(lower, upper) => {
                        let lower = match lower {
                            Lower::Unbounded => Lower::Unbounded,
                            Lower::At(s) => Lower::At(Box::from(s)),
                        };
                        let upper = match upper {
                            Upper::Unbounded => Upper::Unbounded,
                            Upper::At(s) => Upper::At(Box::from(s)),
                        };
                        Posting::Range(Bracket::Str, trees.str.insert(lower, upper, id))
                    }
                    Interval::Date(lower, upper) => {
                        Posting::Range(Bracket::Date, trees.date.insert(lower, upper, id))
                    }
                };
                (field, posting)
            }
        }
    }

    /// Withdraws `id` from one of the postings [`ClassIndex::post`] made.
    fn unpost(&mut self, field: &str, posting: &Posting, id: QueryId) {
        match posting {
            Posting::Eq(key) => {
                let Some(by_key) = self.postings.get_mut(field) else {
                    return;
                };
                if let Some(list) = by_key.get_mut(key) {
                    list.retain(|q| *q != id);
                    if list.is_empty() {
                        by_key.remove(key);
                    }
                }
                if by_key.is_empty() {
                    self.postings.remove(field);
                }
            }
            Posting::Range(bracket, handle) => {
                let Some(trees) = self.ranges.get_mut(field) else {
                    return;
                };
                match bracket {
                    Bracket::Num => trees.num.remove(*handle),
                    Bracket::Str => trees.str.remove(*handle),
                    Bracket::Date => trees.date.remove(*handle),
                }
                if trees.is_empty() {
                    self.ranges.remove(field);
                }
            }
        }
    }
}

/// Reusable per-worker state for [`SubscriptionIndex::candidates`]: de-duplicates
/// candidates in O(1) without allocating.
#[derive(Debug, Default)]
pub struct Scratch {
    stamps: Vec<u32>,
    generation: u32,
}

impl Scratch {
    fn begin(&mut self, slots: usize) {
        if self.stamps.len() < slots {
            self.stamps.resize(slots, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamps.iter_mut().for_each(|s| *s = 0);
            self.generation = 1;
        }
    }

    fn first_visit(&mut self, id: QueryId) -> bool {
        let stamp = &mut self.stamps[id.index()];
        let first = *stamp != self.generation;
        *stamp = self.generation;
        first
    }
}

/// What the index reads of an object of one class to find its candidates
/// ([`SubscriptionIndex::reads`]).
#[derive(Debug, Clone, Copy)]
pub enum Reads<'a> {
    /// No query of the class: no object of it has a candidate.
    Nothing,
    /// Some query of the class is scanned: every object of it is a candidate.
    Everything,
    /// The top-level fields the class's queries are indexed on; an object's other fields
    /// do not change its candidates.
    Fields(IndexedFields<'a>),
}

/// The top-level fields some query of a class is indexed on.
#[derive(Debug, Clone, Copy)]
pub struct IndexedFields<'a>(&'a ClassIndex);

impl<'a> IndexedFields<'a> {
    /// Whether a query is indexed on the top-level field `name`.
    pub fn contains(&self, name: &str) -> bool {
        // A class is indexed on a few fields: comparing them costs less than hashing `name`.
        self.0.postings.keys().any(|field| **field == *name)
            || self.0.ranges.keys().any(|field| **field == *name)
    }

    /// The fields (one indexed both ways comes twice), for a caller that tests many names
    /// against them.
    pub fn names(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let class = self.0;
        class
            .postings
            .keys()
            .chain(class.ranges.keys())
            .map(|field| &**field)
    }
}

/// Distinct queries per class, their subscribers, and the index that finds candidates.
#[derive(Debug)]
pub struct SubscriptionIndex<S> {
    entries: Vec<Option<Entry<S>>>,
    free: Vec<u32>,
    classes: HashMap<Arc<str>, ClassIndex>,
    subscriptions: usize,
}

impl<S> Default for SubscriptionIndex<S> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            classes: HashMap::new(),
            subscriptions: 0,
        }
    }
}

impl<S: Member> SubscriptionIndex<S> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct queries.
    pub fn query_count(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Number of subscriptions (subscribers over all queries).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Number of queries on the scan list of `class_name`.
    pub fn scanned_count(&self, class_name: &str) -> usize {
        self.classes.get(class_name).map_or(0, |c| c.scan.len())
    }

    /// Every distinct query.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<S>> {
        self.entries.iter().flatten()
    }

    /// The entry of a query.
    pub fn get(&self, id: QueryId) -> Option<&Entry<S>> {
        self.entries.get(id.index()).and_then(Option::as_ref)
    }

    /// Subscribes `subscriber` to `query` on `class_name`; identical queries share one
    /// entry. Returns the query's id.
    pub fn insert(&mut self, class_name: &str, query: Query, subscriber: S) -> QueryId {
        self.insert_with(class_name, query, |_| subscriber)
    }

    /// Subscribes the subscriber `make` returns, given the id of its query, to `query` on
    /// `class_name` (for a subscriber that keeps its query's id). Returns the query's id.
    pub fn insert_with(
        &mut self,
        class_name: &str,
        query: Query,
        make: impl FnOnce(QueryId) -> S,
    ) -> QueryId {
        self.subscriptions += 1;
        if !self.classes.contains_key(class_name) {
            self.classes
                .insert(class_name.into(), ClassIndex::default());
        }
        let (class_name, class) = self
            .classes
            .get_key_value_mut(class_name)
            .expect("inserted above");
        let hash = class.hasher.hash_one(query.canonical());
        let entries = &mut self.entries;
        let canonical_of = |id: QueryId| {
            entries[id.index()]
                .as_ref()
                .expect("the canonical table holds live entries")
                .query
                .canonical()
        };
        if let Some(&id) = class
            .by_canonical
            .find(hash, |&id| canonical_of(id) == query.canonical())
        {
            let entry = entries[id.index()]
                .as_mut()
                .expect("the canonical table holds live entries");
            let subscriber = make(id);
            subscriber.set_place(entry.subscribers.len());
            entry.subscribers.push(subscriber);
            return id;
        }
        let id = match self.free.pop() {
            Some(slot) => QueryId(slot),
            None => {
                let slot = u32::try_from(entries.len()).expect("fewer than 2^32 distinct queries");
                entries.push(None);
                QueryId(slot)
            }
        };
        let plan = plan(&query.root, &|field, key| class.posting_len(field, key));
        let mut scan_position = 0;
        let terms: Option<PostedTerms> = match plan {
            Some(terms) => Some(terms.into_iter().map(|term| class.post(term, id)).collect()),
            None => {
                scan_position = class.scan.len();
                class.scan.push(id);
                None
            }
        };
        let subscriber = make(id);
        subscriber.set_place(0);
        entries[id.index()] = Some(Entry {
            class_name: Arc::clone(class_name),
            query,
            subscribers: smallvec::smallvec![subscriber],
            terms,
            scan_position,
        });
        let hasher = &class.hasher;
        class.by_canonical.insert_unique(hash, id, |&id| {
            hasher.hash_one(
                entries[id.index()]
                    .as_ref()
                    .expect("the canonical table holds live entries")
                    .query
                    .canonical(),
            )
        });
        id
    }

    /// Removes one subscription; the query is dropped with its last subscriber. Returns
    /// whether the subscriber was found. O(1) for a subscriber that remembers its place
    /// ([`Member`]): the last subscriber of the query takes the place of the one removed.
    pub fn remove(&mut self, id: QueryId, subscriber: &S) -> bool {
        let Some(entry) = self.entries.get_mut(id.index()).and_then(Option::as_mut) else {
            return false;
        };
        let subscribers = &mut entry.subscribers;
        let position = match subscriber.place() {
            Some(at) if subscribers.get(at) == Some(subscriber) => at,
            _ => match subscribers.iter().position(|s| s == subscriber) {
                Some(at) => at,
                None => return false,
            },
        };
        subscribers.swap_remove(position);
        if let Some(moved) = subscribers.get(position) {
            moved.set_place(position);
        }
        self.subscriptions -= 1;
        if !entry.subscribers.is_empty() {
            return true;
        }
        let entry = self.entries[id.index()]
            .take()
            .expect("entry checked above");
        self.free.push(id.0);
        let class = self
            .classes
            .get_mut(&*entry.class_name)
            .expect("live entries have a class");
        let hash = class.hasher.hash_one(entry.query.canonical());
        if let Ok(found) = class.by_canonical.find_entry(hash, |&q| q == id) {
            found.remove();
        }
        match &entry.terms {
            Some(terms) => {
                for (field, posting) in terms.iter() {
                    class.unpost(field, posting, id);
                }
            }
            None => {
                class.scan.swap_remove(entry.scan_position);
                if let Some(&moved) = class.scan.get(entry.scan_position) {
                    self.entries[moved.index()]
                        .as_mut()
                        .expect("scan list holds live entries")
                        .scan_position = entry.scan_position;
                }
            }
        }
        if class.by_canonical.is_empty() {
            self.classes.remove(&*entry.class_name);
        }
        true
    }

    /// Appends to `out` every query of `class_name` that might match one of `objects`
    /// (each at most once). A superset of the matches: evaluate each candidate.
    pub fn candidates(
        &self,
        class_name: &str,
        objects: &[&Map<String, Value>],
        scratch: &mut Scratch,
        out: &mut Vec<QueryId>,
    ) {
        let Some(class) = self.classes.get(class_name) else {
            return;
        };
        scratch.begin(self.entries.len());
        for &id in &class.scan {
            if scratch.first_visit(id) {
                out.push(id);
            }
        }
        class.indexed_candidates(objects, &mut |id| {
            if scratch.first_visit(id) {
                out.push(id);
            }
        });
    }

    /// What [`SubscriptionIndex::candidates`] reads of an object of `class_name`: lets a
    /// caller holding an object as text read only those fields before deciding whether
    /// the whole object is worth reading.
    pub fn reads(&self, class_name: &str) -> Reads<'_> {
        match self.classes.get(class_name) {
            None => Reads::Nothing,
            Some(class) if !class.scan.is_empty() => Reads::Everything,
            Some(class) => Reads::Fields(IndexedFields(class)),
        }
    }

    /// Whether [`SubscriptionIndex::candidates`] would find any query of `class_name` for
    /// `objects`: the same lookups, without a [`Scratch`] or a list.
    pub fn has_candidates(&self, class_name: &str, objects: &[&Map<String, Value>]) -> bool {
        let Some(class) = self.classes.get(class_name) else {
            return false;
        };
        if !class.scan.is_empty() {
            return true;
        }
        let mut hit = false;
        class.indexed_candidates(objects, &mut |_| hit = true);
        hit
    }

    /// Appends to `out` every query of `class_name` that matches `object`.
    pub fn matching(
        &self,
        class_name: &str,
        object: &Map<String, Value>,
        scratch: &mut Scratch,
        out: &mut Vec<QueryId>,
    ) {
        let start = out.len();
        self.candidates(class_name, &[object], scratch, out);
        let mut kept = start;
        for i in start..out.len() {
            let id = out[i];
            if self.get(id).is_some_and(|e| e.query.matches(object)) {
                out[kept] = id;
                kept += 1;
            }
        }
        out.truncate(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{compile as query, object};
    use serde_json::json;

    fn candidates(index: &SubscriptionIndex<u32>, object: &Map<String, Value>) -> Vec<u32> {
        let mut out = Vec::new();
        index.candidates("C", &[object], &mut Scratch::default(), &mut out);
        let mut subscribers: Vec<u32> = out
            .iter()
            .flat_map(|id| index.get(*id).expect("live").subscribers().to_vec())
            .collect();
        subscribers.sort_unstable();
        subscribers
    }

    /// Range-only queries are served by the range index: an object is offered only the
    /// queries whose interval its value (or one of its array elements) can fall into.
    #[test]
    fn range_only_queries_are_indexed_by_interval() {
        let mut index = SubscriptionIndex::new();
        let clauses = [
            json!({"score": {"$gt": 10}}),
            json!({"score": {"$gte": 0, "$lt": 5}}),
            json!({"name": {"$lte": "m"}}),
            json!({"createdAt": {"$gte": "2026-01-01T00:00:00Z", "$lt": "2026-02-01T00:00:00Z"}}),
            json!({"$or": [{"score": {"$lt": -100}}, {"name": "zed"}]}),
        ];
        let mut ids = Vec::new();
        for (i, clause) in clauses.into_iter().enumerate() {
            let id = index.insert("C", query(clause), i as u32);
            assert!(!index.get(id).expect("live").is_scanned(), "query {i}");
            ids.push(id);
        }
        assert_eq!(index.scanned_count("C"), 0);
        assert_eq!(candidates(&index, &object(json!({"score": 20}))), [0]);
        assert_eq!(candidates(&index, &object(json!({"score": 5}))), [1]);
        assert_eq!(
            candidates(&index, &object(json!({"score": 7}))),
            Vec::<u32>::new()
        );
        // Each bound of an interval may be met by a different element (20 ≥ 0, -200 < 5):
        // query 1 matches that array.
        assert_eq!(
            candidates(&index, &object(json!({"score": [-200, 20]}))),
            [0, 1, 4]
        );
        assert!(
            query(json!({"score": {"$gte": 0, "$lt": 5}}))
                .matches(&object(json!({"score": [-200, 20]})))
        );
        assert_eq!(
            candidates(&index, &object(json!({"score": "20"}))),
            Vec::<u32>::new()
        );
        assert_eq!(candidates(&index, &object(json!({"name": "abc"}))), [2]);
        assert_eq!(candidates(&index, &object(json!({"name": "zed"}))), [4]);
        assert_eq!(
            candidates(
                &index,
                &object(json!({"createdAt": "2026-01-15T00:00:00.000Z"}))
            ),
            [3]
        );
        assert_eq!(
            candidates(
                &index,
                &object(json!({"createdAt": "2026-03-15T00:00:00.000Z"}))
            ),
            Vec::<u32>::new()
        );
        // Removal withdraws the intervals; the index empties completely.
        for (i, id) in ids.into_iter().enumerate() {
            assert!(index.remove(id, &(i as u32)));
        }
        assert_eq!(index.query_count(), 0);
        assert!(index.classes.is_empty());
    }

    /// An equality plan beats a range plan; ranges on booleans only, or below the top
    /// level, stay on the scan list.
    #[test]
    fn equality_plans_win_and_unindexable_ranges_are_scanned() {
        let mut index = SubscriptionIndex::new();
        let both = index.insert("C", query(json!({"score": {"$gt": 1}, "room": "r"})), 0);
        assert!(!index.get(both).expect("live").is_scanned());
        assert_eq!(
            candidates(&index, &object(json!({"score": 5}))),
            Vec::<u32>::new()
        );
        assert_eq!(candidates(&index, &object(json!({"room": "r"}))), [0]);
        index.insert("C", query(json!({"flag": {"$gt": false}})), 1);
        index.insert("C", query(json!({"a.b": {"$gt": 1}})), 2);
        assert_eq!(index.scanned_count("C"), 2);
    }
}
