//! Retrying after a failure: exponential backoff with full jitter, and waits that end at
//! shutdown. Every source's reconnect loop uses these, so none of them sleeps through a
//! shutdown or reconnects in lockstep with other instances.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS Architecture
/// Blog, 2015): each delay is uniform in `[0, ceiling]`, the ceiling doubling per attempt
/// from `base` up to `max`, so many instances retrying after the same outage spread out.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Ceilings grow from `base` to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The backoff livequery's sources use: 100 ms doubling up to 10 s.
    pub fn for_sources() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// The current ceiling, then doubles it.
    fn next_ceiling(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling
    }

    /// The next delay: uniform in `[0, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=micros))
    }

    /// Back to the first ceiling (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps for `delay` unless `shutdown` comes first; returns `false` on shutdown.
pub async fn sleep_unless_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_ceiling_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            assert!(*delay <= Duration::from_millis(ceiling), "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        // Full jitter: over many draws, some land in the lower and some in the upper half.
        let mut low = false;
        let mut high = false;
        for _ in 0..200 {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            let delay = backoff.next_delay();
            low |= delay < Duration::from_millis(500);
            high |= delay >= Duration::from_millis(500);
        }
        assert!(low && high);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_wait() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!sleep_unless_shutdown(Duration::from_secs(3600), &shutdown).await);
        assert!(sleep_unless_shutdown(Duration::from_millis(1), &CancellationToken::new()).await);
    }
}
