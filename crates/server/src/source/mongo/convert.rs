//! Stored MongoDB documents → Parse REST JSON, as parse-server's `mongoObjectToParseObject`
//! produces it (parse-server's MongoDB adapter, `MongoTransform`).
//!
//! Top level: `_id` → `objectId`; `_created_at`/`_updated_at` → ISO strings;
//! `_rperm`/`_wperm` → `ACL` (absent when both are); `_p_<f>` → pointer `f`; schema-typed
//! GeoPoints (`[lng, lat]`), Polygons (GeoJSON, swapped back to `[lat, lng]`), Files (name →
//! `{__type: File, name, url}`) and Bytes; every relation of the schema as a placeholder;
//! `_auth_data_<provider>` → `authData.<provider>`; `_session_token` → `sessionToken`; every
//! other key starting with `_` dropped. Nested values: dates → Date JSON, binary → Bytes,
//! numbers → JSON numbers, everything else recursively as stored (nested pointers, GeoPoints
//! and Files are stored in their Parse JSON already).

use bson::{Bson, Document};
use livequery_matcher::date::format_iso_millis;
use serde_json::{Map, Value, json};

use super::schema::{ClassSchema, FieldType};

/// How file URLs are built: `<base>/files/<appId>/<url-encoded name>` (parse-server's default
/// files adapters), or no `url` at all when no base is configured.
#[derive(Debug, Clone, Default)]
pub struct FileUrls {
    /// `publicServerURL` (or `serverURL`) of parse-server, without trailing slash.
    pub base: Option<String>,
    /// The app id.
    pub app_id: String,
}

impl FileUrls {
    fn url(&self, name: &str) -> Option<String> {
        self.base.as_ref().map(|base| {
            format!(
                "{base}/files/{}/{}",
                self.app_id,
                crate::encoding::encode_uri_component(name)
            )
        })
    }
}

fn date(millis: i64) -> Value {
    json!({"__type": "Date", "iso": format_iso_millis(millis)})
}

/// A nested (non top-level) stored value.
pub fn nested(value: &Bson) -> Value {
    match value {
        // JavaScript prints integral doubles without a fraction; so does parse-server.
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
            json!(*f as i64)
        }
        Bson::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::Int32(i) => json!(i),
        Bson::Int64(i) => json!(i),
        Bson::String(s) => json!(s),
        Bson::Boolean(b) => json!(b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::DateTime(d) => date(d.timestamp_millis()),
        Bson::Binary(binary) => {
            json!({"__type": "Bytes", "base64": crate::encoding::base64(&binary.bytes)})
        }
        Bson::ObjectId(oid) => json!(oid.to_hex()),
        Bson::Decimal128(d) => json!(d.to_string()),
        Bson::Array(items) => Value::Array(items.iter().map(nested).collect()),
        Bson::Document(document) => {
            // `{__type: "Date", iso: <BSON date>}` embedded by older parse-server versions.
            if document.get_str("__type") == Ok("Date")
                && let Some(Bson::DateTime(d)) = document.get("iso")
            {
                return date(d.timestamp_millis());
            }
            Value::Object(
                document
                    .iter()
                    .map(|(k, v)| (k.clone(), nested(v)))
                    .collect(),
            )
        }
        other => other.clone().into_relaxed_extjson(),
    }
}

fn top_level(value: &Bson, kind: &FieldType, files: &FileUrls) -> Value {
    match (kind, value) {
        (FieldType::GeoPoint, Bson::Array(pair)) if pair.len() == 2 => {
            let number = |b: &Bson| matches!(b, Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_));
            if number(&pair[0]) && number(&pair[1]) {
                json!({"__type": "GeoPoint", "latitude": nested(&pair[1]), "longitude": nested(&pair[0])})
            } else {
                nested(value)
            }
        }
        (FieldType::Polygon, Bson::Document(geo)) => match geo
            .get_array("coordinates")
            .ok()
            .and_then(|rings| rings.first())
        {
            Some(Bson::Array(ring)) => {
                let points: Vec<Value> = ring
                    .iter()
                    .map(|point| match point {
                        Bson::Array(p) if p.len() == 2 => json!([nested(&p[1]), nested(&p[0])]),
                        other => nested(other),
                    })
                    .collect();
                json!({"__type": "Polygon", "coordinates": points})
            }
            _ => nested(value),
        },
        (FieldType::File, Bson::String(name)) => {
            let mut file = json!({"__type": "File", "name": name});
            if let Some(url) = files.url(name) {
                file["url"] = json!(url);
            }
            file
        }
        _ => nested(value),
    }
}

