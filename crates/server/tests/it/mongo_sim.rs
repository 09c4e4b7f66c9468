//! An in-memory MongoDB behind the source's [`Store`] seam: collections, an oplog of change
//! events in MongoDB's documented format, change streams that honour the source's `$match`
//! pipeline, resume tokens, pre- and post-images, `updateLookup`, and injected failures
//! (connection loss, history loss, refused watches).
//!
//! It lets the whole pipeline — stream → transform → auth → dispatch → socket — run in CI,
//! where no `mongod` can be installed. Filters are evaluated for the operators the source
//! emits; anything else panics, so a test cannot pass on a filter the double ignored.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bson::{Bson, DateTime, Document, doc};
use livequery_server::source::mongo::store::{
    EventStream, RawEvent, Store, StreamError, StreamMode, StreamStart,
};
use mongodb::change_stream::event::ResumeToken;
use parking_lot::Mutex;
use serde::Deserialize;

/// How a change stream was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WatchRecord {
    /// The sequence number the stream resumed after (`None`: from now).
    pub(crate) after: Option<u64>,
    /// Which documents the events carry.
    pub(crate) mode: StreamMode,
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    operation: &'static str,
    collection: String,
    id: Bson,
    /// Post-image (inserts and replaces always; updates when images are on).
    after: Option<Document>,
    /// Pre-image (when images are on).
    before: Option<Document>,
    description: Option<Document>,
    wall: DateTime,
    /// A recorded event delivered as it is (only its `_id` becomes this entry's token).
    raw: Option<Document>,
}

/// One write, as the oplog records it.
struct Write<'a> {
    operation: &'static str,
    collection: &'a str,
    id: Bson,
    before: Option<Document>,
    after: Option<Document>,
    description: Option<Document>,
}

#[derive(Debug, Default)]
struct State {
    collections: BTreeMap<String, Vec<Document>>,
    oplog: Vec<Entry>,
    seq: u64,
    /// Events below this sequence number are gone from the oplog.
    horizon: u64,
    images: HashSet<String>,
    images_unsupported: bool,
    /// Events too large to carry their documents.
    too_large: HashSet<u64>,
    /// Bumped to break every open stream (a connection loss).
    generation: u64,
    refuse_watches: usize,
    refuse_listings: usize,
    watches: Vec<WatchRecord>,
    finds: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

/// The simulated database; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SimMongo(Arc<Shared>);

impl std::ops::Deref for SimMongo {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

fn token_of(seq: u64) -> ResumeToken {
    #[derive(Deserialize)]
    struct Wrapper {
        t: ResumeToken,
    }
    let bytes = bson::to_vec(&doc! {"t": {"_data": format!("{seq:016x}")}}).expect("token bytes");
    bson::from_slice::<Wrapper>(&bytes).expect("token").t
}

fn seq_of(token: &ResumeToken) -> u64 {
    let value = bson::to_bson(token).expect("token to BSON");
    let data = value
        .as_document()
        .and_then(|d| d.get_str("_data").ok())
        .expect("_data");
    u64::from_str_radix(data, 16).expect("hex token")
}

impl SimMongo {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// This database as the source's store.
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.clone())
    }

    fn record(&self, state: &mut State, write: Write<'_>) {
        let Write {
            operation,
            collection,
            id,
            before,
            after,
            description,
        } = write;
        state.seq += 1;
        let imaged = state.images.contains(collection);
        let entry = Entry {
            seq: state.seq,
            operation,
            collection: collection.to_owned(),
            id,
            after: match operation {
                "insert" | "replace" => after,
                "update" if imaged => after,
                _ => None,
            },
            before: if imaged { before } else { None },
            description,
            wall: DateTime::now(),
            raw: None,
        };
        state.oplog.push(entry);
        self.changed.notify_waiters();
    }

    /// Inserts a document (it must carry `_id`).
    pub(crate) fn insert(&self, collection: &str, document: Document) {
        let mut state = self.state.lock();
        let id = document.get("_id").cloned().expect("_id");
        state
            .collections
            .entry(collection.to_owned())
            .or_default()
            .push(document.clone());
        self.record(
            &mut state,
            Write {
                operation: "insert",
                collection,
                id,
                before: None,
                after: Some(document),
                description: None,
            },
        );
    }

