//! RESP as the Redis source reads it: whatever the bytes and however they are split into
//! reads, the reader never panics, never holds more than its bound, and finds the same
//! values as when it reads everything at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livequery_server::source::resp::{READ_CHUNK, ReadBuffer};

const BOUND: usize = 4096;

/// The values read (as their debug text), and whether reading ended on an error.
fn read(input: &[u8], split: u8) -> (Vec<String>, bool) {
    let mut buffer = ReadBuffer::new(BOUND);
    let mut values = Vec::new();
    let mut at = 0;
    let mut turn = 0usize;
    loop {
        loop {
            match buffer.next_frame() {
                Ok(Some((frame, size))) => {
                    values.push(format!("{frame:?}"));
                    buffer.consume(size);
                }
                Ok(None) => break,
                Err(_) => return (values, true),
            }
        }
        assert!(buffer.capacity() <= BOUND.max(READ_CHUNK));
        if at == input.len() {
            return (values, false);
        }
        let space = match buffer.space() {
            Ok(space) => space,
            Err(_) => return (values, true),
        };
        let step = if split == 0 {
            input.len()
        } else {
            1 + (usize::from(split) * (turn + 1)) % 97
        };
        let size = step.min(space.len()).min(input.len() - at);
        space[..size].copy_from_slice(&input[at..at + size]);
        buffer.filled(size);
        at += size;
        turn += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = read(input, 0);
    let pieces = read(input, split);
    assert_eq!(whole, pieces);
});
