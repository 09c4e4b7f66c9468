//! Graceful drain: on SIGTERM (or Ctrl-C) the node turns unready at once, then closes its
//! WebSockets in waves spread over `server.drain_period`, so that a rolling restart moves
//! clients to the other nodes gradually instead of all within a second.
//!
//! The sequence:
//! 1. `/readyz` answers 503 (a readiness-gated load balancer stops routing here) and new
//!    WebSocket upgrades get HTTP 503, so clients retry on another node. TCP connections
//!    are still accepted: health checks, scrapes and the ingest API keep their answers
//!    until the end (a Kubernetes endpoint update takes a moment to reach every proxy).
//! 2. Every connection belongs to one of [`WAVES`] waves (round robin in the order
//!    connections open); wave `k` is closed with 1001 (going away) at
//!    `drain_period × (k + 1) / WAVES`. The first wave leaves after a tenth of the period,
//!    which gives the load balancer that long to notice the 503.
//! 3. The server stops (accept loops end, the source and workers stop) and waits at most
//!    `server.shutdown_grace` for the last close handshakes.
//!
//! `drain_period = 0` closes every socket at once; a drain with no WebSocket left open ends
//! early. A connection holds a clone of its wave's token (one pointer): no registry of
//! connections is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// How many waves a drain closes connections in.
pub const WAVES: usize = 10;

/// The drain: one cancellation token per wave, each a child of the server's stop token (so a
/// stop without drain, e.g. a failed source, still closes everything at once).
#[derive(Debug)]
pub struct Drain {
    waves: [CancellationToken; WAVES],
    /// Connections opened so far: picks the next connection's wave.
    opened: AtomicUsize,
}

impl Drain {
    /// Waves that end when `stop` is cancelled, if not before.
    pub fn new(stop: &CancellationToken) -> Self {
        Self {
            waves: std::array::from_fn(|_| stop.child_token()),
            opened: AtomicUsize::new(0),
        }
    }

    /// The token that tells a newly opened connection to close: its wave's.
    pub fn join(&self) -> CancellationToken {
        let wave = self.opened.fetch_add(1, Relaxed) % WAVES;
        self.waves[wave].clone()
    }

    /// Waits for `shutdown`, then drains over `period` and cancels `stop`. Returns at once
    /// if `stop` is cancelled first (the server stopped on its own).
    pub async fn run(
        self: Arc<Self>,
        period: Duration,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        stop: CancellationToken,
    ) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = stop.cancelled() => return,
        }
        readiness.start_draining();
        tracing::info!(
            period = ?period,
            waves = WAVES,
            connections = metrics.connections.load(Relaxed),
            "draining: /readyz answers 503, new WebSockets are refused, open ones close in waves"
        );
        let start = Instant::now();
        for (k, wave) in self.waves.iter().enumerate() {
            // Nothing left to drain (upgrades are refused now, so none can appear).
            if metrics.connections.load(Relaxed) <= 0 {
                tracing::debug!(wave = k + 1, "no WebSocket left: the drain ends early");
                break;
            }
            let at = start + period.mul_f64((k + 1) as f64 / WAVES as f64);
            tokio::select! {
                () = sleep_until(at) => {}
                () = stop.cancelled() => return,
            }
            wave.cancel();
            tracing::debug!(
                wave = k + 1,
                of = WAVES,
                open = metrics.connections.load(Relaxed),
                "drain wave"
            );
        }
        stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waves_are_spread_over_the_period() {
        let stop = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let drain = Arc::new(Drain::new(&stop));
        let tokens: Vec<_> = (0..2 * WAVES).map(|_| drain.join()).collect();
        let readiness = Arc::new(Readiness::default());
        let metrics = Arc::new(Metrics::default());
        metrics.connections.store(2 * WAVES as i64, Relaxed);
        let task = tokio::spawn(drain.clone().run(
            Duration::from_secs(10),
            readiness.clone(),
            metrics,
            shutdown.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!readiness.is_draining() && tokens.iter().all(|t| !t.is_cancelled()));
        shutdown.cancel();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(readiness.is_draining());
        let closed =
            |tokens: &[CancellationToken]| tokens.iter().filter(|t| t.is_cancelled()).count();
        assert_eq!(closed(&tokens), 0, "nothing closes before the first wave");
        for k in 1..=WAVES {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(closed(&tokens), 2 * k, "two connections per wave");
            // Connection i is in wave i % WAVES.
            assert!(tokens[k - 1].is_cancelled() && tokens[k - 1 + WAVES].is_cancelled());
        }
        task.await.expect("drain task");
        assert!(stop.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_without_connections_ends_at_once() {
        let stop = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let drain = Arc::new(Drain::new(&stop));
        let task = tokio::spawn(drain.run(
            Duration::from_secs(10),
            Arc::new(Readiness::default()),
            Arc::new(Metrics::default()),
            shutdown.clone(),
            stop.clone(),
        ));
        shutdown.cancel();
        let started = Instant::now();
        task.await.expect("drain task");
        assert!(stop.is_cancelled());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_without_drain_closes_everything_at_once() {
        let stop = CancellationToken::new();
        let drain = Arc::new(Drain::new(&stop));
        let token = drain.join();
        let task = tokio::spawn(drain.clone().run(
            Duration::from_secs(10),
            Arc::new(Readiness::default()),
            Arc::new(Metrics::default()),
            CancellationToken::new(),
            stop.clone(),
        ));
        stop.cancel();
        task.await.expect("drain task");
        assert!(token.is_cancelled());
    }
}
