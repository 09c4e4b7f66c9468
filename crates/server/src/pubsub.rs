//! parse-server's pub/sub message format: what parse-server publishes to Redis for its
//! LiveQuery server (`<appId>afterSave`, `<appId>afterDelete`), and what the embedded
//! source's ingest API and the MongoDB source's transform produce: `{currentParseObject,
//! originalParseObject?, classLevelPermissions?}`.
//!
//! A message that arrives as text (the Redis feed) is read in steps. [`MessageText::read`]
//! checks the whole message and reads only what routing needs (the object's `className`
//! and `objectId`), keeping its objects and permissions as spans of the text it borrows
//! (the source's read buffer). The ingest then reads just the fields the subscription
//! index looks at ([`MessageText::read_fields`]) and, only when some subscription may be
//! concerned, copies the text into a [`Message`] ([`MessageText::into_message`]) and reads
//! the whole objects ([`Message::read_objects`]): most events of a feed concern nobody,
//! and reading an object into a JSON tree (an allocation per key and per string) is most of
//! what such an event costs. Keys a message drops on receipt are skipped while reading,
//! whichever step reads them.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use livequery_matcher::ChangeKind;
use livequery_matcher::gate::is_identifier;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json_skim::Skim;
use serde_json::{Map, Value};

use crate::event::OriginalState;

/// Why a message could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a JSON object with a `currentParseObject` object.
    #[error("message must be an object with a currentParseObject object")]
    NoCurrentObject,
    /// `currentParseObject` lacks a string `className` or `objectId`.
    #[error("currentParseObject needs string className and objectId")]
    NoIdentity,
    /// `originalParseObject` or `classLevelPermissions` is not an object.
    #[error("{0} must be an object")]
    NotAnObject(&'static str),
    /// `originalParseObject` describes another object.
    #[error("originalParseObject must have the same className and objectId as currentParseObject")]
    Mismatch,
}

/// The objects of a parse-server pub/sub message (`afterSave`/`afterDelete`), before the
/// permissions are resolved.
#[derive(Debug)]
pub struct Message {
    /// Save or delete.
    pub kind: ChangeKind,
    /// `currentParseObject`, sanitised.
    pub current: Map<String, Value>,
    /// `originalParseObject`, sanitised (saves only).
    pub original: Option<Map<String, Value>>,
    /// `classLevelPermissions`.
    pub permissions: Option<Value>,
    /// How exact `original` is.
    pub original_state: OriginalState,
    /// What [`Message::from_json`] left as text: until [`Message::read_objects`], `current`
    /// is empty and `original` is `None` ([`Message::class_name`] is known); `permissions` stays
    /// `None`, the permissions being text ([`Message::permissions_text`]).
    pub(crate) unread: Option<Box<Unread>>,
}

/// The fields [`Message::read_fields`] read: of the current object, and of the original.
pub type ReadFields = (Map<String, Value>, Option<Map<String, Value>>);

/// The parts of a message still as text (checked to be JSON, objects where objects are
/// required, with the same `className` and `objectId`): spans of `text`, or past its end
/// of `unescaped`. `T` is the text, borrowed ([`MessageText`]) or owned ([`Message`]).
#[derive(Debug)]
pub(crate) struct Unread<T = String> {
    /// The message's text.
    text: T,
    /// The keys and identity strings that hold escapes, unescaped, one after the other.
    unescaped: String,
    /// `currentParseObject.className` (unescaped).
    class_name: Range<usize>,
    /// `currentParseObject.objectId` (unescaped).
    object_id: Range<usize>,
    /// The fields of `currentParseObject` with identifier-like keys, in order.
    current: Vec<Field>,
    /// The fields of `originalParseObject`: saves only, when it is an object.
    original: Option<Vec<Field>>,
    /// `classLevelPermissions`, when it is an object.
    permissions: Option<Range<usize>>,
    /// Set by [`Message::read_objects`]: only the permissions are still text.
    objects_read: bool,
}

/// One top-level field of an object kept as text: its key (unescaped) and its value (JSON
/// text), spans as in [`Unread`].
#[derive(Debug, PartialEq)]
struct Field {
    key: Range<usize>,
    value: Range<usize>,
}

impl<T: AsRef<str>> Unread<T> {
    fn str(&self, range: &Range<usize>) -> &str {
        let text = self.text.as_ref();
        if range.end <= text.len() {
            &text[range.clone()]
        } else {
            &self.unescaped[range.start - text.len()..range.end - text.len()]
        }
    }

    /// The same spans over another text (the same bytes, owned or borrowed).
    fn with_text<U>(self, text: impl FnOnce(T) -> U) -> Unread<U> {
        Unread {
            text: text(self.text),
            unescaped: self.unescaped,
            class_name: self.class_name,
            object_id: self.object_id,
            current: self.current,
            original: self.original,
            permissions: self.permissions,
            objects_read: self.objects_read,
        }
    }

