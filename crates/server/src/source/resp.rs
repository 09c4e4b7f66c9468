//! RESP, the Redis protocol, read incrementally from one bounded buffer (pure: no I/O).
//!
//! [`parse`] reads one value from the front of a byte slice and hands its strings on as
//! slices of that input: a pub/sub message's channel and payload are never copied. It
//! accepts RESP2 (what a connection speaks unless it asks for more) and RESP3's push type
//! `>` and null `_`; the other RESP3 types are refused as malformed, since the Redis
//! source never asks for them.
//!
//! [`ReadBuffer`] is the buffer a connection reads into: the caller reads into
//! [`ReadBuffer::space`], takes values with [`ReadBuffer::next_frame`] and drops each with
//! [`ReadBuffer::consume`] once handled. Its capacity never exceeds one value of at most
//! the configured bound (or a 64 KiB floor): a larger value is an error, never a larger
//! buffer.
//!
//! The rest of the Redis source (the connection, the subscription) is in
//! `redis_link`; this module only knows bytes.

/// Elements of an array kept by [`parse`]; later ones are read (for framing) and counted.
/// Pub/sub needs at most four (`pmessage`, pattern, channel, payload).
pub const KEPT_ELEMENTS: usize = 4;
/// How deep arrays may nest (the Redis source never reads nested replies; framing does).
const MAX_DEPTH: usize = 8;
/// The longest header line (`$`, `*`, `:`): a sign and 19 digits.
const MAX_NUMBER_LINE: usize = 20;

/// One scalar, or what stands for a nested aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// `+OK`.
    Simple(&'a [u8]),
    /// `-ERR …`.
    Error(&'a [u8]),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(&'a [u8]),
    /// `$-1`, `*-1`, RESP3 `_`.
    Null,
    /// An array nested in an array: read past, its element count kept.
    Nested(usize),
}

