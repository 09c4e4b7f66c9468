//! The subscription index: which distinct queries can match an object, without looking
//! at the queries that cannot.
//!
//! Identical queries (same class, same canonical text) are stored once with the list of
//! their subscribers. Each distinct query gets a *plan*: the smallest set of
//! `(field, value)` terms such that an object can only match the query if one of its
//! top-level fields holds one of those values — an equality or `$in` on a top-level field
//! gives such terms, an `$or` whose branches all have terms gives their union. The index
//! keeps a posting list per `(class, field, value)`. For an incoming object it probes, for
//! each field that some query of the class is indexed on, the object's value(s) of that
//! field, and returns the posting lists hit plus the queries without a plan (the scan
//! list). The cost of a lookup is therefore O(indexed fields of the class + candidates),
//! independent of the number of queries that cannot match. Candidates are then evaluated
//! exactly; the index never decides a match on its own.

use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::query::{Node, Path, Pred, Query};
use crate::value::{Operand, Val};

/// Identifies one distinct query in a [`SubscriptionIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(u32);

impl QueryId {
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

/// A plan: the `(field, key)` terms of a query; `None` = must be scanned.
type Terms<'q> = Vec<(&'q str, KeyRef<'q>)>;

/// The terms an indexed query is posted under.
type PostedTerms = Box<[(Box<str>, IndexKey)]>;

fn field_terms<'q>(path: &'q Path, preds: &'q [Pred]) -> Option<Terms<'q>> {
    if !path.is_top_level() {
        return None;
    }
    let field = path.head();
    preds.iter().find_map(|pred| match pred {
        Pred::Eq(op) => operand_key(op).map(|k| vec![(field, k)]),
        Pred::In(ops) => ops
            .items()
            .iter()
            .map(|op| operand_key(op).map(|k| (field, k)))
            .collect(),
        _ => None,
    })
}

/// Picks the plan whose worst posting list is currently shortest (ties: fewest terms).
fn plan<'q>(node: &'q Node, cost: &impl Fn(&str, KeyRef<'_>) -> usize) -> Option<Terms<'q>> {
    match node {
        Node::Field(path, preds) => field_terms(path, preds),
        Node::And(children) => children
            .iter()
            .filter_map(|child| plan(child, cost))
            .min_by_key(|terms| {
                (
                    terms.iter().map(|(f, k)| cost(f, *k)).max().unwrap_or(0),
                    terms.len(),
                )
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

/// One distinct query and its subscribers.
#[derive(Debug)]
pub struct Entry<S> {
    class_name: Box<str>,
    query: Query,
    subscribers: Vec<S>,
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

    /// Everyone subscribed to this query, in subscription order.
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
    by_canonical: HashMap<Box<str>, QueryId>,
    /// Field → value → the queries posted under it. Most values are posted by one or two
    /// queries: their lists live inline, without an allocation each.
    postings: HashMap<Box<str>, HashMap<IndexKey, SmallVec<[QueryId; 2]>>>,
    scan: Vec<QueryId>,
}

impl ClassIndex {
    fn posting_len(&self, field: &str, key: KeyRef<'_>) -> usize {
        self.postings
            .get(field)
            .and_then(|p| p.get(&key))
            .map_or(0, |list| list.len())
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

/// Distinct queries per class, their subscribers, and the index that finds candidates.
#[derive(Debug)]
pub struct SubscriptionIndex<S> {
    entries: Vec<Option<Entry<S>>>,
    free: Vec<u32>,
    classes: HashMap<Box<str>, ClassIndex>,
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

impl<S: PartialEq> SubscriptionIndex<S> {
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
        self.subscriptions += 1;
        if !self.classes.contains_key(class_name) {
            self.classes
                .insert(class_name.into(), ClassIndex::default());
        }
        let class = self.classes.get_mut(class_name).expect("inserted above");
        if let Some(&id) = class.by_canonical.get(query.canonical()) {
            let entry = self.entries[id.index()]
                .as_mut()
                .expect("canonical map points to live entries");
            entry.subscribers.push(subscriber);
            return id;
        }
        let id = match self.free.pop() {
            Some(slot) => QueryId(slot),
            None => {
                let slot =
                    u32::try_from(self.entries.len()).expect("fewer than 2^32 distinct queries");
                self.entries.push(None);
                QueryId(slot)
            }
        };
        let terms: Option<PostedTerms> =
            plan(&query.root, &|field, key| class.posting_len(field, key)).map(|terms| {
                terms
                    .into_iter()
                    .map(|(f, k)| (Box::from(f), k.to_owned()))
                    .collect()
            });
        let mut scan_position = 0;
        match &terms {
            Some(terms) => {
                for (field, key) in terms.iter() {
                    if !class.postings.contains_key(&**field) {
                        class.postings.insert(field.clone(), HashMap::new());
                    }
                    let by_key = class.postings.get_mut(&**field).expect("inserted above");
                    let list = by_key.entry(key.clone()).or_default();
                    if !list.contains(&id) {
                        list.push(id);
                    }
                }
            }
            None => {
                scan_position = class.scan.len();
                class.scan.push(id);
            }
        }
        class.by_canonical.insert(query.canonical().into(), id);
        self.entries[id.index()] = Some(Entry {
            class_name: class_name.into(),
            query,
            subscribers: vec![subscriber],
            terms,
            scan_position,
        });
        id
    }

    /// Removes one subscription; the query is dropped with its last subscriber. Returns
    /// whether the subscriber was found.
    pub fn remove(&mut self, id: QueryId, subscriber: &S) -> bool {
        let Some(entry) = self.entries.get_mut(id.index()).and_then(Option::as_mut) else {
            return false;
        };
        let Some(position) = entry.subscribers.iter().position(|s| s == subscriber) else {
            return false;
        };
        entry.subscribers.swap_remove(position);
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
        class.by_canonical.remove(entry.query.canonical());
        match &entry.terms {
            Some(terms) => {
                for (field, key) in terms.iter() {
                    let Some(by_key) = class.postings.get_mut(&**field) else {
                        continue;
                    };
                    if let Some(list) = by_key.get_mut(key) {
                        list.retain(|q| *q != id);
                        if list.is_empty() {
                            by_key.remove(key);
                        }
                    }
                    if by_key.is_empty() {
                        class.postings.remove(&**field);
                    }
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
        for (field, by_key) in &class.postings {
            let date_strings = matches!(&**field, "createdAt" | "updatedAt");
            for object in objects {
                value_keys(object.get(&**field), date_strings, &mut |key| {
                    if let Some(list) = by_key.get(&key) {
                        for &id in list {
                            if scratch.first_visit(id) {
                                out.push(id);
                            }
                        }
                    }
                });
            }
        }
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
