//! MongoDB change events as the change-stream source reads them (raw BSON, or MongoDB
//! extended JSON for readable seeds): turning one into what parse-server would publish
//! never panics, and every object it yields keeps only identifier-like top-level keys (no
//! `_rperm`, `_hashed_password`, …).
#![no_main]

use bson::{Bson, doc};
use libfuzzer_sys::fuzz_target;
use livequery_matcher::gate::is_identifier;
use livequery_server::source::mongo::store::RawEvent;
use livequery_server::source::mongo::cache::ObjectCache;
use livequery_server::source::mongo::convert::FileUrls;
use livequery_server::source::mongo::schema::Schemas;
use livequery_server::source::mongo::transform::{LiveClasses, Output, Transformer};

fuzz_target!(|data: &[u8]| {
    // The driver decodes events from the raw BSON bytes the server sends (`from_slice`).
    let bytes = if data.first() == Some(&b'{') {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        let Ok(Bson::Document(document)) = Bson::try_from(json) else {
            return;
        };
        let Ok(bytes) = bson::to_vec(&document) else {
            return;
        };
        bytes
    } else {
        data.to_vec()
    };
    let Ok(event) = bson::from_slice::<RawEvent>(&bytes) else {
        return;
    };
    let schemas = Schemas::default();
    schemas.replace_all(&[doc! {
        "_id": "Message", "room": "string", "when": "date", "loc": "geopoint", "file": "file",
        "author": "*_User", "data": "bytes", "area": "polygon", "members": "relation<_User>",
    }]);
    let mut transformer = Transformer {
        prefix: String::new(),
        live: LiveClasses::default(),
        files: FileUrls {
            base: Some("http://files".into()),
            app_id: "app".into(),
        },
        cache: ObjectCache::new(16),
    };
    for output in transformer.transform(event, &schemas) {
        if let Output::Change(message) = output {
            assert!(
                message.current.keys().all(|k| is_identifier(k)),
                "{:?}",
                message.current
            );
            if let Some(original) = &message.original {
                assert!(original.keys().all(|k| is_identifier(k)), "{original:?}");
            }
        }
    }
});
