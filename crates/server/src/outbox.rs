//! The bounded outbound queue of one connection, and the way around it.
//!
//! The dispatch workers push frames from any thread without waiting; the connection task
//! drains into its socket what they do not write themselves, and its own replies. A queued
//! [`Frame`] is either whole bytes (replies, errors, frames an `afterLiveQueryEvent` hook
//! produced) or an [`EventFrame`]: its per-recipient
//! parts and handles to the event's shared object bytes, so a delivery allocates nothing and
//! a backlog holds each object once, not once per recipient; its text is produced when it
//! is written. A worker queues an event's frames without waking anyone
//! ([`Outbox::queue_event`]) and then writes the queues it made non-empty itself, one
//! non-blocking vectored write each, in a [`WritePass`]: frames of events it fans out
//! before a queue's turn go out in the same write, and no connection task is woken for a
//! delivery. Only what such a write leaves (the socket's buffer is full, or the connection
//! task is writing) is left to the connection task, which is then woken. A write cut short
//! leaves the rest of its frame at the front of the queue, marked as partly written; the
//! connection task finishes it before it writes anything else, so frames never interleave
//! and order is kept. The connection task announces its own writes (batches, pings, pongs)
//! under the same lock ([`Outbox::begin_write`]), and no worker writes once the connection
//! ends.
//! The queue is bounded in frames and bytes:
//! the push that would exceed a bound marks the client as too slow, drops what was queued
//! (so a stuck client cannot hold memory) and wakes the connection task, which sends the
//! slow-consumer error and closes. A blocking (parking_lot) mutex is right here: it is held
//! for a few instructions or one non-blocking write, and never across an `.await`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use livequery_protocol::websocket_frame::text_frame_header;
use livequery_protocol::{EventFrame, FrameSink};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::frame_writer::{COPY_MAX, Segment, Stager};
use crate::metrics::Histogram;

/// The most frames one write of [`Outbox::write_queued`] takes.
const WRITE_FRAMES: usize = 256;

/// The most bytes one write of [`Outbox::write_queued`] copies into the worker's stage (a
/// frame that alone would need more, an envelope of unusual length, is left to the
/// connection task).
const WRITE_STAGE_MAX: usize = 128 * 1024;

/// Segments a write lays out without allocating: a run of staged bytes, and the large
/// objects of a few frames between them.
const INLINE_SEGMENTS: usize = 16;

/// One queued frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A frame's whole text (a reply, an error, a frame a hook produced).
    Whole(Bytes),
    /// An event frame, as its parts.
    Event(EventFrame),
}

impl Frame {
    /// The length of the frame's text (its payload on the wire): what the queue's byte bound
    /// and the metrics count.
    pub fn len(&self) -> usize {
        match self {
            Self::Whole(bytes) => bytes.len(),
            Self::Event(frame) => frame.len(),
        }
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The length of the frame on the wire, WebSocket header included.
    pub fn wire_len(&self) -> usize {
        let len = self.len();
        text_frame_header(len).1 + len
    }

    /// How many of the frame's wire bytes [`Frame::write_wire`] copies with `copy_max`.
    pub fn copied_len(&self, copy_max: usize) -> usize {
        let shared = |len: usize| if len > copy_max { len } else { 0 };
        self.wire_len()
            - match self {
                Self::Whole(bytes) => shared(bytes.len()),
                Self::Event(frame) => {
                    shared(frame.object().len()) + frame.original().map_or(0, |o| shared(o.len()))
                }
            }
    }

    /// Hands the frame's wire bytes to `sink`, in order: its WebSocket header and what it
    /// renders to be copied, and its payload (a whole frame) or objects (an event frame)
    /// to be copied when they are at most `copy_max` bytes, shared otherwise.
    pub fn write_wire<'a>(&'a self, copy_max: usize, sink: &mut impl FrameSink<'a>) {
        let (header, used) = text_frame_header(self.len());
        sink.copy(&header[..used]);
        match self {
            Self::Whole(bytes) if bytes.len() <= copy_max => sink.copy(bytes),
            Self::Whole(bytes) => sink.share(bytes),
            Self::Event(frame) => frame.write(copy_max, sink),
        }
    }

    /// The frame's wire bytes in a buffer of their own.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.wire_len());
        self.write_wire(usize::MAX, &mut wire);
        wire
    }
}

impl From<Bytes> for Frame {
    fn from(bytes: Bytes) -> Self {
        Self::Whole(bytes)
    }
}

impl From<EventFrame> for Frame {
    fn from(frame: EventFrame) -> Self {
        Self::Event(frame)
    }
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// Not queued: this push overflowed the queue; the client is being cut off.
    Overflowed,
    /// Not queued: the client is already cut off or gone.
    Closed,
}

/// The state a drain observes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// Frames (possibly none) were moved out; keep going.
    Open,
    /// The client overflowed its queue: send the slow-consumer error and close.
    Overflowed,
    /// The server ends the connection: send this frame (an error), then close.
    Abort(Bytes),
    /// The connection is closing.
    Closed,
}

#[derive(Debug)]
struct Inner {
    /// Frames, oldest first, with the receipt time of the event each one carries (for the
    /// delivery-latency histogram); at most `max_frames`.
    queue: VecDeque<(Frame, Option<Instant>)>,
    /// Their total size; at most `max_bytes`.
    bytes: usize,
    /// Open, or why the connection ends.
    state: Drain,
    /// Bytes (header included) of the front frame already on the socket: a direct write
    /// was cut short, and the connection task writes the rest before anything else.
    front_written: usize,
    /// The connection task is writing (a batch in hand, a ping or a pong): no direct write.
    writing: bool,
}

