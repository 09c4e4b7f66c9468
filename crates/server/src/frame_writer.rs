//! Writes a batch of pre-encoded text frames straight to a connection's socket.
//!
//! Each frame goes out as two slices, its WebSocket header and its shared bytes, many
//! frames per vectored write: no copy into a write buffer, no per-frame allocation, no
//! UTF-8 check (the frames are the server's own JSON). The connection task uses this
//! between tungstenite's operations on the same socket (tungstenite keeps reading, pings,
//! pongs and the close handshake), after flushing what tungstenite buffered, so the two
//! never interleave bytes inside a frame.
//!
//! A write can be interrupted (the caller stops polling it) and resumed where it stopped,
//! even in the middle of a slice; [`FrameWriter::stop_after_current`] lets a caller that
//! must end the connection finish the frame already on the wire, so the close handshake
//! that follows starts on a frame boundary.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use livequery_protocol::websocket_frame::{MAX_HEADER_LEN, text_frame_header};
use tokio::io::AsyncWrite;

/// Frames offered to one vectored write: two slices each, within the 1024 slices
/// (`IOV_MAX`) a `writev` accepts.
const FRAMES_PER_WRITE: usize = 256;

/// The progress of writing a batch of frames.
#[derive(Debug)]
pub struct FrameWriter<'a> {
    frames: &'a [Bytes],
    /// The first frame not completely written.
    next: usize,
    /// Bytes of frame `next` (header and payload together) already written.
    written: usize,
    /// Frames from this index on are not to be written.
    end: usize,
}

impl<'a> FrameWriter<'a> {
    /// Ready to write `frames`, in order; each must be valid UTF-8 (text frames).
    pub fn new(frames: &'a [Bytes]) -> Self {
        debug_assert!(
            frames
                .iter()
                .all(|frame| std::str::from_utf8(frame).is_ok()),
            "text frames must be UTF-8"
        );
        Self {
            frames,
            next: 0,
            written: 0,
            end: frames.len(),
        }
    }

    /// Whether every frame to write is written.
    pub fn is_done(&self) -> bool {
        self.next >= self.end
    }

    /// Gives up the frames not started yet, keeping the one partly written (if any) so that
    /// the socket is left on a frame boundary once it is done. Returns whether a frame is
    /// partly written.
    pub fn stop_after_current(&mut self) -> bool {
        let partly_written = self.written > 0;
        self.end = self.next + usize::from(partly_written);
        partly_written
    }

