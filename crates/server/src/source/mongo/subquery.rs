//! `$inQuery`, `$notInQuery`, `$select`, `$dontSelect` and `$relatedTo` against MongoDB.
//!
//! Each subquery of a subscription is bound to a *set*: the objectIds of the inner class's
//! matching objects (`$inQuery`), the values of their `key` (`$select`), or the objects of a
//! relation (`$relatedTo`). A set is read once from MongoDB (through the prefilter, decided by
//! the matcher, limited to the inner objects the subscriber may read) and then kept current
//! from the change stream: every change of the inner class re-decides that object's
//! membership, every `_Join` row added or removed updates relations. Identical subqueries of
//! the same identity share one set; a set lives as long as a subscription uses it.
//!
//! Events are produced for changes of the *outer* object only (as Parse LiveQuery does): an
//! inner change never fires events for outer objects, it changes how their next change is
//! judged.
//!
//! Which inner objects count is the authorization gate's decision
//! ([`livequery_matcher::gate::subquery_member`]), made with the inner class's permissions
//! in force when the object changes: an object counts only if the subscriber may read it and
//! neither the inner clause nor `$select`'s key reads a field hidden from the subscriber on
//! it. When the inner class's schema changes, its sets are read again. A set is bound to the
//! identity it was computed for; when a subscriber's identity changes, its subscription stops
//! receiving events (the gate's stale-identity rule) until it subscribes again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bson::doc;
use livequery_matcher::gate::{ClassPermissions, InnerQuery, Reader, subquery_member};
use livequery_matcher::{ChangeKind, Query, QueryError, Subquery, SubqueryKind, SubquerySet};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};

use super::convert::{FileUrls, to_parse_json};
use super::filter::prefilter;
use super::schema::Schemas;
use super::store::Store;
use crate::backend::SubqueryResolver;
use crate::identity::ClassPermissionMap;
use crate::pubsub::Message;

#[derive(Debug, Default)]
struct Members {
    /// objectId → the selected value (`$select`) or `Null` (`$inQuery`, `$relatedTo`).
    by_id: HashMap<String, Value>,
    /// Canonical text of a selected value → how many members have it.
    values: HashMap<String, usize>,
}

impl Members {
    fn insert(&mut self, id: String, value: Value) {
        if let Some(old) = self.by_id.insert(id, value.clone()) {
            self.forget_value(&old);
        }
        *self.values.entry(value.to_string()).or_default() += 1;
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.forget_value(&old);
        }
    }

    fn forget_value(&mut self, value: &Value) {
        let key = value.to_string();
        if let Some(count) = self.values.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.values.remove(&key);
            }
        }
    }
}

/// One maintained subquery result.
#[derive(Debug)]
pub struct SubSet {
    kind: SubqueryKind,
    class_name: String,
    /// The inner query (`$inQuery`/`$select`); `None` for `$relatedTo`.
    inner: Option<Query>,
    /// Its `where` (for reading the set again).
    where_: Map<String, Value>,
    key: Option<String>,
    owner_id: Option<String>,
    /// The identity the set was read for.
    reader: Reader,
    /// Read per outer event (`contains`), written per inner change; never held across an
    /// await.
    members: RwLock<Members>,
    /// Most members the set may hold (`mongodb.max_subquery_results`).
    max_members: usize,
    /// The set outgrew `max_members` or could not be read again: it no longer answers, and
    /// the gate gives its subscriptions nothing until they subscribe again.
    broken: AtomicBool,
}

