//! The event type: one change of one object, as the dispatch workers and the hub consume it.

use std::sync::Arc;
use std::time::Instant;

use livequery_matcher::ChangeKind;
use livequery_matcher::gate::{Change, ClassPermissions, Original};
use livequery_protocol::ClassName;
use serde_json::{Map, Value};

/// How much is known about an update's original.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OriginalState {
    /// The original is the exact previous version (parse-server messages, pre-images, the
    /// MongoDB source's object cache).
    #[default]
    Exact,
    /// Only the fields an update did not change are known (no pre-image): `original` holds
    /// them; `changed` lists the Parse fields that changed (`ACL` for permission changes).
    Partial {
        /// Changed top-level Parse fields.
        changed: Vec<String>,
    },
    /// Nothing is known of the previous version (a replace without pre-image).
    Unknown,
}

/// One change of one object, as the dispatch workers and the hub consume it.
#[derive(Debug)]
pub struct ChangeEvent {
    /// Save (create/update) or delete.
    pub kind: ChangeKind,
    /// The object's class.
    pub class_name: ClassName,
    /// The object after the change (for deletes: its last state).
    pub current: Map<String, Value>,
    /// The object before the change (updates only).
    pub original: Option<Map<String, Value>>,
    /// The class's permissions delivered with the event (parse-server sends them), if any.
    pub permissions: Option<Arc<ClassPermissions>>,
    /// How exact `original` is.
    pub original_state: OriginalState,
    /// When the source handed the event over (for lag metrics).
    pub received: Instant,
}

impl ChangeEvent {
    /// The event as the authorization gate judges it.
    pub fn change(&self) -> Change<'_> {
        let original = match &self.original_state {
            OriginalState::Exact => Original::Exact(self.original.as_ref()),
            OriginalState::Partial { changed } => match &self.original {
                Some(object) => Original::Partial { object, changed },
                None => Original::Unknown,
            },
            OriginalState::Unknown => Original::Unknown,
        };
        Change {
            kind: self.kind,
            class_name: &self.class_name,
            permissions: self.permissions.as_deref(),
            current: &self.current,
            original,
        }
    }

    /// The objectId of the changed object.
    pub fn object_id(&self) -> Option<&str> {
        self.current.get("objectId").and_then(Value::as_str)
    }
}
