//! The subscription registry and the per-event dispatch.
//!
//! For each event: the index yields the few distinct queries the object can concern; each
//! is evaluated once against the current and the original object; for every subscriber of
//! a matching query the event is classified (create/enter/update/leave/delete), checked
//! against class-level permissions and ACLs with the subscriber's identity, and the object
//! is filtered into the subscriber's view. Each distinct view of each object is serialized
//! once per event and shared; a recipient costs one small envelope and a copy into its
//! bounded outbox. Nothing here awaits: identities were resolved at subscribe time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use livequery_matcher::auth::{
    ClassPermissions, FieldView, ReadAccess, ReadOp, Reader, acl_allows_read, pointer_fields_allow,
};
use livequery_matcher::{
    ChangeKind, Classification, Query, QueryId, Scratch, Side, SubscriptionIndex, classify,
};
use livequery_protocol::{EncodedObject, Envelope, EventOp, RequestId, ServerMessage};
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::auth::IdentityCell;
use crate::metrics::{DropReason, Metrics};
use crate::outbox::{Outbox, Push};
use crate::source::{ChangeEvent, OriginalState};

/// Who a subscription reads as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The connection presented the master key.
    pub master: bool,
    /// The session behind the subscription's token (subscription token, else connect
    /// token), if any.
    pub session: Option<Arc<IdentityCell>>,
}

static MASTER: std::sync::LazyLock<Reader> = std::sync::LazyLock::new(Reader::master);
static ANONYMOUS: std::sync::LazyLock<Reader> = std::sync::LazyLock::new(Reader::anonymous);

/// A reader borrowed for the duration of one check.
#[derive(Debug)]
pub enum ReaderRef {
    /// A static reader (master or anonymous).
    Static(&'static Reader),
    /// A session's current reader.
    Session(arc_swap::Guard<Arc<Reader>>),
}

impl std::ops::Deref for ReaderRef {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        match self {
            Self::Static(reader) => reader,
            Self::Session(guard) => guard,
        }
    }
}

impl Identity {
    /// The reader to check objects against, now.
    pub fn reader(&self) -> ReaderRef {
        if self.master {
            return ReaderRef::Static(&MASTER);
        }
        match &self.session {
            Some(cell) => ReaderRef::Session(cell.reader()),
            None => ReaderRef::Static(&ANONYMOUS),
        }
    }
}

/// One subscription, shared by the index (for dispatch) and its connection (to remove it).
#[derive(Debug)]
pub struct Subscription {
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
    /// The client's envelope (`clientId`, `installationId`).
    pub envelope: Arc<Envelope>,
    /// The client's id for this subscription.
    pub request_id: RequestId,
    /// The class watched.
    pub class_name: Arc<str>,
    /// `keys` projection.
    pub keys: Option<Box<[String]>>,
    /// `watch` fields.
    pub watch: Option<Box<[String]>>,
    /// Identity.
    pub identity: Identity,
    /// `get` for `{objectId: x}` clauses, `find` otherwise.
    pub op: ReadOp,
}

/// A subscription handle compared by identity (the index needs `PartialEq`).
#[derive(Debug, Clone)]
pub struct SubRef(pub Arc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Per-worker reusable buffers.
#[derive(Debug, Default)]
pub struct DispatchScratch {
    index: Scratch,
    candidates: Vec<QueryId>,
}

/// Which object of an event a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Which {
    Current,
    Original,
}