impl SubquerySet for SubSet {
    fn is_current(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    fn contains(&self, value: &Value) -> bool {
        let members = self.members.read();
        match self.kind {
            SubqueryKind::InQuery | SubqueryKind::NotInQuery => {
                value.get("className").and_then(Value::as_str) == Some(self.class_name.as_str())
                    && value
                        .get("objectId")
                        .and_then(Value::as_str)
                        .is_some_and(|id| members.by_id.contains_key(id))
            }
            SubqueryKind::Select | SubqueryKind::DontSelect => {
                members.values.contains_key(&value.to_string())
            }
            SubqueryKind::RelatedTo => value
                .as_str()
                .is_some_and(|id| members.by_id.contains_key(id)),
        }
    }
}

impl SubSet {
    /// Re-decides one inner object's membership after a change, with the inner class's
    /// permissions now.
    fn apply(&self, message: &Message, permissions: Option<&ClassPermissions>) {
        let Some(inner) = &self.inner else { return };
        let Some(id) = message.current.get("objectId").and_then(Value::as_str) else {
            return;
        };
        let judged = InnerQuery {
            class_name: &self.class_name,
            permissions,
            query: inner,
            key: self.key.as_deref().filter(|_| self.selects()),
        };
        let member = message.kind == ChangeKind::Save
            && subquery_member(&judged, &self.reader, &message.current);
        let mut members = self.members.write();
        if !member {
            members.remove(id);
            return;
        }
        match self.kind {
            SubqueryKind::Select | SubqueryKind::DontSelect => {
                match self.key.as_ref().and_then(|k| message.current.get(k)) {
                    Some(value) => members.insert(id.to_owned(), value.clone()),
                    None => members.remove(id),
                }
            }
            _ => members.insert(id.to_owned(), Value::Null),
        }
        if members.by_id.len() > self.max_members {
            // Keeping it would let one subscription hold unbounded memory; a partial set
            // would answer wrongly. It stops answering instead.
            tracing::warn!(class = %self.class_name, max = self.max_members, "a subquery's set outgrew mongodb.max_subquery_results; its subscriptions get no more events until they subscribe again");
            *members = Members::default();
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    /// Approximate bytes the set holds.
    fn footprint(&self) -> usize {
        let members = self.members.read();
        let ids: usize = members.by_id.keys().map(|id| id.len() + 64).sum();
        let values: usize = members.values.keys().map(|v| v.len() + 48).sum();
        std::mem::size_of::<Self>() + ids + values
    }

    fn selects(&self) -> bool {
        matches!(self.kind, SubqueryKind::Select | SubqueryKind::DontSelect)
    }
}

/// The registry of maintained subquery sets.
pub struct Subqueries {
    store: Arc<dyn Store>,
    schemas: Arc<Schemas>,
    prefix: String,
    files: FileUrls,
    max_results: usize,
    /// Subquery key (kind, class, inner clause, key, identity) → its set, while a
    /// subscription holds it (weak). Held for one map operation, never across an await.
    sets: Mutex<HashMap<String, Weak<SubSet>>>,
}

impl std::fmt::Debug for Subqueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subqueries")
            .field("sets", &self.sets.lock().len())
            .finish_non_exhaustive()
    }
}

impl Subqueries {
    /// A registry reading from `store`; a set larger than `max_results` is refused.
    pub fn new(
        store: Arc<dyn Store>,
        schemas: Arc<Schemas>,
        prefix: &str,
        files: FileUrls,
        max_results: usize,
    ) -> Self {
        Self {
            store,
            schemas,
            prefix: prefix.to_owned(),
            files,
            max_results,
            sets: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> Vec<Arc<SubSet>> {
        let mut sets = self.sets.lock();
        sets.retain(|_, weak| weak.strong_count() > 0);
        sets.values().filter_map(Weak::upgrade).collect()
    }

    /// Applies a change of a live object to every set of its class; `permissions` are the
    /// class's permissions now.
    pub fn apply_change(&self, message: &Message, permissions: Option<&ClassPermissions>) {
        let Some(class) = message.current.get("className").and_then(Value::as_str) else {
            return;
        };
        for set in self.live() {
            if set.class_name == class {
                set.apply(message, permissions);
            }
        }
    }

    /// Reads every set over `class_name` again (its schema — permissions, protected fields —
    /// changed), judging members with `permissions`. A set that cannot be read again is
    /// emptied and dropped from sharing.
    pub async fn refresh_class(&self, class_name: &str, permissions: Option<&ClassPermissions>) {
        let sets: Vec<(String, Arc<SubSet>)> = {
            let mut sets = self.sets.lock();
            sets.retain(|_, weak| weak.strong_count() > 0);
            sets.iter()
                .filter_map(|(key, weak)| Some((key.clone(), weak.upgrade()?)))
                .filter(|(_, set)| set.class_name == class_name && set.inner.is_some())
                .collect()
        };
        for (key, set) in sets {
            let subquery = SubqueryShape {
                kind: set.kind,
                class_name: &set.class_name,
                inner: set.inner.as_ref(),
                where_: &set.where_,
                key: set.key.as_deref(),
                owner_id: set.owner_id.as_deref(),
            };
            match self.read_members(&subquery, &set.reader, permissions).await {
                Ok(members) => *set.members.write() = members,
                Err(err) => {
                    tracing::warn!(class = class_name, error = %err, "re-reading a subquery after a schema change failed; its subscriptions get no more events until they subscribe again");
                    *set.members.write() = Members::default();
                    set.broken.store(true, Ordering::Relaxed);
                    self.sets.lock().remove(&key);
                }
            }
        }
    }

    /// Applies a relation row added or removed.
    pub fn apply_join(
        &self,
        field: &str,
        owner_class: &str,
        owning_id: &str,
        related_id: &str,
        added: bool,
    ) {
        for set in self.live() {
            if set.kind == SubqueryKind::RelatedTo
                && set.class_name == owner_class
                && set.key.as_deref() == Some(field)
                && set.owner_id.as_deref() == Some(owning_id)
            {
                let mut members = set.members.write();
                if added {
                    members.insert(related_id.to_owned(), Value::Null);
                } else {
                    members.remove(related_id);
                }
            }
        }
    }

    /// Forgets every set's contents (after a resynchronisation the sets are stale); sets are
    /// dropped, so subscriptions must be made again.
    pub fn clear(&self) {
        self.sets.lock().clear();
    }

    async fn materialise(
        &self,
        subquery: &Subquery,
        reader: &Reader,
        permissions: Option<&ClassPermissions>,
    ) -> Result<Arc<SubSet>, QueryError> {
        let inner = subquery.inner.as_deref().cloned();
        let shape = SubqueryShape {
            kind: subquery.kind,
            class_name: &subquery.class_name,
            inner: inner.as_ref(),
            where_: &subquery.where_,
            key: subquery.key.as_deref(),
            owner_id: subquery.owner_id.as_deref(),
        };
        let members = self.read_members(&shape, reader, permissions).await?;
        Ok(Arc::new(SubSet {
            kind: subquery.kind,
            class_name: subquery.class_name.clone(),
            inner,
            where_: subquery.where_.clone(),
            key: subquery.key.clone(),
            owner_id: subquery.owner_id.clone(),
            reader: reader.clone(),
            members: RwLock::new(members),
            max_members: self.max_results,
            broken: AtomicBool::new(false),
        }))
    }

    /// Reads the members of a subquery from the database, keeping the inner objects the gate
    /// lets `reader`'s subquery count.
    async fn read_members(
        &self,
        subquery: &SubqueryShape<'_>,
        reader: &Reader,
        permissions: Option<&ClassPermissions>,
    ) -> Result<Members, QueryError> {
        let too_large = || QueryError::Unsupported {
            operator: kind_name(subquery.kind).to_owned(),
            detail: format!(
                ": the subquery selects more than {} objects",
                self.max_results
            ),
        };
        let failed = |e: anyhow::Error| {
            QueryError::Invalid(format!(
                "{}: reading the subquery failed: {e:#}",
                kind_name(subquery.kind)
            ))
        };
        let mut members = Members::default();
        let limit = i64::try_from(self.max_results)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let Some(inner) = subquery.inner else {
            // $relatedTo: the relation's rows (its owner class and key were admitted by the
            // gate when the client subscribed).
            let owner = subquery.owner_id.unwrap_or_default();
            let key = subquery.key.unwrap_or_default();
            let collection = format!("{}_Join:{key}:{}", self.prefix, subquery.class_name);
            let rows = self
                .store
                .find(&collection, doc! {"owningId": owner}, limit)
                .await
                .map_err(failed)?;
            if rows.len() > self.max_results {
                return Err(too_large());
            }
            for row in rows {
                if let Ok(related) = row.get_str("relatedId") {
                    members.insert(related.to_owned(), Value::Null);
                }
            }
            return Ok(members);
        };
        let schema = self.schemas.get(subquery.class_name);
        let (filter, exact) = prefilter(subquery.where_, schema.as_deref());
        let collection = format!("{}{}", self.prefix, subquery.class_name);
        // An inexact filter reads candidates the matcher rejects; bound those too.
        let cap = if exact {
            limit
        } else {
            limit.saturating_mul(4)
        };
        let documents = self
            .store
            .find(&collection, filter, cap)
            .await
            .map_err(failed)?;
        if documents.len() as i64 >= cap {
            return Err(too_large());
        }
        let selects = matches!(
            subquery.kind,
            SubqueryKind::Select | SubqueryKind::DontSelect
        );
        let judged = InnerQuery {
            class_name: subquery.class_name,
            permissions,
            query: inner,
            key: subquery.key.filter(|_| selects),
        };
        for document in &documents {
            let object: Map<String, Value> = to_parse_json(
                subquery.class_name,
                document,
                schema.as_deref(),
                &self.files,
            );
            if !subquery_member(&judged, reader, &object) {
                continue;
            }
            let Some(id) = object.get("objectId").and_then(Value::as_str) else {
                continue;
            };
            let value = if selects {
                match subquery.key.and_then(|k| object.get(k)) {
                    Some(value) => value.clone(),
                    None => continue,
                }
            } else {
                Value::Null
            };
            members.insert(id.to_owned(), value);
            if members.by_id.len() > self.max_results {
                return Err(too_large());
            }
        }
        Ok(members)
    }
}

/// The parts of a subquery needed to read its members.
struct SubqueryShape<'a> {
    kind: SubqueryKind,
    class_name: &'a str,
    /// The compiled inner clause (`None` for `$relatedTo`).
    inner: Option<&'a Query>,
    /// Its `where`, for the database prefilter.
    where_: &'a Map<String, Value>,
    key: Option<&'a str>,
    owner_id: Option<&'a str>,
}

fn kind_name(kind: SubqueryKind) -> &'static str {
    match kind {
        SubqueryKind::InQuery => "$inQuery",
        SubqueryKind::NotInQuery => "$notInQuery",
        SubqueryKind::Select => "$select",
        SubqueryKind::DontSelect => "$dontSelect",
        SubqueryKind::RelatedTo => "$relatedTo",
    }
}

#[async_trait]
impl SubqueryResolver for Subqueries {
    async fn bind(
        &self,
        query: &mut Query,
        reader: &Reader,
        permissions: &ClassPermissionMap,
    ) -> Result<usize, QueryError> {
        let identity = reader.identity_key();
        let mut bound: Vec<Arc<SubSet>> = Vec::new();
        for subquery in query.subqueries() {
            let key = format!(
                "{:?}\u{1}{}\u{1}{}\u{1}{:?}\u{1}{:?}\u{1}{identity}",
                subquery.kind,
                subquery.class_name,
                subquery
                    .inner
                    .as_ref()
                    .map_or("", |inner| inner.canonical()),
                subquery.key,
                subquery.owner_id
            );
            let existing = self
                .sets
                .lock()
                .get(&key)
                .and_then(Weak::upgrade)
                .filter(|set| set.is_current());
            let set = match existing {
                Some(set) => set,
                None => {
                    let inner_permissions = permissions
                        .get(&subquery.class_name)
                        .and_then(|p| p.as_deref());
                    let set = self
                        .materialise(subquery, reader, inner_permissions)
                        .await?;
                    self.sets.lock().insert(key, Arc::downgrade(&set));
                    set
                }
            };
            bound.push(set);
        }
        // Charged to the subscriber's budget in full, shared or not.
        let footprint = bound.iter().map(|set| set.footprint()).sum();
        let mut sets = bound.into_iter();
        // The sets are specific to this identity: the query is shared only with queries bound
        // for the same one, and judged stale once its subscriber's identity changes.
        query.bind_subqueries(&identity, &mut |_| {
            let set: Arc<dyn SubquerySet> = sets.next().expect("one set per subquery, in order");
            set
        });
        Ok(footprint)
    }
}