    /// `$set`s top-level fields and `$unset`s others, as one update.
    pub(crate) fn update(&self, collection: &str, id: &str, set: Document, unset: &[&str]) {
        let mut state = self.state.lock();
        let documents = state.collections.get_mut(collection).expect("collection");
        let document = documents
            .iter_mut()
            .find(|d| d.get_str("_id") == Ok(id))
            .expect("document");
        let before = document.clone();
        for (key, value) in &set {
            document.insert(key.clone(), value.clone());
        }
        for key in unset {
            document.remove(*key);
        }
        let after = document.clone();
        let description = doc! {"updatedFields": set, "removedFields": unset.iter().map(|k| Bson::String((*k).to_owned())).collect::<Vec<_>>(), "truncatedArrays": []};
        self.record(
            &mut state,
            Write {
                operation: "update",
                collection,
                id: Bson::String(id.to_owned()),
                before: Some(before),
                after: Some(after),
                description: Some(description),
            },
        );
    }

    /// Replaces a whole document.
    pub(crate) fn replace(&self, collection: &str, document: Document) {
        let mut state = self.state.lock();
        let id = document.get_str("_id").expect("_id").to_owned();
        let documents = state.collections.get_mut(collection).expect("collection");
        let slot = documents
            .iter_mut()
            .find(|d| d.get_str("_id") == Ok(id.as_str()))
            .expect("document");
        let before = std::mem::replace(slot, document.clone());
        self.record(
            &mut state,
            Write {
                operation: "replace",
                collection,
                id: Bson::String(id),
                before: Some(before),
                after: Some(document),
                description: None,
            },
        );
    }

    /// Deletes a document.
    pub(crate) fn delete(&self, collection: &str, id: &str) {
        let mut state = self.state.lock();
        let documents = state.collections.get_mut(collection).expect("collection");
        let index = documents
            .iter()
            .position(|d| d.get_str("_id") == Ok(id))
            .expect("document");
        let before = documents.remove(index);
        self.record(
            &mut state,
            Write {
                operation: "delete",
                collection,
                id: Bson::String(id.to_owned()),
                before: Some(before),
                after: None,
                description: None,
            },
        );
    }

    /// Drops a collection.
    pub(crate) fn drop_collection(&self, collection: &str) {
        let mut state = self.state.lock();
        state.collections.remove(collection);
        state.images.remove(collection);
        self.record(
            &mut state,
            Write {
                operation: "drop",
                collection,
                id: Bson::Null,
                before: None,
                after: None,
                description: None,
            },
        );
    }

    /// Appends a recorded change event to the oplog, delivered verbatim. When a stream
    /// delivers it, it is applied to the collections as far as it tells (its `fullDocument`
    /// is stored, a delete removes), so lookups see the database as of that event.
    pub(crate) fn replay(&self, event: Document) {
        let mut state = self.state.lock();
        state.seq += 1;
        let collection = event
            .get_document("ns")
            .ok()
            .and_then(|ns| ns.get_str("coll").ok())
            .unwrap_or_default()
            .to_owned();
        let entry = Entry {
            seq: state.seq,
            operation: "raw",
            collection,
            id: Bson::Null,
            after: None,
            before: None,
            description: None,
            wall: DateTime::now(),
            raw: Some(event),
        };
        state.oplog.push(entry);
        self.changed.notify_waiters();
    }

    /// Breaks every open stream, as a lost connection or a primary step-down does.
    pub(crate) fn break_streams(&self) {
        self.state.lock().generation += 1;
        self.changed.notify_waiters();
    }

    /// The oplog rolls over while streams lag: a write nobody saw falls off it with
    /// everything before, and open streams break. No stream can resume before now.
    pub(crate) fn lose_history(&self) {
        let mut state = self.state.lock();
        state.seq += 1;
        state.horizon = state.seq + 1;
        state.oplog.clear();
        state.generation += 1;
        drop(state);
        self.changed.notify_waiters();
    }

