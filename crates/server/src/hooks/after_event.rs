//! `afterLiveQueryEvent`: one call per distinct (event, identity) of an event, made off the
//! dispatcher.
//!
//! The dispatcher judges each recipient as usual (the gate decides who gets which event and
//! which fields) and encodes its unmodified frame; for a class with a hook it then groups the
//! recipients by (event type, identity) — identity being the user's objectId or anonymous,
//! and the master key — and hands the whole batch to the class's task through a bounded
//! queue, without waiting. The task calls the hook once per group (the groups of one event
//! concurrently, up to [`MAX_IN_FLIGHT`] events at once) and delivers the answers in the
//! order the events came: every recipient gets its events in order, a slow hook delays only
//! its own class, and the dispatcher never waits for it.
//!
//! A full queue (the hook is slower than the class's events for too long) refuses the batch:
//! its failure policy applies at once on the dispatcher (`send_unmodified`: the unmodified
//! frames; `reject`: the error frames; `drop`: nothing), counted as a failed call and in
//! `livequery_hook_queue_full_total`. Such an event can overtake earlier events of the class
//! still waiting for the hook (`protocol-spec/hooks.md`).
//!
//! A replaced `object` or `original` keeps the real object's `className` and `objectId`, and
//! is cut to each recipient's field view ([`livequery_matcher::gate::replaced_view`]);
//! included objects (`{"__type": "Object", ...}` at any depth) lose their internal fields and,
//! for `_User`, their secrets and the fields the reader may not see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use livequery_matcher::gate::{ClassKind, ClassPermissions, Hidden, Reader, is_identifier};
use livequery_protocol::{EventOp, ServerMessage, WireError};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Caller, Decision, Hook, Hooks, Trigger, request_base};
use crate::hub::{Subscription, encode_visible};
use crate::identity::IdentityCache;
use crate::metrics::{DropReason, Metrics};
use crate::outbox::Push;

/// Events of one class whose hook calls may run at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// Batches (events) waiting for a class's hook task.
pub const QUEUE_EVENTS: usize = 1024;

/// The objects of one event, owned (the hook task outlives the dispatcher's borrow).
#[derive(Debug)]
pub struct EventObjects {
    /// The class.
    pub class_name: Box<str>,
    /// The object after the change.
    pub current: Map<String, Value>,
    /// The object before it, if known.
    pub original: Option<Map<String, Value>>,
    /// The class's permissions the event was judged with.
    pub permissions: Option<Arc<ClassPermissions>>,
    /// When the source handed the event over.
    pub received: Instant,
}

/// Who a group's recipients are, as the hook sees them, and what they were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    /// The event type.
    pub op: EventOp,
    /// The master key.
    pub master: bool,
    /// The user's objectId (`None`: anonymous).
    pub user_id: Option<Box<str>>,
    /// The payload's `object` is the event's original (a `leave` whose current object is
    /// not readable).
    pub object_is_original: bool,
    /// The payload has an `original`.
    pub with_original: bool,
}

/// One recipient of a hooked event, with the frame it gets if the hook changes nothing.
#[derive(Debug)]
pub struct Recipient {
    /// Its subscription.
    pub subscription: Arc<Subscription>,
    /// The unmodified frame.
    pub frame: Bytes,
}

/// Recipients sharing one call.
#[derive(Debug)]
pub struct Group {
    /// Who they are.
    pub key: GroupKey,
    /// Them.
    pub recipients: Vec<Recipient>,
}

/// One event's recipients, grouped.
#[derive(Debug)]
pub struct Batch {
    /// The event's objects.
    pub objects: Arc<EventObjects>,
    /// The groups, in the order their first recipient was judged.
    pub groups: Vec<Group>,
}

impl Batch {
    /// Adds a recipient to its group.
    pub fn add(&mut self, key: GroupKey, recipient: Recipient) {
        match self.groups.iter_mut().find(|g| g.key == key) {
            Some(group) => group.recipients.push(recipient),
            None => self.groups.push(Group {
                key,
                recipients: vec![recipient],
            }),
        }
    }
}

/// The queue of one class's hook task.
#[derive(Debug)]
pub struct ClassHook {
    hook: Arc<Hook>,
    queue: mpsc::Sender<Batch>,
    deliverer: Arc<Deliverer>,
}

impl ClassHook {
    /// Hands a batch to the class's task, never waiting: a full queue applies the hook's
    /// failure policy here and now.
    pub fn submit(&self, batch: Batch) {
        match self.queue.try_send(batch) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
            ) => {
                let metrics = &self.deliverer.metrics.hooks;
                metrics
                    .queue_full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for _ in &batch.groups {
                    metrics.count(Trigger::AfterLiveQueryEvent, super::CallOutcome::Failed);
                }
                tracing::warn!(class = %batch.objects.class_name, "the afterLiveQueryEvent hook queue is full; applying its failure policy");
                for group in batch.groups {
                    let decision = self.hook.failure("the hook queue is full");
                    self.deliverer
                        .deliver(&self.hook, &batch.objects, group, decision);
                }
            }
        }
    }
}