    /// Reads the fields whose key `wanted` accepts into an object (the last of repeated
    /// keys winning, at the place of the first, as in a JSON object read at once).
    fn read(
        &self,
        fields: &[Field],
        wanted: &dyn Fn(&str) -> bool,
        capacity: usize,
    ) -> Result<Map<String, Value>, serde_json::Error> {
        let mut object = Map::with_capacity(capacity);
        for field in fields {
            let key = self.str(&field.key);
            if wanted(key) {
                object.insert(
                    key.to_owned(),
                    serde_json::from_str(self.str(&field.value))?,
                );
            }
        }
        Ok(object)
    }

    /// The fields of the current object and of the original that `wanted` accepts (see
    /// [`MessageText::read_fields`]).
    fn read_fields(&self, wanted: &dyn Fn(&str) -> bool) -> Result<ReadFields, serde_json::Error> {
        let current = self.read(&self.current, wanted, 0)?;
        let original = match &self.original {
            Some(fields) => {
                let mut original = self.read(fields, wanted, 0)?;
                self.complete_identity(&mut original, wanted);
                Some(original)
            }
            None => None,
        };
        Ok((current, original))
    }

    /// Gives an original without string `className`/`objectId` those of the current object
    /// (parse-server's originals carry them; [`MessageText::read`] checked that an
    /// original naming them names the same object).
    fn complete_identity(&self, original: &mut Map<String, Value>, wanted: &dyn Fn(&str) -> bool) {
        for (key, range) in [
            ("className", &self.class_name),
            ("objectId", &self.object_id),
        ] {
            // A value that is not a string does not name an object: it is replaced.
            if wanted(key) && original.get(key).and_then(Value::as_str).is_none() {
                original.insert(key.to_owned(), Value::from(self.str(range)));
            }
        }
    }

    /// The `className` and `objectId` of an object's fields when they are strings (the last
    /// of repeated keys winning), unescaped into `unescaped` when they hold escapes.
    fn identity(&mut self, fields: &[Field]) -> Result<Identity, serde_json::Error> {
        let mut find = |key: &str| -> Result<Option<Range<usize>>, serde_json::Error> {
            let Some(field) = fields
                .iter()
                .rev()
                .find(|field| self.str(&field.key) == key)
            else {
                return Ok(None);
            };
            let value = self.str(&field.value);
            if !value.starts_with('"') {
                return Ok(None);
            }
            if value.contains('\\') {
                let unescaped: String = serde_json::from_str(value)?;
                return Ok(Some(place(
                    self.text.as_ref(),
                    &unescaped,
                    &mut self.unescaped,
                )));
            }
            Ok(Some(field.value.start + 1..field.value.end - 1))
        };
        Ok((find("className")?, find("objectId")?))
    }
}

/// An object's `className` and `objectId` spans, when they are strings.
type Identity = (Option<Range<usize>>, Option<Range<usize>>);

/// Where `part` is, as an [`Unread`] span: in `text` when it is a slice of it, else
/// appended to `unescaped`.
fn place(text: &str, part: &str, unescaped: &mut String) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    if start <= text.len() && part.len() <= text.len() - start {
        return start..start + part.len();
    }
    let start = text.len() + unescaped.len();
    unescaped.push_str(part);
    start..start + part.len()
}

