//! The WebSocket handshake's subprotocol choice.
//!
//! The protocol defines no subprotocol, but browsers let pages offer some
//! (`new WebSocket(url, ['x'])`) and refuse the connection when the server selects none
//! of those offered. parse-server's `ws` server (8.x, without a `handleProtocols` hook)
//! selects the **first** offered one, and refuses the handshake (HTTP 400) when the
//! `Sec-WebSocket-Protocol` header is not a comma-separated list of distinct tokens;
//! [`select_subprotocol`] does the same.

/// The `Sec-WebSocket-Protocol` header is not a list of distinct tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid Sec-WebSocket-Protocol header")]
pub struct InvalidSubprotocols;

/// The subprotocol to echo for the `Sec-WebSocket-Protocol` request header (several
/// header lines joined with `", "`, as HTTP servers combine them): the first one offered.
///
/// The list is parsed as `ws` parses it: RFC 7230 tokens separated by commas, optional
/// spaces or tabs around each token (not before the first nor after the last), no empty
/// or repeated entry.
pub fn select_subprotocol(header: &str) -> Result<&str, InvalidSubprotocols> {
    let mut offered: Vec<&str> = Vec::new();
    let items: Vec<&str> = header.split(',').collect();
    for (i, item) in items.iter().enumerate() {
        let token = item.trim_matches([' ', '\t']);
        // `ws` allows blanks around tokens except before the first and after the last.
        let blank_edge = (i == 0 && item.starts_with([' ', '\t']))
            || (i + 1 == items.len() && item.ends_with([' ', '\t']));
        if token.is_empty() || blank_edge || !token.bytes().all(is_token_byte) {
            return Err(InvalidSubprotocols);
        }
        if offered.contains(&token) {
            return Err(InvalidSubprotocols);
        }
        offered.push(token);
    }
    offered.first().copied().ok_or(InvalidSubprotocols)
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_the_first_offered_subprotocol() {
        assert_eq!(select_subprotocol("x"), Ok("x"));
        assert_eq!(select_subprotocol("x, y"), Ok("x"));
        assert_eq!(select_subprotocol("foo,bar"), Ok("foo"));
        assert_eq!(select_subprotocol("a \t,\t b"), Ok("a"));
        assert_eq!(select_subprotocol("graphql-ws"), Ok("graphql-ws"));
    }

    #[test]
    fn refuses_what_ws_refuses() {
        for header in [
            "", " x", "x ", "a, b ", "x,,y", "x,", ",x", "x y", "x, x", "a/b", "\"x\"", "x;y", "é",
        ] {
            assert_eq!(
                select_subprotocol(header),
                Err(InvalidSubprotocols),
                "{header:?}"
            );
        }
    }
}
