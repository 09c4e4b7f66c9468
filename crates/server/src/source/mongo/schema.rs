//! Class schemas read from parse-server's `_SCHEMA` collection: field types (needed to turn
//! stored documents back into Parse JSON) and class-level permissions.

use std::collections::HashMap;
use std::sync::Arc;

use bson::{Bson, Document};
use parking_lot::RwLock;
use serde_json::{Value, json};

/// The type of one field, as `_SCHEMA` stores it (`"number"`, `"*_User"`, `"relation<Team>"`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// `string`, `number`, `boolean`, `object`, `array`… (no conversion needed).
    Plain,
    /// `date`.
    Date,
    /// `geopoint`: stored `[longitude, latitude]`.
    GeoPoint,
    /// `polygon`: stored as GeoJSON.
    Polygon,
    /// `file`: stored as the file name.
    File,
    /// `bytes`: stored as BSON binary.
    Bytes,
    /// `*<Class>`: stored in `_p_<field>` as `"<Class>$<objectId>"`.
    Pointer(String),
    /// `relation<Class>`: not stored in the document.
    Relation(String),
}

impl FieldType {
    fn parse(text: &str) -> Self {
        if let Some(target) = text.strip_prefix('*') {
            return Self::Pointer(target.to_owned());
        }
        if let Some(target) = text
            .strip_prefix("relation<")
            .and_then(|t| t.strip_suffix('>'))
        {
            return Self::Relation(target.to_owned());
        }
        match text {
            "date" => Self::Date,
            "geopoint" => Self::GeoPoint,
            "polygon" => Self::Polygon,
            "file" => Self::File,
            "bytes" => Self::Bytes,
            _ => Self::Plain,
        }
    }
}

/// One class's schema.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassSchema {
    /// Field name → type.
    pub fields: HashMap<String, FieldType>,
    /// The class-level permissions as parse-server exposes them: the stored
    /// `_metadata.class_permissions` over closed defaults, or, without metadata, parse-server's
    /// default (everything public).
    pub permissions: Value,
}

impl ClassSchema {
    /// Reads a `_SCHEMA` document.
    pub fn from_document(document: &Document) -> Self {
        let mut fields = HashMap::new();
        for (key, value) in document {
            if key.starts_with('_') {
                continue;
            }
            if let Bson::String(text) = value {
                fields.insert(key.clone(), FieldType::parse(text));
            }
        }
        let permissions = match document
            .get_document("_metadata")
            .ok()
            .and_then(|m| m.get_document("class_permissions").ok())
        {
            Some(stored) => {
                // parse-server: stored permissions over "nobody but master" defaults.
                let mut clp = json!({"find": {}, "count": {}, "get": {}, "create": {}, "update": {}, "delete": {}, "addField": {}, "protectedFields": {}});
                if let Ok(Value::Object(stored)) =
                    serde_json::to_value(Bson::Document(stored.clone()).into_relaxed_extjson())
                    && let Value::Object(target) = &mut clp
                {
                    target.extend(stored);
                }
                clp
            }
            None => json!({
                "find": {"*": true}, "count": {"*": true}, "get": {"*": true}, "create": {"*": true},
                "update": {"*": true}, "delete": {"*": true}, "addField": {"*": true}, "protectedFields": {"*": []}
            }),
        };
        Self {
            fields,
            permissions,
        }
    }

    /// The type of `field` (plain when unknown).
    pub fn field(&self, field: &str) -> &FieldType {
        self.fields.get(field).unwrap_or(&FieldType::Plain)
    }
}

/// The schemas of every class, kept current from the change stream.
#[derive(Debug, Default)]
pub struct Schemas {
    classes: RwLock<HashMap<String, Arc<ClassSchema>>>,
}

impl Schemas {
    /// The schema of a class, if known.
    pub fn get(&self, class_name: &str) -> Option<Arc<ClassSchema>> {
        self.classes.read().get(class_name).cloned()
    }

    /// Stores the schema read from a `_SCHEMA` document (its `_id` is the class name).
    pub fn put_document(&self, document: &Document) -> Option<String> {
        let class_name = document.get_str("_id").ok()?.to_owned();
        self.classes.write().insert(
            class_name.clone(),
            Arc::new(ClassSchema::from_document(document)),
        );
        Some(class_name)
    }

    /// Forgets a class (its `_SCHEMA` document was deleted).
    pub fn remove(&self, class_name: &str) {
        self.classes.write().remove(class_name);
    }

    /// Replaces every schema.
    pub fn replace_all(&self, documents: &[Document]) {
        let classes = documents
            .iter()
            .filter_map(|d| {
                Some((
                    d.get_str("_id").ok()?.to_owned(),
                    Arc::new(ClassSchema::from_document(d)),
                ))
            })
            .collect();
        *self.classes.write() = classes;
    }
}
