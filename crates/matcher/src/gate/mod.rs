//! The authorization gate: every decision about what a reader may see, and what it may
//! ask about, in one pure module.
//!
//! The rule it enforces: a field hidden from a reader ([`Hidden`]: protected for it,
//! a `_User`/`_Session` secret, an internal `_` key) appears neither in what the reader
//! receives nor in anything that decides what it receives — a `where` at any depth and
//! under any operator (dotted paths, `$or`/`$and`/`$nor`, subqueries and `$select`'s key),
//! or `watch`. Internal classes (`_Installation`, `_PushStatus`, …) are for master only.
//!
//! The server asks the gate at three moments, always with the identity and permissions in
//! force then:
//! - [`admit`] when a client subscribes (after [`restrict_where`] for `_Session`): class
//!   and class-level permissions, hidden fields named by the query (its subqueries against
//!   their own classes).
//! - [`judge`] per subscriber and change: class-level permissions now, hidden fields on
//!   these very objects, ACL and pointer permissions, then the event type
//!   ([`mod@crate::classify`]) and the [`VisibleObject`]s to send. [`find_result`] is the same
//!   for the objects of a `query` result, [`subquery_member`] for the inner objects of a
//!   subquery.
//! - Payloads: a [`VisibleObject`] (an object through a [`FieldView`]) is the only way the
//!   gate hands out an object's fields, and the server encodes objects only from one.
//!
//! ## Module map
//! - `reader`: [`Reader`], the identity judged for.
//! - `permissions`: class-level permissions ([`ClassPermissions`]), ACLs, pointer
//!   permissions.
//! - `hidden`: [`Hidden`], the single definition of the fields a reader may not see, and
//!   [`ClassKind`].
//! - `admission`: subscribe-time decisions.
//! - `delivery`: event-time decisions, `query` results, subquery membership.
//! - `view`: [`FieldView`] and [`VisibleObject`].

mod admission;
mod delivery;
mod hidden;
#[cfg(test)]
mod noninterference;
mod permissions;
mod reader;
mod view;

pub use admission::{
    Admission, Denial, PermissionsOf, SubscriptionRequest, admit, classes_involved, regex_allowed,
    restrict_where,
};
pub use delivery::{
    Change, EventType, InnerQuery, Original, QueryMatch, Skip, Subscriber, Verdict, find_result,
    judge, replaced_view, subquery_member,
};
pub use hidden::{ClassKind, Hidden, is_identifier};
pub use permissions::{
    ClassPermissions, Permission, ProtectedFieldGroups, ReadAccess, ReadOp, acl_allows_read,
    pointer_fields_allow,
};
pub use reader::Reader;
pub use view::{FieldView, VisibleObject};
