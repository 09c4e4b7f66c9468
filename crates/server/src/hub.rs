//! The subscription registry and the per-event dispatch.
//!
//! For each event: the index yields the few distinct queries the object can concern; each
//! is evaluated once against the current and the original object; for every subscriber of
//! a matching query the authorization gate ([`livequery_matcher::gate::judge`]) decides,
//! with the subscriber's identity and the class's permissions now, which event it gets and
//! which fields of which object — nothing about visibility is decided here. Each distinct
//! [`VisibleObject`] is serialized once per event and shared; a recipient costs one small
//! envelope and a copy into its bounded outbox. Nothing here awaits: identities were
//! resolved at subscribe time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use livequery_matcher::date::normalize_object_dates;
use livequery_matcher::gate::{
    Change, EventType, QueryMatch, ReadOp, Reader, Skip, Subscriber, Verdict, VisibleObject, judge,
};
use livequery_matcher::{Member, Query, QueryId, Reads, Scratch, SubscriptionIndex};
use livequery_protocol::{ClassName, EncodedObject, Envelope, EventOp, RequestId, ServerMessage};
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::event::ChangeEvent;
use crate::hooks::after_event::{AfterEvents, Batch, ClassHook, EventObjects, GroupKey, Recipient};
use crate::identity::IdentityCell;
use crate::metrics::{DeliveryTally, DropReason, Metrics};
use crate::outbox::{Outbox, Push};
use crate::pubsub::ReadAhead;

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
    /// The reader now, as an owned handle (for work that awaits).
    pub fn reader_snapshot(&self) -> Arc<Reader> {
        if self.master {
            return Arc::new(Reader::master());
        }
        match &self.session {
            Some(cell) => cell.reader_arc(),
            None => Arc::new(Reader::anonymous()),
        }
    }

    /// The user behind the session token, master or not.
    pub fn session_user_id(&self) -> Option<Box<str>> {
        self.session
            .as_ref()
            .and_then(|cell| cell.reader().user_id.clone())
    }

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
    pub class_name: ClassName,
    /// `keys` projection.
    pub keys: Option<Box<[String]>>,
    /// `watch` fields.
    pub watch: Option<Box<[String]>>,
    /// Identity.
    pub identity: Identity,
    /// `get` for `{objectId: x}` clauses, `find` otherwise (from the gate's admission).
    pub op: ReadOp,
    /// Set when the subscription leaves the hub. Frames queued later than the dispatch (by
    /// an `afterLiveQueryEvent` hook's task) check it under this lock, so none follows the
    /// `unsubscribed` its connection queues after removing it.
    pub removed: parking_lot::Mutex<bool>,
}

