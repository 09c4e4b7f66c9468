//! Operand sets of `$in`, `$nin`, `$all` and `$containedBy`, looked up in O(1).
//!
//! A client chooses the size of these operands and a writer chooses the size of the array
//! fields they are tested against; a linear scan of one against the other would let either
//! side make one event cost seconds of CPU. Small operands (a handful of items, the common
//! case) are scanned, which is cheapest; larger ones get a hash table keyed by a hash that
//! is consistent with the matcher's equality ([`equals`]): values that are equal hash
//! equally, whatever their object key order, so a lookup probes one bucket and confirms with
//! [`equals`]. The hasher is seeded per set at random, so a client cannot precompute
//! colliding operands.

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use serde_json::Value;

use crate::value::{Operand, Val, equals};

/// Operands up to this many items are scanned; larger ones are hashed.
const SCAN_LIMIT: usize = 8;

/// The items of a set operator, de-duplicated, with a hash index when large.
#[derive(Debug, Clone)]
pub(crate) struct OperandSet {
    items: Box<[Operand]>,
    /// Boxed: most sets are small and go without, and a set lives in every predicate.
    index: Option<Box<SetIndex>>,
}

#[derive(Clone)]
struct SetIndex {
    hasher: DefaultHashBuilder,
    /// Positions in `items`, by hash.
    table: HashTable<u32>,
}

impl std::fmt::Debug for SetIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetIndex")
            .field("entries", &self.table.len())
            .finish()
    }
}

impl OperandSet {
    /// Builds a set from operands; duplicates (equal operands) are kept once.
    pub(crate) fn new(operands: Vec<Operand>) -> Self {
        if operands.len() <= SCAN_LIMIT {
            let mut items: Vec<Operand> = Vec::with_capacity(operands.len());
            for operand in operands {
                if !items.contains(&operand) {
                    items.push(operand);
                }
            }
            return Self {
                items: items.into_boxed_slice(),
                index: None,
            };
        }
        let hasher = DefaultHashBuilder::default();
        let mut table: HashTable<u32> = HashTable::with_capacity(operands.len());
        let mut items: Vec<Operand> = Vec::with_capacity(operands.len());
        for operand in operands {
            let hash = hash_operand(&hasher, &operand);
            let duplicate = table
                .find(hash, |&i| items[i as usize] == operand)
                .is_some();
            if duplicate {
                continue;
            }
            let position =
                u32::try_from(items.len()).expect("operand sets are capped far below 2^32");
            items.push(operand);
            table.insert_unique(hash, position, |&i| {
                hash_operand(&hasher, &items[i as usize])
            });
        }
        Self {
            items: items.into_boxed_slice(),
            index: Some(Box::new(SetIndex { hasher, table })),
        }
    }

    /// The distinct items.
    pub(crate) fn items(&self) -> &[Operand] {
        &self.items
    }

    /// Number of distinct items.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is present.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Approximate heap bytes held.
    pub(crate) fn footprint(&self) -> usize {
        let items: usize = self.items.iter().map(Operand::footprint).sum();
        let index = self.index.as_ref().map_or(0, |index| {
            index.table.capacity() * (std::mem::size_of::<u32>() + 1)
        });
        items + index
    }

    /// The position of an item equal to `value` (per [`equals`]), if any.
    pub(crate) fn position(&self, value: Val<'_>) -> Option<usize> {
        match &self.index {
            None => self.items.iter().position(|op| equals(value, op)),
            Some(index) => {
                let hash = hash_val(&index.hasher, value);
                index
                    .table
                    .find(hash, |&i| equals(value, &self.items[i as usize]))
                    .map(|&i| i as usize)
            }
        }
    }

    /// Whether some item equals `value`.
    pub(crate) fn contains(&self, value: Val<'_>) -> bool {
        self.position(value).is_some()
    }

    /// Whether some item is the bare objectId `id` (a string).
    pub(crate) fn contains_str(&self, id: &str) -> bool {
        self.contains(Val::Str(id))
    }
}

/// `-0.0` and `0.0` are the same number; every other bit pattern is its own value (NaN never
/// equals anything, so its hash does not matter).
fn number_bits(n: f64) -> u64 {
    if n == 0.0 { 0 } else { n.to_bits() }
}

// Type tags fed before each value, so that different types with the same payload differ.
const NULL: u8 = 0;
const BOOL: u8 = 1;
const NUM: u8 = 2;
const STR: u8 = 3;
const DATE: u8 = 4;
const POINTER: u8 = 5;
const GEO: u8 = 6;
const BYTES: u8 = 7;
const FILE: u8 = 8;
const POLYGON: u8 = 9;
const ARRAY: u8 = 10;
const OBJECT: u8 = 11;
/// A value that equals no operand (a relation placeholder, a malformed polygon).
const NEVER: u8 = 12;

fn hash_operand(build: &DefaultHashBuilder, operand: &Operand) -> u64 {
    let mut hasher = build.build_hasher();
    feed_operand(build, operand, &mut hasher);
    hasher.finish()
}

fn hash_val(build: &DefaultHashBuilder, value: Val<'_>) -> u64 {
    let mut hasher = build.build_hasher();
    feed_val(build, value, &mut hasher);
    hasher.finish()
}

