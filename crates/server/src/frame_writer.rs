//! Writes a batch of queued text frames straight to a connection's socket.
//!
//! Frames go out in vectored writes, many per call: no UTF-8 check (the frames are the
//! server's own JSON) and no per-frame allocation. A small frame is copied, behind its
//! WebSocket header, into the batch's one staging buffer: the kernel copies each slice of
//! a vectored write separately, and a few-byte header slice per frame costs it more than
//! the copy saves (profiled: a burst broadcast of 300-byte frames spent 12 % of the
//! server's CPU in the kernel's copy with two slices per frame, 1.2 % with the staging
//! buffer). An event frame ([`livequery_protocol::EventFrame`]) is written here for the
//! first time: what it renders (op, envelope, request id, keys) is staged, and so are its
//! objects of at most `COPY_MAX` (1 KiB). Larger bytes are not copied: a large whole
//! frame's payload, or a large object of an event frame, follows the staged bytes before
//! it as a slice of its own.
//!
//! The connection task writes its control frames (pings, pongs, the close handshake) whole
//! between batches, so they never interleave bytes inside a data frame.
//!
//! A write can be interrupted (the caller stops polling it) and resumed where it stopped,
//! even in the middle of a slice; [`FrameWriter::stop_after_current`] lets a caller that
//! must end the connection finish the frame already on the wire, so the close handshake
//! that follows starts on a frame boundary.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use livequery_protocol::FrameSink;
use tokio::io::AsyncWrite;

use crate::outbox::Frame;

/// Whole frames and event frames' objects up to this size are copied into the staging
/// buffer; larger ones are written from their own bytes.
pub(crate) const COPY_MAX: usize = 1024;

/// Slices offered to one vectored write, within the 1024 (`IOV_MAX`) a `writev` accepts.
const SLICES_PER_WRITE: usize = 512;

/// A run of bytes to write, in order.
#[derive(Debug)]
pub(crate) enum Segment<'a> {
    /// A range of the staging buffer (small frames, headers of large ones, what event
    /// frames render).
    Staged(Range<usize>),
    /// Bytes of a frame, written from where they are.
    Shared(&'a [u8]),
}

impl<'a> Segment<'a> {
    /// The segment's bytes, `staged` being the buffer its staged ranges index.
    pub(crate) fn bytes<'b>(&'b self, staged: &'b [u8]) -> &'b [u8]
    where
        'a: 'b,
    {
        match self {
            Self::Staged(range) => &staged[range.clone()],
            Self::Shared(bytes) => bytes,
        }
    }
}

/// Lays frames out as segments: what is copied goes into `staged`, runs of it and shared
/// bytes into `segments` (a batch's `Vec`, or a direct write's inline array).
pub(crate) struct Stager<'a, 's, S: Extend<Segment<'a>>> {
    staged: &'s mut Vec<u8>,
    segments: &'s mut S,
    /// Where the staged run not yet made a segment starts.
    run_start: usize,
    frames: std::marker::PhantomData<&'a [u8]>,
}

impl<'a, 's, S: Extend<Segment<'a>>> Stager<'a, 's, S> {
    /// Appends to `staged` and `segments`.
    pub(crate) fn new(staged: &'s mut Vec<u8>, segments: &'s mut S) -> Self {
        Self {
            run_start: staged.len(),
            staged,
            segments,
            frames: std::marker::PhantomData,
        }
    }

    /// Closes the staged run in progress: call it once the last frame is laid out.
    pub(crate) fn end_staged_run(&mut self) {
        if self.run_start < self.staged.len() {
            self.segments
                .extend([Segment::Staged(self.run_start..self.staged.len())]);
            self.run_start = self.staged.len();
        }
    }
}

impl<'a, S: Extend<Segment<'a>>> FrameSink<'a> for Stager<'a, '_, S> {
    fn copy(&mut self, bytes: &[u8]) {
        self.staged.extend_from_slice(bytes);
    }

    fn share(&mut self, bytes: &'a [u8]) {
        self.end_staged_run();
        self.segments.extend([Segment::Shared(bytes)]);
    }
}

/// The progress of writing a batch of frames.
#[derive(Debug)]
pub struct FrameWriter<'a> {
    frames: &'a [Frame],
    /// Small frames with their headers, the headers of large frames, and what event frames
    /// render.
    staged: Vec<u8>,
    segments: Vec<Segment<'a>>,
    /// The segment being written, and how many of its bytes are written.
    segment: usize,
    segment_written: usize,
    /// Bytes written so far, and how many are to be written in all.
    written: usize,
    limit: usize,
}

