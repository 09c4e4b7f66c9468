//! Event time: what, if anything, one subscriber receives for one change — and the same
//! judgement for the objects of a `query` (find) result and of a subquery's inner class.
//!
//! Everything is decided again with the permissions and the identity in force now, never
//! with those of subscribe time: a class-level permission that changed, a protected field
//! that became hidden (logout, role loss, a new `protectedFields` group), a field hidden on
//! this very object (`userField:` groups, the `_User` owner exemption). A subscription whose
//! `where` or `watch` reads a field hidden from its reader on the objects of a change gets
//! nothing for that change — whatever the values — so an admitted subscription can never
//! become an oracle for hidden data.

use serde_json::{Map, Value};

use super::hidden::{ClassKind, Hidden};
use super::permissions::{
    ClassPermissions, ReadAccess, ReadOp, acl_allows_read, pointer_fields_allow,
};
use super::reader::Reader;
use super::view::{FieldView, VisibleObject};
use crate::classify::{ChangeKind, Classification, Knowledge, Side, classify, classify_uncertain};
use crate::query::Query;

/// How much is known about an update's original.
#[derive(Debug, Clone, Copy)]
pub enum Original<'e> {
    /// The exact previous version (`None`: a create, or a delete).
    Exact(Option<&'e Map<String, Value>>),
    /// Only the fields the update did not change are known: `object` holds them (the
    /// current values of the unchanged fields); `changed` lists the changed top-level
    /// fields (`ACL` for permission changes).
    Partial {
        /// The unchanged fields.
        object: &'e Map<String, Value>,
        /// Changed top-level fields.
        changed: &'e [String],
    },
    /// Nothing is known of the previous version.
    Unknown,
}

/// One change of one object, with the permissions of its class in force now.
#[derive(Debug, Clone, Copy)]
pub struct Change<'e> {
    /// Save or delete.
    pub kind: ChangeKind,
    /// The object's class.
    pub class_name: &'e str,
    /// The class's permissions (`None`: nothing restricted).
    pub permissions: Option<&'e ClassPermissions>,
    /// The object after the change (for a delete: its last state).
    pub current: &'e Map<String, Value>,
    /// The object before the change (saves only).
    pub original: Original<'e>,
}

impl<'e> Change<'e> {
    fn class_kind(&self) -> ClassKind {
        ClassKind::of(self.class_name)
    }

    /// The original as it bears on matching: deletes have none.
    fn original(&self) -> Original<'e> {
        match self.kind {
            ChangeKind::Delete => Original::Exact(None),
            ChangeKind::Save => self.original,
        }
    }

    /// The original, when it is exactly known: a server probes its index with it and the
    /// current object (a partial original's fields are the current's, so probing the current
    /// suffices for it).
    pub fn exact_original(&self) -> Option<&'e Map<String, Value>> {
        match self.original() {
            Original::Exact(original) => original,
            Original::Partial { .. } | Original::Unknown => None,
        }
    }
}

/// Whether one distinct query matches a change's objects. Computed once per query and
/// shared by its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryMatch {
    /// The current object matches.
    pub current: bool,
    /// The original matched (known exactly, known because no field the query reads
    /// changed, or unknown).
    pub original: Knowledge,
}

impl QueryMatch {
    /// Evaluates `query` against the change's objects.
    pub fn evaluate(query: &Query, change: &Change<'_>) -> Self {
        let current = query.matches(change.current);
        let original = match change.original() {
            Original::Exact(None) => Knowledge::Known(false),
            Original::Exact(Some(original)) => Knowledge::Known(query.matches(original)),
            // Without the original, the match did not change when no field the query reads
            // changed.
            Original::Partial { changed, .. }
                if !query
                    .referenced_fields()
                    .any(|f| changed.iter().any(|c| c == f)) =>
            {
                Knowledge::Known(current)
            }
            Original::Partial { .. } | Original::Unknown => Knowledge::Unknown,
        };
        Self { current, original }
    }

    /// Whether any subscriber of the query can get an event (the current object matches, or
    /// the original did).
    pub fn concerns_anyone(&self) -> bool {
        self.current || self.original == Knowledge::Known(true)
    }
}

/// One subscription, as the gate judges it: its identity now (`'r`, borrowed for the
/// judgement only) and what it asked for (`'s`, which payloads may borrow).
#[derive(Debug, Clone, Copy)]
pub struct Subscriber<'r, 's> {
    /// Its identity now.
    pub reader: &'r Reader,
    /// `get` or `find` (from [`super::Admission`]).
    pub op: ReadOp,
    /// Its compiled `where`.
    pub query: &'s Query,
    /// `watch`.
    pub watch: Option<&'s [String]>,
    /// `keys`.
    pub keys: Option<&'s [String]>,
}

/// The event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `create`.
    Create,
    /// `enter`.
    Enter,
    /// `update`.
    Update,
    /// `leave`.
    Leave,
    /// `delete`.
    Delete,
}