    /// The next `count` watch attempts fail (the server is down).
    pub(crate) fn refuse_watches(&self, count: usize) {
        self.state.lock().refuse_watches = count;
    }

    /// The next `count` collection listings fail (the server is down at start-up).
    pub(crate) fn refuse_listings(&self, count: usize) {
        self.state.lock().refuse_listings = count;
    }

    /// The latest write becomes an event too large to carry its documents (> 16 MB).
    pub(crate) fn make_last_write_too_large(&self) {
        let mut state = self.state.lock();
        let seq = state.seq;
        state.too_large.insert(seq);
    }

    /// Older MongoDB: `collMod changeStreamPreAndPostImages` is refused.
    pub(crate) fn without_image_support(&self) {
        self.state.lock().images_unsupported = true;
    }

    /// Every watch opened so far.
    pub(crate) fn watches(&self) -> Vec<WatchRecord> {
        self.state.lock().watches.clone()
    }

    /// Collections with images switched on.
    pub(crate) fn imaged(&self) -> HashSet<String> {
        self.state.lock().images.clone()
    }

    /// The latest sequence number written.
    pub(crate) fn last_seq(&self) -> u64 {
        self.state.lock().seq
    }

    /// How many `find`s were run.
    pub(crate) fn finds(&self) -> usize {
        self.state.lock().finds
    }

    /// The sequence number a saved resume-token file names.
    pub(crate) fn seq_in_token_file(path: &std::path::Path) -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let token: ResumeToken = serde_json::from_str(&text).expect("token file is a resume token");
        Some(seq_of(&token))
    }
}

/// Applies a recorded event to the collections (idempotent: replaces by `_id`).
fn apply_raw(state: &mut State, event: &Document) {
    let collection = event
        .get_document("ns")
        .ok()
        .and_then(|ns| ns.get_str("coll").ok())
        .unwrap_or_default()
        .to_owned();
    let Some(id) = event
        .get_document("documentKey")
        .ok()
        .and_then(|key| key.get("_id"))
        .cloned()
    else {
        return;
    };
    let documents = state.collections.entry(collection).or_default();
    documents.retain(|d| d.get("_id") != Some(&id));
    if event.get_str("operationType") != Ok("delete")
        && let Ok(full) = event.get_document("fullDocument")
    {
        documents.push(full.clone());
    }
}

/// Builds the change event document MongoDB would send for `entry`.
fn event_document(entry: &Entry, mode: StreamMode, lookup: Option<Document>) -> Document {
    if let Some(raw) = &entry.raw {
        let mut event = raw.clone();
        event.insert("_id", doc! {"_data": format!("{:016x}", entry.seq)});
        return event;
    }
    let mut event = doc! {
        "_id": {"_data": format!("{:016x}", entry.seq)},
        "operationType": entry.operation,
        "clusterTime": bson::Timestamp { time: u32::try_from(entry.wall.timestamp_millis() / 1000).unwrap_or(0), increment: 1 },
        "wallTime": entry.wall,
        "ns": {"db": "parse", "coll": entry.collection.clone()},
    };
    if entry.operation == "drop" {
        return event;
    }
    event.insert("documentKey", doc! {"_id": entry.id.clone()});
    if let Some(description) = &entry.description {
        event.insert("updateDescription", description.clone());
    }
    let full = match entry.operation {
        "insert" | "replace" => entry.after.clone(),
        "update" => match mode {
            StreamMode::Images => entry.after.clone(),
            StreamMode::Lookup => lookup,
            StreamMode::Lean => None,
        },
        _ => None,
    };
    if let Some(full) = full {
        event.insert("fullDocument", full);
    }
    if mode == StreamMode::Images
        && let Some(before) = &entry.before
    {
        event.insert("fullDocumentBeforeChange", before.clone());
    }
    event
}

struct SimStream {
    sim: SimMongo,
    pipeline: Vec<Document>,
    mode: StreamMode,
    generation: u64,
    /// Next sequence number to examine.
    position: u64,
    /// Latest position reported as a resume token.
    token: Option<u64>,
}