impl<'a> FrameWriter<'a> {
    /// Ready to write `frames`, in order; each must be valid UTF-8 (text frames).
    pub fn new(frames: &'a [Frame]) -> Self {
        debug_assert!(
            frames.iter().all(|frame| match frame {
                Frame::Whole(bytes) => std::str::from_utf8(bytes).is_ok(),
                // Objects are serialized by serde_json, and the rest is ASCII.
                Frame::Event(_) => true,
            }),
            "text frames must be UTF-8"
        );
        let staged_len: usize = frames.iter().map(|frame| frame.copied_len(COPY_MAX)).sum();
        let mut staged = Vec::with_capacity(staged_len);
        let mut segments = Vec::new();
        let mut stager = Stager::new(&mut staged, &mut segments);
        let mut limit = 0;
        for frame in frames {
            limit += frame.wire_len();
            frame.write_wire(COPY_MAX, &mut stager);
        }
        stager.end_staged_run();
        debug_assert_eq!(staged.len(), staged_len, "Frame::copied_len is exact");
        Self {
            frames,
            staged,
            segments,
            segment: 0,
            segment_written: 0,
            written: 0,
            limit,
        }
    }

    /// Accounts for the first `n` bytes as written by someone else (the rest of a frame a
    /// direct write cut short); `n` is at most the first frame's length on the wire.
    pub fn skip(&mut self, n: usize) {
        debug_assert!(
            self.frames
                .first()
                .is_none_or(|frame| n <= frame.wire_len()),
            "only the first frame can be partly written"
        );
        self.advance(n);
    }

    /// Whether every frame to write is written.
    pub fn is_done(&self) -> bool {
        self.written >= self.limit
    }

    /// Gives up the frames not started yet, keeping the one partly written (if any) so that
    /// the socket is left on a frame boundary once it is done. Returns whether a frame is
    /// partly written.
    pub fn stop_after_current(&mut self) -> bool {
        let mut frame_end = 0;
        for frame in self.frames {
            if frame_end >= self.written {
                break;
            }
            frame_end += frame.wire_len();
        }
        self.limit = self.limit.min(frame_end);
        self.written < self.limit
    }

    /// The bytes of segment `i`.
    fn bytes(&self, i: usize) -> &[u8] {
        self.segments[i].bytes(&self.staged)
    }

