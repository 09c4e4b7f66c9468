//! The one door into the server for every source.
//!
//! A source hands over two things, and both take one route whatever the source:
//! - change events ([`Ingest::publish`]), routed to the dispatch worker of their object
//!   (so one object's events stay in order), waiting while that worker's bounded queue is
//!   full — backpressure reaches the source;
//! - changes to how events are judged ([`Ingest::auth_changed`]): a session created or
//!   revoked, a user's roles, the role graph, a class schema. Identity changes wait until
//!   every event published before them is dispatched (a barrier), so events are judged with
//!   the identities of their time. Each change is counted once
//!   (`livequery_invalidations_total`).
//!
//! Sources that carry parse-server's own feed (Redis, the embedded ingest API) publish with
//! [`Ingest::publish_feed_message`], which also recognises the auth changes such a feed
//! implies (`_Session` and `_Role` objects); the MongoDB source reports the auth changes it
//! reads from the change stream itself.
//!
//! A message read from text ([`MessageText`], the Redis feed) is read no further than the
//! subscription index needs when no subscription may be concerned ([`Hub::may_concern`]):
//! it is counted and dropped before its text is copied or its objects read
//! ([`Ingest::publish_feed_text`]). Its permissions (parse-server sends the class's with
//! every message) are read once per distinct text (`PermissionTexts`) and still recorded
//! for every message.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use livequery_matcher::date::normalize_object_dates;
use livequery_matcher::gate::ClassPermissions;
use livequery_protocol::{ClassName, WireError};
use tokio::sync::mpsc;

use crate::event::ChangeEvent;
use crate::hub::Hub;
use crate::identity::{IdentityCache, SessionRecord};
use crate::metrics::Metrics;
use crate::pubsub::{Message, MessageText};
use crate::worker::Job;

/// Something that changes how events are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthChange<'a> {
    /// A session token started or stopped being valid (created, revoked, expired).
    Session {
        /// The token.
        token: &'a str,
    },
    /// One user's role membership changed (parse-server's `clearCache` names the user).
    UserRoles {
        /// The user's objectId.
        user_id: &'a str,
    },
    /// Role membership or hierarchy changed for users nobody named: every identity in use
    /// is re-resolved in the background.
    RoleGraph,
    /// A class schema (its permissions, its field types) changed.
    Schema {
        /// The class.
        class_name: &'a str,
    },
}

/// How sources hand events and auth changes to the server. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    /// One bounded queue per dispatch worker; an object always goes to the same one.
    shards: Arc<[mpsc::Sender<Job>]>,
    identities: Arc<IdentityCache>,
    /// For telling subscribers that events were lost.
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// The class names of recent events, shared by their events instead of allocated anew.
    class_names: Arc<ClassNames>,
    /// The permissions of recent messages, read once per distinct text.
    permission_texts: Arc<PermissionTexts>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// The dispatch workers are gone (the server is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the dispatch workers have stopped")]
pub struct IngestClosed;

