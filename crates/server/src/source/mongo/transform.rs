//! Change-stream events → what parse-server would have published (the storage format of parse-server's MongoDB adapter),
//! plus the auth and schema changes the server must react to.
//!
//! For a class collection: `insert` → a create; `update`/`replace` → an update with the
//! original; `delete` → a delete of the last version. The original comes from the pre-image
//! when MongoDB has one, else from the object cache; else (no pre-images and an object not seen
//! since start) it is *partial*: the new version without the fields the update changed, and
//! the gate is told which fields changed so it can still decide match transitions
//! (`OriginalState::Partial`). A replace without a known original is `Unknown`.

use std::collections::BTreeSet;

use bson::{Bson, Document};
use livequery_matcher::ChangeKind;
use mongodb::change_stream::event::OperationType;
use serde_json::{Map, Value};

use super::cache::ObjectCache;
use super::convert::{FileUrls, to_parse_json};
use super::schema::Schemas;
use super::store::RawEvent;
use crate::event::OriginalState;
use crate::pubsub::Message;

/// What one change-stream event means for the server.
#[derive(Debug)]
pub enum Output {
    /// A change of a live class, to dispatch.
    Change(Message),
    /// A class schema changed (its permissions or field types).
    Schema(String),
    /// A session was deleted or changed; its token, when known.
    Session {
        /// The `_Session` objectId.
        id: String,
        /// Its token (known from the document or the cache).
        token: Option<String>,
    },
    /// A user's direct role membership changed.
    UserRoles(String),
    /// The role graph changed in a way that does not name the affected users.
    RoleGraph,
    /// A row of a relation join table (`_Join:<field>:<Owner>`) was added or removed.
    Join {
        /// The relation field.
        field: String,
        /// The owning class.
        owner_class: String,
        /// The owning object.
        owning_id: String,
        /// The related object.
        related_id: String,
        /// Added (true) or removed.
        added: bool,
    },
    /// A live class's collection was dropped: its objects vanished without delete events.
    Dropped(String),
    /// The stream was invalidated (the database was dropped or renamed).
    Invalidated,
}

/// Classes the server serves: an explicit list, or every class.
#[derive(Debug, Clone, Default)]
pub struct LiveClasses(pub Option<BTreeSet<String>>);

/// The system classes served by default: clients read them through the authorization gate
/// (`_User` secrets hidden, `_Session` restricted to its user). parse-server's internal
/// classes (`_Installation`, `_PushStatus`, …) are served only when listed explicitly, and
/// then to master clients only.
const DEFAULT_SYSTEM_CLASSES: &[&str] = &["_User", "_Role", "_Session"];

impl LiveClasses {
    /// Whether `class_name` is served.
    pub fn contains(&self, class_name: &str) -> bool {
        if class_name == "_SCHEMA" || class_name.starts_with("_Join:") {
            return false;
        }
        match &self.0 {
            Some(set) => set.contains(class_name),
            None => !class_name.starts_with('_') || DEFAULT_SYSTEM_CLASSES.contains(&class_name),
        }
    }
}

/// Turns raw events into [`Output`]s.
#[derive(Debug)]
pub struct Transformer {
    /// Collection name prefix (parse-server's `collectionPrefix`).
    pub prefix: String,
    /// Served classes.
    pub live: LiveClasses,
    /// File URLs.
    pub files: FileUrls,
    /// The cache of last versions.
    pub cache: ObjectCache,
}

fn id_of(event: &RawEvent) -> Option<String> {
    match event.document_key.as_ref()?.get("_id")? {
        Bson::String(id) => Some(id.clone()),
        Bson::ObjectId(oid) => Some(oid.to_hex()),
        other => Some(other.to_string()),
    }
}

/// The Parse field a stored update path touches.
fn parse_field(path: &str) -> Option<String> {
    let head = path.split('.').next().unwrap_or(path);
    Some(match head {
        "_rperm" | "_wperm" | "_acl" => "ACL".to_owned(),
        "_created_at" => "createdAt".to_owned(),
        "_updated_at" => "updatedAt".to_owned(),
        "_session_token" => "sessionToken".to_owned(),
        _ if head.starts_with("_p_") => head[3..].to_owned(),
        _ if head.starts_with("_auth_data_") => "authData".to_owned(),
        _ if head.starts_with('_') => return None,
        _ => head.to_owned(),
    })
}

