//! The subscription registry and the per-event dispatch.
//!
//! For each event: the index yields the few distinct queries the object can concern; each
//! is evaluated once against the current and the original object; for every subscriber of
//! a matching query the authorization gate ([`livequery_matcher::gate::judge`]) decides,
//! with the subscriber's identity and the class's permissions now, which event it gets and
//! which fields of which object — nothing about visibility is decided here. Each distinct
//! [`VisibleObject`] is serialized once per event and shared; a recipient's frame is an
//! [`EventFrame`] in its bounded outbox: its op, envelope and request id, and a handle to
//! the shared bytes (no allocation, no copy of the object). Nothing here awaits:
//! identities were resolved at subscribe time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use livequery_matcher::date::normalize_object_dates;
use livequery_matcher::gate::{
    Change, EventType, QueryMatch, ReadOp, Reader, Skip, Subscriber, Verdict, VisibleObject, judge,
};
use livequery_matcher::{Member, Query, QueryId, Reads, Scratch, SubscriptionIndex};
use livequery_protocol::{ClassName, EncodedObject, Envelope, EventOp, RequestId, ServerMessage};
use livequery_protocol::{EventFrame, FrameObjects};
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::event::ChangeEvent;
use crate::hooks::after_event::{AfterEvents, Batch, ClassHook, EventObjects, GroupKey, Recipient};
use crate::identity::IdentityCell;
use crate::metrics::{DeliveryTally, DropReason, Metrics};
use crate::outbox::{Outbox, Push, WritePass};
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
///
/// Every idle connection holds one, so it is kept small: its class is not kept here (the
/// index holds one name per class, [`livequery_matcher::Entry::class_name`]), and the
/// rarely used projection is boxed apart.
#[derive(Debug)]
pub struct Subscription {
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
    /// The client's envelope (`clientId`, `installationId`).
    pub envelope: Arc<Envelope>,
    /// The client's id for this subscription.
    pub request_id: RequestId,
    /// `keys` and `watch`, when either is given.
    projection: Option<Box<Projection>>,
    /// Identity.
    pub identity: Identity,
    /// `get` for `{objectId: x}` clauses, `find` otherwise (from the gate's admission).
    pub op: ReadOp,
    /// Set when the subscription leaves the hub. Frames queued later than the dispatch (by
    /// an `afterLiveQueryEvent` hook's task) check it under this lock, so none follows the
    /// `unsubscribed` its connection queues after removing it.
    pub removed: parking_lot::Mutex<bool>,
    /// Where the index keeps it among its query's subscribers ([`Member`]): written under
    /// the hub's write lock only.
    place: AtomicU32,
    /// Its query in the index.
    query_id: QueryId,
    /// The `where` as JSON text, kept only when the `query` op can use it.
    pub where_text: Option<Box<str>>,
    /// Bytes charged to its connection's budget (`limits.max_subscription_bytes`).
    pub footprint: usize,
}

/// What a subscription is made of, before the hub gives it its query's id.
#[derive(Debug)]
pub struct NewSubscription {
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
    /// The client's envelope (`clientId`, `installationId`).
    pub envelope: Arc<Envelope>,
    /// The client's id for this subscription.
    pub request_id: RequestId,
    /// What the request asked for and the gate admitted.
    pub terms: SubscriptionTerms,
}

/// What a `subscribe` request asked for and the gate admitted, ready to register.
#[derive(Debug)]
pub struct SubscriptionTerms {
    /// `keys` projection.
    pub keys: Option<Vec<String>>,
    /// `watch` fields.
    pub watch: Option<Vec<String>>,
    /// Identity.
    pub identity: Identity,
    /// `get` or `find` (from the gate's admission).
    pub op: ReadOp,
    /// The `where` as JSON text, when kept.
    pub where_text: Option<Box<str>>,
    /// Bytes charged to the connection's budget.
    pub footprint: usize,
}

/// A subscription's `keys` projection and `watch` fields.
#[derive(Debug)]
struct Projection {
    keys: Option<Box<[String]>>,
    watch: Option<Box<[String]>>,
}