/// The `afterLiveQueryEvent` hooks of every class, each with its task.
#[derive(Debug, Default)]
pub struct AfterEvents {
    classes: HashMap<String, ClassHook>,
}

impl AfterEvents {
    /// Starts one task per class with a hook; they end with `shutdown`.
    pub fn start(
        hooks: &Hooks,
        identities: Arc<IdentityCache>,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> Self {
        let deliverer = Arc::new(Deliverer {
            identities,
            metrics,
        });
        let classes = hooks
            .after_event()
            .iter()
            .map(|(class, hook)| {
                let (queue, rx) = mpsc::channel(QUEUE_EVENTS);
                tokio::spawn(run(hook.clone(), rx, deliverer.clone(), shutdown.clone()));
                (
                    class.clone(),
                    ClassHook {
                        hook: hook.clone(),
                        queue,
                        deliverer: deliverer.clone(),
                    },
                )
            })
            .collect();
        Self { classes }
    }

    /// The hook of `class_name`, if it has one.
    pub fn class(&self, class_name: &str) -> Option<&ClassHook> {
        if self.classes.is_empty() {
            return None;
        }
        self.classes.get(class_name)
    }
}

/// A class's hook task: calls in order, at most [`MAX_IN_FLIGHT`] events at once, answers
/// delivered in the events' order.
async fn run(
    hook: Arc<Hook>,
    mut rx: mpsc::Receiver<Batch>,
    deliverer: Arc<Deliverer>,
    shutdown: CancellationToken,
) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            Some((batch, decisions)) = in_flight.next(), if !in_flight.is_empty() => {
                let Batch { objects, groups } = batch;
                for (group, decision) in groups.into_iter().zip(decisions) {
                    deliverer.deliver(&hook, &objects, group, decision);
                }
            }
            batch = rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => match batch {
                Some(batch) => in_flight.push_back(call(hook.clone(), batch, deliverer.metrics.clone())),
                None => return,
            },
        }
    }
}

/// Calls the hook once per group of `batch`, concurrently.
async fn call(hook: Arc<Hook>, batch: Batch, metrics: Arc<Metrics>) -> (Batch, Vec<Decision>) {
    let requests: Vec<Value> = batch
        .groups
        .iter()
        .map(|group| request(&batch.objects, &group.key, &metrics))
        .collect();
    let decisions =
        futures_util::future::join_all(requests.iter().map(|request| hook.decide(request))).await;
    (batch, decisions)
}

/// The request of one group (`protocol-spec/hooks.md`).
fn request(objects: &EventObjects, key: &GroupKey, metrics: &Metrics) -> Value {
    let caller = Caller {
        master: key.master,
        installation_id: None,
        session_token: None,
        user_id: key.user_id.as_deref(),
    };
    let mut request = request_base(Trigger::AfterLiveQueryEvent, &caller, metrics);
    let (object, original) = if key.object_is_original {
        (objects.original.as_ref(), objects.original.as_ref())
    } else {
        (Some(&objects.current), objects.original.as_ref())
    };
    request.insert("className".into(), Value::from(&*objects.class_name));
    request.insert("event".into(), key.op.as_str().into());
    request.insert(
        "object".into(),
        object.map_or(Value::Null, |o| parse_object(&objects.class_name, o)),
    );
    request.insert(
        "original".into(),
        original
            .filter(|_| key.with_original)
            .map_or(Value::Null, |o| parse_object(&objects.class_name, o)),
    );
    Value::Object(request)
}

