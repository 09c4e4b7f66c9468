//! `$regex` with JavaScript semantics on a linear-time engine.
//!
//! Parse clients write JavaScript regular expressions (the reference evaluates them with
//! `RegExp`), and the Parse SDKs quote literal text with PCRE's `\Q…\E`. This module turns
//! such a pattern into a pattern for the `regex` crate, whose automata run in time linear
//! in the input: no pattern can hang the server (the reference loops forever on `\Q`
//! without `\E`, and is exposed to catastrophic backtracking).
//!
//! Translation: `\Q…\E` becomes escaped literal text (`\Q` without `\E` quotes to the end,
//! as in PCRE); JavaScript's ASCII classes (`\d`, `\w`, `\b`) keep their ASCII meaning; `.`
//! excludes the four JavaScript line terminators unless the `s` flag is set; a `{` that is
//! not a quantifier is a literal, as in JavaScript; characters that are operators only
//! inside Rust classes (`[`, `&&`, `--`, `~~`) are escaped. Lookaround and backreferences
//! have no linear-time implementation and are rejected with a clear error (code 102).

use regex::{Regex, RegexBuilder};

/// Longest pattern accepted, in bytes.
pub(crate) const MAX_PATTERN_LEN: usize = 16 * 1024;
/// Bound on the compiled program and lazy DFA of one pattern.
const SIZE_LIMIT: usize = 1 << 20;

/// Compiles `pattern` with JavaScript `flags` (`i`, `m`, `s`, and `u`, which changes
/// nothing for an engine that always matches Unicode code points).
pub(crate) fn compile(pattern: &str, flags: &str) -> Result<Regex, String> {
    let mut case_insensitive = false;
    let mut multi_line = false;
    let mut dot_all = false;
    let mut unicode = false;
    for flag in flags.chars() {
        let seen = match flag {
            'i' => std::mem::replace(&mut case_insensitive, true),
            'm' => std::mem::replace(&mut multi_line, true),
            's' => std::mem::replace(&mut dot_all, true),
            // JavaScript's Unicode mode: patterns already match code points here.
            'u' => std::mem::replace(&mut unicode, true),
            _ => true,
        };
        if seen {
            return Err(format!(
                "Invalid regular expression: Invalid flags supplied to RegExp constructor '{flags}'"
            ));
        }
    }
    let js = expand_quotes(pattern);
    let fail = |reason: &str| {
        format!("Invalid regular expression: Invalid regular expression: /{js}/{flags}: {reason}")
    };
    if js.len() > MAX_PATTERN_LEN {
        return Err(fail("Regular expression too large"));
    }
    let translated = translate(&js, dot_all).map_err(fail)?;
    if let Err(err) = regex_syntax::ast::parse::Parser::new().parse(&translated) {
        return Err(fail(&describe(err.kind())));
    }
    RegexBuilder::new(&translated)
        .case_insensitive(case_insensitive)
        .multi_line(multi_line)
        .dot_matches_new_line(dot_all)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .nest_limit(128)
        .build()
        .map_err(|err| match err {
            regex::Error::CompiledTooBig(_) => fail("Regular expression too large"),
            other => fail(
                other
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid pattern")
                    .trim_start_matches("error: "),
            ),
        })
}

/// V8's wording for the errors users hit most.
fn describe(kind: &regex_syntax::ast::ErrorKind) -> String {
    use regex_syntax::ast::ErrorKind as K;
    match kind {
        K::GroupUnclosed => "Unterminated group".into(),
        K::GroupUnopened => "Unmatched ')'".into(),
        K::ClassUnclosed => "Unterminated character class".into(),
        K::RepetitionMissing => "Nothing to repeat".into(),
        K::EscapeUnexpectedEof => "\\ at end of pattern".into(),
        K::RepetitionCountInvalid => "numbers out of order in {} quantifier".into(),
        K::ClassRangeInvalid => "Range out of order in character class".into(),
        K::NestLimitExceeded(_) => "Regular expression too large".into(),
        K::GroupNameDuplicate { .. } => "Duplicate capture group name".into(),
        other => other.to_string(),
    }
}

/// Replaces every `\Q…\E` section by the JavaScript-escaped literal text it quotes; a `\Q`
/// without `\E` quotes the rest of the pattern.
pub(crate) fn expand_quotes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Q') => loop {
                match chars.next() {
                    None => break,
                    Some('\\') if chars.peek() == Some(&'E') => {
                        chars.next();
                        break;
                    }
                    Some(ch) => {
                        if "\\^$.*+?()[]{}|/-".contains(ch) {
                            out.push('\\');
                        }
                        out.push(ch);
                    }
                }
            },
            // A stray `\E` closes nothing and means nothing (PCRE ignores it).
            Some('E') => {}
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