/// What routing reads of a message ahead of its objects ([`Hub::may_concern`]).
///
/// [`Hub::may_concern`]: crate::hub::Hub::may_concern
pub trait ReadAhead {
    /// The class of the changed object.
    fn class_name(&self) -> &str;
    /// The fields for which `wanted` holds, of the current object and of the original;
    /// `None` when the objects are already read.
    fn read_fields(
        &self,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Option<Result<ReadFields, serde_json::Error>>;
}

impl ReadAhead for Message {
    fn class_name(&self) -> &str {
        Message::class_name(self)
    }
    fn read_fields(
        &self,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Option<Result<ReadFields, serde_json::Error>> {
        Message::read_fields(self, wanted)
    }
}

impl ReadAhead for MessageText<'_> {
    fn class_name(&self) -> &str {
        MessageText::class_name(self)
    }
    fn read_fields(
        &self,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Option<Result<ReadFields, serde_json::Error>> {
        Some(MessageText::read_fields(self, wanted))
    }
}

/// A parse-server message checked and kept as the text it was read from (borrowed: the
/// Redis source's read buffer), read only as far as routing needs ([`MessageText::read`]).
#[derive(Debug)]
pub struct MessageText<'a> {
    kind: ChangeKind,
    unread: Unread<&'a str>,
}

impl<'a> MessageText<'a> {
    /// Checks parse-server's message in its JSON text as [`Message::parse`] would check its
    /// JSON value (the values of the objects' fields only as JSON text), reading no field's
    /// value but `className` and `objectId`. Text that is not UTF-8 is not JSON (checked
    /// once, for the whole text).
    pub fn read(kind: ChangeKind, text: &'a [u8]) -> Result<Self, FromJsonError> {
        let text = std::str::from_utf8(text).map_err(|err| {
            FromJsonError::Json(de::Error::custom(format_args!("not UTF-8: {err}")))
        })?;
        let mut unescaped = String::new();
        let parts = match skim_parts(text) {
            Some(parts) => parts,
            None => read_parts(text, &mut unescaped).map_err(FromJsonError::Json)?,
        };
        let message = |error| FromJsonError::Message(error);
        let Part::Object(current) = parts.current else {
            return Err(message(MessageError::NoCurrentObject));
        };
        let permissions = match raw_part(parts.permissions) {
            Part::Absent => None,
            Part::Object(permissions) => Some(place(text, permissions, &mut unescaped)),
            Part::NotAnObject => None,
        };
        let mut unread = Unread {
            text,
            unescaped,
            class_name: 0..0,
            object_id: 0..0,
            current: Vec::new(),
            original: None,
            permissions,
            objects_read: false,
        };
        let current_identity = unread.identity(&current).map_err(FromJsonError::Json)?;
        let (Some(class_name), Some(object_id)) = current_identity.clone() else {
            return Err(message(MessageError::NoIdentity));
        };
        unread.class_name = class_name;
        unread.object_id = object_id;
        unread.original = match (kind, parts.original) {
            (ChangeKind::Save, Part::Object(original)) => {
                let (c, i) = unread.identity(&original).map_err(FromJsonError::Json)?;
                let named =
                    |span: &Option<Range<usize>>| span.as_ref().map(|span| unread.str(span));
                if (c.is_some() || i.is_some())
                    && (named(&c), named(&i))
                        != (named(&current_identity.0), named(&current_identity.1))
                {
                    return Err(message(MessageError::Mismatch));
                }
                Some(original)
            }
            (_, Part::Absent) | (ChangeKind::Delete, Part::Object(_)) => None,
            (_, Part::NotAnObject) => {
                return Err(message(MessageError::NotAnObject("originalParseObject")));
            }
        };
        if matches!(raw_part(parts.permissions), Part::NotAnObject) {
            return Err(message(MessageError::NotAnObject("classLevelPermissions")));
        }
        unread.current = current;
        Ok(Self { kind, unread })
    }

    /// The class of the changed object.
    pub fn class_name(&self) -> &str {
        self.unread.str(&self.unread.class_name)
    }

    /// The `classLevelPermissions`, as text (checked to be a JSON object).
    pub fn permissions_text(&self) -> Option<&str> {
        Some(self.unread.str(self.unread.permissions.as_ref()?))
    }

