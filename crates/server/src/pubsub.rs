//! parse-server's pub/sub message format: what parse-server publishes to Redis for its
//! LiveQuery server (`<appId>afterSave`, `<appId>afterDelete`), and what the embedded
//! source's ingest API and the MongoDB source's transform produce: `{currentParseObject,
//! originalParseObject?, classLevelPermissions?}`.
//!
//! A message that arrives as text (the Redis feed) is read straight into its parts
//! ([`Message::from_json`]): no JSON tree of the whole message is built, and the keys a
//! message drops on receipt are skipped while reading.

use std::fmt;

use livequery_matcher::ChangeKind;
use livequery_matcher::gate::is_identifier;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::event::OriginalState;

/// Why a message could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a JSON object with a `currentParseObject` object.
    #[error("message must be an object with a currentParseObject object")]
    NoCurrentObject,
    /// `currentParseObject` lacks a string `className` or `objectId`.
    #[error("currentParseObject needs string className and objectId")]
    NoIdentity,
    /// `originalParseObject` or `classLevelPermissions` is not an object.
    #[error("{0} must be an object")]
    NotAnObject(&'static str),
    /// `originalParseObject` describes another object.
    #[error("originalParseObject must have the same className and objectId as currentParseObject")]
    Mismatch,
}

/// The objects of a parse-server pub/sub message (`afterSave`/`afterDelete`), before the
/// permissions are resolved.
#[derive(Debug)]
pub struct Message {
    /// Save or delete.
    pub kind: ChangeKind,
    /// `currentParseObject`, sanitised.
    pub current: Map<String, Value>,
    /// `originalParseObject`, sanitised (saves only).
    pub original: Option<Map<String, Value>>,
    /// `classLevelPermissions`.
    pub permissions: Option<Value>,
    /// How exact `original` is.
    pub original_state: OriginalState,
}

impl Message {
    /// The class of the changed object (`currentParseObject.className`, checked when the
    /// message was parsed).
    pub fn class_name(&self) -> &str {
        self.current
            .get("className")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// An object's `className` and `objectId`, when they are strings.
fn identity(object: &Map<String, Value>) -> (Option<&str>, Option<&str>) {
    (
        object.get("className").and_then(Value::as_str),
        object.get("objectId").and_then(Value::as_str),
    )
}

/// Drops every top-level key that is not identifier-like (`_hashed_password`, `_rperm`,
/// `__type`, …), as the reference does on receipt: such keys can then never be matched,
/// watched or sent.
fn sanitise(object: &mut Map<String, Value>) {
    object.retain(|key, _| is_identifier(key));
}

impl Message {
    /// Parses parse-server's message `{currentParseObject, originalParseObject?,
    /// classLevelPermissions?}`.
    pub fn parse(kind: ChangeKind, value: Value) -> Result<Self, MessageError> {
        let Value::Object(mut map) = value else {
            return Err(MessageError::NoCurrentObject);
        };
        let current = match map.remove("currentParseObject") {
            Some(Value::Object(mut current)) => {
                sanitise(&mut current);
                Some(current)
            }
            _ => None,
        };
        let original = match map.remove("originalParseObject") {
            Some(Value::Object(mut original)) => {
                sanitise(&mut original);
                Part::Object(original)
            }
            None | Some(Value::Null) => Part::Absent,
            Some(_) => Part::NotAnObject,
        };
        let permissions = match map.remove("classLevelPermissions") {
            Some(clp @ Value::Object(_)) => Part::Object(clp),
            None | Some(Value::Null) => Part::Absent,
            Some(_) => Part::NotAnObject,
        };
        Self::from_parts(
            kind,
            Parts {
                current,
                original,
                permissions,
            },
        )
    }

    /// Reads parse-server's message from its JSON text, as [`Message::parse`] would read
    /// its JSON value, without building the value first.
    pub fn from_json(kind: ChangeKind, text: &[u8]) -> Result<Self, FromJsonError> {
        let mut reader = serde_json::Deserializer::from_slice(text);
        let parts = Parts::deserialize(&mut reader).map_err(FromJsonError::Json)?;
        reader.end().map_err(FromJsonError::Json)?;
        Self::from_parts(kind, parts).map_err(FromJsonError::Message)
    }

    /// Checks a message's parts (top-level keys already sanitised) and builds it.
    fn from_parts(kind: ChangeKind, parts: Parts) -> Result<Self, MessageError> {
        let Some(current) = parts.current else {
            return Err(MessageError::NoCurrentObject);
        };
        let (Some(_), Some(_)) = identity(&current) else {
            return Err(MessageError::NoIdentity);
        };
        let original = match (kind, parts.original) {
            (ChangeKind::Save, Part::Object(mut original)) => {
                if identity(&original) != identity(&current) {
                    // parse-server's originals carry className/objectId; accept originals
                    // without them but never one that names another object.
                    let (c, i) = identity(&original);
                    if c.is_some() || i.is_some() {
                        return Err(MessageError::Mismatch);
                    }
                    original.insert("className".into(), current["className"].clone());
                    original.insert("objectId".into(), current["objectId"].clone());
                }
                Some(original)
            }
            (_, Part::Absent) | (ChangeKind::Delete, Part::Object(_)) => None,
            (_, Part::NotAnObject) => {
                return Err(MessageError::NotAnObject("originalParseObject"));
            }
        };
        let permissions = match parts.permissions {
            Part::Absent => None,
            Part::Object(clp) => Some(clp),
            Part::NotAnObject => return Err(MessageError::NotAnObject("classLevelPermissions")),
        };
        Ok(Self {
            kind,
            current,
            original,
            permissions,
            original_state: OriginalState::Exact,
        })
    }
}

/// Why a message's JSON text could not become an event.
#[derive(Debug, thiserror::Error)]
pub enum FromJsonError {
    /// Not JSON text.
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// JSON, but not a parse-server message.
    #[error(transparent)]
    Message(MessageError),
}

/// The three parts of a message, top-level keys of its objects sanitised.
#[derive(Debug, Default)]
struct Parts {
    /// `currentParseObject` when it is an object.
    current: Option<Map<String, Value>>,
    /// `originalParseObject`.
    original: Part<Map<String, Value>>,
    /// `classLevelPermissions`.
    permissions: Part<Value>,
}

/// An optional part of a message that must be an object when present.
#[derive(Debug, Default)]
enum Part<T> {
    /// Absent or `null`.
    #[default]
    Absent,
    /// An object.
    Object(T),
    /// Any other JSON value.
    NotAnObject,
}

impl<'de> Deserialize<'de> for Parts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PartsVisitor)
    }
}

