//! The bounded outbound queue of one connection.
//!
//! The dispatch workers push pre-encoded frames from any thread without waiting; the
//! connection task drains them into its socket. The queue is bounded in frames and bytes:
//! the push that would exceed a bound marks the client as too slow, drops what was queued
//! (so a stuck client cannot hold memory) and wakes the connection task, which sends the
//! slow-consumer error and closes. A blocking (parking_lot) mutex is right here: it is held
//! for a few instructions and never across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

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
    /// Encoded frames, oldest first, with the receipt time of the event each one carries
    /// (for the delivery-latency histogram); at most `max_frames`.
    queue: VecDeque<(Bytes, Option<Instant>)>,
    /// Their total size; at most `max_bytes`.
    bytes: usize,
    /// Open, or why the connection ends.
    state: Drain,
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
}

impl Outbox {
    /// An empty queue with the given bounds (it allocates nothing until used).
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                state: Drain::Open,
            }),
            notify: Notify::new(),
            max_frames,
            max_bytes,
            ping_requested: AtomicBool::new(false),
        }
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_stamped(frame, None)
    }

    /// Queues the frame of an event the source handed over at `received`.
    pub fn push_event(&self, frame: Bytes, received: Instant) -> Push {
        self.push_stamped(frame, Some(received))
    }

    fn push_stamped(&self, frame: Bytes, received: Option<Instant>) -> Push {
        let mut inner = self.inner.lock();
        match inner.state {
            Drain::Open => {}
            Drain::Overflowed | Drain::Abort(_) | Drain::Closed => return Push::Closed,
        }
        if inner.queue.len() >= self.max_frames || inner.bytes + frame.len() > self.max_bytes {
            inner.state = Drain::Overflowed;
            inner.queue = VecDeque::new();
            inner.bytes = 0;
            drop(inner);
            self.notify.notify_one();
            return Push::Overflowed;
        }
        inner.bytes += frame.len();
        if inner.queue.capacity() == 0 {
            // One slot to start with: a connection that only ever has one frame queued at a
            // time (replies, then events one by one) keeps one slot, not the four a first
            // push would reserve. The buffer is kept between batches: freeing it when drained
            // would cost an allocation per delivery.
            inner.queue.reserve_exact(1);
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back((frame, received));
        drop(inner);
        if was_empty {
            self.notify.notify_one();
        }
        Push::Queued
    }

    /// Moves up to `max` frames into `out`, and the receipt times of the events among them
    /// into `received`.
    pub fn drain_into(
        &self,
        out: &mut impl Extend<Bytes>,
        received: &mut impl Extend<Instant>,
        max: usize,
    ) -> Drain {
        let mut inner = self.inner.lock();
        let n = inner.queue.len().min(max);
        let mut drained = 0;
        for (frame, stamp) in inner.queue.drain(..n) {
            drained += frame.len();
            out.extend(Some(frame));
            received.extend(stamp);
        }
        inner.bytes -= drained;
        if inner.queue.is_empty() && inner.queue.capacity() > 64 {
            // Give a burst's memory back once the client has caught up.
            inner.queue = VecDeque::new();
        }
        inner.state.clone()
    }

    /// Ends the connection with `frame` (an error frame): queued frames are dropped, later
    /// pushes refused, and the connection task writes the frame and closes.
    pub fn abort(&self, frame: Bytes) {
        let mut inner = self.inner.lock();
        if inner.state == Drain::Open {
            inner.state = Drain::Abort(frame);
            inner.queue = VecDeque::new();
            inner.bytes = 0;
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

    /// Marks the queue closed: later pushes are refused and queued frames released.
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.state = Drain::Closed;
        inner.queue = VecDeque::new();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Drain::Overflowed
        );
        assert!(out.is_empty(), "an overflowed queue releases its frames");

        let outbox = Outbox::new(100, 10);
        assert_eq!(outbox.push(Bytes::from_static(b"123456")), Push::Queued);
        assert_eq!(outbox.push(Bytes::from_static(b"123456")), Push::Overflowed);
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
        assert_eq!(outbox.drain_into(&mut out, &mut stamps, 2), Drain::Open);
        assert_eq!(
            out,
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
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
        assert_eq!(outbox.drain_into(&mut out, &mut stamps, 10), Drain::Closed);
        assert!(out.is_empty());
    }
}