/// The registry of all subscriptions.
#[derive(Debug)]
pub struct Hub {
    index: RwLock<SubscriptionIndex<SubRef>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            index: RwLock::new(SubscriptionIndex::new()),
            metrics,
        }
    }

    /// Registers a subscription; returns the id of its (possibly shared) query.
    pub fn insert(&self, subscription: Arc<Subscription>, query: Query) -> QueryId {
        let mut index = self.index.write();
        let class_name = subscription.class_name.clone();
        let id = index.insert(&class_name, query, SubRef(subscription));
        self.metrics
            .subscriptions
            .store(index.subscription_count() as i64, Relaxed);
        self.metrics
            .distinct_queries
            .store(index.query_count() as i64, Relaxed);
        id
    }

    /// Removes a subscription.
    pub fn remove(&self, id: QueryId, subscription: &Arc<Subscription>) {
        let mut index = self.index.write();
        index.remove(id, &SubRef(subscription.clone()));
        self.metrics
            .subscriptions
            .store(index.subscription_count() as i64, Relaxed);
        self.metrics
            .distinct_queries
            .store(index.query_count() as i64, Relaxed);
    }

    /// A copy of a registered query (for the `query` op).
    pub fn query(&self, id: QueryId) -> Option<Query> {
        self.index.read().get(id).map(|e| e.query().clone())
    }

    /// Ends every connection with a subscription (to `class_name`, or to any class) with the
    /// error frame `error`; the clients reconnect and subscribe again.
    pub fn abort_subscribers(
        &self,
        class_name: Option<&str>,
        error: &livequery_protocol::WireError,
    ) -> usize {
        let frame = ServerMessage::Error {
            error,
            request_id: None,
        }
        .encode();
        let index = self.index.read();
        let mut outboxes: Vec<&Arc<Outbox>> = Vec::new();
        for entry in index.entries() {
            if class_name.is_some_and(|c| c != entry.class_name()) {
                continue;
            }
            for subscriber in entry.subscribers() {
                if !outboxes
                    .iter()
                    .any(|o| Arc::ptr_eq(o, &subscriber.0.outbox))
                {
                    outboxes.push(&subscriber.0.outbox);
                }
            }
        }
        for outbox in &outboxes {
            outbox.abort(frame.clone());
        }
        outboxes.len()
    }

    /// Delivers one event to every subscription it concerns.
    pub fn dispatch(&self, event: &ChangeEvent, scratch: &mut DispatchScratch) {
        let index = self.index.read();
        scratch.candidates.clear();
        let original = event
            .original
            .as_ref()
            .filter(|_| event.kind == ChangeKind::Save);
        match (original, &event.original_state) {
            (Some(original), OriginalState::Exact) => index.candidates(
                &event.class_name,
                &[&event.current, original],
                &mut scratch.index,
                &mut scratch.candidates,
            ),
            // A partial original's fields are the current's: probing the current suffices.
            _ => index.candidates(
                &event.class_name,
                &[&event.current],
                &mut scratch.index,
                &mut scratch.candidates,
            ),
        }
        if scratch.candidates.is_empty() {
            return;
        }
        self.metrics
            .candidates_evaluated
            .fetch_add(scratch.candidates.len() as u64, Relaxed);
        let permissions = event.permissions.as_deref();
        let mut views: HashMap<(Which, FieldView<'_>), EncodedObject> = HashMap::new();
        for &id in &scratch.candidates {
            let Some(entry) = index.get(id) else { continue };
            let query = entry.query();
            let current_matches = query.matches(&event.current);
            let original_matches = match (&event.original_state, original) {
                (OriginalState::Exact, None) => Known(false),
                (OriginalState::Exact, Some(original)) => Known(query.matches(original)),
                // Without the original, the match did not change when no field the query
                // reads changed.
                (OriginalState::Partial { changed }, _)
                    if !query
                        .referenced_fields()
                        .any(|f| changed.iter().any(|c| c == f)) =>
                {
                    Known(current_matches)
                }
                _ => Unknown,
            };
            if !current_matches && original_matches != Known(true) {
                continue;
            }
            for subscriber in entry.subscribers() {
                self.deliver(
                    &subscriber.0,
                    event,
                    original,
                    current_matches,
                    original_matches,
                    permissions,
                    &mut views,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver<'e>(
        &self,
        sub: &'e Subscription,
        event: &'e ChangeEvent,
        original: Option<&'e Map<String, Value>>,
        current_matches: bool,
        original_matches: Knowledge,
        permissions: Option<&'e ClassPermissions>,
        views: &mut HashMap<(Which, FieldView<'e>), EncodedObject>,
    ) {
        let reader = sub.identity.reader();
        let pointer_fields = match permissions.map(|p| p.read_access(sub.op, &reader)) {
            None | Some(ReadAccess::Granted) => None,
            Some(ReadAccess::PointerFields(fields)) => Some(fields),
            Some(ReadAccess::RequiresAuthentication | ReadAccess::Forbidden) => {
                self.metrics.dropped(DropReason::ClpDenied);
                return;
            }
        };
        let readable = |object: &Map<String, Value>| {
            acl_allows_read(object, &reader)
                && pointer_fields.is_none_or(|fields| {
                    pointer_fields_allow(object, fields, reader.user_id.as_deref())
                })
        };
        let current_readable = readable(&event.current);
        let current_side = Side {
            object: &event.current,
            matches: current_matches,
            readable: current_readable,
        };
        let classification = match (&event.original_state, original_matches) {
            (OriginalState::Exact, Known(original_matches)) => {
                let original_side = original.map(|o| Side {
                    object: o,
                    matches: original_matches,
                    readable: readable(o),
                });
                classify(
                    event.kind,
                    original_side,
                    current_side,
                    sub.watch.as_deref(),
                )
            }
            (state, original_matches) => {
                // The original's readability is known only if nothing that decides it changed.
                let access_changed = match state {
                    OriginalState::Partial { changed } => changed.iter().any(|f| {
                        f == "ACL" || pointer_fields.is_some_and(|p| p.iter().any(|pf| **pf == **f))
                    }),
                    _ => true,
                };
                let original_readable = if access_changed {
                    Unknown
                } else {
                    Known(current_readable)
                };
                match classify_uncertain(
                    original_matches,
                    original_readable,
                    current_matches && current_readable,
                    current_readable,
                ) {
                    // The `watch` rule needs only the changed fields, which are known.
                    Classification::Update
                        if matches!((state, sub.watch.as_deref()), (OriginalState::Partial { changed }, Some(watch))
                            if !watch.iter().any(|w| changed.contains(w))) =>
                    {
                        Classification::Nothing
                    }
                    other => other,
                }
            }
        };
        let (op, object, original_sent) = match classification {
            Classification::Nothing => return,
            Classification::Create => (EventOp::Create, Which::Current, None),
            Classification::Enter { with_original } => (
                EventOp::Enter,
                Which::Current,
                with_original.then_some(Which::Original),
            ),
            Classification::Update => (EventOp::Update, Which::Current, Some(Which::Original)),
            Classification::Leave { object_is_original } => (
                EventOp::Leave,
                if object_is_original {
                    Which::Original
                } else {
                    Which::Current
                },
                Some(Which::Original),
            ),
            Classification::Delete => (EventOp::Delete, Which::Current, None),
        };
        let object_of = |which: Which| match which {
            Which::Current => &event.current,
            Which::Original => original.expect("an original is only sent when the event has one"),
        };
        let mut view_of = |which: Which| -> EncodedObject {
            let object = object_of(which);
            let protected = permissions
                .map(|p| p.protected_fields(&event.class_name, &reader, Some(object)))
                .unwrap_or_default();
            let view = FieldView::new(
                &event.class_name,
                object,
                &reader,
                protected,
                sub.keys.as_deref(),
            );
            views
                .entry((which, view))
                .or_insert_with_key(|(_, view)| EncodedObject::from_entries(view.entries(object)))
                .clone()
        };
        let object_bytes = view_of(object);
        let original_bytes = original_sent.map(&mut view_of);
        let frame = ServerMessage::Event {
            op,
            envelope: &sub.envelope,
            request_id: sub.request_id,
            object: &object_bytes,
            original: original_bytes.as_ref(),
        }
        .encode();
        let len = frame.len();
        match sub.outbox.push(frame) {
            Push::Queued => self.metrics.delivered(op, len),
            Push::Overflowed => self.metrics.dropped(DropReason::SlowConsumerQueue),
            Push::Closed => {}
        }
    }
}

/// Whether something about the original is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Knowledge {
    Known(bool),
    Unknown,
}
use Knowledge::{Known, Unknown};

/// Classification when the original is only partly known (no pre-image; see
/// `OriginalState`). Only data from the current object is ever sent, and only when the reader
/// may read it now; when the transition cannot be told, a matching object is reported as
/// `enter` without original, and a possible `leave` is not reported.
fn classify_uncertain(
    original_matches: Knowledge,
    original_readable: Knowledge,
    visible_now: bool,
    current_readable: bool,
) -> Classification {
    match (original_matches, original_readable, visible_now) {
        (Known(true), Known(true), true) => Classification::Update,
        (Known(true), Known(true), false) if current_readable => Classification::Leave {
            object_is_original: false,
        },
        (Known(true), Unknown, true) => Classification::Update,
        (Known(true), Unknown, false) if current_readable => Classification::Leave {
            object_is_original: false,
        },
        (Known(false), _, true) => Classification::Enter {
            with_original: false,
        },
        (Unknown, _, true) => Classification::Enter {
            with_original: false,
        },
        _ => Classification::Nothing,
    }
}

/// The view of `object` for a subscriber, serialized: used by the `query` op, which filters
/// objects read from the database exactly as events are filtered.
pub fn filtered_object(
    class_name: &str,
    object: &Map<String, Value>,
    reader: &Reader,
    op: ReadOp,
    permissions: Option<&ClassPermissions>,
    keys: Option<&[String]>,
) -> Option<EncodedObject> {
    let pointer_fields = match permissions.map(|p| p.read_access(op, reader)) {
        None | Some(ReadAccess::Granted) => None,
        Some(ReadAccess::PointerFields(fields)) => Some(fields),
        Some(_) => return None,
    };
    if !acl_allows_read(object, reader)
        || !pointer_fields
            .is_none_or(|fields| pointer_fields_allow(object, fields, reader.user_id.as_deref()))
    {
        return None;
    }
    let protected = permissions
        .map(|p| p.protected_fields(class_name, reader, Some(object)))
        .unwrap_or_default();
    let view = FieldView::new(class_name, object, reader, protected, keys);
    Some(EncodedObject::from_entries(view.entries(object)))
}
