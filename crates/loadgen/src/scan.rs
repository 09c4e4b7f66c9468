//! The hot-path frame scanner: picks the few fields the oracle needs out of a server frame
//! without parsing its JSON.
//!
//! Both servers send compact JSON, but not with the same key order, so the scanner walks the
//! string tokens of the text (jumping from quote to quote, 8 bytes at a time) and looks at every
//! string followed by a colon, i.e. every key, at any depth. That is safe for the frames this
//! generator provokes: `op` and `requestId` occur once, at the top level, and `seq`, `sentAt`
//! and `room` occur once, inside `object` (the published objects have no other fields with
//! those names). The first occurrence of a key wins, and the walk stops as soon as every key
//! it looks for was found — before the object's `body` when the server keeps the published
//! key order, so the padding is then never read. Whitespace around the colon is tolerated; escaped quotes
//! inside strings are skipped.

/// The fields of one server frame that the oracle looks at; absent or malformed ones are
/// `None`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned<'a> {
    pub(crate) op: Option<&'a str>,
    pub(crate) request_id: Option<u64>,
    pub(crate) seq: Option<u64>,
    pub(crate) sent_at_ns: Option<u64>,
    pub(crate) room: Option<i64>,
}

/// The ops that carry an object.
pub(crate) fn is_event_op(op: &str) -> bool {
    matches!(op, "create" | "enter" | "update" | "leave" | "delete")
}

const OP: u8 = 1;
const REQUEST_ID: u8 = 2;
const SEQ: u8 = 4;
const SENT_AT: u8 = 8;
const ROOM: u8 = 16;
const ALL: u8 = OP | REQUEST_ID | SEQ | SENT_AT | ROOM;

/// Scans `text` in one pass.
pub(crate) fn scan(text: &str) -> Scanned<'_> {
    let b = text.as_bytes();
    let mut out = Scanned::default();
    let mut seen = 0u8;
    let mut i = 0;
    while let Some(open) = find_quote(b, i) {
        let start = open + 1;
        let Some(end) = string_end(text, start) else {
            break;
        };
        let after = skip_ws(b, end + 1);
        if b.get(after) != Some(&b':') {
            // A string value, not a key.
            i = end + 1;
            continue;
        }
        let value = skip_ws(b, after + 1);
        i = value;
        let bit = match &b[start..end] {
            b"op" => OP,
            b"requestId" => REQUEST_ID,
            b"seq" => SEQ,
            b"sentAt" => SENT_AT,
            b"room" => ROOM,
            _ => continue,
        };
        if seen & bit != 0 {
            continue;
        }
        seen |= bit;
        let value = &text[value..];
        match bit {
            OP => out.op = string_value(value),
            REQUEST_ID => out.request_id = unsigned_value(value),
            SEQ => out.seq = unsigned_value(value),
            SENT_AT => out.sent_at_ns = unsigned_value(value),
            _ => out.room = signed_value(value),
        }
        if seen == ALL {
            break;
        }
    }
    out
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The index of the quote closing the string whose contents start at `start`.
fn string_end(text: &str, start: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = start;
    loop {
        let quote = find_quote(b, from)?;
        let backslashes = b[start..quote]
            .iter()
            .rev()
            .take_while(|&&c| c == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(quote);
        }
        from = quote + 1;
    }
}

