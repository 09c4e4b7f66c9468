//! Reading a client's WebSocket frames (RFC 6455, server role) into whole messages.
//!
//! The server reads its socket into a scratch buffer it shares between connections and
//! hands the bytes to [`MessageReader::read`]: the reader decodes them at once and keeps only
//! what it cannot hand out yet (an incomplete frame, the fragments of an unfinished message,
//! the frames behind the message it returned), so an idle connection holds no read buffer.
//!
//! Every rule of the RFC a server enforces on its peer is checked, and a violation names the
//! close code a conforming server answers it with ([`ReadError::close_code`]):
//! - client frames are masked; the RSV bits are 0 (no extension is ever negotiated);
//! - opcodes are continuation, text, binary, close, ping and pong, nothing else;
//! - control frames carry at most 125 bytes and are never fragmented (they may come between
//!   the fragments of a data message);
//! - a continuation continues a fragmented message, and a new data frame never starts
//!   inside one;
//! - a 64-bit length has its most significant bit clear;
//! - text is UTF-8 (a fragmented text message is checked once it is whole: at most the
//!   message size limit is held before the check) — 1007 when it is not;
//! - a close payload is empty or a valid code followed by a UTF-8 reason;
//! - the message size limit applies to a whole message, fragments summed, and is checked
//!   against a frame's declared length before its payload is read — 1009 beyond it.

use crate::websocket_frame::CloseCode;

/// The most payload a control frame (close, ping, pong) may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest header a client (masked) frame can have: two bytes, a 64-bit length and the
/// masking key.
const MAX_MASKED_HEADER_LEN: usize = 14;

/// A message read from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, whole (reassembled from its fragments).
    Text(String),
    /// A binary message, whole.
    Binary(Vec<u8>),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong (the answer to our ping, or unsolicited).
    Pong(Vec<u8>),
    /// The peer starts (or answers) the closing handshake; `None` for an empty close.
    Close(Option<CloseFrame>),
}

/// The payload of a close frame that has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Why the peer closes (a code allowed on the wire).
    pub code: CloseCode,
    /// Its explanation, possibly empty.
    pub reason: String,
}

/// A violation of the protocol by the client: the connection is closed with
/// [`ReadError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An RSV bit is set, but no extension was negotiated.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// A client frame is not masked.
    #[error("client frame not masked")]
    Unmasked,
    /// The opcode is not one RFC 6455 defines.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame longer than [`MAX_CONTROL_PAYLOAD`].
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    /// A continuation frame outside a fragmented message.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A text or binary frame inside a fragmented message.
    #[error("new data message before the fragmented one finished")]
    UnfinishedMessage,
    /// A 64-bit payload length with its most significant bit set.
    #[error("64-bit payload length with the most significant bit set")]
    InvalidLength,
    /// A close payload of one byte (a code takes two).
    #[error("close payload of one byte")]
    TruncatedCloseCode,
    /// A close code that may not be sent on the wire.
    #[error("close code {0} not allowed")]
    InvalidCloseCode(u16),
    /// A text message or a close reason that is not UTF-8.
    #[error("text that is not UTF-8")]
    InvalidUtf8,
    /// A message (its fragments summed) larger than the limit.
    #[error("message larger than {limit} bytes")]
    MessageTooLarge {
        /// The configured limit.
        limit: usize,
    },
}

impl ReadError {
    /// The close code a conforming server answers this violation with: 1007 for text that is
    /// not UTF-8, 1009 for a message too large, 1002 (protocol error) for the rest.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            Self::MessageTooLarge { .. } => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// The opcodes of RFC 6455, section 5.2.
mod opcode {
    pub(super) const CONTINUATION: u8 = 0x0;
    pub(super) const TEXT: u8 = 0x1;
    pub(super) const BINARY: u8 = 0x2;
    pub(super) const CLOSE: u8 = 0x8;
    pub(super) const PING: u8 = 0x9;
    pub(super) const PONG: u8 = 0xA;
}

/// A frame header, read and checked.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, masking key included.
    len: usize,
    payload_len: usize,
}

