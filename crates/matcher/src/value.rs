//! Parse values as the matcher sees them.
//!
//! Objects arrive as Parse REST JSON: dates as `{"__type":"Date","iso":…}` except the
//! top-level `createdAt`/`updatedAt`, which are plain ISO strings; pointers, GeoPoints,
//! Files, Bytes and Polygons as `{"__type":…}` objects. [`Val`] is a borrowed, typed view
//! of one such JSON value, built without allocating; [`Operand`] is the owned, typed form
//! of a query operand, built once at compile time. Comparisons between the two follow
//! MongoDB (the store behind Parse REST `find()`): strict types, numbers compared
//! numerically, range operators only within one type bracket.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::date::parse_iso_millis;

/// A typed, borrowed view of one JSON value of an object.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    /// Milliseconds since the epoch.
    Date(i64),
    Pointer {
        class: &'a str,
        id: &'a str,
    },
    GeoPoint {
        lat: f64,
        lng: f64,
    },
    Bytes(&'a str),
    /// A file, compared by name (parse-server stores only the name).
    File(&'a str),
    /// Polygon coordinates, `[[lat, lng], …]`.
    Polygon(&'a [Value]),
    /// A relation placeholder; never equal to anything.
    Relation,
    Array(&'a [Value]),
    Object(&'a Map<String, Value>),
}

impl<'a> Val<'a> {
    /// Classifies a JSON value. `date_strings` is set for the top-level `createdAt` and
    /// `updatedAt` fields, whose values are ISO strings that compare as dates.
    pub(crate) fn of(value: &'a Value, date_strings: bool) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => {
                if date_strings && let Some(ms) = parse_iso_millis(s) {
                    return Self::Date(ms);
                }
                Self::Str(s)
            }
            Value::Array(items) => Self::Array(items),
            Value::Object(map) => Self::of_object(map),
        }
    }

    fn of_object(map: &'a Map<String, Value>) -> Self {
        let Some(Value::String(kind)) = small_get(map, "__type") else {
            return Self::Object(map);
        };
        let str_field = |key: &str| small_get(map, key).and_then(Value::as_str);
        let num_field = |key: &str| small_get(map, key).and_then(Value::as_f64);
        let typed = match kind.as_str() {
            "Date" => str_field("iso").and_then(parse_iso_millis).map(Self::Date),
            // A full object (`__type: Object`) compares like a pointer to it.
            "Pointer" | "Object" => match (str_field("className"), str_field("objectId")) {
                (Some(class), Some(id)) => Some(Self::Pointer { class, id }),
                _ => None,
            },
            "GeoPoint" => match (num_field("latitude"), num_field("longitude")) {
                (Some(lat), Some(lng)) => Some(Self::GeoPoint { lat, lng }),
                _ => None,
            },
            "Bytes" => str_field("base64").map(Self::Bytes),
            "File" => str_field("name").map(Self::File),
            "Polygon" => small_get(map, "coordinates")
                .and_then(Value::as_array)
                .map(|c| Self::Polygon(c)),
            "Relation" => Some(Self::Relation),
            _ => None,
        };
        typed.unwrap_or(Self::Object(map))
    }
}

/// Looks a key up in a map. Typed Parse values (`{"__type": …}`) have two to four keys;
/// comparing a few short strings is several times cheaper than hashing the key.
fn small_get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= 6 {
        map.iter().find_map(|(k, v)| (k == key).then_some(v))
    } else {
        map.get(key)
    }
}

/// An owned, typed query operand.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
    Date(i64),
    Pointer {
        class: Box<str>,
        id: Box<str>,
    },
    GeoPoint {
        lat: f64,
        lng: f64,
    },
    Bytes(Box<str>),
    File(Box<str>),
    /// `[(lat, lng)]`.
    Polygon(Vec<(f64, f64)>),
    Array(Vec<Operand>),
    /// Entries sorted by key, so equality ignores key order.
    Object(Vec<(Box<str>, Operand)>),
}