const DOT: &str = r"[^\n\r\x{2028}\x{2029}]";

/// Translates a JavaScript (non-`u`) pattern into `regex` crate syntax.
fn translate(js: &str, dot_all: bool) -> Result<String, &'static str> {
    let chars: Vec<char> = js.chars().collect();
    let mut out = String::with_capacity(js.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let next = *chars.get(i + 1).ok_or("\\ at end of pattern")?;
                i += 2;
                match next {
                    'd' => out.push_str("[0-9]"),
                    'D' => out.push_str("[^0-9]"),
                    'w' => out.push_str("[0-9A-Za-z_]"),
                    'W' => out.push_str("[^0-9A-Za-z_]"),
                    'b' => out.push_str(r"(?-u:\b)"),
                    'B' => out.push_str(r"(?-u:\B)"),
                    _ => i = escape(&chars, i, next, &mut out, false)?,
                }
            }
            '.' => {
                out.push_str(if dot_all { "." } else { DOT });
                i += 1;
            }
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    match (chars.get(i + 2), chars.get(i + 3)) {
                        (Some(':'), _) => out.push_str("(?:"),
                        (Some('=' | '!'), _) | (Some('<'), Some('=' | '!')) => {
                            return Err("lookaround assertions are not supported");
                        }
                        (Some('<'), _) => out.push_str("(?<"),
                        _ => return Err("Invalid group"),
                    }
                    i += 3;
                } else {
                    out.push('(');
                    i += 1;
                }
            }
            '{' => match quantifier_len(&chars[i..]) {
                Some(len) => {
                    out.extend(&chars[i..i + len]);
                    i += len;
                }
                None => {
                    out.push_str("\\{");
                    i += 1;
                }
            },
            '}' => {
                out.push_str("\\}");
                i += 1;
            }
            '[' => i = class(&chars, i, &mut out)?,
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Length of a `{n}`, `{n,}` or `{n,m}` quantifier at the start of `rest`.
fn quantifier_len(rest: &[char]) -> Option<usize> {
    let mut i = 1;
    while rest.get(i).is_some_and(char::is_ascii_digit) {
        i += 1;
    }
    if i == 1 {
        return None;
    }
    if rest.get(i) == Some(&',') {
        i += 1;
        while rest.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
    }
    (rest.get(i) == Some(&'}')).then_some(i + 1)
}

/// Translates the escape `\next` (whose successor is at `i`); returns the new position.
fn escape(
    chars: &[char],
    mut i: usize,
    next: char,
    out: &mut String,
    in_class: bool,
) -> Result<usize, &'static str> {
    match next {
        '1'..='9' | 'k' => return Err("backreferences are not supported"),
        '0' if !chars.get(i).is_some_and(char::is_ascii_digit) => out.push_str(r"\x00"),
        't' | 'n' | 'r' | 'f' | 'v' | 's' | 'S' => {
            out.push('\\');
            out.push(next);
        }
        'c' => match chars.get(i) {
            Some(letter) if letter.is_ascii_alphabetic() => {
                push_literal(out, char::from((*letter as u8) % 32), in_class);
                i += 1;
            }
            _ => {
                push_literal(out, '\\', in_class);
                out.push('c');
            }
        },
        'x' => match hex(chars, i, 2) {
            Some(ch) => {
                push_literal(out, ch, in_class);
                i += 2;
            }
            None => out.push('x'),
        },
        'u' => match hex(chars, i, 4) {
            Some(ch) => {
                push_literal(out, ch, in_class);
                i += 4;
            }
            None => out.push('u'),
        },
        other => push_literal(out, other, in_class),
    }
    Ok(i)
}

fn hex(chars: &[char], i: usize, count: usize) -> Option<char> {
    let digits: String = chars.get(i..i + count)?.iter().collect();
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    // Lone surrogates cannot appear in a Rust string; map them to U+FFFD like a lossy
    // UTF-8 decode would.
    char::from_u32(u32::from_str_radix(&digits, 16).ok()?).or(Some('\u{FFFD}'))
}

/// Emits `ch` as a literal in either context.
fn push_literal(out: &mut String, ch: char, in_class: bool) {
    const META: &str = "\\.+*?()|[]{}^$#&-~";
    if ch.is_control() || ch == '<' || ch == '>' {
        out.push_str(&format!(r"\x{{{:X}}}", u32::from(ch)));
    } else if ch.is_ascii_punctuation() && (in_class || META.contains(ch)) {
        out.push('\\');
        out.push(ch);
    } else {
        out.push(ch);
    }
}