/// A subscription handle compared by identity (the index needs `PartialEq`).
#[derive(Debug, Clone)]
pub struct SubRef(pub Arc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Searched for in its query's list on removal.
impl Member for SubRef {}

/// Per-worker reusable buffers.
#[derive(Debug, Default)]
pub struct FanOutScratch {
    index: Scratch,
    candidates: Vec<QueryId>,
}

/// The registry of all subscriptions.
#[derive(Debug)]
pub struct Hub {
    /// Read by every worker for each event (shared, never across an await); written by
    /// connection tasks when a client subscribes or unsubscribes. parking_lot's RwLock does
    /// not starve writers behind a stream of events.
    index: RwLock<SubscriptionIndex<SubRef>>,
    metrics: Arc<Metrics>,
    /// The classes with an `afterLiveQueryEvent` hook (`None`: no hook at all).
    after_events: Option<AfterEvents>,
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            index: RwLock::new(SubscriptionIndex::new()),
            metrics,
            after_events: None,
        }
    }

    /// An empty hub whose events of the classes in `after_events` go through their
    /// `afterLiveQueryEvent` hook.
    pub fn with_hooks(metrics: Arc<Metrics>, after_events: AfterEvents) -> Self {
        Self {
            after_events: Some(after_events),
            ..Self::new(metrics)
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
        *subscription.removed.lock() = true;
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

    /// Whether a message whose objects are still text ([`crate::pubsub::MessageText`]) may concern
    /// a subscription: the index is asked with only the fields it reads of the class, read
    /// from the text and dated as the ingest dates whole objects. `false` means that
    /// [`Hub::fan_out`] would find no candidate for the whole event (the index reads no
    /// other field), so it need not be read. A message already read may concern anyone.
    pub fn may_concern(&self, message: &impl ReadAhead) -> Result<bool, serde_json::Error> {
        let index = self.index.read();
        let class_name = message.class_name();
        let fields = match index.reads(class_name) {
            Reads::Nothing => return Ok(false),
            Reads::Everything => return Ok(true),
            Reads::Fields(fields) => fields,
        };
        // Every key of the message is tested: against a list, not the index's maps.
        let names: SmallVec<[&str; 8]> = fields.names().collect();
        // `updatedAt` defaults to `createdAt` when dated.
        let dated = names.contains(&"updatedAt");
        let wanted = |key: &str| names.contains(&key) || (dated && key == "createdAt");
        let Some(read) = message.read_fields(&wanted) else {
            return Ok(true);
        };
        let (mut current, mut original) = read?;
        normalize_object_dates(&mut current);
        // Only exact originals are probed (`Change::exact_original`): those of messages
        // read from text are.
        let probes: &[&_] = match &mut original {
            Some(original) => {
                normalize_object_dates(original);
                &[&current, original]
            }
            None => &[&current],
        };
        Ok(index.has_candidates(class_name, probes))
    }

    /// Delivers one event to every subscription it concerns. `write_through`: the caller
    /// has no other event waiting, so a frame is written straight to its client's socket
    /// when nothing is queued for it ([`Outbox::deliver_event`]); otherwise frames are
    /// queued, and a backlog goes out several events per write.
    pub fn fan_out(&self, event: &ChangeEvent, scratch: &mut FanOutScratch, write_through: bool) {
        let index = self.index.read();
        let mut fan_out = EventFanOut {
            write_through,
            change: event.change(),
            encoded: HashMap::new(),
            last_encoded: [None, None],
            delivered: DeliveryTally::default(),
            metrics: &self.metrics,
            received: event.received,
            hooked: self
                .after_events
                .as_ref()
                .and_then(|hooks| hooks.class(&event.class_name))
                .map(|hook| Hooked {
                    hook,
                    event,
                    batch: None,
                }),
        };
        let change = &fan_out.change;
        scratch.candidates.clear();
        let both;
        let probes: &[&_] = match change.exact_original() {
            Some(original) => {
                both = [change.current, original];
                &both
            }
            None => std::slice::from_ref(&change.current),
        };
        index.candidates(
            &event.class_name,
            probes,
            &mut scratch.index,
            &mut scratch.candidates,
        );
        self.metrics
            .candidates_evaluated
            .fetch_add(scratch.candidates.len() as u64, Relaxed);
        for &id in &scratch.candidates {
            let Some(entry) = index.get(id) else { continue };
            let query = entry.query();
            let matched = QueryMatch::evaluate(query, &fan_out.change);
            if !matched.concerns_anyone() {
                continue;
            }
            for subscriber in entry.subscribers() {
                fan_out.deliver(&subscriber.0, query, matched);
            }
        }
        self.metrics.delivered_all(&fan_out.delivered);
        if let Some(Hooked {
            hook,
            batch: Some(batch),
            ..
        }) = fan_out.hooked
        {
            hook.submit(batch);
        }
    }
}

/// An event of a class with an `afterLiveQueryEvent` hook: its recipients are collected,
/// then handed to the hook's task.
struct Hooked<'e> {
    hook: &'e ClassHook,
    event: &'e ChangeEvent,
    /// Created with the first recipient.
    batch: Option<Batch>,
}

impl Hooked<'_> {
    fn add(&mut self, key: GroupKey, recipient: Recipient) {
        let event = self.event;
        self.batch
            .get_or_insert_with(|| Batch {
                objects: Arc::new(EventObjects {
                    class_name: event.class_name.as_str().into(),
                    current: event.current.clone(),
                    original: event.original.clone(),
                    permissions: event.permissions.clone(),
                    received: event.received,
                }),
                groups: Vec::new(),
            })
            .add(key, recipient);
    }
}

