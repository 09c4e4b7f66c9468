//! # livequery-matcher
//!
//! Everything livequery decides about an event without doing I/O: whether an object
//! matches a query, which event a change produces for a subscription, what a subscriber
//! may see, and which of many queries an object can concern at all.
//!
//! ## Module map
//! - [`Query`] (`compile`, `query`): compile a Parse `where` clause once
//!   ([`Query::compile`]), evaluate it many times ([`Query::matches`]) — infallible and
//!   allocation-free. Semantics are Parse REST `find()`'s (MongoDB's), not the reference
//!   LiveQuery server's; `protocol-spec/deviations.md` lists every difference.
//! - `js_regex`: `$regex` with JavaScript syntax on the linear-time `regex` crate.
//! - `value`, `date`, `geo`: typed views of Parse JSON values, ISO dates, geometry.
//! - `canonical`: the text under which identical queries are de-duplicated (no hash
//!   collisions: the full text is compared).
//! - [`mod@classify`]: `create`/`enter`/`update`/`leave`/`delete`/nothing for one subscriber,
//!   with the `watch` rule and the redaction of transitions caused by ACL changes, also
//!   when the original is only partly known.
//! - [`gate`]: the authorization gate — every decision about what a reader may see and
//!   ask about (admission at subscribe time, judgement per event, `query` results,
//!   subquery membership, the field view of payloads).
//! - `set`: the operands of `$in`/`$nin`/`$all`/`$containedBy`, hashed when large.
//! - [`SubscriptionIndex`]: distinct queries per class and the equality and range index
//!   that finds the few queries an object can concern; `range` is its interval tree. A
//!   subscriber that remembers its place ([`Member`]) is removed in O(1).
//!
//! ## Invariants
//! - Compilation rejects every clause it cannot evaluate faithfully (code 102), instead of
//!   silently never matching.
//! - [`SubscriptionIndex::candidates`] returns a superset of the matching queries; it never
//!   misses one (property-tested against brute force).
//! - No function here blocks or can be driven into super-linear time by client input:
//!   set operands are hashed, clauses are bounded in size ([`CompileOptions`]), regexes
//!   run in linear time. Evaluation allocates only for a large `$all`.
//! - Nothing leaves through [`gate`] that its reader may not see, and nothing hidden from
//!   a reader decides what it receives (property-tested on random objects, permissions,
//!   readers and queries).
#![deny(missing_docs)]

mod canonical;
pub mod classify;
mod compile;
pub mod date;
mod error;
pub mod gate;
mod geo;
mod index;
mod js_regex;
mod query;
mod range;
mod set;
#[cfg(test)]
mod test_support;
mod value;

pub use classify::{ChangeKind, Classification, Knowledge, Side, classify, classify_uncertain};
pub use compile::{CompileOptions, SubqueryPolicy};
pub use error::QueryError;
pub use index::{Entry, IndexedFields, Member, QueryId, Reads, Scratch, SubscriptionIndex};
pub use query::{Query, Subquery, SubqueryKind, SubquerySet};
pub use value::json_equal;
