//! WebSocket framing of the server's frames (RFC 6455, section 5.2).
//!
//! The server writes its pre-encoded JSON frames to the socket itself, each one behind the
//! few bytes of header built here, without copying the payload: the header and the
//! frame's bytes go out as two slices of one vectored write. Control frames (ping, pong,
//! close) are built whole ([`control_frame`], [`close_frame`]). Server frames are never
//! masked, and every frame this server sends is a whole message (FIN set).

/// The longest header a server (unmasked) frame can have: two bytes and a 64-bit length.
pub const MAX_HEADER_LEN: usize = 10;

/// First header byte of a final, unfragmented text frame: FIN and opcode 0x1.
const FIN_TEXT: u8 = 0x81;

/// The largest payload whose length fits in the 7-bit field.
const MAX_SHORT_LEN: usize = 125;

/// The 7-bit length value announcing a 16-bit extended length.
const LEN_16: u8 = 126;

/// The 7-bit length value announcing a 64-bit extended length.
const LEN_64: u8 = 127;

/// The first header byte of a ping (FIN and opcode 0x9).
pub const PING: u8 = 0x89;

/// The first header byte of a pong (FIN and opcode 0xA).
pub const PONG: u8 = 0x8A;

/// The first header byte of a close frame (FIN and opcode 0x8).
pub const CLOSE: u8 = 0x88;

/// A WebSocket close code (RFC 6455, section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (a server shutting down).
    pub const AWAY: Self = Self(1001);
    /// 1002: the peer violated the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1007: a message's data is inconsistent with its type (text that is not UTF-8).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: the peer violated a policy (a timeout, a slow consumer).
    pub const POLICY: Self = Self(1008);
    /// 1009: a message too large to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1012: the service restarts; reconnect.
    pub const RESTART: Self = Self(1012);

    /// Whether the code may be sent in a close frame: 1000–1003, 1007–1014 (registered), and
    /// 3000–4999 (libraries and applications). 1004–1006 and 1015 are reserved or never sent.
    pub fn is_allowed(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A whole control frame (`PING` or `PONG` as `first`) with `payload`, cut to the 125 bytes
/// a control frame may carry.
pub fn control_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_SHORT_LEN)];
    let mut frame = Vec::with_capacity(2 + payload.len());
    // At most 125: cut just above.
    frame.extend_from_slice(&[first, payload.len() as u8]);
    frame.extend_from_slice(payload);
    frame
}

/// A whole close frame with `code` and `reason` (cut on a character boundary to fit the
/// 123 bytes left beside the code).
pub fn close_frame(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_SHORT_LEN - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    control_frame(CLOSE, &payload)
}

/// The header of an unmasked, final text frame carrying `payload_len` bytes: the bytes and
/// how many of them are used (2, 4 or 10).
///
/// The payload must be valid UTF-8 (a text frame's payload is; this function sees only its
/// length).
pub fn text_frame_header(payload_len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut header = [0u8; MAX_HEADER_LEN];
    header[0] = FIN_TEXT;
    let used = if payload_len <= MAX_SHORT_LEN {
        // Fits in 7 bits: checked just above.
        header[1] = payload_len as u8;
        2
    } else if let Ok(len) = u16::try_from(payload_len) {
        header[1] = LEN_16;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        header[1] = LEN_64;
        // usize is at most 64 bits on every supported target; the most significant bit
        // stays clear as the RFC requires (no slice is longer than isize::MAX).
        header[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    (header, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    fn header(len: usize) -> Vec<u8> {
        let (bytes, used) = text_frame_header(len);
        bytes[..used].to_vec()
    }

    #[test]
    fn length_field_boundaries() {
        assert_eq!(header(0), [0x81, 0]);
        assert_eq!(header(125), [0x81, 125]);
        assert_eq!(header(126), [0x81, 126, 0, 126]);
        assert_eq!(header(65_535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(header(65_536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            header(0x0123_4567_89ab),
            [0x81, 127, 0, 0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab]
        );
    }

    /// Reads `wire` as a client does (tungstenite's parser, which rejects masked server
    /// frames): every whole message in it (a frame cut short by the end is not one).
    fn client_reads(wire: Vec<u8>) -> Vec<Message> {
        use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
        // What the client writes back (pongs, its close reply) is dropped.
        struct Wire(Cursor<Vec<u8>>);
        impl std::io::Read for Wire {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl std::io::Write for Wire {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut socket = WebSocket::from_raw_socket(Wire(Cursor::new(wire)), Role::Client, None);
        let mut messages = Vec::new();
        loop {
            match socket.read() {
                Ok(message) => messages.push(message),
                // The end of the bytes.
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => break,
                // After a close frame.
                Err(Error::ConnectionClosed) => break,
                Err(err) => panic!("the client rejected the frames: {err}"),
            }
        }
        messages
    }

    fn framed(payloads: &[String]) -> Vec<u8> {
        let mut wire = Vec::new();
        for payload in payloads {
            let (bytes, used) = text_frame_header(payload.len());
            wire.extend_from_slice(&bytes[..used]);
            wire.extend_from_slice(payload.as_bytes());
        }
        wire
    }

    #[test]
    fn a_large_frame_reads_back() {
        let payloads = ["é".repeat(40_000), "x".repeat(65_536), String::new()];
        let expected: Vec<Message> = payloads
            .iter()
            .map(|p| Message::Text(Utf8Bytes::from(p.clone())))
            .collect();
        assert_eq!(client_reads(framed(&payloads)), expected);
    }

    #[test]
    fn a_client_reads_back_control_frames() {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
        let mut wire = control_frame(PING, b"hi");
        wire.extend(control_frame(PONG, &[7; 200]));
        let long = "é".repeat(100);
        wire.extend(close_frame(CloseCode::AWAY, &long));
        let messages = client_reads(wire);
        assert_eq!(messages[0], Message::Ping(b"hi".to_vec().into()));
        assert_eq!(messages[1], Message::Pong(vec![7; 125].into()));
        assert_eq!(
            messages[2],
            Message::Close(Some(CloseFrame {
                code: WsCode::Away,
                reason: "é".repeat(61).into(),
            }))
        );
    }

    proptest! {
        #[test]
        fn a_client_reads_back_the_same_text_frames(
            payloads in proptest::collection::vec(
                prop_oneof![
                    ".{0,200}",
                    (100usize..70_000).prop_map(|n| "a".repeat(n)),
                ],
                1..6,
            )
        ) {
            let expected: Vec<Message> = payloads
                .iter()
                .map(|p| Message::Text(Utf8Bytes::from(p.clone())))
                .collect();
            prop_assert_eq!(client_reads(framed(&payloads)), expected);
        }
    }
}