impl Subscription {
    fn new(new: NewSubscription, query_id: QueryId) -> Self {
        let NewSubscription {
            outbox,
            envelope,
            request_id,
            terms:
                SubscriptionTerms {
                    keys,
                    watch,
                    identity,
                    op,
                    where_text,
                    footprint,
                },
        } = new;
        let projection = (keys.is_some() || watch.is_some()).then(|| {
            Box::new(Projection {
                keys: keys.map(Vec::into_boxed_slice),
                watch: watch.map(Vec::into_boxed_slice),
            })
        });
        Self {
            outbox,
            envelope,
            request_id,
            projection,
            identity,
            op,
            removed: parking_lot::Mutex::new(false),
            place: AtomicU32::new(u32::MAX),
            query_id,
            where_text,
            footprint,
        }
    }

    /// `keys` projection.
    pub fn keys(&self) -> Option<&[String]> {
        self.projection.as_ref()?.keys.as_deref()
    }

    /// `watch` fields.
    pub fn watch(&self) -> Option<&[String]> {
        self.projection.as_ref()?.watch.as_deref()
    }
}

/// A subscription handle compared by identity (the index needs `PartialEq`).
#[derive(Debug, Clone)]
pub struct SubRef(pub Arc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A subscription remembers its place, so that leaving a query shared by many is O(1).
impl Member for SubRef {
    fn place(&self) -> Option<usize> {
        Some(self.0.place.load(Relaxed) as usize)
    }

    fn set_place(&self, place: usize) {
        // Beyond u32 (never in practice) the hint is wrong and the index searches.
        self.0
            .place
            .store(u32::try_from(place).unwrap_or(u32::MAX), Relaxed);
    }
}

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

    /// Registers a subscription to `query` on `class_name` (its query possibly shared).
    pub fn insert(
        &self,
        class_name: &str,
        query: Query,
        subscription: NewSubscription,
    ) -> Arc<Subscription> {
        let mut index = self.index.write();
        let mut made = None;
        index.insert_with(class_name, query, |query_id| {
            let subscription = Arc::new(Subscription::new(subscription, query_id));
            made = Some(subscription.clone());
            SubRef(subscription)
        });
        self.metrics
            .subscriptions
            .store(index.subscription_count() as i64, Relaxed);
        self.metrics
            .distinct_queries
            .store(index.query_count() as i64, Relaxed);
        made.expect("the index makes every subscriber it inserts")
    }

    /// Removes a subscription.
    pub fn remove(&self, subscription: &Arc<Subscription>) {
        *subscription.removed.lock() = true;
        let mut index = self.index.write();
        index.remove(subscription.query_id, &SubRef(subscription.clone()));
        self.metrics
            .subscriptions
            .store(index.subscription_count() as i64, Relaxed);
        self.metrics
            .distinct_queries
            .store(index.query_count() as i64, Relaxed);
    }

    /// The class of a registered subscription's query and a copy of the query (for the
    /// `query` op).
    pub fn query(&self, subscription: &Subscription) -> Option<(ClassName, Query)> {
        self.index
            .read()
            .get(subscription.query_id)
            .map(|e| (ClassName::from(e.class_name()), e.query().clone()))
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

    /// Delivers one event to every subscription it concerns: its frames are queued
    /// ([`Outbox::queue_event`]), and the outboxes this made non-empty added to `pass`, whose
    /// owner writes them ([`WritePass::write_next`]).
    pub fn fan_out(&self, event: &ChangeEvent, scratch: &mut FanOutScratch, pass: &mut WritePass) {
        let index = self.index.read();
        let mut fan_out = EventFanOut {
            pass,
            change: event.change(),
            encoded: HashMap::new(),
            last_encoded: [None, None],
            frame_objects: SmallVec::new(),
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
    /// The last (object, original) pairs the event's frames carried, the last used at the
    /// end: recipients seeing the same views share one.
    frame_objects: SmallVec<[Arc<FrameObjects>; PAIRS_KEPT]>,
    /// The frames queued, added to the metrics once the event is dispatched.
    delivered: DeliveryTally,
    metrics: &'e Metrics,
    /// When the source handed the event over (for the delivery-latency histogram).
    received: std::time::Instant,
    /// The class's `afterLiveQueryEvent` hook, if it has one.
    hooked: Option<Hooked<'e>>,
    /// The outboxes this fan-out made non-empty are added to it, to be written.
    pass: &'e mut WritePass,
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

    /// The shared pair of `object` and `original`: made once per event when few views are
    /// in use (the usual case); with many, a recipient may get a pair of its own.
    fn frame_objects(
        &mut self,
        object: EncodedObject,
        original: Option<EncodedObject>,
    ) -> Arc<FrameObjects> {
        if let Some(at) = self
            .frame_objects
            .iter()
            .rposition(|pair| pair.holds(&object, original.as_ref()))
        {
            let last = self.frame_objects.len() - 1;
            self.frame_objects.swap(at, last);
            return self.frame_objects[last].clone();
        }
        let pair = Arc::new(FrameObjects::new(object, original));
        if self.frame_objects.len() == PAIRS_KEPT {
            // Bounded search: the oldest pair goes.
            self.frame_objects.remove(0);
        }
        self.frame_objects.push(pair.clone());
        pair
    }

    /// What the gate decides for one subscriber, queued in its outbox.
    fn deliver(&mut self, sub: &'e Arc<Subscription>, query: &'e Query, matched: QueryMatch) {
        let reader = sub.identity.reader();
        let subscriber = Subscriber {
            reader: &reader,
            op: sub.op,
            query,
            watch: sub.watch(),
            keys: sub.keys(),
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
        if let Some(hooked) = &mut self.hooked {
            let frame = ServerMessage::Event {
                op,
                envelope: &sub.envelope,
                request_id: sub.request_id,
                object: &object_bytes,
                original: original_bytes.as_ref(),
            }
            .encode();
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
        let objects = self.frame_objects(object_bytes, original_bytes);
        let frame = EventFrame::new(op, sub.envelope.clone(), sub.request_id, objects);
        let len = frame.len();
        let pushed = sub.outbox.queue_event(
            frame,
            self.received,
            self.pass,
            &self.metrics.delivery_latency,
        );
        match pushed {
            Push::Queued => self.delivered.add(op, len),
            Push::Overflowed => self.metrics.dropped(DropReason::SlowConsumerQueue),
            Push::Closed => {}
        }
    }
}

/// The (object, original) pairs an event's fan-out looks through before making a new one.
const PAIRS_KEPT: usize = 4;

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

#[cfg(test)]
mod tests {
    use super::*;
    use livequery_matcher::ChangeKind;
    use livequery_matcher::CompileOptions;
    use livequery_protocol::ClientId;
    use serde_json::{Map, json};

    fn encoded(n: usize) -> EncodedObject {
        EncodedObject::from_map(json!({ "n": n }).as_object().expect("an object"))
    }

    #[test]
    fn recipients_seeing_the_same_views_share_one_pair_of_objects() {
        let event = ChangeEvent {
            kind: ChangeKind::Save,
            class_name: ClassName::from("C"),
            current: Map::new(),
            original: None,
            permissions: None,
            original_state: crate::event::OriginalState::Exact,
            received: std::time::Instant::now(),
        };
        let metrics = Metrics::default();
        let mut fan_out = EventFanOut {
            change: event.change(),
            encoded: HashMap::new(),
            last_encoded: [None, None],
            frame_objects: SmallVec::new(),
            delivered: DeliveryTally::default(),
            metrics: &metrics,
            received: event.received,
            hooked: None,
            pass: &mut WritePass::default(),
        };
        let views: Vec<EncodedObject> = (0..PAIRS_KEPT + 1).map(encoded).collect();
        let first = fan_out.frame_objects(views[0].clone(), Some(views[1].clone()));
        // The same bytes again, also after another pair: the same shared pair.
        let other = fan_out.frame_objects(views[1].clone(), None);
        assert!(Arc::ptr_eq(
            &first,
            &fan_out.frame_objects(views[0].clone(), Some(views[1].clone()))
        ));
        assert!(Arc::ptr_eq(
            &other,
            &fan_out.frame_objects(views[1].clone(), None)
        ));
        // Equal but distinct bytes, or another original: another pair.
        assert!(!Arc::ptr_eq(
            &first,
            &fan_out.frame_objects(encoded(0), Some(views[1].clone()))
        ));
        assert!(!Arc::ptr_eq(
            &first,
            &fan_out.frame_objects(views[0].clone(), None)
        ));
        // The search is bounded: after PAIRS_KEPT other pairs the first is made anew.
        for view in &views {
            fan_out.frame_objects(view.clone(), Some(view.clone()));
        }
        assert!(fan_out.frame_objects.len() <= PAIRS_KEPT);
        assert!(!Arc::ptr_eq(
            &first,
            &fan_out.frame_objects(views[0].clone(), Some(views[1].clone()))
        ));
    }

    fn subscribe(hub: &Hub, request_id: u32) -> Arc<Subscription> {
        let query = Query::compile(&serde_json::Map::new(), &CompileOptions::default())
            .expect("`{}` compiles");
        hub.insert(
            "C",
            query,
            NewSubscription {
                outbox: Arc::new(Outbox::new(8, 1024)),
                envelope: Arc::new(Envelope::new(ClientId::new("c"), None)),
                request_id: RequestId::from(request_id),
                terms: SubscriptionTerms {
                    keys: None,
                    watch: None,
                    identity: Identity {
                        master: false,
                        session: None,
                    },
                    op: ReadOp::Find,
                    where_text: None,
                    footprint: 0,
                },
            },
        )
    }

    /// Subscribers of one shared query leave in any order: the others stay, each knowing
    /// where the index keeps it (what makes the next removal O(1)), and the query goes
    /// with the last.
    #[test]
    fn subscribers_of_a_shared_query_leave_in_any_order() {
        let hub = Hub::new(Arc::new(Metrics::default()));
        let mut live: Vec<Arc<Subscription>> = (0..40).map(|i| subscribe(&hub, i)).collect();
        // A fixed, scrambled order: every 7th of those left.
        let mut at = 0;
        while !live.is_empty() {
            at = (at + 7) % live.len();
            let leaving = live.remove(at);
            hub.remove(&leaving);
            let index = hub.index.read();
            assert_eq!(index.subscription_count(), live.len());
            let Some(entry) = index.get(leaving.query_id) else {
                assert!(live.is_empty(), "the query goes with its last subscriber");
                break;
            };
            assert_eq!(entry.subscribers().len(), live.len());
            for (place, subscriber) in entry.subscribers().iter().enumerate() {
                assert!(!Arc::ptr_eq(&subscriber.0, &leaving));
                assert_eq!(subscriber.0.place.load(Relaxed) as usize, place);
            }
        }
        assert_eq!(hub.index.read().query_count(), 0);
    }

    /// The projection is kept apart, and only when the subscription has one.
    #[test]
    fn keys_and_watch_are_read_back() {
        let hub = Hub::new(Arc::new(Metrics::default()));
        let plain = subscribe(&hub, 1);
        assert_eq!((plain.keys(), plain.watch()), (None, None));
        assert!(plain.projection.is_none());
        let query = Query::compile(&serde_json::Map::new(), &CompileOptions::default())
            .expect("`{}` compiles");
        let projected = hub.insert(
            "C",
            query,
            NewSubscription {
                request_id: RequestId::from(2),
                outbox: plain.outbox.clone(),
                envelope: plain.envelope.clone(),
                terms: SubscriptionTerms {
                    keys: Some(vec!["a".into()]),
                    watch: Some(vec!["b".into(), "c".into()]),
                    identity: plain.identity.clone(),
                    op: ReadOp::Find,
                    where_text: None,
                    footprint: 0,
                },
            },
        );
        assert_eq!(projected.keys(), Some(&["a".to_owned()][..]));
        assert_eq!(
            projected.watch(),
            Some(&["b".to_owned(), "c".to_owned()][..])
        );
        let (class_name, _) = hub.query(&projected).expect("registered");
        assert_eq!(class_name.as_str(), "C");
    }
}