/// Applies an update description to a stored document: dotted `$set` paths (through
/// sub-documents and array indexes), `$unset`s and array truncations.
fn apply_update(
    document: Document,
    description: &mongodb::change_stream::event::UpdateDescription,
) -> Document {
    fn set_path(target: &mut Bson, path: &[&str], value: Bson) {
        let Some((head, rest)) = path.split_first() else {
            *target = value;
            return;
        };
        match target {
            Bson::Array(items) if head.parse::<usize>().is_ok() => {
                let index: usize = head.parse().unwrap_or_default();
                if items.len() <= index {
                    items.resize(index + 1, Bson::Null);
                }
                set_path(&mut items[index], rest, value);
            }
            Bson::Document(fields) => {
                let entry = fields.entry((*head).to_owned()).or_insert_with(|| {
                    if rest.is_empty() {
                        Bson::Null
                    } else {
                        Bson::Document(Document::new())
                    }
                });
                set_path(entry, rest, value);
            }
            other => {
                let mut fields = Document::new();
                let mut inner = if rest.is_empty() {
                    Bson::Null
                } else {
                    Bson::Document(Document::new())
                };
                set_path(&mut inner, rest, value);
                fields.insert(*head, inner);
                *other = Bson::Document(fields);
            }
        }
    }
    fn at_path<'a>(target: &'a mut Bson, path: &[&str]) -> Option<&'a mut Bson> {
        let Some((head, rest)) = path.split_first() else {
            return Some(target);
        };
        let next = match target {
            Bson::Document(fields) => fields.get_mut(*head)?,
            Bson::Array(items) => items.get_mut(head.parse::<usize>().ok()?)?,
            _ => return None,
        };
        at_path(next, rest)
    }
    let mut root = Bson::Document(document);
    for (path, value) in &description.updated_fields {
        let parts: Vec<&str> = path.split('.').collect();
        set_path(&mut root, &parts, value.clone());
    }
    for path in &description.removed_fields {
        let parts: Vec<&str> = path.split('.').collect();
        let Some((last, parent)) = parts.split_last() else {
            continue;
        };
        match at_path(&mut root, parent) {
            Some(Bson::Document(fields)) => {
                fields.remove(*last);
            }
            // `$unset` of an array element leaves a null in its place.
            Some(Bson::Array(items)) => {
                if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *item = Bson::Null;
                }
            }
            _ => {}
        }
    }
    for truncated in description.truncated_arrays.iter().flatten() {
        let parts: Vec<&str> = truncated.field.split('.').collect();
        if let Some(Bson::Array(items)) = at_path(&mut root, &parts) {
            items.truncate(usize::try_from(truncated.new_size).unwrap_or(0));
        }
    }
    match root {
        Bson::Document(document) => document,
        _ => Document::new(),
    }
}

