//! parse-server's pub/sub message format: what parse-server publishes to Redis for its
//! LiveQuery server (`<appId>afterSave`, `<appId>afterDelete`), and what the embedded
//! source's ingest API and the MongoDB source's transform produce: `{currentParseObject,
//! originalParseObject?, classLevelPermissions?}`.

use livequery_matcher::ChangeKind;
use livequery_matcher::gate::is_identifier;
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
        let Some(Value::Object(mut current)) = map.remove("currentParseObject") else {
            return Err(MessageError::NoCurrentObject);
        };
        let identity = |o: &Map<String, Value>| {
            (
                o.get("className")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                o.get("objectId").and_then(Value::as_str).map(str::to_owned),
            )
        };
        let (Some(class), Some(id)) = identity(&current) else {
            return Err(MessageError::NoIdentity);
        };
        sanitise(&mut current);
        let original = match (kind, map.remove("originalParseObject")) {
            (ChangeKind::Save, Some(Value::Object(mut original))) => {
                if identity(&original) != (Some(class), Some(id)) {
                    // parse-server's originals carry className/objectId; accept originals
                    // without them but never one that names another object.
                    let (c, i) = identity(&original);
                    if c.is_some() || i.is_some() {
                        return Err(MessageError::Mismatch);
                    }
                    original.insert("className".into(), current["className"].clone());
                    original.insert("objectId".into(), current["objectId"].clone());
                }
                sanitise(&mut original);
                Some(original)
            }
            (_, None | Some(Value::Null)) | (ChangeKind::Delete, Some(Value::Object(_))) => None,
            (_, Some(_)) => return Err(MessageError::NotAnObject("originalParseObject")),
        };
        let permissions = match map.remove("classLevelPermissions") {
            None | Some(Value::Null) => None,
            Some(clp @ Value::Object(_)) => Some(clp),
            Some(_) => return Err(MessageError::NotAnObject("classLevelPermissions")),
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

    #[test]
    fn deletes_ignore_originals() {
        let message = Message::parse(ChangeKind::Delete, json!({"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "a"}})).unwrap();
        assert!(message.original.is_none());
    }
}