impl<'a> Item<'a> {
    /// The bytes of a simple or bulk string.
    #[must_use]
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Self::Simple(bytes) | Self::Bulk(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// One top-level value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A scalar (or a null array).
    Item(Item<'a>),
    /// An array (`*`) or a RESP3 push (`>`).
    Array(Elements<'a>),
}

/// An array's first [`KEPT_ELEMENTS`] elements and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elements<'a> {
    kept: [Item<'a>; KEPT_ELEMENTS],
    len: usize,
}

impl<'a> Elements<'a> {
    /// How many elements the array has.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements kept (all of them when the array has at most [`KEPT_ELEMENTS`]).
    #[must_use]
    pub fn kept(&self) -> &[Item<'a>] {
        &self.kept[..self.len.min(KEPT_ELEMENTS)]
    }
}

/// What [`parse`] found at the front of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole value and how many bytes it took.
    Frame(Frame<'a>, usize),
    /// The value goes on past the input; `needed` is its whole size when a header told it
    /// (a bulk string's), so a reader can make room at once.
    Incomplete {
        /// Bytes from the start of the input the value needs at least.
        needed: Option<usize>,
    },
}

/// Input that is not RESP, or a value past the bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A value larger than the reader's bound.
    #[error("Redis sent a value of at least {size} bytes, more than the {max}-byte bound")]
    TooLarge {
        /// Its size as far as known.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// Bytes that are not RESP (or RESP3 types the source never asks for).
    #[error("Redis sent malformed RESP: {0}")]
    Malformed(&'static str),
}

/// A partial result of the recursive reader: done at a position, or short of input.
enum Step<T> {
    Done(T, usize),
    Short(Option<usize>),
}

/// Unwraps a [`Step`], returning early when the input is short.
macro_rules! step {
    ($step:expr) => {
        match $step? {
            Step::Done(value, at) => (value, at),
            Step::Short(needed) => return Ok(Step::Short(needed)),
        }
    };
}

/// Reads the value at the front of `input`; no value (nor any bulk string) may be larger
/// than `max` bytes.
///
/// # Errors
/// Input that is not RESP, or a value larger than `max`.
pub fn parse(input: &[u8], max: usize) -> Result<Parsed<'_>, RespError> {
    let reader = Reader { input, max };
    let step = match input.first() {
        Some(b'*' | b'>') => reader.array(0, 0).map(|step| match step {
            Step::Done(Some(elements), at) => Step::Done(Frame::Array(elements), at),
            Step::Done(None, at) => Step::Done(Frame::Item(Item::Null), at),
            Step::Short(needed) => Step::Short(needed),
        }),
        _ => reader.item(0, 0).map(|step| match step {
            Step::Done(item, at) => Step::Done(Frame::Item(item), at),
            Step::Short(needed) => Step::Short(needed),
        }),
    }?;
    match step {
        Step::Done(_, at) if at > max => Err(RespError::TooLarge { size: at, max }),
        Step::Done(frame, at) => Ok(Parsed::Frame(frame, at)),
        Step::Short(Some(needed)) if needed > max => Err(RespError::TooLarge { size: needed, max }),
        Step::Short(needed) if input.len() > max => Err(RespError::TooLarge {
            size: needed.unwrap_or(input.len()).max(input.len()),
            max,
        }),
        Step::Short(needed) => Ok(Parsed::Incomplete { needed }),
    }
}

struct Reader<'a> {
    input: &'a [u8],
    max: usize,
}

impl<'a> Reader<'a> {
    /// The line starting at `at` (without its CRLF), at most `longest` bytes long.
    fn line(&self, at: usize, longest: usize) -> Result<Step<&'a [u8]>, RespError> {
        let window = &self.input[at.min(self.input.len())..];
        let searched = &window[..window.len().min(longest.saturating_add(2))];
        match searched.iter().position(|&b| b == b'\n') {
            Some(0) => Err(RespError::Malformed("a line without CR")),
            Some(lf) if searched[lf - 1] == b'\r' => {
                let line = &window[..lf - 1];
                if line.contains(&b'\r') {
                    return Err(RespError::Malformed("a CR inside a line"));
                }
                Ok(Step::Done(line, at + lf + 1))
            }
            Some(_) => Err(RespError::Malformed("a line without CR")),
            None if searched.len() >= longest.saturating_add(2) => {
                if longest == MAX_NUMBER_LINE {
                    Err(RespError::Malformed("a header line too long for a number"))
                } else {
                    Err(RespError::TooLarge {
                        size: at + searched.len(),
                        max: self.max,
                    })
                }
            }
            None => Ok(Step::Short(None)),
        }
    }

    fn number(&self, at: usize) -> Result<Step<i64>, RespError> {
        let (line, next) = step!(self.line(at, MAX_NUMBER_LINE));
        Ok(Step::Done(parse_integer(line)?, next))
    }

    /// The scalar (or skipped nested array) whose type byte is at `at`.
    fn item(&self, at: usize, depth: usize) -> Result<Step<Item<'a>>, RespError> {
        let Some(&kind) = self.input.get(at) else {
            return Ok(Step::Short(None));
        };
        let body = at + 1;
        Ok(match kind {
            b'+' => match self.line(body, self.max)? {
                Step::Done(line, next) => Step::Done(Item::Simple(line), next),
                Step::Short(needed) => Step::Short(needed),
            },
            b'-' => match self.line(body, self.max)? {
                Step::Done(line, next) => Step::Done(Item::Error(line), next),
                Step::Short(needed) => Step::Short(needed),
            },
            b':' => {
                let (value, next) = step!(self.number(body));
                Step::Done(Item::Integer(value), next)
            }
            b'_' => {
                let (line, next) = step!(self.line(body, MAX_NUMBER_LINE));
                if !line.is_empty() {
                    return Err(RespError::Malformed("a null with content"));
                }
                Step::Done(Item::Null, next)
            }
            b'$' => {
                let (len, start) = step!(self.number(body));
                if len == -1 {
                    return Ok(Step::Done(Item::Null, start));
                }
                let len = usize::try_from(len)
                    .map_err(|_| RespError::Malformed("a negative bulk length"))?;
                if len > self.max {
                    return Err(RespError::TooLarge {
                        size: len,
                        max: self.max,
                    });
                }
                let end = start + len;
                if self.input.len() < end + 2 {
                    return Ok(Step::Short(Some(end + 2)));
                }
                if &self.input[end..end + 2] != b"\r\n" {
                    return Err(RespError::Malformed("a bulk string without its CRLF"));
                }
                Step::Done(Item::Bulk(&self.input[start..end]), end + 2)
            }
            b'*' | b'>' => match self.array(at, depth + 1)? {
                Step::Done(Some(elements), next) => Step::Done(Item::Nested(elements.len), next),
                Step::Done(None, next) => Step::Done(Item::Null, next),
                Step::Short(needed) => Step::Short(needed),
            },
            b'#' | b',' | b'(' | b'=' | b'!' | b'%' | b'~' | b'|' => {
                return Err(RespError::Malformed(
                    "a RESP3 type the source does not ask for",
                ));
            }
            _ => return Err(RespError::Malformed("an unknown type byte")),
        })
    }

