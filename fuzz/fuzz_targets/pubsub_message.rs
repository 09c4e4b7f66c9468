//! parse-server's pub/sub messages (`afterSave`, `afterDelete`), as the Redis source reads
//! them: parsing never panics; what parses keeps only identifier-like top-level keys and
//! names one object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livequery_matcher::ChangeKind;
use livequery_matcher::gate::is_identifier;
use livequery_server::pubsub::Message;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for kind in [ChangeKind::Save, ChangeKind::Delete] {
        let Ok(message) = Message::parse(kind, value.clone()) else {
            continue;
        };
        assert!(message.current.keys().all(|k| is_identifier(k)));
        assert!(
            message
                .current
                .get("className")
                .is_some_and(Value::is_string)
        );
        assert!(
            message
                .current
                .get("objectId")
                .is_some_and(Value::is_string)
        );
        if let Some(original) = &message.original {
            assert_eq!(kind, ChangeKind::Save);
            assert!(original.keys().all(|k| is_identifier(k)));
            assert_eq!(original.get("objectId"), message.current.get("objectId"));
            assert_eq!(original.get("className"), message.current.get("className"));
        }
    }
});