/// One event on its way to its subscribers: the gate's view of it, and each distinct
/// [`VisibleObject`] encoded once and shared by every recipient that sees it.
struct EventFanOut<'e> {
    change: Change<'e>,
    encoded: HashMap<VisibleObject<'e>, EncodedObject>,
    /// The last view encoded of the current object and of the original: most recipients
    /// see what the one before them saw, found without hashing the view.
    last_encoded: [Option<(VisibleObject<'e>, EncodedObject)>; 2],
    /// The frames queued, added to the metrics once the event is dispatched.
    delivered: DeliveryTally,
    metrics: &'e Metrics,
    /// When the source handed the event over (for the delivery-latency histogram).
    received: std::time::Instant,
    /// The class's `afterLiveQueryEvent` hook, if it has one.
    hooked: Option<Hooked<'e>>,
    /// Write frames straight to the sockets when the way is clear.
    write_through: bool,
}

impl<'e> EventFanOut<'e> {
    /// The bytes of `visible`, encoded once per event.
    fn encoded(&mut self, visible: VisibleObject<'e>) -> EncodedObject {
        let slot = usize::from(!visible.is_of(self.change.current));
        if let Some((last, bytes)) = &self.last_encoded[slot]
            && *last == visible
        {
            return bytes.clone();
        }
        let bytes = self
            .encoded
            .entry(visible.clone())
            .or_insert_with_key(encode_visible)
            .clone();
        self.last_encoded[slot] = Some((visible, bytes.clone()));
        bytes
    }

    /// What the gate decides for one subscriber, queued in its outbox.
    fn deliver(&mut self, sub: &'e Arc<Subscription>, query: &'e Query, matched: QueryMatch) {
        let reader = sub.identity.reader();
        let subscriber = Subscriber {
            reader: &reader,
            op: sub.op,
            query,
            watch: sub.watch.as_deref(),
            keys: sub.keys.as_deref(),
        };
        let (event, object, original) = match judge(&self.change, &subscriber, matched) {
            Verdict::Deliver {
                event,
                object,
                original,
            } => (event, object, original),
            Verdict::Skip(skip) => {
                let reason = match skip {
                    Skip::NoEvent => return,
                    Skip::ClassDenied => DropReason::ClpDenied,
                    Skip::HiddenField => DropReason::HiddenField,
                    Skip::StaleSubqueries => DropReason::StaleSubqueries,
                };
                return self.metrics.dropped(reason);
            }
        };
        let object_is_original = !object.is_of(self.change.current);
        let with_original = original.is_some();
        let object_bytes = self.encoded(object);
        let original_bytes = original.map(|original| self.encoded(original));
        let op = event_op(event);
        let frame = ServerMessage::Event {
            op,
            envelope: &sub.envelope,
            request_id: sub.request_id,
            object: &object_bytes,
            original: original_bytes.as_ref(),
        }
        .encode();
        if let Some(hooked) = &mut self.hooked {
            let key = GroupKey {
                op,
                master: reader.master,
                user_id: reader.user_id.clone(),
                object_is_original,
                with_original,
            };
            hooked.add(
                key,
                Recipient {
                    subscription: sub.clone(),
                    frame,
                },
            );
            return;
        }
        let len = frame.len();
        let pushed = if self.write_through {
            sub.outbox
                .deliver_event(frame, self.received, &self.metrics.delivery_latency)
        } else {
            sub.outbox.push_event(frame, self.received)
        };
        match pushed {
            Push::Queued => self.delivered.add(op, len),
            Push::Overflowed => self.metrics.dropped(DropReason::SlowConsumerQueue),
            Push::Closed => {}
        }
    }
}

fn event_op(event: EventType) -> EventOp {
    match event {
        EventType::Create => EventOp::Create,
        EventType::Enter => EventOp::Enter,
        EventType::Update => EventOp::Update,
        EventType::Leave => EventOp::Leave,
        EventType::Delete => EventOp::Delete,
    }
}

/// Serializes an object as the gate lets one reader see it: the only place object fields
/// are encoded for clients (`EncodedObject::from_entries` is disallowed elsewhere).
#[allow(clippy::disallowed_methods)]
pub fn encode_visible(object: &VisibleObject<'_>) -> EncodedObject {
    EncodedObject::from_entries(object.entries())
}