impl Ingest {
    pub(crate) fn new(
        shards: Arc<[mpsc::Sender<Job>]>,
        identities: Arc<IdentityCache>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            shards,
            identities,
            hub,
            metrics,
            class_names: Arc::default(),
            permission_texts: Arc::default(),
        }
    }

    /// Applies one auth change; identity changes first wait for the events published
    /// before them.
    pub async fn auth_changed(&self, change: AuthChange<'_>) {
        self.metrics.invalidations_in.fetch_add(1, Relaxed);
        match change {
            AuthChange::Session { token } => {
                self.barrier().await;
                self.identities.invalidate_token(token).await;
            }
            AuthChange::UserRoles { user_id } => {
                self.barrier().await;
                self.identities.invalidate_user(user_id).await;
            }
            AuthChange::RoleGraph => self.identities.mark_all_stale(),
            AuthChange::Schema { class_name } => self.identities.invalidate_schema(class_name),
        }
    }

    /// Publishes a message of parse-server's own feed, after the auth changes it implies:
    /// a `_Session` object creates or revokes its token; a `_Role` object may change
    /// membership for users the message does not name (parse-server's `clearCache` only
    /// names the user who made the change, and master-key edits publish nothing).
    pub async fn publish_feed_message(&self, mut message: Message) -> Result<(), IngestClosed> {
        match message.class_name() {
            "_Session" => {
                if let Err(err) = message.read_objects() {
                    tracing::warn!(error = %err, "ignoring a parse-server message that is not valid JSON");
                    return Ok(());
                }
                if let Some(session) = SessionRecord::from_object(&message.current) {
                    self.auth_changed(AuthChange::Session {
                        token: &session.token,
                    })
                    .await;
                }
            }
            "_Role" => self.auth_changed(AuthChange::RoleGraph).await,
            _ => {}
        }
        self.publish(message).await
    }

    /// Records the source's own timestamp of an event (its commit time), for the
    /// `livequery_source_lag_seconds` histogram (a clock behind ours counts as no lag).
    pub fn observe_source_time(&self, millis: i64) {
        let now = crate::clock::unix_millis();
        let lag = u64::try_from(now.saturating_sub(millis)).unwrap_or(0);
        self.metrics
            .source_lag
            .observe(std::time::Duration::from_millis(lag));
    }

    /// Events may have been lost (the source's history is gone): every client subscribed to
    /// `class_name` (or to anything) gets an error frame with `reconnect: true` and is
    /// disconnected, so it subscribes again and re-reads what it shows.
    pub async fn resync(&self, class_name: Option<&str>) {
        self.metrics.resyncs.fetch_add(1, Relaxed);
        let clients = self
            .hub
            .abort_subscribers(class_name, &WireError::events_lost());
        tracing::warn!(
            clients,
            class = class_name,
            "told clients that events may have been lost"
        );
    }

    /// The permissions an event is judged with: those it carries (parse-server sends the
    /// class's CLP with every message), else the cached ones; the server's default protected
    /// fields included. `None` too when the permissions it carries as text are not valid.
    pub fn permissions_of(&self, message: &Message) -> Option<Arc<ClassPermissions>> {
        self.carried_permissions(message).ok().flatten()
    }

    /// [`Ingest::permissions_of`], failing when the permissions a message carries as text
    /// cannot be read.
    fn carried_permissions(
        &self,
        message: &Message,
    ) -> Result<Option<Arc<ClassPermissions>>, serde_json::Error> {
        if let Some(text) = message.permissions_text() {
            return self.permissions_from_text(message.class_name(), text);
        }
        Ok(match &message.permissions {
            Some(raw) => self.identities.event_permissions(message.class_name(), raw),
            None => self.identities.cached_permissions(message.class_name()),
        })
    }

    /// The permissions of an event of `class_name` carrying them as `text`.
    fn permissions_from_text(
        &self,
        class_name: &str,
        text: &str,
    ) -> Result<Option<Arc<ClassPermissions>>, serde_json::Error> {
        let raw = self.permission_texts.get(text)?;
        Ok(self.identities.shared_event_permissions(class_name, &raw))
    }

    /// Whether a message still text may concern a subscription ([`Hub::may_concern`]); one
    /// that may not is counted as received, one that is not valid JSON logged; both are
    /// then dropped by the caller.
    fn may_concern(&self, message: &impl crate::pubsub::ReadAhead) -> bool {
        match self.hub.may_concern(message) {
            Ok(true) => true,
            Ok(false) => {
                self.metrics.events_in.fetch_add(1, Relaxed);
                false
            }
            Err(err) => {
                invalid_message(&err);
                false
            }
        }
    }

    /// The permissions of a class now (looked up if not cached).
    pub async fn class_permissions(&self, class_name: &str) -> Option<Arc<ClassPermissions>> {
        self.identities.class_permissions(class_name).await
    }

    /// Publishes a message of parse-server's feed still as text, borrowed from the
    /// source's buffer (the Redis feed): as [`Ingest::publish_feed_message`] would publish
    /// it, but one that no subscription may concern ([`Hub::may_concern`]) is counted and
    /// dropped, once its permissions are recorded, before its text is copied or its
    /// objects read; one that is not valid JSON after all is dropped (as
    /// [`MessageText::read`] refuses others).
    pub async fn publish_feed_text(&self, text: MessageText<'_>) -> Result<(), IngestClosed> {
        if matches!(text.class_name(), "_Session" | "_Role") {
            return self.publish_feed_message(text.into_message()).await;
        }
        let permissions = match text
            .permissions_text()
            .map(|permissions| self.permissions_from_text(text.class_name(), permissions))
        {
            Some(Ok(permissions)) => permissions,
            Some(Err(err)) => {
                invalid_message(&err);
                return Ok(());
            }
            None => self.identities.cached_permissions(text.class_name()),
        };
        if !self.may_concern(&text) {
            return Ok(());
        }
        let mut message = text.into_message();
        if let Err(err) = message.read_objects() {
            invalid_message(&err);
            return Ok(());
        }
        self.dispatch(message, permissions).await
    }

    /// Delivers one message; waits while its dispatch worker's queue is full.
    ///
    /// Whatever the source, the objects' dates are first re-encoded as the reference's
    /// `Parse.Object` round trip writes them (UTC with milliseconds, `updatedAt` defaulting
    /// to `createdAt`): once per event, before matching and before any recipient's bytes.
    ///
    /// A message still text is dropped, once its permissions are recorded, when no
    /// subscription may be concerned ([`Hub::may_concern`]), and read otherwise; one that
    /// is not valid JSON after all is dropped (as [`Message::from_json`] drops others).
    pub async fn publish(&self, mut message: Message) -> Result<(), IngestClosed> {
        let permissions = match self.carried_permissions(&message) {
            Ok(permissions) => permissions,
            Err(err) => {
                invalid_message(&err);
                return Ok(());
            }
        };
        if message.is_unread() {
            if !self.may_concern(&message) {
                return Ok(());
            }
            if let Err(err) = message.read_objects() {
                invalid_message(&err);
                return Ok(());
            }
        }
        self.dispatch(message, permissions).await
    }

    /// Dates a message's objects and hands it as an event to its dispatch worker.
    async fn dispatch(
        &self,
        mut message: Message,
        permissions: Option<Arc<ClassPermissions>>,
    ) -> Result<(), IngestClosed> {
        normalize_object_dates(&mut message.current);
        // A partly known original lacks the fields that changed (`updatedAt` among them):
        // nothing may be filled in for it.
        if message.original_state == crate::event::OriginalState::Exact
            && let Some(original) = &mut message.original
        {
            normalize_object_dates(original);
        }
        let class_name = self.class_names.get(message.class_name());
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
            .map_err(|_| IngestClosed)
    }

    /// Waits until every event published so far has been dispatched.
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