impl Transformer {
    fn class_of<'a>(&self, collection: &'a str) -> Option<&'a str> {
        collection.strip_prefix(self.prefix.as_str())
    }

    /// Interprets one event. `schemas` is updated in place for `_SCHEMA` changes.
    pub fn transform(&mut self, event: RawEvent, schemas: &Schemas) -> Vec<Output> {
        match event.operation_type {
            OperationType::Invalidate | OperationType::DropDatabase => {
                return vec![Output::Invalidated];
            }
            OperationType::Drop | OperationType::Rename => {
                let class = event
                    .ns
                    .as_ref()
                    .and_then(|ns| ns.coll.as_deref())
                    .and_then(|c| self.class_of(c))
                    .map(str::to_owned);
                return match class {
                    Some(class) if self.live.contains(&class) => vec![Output::Dropped(class)],
                    _ => Vec::new(),
                };
            }
            OperationType::Insert
            | OperationType::Update
            | OperationType::Replace
            | OperationType::Delete => {}
            _ => return Vec::new(),
        }
        let Some(collection) = event.ns.as_ref().and_then(|ns| ns.coll.clone()) else {
            return Vec::new();
        };
        let Some(class) = self.class_of(&collection).map(str::to_owned) else {
            return Vec::new();
        };
        let Some(id) = id_of(&event) else {
            return Vec::new();
        };
        let kind = if event.operation_type == OperationType::Delete {
            ChangeKind::Delete
        } else {
            ChangeKind::Save
        };

        // The versions before and after, in stored form.
        let cached = self.cache.get(&collection, &id);
        let before = event
            .full_document_before_change
            .clone()
            .or_else(|| cached.clone());
        let exact_before = event.full_document_before_change.is_some() || cached.is_some();
        // The version after: the post-image when MongoDB recorded one (pre-images on, or an
        // insert/replace); else the update applied to the exact previous version; else the
        // looked-up current document, which may already be a later version.
        let applied = match (
            event.operation_type.clone(),
            &event.update_description,
            &before,
        ) {
            (OperationType::Update, Some(description), Some(before))
                if exact_before && event.full_document_before_change.is_none() =>
            {
                Some(apply_update(before.clone(), description))
            }
            _ => None,
        };
        let after = match kind {
            ChangeKind::Delete => None,
            ChangeKind::Save => applied.or_else(|| event.full_document.clone()),
        };
        match (&after, kind) {
            (Some(document), _) => self.cache.put(&collection, &id, document.clone()),
            (None, ChangeKind::Delete) => {
                self.cache.remove(&collection, &id);
            }
            (None, ChangeKind::Save) => {}
        }

        let mut outputs = Vec::new();
        match class.as_str() {
            "_SCHEMA" => {
                match &after {
                    Some(document) => {
                        schemas.put_document(document);
                    }
                    None => schemas.remove(&id),
                }
                outputs.push(Output::Schema(id.clone()));
                return outputs;
            }
            "_Session" => {
                let token = after
                    .as_ref()
                    .or(before.as_ref())
                    .and_then(|d| d.get_str("_session_token").ok())
                    .map(str::to_owned);
                if kind == ChangeKind::Delete || event.operation_type != OperationType::Insert {
                    outputs.push(Output::Session {
                        id: id.clone(),
                        token,
                    });
                }
            }
            "_Role" => outputs.push(Output::RoleGraph),
            _ if class.starts_with("_Join:") => {
                let row = after.as_ref().or(before.as_ref());
                let mut parts = class.splitn(3, ':').skip(1);
                let (Some(field), Some(owner_class)) = (parts.next(), parts.next()) else {
                    return outputs;
                };
                let owning = row.and_then(|r| r.get_str("owningId").ok());
                let related = row.and_then(|r| r.get_str("relatedId").ok());
                match (field, owner_class, related) {
                    ("users", "_Role", Some(user)) => {
                        outputs.push(Output::UserRoles(user.to_owned()))
                    }
                    ("users", "_Role", None) | ("roles", "_Role", _) => {
                        outputs.push(Output::RoleGraph)
                    }
                    _ => {}
                }
                if let (Some(owning), Some(related)) = (owning, related) {
                    outputs.push(Output::Join {
                        field: field.to_owned(),
                        owner_class: owner_class.to_owned(),
                        owning_id: owning.to_owned(),
                        related_id: related.to_owned(),
                        added: kind == ChangeKind::Save,
                    });
                }
                return outputs;
            }
            _ => {}
        }
        if !self.live.contains(&class) {
            return outputs;
        }
        let schema = schemas.get(&class);
        let convert =
            |document: &Document| to_parse_json(&class, document, schema.as_deref(), &self.files);
        // The class's permissions travel with each event, as parse-server's messages carry
        // them: an event is then never judged by permissions older than the
        // schema change that preceded it in the stream.
        let permissions = schema.as_ref().map(|s| s.permissions.clone());
        let message = match kind {
            ChangeKind::Delete => {
                // Without a pre-image or a cached version nothing is known of the deleted
                // object but its id: it cannot be matched or checked against ACLs.
                let Some(before) = &before else {
                    return outputs;
                };
                Message {
                    kind,
                    current: sanitised(convert(before)),
                    original: None,
                    permissions,
                    original_state: OriginalState::Exact,
                    unread: None,
                }
            }
            ChangeKind::Save => {
                let Some(after) = &after else { return outputs };
                let current = sanitised(convert(after));
                let (original, original_state) = match (event.operation_type, &before) {
                    (OperationType::Insert, _) => (None, OriginalState::Exact),
                    (_, Some(before)) if exact_before => {
                        (Some(sanitised(convert(before))), OriginalState::Exact)
                    }
                    (OperationType::Update, _) => match &event.update_description {
                        Some(description) => {
                            let mut changed: BTreeSet<String> = description
                                .updated_fields
                                .keys()
                                .filter_map(|p| parse_field(p))
                                .collect();
                            changed.extend(
                                description
                                    .removed_fields
                                    .iter()
                                    .filter_map(|p| parse_field(p)),
                            );
                            changed.extend(
                                description
                                    .truncated_arrays
                                    .iter()
                                    .flatten()
                                    .filter_map(|t| parse_field(&t.field)),
                            );
                            let partial: Map<String, Value> = current
                                .iter()
                                .filter(|(k, _)| !changed.contains(*k))
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect();
                            (
                                Some(partial),
                                OriginalState::Partial {
                                    changed: changed.into_iter().collect(),
                                },
                            )
                        }
                        None => (None, OriginalState::Unknown),
                    },
                    _ => (None, OriginalState::Unknown),
                };
                Message {
                    kind,
                    current,
                    original,
                    permissions,
                    original_state,
                    unread: None,
                }
            }
        };
        outputs.push(Output::Change(message));
        outputs
    }
}

/// Drops keys that are not identifier-like, as every source does.
fn sanitised(mut object: Map<String, Value>) -> Map<String, Value> {
    object.retain(|key, _| livequery_matcher::gate::is_identifier(key));
    object
}