impl Inner {
    /// Gives a burst's memory back once the client has caught up (an empty queue keeps a
    /// small buffer: freeing it each time would cost an allocation per delivery).
    fn release_burst(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue = VecDeque::new();
        }
    }

    /// Drops the queued frames, but keeps a partly written front frame: the socket must be
    /// left on a frame boundary before the connection closes.
    fn clear(&mut self) {
        if self.front_written > 0 {
            self.queue.truncate(1);
            self.bytes = self.queue.front().map_or(0, |(frame, _)| frame.len());
        } else {
            self.queue = VecDeque::new();
            self.bytes = 0;
        }
    }
}

/// A connection's outbound queue.
#[derive(Debug)]
pub struct Outbox {
    /// Pushed from any worker thread, drained by the connection task.
    inner: Mutex<Inner>,
    /// Wakes the connection task when there is something to write (or it must close).
    notify: Notify,
    /// `limits.outbound_queue_frames`.
    max_frames: usize,
    /// `limits.outbound_queue_bytes`.
    max_bytes: usize,
    /// The ping clock asked for a ping ([`crate::ping`]).
    ping_requested: AtomicBool,
    /// The connection's socket when it is a TCP stream: read and written by the connection
    /// task, written directly by the workers when the way is clear.
    socket: Option<TcpStream>,
}

