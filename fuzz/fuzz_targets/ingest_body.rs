//! Bodies posted to the embedded source's ingest API: validation never panics, and a batch
//! is either wholly valid or rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livequery_server::source::embedded::{Batch, Channel};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let items = match &body {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    for channel in [
        Channel::AfterSave,
        Channel::AfterDelete,
        Channel::ClearCache,
    ] {
        match Batch::parse(channel, body.clone()) {
            Ok(Batch::ClearCache(users)) => {
                assert_eq!(channel, Channel::ClearCache);
                assert_eq!(users.len(), items);
            }
            Ok(Batch::Changes(_, messages)) => assert_eq!(messages.len(), items),
            Err(_) => {}
        }
    }
});