    /// The top-level fields of the current object and of the original for which `wanted`
    /// holds (top-level keys sanitised, the last of repeated keys winning); the original
    /// gets the current object's `className` and `objectId` when it lacks them, as
    /// [`Message::read_objects`] gives it.
    pub fn read_fields(
        &self,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<ReadFields, serde_json::Error> {
        self.unread.read_fields(wanted)
    }

    /// The message, its text copied, its objects still text ([`Message::read_objects`]).
    pub fn into_message(self) -> Message {
        Message {
            kind: self.kind,
            current: Map::new(),
            original: None,
            permissions: None,
            original_state: OriginalState::Exact,
            unread: Some(Box::new(self.unread.with_text(str::to_owned))),
        }
    }
}

impl Message {
    /// The class of the changed object (`currentParseObject.className`, checked when the
    /// message was parsed).
    pub fn class_name(&self) -> &str {
        if let Some(unread) = self.unread_objects() {
            return unread.str(&unread.class_name);
        }
        self.current
            .get("className")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// An object's `className` and `objectId`, when they are strings.
fn identity(object: &Map<String, Value>) -> (Option<&str>, Option<&str>) {
    (
        object.get("className").and_then(Value::as_str),
        object.get("objectId").and_then(Value::as_str),
    )
}

/// Drops every top-level key that is not identifier-like (`_hashed_password`, `_rperm`,
/// `__type`, …), as the reference does on receipt: such keys can then never be matched,
/// watched or sent.
fn sanitise(object: &mut Map<String, Value>) {
    object.retain(|key, _| is_identifier(key));
}

impl Message {
    /// Parses parse-server's message `{currentParseObject, originalParseObject?,
    /// classLevelPermissions?}`.
    pub fn parse(kind: ChangeKind, value: Value) -> Result<Self, MessageError> {
        let Value::Object(mut map) = value else {
            return Err(MessageError::NoCurrentObject);
        };
        let current = match map.remove("currentParseObject") {
            Some(Value::Object(mut current)) => {
                sanitise(&mut current);
                Some(current)
            }
            _ => None,
        };
        let original = match map.remove("originalParseObject") {
            Some(Value::Object(mut original)) => {
                sanitise(&mut original);
                Part::Object(original)
            }
            None | Some(Value::Null) => Part::Absent,
            Some(_) => Part::NotAnObject,
        };
        let permissions = match map.remove("classLevelPermissions") {
            Some(clp @ Value::Object(_)) => Part::Object(clp),
            None | Some(Value::Null) => Part::Absent,
            Some(_) => Part::NotAnObject,
        };
        Self::from_parts(
            kind,
            Parts {
                current,
                original,
                permissions,
            },
        )
    }

    /// Reads parse-server's message from its JSON text ([`MessageText::read`]), keeping a
    /// copy of the text: until [`Message::read_objects`], `current` is empty.
    pub fn from_json(kind: ChangeKind, text: &[u8]) -> Result<Self, FromJsonError> {
        MessageText::read(kind, text).map(MessageText::into_message)
    }

    /// The parts [`Message::from_json`] kept whose objects are not read yet.
    fn unread_objects(&self) -> Option<&Unread> {
        self.unread.as_deref().filter(|unread| !unread.objects_read)
    }

    /// Whether the message's objects are still text ([`Message::from_json`]).
    pub fn is_unread(&self) -> bool {
        self.unread_objects().is_some()
    }

    /// The `classLevelPermissions` of a message read by [`Message::from_json`], as text
    /// (checked to be a JSON object); [`Message::read_permissions`] reads it.
    pub fn permissions_text(&self) -> Option<&str> {
        let unread = self.unread.as_deref()?;
        Some(unread.str(unread.permissions.as_ref()?))
    }

    /// The top-level fields of the current object and of the original for which `wanted`
    /// holds (top-level keys sanitised, the last of repeated keys winning), read from the
    /// text [`Message::from_json`] kept; the original gets the current object's
    /// `className` and `objectId` when it lacks them, as [`Message::read_objects`] gives
    /// it. `None` once the objects are read.
    pub fn read_fields(
        &self,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Option<Result<ReadFields, serde_json::Error>> {
        Some(self.unread_objects()?.read_fields(wanted))
    }

    /// Reads the objects [`Message::from_json`] kept as text; `current` and `original` are
    /// then as [`Message::parse`] gives them (the permissions stay text: most events share
    /// their class's, read once by the ingest). Nothing to do for a message read otherwise.
    pub fn read_objects(&mut self) -> Result<(), serde_json::Error> {
        let Some(unread) = self.unread_objects() else {
            return Ok(());
        };
        let current = unread.read(&unread.current, &|_| true, TYPICAL_FIELDS)?;
        let original = match &unread.original {
            Some(fields) => {
                let mut original = unread.read(fields, &|_| true, TYPICAL_FIELDS)?;
                unread.complete_identity(&mut original, &|_| true);
                Some(original)
            }
            None => None,
        };
        self.current = current;
        self.original = original;
        if let Some(unread) = &mut self.unread {
            unread.objects_read = true;
        }
        Ok(())
    }

    /// Reads the permissions [`Message::from_json`] kept as text into `permissions`.
    pub fn read_permissions(&mut self) -> Result<(), serde_json::Error> {
        if let Some(text) = self.permissions_text() {
            self.permissions = Some(serde_json::from_str(text)?);
        }
        Ok(())
    }

    /// Checks a message's parts (top-level keys already sanitised) and builds it.
    fn from_parts(kind: ChangeKind, parts: Parts) -> Result<Self, MessageError> {
        let Some(current) = parts.current else {
            return Err(MessageError::NoCurrentObject);
        };
        let (Some(_), Some(_)) = identity(&current) else {
            return Err(MessageError::NoIdentity);
        };
        let original = match (kind, parts.original) {
            (ChangeKind::Save, Part::Object(mut original)) => {
                if identity(&original) != identity(&current) {
                    // parse-server's originals carry className/objectId; accept originals
                    // without them but never one that names another object.
                    let (c, i) = identity(&original);
                    if c.is_some() || i.is_some() {
                        return Err(MessageError::Mismatch);
                    }
                    original.insert("className".into(), current["className"].clone());
                    original.insert("objectId".into(), current["objectId"].clone());
                }
                Some(original)
            }
            (_, Part::Absent) | (ChangeKind::Delete, Part::Object(_)) => None,
            (_, Part::NotAnObject) => {
                return Err(MessageError::NotAnObject("originalParseObject"));
            }
        };
        let permissions = match parts.permissions {
            Part::Absent => None,
            Part::Object(clp) => Some(clp),
            Part::NotAnObject => return Err(MessageError::NotAnObject("classLevelPermissions")),
        };
        Ok(Self {
            kind,
            current,
            original,
            permissions,
            original_state: OriginalState::Exact,
            unread: None,
        })
    }
}

/// Why a message's JSON text could not become an event.
#[derive(Debug, thiserror::Error)]
pub enum FromJsonError {
    /// Not JSON text.
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// JSON, but not a parse-server message.
    #[error(transparent)]
    Message(MessageError),
}

/// The three parts of a message, top-level keys of its objects sanitised.
#[derive(Debug, Default)]
struct Parts {
    /// `currentParseObject` when it is an object.
    current: Option<Map<String, Value>>,
    /// `originalParseObject`.
    original: Part<Map<String, Value>>,
    /// `classLevelPermissions`.
    permissions: Part<Value>,
}

/// An optional part of a message that must be an object when present.
#[derive(Debug, Default, PartialEq)]
enum Part<T> {
    /// Absent or `null`.
    #[default]
    Absent,
    /// An object.
    Object(T),
    /// Any other JSON value.
    NotAnObject,
}

/// The three parts of a message as text (the last of repeated keys winning).
#[derive(Debug, Default, PartialEq)]
struct RawParts<'de> {
    current: Part<Vec<Field>>,
    original: Part<Vec<Field>>,
    /// The JSON text of `classLevelPermissions`.
    permissions: Option<&'de str>,
}

/// The parts of a message found by a skim of its text ([`json_skim`]), when the skim
/// succeeds: then they are what [`RawPartsSeed`] reads. The skim declines keys with escapes,
/// parts that are neither objects nor `null`, deep nesting and every error, for serde_json
/// to read (or refuse) instead.
fn skim_parts(text: &str) -> Option<RawParts<'_>> {
    let mut skim = Skim::new(text);
    let mut parts = RawParts::default();
    skim.whitespace();
    skim.expect(b'{')?;
    skim.whitespace();
    if !skim.eat(b'}') {
        loop {
            skim.whitespace();
            let key = skim.plain_string()?;
            skim.whitespace();
            skim.expect(b':')?;
            skim.whitespace();
            match &text[key] {
                "currentParseObject" => parts.current = skim_object(&mut skim, text)?,
                "originalParseObject" => parts.original = skim_object(&mut skim, text)?,
                "classLevelPermissions" => parts.permissions = Some(&text[skim.value()?]),
                _ => {
                    skim.value()?;
                }
            }
            if !skim.comma_or(b'}')? {
                break;
            }
        }
    }
    skim.whitespace();
    skim.at_end().then_some(parts)
}

/// A Parse object's fields as [`ObjectSeed`] reads them, or `null`; anything else is
/// declined.
fn skim_object(skim: &mut Skim<'_>, text: &str) -> Option<Part<Vec<Field>>> {
    if skim.peek() == Some(b'n') {
        skim.value()?;
        return Some(Part::Absent);
    }
    skim.expect(b'{')?;
    let mut fields = Vec::with_capacity(TYPICAL_FIELDS);
    skim.whitespace();
    if skim.eat(b'}') {
        return Some(Part::Object(fields));
    }
    loop {
        skim.whitespace();
        let key = skim.plain_string()?;
        skim.whitespace();
        skim.expect(b':')?;
        let value = skim.value()?;
        if is_identifier(&text[key.clone()]) {
            fields.push(Field { key, value });
        }
        if !skim.comma_or(b'}')? {
            return Some(Part::Object(fields));
        }
    }
}

/// Reads a message's parts with serde_json (what [`skim_parts`] declines).
fn read_parts<'t>(
    text: &'t str,
    unescaped: &mut String,
) -> Result<RawParts<'t>, serde_json::Error> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let parts = RawPartsSeed { text, unescaped }.deserialize(&mut reader)?;
    reader.end()?;
    Ok(parts)
}

/// Reads a message's parts as spans of `text` (the text being read), keys with escapes
/// unescaped into `unescaped`.
struct RawPartsSeed<'de, 'u> {
    text: &'de str,
    unescaped: &'u mut String,
}

impl<'de> DeserializeSeed<'de> for RawPartsSeed<'de, '_> {
    type Value = RawParts<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RawPartsSeed<'de, '_> {
    type Value = RawParts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a parse-server message object")
    }

