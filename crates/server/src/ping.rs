//! The shared ping clock: one task tells the connections when to ping, instead of a timer
//! per connection.
//!
//! Connections are spread over [`BUCKETS`] buckets (round robin in the order they open);
//! the clock visits one bucket every `websocket_timeout / BUCKETS`, so each connection is
//! woken once per `websocket_timeout` and the pings of many connections are spread evenly
//! over the period. A bucket holds a weak reference to each of its connections' outboxes
//! (one pointer per connection); a visit asks each live one for a ping
//! ([`Outbox::request_ping`], which wakes its connection task) and forgets the closed ones.
//! What a wake-up means (ping, or drop a peer that did not answer the previous ping) is the
//! connection's business ([`crate::connection`]).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

/// How many buckets the connections are spread over.
pub const BUCKETS: usize = 10;

/// The clock and its buckets.
#[derive(Debug)]
pub struct PingClock {
    /// Held for a visit (a few atomic operations per connection) or a join, never across
    /// an `.await`.
    buckets: [Mutex<Vec<Weak<Outbox>>>; BUCKETS],
    /// Connections joined so far: picks the next connection's bucket.
    joined: AtomicUsize,
}

impl Default for PingClock {
    fn default() -> Self {
        Self::new()
    }
}

impl PingClock {
    /// A clock that ticks once [`PingClock::run`] runs.
    pub fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| Mutex::new(Vec::new())),
            joined: AtomicUsize::new(0),
        }
    }

    /// Adds a newly opened connection, by its outbox, to the next bucket.
    pub fn join(&self, outbox: &Arc<Outbox>) {
        let bucket = self.joined.fetch_add(1, Relaxed) % BUCKETS;
        self.buckets[bucket].lock().push(Arc::downgrade(outbox));
    }

    /// Asks every open connection of `bucket` for a ping; forgets the closed ones.
    fn visit(&self, bucket: usize) {
        let mut outboxes = self.buckets[bucket].lock();
        outboxes.retain(|outbox| match outbox.upgrade() {
            Some(outbox) => outbox.request_ping(),
            None => false,
        });
        if outboxes.capacity() > 2 * outboxes.len() + 64 {
            outboxes.shrink_to_fit();
        }
    }

    /// Visits the buckets in turn, each once per `period`, until `stop` is cancelled.
    pub async fn run(&self, period: Duration, stop: CancellationToken) {
        let step = (period / BUCKETS as u32).max(Duration::from_millis(1));
        let mut ticks = interval_at(Instant::now() + step, step);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for bucket in (0..BUCKETS).cycle() {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.visit(bucket),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_open_connection_is_asked_once_per_period() {
        let clock = Arc::new(PingClock::new());
        let outboxes: Vec<_> = (0..BUCKETS * 2)
            .map(|_| Arc::new(Outbox::new(10, 1000)))
            .collect();
        for outbox in &outboxes {
            clock.join(outbox);
        }
        let closed = Arc::new(Outbox::new(10, 1000));
        clock.join(&closed);
        drop(closed);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let clock = clock.clone();
            let stop = stop.clone();
            async move { clock.run(Duration::from_secs(10), stop).await }
        });
        // Half a step off the clock's ticks: the checks never race a visit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            // Every open connection was asked once in this period.
            for outbox in &outboxes {
                assert!(outbox.take_ping_request(), "asked in this period");
                assert!(!outbox.take_ping_request());
            }
        }
        let remembered: usize = clock.buckets.iter().map(|b| b.lock().len()).sum();
        assert_eq!(remembered, outboxes.len(), "the closed one is forgotten");
        // A closed outbox is dropped from its bucket at the next visit.
        outboxes[0].close();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let remembered: usize = clock.buckets.iter().map(|b| b.lock().len()).sum();
        assert_eq!(
            remembered,
            outboxes.len() - 1,
            "a closed outbox is forgotten"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
