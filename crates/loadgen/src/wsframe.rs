//! Minimal server-side WebSocket framing (RFC 6455) for the ceiling writer: encodes the
//! unmasked frames a server sends and decodes the masked frames a client sends, nothing more
//! (no extensions, no fragmentation: a fragmented message is refused).

/// Opcodes used here.
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// Appends one final, unmasked frame of `opcode` carrying `payload` to `out`.
pub(crate) fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// One decoded client frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

/// Why a client's bytes cannot be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unmasked, fragmented, with reserved bits, or larger than the limit.
    Protocol(&'static str),
}

/// Decodes the first frame of `buf`: `Ok(None)` when more bytes are needed, else the frame
/// and the number of bytes it took. Frames larger than `max_payload` are refused.
pub(crate) fn decode(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, Refusal> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(Refusal::Protocol("reserved bits set"));
    }
    if b0 & 0x80 == 0 || b0 & 0x0F == 0 {
        return Err(Refusal::Protocol("fragmented messages are not supported"));
    }
    if b1 & 0x80 == 0 {
        return Err(Refusal::Protocol("client frames must be masked"));
    }
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
    if len > max_payload as u64 {
        return Err(Refusal::Protocol("frame too large"));
    }
    let len = len as usize;
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask: [u8; 4] = mask.try_into().expect("4 bytes");
    at += 4;
    let Some(masked) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let payload = masked
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((
        Frame {
            opcode: b0 & 0x0F,
            payload,
        },
        at + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
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
