//! Client frames: decoding never panics, whatever the bytes; every frame that decodes
//! encodes back to one that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livequery_protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    let _ = ClientMessage::decode_binary(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(message) = ClientMessage::decode(text) else {
        return;
    };
    let again = ClientMessage::decode(&message.encode()).expect("an encoded frame decodes");
    assert_eq!(again, message);
    if let Some(wire) = ClientMessage::decode(text).err().and_then(|e| e.to_wire()) {
        assert!(!wire.message.is_empty());
    }
});
