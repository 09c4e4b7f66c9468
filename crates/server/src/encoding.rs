//! Text encodings the server needs, on the `percent-encoding` and `base64` crates: one
//! definition of each character set, so every URL is built the same way.

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What JavaScript's `encodeURIComponent` leaves as is: letters, digits and `-_.!~*'()`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// RFC 3986's unreserved characters: letters, digits and `-._~`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// JavaScript's `encodeURIComponent` (parse-server builds File URLs with it).
pub fn encode_uri_component(text: &str) -> String {
    utf8_percent_encode(text, URI_COMPONENT).to_string()
}

/// A URL path segment (class names in REST paths).
pub fn encode_path_segment(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// Decodes `%XX` escapes of a path segment; invalid UTF-8 is replaced, a malformed escape
/// kept as is.
pub fn decode_path_segment(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Standard base64 with padding (Parse `Bytes`).
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(encode_uri_component("a b/ü.txt"), "a%20b%2F%C3%BC.txt");
        assert_eq!(encode_uri_component("Abc-_.!~*'()"), "Abc-_.!~*'()");
        assert_eq!(encode_path_segment("_User"), "_User");
        assert_eq!(encode_path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(decode_path_segment("r%3Aabc%zz"), "r:abc%zz");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
