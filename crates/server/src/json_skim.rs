//! A validating skim over JSON text: finds where values, keys and strings start and end
//! without building anything, for the feed's hot path ([`crate::pubsub::MessageText::read`]).
//!
//! It accepts exactly what serde_json accepts when it skips a value (`IgnoredAny`, a
//! `RawValue`): the JSON grammar with any nesting, escapes checked for form only (`\u`
//! followed by four hex digits, surrogates not paired). The caller's text is UTF-8 already
//! (`&str`), so only control characters in strings are left to refuse. What it does not
//! handle itself — a key with an escape, nesting deeper than [`MAX_DEPTH`] — it declines
//! (`None`), like every error, and the caller reads the text with serde_json instead: a skim
//! that succeeds gives the same spans serde_json's reading would, and one that fails says
//! nothing about the text.

use std::ops::Range;

/// Deepest nesting skimmed; deeper values are declined (serde_json then reads them).
pub(crate) const MAX_DEPTH: u32 = 64;

/// A position in JSON text.
#[derive(Debug)]
pub(crate) struct Skim<'t> {
    bytes: &'t [u8],
    at: usize,
}

impl<'t> Skim<'t> {
    /// At the start of `text`.
    pub(crate) fn new(text: &'t str) -> Self {
        Self {
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    /// Skips JSON whitespace (space, tab, line feed, carriage return, as serde_json).
    pub(crate) fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte, not consumed.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Consumes `byte` if it is next.
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    /// Consumes `byte`, which must be next.
    pub(crate) fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Whether the whole text was consumed.
    pub(crate) fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The content (between the quotes) of the string that starts here, when it holds no
    /// escape; `None` for an escape (declined), a control character or the end of the text.
    pub(crate) fn plain_string(&mut self) -> Option<Range<usize>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.at + 1;
        let end = special_at(self.bytes, start)?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        Some(start..end)
    }

    /// Skips the string that starts here, escapes included.
    fn string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            self.at = special_at(self.bytes, self.at)?;
            match self.bytes[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        let bytes = self.bytes;
        let mut at = start;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        self.at = at;
        at - start
    }

    /// Skips the number that starts here: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.') && self.digits() == 0 {
            return None;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.bytes[self.at..].starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// Skips the value after any whitespace here; its span (whitespace around it excluded).
    pub(crate) fn value(&mut self) -> Option<Range<usize>> {
        self.whitespace();
        let start = self.at;
        self.value_at(0)?;
        Some(start..self.at)
    }

    /// Steps into the object or array opening here (at nesting `depth`, declined beyond
    /// [`MAX_DEPTH`]); `true` when it closes with `close` right away (and is then skipped).
    fn open_is_empty(&mut self, depth: u32, close: u8) -> Option<bool> {
        if depth == MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.whitespace();
        Some(self.eat(close))
    }

    fn value_at(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'{' => {
                if self.open_is_empty(depth, b'}')? {
                    return Some(());
                }
                loop {
                    self.whitespace();
                    if self.peek() != Some(b'"') {
                        return None;
                    }
                    self.string()?;
                    self.whitespace();
                    self.expect(b':')?;
                    self.whitespace();
                    self.value_at(depth + 1)?;
                    if !self.comma_or(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                if self.open_is_empty(depth, b']')? {
                    return Some(());
                }
                loop {
                    self.whitespace();
                    self.value_at(depth + 1)?;
                    if !self.comma_or(b']')? {
                        return Some(());
                    }
                }
            }
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    /// After a member of an object or array: `Some(true)` for a comma (another member
    /// follows), `Some(false)` for `close`, `None` for anything else.
    pub(crate) fn comma_or(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        if self.eat(b',') {
            Some(true)
        } else {
            self.expect(close).map(|()| false)
        }
    }
}

/// Where the first byte from `from` on that ends a run of plain string content is: a
/// quote, a backslash or a control character. Eight bytes at a time: a string's content is
/// most of what a message holds.
fn special_at(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    // A byte of `word` is zero: its high bit in the result (the lowest such byte exactly;
    // bytes above it may be flagged falsely by the borrow, and are not looked at).
    let zero_bytes = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("a slice of eight bytes"));
        let found = zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            // Bytes below 0x20: those whose high three bits are all zero.
            | zero_bytes(word & (ONES * 0xe0));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;

    /// serde_json's skim of one value followed by whitespace only.
    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    fn skim_accepts(text: &str) -> Option<Range<usize>> {
        let mut skim = Skim::new(text);
        let span = skim.value()?;
        skim.whitespace();
        skim.at_end().then_some(span)
    }

    #[test]
    fn accepts_what_serde_json_skips_and_declines_the_rest() {
        let accepted = [
            "0",
            "-0",
            "-0.5e+10",
            "1E5",
            "12.50",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a\"b\\c\/d\b\f\n\r\t\u00e9\uD800""#,
            "[]",
            " [ 1 , [ ] , { } ] ",
            r#"{"a":{"b":[1,{"c":null}]},"a":2}"#,
            "\"é€𝄞\"",
        ];
        for text in accepted {
            assert!(serde_accepts(text), "{text}");
            let span = skim_accepts(text).unwrap_or_else(|| panic!("declined {text}"));
            assert_eq!(&text[span], text.trim(), "{text}");
        }
        let refused = [
            "",
            "01",
            "-",
            "1.",
            "1e",
            "1e+",
            ".5",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{a:1}"#,
            r#"{"a":1 "b":2}"#,
            "[1 2]",
            "\"a",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\\u12\"",
            "\"a\u{1}b\"",
            "[",
            "{",
            "}",
            "1 2",
            "NaN",
        ];
        for text in refused {
            assert!(!serde_accepts(text), "serde_json accepts {text}");
            assert_eq!(skim_accepts(text), None, "{text}");
        }
    }

    proptest! {
        /// Eight bytes at a time finds what one byte at a time finds.
        #[test]
        fn special_bytes_are_found_as_one_by_one(
            bytes in prop::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x21, 0x20u8..=0xff, any::<u8>()], 0..40),
            from in 0usize..41,
        ) {
            let expected = bytes
                .get(from..)
                .and_then(|rest| rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20))
                .map(|i| from + i);
            prop_assert_eq!(special_at(&bytes, from), expected);
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_declined() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(skim_accepts(&deep(MAX_DEPTH as usize)).is_some());
        assert!(skim_accepts(&deep(MAX_DEPTH as usize + 1)).is_none());
    }

    #[test]
    fn a_plain_string_is_one_without_escapes() {
        let mut skim = Skim::new(r#""key":1"#);
        assert_eq!(skim.plain_string(), Some(1..4));
        assert!(skim.eat(b':'));
        assert_eq!(Skim::new(r#""k\"ey""#).plain_string(), None);
        assert_eq!(Skim::new("\"k\u{1f}\"").plain_string(), None);
        assert_eq!(Skim::new("\"open").plain_string(), None);
        assert_eq!(Skim::new("key").plain_string(), None);
    }

    /// JSON-like text: valid values, and their bytes cut, repeated or swapped.
    fn jsonish() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
            "[a-z\\\\\"/é\u{1}\u{1f}-\u{20}]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            "[-+.0-9eE]{1,6}",
        ];
        let value = leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z\"\\\\]{0,4}", inner), 0..5).prop_map(|v| {
                    let members: Vec<String> = v
                        .into_iter()
                        .map(|(k, v)| format!("{}: {v}", serde_json::to_string(&k).unwrap()))
                        .collect();
                    format!("{{ {} }}", members.join(" ,"))
                }),
            ]
        });
        (value, any::<u8>(), any::<prop::sample::Index>(), 0..4u8).prop_map(
            |(text, byte, at, edit)| {
                let mut bytes = text.into_bytes();
                let i = at.index(bytes.len() + 1);
                match edit {
                    0 => {}
                    1 => bytes.truncate(i),
                    2 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
                String::from_utf8_lossy(&bytes).into_owned()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// A skim that succeeds agrees with serde_json, which accepts the text too, and the
        /// span is the value's (the text without the whitespace around it).
        #[test]
        fn a_skim_never_accepts_what_serde_json_refuses(text in jsonish()) {
            if let Some(span) = skim_accepts(&text) {
                prop_assert!(serde_accepts(&text), "skimmed {text:?}");
                prop_assert_eq!(&text[span], text.trim_matches([' ', '\t', '\n', '\r']));
            } else {
                // Within the depth limit, serde_json refuses every text the skim refuses.
                prop_assert!(!serde_accepts(&text), "declined {text:?}");
            }
        }
    }
}