    /// The array whose type byte is at `at` (`None`: a null array).
    fn array(&self, at: usize, depth: usize) -> Result<Step<Option<Elements<'a>>>, RespError> {
        if depth > MAX_DEPTH {
            return Err(RespError::Malformed("arrays nested too deep"));
        }
        let (len, mut next) = step!(self.number(at + 1));
        if len == -1 {
            return Ok(Step::Done(None, next));
        }
        let len =
            usize::try_from(len).map_err(|_| RespError::Malformed("a negative array length"))?;
        // Every element takes at least three bytes (`_\r\n`).
        if len > self.max / 3 {
            return Err(RespError::TooLarge {
                size: len.saturating_mul(3),
                max: self.max,
            });
        }
        let mut kept = [Item::Null; KEPT_ELEMENTS];
        for index in 0..len {
            let (item, after) = step!(self.item(next, depth));
            if let Some(slot) = kept.get_mut(index) {
                *slot = item;
            }
            next = after;
            if next > self.max {
                return Err(RespError::TooLarge {
                    size: next,
                    max: self.max,
                });
            }
        }
        Ok(Step::Done(Some(Elements { kept, len }), next))
    }
}

/// A RESP integer: an optional `-` and 1 to 19 digits.
fn parse_integer(line: &[u8]) -> Result<i64, RespError> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(RespError::Malformed("a number of no or too many digits"));
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(RespError::Malformed("a number with a non-digit"));
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digit - b'0')))
            .ok_or(RespError::Malformed("a number out of range"))?;
    }
    Ok(if negative { -value } else { value })
}

/// Appends `args` as one command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The capacity a [`ReadBuffer`] starts with and returns to once empty: reads of up to
/// this size, and no more memory than this while messages are small.
pub const READ_CHUNK: usize = 64 * 1024;
/// Free space below which the unread bytes are moved to the front before a read.
const COMPACT_BELOW: usize = 4 * 1024;

/// The bytes read from a connection and not yet handled: at most one value of at most
/// `max_frame` bytes (and never less room than [`READ_CHUNK`]).
#[derive(Debug)]
pub struct ReadBuffer {
    /// Zero-filled to its capacity: `bytes[start..end]` is unread.
    bytes: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
    /// The size the value at the front needs, when a header told it.
    needed: Option<usize>,
}

impl ReadBuffer {
    /// An empty buffer for values of at most `max_frame` bytes.
    #[must_use]
    pub fn new(max_frame: usize) -> Self {
        Self {
            bytes: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max_frame,
            needed: None,
        }
    }

    /// The value at the front and its size, if it is all here; hand the size to
    /// [`Self::consume`] when done with the value.
    ///
    /// # Errors
    /// Bytes that are not RESP, or a value larger than the bound.
    pub fn next_frame(&mut self) -> Result<Option<(Frame<'_>, usize)>, RespError> {
        match parse(&self.bytes[self.start..self.end], self.max_frame)? {
            Parsed::Frame(frame, size) => {
                self.needed = None;
                Ok(Some((frame, size)))
            }
            Parsed::Incomplete { needed } => {
                self.needed = needed;
                Ok(None)
            }
        }
    }

