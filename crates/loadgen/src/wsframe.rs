//! Minimal WebSocket framing (RFC 6455), both ends, nothing more: no extensions.
//! - The ceiling writer (the server side) encodes unmasked frames and decodes the masked
//!   frames a client sends (a fragmented message is refused there).
//! - The generator's client ([`crate::wsclient`]) encodes masked frames and reads the
//!   headers of the unmasked frames a server sends, leaving their payloads in place.

/// Opcodes used here.
pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// Appends one final, unmasked frame of `opcode` carrying `payload` to `out`.
pub(crate) fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    push_header(opcode, payload.len(), None, out);
    out.extend_from_slice(payload);
}

/// Appends one final frame of `opcode` carrying `payload` masked with `mask` to `out`, as a
/// client must send it.
pub(crate) fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    push_header(opcode, payload.len(), Some(mask), out);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

fn push_header(opcode: u8, len: usize, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    match len {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// One decoded client frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

/// Why bytes cannot be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Masked the wrong way, fragmented where not supported, with reserved bits, or larger
    /// than the limit.
    Protocol(&'static str),
}

/// The header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) mask: Option<[u8; 4]>,
    /// Where the payload starts, from the start of the frame.
    pub(crate) payload_at: usize,
    pub(crate) payload_len: usize,
}

impl Header {
    /// The whole frame's length.
    pub(crate) fn frame_len(&self) -> usize {
        self.payload_at + self.payload_len
    }
}

/// Reads the header at the start of `buf`: `Ok(None)` when more bytes are needed. Payloads
/// larger than `max_payload` and control frames that are fragmented or longer than 125
/// bytes are refused.
pub(crate) fn header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, Refusal> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Refusal::Protocol("reserved bits set"));
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= CLOSE && (!fin || len > 125) {
        return Err(Refusal::Protocol("control frames must be final and short"));
    }
    if len > max_payload as u64 {
        return Err(Refusal::Protocol("frame too large"));
    }
    let mask = if b1 & 0x80 != 0 {
        let Some(mask) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some(mask.try_into().expect("4 bytes"))
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        payload_at: at,
        payload_len: len as usize,
    }))
}

/// Decodes the first frame a client sent in `buf`: `Ok(None)` when more bytes are needed,
/// else the frame and the number of bytes it took. Unmasked and fragmented frames, and
/// frames larger than `max_payload`, are refused.
pub(crate) fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, Refusal> {
    let Some(header) = header(buf, max_payload)? else {
        return Ok(None);
    };
    if !header.fin || header.opcode == CONTINUATION {
        return Err(Refusal::Protocol("fragmented messages are not supported"));
    }
    let Some(mask) = header.mask else {
        return Err(Refusal::Protocol("client frames must be masked"));
    };
    let Some(masked) = buf.get(header.payload_at..header.frame_len()) else {
        return Ok(None);
    };
    let payload = masked
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    Ok(Some((
        Frame {
            opcode: header.opcode,
            payload,
        },
        header.frame_len(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked(opcode, payload, [1, 2, 3, 4], &mut out);
        out
    }

    #[test]
    fn encodes_every_length_form() {
        for (len, header) in [
            (5usize, 2usize),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
        ] {
            let mut out = Vec::new();
            encode(TEXT, &vec![b'a'; len], &mut out);
            assert_eq!(out.len(), header + len, "{len}");
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        encode(TEXT, b"hi", &mut out);
        assert_eq!(out, b"\x81\x02hi");
    }

    #[test]
    fn matches_the_rfc_examples() {
        // RFC 6455, section 5.7: "Hello", unmasked and masked.
        let mut out = Vec::new();
        encode(TEXT, b"Hello", &mut out);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        out.clear();
        encode_masked(TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d], &mut out);
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        // A fragmented unmasked text message: "Hel" then "lo".
        let first = header(&[0x01, 0x03, 0x48, 0x65, 0x6c], 100)
            .unwrap()
            .unwrap();
        assert_eq!((first.fin, first.opcode, first.mask), (false, TEXT, None));
        assert_eq!((first.payload_at, first.frame_len()), (2, 5));
        let last = header(&[0x80, 0x02, 0x6c, 0x6f], 100).unwrap().unwrap();
        assert_eq!((last.fin, last.opcode), (true, CONTINUATION));
        // 256 bytes, unmasked: the 16-bit length form.
        let long = header(&[0x82, 0x7E, 0x01, 0x00], 1000).unwrap().unwrap();
        assert_eq!(
            (long.opcode, long.payload_at, long.payload_len),
            (BINARY, 4, 256)
        );
        assert_eq!(header(&[0x82, 0x7E, 0x01], 1000), Ok(None));
    }

    #[test]
    fn refuses_bad_control_frames() {
        assert!(header(&[0x09, 0x00], 100).is_err(), "a fragmented ping");
        assert!(
            header(&[0x89, 0x7E, 0x00, 0x7E], 1000).is_err(),
            "a 126-byte ping"
        );
    }

    #[test]
    fn decodes_masked_client_frames_in_pieces() {
        for len in [0usize, 3, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut bytes = masked(TEXT, &payload);
            bytes.extend_from_slice(b"next");
            let whole = bytes.len() - 4;
            for cut in [0, 1, 2, whole - 1] {
                assert_eq!(decode(&bytes[..cut], 1 << 20), Ok(None), "{len} cut {cut}");
            }
            let (frame, used) = decode(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(used, whole);
            assert_eq!(frame.opcode, TEXT);
            assert_eq!(frame.payload, payload);
        }
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        let mut unmasked = Vec::new();
        encode(TEXT, b"x", &mut unmasked);
        assert!(decode(&unmasked, 100).is_err());
        let mut fragment = masked(TEXT, b"x");
        fragment[0] &= 0x7F;
        assert!(decode(&fragment, 100).is_err());
        let mut reserved = masked(TEXT, b"x");
        reserved[0] |= 0x40;
        assert!(decode(&reserved, 100).is_err());
        assert!(decode(&masked(TEXT, &[0; 101]), 100).is_err());
        assert!(decode(&masked(PING, b""), 100).unwrap().is_some());
    }
}
