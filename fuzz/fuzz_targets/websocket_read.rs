//! A client's WebSocket bytes: the reader never panics, and reads the same messages (and
//! the same violation, if any) whatever the boundaries of the reads that deliver the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livequery_protocol::websocket_read::{Message, MessageReader, ReadError};

/// The limit of the readers under test: small, so the limit's paths are reached.
const LIMIT: usize = 300;

/// Every message of `reads`, in order, and the violation that ended them, if any.
fn read_all<'a>(reads: impl Iterator<Item = &'a [u8]>) -> (Vec<Message>, Option<ReadError>) {
    let mut reader = MessageReader::new(LIMIT);
    let mut messages = Vec::new();
    let mut largest_read = 0;
    for read in reads {
        largest_read = largest_read.max(read.len());
        let mut input = read;
        loop {
            match reader.read(input) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(err) => return (messages, Some(err)),
            }
            input = &[];
        }
        // Held: at most an incomplete frame (its header, the limit), the fragments so far
        // and what followed them in one read, with a vector's slack.
        assert!(reader.held_bytes() <= 2 * (14 + 2 * LIMIT + largest_read));
    }
    (messages, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, wire)) = data.split_first() else {
        return;
    };
    let whole = read_all(std::iter::once(wire));
    let chunk = usize::from(split % 64) + 1;
    let split_up = read_all(wire.chunks(chunk));
    assert_eq!(whole, split_up);
    for message in &whole.0 {
        match message {
            Message::Text(text) => assert!(text.len() <= LIMIT),
            Message::Binary(bytes) => assert!(bytes.len() <= LIMIT),
            Message::Ping(bytes) | Message::Pong(bytes) => assert!(bytes.len() <= 125),
            Message::Close(frame) => {
                if let Some(frame) = frame {
                    assert!(frame.code.is_allowed());
                }
            }
        }
    }
});