    /// Writes until every frame is written (then flushes `stream`), the socket would block,
    /// or it fails.
    pub fn poll_write<S>(
        &mut self,
        cx: &mut Context<'_>,
        mut stream: Pin<&mut S>,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + ?Sized,
    {
        while !self.is_done() {
            let window = self.next..self.end.min(self.next + FRAMES_PER_WRITE);
            let mut headers = [([0u8; MAX_HEADER_LEN], 0usize); FRAMES_PER_WRITE];
            for (header, frame) in headers.iter_mut().zip(&self.frames[window.clone()]) {
                *header = text_frame_header(frame.len());
            }
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            let mut used = 0;
            for (i, ((header, header_len), frame)) in
                headers.iter().zip(&self.frames[window]).enumerate()
            {
                let mut header = &header[..*header_len];
                let mut payload = &frame[..];
                if i == 0 {
                    // Resume where the previous write stopped.
                    let skip = self.written;
                    if skip < header.len() {
                        header = &header[skip..];
                    } else {
                        payload = &payload[skip - header.len()..];
                        header = &[];
                    }
                }
                for slice in [header, payload] {
                    if !slice.is_empty() {
                        slices[used] = IoSlice::new(slice);
                        used += 1;
                    }
                }
            }
            let n = ready!(stream.as_mut().poll_write_vectored(cx, &slices[..used]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        stream.poll_flush(cx)
    }

    /// Accounts for `n` more bytes written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let frame_len = self.frame_len(self.next);
            let left = frame_len - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.next += 1;
            self.written = 0;
        }
    }

    /// The length on the wire of frame `i`, header included.
    fn frame_len(&self, i: usize) -> usize {
        let payload = self.frames[i].len();
        text_frame_header(payload).1 + payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// A socket that takes at most `chunk` bytes per write and blocks every other call;
    /// it only looks at the first slice when `vectored` is false (as a stream without
    /// vectored writes does).
    struct Trickle {
        written: Vec<u8>,
        chunk: usize,
        vectored: bool,
        block_next: bool,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            assert!(slices.len() <= 1024, "more slices than IOV_MAX");
            self.calls += 1;
            if self.block_next {
                self.block_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.block_next = true;
            let mut budget = self.chunk;
            let slices = if self.vectored { slices } else { &slices[..1] };
            for slice in slices {
                let take = budget.min(slice.len());
                self.written.extend_from_slice(&slice[..take]);
                budget -= take;
                if budget == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.chunk - budget))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
    }

    fn trickle(chunk: usize, vectored: bool) -> Trickle {
        Trickle {
            written: Vec::new(),
            chunk,
            vectored,
            block_next: false,
            calls: 0,
        }
    }

    fn expected_wire(frames: &[Bytes]) -> Vec<u8> {
        let mut wire = Vec::new();
        for frame in frames {
            let (header, used) = text_frame_header(frame.len());
            wire.extend_from_slice(&header[..used]);
            wire.extend_from_slice(frame);
        }
        wire
    }

    fn frames(lengths: &[usize]) -> Vec<Bytes> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| Bytes::from(vec![b'a' + (i % 26) as u8; len]))
            .collect()
    }

    async fn write_all(frames: &[Bytes], socket: &mut Trickle) {
        let mut writer = FrameWriter::new(frames);
        poll_fn(|cx| writer.poll_write(cx, Pin::new(&mut *socket)))
            .await
            .unwrap();
        assert!(writer.is_done());
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_header_and_mid_payload() {
        let small = frames(&[0, 1, 125, 126, 300, 3]);
        let large = frames(&[0, 1, 125, 126, 300, 65_535, 65_536, 3]);
        let cases = [
            (1, &small),
            (3, &small),
            (7, &small),
            (4096, &large),
            (usize::MAX / 2, &large),
        ];
        for (chunk, frames) in cases {
            for vectored in [true, false] {
                let mut socket = trickle(chunk, vectored);
                write_all(frames, &mut socket).await;
                assert!(
                    socket.written == expected_wire(frames),
                    "chunk {chunk}, vectored {vectored}: the bytes differ"
                );
            }
        }
    }

    #[tokio::test]
    async fn many_frames_go_out_in_few_writes() {
        let frames = frames(&[40; 1000]);
        let mut socket = trickle(usize::MAX / 2, true);
        write_all(&frames, &mut socket).await;
        assert_eq!(socket.written, expected_wire(&frames));
        // 1000 frames, 256 per write: four writes (and as many blocked calls between them).
        assert_eq!(socket.calls, 4 + 3);
    }

    #[tokio::test]
    async fn stopping_finishes_only_the_frame_on_the_wire() {
        let frames = frames(&[10, 10, 10]);
        let mut socket = trickle(15, true);
        let mut writer = FrameWriter::new(&frames);
        // First write: the first frame (12 bytes) and 3 bytes of the second.
        let poll = poll_fn(|cx| Poll::Ready(writer.poll_write(cx, Pin::new(&mut socket)))).await;
        assert!(poll.is_pending());
        assert!(
            writer.stop_after_current(),
            "the second frame is partly written"
        );
        poll_fn(|cx| writer.poll_write(cx, Pin::new(&mut socket)))
            .await
            .unwrap();
        assert_eq!(socket.written, expected_wire(&frames[..2]));

        // Stopping on a boundary writes nothing more.
        let mut socket = trickle(12, true);
        let mut writer = FrameWriter::new(&frames);
        let poll = poll_fn(|cx| Poll::Ready(writer.poll_write(cx, Pin::new(&mut socket)))).await;
        assert!(poll.is_pending());
        assert!(!writer.stop_after_current());
        assert!(writer.is_done());
        assert_eq!(socket.written, expected_wire(&frames[..1]));
    }

    #[tokio::test]
    async fn a_closed_socket_is_an_error() {
        let frames = frames(&[5]);
        let mut socket = trickle(0, true);
        let mut writer = FrameWriter::new(&frames);
        let result = poll_fn(|cx| writer.poll_write(cx, Pin::new(&mut socket))).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::WriteZero);
    }
}