/// Translates a character class starting at `chars[start] == '['`; returns the position
/// after its closing `]`.
fn class(chars: &[char], start: usize, out: &mut String) -> Result<usize, &'static str> {
    let mut i = start + 1;
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    // JavaScript: `[]` matches nothing, `[^]` matches any character.
    if chars.get(i) == Some(&']') {
        out.push_str(if negated {
            r"[\x{0}-\x{10FFFF}]"
        } else {
            r"[^\x{0}-\x{10FFFF}]"
        });
        return Ok(i + 1);
    }
    out.push('[');
    if negated {
        out.push('^');
    }
    let mut previous_dash = false;
    loop {
        let c = *chars.get(i).ok_or("Unterminated character class")?;
        i += 1;
        match c {
            ']' => {
                out.push(']');
                return Ok(i);
            }
            '\\' => {
                let next = *chars.get(i).ok_or("\\ at end of pattern")?;
                i += 1;
                match next {
                    'd' => out.push_str("0-9"),
                    'w' => out.push_str("0-9A-Za-z_"),
                    'D' => out.push_str(r"\D"),
                    'W' => out.push_str(r"\W"),
                    'b' => out.push_str(r"\x08"),
                    _ => i = escape(chars, i, next, out, true)?,
                }
            }
            '[' | '&' | '~' | '^' => {
                out.push('\\');
                out.push(c);
            }
            '-' if previous_dash => out.push_str(r"\-"),
            _ => out.push(c),
        }
        previous_dash = c == '-';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, flags: &str, text: &str) -> bool {
        compile(pattern, flags)
            .unwrap_or_else(|e| panic!("{pattern}: {e}"))
            .is_match(text)
    }

    #[test]
    fn quotes_are_literal() {
        assert!(matches(r"^\QPlay\E", "", "Player 1"));
        assert!(!matches(r"^\QPlay\E", "", "A Player"));
        assert!(matches(r"\Qd-7\E", "", "Android-7"));
        assert!(matches(r"\Qa.b\E$", "", "xa.b"));
        assert!(!matches(r"\Qa.b\E$", "", "xaxb"));
        // `\Q` without `\E`: literal to the end (the reference hangs forever here).
        assert!(matches(r"\Qabc", "", "xxabc"));
        assert!(matches(r"\Q(a|b)*", "", "(a|b)*"));
        assert!(!matches(r"\Q(a|b)*", "", "ab"));
        // `\E` ends a quoted section; a later `\Q` starts a new one.
        assert!(matches(r"^\Qa\E.\Qc\E$", "", "abc"));
    }

    #[test]
    fn javascript_semantics() {
        assert!(matches("a", "i", "A"));
        assert!(matches(r"^\d+$", "", "123"));
        assert!(!matches(r"^\d+$", "", "١٢٣"));
        assert!(matches(r"^\w+$", "", "abc_1"));
        assert!(!matches(r"^\w+$", "", "é"));
        assert!(!matches("a.b", "", "a\rb"));
        assert!(matches("a.b", "s", "a\nb"));
        assert!(matches("^b", "m", "a\nb"));
        assert!(!matches("^b", "", "a\nb"));
        assert!(matches("a{", "", "a{"));
        assert!(matches("a{1,2}$", "", "aa"));
        assert!(matches("x{a}", "", "x{a}"));
        assert!(matches(r"[[]", "", "["));
        assert!(matches("[a&&b]", "", "&"));
        assert!(matches(r"\/path", "", "/path"));
        assert!(matches(r"a\<b", "", "a<b"));
        assert!(!matches("[]", "", "a"));
        assert!(matches("[^]", "", "\n"));
        assert!(matches(r"\x41\u0042", "", "AB"));
        assert!(matches(r"[\d-]+$", "", "12-3"));
        assert!(matches("(?<year>[0-9]{4})", "", "2024"));
    }

    #[test]
    fn errors_read_like_v8() {
        assert_eq!(
            compile("(", "").unwrap_err(),
            "Invalid regular expression: Invalid regular expression: /(/: Unterminated group"
        );
        assert_eq!(
            compile("^A$", "x").unwrap_err(),
            "Invalid regular expression: Invalid flags supplied to RegExp constructor 'x'"
        );
        assert!(compile("a", "ii").is_err());
        assert!(compile("a", "g").is_err());
        assert!(
            compile("[a", "")
                .unwrap_err()
                .ends_with("Unterminated character class")
        );
        assert!(compile("*", "").unwrap_err().ends_with("Nothing to repeat"));
        assert!(compile("a(?=b)", "").unwrap_err().contains("lookaround"));
        assert!(
            compile(r"(a)\1", "")
                .unwrap_err()
                .contains("backreferences")
        );
        assert!(
            compile("a{1000}{1000}{1000}", "")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn catastrophic_patterns_are_harmless() {
        let re = compile("^(a+)+$", "").unwrap();
        let text = format!("{}!", "a".repeat(100_000));
        // The `regex` crate's automata are linear; a backtracking engine would never return.
        assert!(!re.is_match(&text));
    }
}