fn feed_operand(build: &DefaultHashBuilder, operand: &Operand, state: &mut impl Hasher) {
    match operand {
        Operand::Null => NULL.hash(state),
        Operand::Bool(b) => (BOOL, b).hash(state),
        Operand::Num(n) => (NUM, number_bits(*n)).hash(state),
        Operand::Str(s) => (STR, &**s).hash(state),
        Operand::Date(ms) => (DATE, ms).hash(state),
        Operand::Pointer { class, id } => (POINTER, &**class, &**id).hash(state),
        Operand::GeoPoint { lat, lng } => (GEO, number_bits(*lat), number_bits(*lng)).hash(state),
        Operand::Bytes(s) => (BYTES, &**s).hash(state),
        Operand::File(name) => (FILE, &**name).hash(state),
        Operand::Polygon(points) => {
            (POLYGON, points.len()).hash(state);
            for (lat, lng) in points {
                (number_bits(*lat), number_bits(*lng)).hash(state);
            }
        }
        Operand::Array(items) => {
            (ARRAY, items.len()).hash(state);
            for item in items {
                feed_operand(build, item, state);
            }
        }
        Operand::Object(entries) => {
            // Key order must not matter: entries are combined commutatively.
            let mut sum = 0u64;
            for (key, value) in entries {
                let mut entry = build.build_hasher();
                key.hash(&mut entry);
                feed_operand(build, value, &mut entry);
                sum = sum.wrapping_add(entry.finish());
            }
            (OBJECT, entries.len(), sum).hash(state);
        }
    }
}

fn feed_val(build: &DefaultHashBuilder, value: Val<'_>, state: &mut impl Hasher) {
    match value {
        Val::Null => NULL.hash(state),
        Val::Bool(b) => (BOOL, b).hash(state),
        Val::Num(n) => (NUM, number_bits(n)).hash(state),
        Val::Str(s) => (STR, s).hash(state),
        Val::Date(ms) => (DATE, ms).hash(state),
        Val::Pointer { class, id } => (POINTER, class, id).hash(state),
        Val::GeoPoint { lat, lng } => (GEO, number_bits(lat), number_bits(lng)).hash(state),
        Val::Bytes(s) => (BYTES, s).hash(state),
        Val::File(name) => (FILE, name).hash(state),
        Val::Polygon(points) => {
            let pair = |p: &Value| -> Option<(f64, f64)> {
                match p.as_array()?.as_slice() {
                    [a, b] => Some((a.as_f64()?, b.as_f64()?)),
                    _ => None,
                }
            };
            if !points.iter().all(|p| pair(p).is_some()) {
                return NEVER.hash(state);
            }
            (POLYGON, points.len()).hash(state);
            for (lat, lng) in points.iter().filter_map(pair) {
                (number_bits(lat), number_bits(lng)).hash(state);
            }
        }
        Val::Relation => NEVER.hash(state),
        Val::Array(items) => {
            (ARRAY, items.len()).hash(state);
            for item in items {
                feed_val(build, Val::of(item, false), state);
            }
        }
        Val::Object(map) => {
            let mut sum = 0u64;
            for (key, value) in map {
                let mut entry = build.build_hasher();
                key.as_str().hash(&mut entry);
                feed_val(build, Val::of(value, false), &mut entry);
                sum = sum.wrapping_add(entry.finish());
            }
            (OBJECT, map.len(), sum).hash(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn operands(values: &[Value]) -> Vec<Operand> {
        values
            .iter()
            .map(|v| Operand::from_json(v, false))
            .collect()
    }

    /// Every value equal to an item is found, small or hashed, whatever its key order.
    #[test]
    fn hashed_lookups_agree_with_equality() {
        let values = vec![
            json!(null),
            json!(true),
            json!(1),
            json!(-0.0),
            json!("a"),
            json!({"__type": "Date", "iso": "2020-01-01T00:00:00.000Z"}),
            json!({"__type": "Pointer", "className": "U", "objectId": "p"}),
            json!({"__type": "GeoPoint", "latitude": 1.5, "longitude": -2}),
            json!({"__type": "File", "name": "f.txt", "url": "x"}),
            json!({"__type": "Bytes", "base64": "aGk="}),
            json!({"__type": "Polygon", "coordinates": [[0, 0], [1, 1], [0, 1]]}),
            json!([1, "x", [2]]),
            json!({"b": {"c": [1, 2]}, "a": 1}),
        ];
        let probes = vec![
            json!(null),
            json!(true),
            json!(1.0),
            json!(0),
            json!("a"),
            json!({"iso": "2020-01-01T00:00:00.000Z", "__type": "Date"}),
            json!({"objectId": "p", "className": "U", "__type": "Pointer"}),
            json!({"__type": "GeoPoint", "longitude": -2.0, "latitude": 1.5}),
            json!({"__type": "File", "name": "f.txt", "url": "other"}),
            json!({"__type": "Bytes", "base64": "aGk="}),
            json!({"__type": "Polygon", "coordinates": [[0, 0], [1, 1], [0, 1]]}),
            json!([1, "x", [2.0]]),
            json!({"a": 1.0, "b": {"c": [1, 2]}}),
        ];
        let misses = vec![
            json!(false),
            json!(2),
            json!("b"),
            json!([1, [2], "x"]),
            json!({"a": 1}),
            json!({"__type": "Pointer", "className": "V", "objectId": "p"}),
        ];
        let mut padded = values.clone();
        padded.extend((100..120).map(|i| json!(i)));
        for set in [
            OperandSet::new(operands(&values)),
            OperandSet::new(operands(&padded)),
        ] {
            for probe in &probes {
                assert!(set.contains(Val::of(probe, false)), "{probe} not found");
            }
            for miss in &misses {
                assert!(!set.contains(Val::of(miss, false)), "{miss} found");
            }
        }
    }

    #[test]
    fn duplicates_are_kept_once() {
        let set = OperandSet::new(operands(&[json!(1), json!(1.0), json!(2)]));
        assert_eq!(set.len(), 2);
        let many: Vec<Value> = (0..100).map(|i| json!(i % 10)).collect();
        assert_eq!(OperandSet::new(operands(&many)).len(), 10);
    }
}
