//! Change sources: where events come from.
//!
//! A [`Source`] runs as one task, owns its connection and reconnect/backoff, and hands
//! parse-server-shaped messages to an [`EventSink`]. The sink turns them into
//! [`ChangeEvent`]s (sanitised on receipt, permissions resolved) and routes each to the
//! dispatcher shard of its object, waiting when the bounded queue is full (backpressure).

pub mod embedded;
pub mod mongo;
pub mod redis;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use async_trait::async_trait;
use livequery_matcher::gate::{ClassPermissions, Reader, is_identifier};
use livequery_matcher::{ChangeKind, Query, QueryError};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, ClassPermissionMap};
use crate::dispatch::Job;
use crate::metrics::Metrics;

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

/// One change of one object, as the dispatcher consumes it.
#[derive(Debug)]
pub struct ChangeEvent {
    /// Save (create/update) or delete.
    pub kind: ChangeKind,
    /// The object's class.
    pub class_name: Arc<str>,
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

/// How a source hands events to the server.
#[derive(Clone)]
pub struct EventSink {
    shards: Arc<[mpsc::Sender<Job>]>,
    auth: Arc<Auth>,
    hub: Arc<crate::hub::Hub>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// The dispatcher is gone (the server is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the dispatcher has stopped")]
pub struct SinkClosed;

impl EventSink {
    pub(crate) fn new(
        shards: Arc<[mpsc::Sender<Job>]>,
        auth: Arc<Auth>,
        hub: Arc<crate::hub::Hub>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            shards,
            auth,
            hub,
            metrics,
        }
    }

    /// A class schema (field types, permissions) changed.
    pub fn schema_changed(&self, class_name: &str) {
        self.metrics.invalidations_in.fetch_add(1, Relaxed);
        self.auth.invalidate_schema(class_name);
    }

    /// Records the source's own timestamp of the latest event (its commit time), for the
    /// `livequery_source_event_age_seconds` gauge.
    pub fn observe_source_time(&self, millis: i64) {
        let now = crate::auth::unix_millis();
        self.metrics
            .source_event_age_ms
            .store(u64::try_from(now - millis).unwrap_or(0), Relaxed);
    }

    /// Events may have been lost (the source's history is gone): every client subscribed to
    /// `class_name` (or to anything) gets an error frame with `reconnect: true` and is
    /// disconnected, so it subscribes again and re-reads what it shows.
    pub async fn resync(&self, class_name: Option<&str>) {
        self.metrics.resyncs.fetch_add(1, Relaxed);
        let error = livequery_protocol::WireError::new(
            livequery_protocol::ErrorCode::EventsLost,
            "Events may have been lost: the change stream's history is gone. Reconnect and query again.",
        );
        let clients = self.hub.abort_subscribers(class_name, &error);
        tracing::warn!(
            clients,
            class = class_name,
            "told clients that events may have been lost"
        );
    }

    /// The permissions an event is judged with: those it carries (parse-server sends the
    /// class's CLP with every message), else the cached ones; the server's default protected
    /// fields included.
    pub fn permissions_of(&self, message: &Message) -> Option<Arc<ClassPermissions>> {
        let class_name = message.current["className"].as_str().unwrap_or_default();
        match &message.permissions {
            Some(raw) => self.auth.event_permissions(class_name, raw),
            None => self.auth.cached_permissions(class_name),
        }
    }

    /// The permissions of a class now (looked up if not cached).
    pub async fn class_permissions(&self, class_name: &str) -> Option<Arc<ClassPermissions>> {
        self.auth.class_permissions(class_name).await
    }

    /// Delivers one message; waits while the dispatcher's queue is full.
    pub async fn publish(&self, message: Message) -> Result<(), SinkClosed> {
        let class_name: Arc<str> = message.current["className"]
            .as_str()
            .unwrap_or_default()
            .into();
        let permissions = self.permissions_of(&message);
        let event = ChangeEvent {
            kind: message.kind,
            class_name,
            current: message.current,
            original: message.original,
            permissions,
            original_state: message.original_state,
            received: Instant::now(),
        };
        self.metrics.events_in.fetch_add(1, Relaxed);
        let shard = shard_of(&event, self.shards.len());
        self.shards[shard]
            .send(Job::Event(event))
            .await
            .map_err(|_| SinkClosed)
    }

    /// Waits until every event published so far has been dispatched. Identity changes wait
    /// for it, so that events the source produced before a change are judged with the
    /// identity of before, and events after it with the new one.
    pub async fn barrier(&self) {
        let mut pending = Vec::with_capacity(self.shards.len());
        for shard in self.shards.iter() {
            let (done, wait) = tokio::sync::oneshot::channel();
            if shard.send(Job::Barrier(done)).await.is_ok() {
                pending.push(wait);
            }
        }
        for wait in pending {
            let _ = wait.await;
        }
    }

    /// A user's roles or sessions changed (parse-server's `clearCache` message).
    pub async fn clear_user(&self, user_id: &str) {
        self.metrics.invalidations_in.fetch_add(1, Relaxed);
        self.barrier().await;
        self.auth.invalidate_user(user_id).await;
    }

    /// A session token stopped (or started) being valid.
    pub async fn session_changed(&self, token: &str) {
        self.metrics.invalidations_in.fetch_add(1, Relaxed);
        self.barrier().await;
        self.auth.invalidate_token(token).await;
    }

    /// Role membership or hierarchy changed for unknown users: every identity in use is
    /// re-resolved in the background.
    pub fn roles_changed(&self) {
        self.metrics.invalidations_in.fetch_add(1, Relaxed);
        self.auth.mark_all_stale();
    }

    /// Reports whether the source is connected (drives `/health`).
    pub fn set_connected(&self, connected: bool) {
        let was = self
            .metrics
            .source_connected
            .swap(i64::from(connected), Relaxed);
        if connected && was == 0 {
            self.metrics.source_connects.fetch_add(1, Relaxed);
        }
    }
}

/// Events of one object always go to the same shard, so they stay in order.
fn shard_of(event: &ChangeEvent, shards: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.class_name.hash(&mut hasher);
    event
        .current
        .get("objectId")
        .and_then(Value::as_str)
        .hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

/// A change source.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// A short name for logs and `/health`.
    fn name(&self) -> &'static str;
    /// Delivers events into `sink` until `shutdown`; owns reconnects and backoff. Returns
    /// an error only for failures it cannot recover from.
    async fn run(
        self: Arc<Self>,
        sink: EventSink,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>;
}

/// Reads current objects, for the `query` op.
#[async_trait]
pub trait ObjectReader: Send + Sync + 'static {
    /// Up to `limit` objects of `class_name` matching `where_` (compiled: `query`), as Parse
    /// REST JSON with `className`. The server re-checks every object against the
    /// subscription's query and permissions.
    async fn find(
        &self,
        class_name: &str,
        where_: &Map<String, Value>,
        query: &Query,
        limit: usize,
    ) -> anyhow::Result<Vec<Map<String, Value>>>;
}

/// Resolves `$inQuery`, `$notInQuery`, `$select`, `$dontSelect` and `$relatedTo` against the
/// database, for sources that can.
#[async_trait]
pub trait SubqueryResolver: Send + Sync + 'static {
    /// Binds every subquery of `query` to a maintained result set, computed for `reader`
    /// (the inner objects the gate lets it count, judged with `permissions` of the inner
    /// classes). Returns the bytes the sets hold, which the subscriber's budget is charged.
    async fn bind(
        &self,
        query: &mut Query,
        reader: &Reader,
        permissions: &ClassPermissionMap,
    ) -> Result<usize, QueryError>;
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