impl Operand {
    /// Converts a JSON operand. `date_strings` turns ISO strings into dates (operands of
    /// `createdAt`/`updatedAt`, as parse-server does with `valueAsDate`).
    pub(crate) fn from_json(value: &Value, date_strings: bool) -> Self {
        match Val::of(value, date_strings) {
            Val::Null => Self::Null,
            Val::Bool(b) => Self::Bool(b),
            Val::Num(n) => Self::Num(n),
            Val::Str(s) => Self::Str(s.into()),
            Val::Date(ms) => Self::Date(ms),
            Val::Pointer { class, id } => Self::Pointer {
                class: class.into(),
                id: id.into(),
            },
            Val::GeoPoint { lat, lng } => Self::GeoPoint { lat, lng },
            Val::Bytes(b) => Self::Bytes(b.into()),
            Val::File(name) => Self::File(name.into()),
            Val::Polygon(points) => Self::Polygon(
                points
                    .iter()
                    .filter_map(|p| {
                        let p = p.as_array()?;
                        Some((p.first()?.as_f64()?, p.get(1)?.as_f64()?))
                    })
                    .collect(),
            ),
            Val::Array(items) => {
                Self::Array(items.iter().map(|v| Self::from_json(v, false)).collect())
            }
            Val::Relation | Val::Object(_) => {
                let map = value.as_object();
                let mut entries: Vec<(Box<str>, Operand)> = map
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().into(), Self::from_json(v, false)))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Self::Object(entries)
            }
        }
    }

    /// Approximate bytes held, this value included.
    pub(crate) fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                Self::Null
                | Self::Bool(_)
                | Self::Num(_)
                | Self::Date(_)
                | Self::GeoPoint { .. } => 0,
                Self::Str(s) | Self::Bytes(s) | Self::File(s) => s.len(),
                Self::Pointer { class, id } => class.len() + id.len(),
                Self::Polygon(points) => points.len() * 16,
                Self::Array(items) => items.iter().map(Self::footprint).sum(),
                Self::Object(entries) => entries
                    .iter()
                    .map(|(key, value)| key.len() + 16 + value.footprint())
                    .sum(),
            }
    }

    /// Whether this operand can ever be range-compared (numbers, strings, dates, booleans).
    pub(crate) fn is_orderable(&self) -> bool {
        matches!(
            self,
            Self::Num(_) | Self::Str(_) | Self::Date(_) | Self::Bool(_)
        )
    }
}

/// Deep equality of an object value and an operand (MongoDB equality, except that object
/// key order is irrelevant, as in Parse).
pub(crate) fn equals(value: Val<'_>, operand: &Operand) -> bool {
    match (value, operand) {
        (Val::Null, Operand::Null) => true,
        (Val::Bool(a), Operand::Bool(b)) => a == *b,
        (Val::Num(a), Operand::Num(b)) => a == *b,
        (Val::Str(a), Operand::Str(b)) => a == &**b,
        (Val::Date(a), Operand::Date(b)) => a == *b,
        (Val::Pointer { class, id }, Operand::Pointer { class: c, id: i }) => {
            class == &**c && id == &**i
        }
        (Val::GeoPoint { lat, lng }, Operand::GeoPoint { lat: la, lng: lo }) => {
            lat == *la && lng == *lo
        }
        (Val::Bytes(a), Operand::Bytes(b)) => a == &**b,
        (Val::File(a), Operand::File(b)) => a == &**b,
        (Val::Polygon(points), Operand::Polygon(expected)) => {
            points.len() == expected.len()
                && points.iter().zip(expected).all(|(p, (la, lo))| {
                    p.as_array().is_some_and(|p| {
                        p.len() == 2 && p[0].as_f64() == Some(*la) && p[1].as_f64() == Some(*lo)
                    })
                })
        }
        (Val::Array(items), Operand::Array(expected)) => {
            items.len() == expected.len()
                && items
                    .iter()
                    .zip(expected)
                    .all(|(v, e)| equals(Val::of(v, false), e))
        }
        (Val::Object(map), Operand::Object(expected)) => {
            map.len() == expected.len()
                && expected
                    .iter()
                    .all(|(k, e)| map.get(&**k).is_some_and(|v| equals(Val::of(v, false), e)))
        }
        _ => false,
    }
}

/// Ordering of a value against an operand within one MongoDB type bracket; `None` when
/// the two are not comparable (different brackets), which makes every range test fail.
pub(crate) fn compare(value: Val<'_>, operand: &Operand) -> Option<Ordering> {
    match (value, operand) {
        (Val::Num(a), Operand::Num(b)) => a.partial_cmp(b),
        (Val::Str(a), Operand::Str(b)) => Some(a.cmp(b)),
        (Val::Date(a), Operand::Date(b)) => Some(a.cmp(b)),
        (Val::Bool(a), Operand::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Deep equality of two JSON values as JavaScript's deep-strict comparison sees them
/// after `JSON.parse` (numbers by value, object key order irrelevant).
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}