#[async_trait]
impl EventStream for SimStream {
    async fn next(&mut self) -> Result<Option<RawEvent>, StreamError> {
        loop {
            let notified = self.sim.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.sim.state.lock();
                if state.generation != self.generation {
                    return Err(StreamError::Other(anyhow::anyhow!(
                        "connection reset by peer"
                    )));
                }
                if self.position < state.horizon {
                    return Err(StreamError::HistoryLost("Resume of change stream was not possible, as the resume point may no longer be in the oplog.".to_owned()));
                }
                if let Some(entry) = state.oplog.iter().find(|e| e.seq >= self.position).cloned() {
                    if self.mode != StreamMode::Lean && state.too_large.contains(&entry.seq) {
                        return Err(StreamError::TooLarge("BSONObjectTooLarge: BSONObj size: 17825792 (0x1100000) is invalid. Size must be between 0 and 16793600(16MB)".to_owned()));
                    }
                    if let Some(raw) = &entry.raw {
                        apply_raw(&mut state, raw);
                    }
                    self.position = entry.seq + 1;
                    self.token = Some(entry.seq);
                    let lookup = state.collections.get(&entry.collection).and_then(|docs| {
                        docs.iter()
                            .find(|d| d.get("_id") == Some(&entry.id))
                            .cloned()
                    });
                    let document = event_document(&entry, self.mode, lookup);
                    if self
                        .pipeline
                        .iter()
                        .all(|stage| stage_matches(stage, &document))
                    {
                        let bytes = bson::to_vec(&document).expect("event bytes");
                        return Ok(Some(
                            bson::from_slice(&bytes).expect("a well-formed change event"),
                        ));
                    }
                    continue;
                }
            }
            // An empty batch: MongoDB answers a getMore after its await time with a
            // post-batch token.
            if tokio::time::timeout(Duration::from_millis(100), notified)
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    fn resume_token(&self) -> Option<ResumeToken> {
        self.token.map(token_of)
    }
}

#[async_trait]
impl Store for SimMongo {
    async fn watch(
        &self,
        start: StreamStart,
        pipeline: Vec<Document>,
        mode: StreamMode,
    ) -> Result<Box<dyn EventStream>, StreamError> {
        // Only the `$match` stage the source uses is understood.
        for stage in &pipeline {
            assert!(
                stage.len() == 1 && stage.contains_key("$match"),
                "unsupported pipeline stage {stage}"
            );
        }
        let this = self.clone();
        let mut state = self.state.lock();
        let after = match &start {
            StreamStart::Now => None,
            StreamStart::After(token) => Some(seq_of(token)),
        };
        state.watches.push(WatchRecord { after, mode });
        if state.refuse_watches > 0 {
            state.refuse_watches -= 1;
            return Err(StreamError::Other(anyhow::anyhow!(
                "No servers available (simulated outage)"
            )));
        }
        let position = match after {
            None => state.seq + 1,
            Some(seq) if seq + 1 < state.horizon => {
                return Err(StreamError::HistoryLost("Resume of change stream was not possible, as the resume point may no longer be in the oplog.".to_owned()));
            }
            Some(seq) => seq + 1,
        };
        // Like MongoDB's first (empty) batch, a new stream already has a post-batch token.
        let token = Some(position - 1);
        Ok(Box::new(SimStream {
            sim: this,
            pipeline,
            mode,
            generation: state.generation,
            position,
            token,
        }))
    }

    async fn find(
        &self,
        collection: &str,
        filter: Document,
        limit: i64,
    ) -> anyhow::Result<Vec<Document>> {
        let mut state = self.state.lock();
        state.finds += 1;
        let documents = state
            .collections
            .get(collection)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let matching = documents
            .iter()
            .filter(|d| filter_matches(&filter, d))
            .cloned();
        Ok(if limit > 0 {
            matching
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect()
        } else {
            matching.collect()
        })
    }

    async fn enable_images(&self, collection: &str) -> anyhow::Result<()> {
        let mut state = self.state.lock();
        if state.images_unsupported {
            anyhow::bail!("BSON field 'changeStreamPreAndPostImages' is an unknown field.");
        }
        state.images.insert(collection.to_owned());
        Ok(())
    }