/// Why a subscriber gets nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No event for it (no match, not readable, or suppressed by `watch`).
    NoEvent,
    /// Class-level permissions (or the class being internal) deny the read now.
    ClassDenied,
    /// Its `where` or `watch` reads a field hidden from it on these objects.
    HiddenField,
    /// Its subqueries were resolved for an identity the subscriber no longer has (logout,
    /// role change), or a subquery's set could not be kept current.
    StaleSubqueries,
}

/// What one subscriber receives.
#[derive(Debug, Clone)]
pub enum Verdict<'e> {
    /// Nothing, and why.
    Skip(Skip),
    /// An event.
    Deliver {
        /// Its type.
        event: EventType,
        /// `object`.
        object: VisibleObject<'e>,
        /// `original`, when sent.
        original: Option<VisibleObject<'e>>,
    },
}

/// Whether `query`'s clause or `watch` reads a field in `hidden`.
fn reads_hidden(query: &Query, watch: Option<&[String]>, hidden: &Hidden<'_>) -> bool {
    query.referenced_fields().any(|f| hidden.covers_path(f))
        || watch.into_iter().flatten().any(|f| hidden.covers_path(f))
}

/// The class-level decision: `Err` when the class is unreadable now; `Ok(Some(fields))`
/// when each object must point to the reader through one of `fields`.
fn class_access<'p>(
    kind: ClassKind,
    permissions: Option<&'p ClassPermissions>,
    op: ReadOp,
    reader: &Reader,
) -> Result<Option<&'p [Box<str>]>, Skip> {
    if kind == ClassKind::Internal && !reader.master {
        return Err(Skip::ClassDenied);
    }
    match permissions.map(|p| p.read_access(op, reader)) {
        None | Some(ReadAccess::Granted) => Ok(None),
        Some(ReadAccess::PointerFields(fields)) => Ok(Some(fields)),
        Some(ReadAccess::RequiresAuthentication | ReadAccess::Forbidden) => Err(Skip::ClassDenied),
    }
}

/// Whether `reader` may read `object` (ACL and pointer permissions).
fn readable(
    object: &Map<String, Value>,
    reader: &Reader,
    pointer_fields: Option<&[Box<str>]>,
) -> bool {
    acl_allows_read(object, reader)
        && pointer_fields
            .is_none_or(|fields| pointer_fields_allow(object, fields, reader.user_id.as_deref()))
}

/// Decides what `subscriber` receives for `change`, given how its query matched.
pub fn judge<'e>(
    change: &Change<'e>,
    subscriber: &Subscriber<'_, 'e>,
    matched: QueryMatch,
) -> Verdict<'e> {
    let reader = subscriber.reader;
    if !subscriber.query.answers_for(|| reader.identity_key()) {
        return Verdict::Skip(Skip::StaleSubqueries);
    }
    let kind = change.class_kind();
    let pointer_fields = match class_access(kind, change.permissions, subscriber.op, reader) {
        Ok(fields) => fields,
        Err(skip) => return Verdict::Skip(skip),
    };

    // The fields hidden on each object this judgement reads.
    let hidden_current = Hidden::for_object(kind, change.permissions, reader, change.current);
    let original = change.original();
    let hidden_original = match original {
        Original::Exact(None) => None,
        Original::Exact(Some(object)) => {
            Some(Hidden::for_object(kind, change.permissions, reader, object))
        }
        Original::Partial { object, changed } => {
            // What decides the hidden fields (a `userField:` pointer) may have changed.
            let decided_by_changed = change.permissions.is_some_and(|p| {
                p.user_field_groups()
                    .any(|field| changed.iter().any(|c| c == field))
            });
            Some(if decided_by_changed {
                Hidden::at_most(kind, change.permissions, reader)
            } else {
                Hidden::for_object(kind, change.permissions, reader, object)
            })
        }
        Original::Unknown => Some(Hidden::at_most(kind, change.permissions, reader)),
    };
    if reads_hidden(subscriber.query, subscriber.watch, &hidden_current)
        || hidden_original
            .as_ref()
            .is_some_and(|hidden| reads_hidden(subscriber.query, subscriber.watch, hidden))
    {
        return Verdict::Skip(Skip::HiddenField);
    }

    let current_readable = readable(change.current, reader, pointer_fields);
    let current_side = Side {
        object: change.current,
        matches: matched.current,
        readable: current_readable,
    };
    let (classification, original_object) = match (original, matched.original) {
        (Original::Exact(original), original_matches) => (
            classify(
                change.kind,
                original.map(|object| Side {
                    object,
                    matches: original_matches == Knowledge::Known(true),
                    readable: readable(object, reader, pointer_fields),
                }),
                current_side,
                subscriber.watch,
            ),
            original,
        ),
        (Original::Partial { object, changed }, original_matches) => {
            // The original's readability is known only if nothing that decides it changed.
            let access_changed = changed.iter().any(|f| {
                f == "ACL" || pointer_fields.is_some_and(|p| p.iter().any(|pf| **pf == **f))
            });
            let original_readable = if access_changed {
                Knowledge::Unknown
            } else {
                Knowledge::Known(current_readable)
            };
            let watch_changed = subscriber
                .watch
                .map(|watch| watch.iter().any(|w| changed.contains(w)));
            (
                classify_uncertain(
                    original_matches,
                    original_readable,
                    matched.current && current_readable,
                    current_readable,
                    watch_changed,
                ),
                Some(object),
            )
        }
        (Original::Unknown, original_matches) => (
            classify_uncertain(
                original_matches,
                Knowledge::Unknown,
                matched.current && current_readable,
                current_readable,
                None,
            ),
            None,
        ),
    };

    let current_view = || {
        VisibleObject::new(
            FieldView::new(hidden_current.clone(), subscriber.keys),
            change.current,
        )
    };
    let original_view = || {
        let object = original_object.expect("an original is only sent when the change has one");
        let hidden = hidden_original
            .clone()
            .expect("an original's hidden fields are computed with it");
        VisibleObject::new(FieldView::new(hidden, subscriber.keys), object)
    };
    let (event, object, original) = match classification {
        Classification::Nothing => return Verdict::Skip(Skip::NoEvent),
        Classification::Create => (EventType::Create, current_view(), None),
        Classification::Enter { with_original } => (
            EventType::Enter,
            current_view(),
            with_original.then(original_view),
        ),
        Classification::Update => (EventType::Update, current_view(), Some(original_view())),
        Classification::Leave { object_is_original } => (
            EventType::Leave,
            if object_is_original {
                original_view()
            } else {
                current_view()
            },
            Some(original_view()),
        ),
        Classification::Delete => (EventType::Delete, current_view(), None),
    };
    Verdict::Deliver {
        event,
        object,
        original,
    }
}