/// A data message whose first fragments were read.
#[derive(Debug)]
struct Fragmented {
    text: bool,
    payload: Vec<u8>,
}

/// Decodes one client connection's frames into messages (see the module docs).
#[derive(Debug)]
pub struct MessageReader {
    max_message_bytes: usize,
    /// Bytes received and not decoded yet: an incomplete frame, or the frames behind the
    /// last message handed out. Empty (and unallocated) between messages on an idle
    /// connection.
    buffered: Vec<u8>,
    /// The data message being reassembled, if its final fragment has not come yet (boxed:
    /// fragmented messages are rare, and an idle reader stays one pointer smaller).
    fragmented: Option<Box<Fragmented>>,
}

impl MessageReader {
    /// A reader that accepts messages of up to `max_message_bytes` (fragments summed).
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            buffered: Vec::new(),
            fragmented: None,
        }
    }

    /// Decodes `input` (the next bytes from the socket, possibly none) behind what was
    /// buffered, and returns the first whole message, if any. What follows that message is
    /// kept: call again with no input to get the next one before reading more.
    ///
    /// After an error the connection must be closed: the reader's state is unspecified.
    pub fn read(&mut self, input: &[u8]) -> Result<Option<Message>, ReadError> {
        if self.buffered.is_empty() {
            // The common case: decode straight from the caller's buffer, keep the rest.
            let (consumed, message) = self.decode(input)?;
            if consumed < input.len() {
                self.buffered = input[consumed..].to_vec();
            }
            return Ok(message);
        }
        self.buffered.extend_from_slice(input);
        let mut buffered = std::mem::take(&mut self.buffered);
        let (consumed, message) = self.decode(&buffered)?;
        if consumed < buffered.len() {
            buffered.drain(..consumed);
            self.buffered = buffered;
        }
        Ok(message)
    }

    /// Keeps `input` (bytes read elsewhere, e.g. past an HTTP handshake) to be decoded by
    /// the next [`MessageReader::read`].
    pub fn buffer(&mut self, input: &[u8]) {
        self.buffered.extend_from_slice(input);
    }

    /// Whether bytes wait to be decoded (a message may be among them).
    pub fn has_buffered(&self) -> bool {
        !self.buffered.is_empty()
    }

    /// The bytes this reader holds (buffered input and message fragments), for accounting.
    pub fn held_bytes(&self) -> usize {
        self.buffered.capacity() + self.fragmented.as_ref().map_or(0, |f| f.payload.capacity())
    }

    /// Decodes frames from `bytes` up to the first whole message: how many bytes were used,
    /// and the message.
    fn decode(&mut self, bytes: &[u8]) -> Result<(usize, Option<Message>), ReadError> {
        let mut at = 0;
        loop {
            let Some(header) = self.header(&bytes[at..])? else {
                return Ok((at, None));
            };
            let end = header.len + header.payload_len;
            if bytes.len() - at < end {
                return Ok((at, None));
            }
            let payload = &bytes[at + header.len..at + end];
            at += end;
            if let Some(message) = self.frame(&header, payload)? {
                return Ok((at, Some(message)));
            }
        }
    }

    /// Reads and checks the header at the start of `bytes`; `None` if it is incomplete.
    fn header(&self, bytes: &[u8]) -> Result<Option<Header>, ReadError> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(ReadError::ReservedBits);
        }
        let opcode = first & 0x0F;
        let control = match opcode {
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => false,
            opcode::CLOSE | opcode::PING | opcode::PONG => true,
            other => return Err(ReadError::UnknownOpcode(other)),
        };
        if second & 0x80 == 0 {
            return Err(ReadError::Unmasked);
        }
        let (length_len, short) = match second & 0x7F {
            126 => (2, None),
            127 => (8, None),
            short => (0, Some(usize::from(short))),
        };
        if control && !fin {
            return Err(ReadError::FragmentedControl);
        }
        if control && short.is_none_or(|len| len > MAX_CONTROL_PAYLOAD) {
            return Err(ReadError::ControlTooLong);
        }
        let len = 2 + length_len + 4;
        debug_assert!(len <= MAX_MASKED_HEADER_LEN);
        if bytes.len() < 2 + length_len {
            return Ok(None);
        }
        let payload_len = match short {
            Some(len) => len,
            None => {
                let mut be = [0u8; 8];
                be[8 - length_len..].copy_from_slice(&bytes[2..2 + length_len]);
                let declared = u64::from_be_bytes(be);
                if declared >> 63 != 0 {
                    return Err(ReadError::InvalidLength);
                }
                // Beyond usize on a small target: too large for any limit.
                usize::try_from(declared).unwrap_or(usize::MAX)
            }
        };
        if !control {
            match (&self.fragmented, opcode) {
                (None, opcode::CONTINUATION) => return Err(ReadError::UnexpectedContinuation),
                (Some(_), opcode::TEXT | opcode::BINARY) => {
                    return Err(ReadError::UnfinishedMessage);
                }
                _ => {}
            }
            let so_far = self.fragmented.as_ref().map_or(0, |f| f.payload.len());
            if payload_len > self.max_message_bytes - so_far {
                return Err(ReadError::MessageTooLarge {
                    limit: self.max_message_bytes,
                });
            }
        }
        if bytes.len() < len {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&bytes[len - 4..len]);
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len,
            payload_len,
        }))
    }

    /// Handles a whole frame: the message it completes, if any.
    fn frame(&mut self, header: &Header, masked: &[u8]) -> Result<Option<Message>, ReadError> {
        match header.opcode {
            opcode::PING => Ok(Some(Message::Ping(unmasked(masked, header.mask)))),
            opcode::PONG => Ok(Some(Message::Pong(unmasked(masked, header.mask)))),
            opcode::CLOSE => close_payload(&unmasked(masked, header.mask)).map(Some),
            opcode::CONTINUATION => {
                let fragmented = self
                    .fragmented
                    .as_mut()
                    .expect("a continuation without a message is refused by `header`");
                unmask_into(&mut fragmented.payload, masked, header.mask);
                if !header.fin {
                    return Ok(None);
                }
                let Fragmented { text, payload } =
                    *self.fragmented.take().expect("matched just above");
                data_message(text, payload).map(Some)
            }
            opcode => {
                let text = opcode == opcode::TEXT;
                let payload = unmasked(masked, header.mask);
                if header.fin {
                    return data_message(text, payload).map(Some);
                }
                self.fragmented = Some(Box::new(Fragmented { text, payload }));
                Ok(None)
            }
        }
    }
}