    // Any other JSON value is a message without a `currentParseObject` object.
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawParts::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawParts::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RawParts::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RawParts::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawParts::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RawParts::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RawParts::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = RawParts::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let object = ObjectSeed {
                text: self.text,
                unescaped: &mut *self.unescaped,
            };
            match &*key {
                "currentParseObject" => parts.current = map.next_value_seed(object)?,
                "originalParseObject" => parts.original = map.next_value_seed(object)?,
                "classLevelPermissions" => {
                    parts.permissions = Some(map.next_value::<&RawValue>()?.get());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

/// A part's text as an optional part that must be an object.
fn raw_part(part: Option<&str>) -> Part<&str> {
    match part {
        None | Some("null") => Part::Absent,
        Some(text) if text.starts_with('{') => Part::Object(text),
        Some(_) => Part::NotAnObject,
    }
}

/// A key, borrowed from the text unless it holds escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
    fn visit_string<E: de::Error>(self, key: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key))
    }
}

/// A Parse object of a message: its fields with identifier-like keys (see [`sanitise`]),
/// values as JSON text, in order, as spans of `text`; the others are skipped unread.
struct ObjectSeed<'de, 'u> {
    text: &'de str,
    unescaped: &'u mut String,
}

/// Room for a typical Parse object's fields without growing the map while reading it.
const TYPICAL_FIELDS: usize = 16;

impl<'de> DeserializeSeed<'de> for ObjectSeed<'de, '_> {
    type Value = Part<Vec<Field>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'de, '_> {
    type Value = Part<Vec<Field>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Parse object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Part::Absent)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Part::NotAnObject)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Part::NotAnObject)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(TYPICAL_FIELDS);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if is_identifier(&key) {
                let value: &'de RawValue = map.next_value()?;
                fields.push(Field {
                    key: place(self.text, &key, self.unescaped),
                    value: place(self.text, value.get(), self.unescaped),
                });
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Part::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_parse_server_messages() {
        let message = Message::parse(ChangeKind::Save, json!({
            "currentParseObject": {"n": 1, "_hashed_password": "x", "__type": "Object", "className": "T", "objectId": "o", "createdAt": "c"},
            "originalParseObject": {"n": 0, "__type": "Object", "className": "T", "objectId": "o"},
            "classLevelPermissions": {"find": {"*": true}}
        })).unwrap();
        assert_eq!(
            Value::Object(message.current),
            json!({"n": 1, "className": "T", "objectId": "o", "createdAt": "c"})
        );
        assert_eq!(
            Value::Object(message.original.unwrap()),
            json!({"n": 0, "className": "T", "objectId": "o"})
        );
        assert!(message.permissions.is_some());
    }

    #[test]
    fn rejects_malformed_messages() {
        assert_eq!(
            Message::parse(ChangeKind::Save, json!([])).unwrap_err(),
            MessageError::NoCurrentObject
        );
        assert_eq!(
            Message::parse(
                ChangeKind::Save,
                json!({"currentParseObject": {"className": "T"}})
            )
            .unwrap_err(),
            MessageError::NoIdentity
        );
        assert_eq!(
            Message::parse(ChangeKind::Save, json!({"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "b"}})).unwrap_err(),
            MessageError::Mismatch
        );
        assert_eq!(
            Message::parse(ChangeKind::Save, json!({"currentParseObject": {"className": "T", "objectId": "a"}, "classLevelPermissions": 5})).unwrap_err(),
            MessageError::NotAnObject("classLevelPermissions")
        );
    }

    /// Reading the text and reading its JSON value give the same message or the same error.
    fn assert_same_reading(kind: ChangeKind, text: &str) {
        let value: Value = serde_json::from_str(text).unwrap();
        let from_value = Message::parse(kind, value);
        let from_text = Message::from_json(kind, text.as_bytes()).map(|mut message| {
            assert!(message.is_unread());
            message.read_objects().expect("valid JSON");
            message.read_permissions().expect("valid JSON");
            assert!(!message.is_unread());
            message
        });
        match (from_value, from_text) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.kind, b.kind, "{text}");
                // Key order included: frames must keep the published order.
                let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
                assert_eq!(keys(&a.current), keys(&b.current), "{text}");
                assert_eq!(a.current, b.current, "{text}");
                assert_eq!(a.original.as_ref().map(keys), b.original.as_ref().map(keys));
                assert_eq!(a.original, b.original, "{text}");
                assert_eq!(a.permissions, b.permissions, "{text}");
            }
            (Err(a), Err(FromJsonError::Message(b))) => assert_eq!(a, b, "{text}"),
            (a, b) => panic!("{text}: {a:?} vs {b:?}"),
        }
    }

    #[test]
    fn text_and_value_read_alike() {
        let cases = [
            r#"{"currentParseObject": {"z": 1, "_hashed_password": "x", "a": {"__type": "Date", "iso": "2020-01-01T00:00:00.000Z"}, "__type": "Object", "className": "T", "objectId": "o", "b\u0041": [1, {"_x": 2}]}, "originalParseObject": {"z": 0, "__type": "Object"}, "classLevelPermissions": {"find": {"*": true}}, "other": [1, 2]}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "o", "n": 1, "n": 2}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "currentParseObject": {"className": "T", "objectId": "b"}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": null, "classLevelPermissions": null}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "b"}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": [1]}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": "x"}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "classLevelPermissions": 5}"#,
            r#"{"currentParseObject": {"className": "T"}}"#,
            r#"{"currentParseObject": {"className": 1, "objectId": "a"}}"#,
            r#"{"currentParseObject": {"class\u004eame": "\u0054", "objectId": "a\"b", "r\u006fom": 1}, "originalParseObject": {"className": "T", "objectId": "a\u0022b"}}"#,
            r#"{"currentParseObject": {"className": "T\u00e9", "objectId": "a"}, "originalParseObject": {"className": "T\u00e8", "objectId": "a"}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "classLevelPermissions": {"find": {"r\u00f4le": true}}, "classLevelPermissions": [1]}"#,
            r#"{"currentParseObject": [{"className": "T", "objectId": "a"}]}"#,
            r#"{"currentParseObject": null}"#,
            r#"{}"#,
            r#"[]"#,
            r#"[{"currentParseObject": {"className": "T", "objectId": "a"}}]"#,
            r#""text""#,
            r#"12"#,
            r#"null"#,
            r#"true"#,
        ];
        for text in cases {
            assert_same_reading(ChangeKind::Save, text);
            assert_same_reading(ChangeKind::Delete, text);
        }
    }

    /// The fields read ahead are those of the whole read, the original completed alike.
    fn assert_fields_read_alike(text: &str, wanted: &dyn Fn(&str) -> bool) {
        let Ok(message) = Message::from_json(ChangeKind::Save, text.as_bytes()) else {
            return;
        };
        let (current, original) = message.read_fields(wanted).unwrap().unwrap();
        // Borrowed or copied, the text reads alike.
        let borrowed = MessageText::read(ChangeKind::Save, text.as_bytes()).unwrap();
        assert_eq!(borrowed.class_name(), message.class_name(), "{text}");
        assert_eq!(borrowed.permissions_text(), message.permissions_text());
        assert_eq!(
            borrowed.read_fields(wanted).unwrap(),
            (current.clone(), original.clone()),
            "{text}"
        );
        let mut whole = Message::from_json(ChangeKind::Save, text.as_bytes()).unwrap();
        whole.read_objects().unwrap();
        assert!(whole.read_fields(wanted).is_none(), "already read");
        let only = |object: &Map<String, Value>| -> Map<String, Value> {
            object
                .iter()
                .filter(|(key, _)| wanted(key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        };
        assert_eq!(current, only(&whole.current), "{text}");
        assert_eq!(original, whole.original.as_ref().map(only), "{text}");
    }

    #[test]
    fn fields_read_ahead_are_those_of_the_whole_object() {
        let texts = [
            r#"{"currentParseObject": {"room": 1, "room": 2, "_room": 3, "score": [1, 2], "className": "T", "objectId": "o"}, "originalParseObject": {"room": 0}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "o", "room": {"a": 1}}, "originalParseObject": {"className": 5, "room": null, "objectId": "o"}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "o"}, "originalParseObject": {"className": "T", "objectId": "o", "score": 1}}"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "o", "createdAt": "2020-01-01T00:00:00Z"}}"#,
            r#"{"currentParseObject": {"class\u004eame": "\u0054", "objectId": "o\"", "r\u006fom": 1, "room": 2}, "originalParseObject": {"objectId": "o\u0022", "className": "T"}}"#,
        ];
        let wanted: [&dyn Fn(&str) -> bool; 4] = [
            &|key| key == "room",
            &|key| matches!(key, "score" | "objectId"),
            &|key| matches!(key, "className" | "createdAt" | "_room"),
            &|_| true,
        ];
        for text in texts {
            for wanted in wanted {
                assert_fields_read_alike(text, wanted);
            }
        }
    }

    /// Messages made of arbitrary keys and values: read in two steps or at once, from
    /// text or from a JSON value, they are the same message (or the same error).
    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i32>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "[a-zA-Z_0-9é\\\"]{0,6}".prop_map(Value::from),
                Just(json!({"__type": "Date", "iso": "2020-01-01T00:00:00Z"})),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                    prop::collection::vec((key(), inner), 0..3)
                        .prop_map(|entries| Value::Object(entries.into_iter().collect())),
                ]
            })
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("className".to_owned()),
                Just("objectId".to_owned()),
                Just("room".to_owned()),
                Just("createdAt".to_owned()),
                Just("_rperm".to_owned()),
                "[a-z_]{1,3}",
            ]
        }

        /// An object's text: entries in order, repeated keys kept (as text can have them).
        fn object_text() -> impl Strategy<Value = String> {
            (
                prop::collection::vec((key(), value(), any::<bool>()), 0..6),
                // Identities sometimes with an escape (`\u0061` is `a`).
                prop::option::of("[a-c]|\\\\u0061"),
                prop::option::of("[a-c]|\\\\u0061"),
            )
                .prop_map(|(entries, class_name, object_id)| {
                    let mut fields: Vec<String> = entries
                        .iter()
                        .map(|(key, value, escaped)| {
                            // Keys are sometimes written with an escape (`r\u006fom`).
                            let mut chars = key.chars();
                            match (chars.next(), chars.next()) {
                                (Some(first), Some(second)) if *escaped => format!(
                                    "\"{first}\\u{:04x}{}\":{value}",
                                    u32::from(second),
                                    chars.as_str()
                                ),
                                _ => format!("{}:{value}", Value::from(key.as_str())),
                            }
                        })
                        .collect();
                    if let Some(class_name) = class_name {
                        fields.push(format!("\"className\":\"{class_name}\""));
                    }
                    if let Some(object_id) = object_id {
                        fields.insert(0, format!("\"objectId\":\"{object_id}\""));
                    }
                    format!("{{{}}}", fields.join(","))
                })
        }

        fn part_text() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => object_text(),
                1 => Just("null".to_owned()),
                1 => value().prop_map(|value| value.to_string()),
            ]
        }

        fn message_text() -> impl Strategy<Value = String> {
            (
                part_text(),
                prop::option::of(part_text()),
                prop::option::of(part_text()),
                prop::option::of(value()),
            )
                .prop_map(|(current, original, permissions, other)| {
                    let mut parts = vec![format!("\"currentParseObject\":{current}")];
                    if let Some(original) = original {
                        parts.push(format!("\"originalParseObject\":{original}"));
                    }
                    if let Some(permissions) = permissions {
                        parts.insert(0, format!("\"classLevelPermissions\":{permissions}"));
                    }
                    if let Some(other) = other {
                        parts.push(format!("\"other\":{other}"));
                    }
                    format!("{{{}}}", parts.join(","))
                })
        }

        /// A message's text, sometimes with one byte cut, added or removed.
        fn edited_message_text() -> impl Strategy<Value = String> {
            (
                message_text(),
                any::<u8>(),
                any::<prop::sample::Index>(),
                0..4u8,
            )
                .prop_map(|(text, byte, at, edit)| {
                    let mut bytes = text.into_bytes();
                    let i = at.index(bytes.len() + 1);
                    match edit {
                        1 => bytes.truncate(i),
                        2 => bytes.insert(i, byte),
                        3 if i < bytes.len() => {
                            bytes.remove(i);
                        }
                        _ => {}
                    }
                    String::from_utf8_lossy(&bytes).into_owned()
                })
        }

        proptest! {
            /// The skim finds the parts serde_json finds, or declines: it never accepts text
            /// serde_json refuses, nor reads it differently.
            #[test]
            fn a_skim_finds_the_parts_serde_json_finds(text in edited_message_text()) {
                let mut unescaped = String::new();
                let read = read_parts(&text, &mut unescaped);
                if let Some(skimmed) = skim_parts(&text) {
                    prop_assert_eq!(Some(skimmed), read.ok(), "{}", text);
                    prop_assert!(unescaped.is_empty());
                }
            }

            #[test]
            fn read_in_steps_as_at_once(text in message_text()) {
                assert_same_reading(ChangeKind::Save, &text);
                assert_same_reading(ChangeKind::Delete, &text);
                assert_fields_read_alike(&text, &|key| matches!(key, "room" | "className"));
                assert_fields_read_alike(&text, &|key| key.len() < 3);
            }
        }
    }

    #[test]
    fn the_skim_reads_parse_server_messages_itself() {
        let texts = [
            r#"{"currentParseObject":{"room":-1,"score":0.5,"seq":3,"sentAt":1,"body":"xx","createdAt":"2026-11-22T09:13:04.224Z","updatedAt":"2026-11-22T09:13:04.224Z","ACL":{"*":{"read":true}},"objectId":"br13","__type":"Object","className":"LQBench"},"classLevelPermissions":{"find":{"*":true},"protectedFields":{"*":[]}}}"#,
            r#" { "currentParseObject" : { "className" : "T" , "objectId" : "a" , "_rperm" : [ "*" ] } , "originalParseObject" : null , "other" : [ 1e5 , -0.25 , true , "\u00e9\"" ] } "#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "a", "n": 1, "n": 2}, "classLevelPermissions": {"find": {"r\u00f4le": true}}}"#,
            r#"{}"#,
        ];
        for text in texts {
            let mut unescaped = String::new();
            let read = read_parts(text, &mut unescaped).unwrap();
            assert_eq!(skim_parts(text), Some(read), "{text}");
        }
        // Declined, for serde_json to read: a key with an escape, a part neither an object
        // nor null, a message that is not an object, and errors.
        for text in [
            r#"{"currentParseObject": {"class\u004eame": "T", "objectId": "a"}}"#,
            r#"{"current\u0050arseObject": {"className": "T", "objectId": "a"}}"#,
            r#"{"currentParseObject": [1]}"#,
            r#"{"currentParseObject": 1e400}"#,
            r#"[{"currentParseObject": {}}]"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}} x"#,
            r#"{"currentParseObject": {"className": "T", "objectId": "a",}}"#,
        ] {
            assert_eq!(skim_parts(text), None, "{text}");
        }
    }

    #[test]
    fn invalid_text_is_a_json_error() {
        for text in [
            "",
            "{",
            r#"{"currentParseObject": {"className": "T", "objectId": "a"}} x"#,
            "nul",
        ] {
            assert!(
                matches!(
                    Message::from_json(ChangeKind::Save, text.as_bytes()),
                    Err(FromJsonError::Json(_))
                ),
                "{text}"
            );
        }
        // Text that is not UTF-8 is not JSON, wherever the bytes are (even in a value that
        // would be skipped unread).
        for text in [
            &b"{\"currentParseObject\": {\"className\": \"T\", \"objectId\": \"\xff\"}}"[..],
            b"{\"currentParseObject\": {\"className\": \"T\", \"objectId\": \"a\", \"_rperm\": [\"\xc3\"]}}",
            b"{\"other\": \"\xed\xa0\x80\", \"currentParseObject\": {\"className\": \"T\", \"objectId\": \"a\"}}",
        ] {
            assert!(matches!(
                Message::from_json(ChangeKind::Save, text),
                Err(FromJsonError::Json(_))
            ));
            assert!(serde_json::from_slice::<Value>(text).is_err());
        }
    }

    #[test]
    fn deletes_ignore_originals() {
        let message = Message::parse(ChangeKind::Delete, json!({"currentParseObject": {"className": "T", "objectId": "a"}, "originalParseObject": {"className": "T", "objectId": "a"}})).unwrap();
        assert!(message.original.is_none());
    }
}
