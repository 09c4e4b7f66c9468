//! parse-server's pub/sub messages as the Redis source reads them, from their text
//! (`MessageText::read`): reading never panics, and reads what reading the whole JSON value
//! reads (`Message::parse`) — the same objects, keys in the same order, the same
//! permissions, or the same refusal; the fields read ahead for routing are those of the whole
//! objects; text that is not UTF-8 (not JSON) is refused, and JSON text is never refused as
//! not JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livequery_matcher::ChangeKind;
use livequery_server::pubsub::{FromJsonError, Message, MessageText};
use serde_json::{Map, Value};

fn keys(object: &Map<String, Value>) -> Vec<&String> {
    object.keys().collect()
}

fuzz_target!(|data: &[u8]| {
    let value = serde_json::from_slice::<Value>(data);
    for kind in [ChangeKind::Save, ChangeKind::Delete] {
        let read = MessageText::read(kind, data);
        if std::str::from_utf8(data).is_err() {
            assert!(matches!(read, Err(FromJsonError::Json(_))));
            continue;
        }
        // Text serde_json cannot read as a whole may still be read: what it skips unread
        // (a lone surrogate escape in a dropped key's value) is not checked further.
        let Ok(value) = &value else {
            continue;
        };
        let whole = Message::parse(kind, value.clone());
        let (whole, text) = match (whole, read) {
            (Ok(whole), Ok(text)) => (whole, text),
            (Err(a), Err(FromJsonError::Message(b))) => {
                assert_eq!(a, b);
                continue;
            }
            (a, b) => panic!("{a:?} vs {b:?}"),
        };
        assert_eq!(text.class_name(), whole.class_name());
        let wanted = |key: &str| key.len() % 2 == 0 || key == "className";
        let Ok((current, original)) = text.read_fields(&wanted) else {
            // A value serde_json skips but does not read (a number out of range).
            continue;
        };
        let only = |object: &Map<String, Value>| -> Map<String, Value> {
            object
                .iter()
                .filter(|(key, _)| wanted(key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        };
        assert_eq!(current, only(&whole.current));
        assert_eq!(original, whole.original.as_ref().map(only));
        let mut message = text.into_message();
        if message.read_objects().is_err() || message.read_permissions().is_err() {
            continue;
        }
        assert_eq!(keys(&message.current), keys(&whole.current));
        assert_eq!(message.current, whole.current);
        assert_eq!(message.original, whole.original);
        assert_eq!(message.permissions, whole.permissions);
    }
});
