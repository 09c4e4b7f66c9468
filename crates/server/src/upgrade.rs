//! The WebSocket handshake of the client port, read and answered on the bare socket.
//!
//! Almost every connection to the client port is a WebSocket: hyper's HTTP/1 machinery
//! (its connection state, header map, request and response, the upgrade hand-off) costs
//! more CPU per connection than the rest of a connect. [`parse`] reads a request head and
//! recognizes the one request this module answers itself: a complete `GET` upgrade to
//! WebSocket (version 13, a key, an acceptable subprotocol list) with no body.
//! Everything else — other methods and paths, malformed or oversized heads, refused
//! handshakes, HTTP/1.0 — is left to hyper ([`crate::listener`]), which then sees the same
//! bytes and answers exactly as it does for a connection it reads from the start.

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Headers parsed per request head; a head with more is left to hyper.
const MAX_HEADERS: usize = 64;

/// What a request head read so far is.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Not complete yet: read more.
    Partial,
    /// A WebSocket upgrade answered here.
    Upgrade(Upgrade),
    /// Anything else: hyper serves the connection.
    Other,
}

/// A WebSocket upgrade request, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The request head's length: what follows it is the client's first frames.
    pub head_len: usize,
    /// `Sec-WebSocket-Accept`.
    accept: String,
    /// The subprotocol selected (the first one offered), if any was offered.
    subprotocol: Option<String>,
}

impl Upgrade {
    /// The `101 Switching Protocols` response.
    pub fn response(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ",
        );
        out.extend_from_slice(self.accept.as_bytes());
        if let Some(subprotocol) = &self.subprotocol {
            out.extend_from_slice(b"\r\nsec-websocket-protocol: ");
            out.extend_from_slice(subprotocol.as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out
    }
}

/// Reads the request head at the start of `buffer`.
pub fn parse(buffer: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return Head::Other;
    }
    let headers = request.headers;
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    // A comma-separated list of tokens, over every line of the header.
    let has_token = |name: &'static str, token: &str| {
        values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    let single = |name: &'static str| {
        let mut found = values(name);
        match (found.next(), found.next()) {
            (Some(value), None) => Some(value),
            _ => None,
        }
    };
    let has_body =
        values("content-length").any(|v| v != b"0") || values("transfer-encoding").next().is_some();
    if has_body || !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return Head::Other;
    }
    let (Some(key), Some(b"13")) = (single("sec-websocket-key"), single("sec-websocket-version"))
    else {
        return Head::Other;
    };
    let mut offered = values("sec-websocket-protocol").peekable();
    let subprotocol = if offered.peek().is_none() {
        None
    } else {
        // Several lines are one list, as hyper's path joins them.
        let Ok(lines) = offered
            .map(std::str::from_utf8)
            .collect::<Result<Vec<&str>, _>>()
        else {
            return Head::Other;
        };
        match livequery_protocol::handshake::select_subprotocol(&lines.join(", ")) {
            Ok(chosen) => Some(chosen.to_owned()),
            Err(_) => return Head::Other,
        }
    };
    Head::Upgrade(Upgrade {
        head_len,
        accept: derive_accept_key(key),
        subprotocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn upgrade(head: &str) -> Upgrade {
        match parse(head.as_bytes()) {
            Head::Upgrade(upgrade) => upgrade,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn answers_the_rfc_example() {
        let head = request("");
        let upgrade = upgrade(&head);
        assert_eq!(upgrade.head_len, head.len());
        assert_eq!(
            String::from_utf8(upgrade.response()).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn bytes_behind_the_head_are_not_part_of_it() {
        let head = request("");
        let with_frame = format!("{head}\u{81}\u{5}hello");
        assert_eq!(upgrade(&with_frame).head_len, head.len());
    }

    #[test]
    fn selects_the_first_offered_subprotocol_over_every_line() {
        let upgrade = upgrade(&request(
            "Sec-WebSocket-Protocol: a, b\r\nSec-WebSocket-Protocol: c\r\n",
        ));
        let response = String::from_utf8(upgrade.response()).unwrap();
        assert!(
            response.ends_with("\r\nsec-websocket-protocol: a\r\n\r\n"),
            "{response}"
        );
    }

    #[test]
    fn tokens_are_matched_in_lists_and_case_insensitively() {
        let head = "GET / HTTP/1.1\r\nconnection: keep-alive, UPGRADE\r\nupgrade: WebSocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: abc\r\n\r\n";
        upgrade(head);
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        let head = request("");
        for end in 0..head.len() {
            assert_eq!(parse(&head.as_bytes()[..end]), Head::Partial, "{end}");
        }
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        let upgrade_head = request("");
        let cases = [
            upgrade_head.replacen("GET", "POST", 1),
            upgrade_head.replacen("HTTP/1.1", "HTTP/1.0", 1),
            upgrade_head.replacen("Upgrade: websocket", "Upgrade: h2c", 1),
            upgrade_head.replacen("Connection: Upgrade", "Connection: keep-alive", 1),
            upgrade_head.replacen("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 1),
            upgrade_head.replacen(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "", 1),
            request(&format!("Sec-WebSocket-Key: {KEY}\r\n")),
            request("Sec-WebSocket-Version: 13\r\n"),
            request("Sec-WebSocket-Protocol: a, a\r\n"),
            request("Sec-WebSocket-Protocol: \r\n"),
            request("Sec-WebSocket-Protocol: \u{e9}\r\n"),
            request("Content-Length: 5\r\n"),
            request("Transfer-Encoding: chunked\r\n"),
            "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "GET / HTTP/1.1\r\nbad header\r\n\r\n".to_owned(),
            "NOT HTTP AT ALL\r\n\r\n".to_owned(),
            request(&"X-Many: 1\r\n".repeat(MAX_HEADERS)),
        ];
        for head in cases {
            assert_eq!(parse(head.as_bytes()), Head::Other, "{head:?}");
        }
        // An empty body is no body.
        upgrade(&request("Content-Length: 0\r\n"));
    }
}