impl Outbox {
    /// An empty queue with the given bounds (it allocates nothing until used), for a
    /// connection that writes every frame itself.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self::with_socket(max_frames, max_bytes, None)
    }

    /// An empty queue with the given bounds that holds the connection's TCP socket, so that
    /// workers can write events to it directly.
    pub fn with_socket(max_frames: usize, max_bytes: usize, socket: Option<TcpStream>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                state: Drain::Open,
                front_written: 0,
                writing: false,
            }),
            notify: Notify::new(),
            max_frames,
            max_bytes,
            ping_requested: AtomicBool::new(false),
            socket,
        }
    }

    /// The connection's TCP socket, if the outbox holds it.
    pub fn socket(&self) -> Option<&TcpStream> {
        self.socket.as_ref()
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: impl Into<Frame>) -> Push {
        self.push_stamped(frame.into(), None)
    }

    /// Queues the frame of an event the source handed over at `received`.
    pub fn push_event(&self, frame: impl Into<Frame>, received: Instant) -> Push {
        self.push_stamped(frame.into(), Some(received))
    }

    fn push_stamped(&self, frame: Frame, received: Option<Instant>) -> Push {
        self.enqueue(self.inner.lock(), frame, received)
    }

    /// Queues the frame of an event the source handed over at `received`, for a worker's
    /// write pass: the connection task is not woken. A queue this made non-empty is added
    /// to `pass`, which owes it a [`Outbox::write_queued`] (that wakes the task for whatever
    /// it leaves). A queue that crosses half of a bound while it waits for that write is
    /// written at once: a worker that fans out a backlog before writing must not cut off a
    /// client that reads in time.
    pub fn queue_event(
        self: &Arc<Self>,
        frame: impl Into<Frame>,
        received: Instant,
        pass: &mut WritePass,
        latency: &Histogram,
    ) -> Push {
        let frame = frame.into();
        let mut inner = match self.admit(self.inner.lock(), &frame) {
            Ok(inner) => inner,
            Err(refused) => return refused,
        };
        if inner.queue.is_empty() {
            pass.owe(self);
        }
        let below_half = |inner: &Inner| {
            2 * inner.queue.len() < self.max_frames && 2 * inner.bytes < self.max_bytes
        };
        let was_below_half = below_half(&inner);
        Self::append(&mut inner, frame, Some(received));
        pass.queued += 1;
        // Written once, when the queue crosses half a bound: what that write leaves is the
        // connection task's (it is woken), not a write per frame queued afterwards.
        if was_below_half && !below_half(&inner) {
            self.write_locked(inner, latency);
        }
        Push::Queued
    }

    /// Writes what is queued straight to the socket, in one non-blocking vectored write,
    /// when the way is clear (the connection open, its task not writing, nothing partly
    /// written); wakes the connection task for whatever is left: frames the write did not
    /// take (the socket's buffer is full) or that one write does not hold. Records the
    /// delivery latency of the events written.
    pub fn write_queued(&self, latency: &Histogram) {
        self.write_locked(self.inner.lock(), latency);
    }

    fn write_locked(&self, mut inner: parking_lot::MutexGuard<'_, Inner>, latency: &Histogram) {
        if inner.queue.is_empty() || inner.state != Drain::Open {
            return;
        }
        let clear = !inner.writing && inner.front_written == 0;
        if let (Some(socket), true) = (&self.socket, clear) {
            let (frames, written) = write_frames(
                inner.queue.iter().map(|(frame, _)| frame),
                |slices| match slices {
                    [one] => socket.try_write(one),
                    _ => socket.try_write_vectored(slices),
                },
            );
            let mut left = written;
            let mut done = 0;
            for (frame, _) in inner.queue.iter().take(frames) {
                let wire = frame.wire_len();
                if left < wire {
                    break;
                }
                left -= wire;
                done += 1;
            }
            let stamps = inner
                .queue
                .iter()
                .take(done)
                .filter_map(|(_, stamp)| stamp.as_ref());
            latency.observe_since(stamps, Instant::now());
            let mut drained = 0;
            for (frame, _) in inner.queue.drain(..done) {
                drained += frame.len();
            }
            inner.bytes -= drained;
            inner.front_written = left;
            if inner.queue.is_empty() {
                inner.release_burst();
                return;
            }
        }
        drop(inner);
        self.notify.notify_one();
    }

    fn enqueue(
        &self,
        inner: parking_lot::MutexGuard<'_, Inner>,
        frame: Frame,
        received: Option<Instant>,
    ) -> Push {
        let mut inner = match self.admit(inner, &frame) {
            Ok(inner) => inner,
            Err(refused) => return refused,
        };
        let was_empty = inner.queue.is_empty();
        Self::append(&mut inner, frame, received);
        drop(inner);
        if was_empty {
            self.notify.notify_one();
        }
        Push::Queued
    }

    /// The queue, if `frame` may join it: refused (`Closed`) once the connection ends, and
    /// (`Overflowed`) when it would exceed a bound.
    fn admit<'i>(
        &self,
        inner: parking_lot::MutexGuard<'i, Inner>,
        frame: &Frame,
    ) -> Result<parking_lot::MutexGuard<'i, Inner>, Push> {
        match inner.state {
            Drain::Open => {}
            Drain::Overflowed | Drain::Abort(_) | Drain::Closed => return Err(Push::Closed),
        }
        if inner.queue.len() >= self.max_frames || inner.bytes + frame.len() > self.max_bytes {
            self.overflow(inner);
            return Err(Push::Overflowed);
        }
        Ok(inner)
    }

    /// Marks the client as too slow, drops what was queued and wakes the connection task
    /// (to send the slow-consumer error and close).
    fn overflow(&self, mut inner: parking_lot::MutexGuard<'_, Inner>) {
        inner.state = Drain::Overflowed;
        inner.clear();
        drop(inner);
        self.notify.notify_one();
    }

    /// Appends a frame that fits the bounds.
    fn append(inner: &mut Inner, frame: Frame, received: Option<Instant>) {
        inner.bytes += frame.len();
        if inner.queue.capacity() == 0 {
            // One slot to start with: a connection that only ever has one frame queued at a
            // time (replies, then events one by one) keeps one slot, not the four a first
            // push would reserve. The buffer is kept between batches: freeing it when drained
            // would cost an allocation per delivery.
            inner.queue.reserve_exact(1);
        }
        inner.queue.push_back((frame, received));
    }

    /// Moves up to `max` frames into `out`, and the receipt times of the events among them
    /// into `received`; returns the state and how many bytes of the first frame moved are
    /// already on the socket (to be skipped). The caller writes what it took: while it has
    /// frames in hand no worker writes directly; a drain that takes nothing ends that.
    pub fn drain_into(
        &self,
        out: &mut impl Extend<Frame>,
        received: &mut impl Extend<Instant>,
        max: usize,
    ) -> (Drain, usize) {
        let mut inner = self.inner.lock();
        let n = inner.queue.len().min(max);
        inner.writing = n > 0;
        let skip = if n > 0 {
            std::mem::take(&mut inner.front_written)
        } else {
            0
        };
        let mut drained = 0;
        for (frame, stamp) in inner.queue.drain(..n) {
            drained += frame.len();
            out.extend(Some(frame));
            received.extend(stamp);
        }
        inner.bytes -= drained;
        inner.release_burst();
        (inner.state.clone(), skip)
    }

    /// The connection's state, without taking anything.
    pub fn state(&self) -> Drain {
        self.inner.lock().state.clone()
    }

    /// The connection task is about to write a control frame: no worker writes until
    /// [`Outbox::end_write`]. Returns the front frame if a direct write left it partly
    /// written, with how many bytes of it are on the socket: to be finished first.
    pub fn begin_write(&self) -> Option<(Frame, usize)> {
        let mut inner = self.inner.lock();
        inner.writing = true;
        if inner.front_written == 0 {
            return None;
        }
        let skip = std::mem::take(&mut inner.front_written);
        let (frame, _) = inner.queue.pop_front()?;
        inner.bytes -= frame.len();
        Some((frame, skip))
    }

    /// The connection task is done writing, on a frame boundary: workers may write
    /// directly again (the task is woken if frames were queued meanwhile).
    pub fn end_write(&self) {
        let mut inner = self.inner.lock();
        inner.writing = false;
        let pending = !inner.queue.is_empty();
        drop(inner);
        if pending {
            self.notify.notify_one();
        }
    }

    /// Ends the connection with `frame` (an error frame): queued frames are dropped, later
    /// pushes refused, and the connection task writes the frame and closes.
    pub fn abort(&self, frame: Bytes) {
        let mut inner = self.inner.lock();
        if inner.state == Drain::Open {
            inner.state = Drain::Abort(frame);
            inner.clear();
            drop(inner);
            self.notify.notify_one();
        }
    }

    /// Whether the connection must stop writing queued frames (overflow or abort).
    pub fn is_ending(&self) -> bool {
        matches!(self.inner.lock().state, Drain::Overflowed | Drain::Abort(_))
    }

    /// Whether frames are waiting.
    pub fn has_pending(&self) -> bool {
        !self.inner.lock().queue.is_empty()
    }

    /// Waits until a push or a state change happened since the last wait.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Asks the connection task for a ping (it is woken). Returns whether the connection is
    /// still open, i.e. worth asking again.
    pub fn request_ping(&self) -> bool {
        if self.inner.lock().state == Drain::Closed {
            return false;
        }
        self.ping_requested.store(true, Relaxed);
        self.notify.notify_one();
        true
    }

    /// Whether a ping was asked for since the last call.
    pub fn take_ping_request(&self) -> bool {
        self.ping_requested.swap(false, Relaxed)
    }

    /// Marks the queue closed: later pushes are refused and queued frames released, except
    /// a partly written front frame ([`Outbox::begin_write`] hands it over, to be finished
    /// before the close handshake).
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.state = Drain::Closed;
        inner.clear();
    }

    /// Shuts the socket down in both directions once the connection is over (the peer sees
    /// the TCP connection end now). The descriptor itself is released with the last handle
    /// on this outbox, which something else may still hold for a while (an
    /// `afterLiveQueryEvent` hook call in flight): that must not keep the peer's connection
    /// open.
    pub fn shut_down_socket(&self) {
        if let Some(socket) = &self.socket {
            // Fails only if the peer is gone already: nothing to shut down then.
            let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The frames a worker's write carries, on average, when it keeps up with what it queues:
/// [`WritePass::write_next`] writes one queue per this many frames queued since its last
/// call. Enough to share a `send`'s cost among many frames, few enough that queues stay
/// short and their memory in cache: with a fixed 64 writes per look, a broadcast burst
/// left ~80 frames in each of 1,000 queues between two writes, and a fifth of the
/// worker's samples sat on the locked instruction releasing a queue's lock, which waits
/// for the queued frame's stores to reach a cache the queues no longer fit in.
/// Measured (one core, 1,000 connections, bursts, fresh processes, five to nine runs
/// each): broadcast 2.41–3.11 M (most runs 2.4–2.8) → 2.69–3.44 M deliveries/s (most
/// 3.1–3.4); 1 % selectivity 733–802k → 727–774k (a few % lower on average, about the
/// spread of repeated runs); 10 subscriptions per connection 2.19–2.22 M either way. At 32
/// about the same as at 16; at 8, 1 % selectivity fell to 664k.
pub const FRAMES_PER_WRITE: usize = 16;

/// The outboxes a worker owes a write: those its [`Outbox::queue_event`] made non-empty (the
/// outbox adds itself), in that order. Each gets one [`Outbox::write_queued`]; one dropped
/// unwritten has its connection task woken, so no frame is left behind.
#[derive(Debug, Default)]
pub struct WritePass {
    owed: VecDeque<Arc<Outbox>>,
    /// Frames queued since the last [`WritePass::write_next`].
    queued: usize,
}

impl WritePass {
    /// Adds `outbox`, whose queue the worker just made non-empty.
    fn owe(&mut self, outbox: &Arc<Outbox>) {
        self.owed.push_back(outbox.clone());
    }

    /// Whether no write is owed.
    pub fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// Writes the queues of the next outboxes owed a write: at least `min_writes` of them,
    /// and more when more frames were queued since the last call, about one write per
    /// [`FRAMES_PER_WRITE`] of those frames.
    pub fn write_next(&mut self, min_writes: usize, latency: &Histogram) {
        let writes = min_writes.max(self.queued / FRAMES_PER_WRITE);
        self.queued = 0;
        for _ in 0..writes {
            let Some(outbox) = self.owed.pop_front() else {
                return;
            };
            outbox.write_queued(latency);
        }
    }
}

impl Drop for WritePass {
    fn drop(&mut self) {
        for outbox in self.owed.drain(..) {
            outbox.notify.notify_one();
        }
    }
}

thread_local! {
    /// The copied bytes of a worker's write (kept by each worker thread between writes, at
    /// most [`WRITE_STAGE_MAX`]: no allocation, and no zeroing, per write).
    static STAGE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Lays the first of `frames` out (at most [`WRITE_FRAMES`] of them and
/// [`WRITE_STAGE_MAX`] copied bytes: small pieces copied into the thread's stage, large
/// objects as their own slices) and offers them to `write` in one call; returns how many
/// frames were offered and how many bytes `write` wrote (0 on an error: the connection
/// task's next write meets it; nothing is offered when the first frame alone would copy
/// more than the stage holds).
fn write_frames<'a>(
    frames: impl Iterator<Item = &'a Frame>,
    write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
) -> (usize, usize) {
    STAGE.with_borrow_mut(|stage| {
        stage.clear();
        let mut segments = SmallVec::<[Segment<'_>; INLINE_SEGMENTS]>::new();
        let mut stager = Stager::new(stage, &mut segments);
        let mut offered = 0;
        let mut staged = 0;
        for frame in frames.take(WRITE_FRAMES) {
            let copied = frame.copied_len(COPY_MAX);
            if staged + copied > WRITE_STAGE_MAX {
                break;
            }
            staged += copied;
            frame.write_wire(COPY_MAX, &mut stager);
            offered += 1;
        }
        stager.end_staged_run();
        if offered == 0 {
            return (0, 0);
        }
        let slices: SmallVec<[IoSlice<'_>; INLINE_SEGMENTS]> = segments
            .iter()
            .map(|segment| IoSlice::new(segment.bytes(stage)))
            .collect();
        (offered, write(&slices).unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_socket::connected_pair;

    #[test]
    fn bounded_by_frames_and_bytes() {
        let outbox = Outbox::new(2, 10);
        assert_eq!(outbox.push(Bytes::from_static(b"abc")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"abc")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"abc")), Push::Overflowed);
        assert_eq!(outbox.push(Bytes::from_static(b"a")), Push::Closed);
        let mut out = Vec::new();
        assert_eq!(
            outbox.drain_into(&mut out, &mut Vec::<Instant>::new(), 10),
            (Drain::Overflowed, 0)
        );
        assert!(out.is_empty(), "an overflowed queue releases its frames");

        let outbox = Outbox::new(100, 10);
        assert_eq!(outbox.push(Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"123456")), Push::Overflowed);
    }

    #[test]
    fn a_queued_event_frame_takes_a_few_words() {
        // The queue of a backlog holds these, not copies of the objects.
        let slot = std::mem::size_of::<(Frame, Option<Instant>)>();
        assert!(slot <= 64, "a queue slot is {slot} bytes");
    }

    #[test]
    fn drains_in_order_and_closes() {
        let outbox = Outbox::new(10, 100);
        let received = Instant::now();
        outbox.push(Bytes::from_static(b"1"));
        outbox.push_event(Bytes::from_static(b"2"), received);
        outbox.push(Bytes::from_static(b"3"));
        let mut out = Vec::new();
        let mut stamps = Vec::new();
        assert_eq!(
            outbox.drain_into(&mut out, &mut stamps, 2),
            (Drain::Open, 0)
        );
        assert_eq!(
            out,
            vec![
                Frame::from(Bytes::from_static(b"1")),
                Frame::from(Bytes::from_static(b"2"))
            ]
        );
        assert_eq!(
            stamps,
            vec![received],
            "only event frames carry a receipt time"
        );
        assert!(outbox.has_pending());
        outbox.close();
        assert_eq!(outbox.push(Bytes::from_static(b"4")), Push::Closed);
        out.clear();
        assert_eq!(
            outbox.drain_into(&mut out, &mut stamps, 10),
            (Drain::Closed, 0)
        );
        assert!(out.is_empty());
    }

    /// One event delivered by a worker on its own: queued, then written when it made the
    /// queue non-empty (a write pass of one).
    fn deliver(outbox: &Arc<Outbox>, frame: impl Into<Frame>, latency: &Histogram) -> Push {
        let mut pass = WritePass::default();
        let pushed = outbox.queue_event(frame, Instant::now(), &mut pass, latency);
        pass.write_next(usize::MAX, latency);
        pushed
    }

    /// Text frame `i` of the tests: `size` bytes of one letter.
    fn frame(i: usize, size: usize) -> Bytes {
        Bytes::from(vec![b'a' + (i % 26) as u8; size])
    }

    /// Reads `frames` whole text frames from `peer` and checks each is `frame(i, size)`.
    async fn read_frames(peer: &mut TcpStream, frames: std::ops::Range<usize>, size: usize) {
        use tokio::io::AsyncReadExt;
        for i in frames {
            let (header, used) = text_frame_header(size);
            let mut head = vec![0u8; used];
            peer.read_exact(&mut head).await.unwrap();
            assert_eq!(head, header[..used], "frame {i} starts on a frame boundary");
            let mut payload = vec![0u8; size];
            peer.read_exact(&mut payload).await.unwrap();
            assert!(payload == frame(i, size), "frame {i} is whole and in order");
        }
    }

    #[tokio::test]
    async fn events_are_written_directly_until_the_socket_is_full() {
        let (server, mut peer) = connected_pair().await;
        let outbox = Arc::new(Outbox::with_socket(1000, 1 << 30, Some(server)));
        let latency = Histogram::default();
        let size = 100_000;
        // Written directly while the socket takes them; the first one it cannot take whole
        // is queued (its written part skipped later), and every later one queued behind it.
        let mut direct = 0;
        while !outbox.has_pending() {
            assert_eq!(
                deliver(&outbox, frame(direct, size), &latency),
                Push::Queued
            );
            direct += 1;
            assert!(direct < 10_000, "a socket nobody reads fills up");
        }
        for i in direct..direct + 3 {
            deliver(&outbox, frame(i, size), &latency);
        }
        let outbox_bytes = outbox.inner.lock().bytes;
        assert_eq!(outbox_bytes, 4 * size);

        let mut batch = Vec::new();
        let mut stamps = Vec::new();
        let (state, skip) = outbox.drain_into(&mut batch, &mut stamps, 10);
        assert_eq!(state, Drain::Open);
        assert_eq!(batch.len(), 4);
        assert_eq!(stamps.len(), 4);
        assert!(skip < text_frame_header(size).1 + size);
        // While the connection task writes, workers queue.
        assert_eq!(
            deliver(&outbox, frame(direct + 3, size), &latency),
            Push::Queued
        );
        assert!(outbox.has_pending());

        // The connection task writes the batch, the rest of the cut frame first.
        let mut wire = Vec::new();
        for (i, frame) in batch.iter().enumerate() {
            wire.extend_from_slice(&frame.to_wire());
            if i == 0 {
                wire.drain(..skip);
            }
        }
        let socket = outbox.socket().unwrap();
        let writer = async {
            let mut at = 0;
            while at < wire.len() {
                socket.writable().await.unwrap();
                match socket.try_write(&wire[at..]) {
                    Ok(n) => at += n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => panic!("{err}"),
                }
            }
        };
        let reader = read_frames(&mut peer, 0..direct + 3, size);
        tokio::join!(writer, reader);
        // Then the frame queued during the write; afterwards the way is clear again.
        let (_, skip) = outbox.drain_into(&mut batch, &mut stamps, 10);
        assert_eq!(
            skip, 0,
            "a frame queued behind others is never written directly"
        );
        assert_eq!(
            outbox.drain_into(&mut batch, &mut stamps, 10),
            (Drain::Open, 0)
        );
        assert!(!outbox.has_pending());
    }

    /// An outbox of `max_frames` whose socket took only part of the front frame (a direct
    /// write cut short), its peer (kept open), and the number of frames delivered.
    async fn cut_short(max_frames: usize) -> (Arc<Outbox>, TcpStream, usize) {
        let latency = Histogram::default();
        // A write can also stop on a frame boundary: then try another socket.
        for _ in 0..20 {
            let (server, peer) = connected_pair().await;
            let outbox = Arc::new(Outbox::with_socket(max_frames, 1 << 30, Some(server)));
            let mut i = 0;
            while !outbox.has_pending() {
                deliver(&outbox, frame(i, 100_001), &latency);
                i += 1;
            }
            if outbox.inner.lock().front_written > 0 {
                return (outbox, peer, i);
            }
        }
        panic!("no direct write was cut short inside a frame");
    }

    #[tokio::test]
    async fn a_partly_written_frame_survives_overflow_abort_and_close() {
        let latency = Histogram::default();
        for end in ["overflow", "abort", "close"] {
            let (outbox, _peer, delivered) = cut_short(3).await;
            let partial = outbox.inner.lock().queue.front().unwrap().0.clone();
            match end {
                "overflow" => {
                    for j in 0..3 {
                        deliver(&outbox, frame(delivered + j, 10), &latency);
                    }
                    assert!(outbox.is_ending());
                }
                "abort" => outbox.abort(Bytes::from_static(b"{}")),
                _ => outbox.close(),
            }
            assert!(
                deliver(&outbox, frame(0, 10), &latency) == Push::Closed,
                "{end}: nothing is written after the end"
            );
            assert_eq!(outbox.inner.lock().bytes, partial.len(), "{end}");
            let (frame, skip) = outbox.begin_write().expect("the partly written frame");
            assert!(frame == partial, "{end}");
            assert!(skip > 0);
            assert!(outbox.begin_write().is_none());
            assert_eq!(outbox.inner.lock().bytes, 0, "{end}");
        }
    }

    /// Writes `frames` with a [`FrameWriter`] into a buffer, the first `skip` bytes already
    /// written.
    async fn written_by_the_connection_task(frames: &[Frame], skip: usize) -> Vec<u8> {
        let mut writer = crate::frame_writer::FrameWriter::new(frames);
        writer.skip(skip);
        let mut out = Vec::new();
        std::future::poll_fn(|cx| writer.poll_write(cx, std::pin::Pin::new(&mut out)))
            .await
            .unwrap();
        out
    }

    /// What a direct write of `frame` offers the socket, when the socket takes `take` bytes.
    fn direct(frame: &Frame, take: usize) -> (Vec<u8>, usize, Vec<*const u8>) {
        let mut offered = Vec::new();
        let mut slices = Vec::new();
        let (_, written) = write_frames(std::iter::once(frame), |offer| {
            for slice in offer {
                offered.extend_from_slice(slice);
                slices.push(slice.as_ptr());
            }
            Ok(take.min(offered.len()))
        });
        (offered, written, slices)
    }

    #[tokio::test]
    async fn a_direct_write_cut_inside_an_event_frame_is_finished_from_the_cut() {
        use crate::frame_writer::tests::event;
        for (event, shared) in [
            // Staged whole: one slice.
            (event(1, 100, Some(60)), 0),
            (event(1, 100, None), 0),
            // Object and original shared, what the frame renders staged around them.
            (event(1, 3000, Some(2000)), 2),
            (event(1, 30, Some(2000)), 1),
        ] {
            let text = event.encode();
            let frame = Frame::from(event.clone());
            let wire = frame.to_wire();
            let header = wire.len() - text.len();
            assert_eq!(&wire[header..], &text[..]);
            let (offered, written, slices) = direct(&frame, usize::MAX);
            assert_eq!(offered, wire, "the whole frame is offered in one write");
            assert_eq!(written, wire.len());
            let large: Vec<*const u8> = std::iter::once(event.object())
                .chain(event.original())
                .filter(|object| object.len() > COPY_MAX)
                .map(|object| object.as_bytes().as_ptr())
                .collect();
            assert_eq!(large.len(), shared);
            assert!(
                large.iter().all(|object| slices.contains(object)),
                "large objects are written from their own bytes"
            );
            assert_eq!(slices.len(), if shared == 0 { 1 } else { 2 * shared + 1 });
            // Cut inside the header, the head, the object, the `original` key, the original
            // and before the last byte: the connection task writes exactly the rest.
            let object_at = header + text.len()
                - 1
                - event.original().map_or(0, |o| o.len() + 11)
                - event.object().len();
            let mut cuts = vec![
                1,
                header - 1,
                header,
                header + 3,
                object_at - 1,
                object_at + 1,
            ];
            cuts.push(object_at + event.object().len() / 2);
            if let Some(original) = event.original() {
                let original_at = wire.len() - 1 - original.len();
                cuts.extend([
                    original_at - 5,
                    original_at,
                    original_at + original.len() / 2,
                ]);
            }
            cuts.push(wire.len() - 1);
            for cut in cuts {
                let (_, written, _) = direct(&frame, cut);
                assert_eq!(written, cut);
                let frames = [frame.clone(), Frame::from(Bytes::from_static(b"{}"))];
                let rest = written_by_the_connection_task(&frames, cut).await;
                let mut expected = wire[cut..].to_vec();
                expected.extend_from_slice(&frames[1].to_wire());
                assert!(rest == expected, "cut at {cut}: the rest differs");
            }
        }
    }

    #[test]
    fn a_frame_with_an_outsized_envelope_is_queued_not_written_directly() {
        let envelope = std::sync::Arc::new(livequery_protocol::Envelope::new(
            livequery_protocol::ClientId::new("c"),
            Some(&"i".repeat(WRITE_STAGE_MAX)),
        ));
        let frame = Frame::from(EventFrame::new(
            livequery_protocol::EventOp::Create,
            envelope,
            livequery_protocol::RequestId::from(1),
            std::sync::Arc::new(livequery_protocol::FrameObjects::new(
                crate::frame_writer::tests::object_of(20),
                None,
            )),
        ));
        let (offered, written, _) = direct(&frame, usize::MAX);
        assert!(offered.is_empty());
        assert_eq!(written, 0);
    }

    #[tokio::test]
    async fn event_frames_cut_by_a_full_socket_arrive_whole_and_in_order() {
        use crate::frame_writer::tests::event;
        use tokio::io::AsyncReadExt;
        for (object, original) in [(60_000, Some(50_000)), (900, Some(700)), (5000, None)] {
            let (server, mut peer) = connected_pair().await;
            let outbox = Arc::new(Outbox::with_socket(100_000, 1 << 30, Some(server)));
            let latency = Histogram::default();
            let mut expected = Vec::new();
            let mut delivered = 0u32;
            while !outbox.has_pending() {
                let frame = event(delivered, object, original);
                expected.extend_from_slice(&Frame::from(frame.clone()).to_wire());
                deliver(&outbox, frame, &latency);
                delivered += 1;
                assert!(delivered < 100_000, "a socket nobody reads fills up");
            }
            let mut batch = Vec::new();
            let (state, skip) = outbox.drain_into(&mut batch, &mut Vec::new(), 10);
            assert_eq!(state, Drain::Open);
            assert_eq!(batch.len(), 1);
            let mut socket = SocketRef(outbox.socket().unwrap());
            let writer = async {
                let mut writer = crate::frame_writer::FrameWriter::new(&batch);
                writer.skip(skip);
                std::future::poll_fn(|cx| writer.poll_write(cx, std::pin::Pin::new(&mut socket)))
                    .await
                    .unwrap();
            };
            let mut received = vec![0u8; expected.len()];
            let reader = peer.read_exact(&mut received);
            let ((), read) = tokio::join!(writer, reader);
            read.unwrap();
            assert!(received == expected, "every frame whole and in order");
        }
    }

    /// Writes through a shared socket handle, as the connection task does.
    struct SocketRef<'s>(&'s TcpStream);

    impl tokio::io::AsyncWrite for SocketRef<'_> {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            loop {
                std::task::ready!(self.0.poll_write_ready(cx))?;
                match self.0.try_write(buf) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    result => return std::task::Poll::Ready(result),
                }
            }
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn no_direct_write_while_the_connection_task_writes() {
        let (server, mut peer) = connected_pair().await;
        let outbox = Arc::new(Outbox::with_socket(10, 1 << 20, Some(server)));
        let latency = Histogram::default();
        assert!(outbox.begin_write().is_none());
        deliver(&outbox, frame(0, 10), &latency);
        assert!(outbox.has_pending(), "queued while the task writes");
        outbox.end_write();
        let mut batch = Vec::new();
        assert_eq!(
            outbox.drain_into(&mut batch, &mut Vec::new(), 10),
            (Drain::Open, 0)
        );
        assert_eq!(
            outbox.drain_into(&mut batch, &mut Vec::new(), 10),
            (Drain::Open, 0)
        );
        deliver(&outbox, frame(1, 10), &latency);
        assert!(
            !outbox.has_pending(),
            "written directly once the way is clear"
        );
        read_frames(&mut peer, 1..2, 10).await;
        assert_eq!(latency.count(), 1);
    }

    /// Whether `peer` has bytes to read now.
    fn has_bytes(peer: &TcpStream) -> bool {
        let mut byte = [0u8; 1];
        peer.try_read(&mut byte).is_ok()
    }

    /// `n` outboxes of `max_frames` frames on sockets, and the peers reading them.
    async fn outboxes_with_peers(
        n: usize,
        max_frames: usize,
    ) -> (Vec<Arc<Outbox>>, Vec<TcpStream>) {
        let mut outboxes = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..n {
            let (server, peer) = connected_pair().await;
            outboxes.push(Arc::new(Outbox::with_socket(
                max_frames,
                1 << 20,
                Some(server),
            )));
            peers.push(peer);
        }
        (outboxes, peers)
    }

    #[tokio::test]
    async fn a_write_pass_writes_each_queue_once_with_every_frame_queued_before_its_turn() {
        let latency = Histogram::default();
        let mut pass = WritePass::default();
        let (outboxes, mut peers) = outboxes_with_peers(2, 100).await;
        // Three events fanned out before any write: each queue is owed one write.
        for i in 0..3 {
            for outbox in &outboxes {
                outbox.queue_event(frame(i, 10), Instant::now(), &mut pass, &latency);
            }
        }
        assert_eq!(
            pass.owed.len(),
            2,
            "one write owed per queue, not per frame"
        );
        pass.write_next(1, &latency);
        assert!(!outboxes[0].has_pending() && outboxes[1].has_pending());
        // A fourth event comes in mid-pass: it joins the queue not written yet, and the one
        // written already is owed another write.
        for outbox in &outboxes {
            outbox.queue_event(frame(3, 10), Instant::now(), &mut pass, &latency);
        }
        pass.write_next(1, &latency);
        assert!(!outboxes[1].has_pending(), "all four frames in one write");
        read_frames(&mut peers[1], 0..4, 10).await;
        assert!(!has_bytes(&peers[1]));
        read_frames(&mut peers[0], 0..3, 10).await;
        tokio::task::yield_now().await;
        assert!(
            !has_bytes(&peers[0]),
            "the fourth frame waits for its write"
        );
        pass.write_next(10, &latency);
        assert!(pass.is_empty());
        read_frames(&mut peers[0], 3..4, 10).await;
        assert_eq!(latency.count(), 8, "each event frame's latency is recorded");
    }

    #[tokio::test]
    async fn a_pass_writes_more_queues_the_more_frames_were_queued_since_its_last_writes() {
        let latency = Histogram::default();
        let mut pass = WritePass::default();
        let (outboxes, _peers) = outboxes_with_peers(5, 1000).await;
        // Three writes' worth of frames, spread over five queues.
        for i in 0..3 * FRAMES_PER_WRITE {
            outboxes[i % 5].queue_event(frame(i, 10), Instant::now(), &mut pass, &latency);
        }
        pass.write_next(1, &latency);
        let written = outboxes.iter().filter(|o| !o.has_pending()).count();
        assert_eq!(written, 3, "one write per FRAMES_PER_WRITE frames queued");
        // Nothing queued since: the minimum.
        pass.write_next(1, &latency);
        assert_eq!(outboxes.iter().filter(|o| !o.has_pending()).count(), 4);
        pass.write_next(1, &latency);
        assert!(pass.is_empty());
    }

    #[tokio::test]
    async fn a_queue_written_empty_by_a_worker_gives_a_burst_back() {
        let latency = Histogram::default();
        let (server, mut peer) = connected_pair().await;
        let outbox = Arc::new(Outbox::with_socket(10_000, 1 << 30, Some(server)));
        let mut pass = WritePass::default();
        for i in 0..200 {
            outbox.queue_event(frame(i, 10), Instant::now(), &mut pass, &latency);
        }
        assert_eq!(pass.owed.len(), 1);
        assert!(outbox.inner.lock().queue.capacity() >= 200);
        outbox.write_queued(&latency);
        assert!(!outbox.has_pending());
        assert!(outbox.inner.lock().queue.capacity() <= 64);
        read_frames(&mut peer, 0..200, 10).await;
    }

    #[tokio::test]
    async fn a_pass_dropped_with_writes_owed_wakes_their_connection_tasks() {
        let latency = Histogram::default();
        let (server, _peer) = connected_pair().await;
        let outbox = Arc::new(Outbox::with_socket(100, 1 << 20, Some(server)));
        let mut pass = WritePass::default();
        assert_eq!(
            outbox.queue_event(frame(0, 10), Instant::now(), &mut pass, &latency),
            Push::Queued
        );
        assert_eq!(pass.owed.len(), 1, "owed a write");
        let woken = tokio::time::timeout(std::time::Duration::from_millis(50), outbox.notified());
        assert!(woken.await.is_err(), "a queued event alone wakes nobody");
        drop(pass);
        tokio::time::timeout(std::time::Duration::from_secs(10), outbox.notified())
            .await
            .expect("the task is woken to write what the pass did not");
        assert!(outbox.has_pending());
    }

    #[tokio::test]
    async fn a_queue_at_half_a_bound_is_written_before_its_turn() {
        let latency = Histogram::default();
        for (max_frames, max_bytes, written_at) in [(8, 1 << 20, 4), (1000, 80, 4)] {
            let (server, mut peer) = connected_pair().await;
            let outbox = Arc::new(Outbox::with_socket(max_frames, max_bytes, Some(server)));
            // The pass is never written: the queue goes out on its own.
            let mut pass = WritePass::default();
            for i in 0..written_at {
                assert!(outbox.has_pending() || i == 0);
                outbox.queue_event(frame(i, 10), Instant::now(), &mut pass, &latency);
            }
            assert!(
                !outbox.has_pending(),
                "written once {written_at} frames are queued (bounds {max_frames}, {max_bytes})"
            );
            read_frames(&mut peer, 0..written_at, 10).await;
        }
    }

    #[tokio::test]
    async fn the_peer_sees_the_end_while_another_handle_holds_the_outbox() {
        use tokio::io::AsyncReadExt;
        let (server, mut peer) = connected_pair().await;
        let outbox = std::sync::Arc::new(Outbox::with_socket(10, 1 << 20, Some(server)));
        let held_elsewhere = outbox.clone();
        outbox.close();
        outbox.shut_down_socket();
        drop(outbox);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), peer.read(&mut byte))
            .await
            .expect("the peer sees the connection end while the outbox is still held");
        assert_eq!(read.unwrap(), 0, "end of stream");
        drop(held_elsewhere);
    }
}