/// An object as Parse JSON (`"__type": "Object"`, `className`, its fields).
fn parse_object(class_name: &str, object: &Map<String, Value>) -> Value {
    let mut out = Map::with_capacity(object.len() + 2);
    out.insert("__type".into(), "Object".into());
    out.insert("className".into(), class_name.into());
    for (key, value) in object {
        if key != "__type" && key != "className" {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

/// Puts decisions into outboxes.
#[derive(Debug)]
struct Deliverer {
    identities: Arc<IdentityCache>,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    fn deliver(&self, hook: &Hook, objects: &EventObjects, group: Group, decision: Decision) {
        match decision {
            Decision::Drop => {}
            Decision::Reject(error) => self.reject(&group, &error),
            Decision::Proceed(Value::Null) => self.unmodified(group, objects.received),
            Decision::Proceed(Value::Object(answer)) => {
                if answer.get("sendEvent") == Some(&Value::Bool(false)) {
                    return;
                }
                let object = answer.get("object");
                let original = answer.get("original");
                if object.is_none() && original.is_none() {
                    return self.unmodified(group, objects.received);
                }
                if object.is_some_and(|o| !o.is_object())
                    || original.is_some_and(|o| !o.is_object() && !o.is_null())
                {
                    let decision =
                        hook.failure("the answer's object or original is not a JSON object");
                    return self.deliver(hook, objects, group, decision);
                }
                self.replaced(objects, group, object, original);
            }
            Decision::Proceed(_) => {
                let decision = hook.failure("the answer is not a JSON object");
                self.deliver(hook, objects, group, decision);
            }
        }
    }

    fn push(&self, subscription: &Subscription, frame: Bytes, received: Instant, op: EventOp) {
        let removed = subscription.removed.lock();
        if *removed {
            return;
        }
        let len = frame.len();
        match subscription.outbox.push_event(frame, received) {
            Push::Queued => self.metrics.delivered(op, len),
            Push::Overflowed => self.metrics.dropped(DropReason::SlowConsumerQueue),
            Push::Closed => {}
        }
    }

    fn unmodified(&self, group: Group, received: Instant) {
        for recipient in group.recipients {
            self.push(
                &recipient.subscription,
                recipient.frame,
                received,
                group.key.op,
            );
        }
    }

    fn reject(&self, group: &Group, error: &WireError) {
        for recipient in &group.recipients {
            let frame = ServerMessage::Error {
                error,
                request_id: Some(recipient.subscription.request_id),
            }
            .encode();
            let removed = recipient.subscription.removed.lock();
            if *removed {
                continue;
            }
            self.metrics
                .error_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = recipient.subscription.outbox.push(frame);
        }
    }

    fn replaced(
        &self,
        objects: &EventObjects,
        group: Group,
        object: Option<&Value>,
        original: Option<&Value>,
    ) {
        let key = &group.key;
        let real_object = if key.object_is_original {
            objects.original.as_ref()
        } else {
            Some(&objects.current)
        };
        let Some(real_object) = real_object else {
            return self.unmodified(group, objects.received);
        };
        let object = replacement(object, real_object);
        let original = match (&objects.original, key.with_original) {
            (Some(real), true) => Some(replacement(original, real)),
            _ => None,
        };
        let class = &*objects.class_name;
        let permissions = objects.permissions.as_deref();
        for recipient in &group.recipients {
            let subscription = &recipient.subscription;
            let reader = subscription.identity.reader();
            let keys = subscription.keys();
            let encode = |object: &Map<String, Value>| {
                let mut object = object.clone();
                self.scrub_included(&mut object, &reader);
                encode_visible(&livequery_matcher::gate::replaced_view(
                    class,
                    permissions,
                    &reader,
                    keys,
                    &object,
                ))
            };
            let object_bytes = encode(&object);
            let original_bytes = original.as_ref().map(encode);
            let frame = ServerMessage::Event {
                op: key.op,
                envelope: &subscription.envelope,
                request_id: subscription.request_id,
                object: &object_bytes,
                original: original_bytes.as_ref(),
            }
            .encode();
            self.push(subscription, frame, objects.received, key.op);
        }
    }

    /// Cuts objects included at any depth (`{"__type": "Object", "className", ...}`):
    /// internal fields always; for `_User`, `sessionToken`, `password`, and the fields hidden
    /// from `reader` (`authData` from all but master and the user itself, protected fields).
    fn scrub_included(&self, object: &mut Map<String, Value>, reader: &Reader) {
        for value in object.values_mut() {
            self.scrub_value(value, reader, 0);
        }
    }

    fn scrub_value(&self, value: &mut Value, reader: &Reader, depth: usize) {
        // Deeper JSON than any frame may carry is cut whole.
        if depth > 64 {
            *value = Value::Null;
            return;
        }
        match value {
            Value::Array(items) => {
                for item in items {
                    self.scrub_value(item, reader, depth + 1);
                }
            }
            Value::Object(map) => {
                let included_class = (map.get("__type").and_then(Value::as_str) == Some("Object"))
                    .then(|| {
                        map.get("className")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .flatten();
                if let Some(class) = included_class {
                    let kind = ClassKind::of(&class);
                    let permissions = self.identities.cached_permissions(&class);
                    let hidden = Hidden::for_object(kind, permissions.as_deref(), reader, map);
                    map.retain(|key, _| {
                        matches!(key.as_str(), "__type" | "className")
                            || (is_identifier(key)
                                && !hidden.contains(key)
                                && !(kind == ClassKind::User
                                    && matches!(key.as_str(), "sessionToken" | "password")))
                    });
                }
                for inner in map.values_mut() {
                    self.scrub_value(inner, reader, depth + 1);
                }
            }
            _ => {}
        }
    }
}

/// The hook's replacement for `real`, keeping the real `className` and `objectId` (no
/// replacement: the real object).
fn replacement(answer: Option<&Value>, real: &Map<String, Value>) -> Map<String, Value> {
    let Some(Value::Object(answer)) = answer else {
        return real.clone();
    };
    let mut object = Map::with_capacity(answer.len());
    for (key, value) in answer {
        if key == "__type" && !real.contains_key("__type") {
            continue;
        }
        object.insert(key.clone(), value.clone());
    }
    for key in ["className", "objectId"] {
        match real.get(key) {
            Some(value) => {
                object.insert(key.to_owned(), value.clone());
            }
            None => {
                object.remove(key);
            }
        }
    }
    object
}
