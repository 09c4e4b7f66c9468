//! The generator's WebSocket client once the HTTP upgrade is done (tungstenite does that).
//!
//! The generator must read frames far faster than the servers it measures write them, on a
//! core it shares with Redis, or its own lag becomes the latency it reports. So a read here
//! goes into one buffer shared by all the connections of a runtime thread (a connection keeps
//! only the start of a frame that a read cut, usually nothing), and every message completed by
//! that read is handed to the caller in place, inside the same poll: no copy, no allocation,
//! no message queue, and a short read tells tokio that the socket is drained, so there is no
//! second `recv` to learn it. Pings are answered, a close is echoed, fragmented messages are
//! put together; anything else a server may not send fails the connection.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::wsframe::{self, Refusal};

/// The largest message accepted: a broken server must not exhaust the generator.
const MAX_MESSAGE: usize = 64 << 20;

thread_local! {
    /// The buffer every read of this thread goes into (grown, never shrunk; a runtime thread
    /// polls one connection at a time and no borrow outlives a poll).
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One message from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// A client connection after the upgrade.
#[derive(Debug)]
pub(crate) struct WsClient {
    stream: TcpStream,
    /// Bytes read to read at most per `recv`.
    read_size: usize,
    /// The start of a frame the last read cut.
    partial: Vec<u8>,
    /// The opcode and the payload so far of a fragmented message.
    fragmented: Option<(u8, Vec<u8>)>,
    /// Frames owed to the server (pongs, the close echo), written after the read.
    replies: Vec<u8>,
    /// xorshift32 state for the masking keys.
    mask_state: u32,
}

impl WsClient {
    /// Wraps an upgraded stream; `seed` varies the masking keys between connections.
    pub(crate) fn new(stream: TcpStream, read_size: usize, seed: u64) -> Self {
        Self {
            stream,
            read_size,
            partial: Vec::new(),
            fragmented: None,
            replies: Vec::new(),
            mask_state: (seed as u32 ^ (seed >> 32) as u32) | 1,
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_le_bytes()
    }

    /// Sends `texts` as text messages, in one write.
    pub(crate) async fn send_texts<T: AsRef<str>>(
        &mut self,
        texts: impl IntoIterator<Item = T>,
    ) -> io::Result<()> {
        let mut out = Vec::new();
        for text in texts {
            let mask = self.next_mask();
            wsframe::encode_masked(wsframe::TEXT, text.as_ref().as_bytes(), mask, &mut out);
        }
        self.stream.write_all(&out).await
    }

    /// Waits for bytes, reads once, and hands every message they complete to `on_message`, in
    /// order. `Ok(false)` when the server closed the connection (a close frame or the end of
    /// the stream), after the messages before the close.
    pub(crate) async fn read(
        &mut self,
        mut on_message: impl FnMut(Message<'_>),
    ) -> io::Result<bool> {
        let open = poll_fn(|cx| self.poll_read_messages(cx, &mut on_message)).await;
        if !self.replies.is_empty() {
            let replies = std::mem::take(&mut self.replies);
            let written = self.stream.write_all(&replies).await;
            // After a close the echo is a courtesy: the server may be gone already.
            if matches!(open, Ok(true)) {
                written?;
            }
        }
        open
    }

    fn poll_read_messages(
        &mut self,
        cx: &mut Context<'_>,
        on_message: &mut impl FnMut(Message<'_>),
    ) -> Poll<io::Result<bool>> {
        READ_BUFFER.with_borrow_mut(|buf| {
            let carried = self.partial.len();
            let end = carried + self.read_size;
            if buf.len() < end {
                buf.resize(end, 0);
            }
            let mut read_buf = ReadBuf::new(&mut buf[carried..end]);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read_buf))?;
            let read = read_buf.filled().len();
            if read == 0 {
                return Poll::Ready(Ok(false));
            }
            buf[..carried].copy_from_slice(&self.partial);
            self.partial.clear();
            Poll::Ready(self.take_messages(&buf[..carried + read], on_message))
        })
    }

    /// Hands over the messages `bytes` completes and keeps the start of a cut frame.
    fn take_messages(
        &mut self,
        bytes: &[u8],
        on_message: &mut impl FnMut(Message<'_>),
    ) -> io::Result<bool> {
        let mut at = 0;
        while let Some(header) = wsframe::header(&bytes[at..], MAX_MESSAGE).map_err(refused)? {
            if header.mask.is_some() {
                return Err(invalid("a server frame is masked"));
            }
            let Some(payload) = bytes[at..].get(header.payload_at..header.frame_len()) else {
                break;
            };
            at += header.frame_len();
            match (header.opcode, header.fin, self.fragmented.as_mut()) {
                (wsframe::PING, ..) => {
                    let mask = self.next_mask();
                    wsframe::encode_masked(wsframe::PONG, payload, mask, &mut self.replies);
                }
                (wsframe::PONG, ..) => {}
                (wsframe::CLOSE, ..) => {
                    let mask = self.next_mask();
                    let code = &payload[..payload.len().min(2)];
                    wsframe::encode_masked(wsframe::CLOSE, code, mask, &mut self.replies);
                    return Ok(false);
                }
                (opcode @ (wsframe::TEXT | wsframe::BINARY), true, None) => {
                    hand_over(opcode, payload, on_message)?;
                }
                (opcode @ (wsframe::TEXT | wsframe::BINARY), false, None) => {
                    self.fragmented = Some((opcode, payload.to_vec()));
                }
                (wsframe::CONTINUATION, fin, Some((_, message))) => {
                    if message.len() + payload.len() > MAX_MESSAGE {
                        return Err(invalid("a fragmented message is too large"));
                    }
                    message.extend_from_slice(payload);
                    if fin {
                        let (opcode, message) = self.fragmented.take().expect("matched above");
                        hand_over(opcode, &message, on_message)?;
                    }
                }
                _ => return Err(invalid("an unexpected opcode")),
            }
        }
        self.partial.extend_from_slice(&bytes[at..]);
        Ok(true)
    }

    /// Reads until `step` says it is done, handing it each text message (binary ones are
    /// ignored); fails when `step` does or the server closes first.
    pub(crate) async fn read_texts_until(
        &mut self,
        mut step: impl FnMut(&str) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut outcome = Ok(false);
        loop {
            let open = self
                .read(|message| {
                    if let (Message::Text(text), Ok(false)) = (message, &outcome) {
                        outcome = step(text);
                    }
                })
                .await?;
            match outcome {
                Ok(true) => return Ok(()),
                Err(e) => return Err(e),
                Ok(false) if !open => bail!("closed by the server"),
                Ok(false) => {}
            }
        }
    }

    /// Reads what the server has sent, without waiting for more than `idle` between reads nor
    /// `budget` in all: `true` when the server has closed the connection or sent it a text
    /// message for which `is_error` holds (i.e. cut it off).
    pub(crate) async fn was_cut_off(
        mut self,
        idle: Duration,
        budget: Duration,
        is_error: impl Fn(&str) -> bool,
    ) -> bool {
        let read_all = async {
            loop {
                let mut error = false;
                let read = self.read(|message| {
                    error |= matches!(message, Message::Text(text) if is_error(text));
                });
                match tokio::time::timeout(idle, read).await {
                    Err(_) => return false,
                    Ok(Ok(false) | Err(_)) => return true,
                    Ok(Ok(true)) if error => return true,
                    Ok(Ok(true)) => {}
                }
            }
        };
        tokio::time::timeout(budget, read_all)
            .await
            .unwrap_or(false)
    }
}

fn hand_over(
    opcode: u8,
    payload: &[u8],
    on_message: &mut impl FnMut(Message<'_>),
) -> io::Result<()> {
    if opcode == wsframe::TEXT {
        let text =
            std::str::from_utf8(payload).map_err(|_| invalid("a text message is not UTF-8"))?;
        on_message(Message::Text(text));
    } else {
        on_message(Message::Binary(payload));
    }
    Ok(())
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn refused(Refusal::Protocol(why): Refusal) -> io::Error {
    invalid(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A client whose server end is `server`, reading `read_size` bytes at a time.
    async fn pair(read_size: usize) -> (WsClient, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            WsClient::new(client.unwrap(), read_size, 7),
            server.unwrap().0,
        )
    }

    /// Reads until `count` messages came (or the server closed), as owned values.
    async fn collect(client: &mut WsClient, count: usize) -> (Vec<Result<String, Vec<u8>>>, bool) {
        let mut got = Vec::new();
        loop {
            let open = client
                .read(|m| {
                    got.push(match m {
                        Message::Text(t) => Ok(t.to_owned()),
                        Message::Binary(b) => Err(b.to_vec()),
                    })
                })
                .await
                .unwrap();
            if !open || got.len() >= count {
                return (got, open);
            }
        }
    }

    #[tokio::test]
    async fn messages_cut_anywhere_come_out_whole_and_in_order() {
        let mut bytes = Vec::new();
        let texts: Vec<String> = (0..40).map(|i| "x".repeat(i * 37)).collect();
        for text in &texts {
            wsframe::encode(wsframe::TEXT, text.as_bytes(), &mut bytes);
        }
        wsframe::encode(wsframe::BINARY, &[0, 255], &mut bytes);
        // Reads of 7 bytes cut every header and payload somewhere.
        for read_size in [7, 64, 1 << 16] {
            let (mut client, mut server) = pair(read_size).await;
            server.write_all(&bytes).await.unwrap();
            let (got, open) = collect(&mut client, texts.len() + 1).await;
            assert!(open);
            let mut want: Vec<_> = texts.iter().cloned().map(Ok).collect();
            want.push(Err(vec![0, 255]));
            assert_eq!(got, want, "read size {read_size}");
            assert!(client.partial.is_empty());
        }
    }

    #[tokio::test]
    async fn fragments_are_joined_and_pings_answered_between_them() {
        let (mut client, mut server) = pair(1 << 16).await;
        let mut bytes = vec![0x01, 0x02, b'a', b'b']; // text, not final
        wsframe::encode(wsframe::PING, b"hi", &mut bytes); // a control frame in between
        bytes.extend_from_slice(&[0x00, 0x01, b'c']); // continuation, not final
        bytes.extend_from_slice(&[0x80, 0x01, b'd']); // continuation, final
        server.write_all(&bytes).await.unwrap();
        let (got, _) = collect(&mut client, 1).await;
        assert_eq!(got, vec![Ok("abcd".to_owned())]);
        let mut pong = [0u8; 8];
        server.read_exact(&mut pong).await.unwrap();
        let (frame, used) = wsframe::decode(&pong, 125).unwrap().unwrap();
        assert_eq!(
            (frame.opcode, frame.payload, used),
            (wsframe::PONG, b"hi".to_vec(), 8)
        );
    }

    #[tokio::test]
    async fn a_close_ends_the_reading_after_the_messages_before_it() {
        let (mut client, mut server) = pair(1 << 16).await;
        let mut bytes = Vec::new();
        wsframe::encode(wsframe::TEXT, b"last", &mut bytes);
        wsframe::encode(wsframe::CLOSE, &[0x03, 0xE8, b'b', b'y', b'e'], &mut bytes);
        wsframe::encode(wsframe::TEXT, b"after", &mut bytes);
        server.write_all(&bytes).await.unwrap();
        let (got, open) = collect(&mut client, 3).await;
        assert_eq!((got, open), (vec![Ok("last".to_owned())], false));
        let mut echo = [0u8; 8];
        server.read_exact(&mut echo).await.unwrap();
        let (frame, _) = wsframe::decode(&echo, 125).unwrap().unwrap();
        assert_eq!(
            (frame.opcode, frame.payload),
            (wsframe::CLOSE, vec![0x03, 0xE8])
        );
        // The end of the stream also ends it.
        let (mut client, server) = pair(1 << 16).await;
        drop(server);
        assert!(!client.read(|_| panic!("no message")).await.unwrap());
    }

    #[tokio::test]
    async fn what_a_server_may_not_send_fails_the_connection() {
        let masked = {
            let mut out = Vec::new();
            wsframe::encode_masked(wsframe::TEXT, b"x", [1, 2, 3, 4], &mut out);
            out
        };
        let cases: [&[u8]; 5] = [
            &masked,
            &[0x81, 0x02, 0xC3, 0x28],                // not UTF-8
            &[0x80, 0x01, b'x'],                      // a continuation with nothing to continue
            &[0x83, 0x00],                            // a reserved opcode
            &[0x81, 0x7F, 0, 0, 0, 0, 0x10, 0, 0, 0], // 256 MiB
        ];
        for bytes in cases {
            let (mut client, mut server) = pair(1 << 16).await;
            server.write_all(bytes).await.unwrap();
            let read = client.read(|_| panic!("no message")).await;
            assert_eq!(
                read.unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "{bytes:?}"
            );
        }
    }

    #[tokio::test]
    async fn sent_texts_are_masked_frames() {
        let (mut client, mut server) = pair(1 << 16).await;
        client.send_texts(["one", "two"]).await.unwrap();
        let mut bytes = vec![0u8; 2 * (2 + 4 + 3)];
        server.read_exact(&mut bytes).await.unwrap();
        let (first, used) = wsframe::decode(&bytes, 125).unwrap().unwrap();
        let (second, _) = wsframe::decode(&bytes[used..], 125).unwrap().unwrap();
        assert_eq!(
            (first.payload, second.payload),
            (b"one".to_vec(), b"two".to_vec())
        );
        assert_ne!(
            bytes[2..6],
            bytes[11..15],
            "each frame has its own masking key"
        );
    }
}