    /// Writes until every frame to write is written (then flushes `stream`), the socket
    /// would block, or it fails.
    pub fn poll_write<S>(
        &mut self,
        cx: &mut Context<'_>,
        mut stream: Pin<&mut S>,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + ?Sized,
    {
        while !self.is_done() {
            let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
            let mut used = 0;
            let mut budget = self.limit - self.written;
            let mut skip = self.segment_written;
            for i in self.segment..self.segments.len() {
                if used == SLICES_PER_WRITE || budget == 0 {
                    break;
                }
                let bytes = &self.bytes(i)[skip..];
                skip = 0;
                let bytes = &bytes[..bytes.len().min(budget)];
                budget -= bytes.len();
                if !bytes.is_empty() {
                    slices[used] = IoSlice::new(bytes);
                    used += 1;
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
    fn advance(&mut self, n: usize) {
        self.written += n;
        let mut n = n;
        while n > 0 {
            let left = self.bytes(self.segment).len() - self.segment_written;
            if n < left {
                self.segment_written += n;
                return;
            }
            n -= left;
            self.segment += 1;
            self.segment_written = 0;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use livequery_protocol::{
        ClientId, EncodedObject, Envelope, EventFrame, EventOp, FrameObjects, RequestId,
    };
    use std::future::poll_fn;
    use std::sync::Arc;

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

    fn expected_wire(frames: &[Frame]) -> Vec<u8> {
        let mut wire = Vec::new();
        for frame in frames {
            let text = match frame {
                Frame::Whole(bytes) => bytes.clone(),
                Frame::Event(frame) => frame.encode(),
            };
            let (header, used) = livequery_protocol::websocket_frame::text_frame_header(text.len());
            wire.extend_from_slice(&header[..used]);
            wire.extend_from_slice(&text);
        }
        wire
    }

    fn frames(lengths: &[usize]) -> Vec<Frame> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| Frame::Whole(Bytes::from(vec![b'a' + (i % 26) as u8; len])))
            .collect()
    }

    /// An object whose JSON text is `len` bytes (at least 8).
    pub(crate) fn object_of(len: usize) -> EncodedObject {
        let padding = "p".repeat(len - 8);
        let object = EncodedObject::from_map(
            serde_json::json!({ "p": padding })
                .as_object()
                .expect("an object"),
        );
        assert_eq!(object.len(), len);
        object
    }

    /// An event frame for request `request_id` whose object (and original, if given) have
    /// JSON texts of those lengths.
    pub(crate) fn event(request_id: u32, object: usize, original: Option<usize>) -> EventFrame {
        let envelope = Arc::new(Envelope::new(
            ClientId::new("fdf64e98-c038-433b-b7ef-aea170730a47"),
            Some("inst"),
        ));
        EventFrame::new(
            if original.is_some() {
                EventOp::Update
            } else {
                EventOp::Create
            },
            envelope,
            RequestId::from(request_id),
            Arc::new(FrameObjects::new(
                object_of(object),
                original.map(object_of),
            )),
        )
    }

    async fn write_all(frames: &[Frame], socket: &mut Trickle) {
        let mut writer = FrameWriter::new(frames);
        poll_fn(|cx| writer.poll_write(cx, Pin::new(&mut *socket)))
            .await
            .unwrap();
        assert!(writer.is_done());
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_header_and_mid_payload() {
        let small = frames(&[0, 1, 125, 126, 300, 3]);
        // Copied and shared frames, one after the other and between copied ones.
        let large = frames(&[0, 1, 125, 126, 1024, 1025, 65_535, 300, 65_536, 3]);
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

    /// Event frames with small and large objects and originals, between whole frames.
    fn mixed() -> Vec<Frame> {
        vec![
            Frame::Whole(Bytes::from_static(b"{}")),
            event(1, 10, None).into(),
            event(2, 300, Some(40)).into(),
            event(3, 5000, None).into(),
            Frame::Whole(Bytes::from(vec![b'w'; 2000])),
            event(4, 1025, Some(1024)).into(),
            event(5, 20, Some(70_000)).into(),
            event(6, 70_000, Some(3000)).into(),
            event(7, 1024, Some(1025)).into(),
            Frame::Whole(Bytes::from_static(b"{}")),
        ]
    }

    #[tokio::test]
    async fn event_frames_are_written_as_they_encode() {
        let frames = mixed();
        for chunk in [1, 3, 7, 100, 4096, usize::MAX / 2] {
            for vectored in [true, false] {
                let mut socket = trickle(chunk, vectored);
                write_all(&frames, &mut socket).await;
                assert!(
                    socket.written == expected_wire(&frames),
                    "chunk {chunk}, vectored {vectored}: the bytes differ"
                );
            }
        }
    }

    #[test]
    fn large_objects_are_shared_and_small_ones_staged() {
        let frames = mixed();
        let writer = FrameWriter::new(&frames);
        let shared: Vec<*const u8> = writer
            .segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Shared(bytes) => Some(bytes.as_ptr()),
                Segment::Staged(_) => None,
            })
            .collect();
        let mut large = Vec::new();
        for frame in &frames {
            match frame {
                Frame::Whole(bytes) if bytes.len() > COPY_MAX => large.push(bytes.as_ptr()),
                Frame::Whole(_) => {}
                Frame::Event(frame) => {
                    for object in std::iter::once(frame.object()).chain(frame.original()) {
                        if object.len() > COPY_MAX {
                            large.push(object.as_bytes().as_ptr());
                        }
                    }
                }
            }
        }
        assert_eq!(
            shared, large,
            "exactly the large objects, from their own bytes"
        );
        let staged: usize = frames.iter().map(|frame| frame.copied_len(COPY_MAX)).sum();
        assert_eq!(writer.staged.len(), staged);
    }

    /// Writes what is left of `frames` after `skip` bytes.
    async fn rest_after(frames: &[Frame], skip: usize) -> Vec<u8> {
        let mut socket = trickle(usize::MAX / 2, true);
        let mut writer = FrameWriter::new(frames);
        writer.skip(skip);
        poll_fn(|cx| writer.poll_write(cx, Pin::new(&mut socket)))
            .await
            .unwrap();
        socket.written
    }

    #[tokio::test]
    async fn an_event_frame_cut_anywhere_is_finished_from_the_cut() {
        // A large object and original (shared slices) and a small pair (staged), each cut
        // inside the header, the object, the `original` key, the original and the last byte.
        for first in [event(9, 3000, Some(2000)), event(9, 100, Some(50))] {
            let frames = vec![Frame::from(first.clone()), event(10, 2000, None).into()];
            let wire = expected_wire(&frames);
            let text = first.encode();
            let header = frames[0].wire_len() - text.len();
            let object_at = header + find(&text, b"\"object\":") + 9;
            let original_at = header + find(&text, b"\"original\":") + 11;
            let cuts = [
                1,
                header,
                header + 5,
                object_at,
                object_at + first.object().len() / 2,
                original_at - 3,
                original_at + 1,
                original_at + first.original().unwrap().len() / 2,
                frames[0].wire_len() - 1,
                frames[0].wire_len(),
            ];
            for cut in cuts {
                assert!(
                    rest_after(&frames, cut).await == wire[cut..],
                    "cut at {cut}: the rest differs"
                );
            }
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
            .expect("present")
    }

    #[tokio::test]
    async fn many_frames_go_out_in_few_writes() {
        // Small frames: one slice for all of them, one write.
        let small = frames(&[40; 1000]);
        let mut socket = trickle(usize::MAX / 2, true);
        write_all(&small, &mut socket).await;
        assert_eq!(socket.written, expected_wire(&small));
        assert_eq!(socket.calls, 1);
        // 600 large frames: 1200 slices, 512 per write: three writes (and two blocked
        // calls between them).
        let large = frames(&[2000; 600]);
        let mut socket = trickle(usize::MAX / 2, true);
        write_all(&large, &mut socket).await;
        assert!(socket.written == expected_wire(&large));
        assert_eq!(socket.calls, 3 + 2);
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