/// A whole data message.
fn data_message(text: bool, payload: Vec<u8>) -> Result<Message, ReadError> {
    if text {
        String::from_utf8(payload)
            .map(Message::Text)
            .map_err(|_| ReadError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

/// The message of a close frame's (unmasked) payload.
fn close_payload(payload: &[u8]) -> Result<Message, ReadError> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(ReadError::TruncatedCloseCode),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode(code).is_allowed() {
                return Err(ReadError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ReadError::InvalidUtf8)?;
            Ok(Message::Close(Some(CloseFrame {
                code: CloseCode(code),
                reason: reason.to_owned(),
            })))
        }
    }
}

/// `masked` unmasked with `mask`, in a new vector.
fn unmasked(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(masked.len());
    unmask_into(&mut out, masked, mask);
    out
}

/// Appends `masked`, unmasked with `mask`, to `out`.
fn unmask_into(out: &mut Vec<u8>, masked: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(masked);
    let word = u32::from_ne_bytes(mask);
    let mut chunks = out[start..].chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: `first` (FIN, RSV, opcode) and the payload, masked with [`MASK`].
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=65_535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn read_all(reader: &mut MessageReader, wire: &[u8]) -> Result<Vec<Message>, ReadError> {
        let mut messages = Vec::new();
        let mut input = wire;
        while let Some(message) = reader.read(input)? {
            messages.push(message);
            input = &[];
        }
        Ok(messages)
    }

    fn read_one(wire: &[u8]) -> Result<Option<Message>, ReadError> {
        MessageReader::new(1000).read(wire)
    }

    #[test]
    fn whole_messages_of_every_kind() {
        let mut wire = frame(0x81, "héllo".as_bytes());
        wire.extend(frame(0x82, &[0, 1, 2, 255]));
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x8A, b""));
        wire.extend(frame(0x88, &[]));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        wire.extend(frame(0x88, &close));
        let mut reader = MessageReader::new(1000);
        assert_eq!(
            read_all(&mut reader, &wire).unwrap(),
            vec![
                Message::Text("héllo".into()),
                Message::Binary(vec![0, 1, 2, 255]),
                Message::Ping(b"p".to_vec()),
                Message::Pong(Vec::new()),
                Message::Close(None),
                Message::Close(Some(CloseFrame {
                    code: CloseCode::NORMAL,
                    reason: "bye".into()
                })),
            ]
        );
        assert!(!reader.has_buffered());
        assert_eq!(reader.held_bytes(), 0, "nothing is kept between messages");
    }

    #[test]
    fn extended_lengths() {
        let mut reader = MessageReader::new(100_000);
        for len in [126, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(len);
            let wire = frame(0x81, payload.as_bytes());
            assert_eq!(
                read_all(&mut reader, &wire).unwrap(),
                vec![Message::Text(payload)]
            );
        }
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut wire = frame(0x01, b"he");
        wire.extend(frame(0x89, b"ping"));
        wire.extend(frame(0x00, b"l"));
        wire.extend(frame(0x80, b"lo"));
        wire.extend(frame(0x02, &[1]));
        wire.extend(frame(0x80, &[2]));
        let mut reader = MessageReader::new(1000);
        assert_eq!(
            read_all(&mut reader, &wire).unwrap(),
            vec![
                Message::Ping(b"ping".to_vec()),
                Message::Text("hello".into()),
                Message::Binary(vec![1, 2]),
            ]
        );
    }

    #[test]
    fn a_character_split_across_fragments_is_valid() {
        let bytes = "é".as_bytes();
        let mut wire = frame(0x01, &bytes[..1]);
        wire.extend(frame(0x80, &bytes[1..]));
        assert_eq!(read_one(&wire), Ok(Some(Message::Text("é".into()))));
    }

    #[test]
    fn split_input_is_buffered_until_whole() {
        let wire = frame(0x81, &[b'a'; 300]);
        let mut reader = MessageReader::new(1000);
        for byte in &wire[..wire.len() - 1] {
            assert_eq!(reader.read(std::slice::from_ref(byte)), Ok(None));
        }
        assert!(reader.has_buffered());
        assert_eq!(
            reader.read(&wire[wire.len() - 1..]),
            Ok(Some(Message::Text("a".repeat(300))))
        );
        assert_eq!(reader.held_bytes(), 0);
    }

    #[test]
    fn buffered_bytes_come_first() {
        let mut wire = frame(0x81, b"one");
        wire.extend(frame(0x81, b"two"));
        let mut reader = MessageReader::new(100);
        reader.buffer(&wire[..7]);
        assert_eq!(
            reader.read(&wire[7..]),
            Ok(Some(Message::Text("one".into())))
        );
        assert_eq!(reader.read(&[]), Ok(Some(Message::Text("two".into()))));
        assert_eq!(reader.read(&[]), Ok(None));
    }

    #[test]
    fn reserved_bits_are_refused() {
        for first in [0xC1, 0xA1, 0x91] {
            assert_eq!(read_one(&frame(first, b"x")), Err(ReadError::ReservedBits));
        }
    }

    #[test]
    fn unmasked_frames_are_refused() {
        assert_eq!(read_one(&[0x81, 0x01, b'x']), Err(ReadError::Unmasked));
    }

    #[test]
    fn unknown_opcodes_are_refused() {
        for op in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                read_one(&frame(0x80 | op, b"")),
                Err(ReadError::UnknownOpcode(op))
            );
        }
    }

    #[test]
    fn control_frames_are_short_and_whole() {
        for op in [0x8, 0x9, 0xA] {
            assert_eq!(read_one(&frame(op, b"")), Err(ReadError::FragmentedControl));
            assert_eq!(
                read_one(&frame(0x80 | op, &[0; 126])),
                Err(ReadError::ControlTooLong)
            );
        }
        assert_eq!(
            read_one(&frame(0x89, &[7; 125])),
            Ok(Some(Message::Ping(vec![7; 125])))
        );
    }

    #[test]
    fn continuations_continue_and_messages_do_not_nest() {
        assert_eq!(
            read_one(&frame(0x80, b"x")),
            Err(ReadError::UnexpectedContinuation)
        );
        let mut wire = frame(0x01, b"a");
        wire.extend(frame(0x81, b"b"));
        assert_eq!(read_one(&wire), Err(ReadError::UnfinishedMessage));
        let mut wire = frame(0x02, b"a");
        wire.extend(frame(0x01, b"b"));
        assert_eq!(read_one(&wire), Err(ReadError::UnfinishedMessage));
    }

    #[test]
    fn a_length_with_the_top_bit_is_refused() {
        let mut wire = vec![0x82, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(read_one(&wire), Err(ReadError::InvalidLength));
    }

    #[test]
    fn text_must_be_utf8() {
        let err = read_one(&frame(0x81, &[0xff])).unwrap_err();
        assert_eq!(err, ReadError::InvalidUtf8);
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
        let mut wire = frame(0x01, b"ok");
        wire.extend(frame(0x80, &[0xc3]));
        assert_eq!(read_one(&wire), Err(ReadError::InvalidUtf8));
        // Binary is not checked.
        assert_eq!(
            read_one(&frame(0x82, &[0xff])),
            Ok(Some(Message::Binary(vec![0xff])))
        );
    }

    #[test]
    fn close_payloads() {
        assert_eq!(
            read_one(&frame(0x88, &[3])),
            Err(ReadError::TruncatedCloseCode)
        );
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            let err = read_one(&frame(0x88, &code.to_be_bytes())).unwrap_err();
            assert_eq!(err, ReadError::InvalidCloseCode(code));
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(
                read_one(&frame(0x88, &code.to_be_bytes())),
                Ok(Some(Message::Close(Some(CloseFrame {
                    code: CloseCode(code),
                    reason: String::new()
                }))))
            );
        }
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.push(0xff);
        assert_eq!(
            read_one(&frame(0x88, &payload)),
            Err(ReadError::InvalidUtf8)
        );
    }

    #[test]
    fn the_limit_applies_to_the_declared_length_and_to_the_whole_message() {
        let too_big = ReadError::MessageTooLarge { limit: 10 };
        assert_eq!(too_big.close_code(), CloseCode::TOO_BIG);
        // Refused from the header alone, before any payload arrives.
        let wire = frame(0x81, &[b'a'; 11]);
        assert_eq!(
            MessageReader::new(10).read(&wire[..8]),
            Err(too_big.clone())
        );
        let mut wire = vec![0x82, 0x80 | 127];
        wire.extend_from_slice(&u64::MAX.wrapping_shr(1).to_be_bytes());
        assert_eq!(MessageReader::new(10).read(&wire), Err(too_big.clone()));
        // Exactly the limit passes, in one frame or in fragments.
        assert!(read_all(&mut MessageReader::new(10), &frame(0x81, &[b'a'; 10])).is_ok());
        let mut wire = frame(0x01, &[b'a'; 6]);
        wire.extend(frame(0x80, &[b'a'; 4]));
        assert_eq!(
            read_all(&mut MessageReader::new(10), &wire),
            Ok(vec![Message::Text("a".repeat(10))])
        );
        // Fragments summed beyond it do not.
        let mut wire = frame(0x01, &[b'a'; 6]);
        wire.extend(frame(0x00, &[b'a'; 4]));
        wire.extend(frame(0x80, &[b'a'; 1]));
        assert_eq!(read_all(&mut MessageReader::new(10), &wire), Err(too_big));
        // Control frames do not count.
        let mut wire = frame(0x01, &[b'a'; 6]);
        wire.extend(frame(0x89, &[b'p'; 100]));
        wire.extend(frame(0x80, &[b'a'; 4]));
        assert!(read_all(&mut MessageReader::new(10), &wire).is_ok());
    }

    /// What a client sends, in the terms of the test.
    #[derive(Debug, Clone)]
    enum Sent {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            ".{0,300}".prop_map(Sent::Text),
            (1usize..70_000).prop_map(|n| Sent::Text("é".repeat(n / 2))),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Sent::Binary),
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
        ]
    }

    /// The bytes tungstenite writes as a client for `messages`: each data message in
    /// fragments cut at the given fractions of its length, with a ping between fragments
    /// where asked.
    fn tungstenite_client_wire(messages: &[(Sent, Vec<u16>, bool)]) -> Vec<u8> {
        let mut socket = WebSocket::from_raw_socket(Cursor::new(Vec::new()), Role::Client, None);
        for (message, cuts, ping_inside) in messages {
            let (payload, opcode) = match message {
                Sent::Text(text) => (text.as_bytes().to_vec(), Data::Text),
                Sent::Binary(bytes) => (bytes.clone(), Data::Binary),
                Sent::Ping(bytes) => {
                    socket.write(WsMessage::Ping(bytes.clone().into())).unwrap();
                    continue;
                }
            };
            let mut points: Vec<usize> = cuts
                .iter()
                .map(|&cut| payload.len() * usize::from(cut) / usize::from(u16::MAX))
                .collect();
            points.sort_unstable();
            points.push(payload.len());
            let mut start = 0;
            for (i, &end) in points.iter().enumerate() {
                let last = i + 1 == points.len();
                let op = if i == 0 { opcode } else { Data::Continue };
                let frame = Frame::message(payload[start..end].to_vec(), OpCode::Data(op), last);
                socket.write(WsMessage::Frame(frame)).unwrap();
                if *ping_inside && i == 0 && !last {
                    socket
                        .write(WsMessage::Ping(b"inside".to_vec().into()))
                        .unwrap();
                }
                start = end;
            }
        }
        socket.flush().unwrap();
        socket.get_ref().get_ref().clone()
    }

    fn expected(messages: &[(Sent, Vec<u16>, bool)]) -> Vec<Message> {
        let mut out = Vec::new();
        for (message, cuts, ping_inside) in messages {
            match message {
                Sent::Ping(bytes) => out.push(Message::Ping(bytes.clone())),
                Sent::Text(text) => {
                    if *ping_inside && !cuts.is_empty() {
                        out.push(Message::Ping(b"inside".to_vec()));
                    }
                    out.push(Message::Text(text.clone()));
                }
                Sent::Binary(bytes) => {
                    if *ping_inside && !cuts.is_empty() {
                        out.push(Message::Ping(b"inside".to_vec()));
                    }
                    out.push(Message::Binary(bytes.clone()));
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn reads_what_tungstenite_writes_as_a_client_split_anywhere(
            messages in proptest::collection::vec(
                (sent(), proptest::collection::vec(any::<u16>(), 0..4), any::<bool>()),
                1..8,
            ),
            reads in proptest::collection::vec(1usize..5000, 1..50),
        ) {
            let wire = tungstenite_client_wire(&messages);
            let mut reader = MessageReader::new(100_000);
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut sizes = reads.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().expect("cycled")).min(rest.len());
                let mut input = &rest[..n];
                rest = &rest[n..];
                while let Some(message) = reader.read(input).unwrap() {
                    got.push(message);
                    input = &[];
                }
            }
            prop_assert_eq!(got, expected(&messages));
            prop_assert!(!reader.has_buffered());
        }
    }
}