/// The index of the first `"` at or after `from`, eight bytes at a time (the distances
/// between quotes in a frame are short, where a general `memchr` costs more to set up).
fn find_quote(b: &[u8], mut from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    while let Some(chunk) = b.get(from..from + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("an 8-byte slice"));
        let x = word ^ QUOTES;
        // The lowest flagged byte is the first zero byte of `x` (borrows only create false
        // flags above a true one).
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(from + (zero.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    b.get(from..)?
        .iter()
        .position(|&c| c == b'"')
        .map(|p| from + p)
}

/// A JSON string without escapes at the start of `value`.
fn string_value(value: &str) -> Option<&str> {
    let rest = value.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// The JSON number at the start of `value`: its sign, the value of its leading digits, and
/// whether it continues as a float (`.`, `e`) and must be parsed as one.
fn integer_prefix(value: &str) -> (bool, Option<u64>, bool) {
    let b = value.as_bytes();
    let negative = b.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let mut n: Option<u64> = None;
    while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        n = n
            .unwrap_or(0)
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')));
        if n.is_none() {
            return (negative, None, true);
        }
        i += 1;
    }
    let float = matches!(b.get(i), Some(b'.' | b'e' | b'E'));
    (negative, n, float)
}

/// The number at the start of `value` parsed as a float.
fn float_value(value: &str) -> Option<f64> {
    let end = value
        .find(|c: char| !matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E'))
        .unwrap_or(value.len());
    value[..end].parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A non-negative integer; a float form (e.g. `1.7e18`, as a server that stores numbers as
/// doubles may print) is rounded.
fn unsigned_value(value: &str) -> Option<u64> {
    match integer_prefix(value) {
        (false, Some(n), false) => Some(n),
        _ => {
            let f = float_value(value)?;
            (0.0..1.9e19).contains(&f).then(|| f.round() as u64)
        }
    }
}

/// An integer, possibly negative; float forms are rounded.
fn signed_value(value: &str) -> Option<i64> {
    match integer_prefix(value) {
        (negative, Some(n), false) => {
            let n = i64::try_from(n).ok()?;
            Some(if negative { -n } else { n })
        }
        _ => {
            let f = float_value(value)?;
            (f.abs() < 9.2e18).then(|| f.round() as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECT: &str = r#"{"room":34,"score":0.5,"seq":1234,"sentAt":1795338784224123456,"body":"xxxx","createdAt":"2026-11-22T09:13:04.224Z","updatedAt":"2026-11-22T09:13:04.224Z","ACL":{"*":{"read":true}},"objectId":"bab1234","className":"LQBench"}"#;

    fn event(room: i64, seq: u64, sent_at: u64) -> Scanned<'static> {
        Scanned {
            op: Some("create"),
            request_id: Some(3),
            seq: Some(seq),
            sent_at_ns: Some(sent_at),
            room: Some(room),
        }
    }

    #[test]
    fn node_key_order() {
        let frame = format!(
            r#"{{"op":"create","clientId":"9c1e2b8a-1","installationId":"inst","requestId":3,"object":{OBJECT}}}"#
        );
        assert_eq!(scan(&frame), event(34, 1234, 1_795_338_784_224_123_456));
    }

    #[test]
    fn other_key_orders_and_whitespace() {
        let frame = r#"{"object":{"sentAt": 7,"className":"LQBench","seq" : 9,"room":34},"requestId":3,"clientId":"c","op":"create"}"#;
        assert_eq!(scan(frame), event(34, 9, 7));
        let frame = r#"{ "op" : "create", "requestId" : 3, "object" : {"room": -1, "seq": 0, "sentAt": 1}}"#;
        assert_eq!(scan(frame), event(-1, 0, 1));
    }

    #[test]
    fn negative_room_and_float_numbers() {
        let frame = r#"{"op":"create","requestId":3,"object":{"room":-1,"seq":1234,"sentAt":1.7953387842241234e18}}"#;
        let s = scan(frame);
        assert_eq!(s.room, Some(-1));
        assert_eq!(s.seq, Some(1234));
        let sent = s.sent_at_ns.unwrap();
        assert!(sent.abs_diff(1_795_338_784_224_123_400) < 1000, "{sent}");
        let frame = r#"{"op":"create","requestId":3,"object":{"room":-1.0,"seq":12.0,"sentAt":5}}"#;
        assert_eq!(scan(frame), event(-1, 12, 5));
    }

    #[test]
    fn missing_fields() {
        let s = scan(r#"{"op":"create","requestId":3,"object":{"room":1}}"#);
        assert_eq!(s.op, Some("create"));
        assert_eq!(s.room, Some(1));
        assert_eq!((s.seq, s.sent_at_ns), (None, None));
        let s = scan(r#"{"op":"create","object":{"seq":"x","sentAt":null,"room":"a"}}"#);
        assert_eq!(
            (s.request_id, s.seq, s.sent_at_ns, s.room),
            (None, None, None, None)
        );
        assert_eq!(scan(r#"{"clientId":"x"}"#), Scanned::default());
        assert_eq!(scan(""), Scanned::default());
        assert_eq!(scan("not json \"op\""), Scanned::default());
        // A key mentioned without a colon (inside a string) is skipped.
        let s = scan(r#"{"error":"\"op\" missing","op":"error","code":1,"requestId":null}"#);
        assert_eq!(s.op, Some("error"));
        assert_eq!(s.request_id, None);
    }

    #[test]
    fn strings_are_skipped_whole() {
        // Key-like text inside string values, escaped quotes and an escaped backslash.
        let frame = r#"{"op":"create","clientId":"a\"room\":5,\"seq\":6","installationId":"b\\","requestId":3,"object":{"body":"\"sentAt\":9","room":34,"seq":1234,"sentAt":1795338784224123456}}"#;
        assert_eq!(scan(frame), event(34, 1234, 1_795_338_784_224_123_456));
        // Long strings, with escapes past the byte-by-byte prefix.
        let long = format!(
            r#"{{"op":"create","requestId":3,"object":{{"body":"{}\"seq\":1,{}\\","room":34,"seq":9,"sentAt":7}}}}"#,
            "x".repeat(60),
            "y".repeat(100)
        );
        assert_eq!(scan(&long), event(34, 9, 7));
        // The first occurrence wins (e.g. `object` before `original`).
        let frame = r#"{"op":"update","requestId":3,"object":{"room":1,"seq":2,"sentAt":3},"original":{"room":4,"seq":5,"sentAt":6}}"#;
        let s = scan(frame);
        assert_eq!((s.room, s.seq, s.sent_at_ns), (Some(1), Some(2), Some(3)));
        // The walk stops once everything is found: what follows is never read.
        let frame = r#"{"op":"create","requestId":3,"object":{"room":34,"seq":9,"sentAt":7,"body":"xxxxxxxx"#;
        assert_eq!(scan(frame), event(34, 9, 7));
    }

    #[test]
    fn control_frames() {
        let s = scan(r#"{"op":"subscribed","clientId":"c","requestId":2}"#);
        assert_eq!(s.op, Some("subscribed"));
        assert_eq!(s.request_id, Some(2));
        assert_eq!(s.seq, None);
        let s = scan(r#"{"op":"update","requestId":1,"object":{"room":2,"seq":4,"sentAt":6}}"#);
        assert_eq!(s.op, Some("update"));
        assert_eq!(s.seq, Some(4));
    }
}