/// One object of a `query` (find) result, as `subscriber` may see it: `None` unless the
/// class and the object are readable, the object matches, and the query reads no field
/// hidden from the reader on it.
pub fn find_result<'e>(
    class_name: &str,
    permissions: Option<&'e ClassPermissions>,
    subscriber: &Subscriber<'_, 'e>,
    object: &'e Map<String, Value>,
) -> Option<VisibleObject<'e>> {
    let reader = subscriber.reader;
    if !subscriber.query.answers_for(|| reader.identity_key()) {
        return None;
    }
    let kind = ClassKind::of(class_name);
    let pointer_fields = class_access(kind, permissions, subscriber.op, reader).ok()?;
    let hidden = Hidden::for_object(kind, permissions, reader, object);
    if reads_hidden(subscriber.query, None, &hidden)
        || !readable(object, reader, pointer_fields)
        || !subscriber.query.matches(object)
    {
        return None;
    }
    Some(VisibleObject::new(
        FieldView::new(hidden, subscriber.keys),
        object,
    ))
}

/// An object a trusted hook (Cloud Code's `afterLiveQueryEvent`) put in place of an event's
/// object, as `reader` may see it through a subscription with `keys`: the fields hidden from
/// the reader on it are cut as on any object of the class. Whether the reader gets the event
/// at all is [`judge`]'s decision on the real objects, made before; nested objects are the
/// caller's to cut.
pub fn replaced_view<'e>(
    class_name: &str,
    permissions: Option<&'e ClassPermissions>,
    reader: &Reader,
    keys: Option<&'e [String]>,
    object: &'e Map<String, Value>,
) -> VisibleObject<'e> {
    let hidden = Hidden::for_object(ClassKind::of(class_name), permissions, reader, object);
    VisibleObject::new(FieldView::new(hidden, keys), object)
}

/// A subquery's inner side, as the gate judges membership in it.
#[derive(Debug, Clone, Copy)]
pub struct InnerQuery<'a> {
    /// The inner class.
    pub class_name: &'a str,
    /// Its permissions now.
    pub permissions: Option<&'a ClassPermissions>,
    /// The inner clause.
    pub query: &'a Query,
    /// `$select`/`$dontSelect`: the key whose values are collected.
    pub key: Option<&'a str>,
}

/// Whether `object` of the inner class counts for `reader`'s subquery: it must be readable
/// (class, ACL, pointer permissions), match, and neither the inner clause nor the selected
/// key may read a field hidden from the reader on it. What the outer query learns from
/// membership is therefore never decided by hidden data.
pub fn subquery_member(
    inner: &InnerQuery<'_>,
    reader: &Reader,
    object: &Map<String, Value>,
) -> bool {
    let kind = ClassKind::of(inner.class_name);
    let Ok(pointer_fields) = class_access(kind, inner.permissions, ReadOp::Find, reader) else {
        return false;
    };
    let hidden = Hidden::for_object(kind, inner.permissions, reader, object);
    !reads_hidden(inner.query, None, &hidden)
        && !inner.key.is_some_and(|key| hidden.covers_path(key))
        && readable(object, reader, pointer_fields)
        && inner.query.matches(object)
}