struct PartsVisitor;

impl<'de> Visitor<'de> for PartsVisitor {
    type Value = Parts;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a parse-server message object")
    }

    // Any other JSON value is a message without a `currentParseObject` object.
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Parts, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Parts::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Parts, E> {
        Ok(Parts::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Parts, E> {
        Ok(Parts::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Parts, E> {
        Ok(Parts::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Parts, E> {
        Ok(Parts::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Parts, E> {
        Ok(Parts::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Parts, E> {
        Ok(Parts::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        let mut parts = Parts::default();
        // A repeated key counts once, its last value winning (as in a JSON value).
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match &*key {
                "currentParseObject" => {
                    parts.current = map.next_value_seed(PartSeed)?.into_object();
                }
                "originalParseObject" => parts.original = map.next_value_seed(PartSeed)?,
                "classLevelPermissions" => {
                    parts.permissions = match map.next_value::<Value>()? {
                        Value::Null => Part::Absent,
                        clp @ Value::Object(_) => Part::Object(clp),
                        _ => Part::NotAnObject,
                    };
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

impl<T> Part<T> {
    fn into_object(self) -> Option<T> {
        match self {
            Self::Object(object) => Some(object),
            Self::Absent | Self::NotAnObject => None,
        }
    }
}

/// A key, borrowed from the text unless it holds escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(key))
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(key.to_owned()))
    }
    fn visit_string<E: de::Error>(self, key: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(key))
    }
}

/// A Parse object of a message: its top-level keys that are not identifier-like are
/// skipped as they are read (see [`sanitise`]).
struct PartSeed;

/// Room for a typical Parse object's fields without growing the map while reading it.
const TYPICAL_FIELDS: usize = 16;

impl<'de> DeserializeSeed<'de> for PartSeed {
    type Value = Part<Map<String, Value>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(PartVisitor)
    }
}

struct PartVisitor;

impl<'de> Visitor<'de> for PartVisitor {
    type Value = Part<Map<String, Value>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Parse object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Part::Absent)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Part::NotAnObject)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = Map::with_capacity(TYPICAL_FIELDS);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if is_identifier(&key) {
                object.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Part::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_parse_server_messages() {
        let message = Message::parse(ChangeKind::Save, json!({
            "currentParseObject": {"n": 1, "_hashed_password": "x", "__type": "Object", "className": "T", "objectId": "o", "createdAt": "c"},
            "originalParseObject": {"n": 0, "__type": "Object", "className": "T", "objectId": "o"},
            "classLevelPermissions": {"find": {"*": true}}
        })).unwrap();
        assert_eq!(
            Value::Object(message.current),
            json!({"n": 1, "className": "T", "objectId": "o", "createdAt": "c"})
        );
        assert_eq!(
            Value::Object(message.original.unwrap()),
            json!({"n": 0, "className": "T", "objectId": "o"})
        );
        assert!(message.permissions.is_some());
    }

    #[test]
    fn rejects_malformed_messages() {
        assert_eq!(
            Message::parse(ChangeKind::Save, json!([])).unwrap_err(),
            MessageError::NoCurrentObject
        );
        assert_eq!(
            Message::parse(
                ChangeKind::Save,
                json!({"currentParseObject": {"className": "T"}})
            )
            .unwrap_err(),
            MessageError::NoIdentity
        );
        assert_eq!(
            Message::parse(ChangeKind::Save, json!({"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "b"}})).unwrap_err(),
            MessageError::Mismatch
        );
        assert_eq!(
            Message::parse(ChangeKind::Save, json!({"currentParseObject": {"className": "T", "objectId": "a"}, "classLevelPermissions": 5})).unwrap_err(),
            MessageError::NotAnObject("classLevelPermissions")
        );
    }

    /// Reading the text and reading its JSON value give the same message or the same error.
    fn assert_same_reading(kind: ChangeKind, text: &str) {
        let value: Value = serde_json::from_str(text).unwrap();
        let from_value = Message::parse(kind, value);
        let from_text = Message::from_json(kind, text.as_bytes());
        match (from_value, from_text) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.kind, b.kind, "{text}");
                // Key order included: frames must keep the published order.
                let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
                assert_eq!(keys(&a.current), keys(&b.current), "{text}");
                assert_eq!(a.current, b.current, "{text}");
                assert_eq!(a.original.as_ref().map(keys), b.original.as_ref().map(keys));
                assert_eq!(a.original, b.original, "{text}");
                assert_eq!(a.permissions, b.permissions, "{text}");
            }
            (Err(a), Err(FromJsonError::Message(b))) => assert_eq!(a, b, "{text}"),
            (a, b) => panic!("{text}: {a:?} vs {b:?}"),
        }
    }

    #[test]
    fn text_and_value_read_alike() {
        let cases = [
            r#"{"currentParseObject": {"z": 1, "_hashed_password": "x", "a": {"__type": "Date", "iso": "2020-01-01T00:00:00.000Z"}, "__type": "Object", "className": "T", "objectId": "o", "b\u0041": [1, {"_x": 2}]}, "originalParseObject": {"z": 0, "__type": "Object"}, "classLevelPermissions": {"find": {"*": true}}, "other": [1, 2]}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "o", "n": 1, "n": 2}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "currentParseObject": {"className": "T", "objectId": "b"}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": null, "classLevelPermissions": null}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "b"}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": [1]}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": "x"}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "classLevelPermissions": 5}"#,
            r#"{"currentParseObject": {"className": "T"}}"#,
            r#"{"currentParseObject": {"className": 1, "objectId": "a"}}"#,
            r#"{"currentParseObject": [{"className": "T", "objectId": "a"}]}"#,
            r#"{"currentParseObject": null}"#,
            r#"{}"#,
            r#"[]"#,
            r#"[{"currentParseObject": {"className": "T", "objectId": "a"}}]"#,
            r#""text""#,
            r#"12"#,
            r#"null"#,
            r#"true"#,
        ];
        for text in cases {
            assert_same_reading(ChangeKind::Save, text);
            assert_same_reading(ChangeKind::Delete, text);
        }
    }

    #[test]
    fn invalid_text_is_a_json_error() {
        for text in [
            "",
            "{",
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}} x"#,
            "nul",
        ] {
            assert!(
                matches!(
                    Message::from_json(ChangeKind::Save, text.as_bytes()),
                    Err(FromJsonError::Json(_))
                ),
                "{text}"
            );
        }
        assert!(matches!(
            Message::from_json(
                ChangeKind::Save,
                b"{\"currentParseObject\": {\"className\": \"T\", \"objectId\": \"\xff\"}}"
            ),
            Err(FromJsonError::Json(_))
        ));
    }

    #[test]
    fn deletes_ignore_originals() {
        let message = Message::parse(ChangeKind::Delete, json!({"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "a"}})).unwrap();
        assert!(message.original.is_none());
    }
}