    /// Drops `size` bytes (a value [`Self::next_frame`] returned) from the front.
    pub fn consume(&mut self, size: usize) {
        self.start = (self.start + size).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.bytes.len() > READ_CHUNK {
                self.bytes.truncate(READ_CHUNK);
                self.bytes.shrink_to_fit();
            }
        }
    }

    /// Room to read into, after [`Self::next_frame`] found no whole value; report what was
    /// read with [`Self::filled`]. Grows the buffer only as far as the value at the front
    /// needs, and never past the bound.
    ///
    /// # Errors
    /// The value at the front does not fit in the bound.
    pub fn space(&mut self) -> Result<&mut [u8], RespError> {
        let unread = self.end - self.start;
        let want = self.needed.unwrap_or(unread + 1).max(unread + 1);
        let capacity = self.bytes.len();
        if want > capacity {
            let limit = self.max_frame.max(READ_CHUNK);
            if unread >= limit || want > limit {
                return Err(RespError::TooLarge {
                    size: want.max(unread + 1),
                    max: self.max_frame,
                });
            }
            // Exactly what a known size needs; otherwise double, up to the bound.
            let grown = if self.needed.is_some() {
                want
            } else {
                capacity.saturating_mul(2).max(want).min(limit)
            };
            self.compact();
            self.bytes.reserve_exact(grown - capacity);
            self.bytes.resize(grown, 0);
        } else if capacity - self.end < COMPACT_BELOW.min(want - unread) || self.end == capacity {
            self.compact();
        }
        Ok(&mut self.bytes[self.end..])
    }

    /// Records that `read` bytes were read into [`Self::space`].
    pub fn filled(&mut self, read: usize) {
        self.end = (self.end + read).min(self.bytes.len());
    }

    /// The bytes the buffer holds memory for.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Bytes read and not yet consumed.
    #[must_use]
    pub fn unread(&self) -> usize {
        self.end - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn frame(input: &[u8]) -> (Frame<'_>, usize) {
        match parse(input, MAX) {
            Ok(Parsed::Frame(frame, size)) => (frame, size),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn pub_sub_replies_are_read_with_their_strings_in_place() {
        let input = b"*3\r\n$7\r\nmessage\r\n$13\r\nlqAppafterSave\r\n$2\r\n{}\r\n";
        // `lqAppafterSave` is 14 bytes: the length says 13, so the CRLF is missing.
        assert_eq!(
            parse(input, MAX),
            Err(RespError::Malformed("a bulk string without its CRLF"))
        );
        let input = b"*3\r\n$7\r\nmessage\r\n$14\r\nlqAppafterSave\r\n$2\r\n{}\r\n+OK\r\n";
        let (Frame::Array(elements), size) = frame(input) else {
            panic!("an array")
        };
        assert_eq!(size, input.len() - 5);
        assert_eq!(
            elements.kept(),
            &[
                Item::Bulk(b"message"),
                Item::Bulk(b"lqAppafterSave"),
                Item::Bulk(b"{}")
            ]
        );
        // The payload is a slice of the input, not a copy.
        let payload = elements.kept()[2].bytes().unwrap();
        assert!(std::ptr::eq(payload.as_ptr(), input[size - 4..].as_ptr()));

        // Subscription confirmations, a subscribed PING's answer, RESP3 pushes.
        let (Frame::Array(confirmed), _) = frame(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
        else {
            panic!()
        };
        assert_eq!(confirmed.kept()[2], Item::Integer(1));
        let (Frame::Array(pong), _) = frame(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n") else {
            panic!()
        };
        assert_eq!(pong.kept(), &[Item::Bulk(b"pong"), Item::Bulk(b"")]);
        let (Frame::Array(push), _) = frame(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n")
        else {
            panic!()
        };
        assert_eq!(push.len(), 3);
    }

    #[test]
    fn scalars_nulls_and_nested_arrays() {
        assert_eq!(frame(b"+PONG\r\n").0, Frame::Item(Item::Simple(b"PONG")));
        assert_eq!(
            frame(b"-WRONGPASS invalid\r\n").0,
            Frame::Item(Item::Error(b"WRONGPASS invalid"))
        );
        assert_eq!(frame(b":-42\r\n").0, Frame::Item(Item::Integer(-42)));
        assert_eq!(frame(b"$-1\r\n").0, Frame::Item(Item::Null));
        assert_eq!(frame(b"*-1\r\n").0, Frame::Item(Item::Null));
        assert_eq!(frame(b"_\r\n").0, Frame::Item(Item::Null));
        assert_eq!(frame(b"$0\r\n\r\n").0, Frame::Item(Item::Bulk(b"")));
        let (Frame::Array(elements), size) =
            frame(b"*6\r\n*2\r\n:1\r\n:2\r\n:3\r\n$1\r\nx\r\n+a\r\n:5\r\n:6\r\n")
        else {
            panic!()
        };
        assert_eq!(size, 39);
        assert_eq!(elements.len(), 6);
        assert_eq!(
            elements.kept(),
            &[
                Item::Nested(2),
                Item::Integer(3),
                Item::Bulk(b"x"),
                Item::Simple(b"a")
            ]
        );
    }

    #[test]
    fn a_value_cut_short_asks_for_more_and_says_how_much_when_known() {
        let whole = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$10\r\n0123456789\r\n";
        for cut in 0..whole.len() {
            assert!(
                matches!(parse(&whole[..cut], MAX), Ok(Parsed::Incomplete { .. })),
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse(&whole[..30], MAX),
            Ok(Parsed::Incomplete {
                needed: Some(whole.len())
            })
        );
    }

    #[test]
    fn malformed_input_and_values_past_the_bound_are_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b"+a\nb\r\n",
            b"+a\rb\r\n",
            b":12a\r\n",
            b":\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nabcde\r\n",
            b"#t\r\n",
            b"%1\r\n",
            b"$123456789012345678901234\r\n",
        ] {
            assert!(
                matches!(parse(bad, MAX), Err(RespError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad, MAX)
            );
        }
        // Deep nesting is refused, not recursed into.
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(matches!(
            parse(deep.as_bytes(), MAX),
            Err(RespError::Malformed(_))
        ));
        // A bulk string past the bound is refused from its header alone.
        assert_eq!(
            parse(b"$2000\r\n", 1000),
            Err(RespError::TooLarge {
                size: 2000,
                max: 1000
            })
        );
        // As is a simple string, or an array, that will not end within it.
        assert!(matches!(
            parse(&[b'+'; 1100], 1000),
            Err(RespError::TooLarge { .. })
        ));
        assert!(matches!(
            parse(b"*1000\r\n", 1000),
            Err(RespError::TooLarge { .. })
        ));
        // A whole value just past it.
        let mut big = b"*2\r\n$990\r\n".to_vec();
        big.extend([b'x'; 990]);
        big.extend(b"\r\n:1\r\n");
        assert!(matches!(parse(&big, 1000), Err(RespError::TooLarge { .. })));
    }

    /// A value as the tests build it, encoded by [`encode`].
    #[derive(Debug, Clone, PartialEq)]
    enum Value {
        Simple(Vec<u8>),
        Error(Vec<u8>),
        Integer(i64),
        Bulk(Vec<u8>),
        Null,
        Array(Vec<Value>),
    }

    fn encode(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Simple(s) => out.extend([&b"+"[..], s, b"\r\n"].concat()),
            Value::Error(s) => out.extend([&b"-"[..], s, b"\r\n"].concat()),
            Value::Integer(i) => out.extend(format!(":{i}\r\n").bytes()),
            Value::Bulk(b) => {
                out.extend(format!("${}\r\n", b.len()).bytes());
                out.extend(b);
                out.extend(b"\r\n");
            }
            Value::Null => out.extend(b"$-1\r\n"),
            Value::Array(items) => {
                out.extend(format!("*{}\r\n", items.len()).bytes());
                for item in items {
                    encode(item, out);
                }
            }
        }
    }

    /// What `parse` should make of `value`.
    fn expected(value: &Value) -> Owned {
        match value {
            Value::Array(items) => Owned::Array(
                items.len(),
                items
                    .iter()
                    .take(KEPT_ELEMENTS)
                    .map(expected_item)
                    .collect(),
            ),
            scalar => Owned::Item(expected_item(scalar)),
        }
    }

    fn expected_item(value: &Value) -> OwnedItem {
        match value {
            Value::Simple(s) => OwnedItem::Simple(s.clone()),
            Value::Error(s) => OwnedItem::Error(s.clone()),
            Value::Integer(i) => OwnedItem::Integer(*i),
            Value::Bulk(b) => OwnedItem::Bulk(b.clone()),
            Value::Null => OwnedItem::Null,
            Value::Array(items) => OwnedItem::Nested(items.len()),
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    enum OwnedItem {
        Simple(Vec<u8>),
        Error(Vec<u8>),
        Integer(i64),
        Bulk(Vec<u8>),
        Null,
        Nested(usize),
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Owned {
        Item(OwnedItem),
        Array(usize, Vec<OwnedItem>),
    }

    fn owned_item(item: &Item<'_>) -> OwnedItem {
        match *item {
            Item::Simple(s) => OwnedItem::Simple(s.to_vec()),
            Item::Error(s) => OwnedItem::Error(s.to_vec()),
            Item::Integer(i) => OwnedItem::Integer(i),
            Item::Bulk(b) => OwnedItem::Bulk(b.to_vec()),
            Item::Null => OwnedItem::Null,
            Item::Nested(len) => OwnedItem::Nested(len),
        }
    }

    fn owned(frame: &Frame<'_>) -> Owned {
        match frame {
            Frame::Item(item) => Owned::Item(owned_item(item)),
            Frame::Array(elements) => Owned::Array(
                elements.len(),
                elements.kept().iter().map(owned_item).collect(),
            ),
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        let line = proptest::collection::vec(
            any::<u8>().prop_filter("no CR or LF", |b| *b != b'\r' && *b != b'\n'),
            0..20,
        );
        let scalar = prop_oneof![
            line.clone().prop_map(Value::Simple),
            line.prop_map(Value::Error),
            any::<i64>().prop_map(Value::Integer),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bulk),
            Just(Value::Null),
        ];
        scalar.prop_recursive(3, 24, 6, |inner| {
            proptest::collection::vec(inner, 0..7).prop_map(Value::Array)
        })
    }

    /// Feeds `input` to a [`ReadBuffer`] in reads of the given sizes (cycled).
    fn read_in_pieces(
        input: &[u8],
        sizes: &[usize],
        max: usize,
    ) -> Result<(Vec<Owned>, usize), RespError> {
        let mut buffer = ReadBuffer::new(max);
        let mut frames = Vec::new();
        let mut peak = buffer.capacity();
        let (mut at, mut turn) = (0, 0);
        loop {
            while let Some((frame, size)) = buffer.next_frame()? {
                frames.push(owned(&frame));
                buffer.consume(size);
            }
            if at == input.len() {
                return Ok((frames, peak));
            }
            let space = buffer.space()?;
            let size = sizes[turn % sizes.len()]
                .clamp(1, space.len())
                .min(input.len() - at);
            space[..size].copy_from_slice(&input[at..at + size]);
            buffer.filled(size);
            at += size;
            turn += 1;
            peak = peak.max(buffer.capacity());
        }
    }

    proptest! {
        #[test]
        fn any_split_of_the_input_gives_the_same_frames(
            values in proptest::collection::vec(value(), 1..8),
            sizes in proptest::collection::vec(1usize..200, 1..10),
        ) {
            let mut input = Vec::new();
            for value in &values {
                encode(value, &mut input);
            }
            let expected: Vec<Owned> = values.iter().map(expected).collect();
            let (whole, _) = read_in_pieces(&input, &[input.len()], MAX).unwrap();
            prop_assert_eq!(&whole, &expected);
            let (pieces, _) = read_in_pieces(&input, &sizes, MAX).unwrap();
            prop_assert_eq!(&pieces, &expected);
        }

        #[test]
        fn arbitrary_bytes_read_the_same_whole_or_in_pieces(
            input in proptest::collection::vec(any::<u8>(), 0..400),
            sizes in proptest::collection::vec(1usize..50, 1..5),
        ) {
            let whole = read_in_pieces(&input, &[input.len().max(1)], 256);
            let pieces = read_in_pieces(&input, &sizes, 256);
            prop_assert_eq!(whole.as_ref().err().is_some(), pieces.as_ref().err().is_some());
            if let (Ok((whole, _)), Ok((pieces, _))) = (whole, pieces) {
                prop_assert_eq!(whole, pieces);
            }
        }
    }

    #[test]
    fn the_buffer_grows_to_one_value_at_most_and_shrinks_back() {
        const BOUND: usize = 256 * 1024;
        let mut message = Vec::new();
        encode_command(&mut message, &[b"message", b"c", &vec![b'x'; 200 * 1024]]);
        let small = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\n{}\r\n";
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend(small);
            input.extend(&message);
        }
        let (frames, peak) = read_in_pieces(&input, &[1000, 70_000, 5], BOUND).unwrap();
        assert_eq!(frames.len(), 6);
        assert!(peak <= BOUND, "{peak}");
        assert!(peak >= message.len(), "{peak}");

        // One value past the bound: an error, and the buffer stayed within it.
        let mut huge = Vec::new();
        encode_command(&mut huge, &[b"message", b"c", &vec![b'x'; BOUND]]);
        let err = read_in_pieces(&huge, &[4096], BOUND).unwrap_err();
        assert!(matches!(err, RespError::TooLarge { .. }), "{err}");
        // Its size unknown until the end (a long simple string): the same.
        let mut long_line = vec![b'+'; BOUND + 10];
        long_line.extend(b"\r\n");
        assert!(read_in_pieces(&long_line, &[4096], BOUND).is_err());

        // Consumed to the end, it is back to its first size.
        let mut buffer = ReadBuffer::new(BOUND);
        let mut input = &message[..];
        loop {
            if let Some((_, size)) = buffer.next_frame().unwrap() {
                buffer.consume(size);
                break;
            }
            let space = buffer.space().unwrap();
            let n = space.len().min(input.len());
            space[..n].copy_from_slice(&input[..n]);
            buffer.filled(n);
            input = &input[n..];
        }
        assert_eq!(buffer.capacity(), READ_CHUNK);
    }
}