/// Converts a stored document of `class_name` into Parse REST JSON (with `className`).
pub fn to_parse_json(
    class_name: &str,
    document: &Document,
    schema: Option<&ClassSchema>,
    files: &FileUrls,
) -> Map<String, Value> {
    let plain = ClassSchema::default();
    let known_schema = schema.is_some();
    let schema = schema.unwrap_or(&plain);
    let mut out = Map::new();
    let mut read: Option<Vec<String>> = None;
    let mut write: Option<Vec<String>> = None;
    let mut auth_data = Map::new();
    let strings = |value: &Bson| -> Vec<String> {
        match value {
            Bson::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    for (key, value) in document {
        match key.as_str() {
            "_id" => {
                let id = match value {
                    Bson::String(s) => s.clone(),
                    Bson::ObjectId(oid) => oid.to_hex(),
                    other => other.to_string(),
                };
                out.insert("objectId".into(), json!(id));
            }
            "_created_at" | "_updated_at" => {
                let name = if key == "_created_at" {
                    "createdAt"
                } else {
                    "updatedAt"
                };
                match value {
                    Bson::DateTime(d) => {
                        out.insert(name.into(), json!(format_iso_millis(d.timestamp_millis())))
                    }
                    Bson::String(s) => out.insert(name.into(), json!(s)),
                    _ => None,
                };
            }
            "_rperm" => read = Some(strings(value)),
            "_wperm" => write = Some(strings(value)),
            "_session_token" => {
                if let Bson::String(token) = value {
                    out.insert("sessionToken".into(), json!(token));
                }
            }
            "_acl" | "_hashed_password" => {}
            _ if key.starts_with("_auth_data_") => {
                auth_data.insert(key["_auth_data_".len()..].to_owned(), nested(value));
            }
            _ if key.starts_with("_p_") => {
                let field = &key[3..];
                // parse-server drops pointer columns its schema does not declare.
                if known_schema && !matches!(schema.field(field), FieldType::Pointer(_)) {
                    continue;
                }
                if let Bson::String(target) = value
                    && let Some((class, id)) = target.split_once('$')
                {
                    out.insert(
                        field.to_owned(),
                        json!({"__type": "Pointer", "className": class, "objectId": id}),
                    );
                }
            }
            // Every other internal key (tokens, lockout counters, `_metadata`…) stays hidden.
            _ if key.starts_with('_') => {}
            // A stored top-level `authData` of `_User` is not the user's auth data.
            "authData" if class_name == "_User" => {}
            _ => {
                out.insert(key.clone(), top_level(value, schema.field(key), files));
            }
        }
    }
    if !auth_data.is_empty() {
        out.insert("authData".into(), Value::Object(auth_data));
    }
    if read.is_some() || write.is_some() {
        let mut acl = Map::new();
        for (entries, permission) in [
            (read.unwrap_or_default(), "read"),
            (write.unwrap_or_default(), "write"),
        ] {
            for entry in entries {
                let grant = acl.entry(entry).or_insert_with(|| json!({}));
                grant[permission] = json!(true);
            }
        }
        out.insert("ACL".into(), Value::Object(acl));
    }
    let mut relations: Vec<(&String, &String)> = schema
        .fields
        .iter()
        .filter_map(|(field, kind)| match kind {
            FieldType::Relation(target) => Some((field, target)),
            _ => None,
        })
        .collect();
    relations.sort();
    for (field, target) in relations {
        out.insert(
            field.clone(),
            json!({"__type": "Relation", "className": target}),
        );
    }
    out.insert("className".into(), json!(class_name));
    out
}