    async fn collections(&self) -> anyhow::Result<Vec<String>> {
        let mut state = self.state.lock();
        if state.refuse_listings > 0 {
            state.refuse_listings -= 1;
            anyhow::bail!("No servers available (simulated outage)");
        }
        drop(state);
        Ok(self.state.lock().collections.keys().cloned().collect())
    }
}

// ---- filter evaluation (the operators the source's filters and pipeline use) ----

fn stage_matches(stage: &Document, event: &Document) -> bool {
    match stage.get_document("$match") {
        Ok(filter) => filter_matches(filter, event),
        Err(_) => panic!("unsupported stage {stage}"),
    }
}

fn lookup<'a>(document: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut current = document.get(parts.next()?)?;
    for part in parts {
        current = current.as_document()?.get(part)?;
    }
    Some(current)
}

pub(crate) fn filter_matches(filter: &Document, document: &Document) -> bool {
    filter.iter().all(|(key, condition)| match key.as_str() {
        "$and" => condition
            .as_array()
            .expect("$and array")
            .iter()
            .all(|c| filter_matches(c.as_document().expect("$and item"), document)),
        "$or" => condition
            .as_array()
            .expect("$or array")
            .iter()
            .any(|c| filter_matches(c.as_document().expect("$or item"), document)),
        _ if key.starts_with('$') => panic!("unsupported top-level operator {key}"),
        _ => field_matches(lookup(document, key), condition),
    })
}

fn number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(f) => Some(*f),
        _ => None,
    }
}

fn equal(a: &Bson, b: &Bson) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// MongoDB equality: the value itself, or an element of an array field; `null` matches a
/// missing field.
fn equals(value: Option<&Bson>, operand: &Bson) -> bool {
    match value {
        None => matches!(operand, Bson::Null),
        Some(Bson::Array(items)) => {
            equal(&Bson::Array(items.clone()), operand)
                || items.iter().any(|item| equal(item, operand))
        }
        Some(value) => equal(value, operand),
    }
}

fn compare(value: &Bson, operand: &Bson) -> Option<std::cmp::Ordering> {
    match (value, operand) {
        (Bson::String(a), Bson::String(b)) => Some(a.cmp(b)),
        (Bson::DateTime(a), Bson::DateTime(b)) => Some(a.cmp(b)),
        _ => number(value)?.partial_cmp(&number(operand)?),
    }
}

fn range(value: Option<&Bson>, operand: &Bson, accept: fn(std::cmp::Ordering) -> bool) -> bool {
    match value {
        None => false,
        Some(Bson::Array(items)) => items
            .iter()
            .any(|item| compare(item, operand).is_some_and(accept)),
        Some(value) => compare(value, operand).is_some_and(accept),
    }
}

fn field_matches(value: Option<&Bson>, condition: &Bson) -> bool {
    let Bson::Document(ops) = condition else {
        return equals(value, condition);
    };
    if !ops.keys().any(|k| k.starts_with('$')) {
        return equals(value, condition);
    }
    ops.iter().all(|(op, operand)| match op.as_str() {
        "$eq" => equals(value, operand),
        "$ne" => !equals(value, operand),
        "$gt" => range(value, operand, std::cmp::Ordering::is_gt),
        "$gte" => range(value, operand, std::cmp::Ordering::is_ge),
        "$lt" => range(value, operand, std::cmp::Ordering::is_lt),
        "$lte" => range(value, operand, std::cmp::Ordering::is_le),
        "$in" => operand
            .as_array()
            .expect("$in array")
            .iter()
            .any(|o| equals(value, o)),
        "$nin" => !operand
            .as_array()
            .expect("$nin array")
            .iter()
            .any(|o| equals(value, o)),
        "$exists" => value.is_some() == operand.as_bool().expect("$exists bool"),
        "$regex" => {
            let pattern =
                regex::Regex::new(operand.as_str().expect("$regex string")).expect("a valid regex");
            matches!(value, Some(Bson::String(s)) if pattern.is_match(s))
        }
        other => panic!("unsupported operator {other}"),
    })
}