/// Logs a message dropped because part of its text is not valid JSON after all (the part
/// [`Message::from_json`] did not read: a lone surrogate escape, a number out of range).
fn invalid_message(err: &serde_json::Error) {
    tracing::warn!(error = %err, "ignoring a parse-server message that is not valid JSON");
}

/// Events of one object always go to the same worker, so they stay in order.
fn shard_of(event: &ChangeEvent, shards: usize) -> usize {
    if shards == 1 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.class_name.hash(&mut hasher);
    event.object_id().hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

/// The names of the classes events were published for: a class's events share one
/// [`ClassName`] instead of allocating it per event. At most [`ClassNames::MAX`] are kept;
/// beyond that a new name replaces the oldest kept one.
#[derive(Debug, Default)]
struct ClassNames(parking_lot::Mutex<ClassNameRing>);

#[derive(Debug, Default)]
struct ClassNameRing {
    names: Vec<ClassName>,
    /// The slot the next name replaces once `names` is full.
    next: usize,
}

impl ClassNames {
    const MAX: usize = 64;

    fn get(&self, name: &str) -> ClassName {
        let mut ring = self.0.lock();
        if let Some(known) = ring.names.iter().find(|known| known.as_str() == name) {
            return known.clone();
        }
        let class_name = ClassName::from(name);
        if ring.names.len() < Self::MAX {
            ring.names.push(class_name.clone());
        } else {
            let slot = ring.next;
            ring.names[slot] = class_name.clone();
            ring.next = (slot + 1) % Self::MAX;
        }
        class_name
    }
}

/// The permissions of recent messages by their text: parse-server sends a class's CLP
/// with each of its messages, the same text each time, read here once. At most
/// [`PermissionTexts::MAX`] texts of at most [`PermissionTexts::MAX_TEXT`] bytes are kept;
/// beyond that a new text replaces the oldest kept one, and a longer one is read each time.
/// A text is read to the same value whenever read: nothing kept ever needs invalidating
/// (what the permissions mean for a class is the identity cache's concern).
#[derive(Debug, Default)]
struct PermissionTexts(parking_lot::Mutex<PermissionTextRing>);

#[derive(Debug, Default)]
struct PermissionTextRing {
    texts: Vec<(Box<str>, Arc<serde_json::Value>)>,
    /// The slot the next text replaces once `texts` is full.
    next: usize,
}

impl PermissionTexts {
    const MAX: usize = 64;
    const MAX_TEXT: usize = 16 * 1024;

    fn get(&self, text: &str) -> Result<Arc<serde_json::Value>, serde_json::Error> {
        if let Some((_, value)) = self
            .0
            .lock()
            .texts
            .iter()
            .find(|(known, _)| &**known == text)
        {
            return Ok(value.clone());
        }
        let value: Arc<serde_json::Value> = Arc::new(serde_json::from_str(text)?);
        if text.len() > Self::MAX_TEXT {
            return Ok(value);
        }
        let mut ring = self.0.lock();
        let entry = (Box::from(text), value.clone());
        if ring.texts.len() < Self::MAX {
            ring.texts.push(entry);
        } else {
            let slot = ring.next;
            ring.texts[slot] = entry;
            ring.next = (slot + 1) % Self::MAX;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_texts_are_read_once_and_bounded() {
        let texts = PermissionTexts::default();
        let clp = r#"{"find": {"*": true}, "protectedFields": {"*": ["secret"]}}"#;
        let first = texts.get(clp).unwrap();
        assert_eq!(
            *first,
            serde_json::from_str::<serde_json::Value>(clp).unwrap()
        );
        assert!(Arc::ptr_eq(&first, &texts.get(clp).unwrap()), "read once");
        // Another text is another value, even when it reads the same.
        let spaced = r#"{"find": {"*": true},  "protectedFields": {"*": ["secret"]}}"#;
        let other = texts.get(spaced).unwrap();
        assert_eq!(*other, *first);
        assert!(!Arc::ptr_eq(&first, &other));
        let changed = texts.get(r#"{"find": {}}"#).unwrap();
        assert_eq!(*changed, serde_json::json!({"find": {}}));
        assert!(texts.get(r#"{"find": "\ud800"}"#).is_err());
        for i in 0..PermissionTexts::MAX * 2 {
            let text = format!(r#"{{"find": {{"role:{i}": true}}}}"#);
            assert_eq!(texts.get(&text).unwrap()["find"][format!("role:{i}")], true);
        }
        assert_eq!(texts.0.lock().texts.len(), PermissionTexts::MAX);
        // A text beyond the size kept is read each time, never kept.
        let long = format!(
            r#"{{"find": {{"{}": true}}}}"#,
            "r".repeat(PermissionTexts::MAX_TEXT)
        );
        let read = texts.get(&long).unwrap();
        assert!(!Arc::ptr_eq(&read, &texts.get(&long).unwrap()));
        assert!(
            texts
                .0
                .lock()
                .texts
                .iter()
                .all(|(text, _)| text.len() <= PermissionTexts::MAX_TEXT)
        );
        // A replaced text comes back.
        assert_eq!(*texts.get(clp).unwrap(), *first);
    }

    #[test]
    fn class_names_are_shared_and_bounded() {
        let names = ClassNames::default();
        let first = names.get("Room");
        let again = names.get("Room");
        assert_eq!(first, again);
        assert!(std::ptr::eq(first.as_str(), again.as_str()));
        for i in 0..ClassNames::MAX * 2 {
            assert_eq!(names.get(&format!("C{i}")).as_str(), format!("C{i}"));
        }
        assert_eq!(names.0.lock().names.len(), ClassNames::MAX);
        // The busiest class comes back after being replaced.
        let replaced = names.get("Room");
        assert_eq!(replaced.as_str(), "Room");
        assert!(std::ptr::eq(replaced.as_str(), names.get("Room").as_str()));
    }
}
