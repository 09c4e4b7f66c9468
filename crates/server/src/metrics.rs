//! Counters, gauges and histograms, rendered in the Prometheus text format at
//! `GET /metrics`, with the `process_*` figures of [`crate::process`] and
//! `livequery_build_info`.
//!
//! Plain atomics: every hot-path update is one relaxed `fetch_add` (a histogram
//! observation is three: its bucket, its sum, its count). No gauge shares a name with a
//! counter's family (`foo_total` is family `foo` in OpenMetrics), so strict parsers accept
//! the exposition.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use livequery_protocol::EventOp;

/// Why a frame or a connection was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The client's outbound queue was full.
    SlowConsumerQueue,
    /// A write to the client blocked past `write_timeout`.
    SlowConsumerWrite,
    /// No pong before the next ping.
    PingTimeout,
    /// No `connect` within `connect_timeout`.
    ConnectTimeout,
    /// An inbound frame exceeded `max_message_bytes`.
    MessageTooLarge,
    /// `max_connections` reached (HTTP 503 on upgrade).
    ConnectionLimit,
    /// `max_subscriptions_per_connection` reached.
    SubscriptionLimit,
    /// An event was not delivered because class-level permissions deny the subscriber.
    ClpDenied,
    /// An event was not delivered because the subscription's `where` or `watch` reads a
    /// field hidden from its reader on the event's objects.
    HiddenField,
    /// An event was not delivered because the subscription's subqueries were resolved for
    /// an identity its reader no longer has (logout, role change), or a subquery's set
    /// outgrew `mongodb.max_subquery_results`.
    StaleSubqueries,
    /// A subscription was refused: the connection's subscriptions would hold more than
    /// `limits.max_subscription_bytes`.
    SubscriptionBudget,
}

impl DropReason {
    const ALL: [Self; 11] = [
        Self::SlowConsumerQueue,
        Self::SlowConsumerWrite,
        Self::PingTimeout,
        Self::ConnectTimeout,
        Self::MessageTooLarge,
        Self::ConnectionLimit,
        Self::SubscriptionLimit,
        Self::ClpDenied,
        Self::HiddenField,
        Self::StaleSubqueries,
        Self::SubscriptionBudget,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::SlowConsumerQueue => "slow_consumer_queue",
            Self::SlowConsumerWrite => "slow_consumer_write",
            Self::PingTimeout => "ping_timeout",
            Self::ConnectTimeout => "connect_timeout",
            Self::MessageTooLarge => "message_too_large",
            Self::ConnectionLimit => "connection_limit",
            Self::SubscriptionLimit => "subscription_limit",
            Self::ClpDenied => "clp_denied",
            Self::HiddenField => "hidden_field",
            Self::StaleSubqueries => "stale_subqueries",
            Self::SubscriptionBudget => "subscription_budget",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds: 0.5 ms to 10 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The same bounds in microseconds, for the comparison on the hot path.
const BUCKETS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets (0.5 ms to 10 s): lock-free, one relaxed
/// `fetch_add` per bucket, sum and count per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is beyond the last bound.
    buckets: [AtomicU64; 15],
    /// Sum of the observations, in microseconds.
    sum_micros: AtomicU64,
    /// Number of observations.
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        self.observe_many(elapsed, 1);
    }

    /// Records `n` observations of the same value (a batch of frames written at once).
    pub fn observe_many(&self, elapsed: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(n, Relaxed);
        self.sum_micros.fetch_add(micros.saturating_mul(n), Relaxed);
        self.count.fetch_add(n, Relaxed);
    }

    /// Records, for each of `starts`, the time from it to `now`: one atomic update per
    /// bucket touched, not per observation (a written batch of frames).
    pub fn observe_since<'s>(
        &self,
        starts: impl IntoIterator<Item = &'s std::time::Instant>,
        now: std::time::Instant,
    ) {
        let mut buckets = [0u64; BUCKETS_MICROS.len() + 1];
        let mut sum = 0u64;
        let mut count = 0u64;
        for start in starts {
            let micros = u64::try_from(now.saturating_duration_since(*start).as_micros())
                .unwrap_or(u64::MAX);
            buckets[BUCKETS_MICROS.partition_point(|&bound| bound < micros)] += 1;
            sum = sum.saturating_add(micros);
            count += 1;
        }
        if count == 0 {
            return;
        }
        for (bucket, n) in self.buckets.iter().zip(buckets) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        self.sum_micros.fetch_add(sum, Relaxed);
        self.count.fetch_add(count, Relaxed);
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Writes the series of one labelled member of a family whose `# HELP`/`# TYPE` lines
    /// are already written.
    pub(crate) fn render_labelled(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}\n{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {cumulative}"
        );
    }

    /// Writes the family: cumulative `_bucket` lines (ending with `+Inf`), `_sum`, `_count`.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        // Read apart from the buckets: under concurrent updates `_count` may run ahead of
        // `+Inf` by a few; report the buckets' total so the family stays consistent.
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {sum}\n{name}_count {cumulative}"
        );
    }
}

const OPS: [EventOp; 5] = [
    EventOp::Create,
    EventOp::Enter,
    EventOp::Update,
    EventOp::Leave,
    EventOp::Delete,
];

/// Deliveries counted locally (per event) and added to [`Metrics`] at once.
#[derive(Debug, Default)]
pub struct DeliveryTally {
    frames: [u64; 5],
    bytes: u64,
}

impl DeliveryTally {
    /// Counts one frame queued for a client.
    pub fn add(&mut self, op: EventOp, bytes: usize) {
        self.frames[op_index(op)] += 1;
        self.bytes += bytes as u64;
    }
}

fn op_index(op: EventOp) -> usize {
    match op {
        EventOp::Create => 0,
        EventOp::Enter => 1,
        EventOp::Update => 2,
        EventOp::Leave => 3,
        EventOp::Delete => 4,
    }
}

/// All server metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections (`livequery_connections_open`).
    pub connections: AtomicI64,
    /// WebSocket connections accepted since start (`livequery_connections_accepted_total`).
    pub connections_accepted: AtomicU64,
    /// Connected clients (sent `connect`).
    pub clients: AtomicI64,
    /// Live subscriptions.
    pub subscriptions: AtomicI64,
    /// Distinct queries (subscriptions sharing a query count once).
    pub distinct_queries: AtomicI64,
    /// Change events received from the source.
    pub events_in: AtomicU64,
    /// Auth changes (sessions, roles, schemas) received from the source.
    pub invalidations_in: AtomicU64,
    deliveries: [AtomicU64; 5],
    /// Bytes of event frames queued for clients.
    pub delivered_bytes: AtomicU64,
    /// Error frames sent.
    pub error_frames: AtomicU64,
    drops: [AtomicU64; 11],
    /// Inbound frames that were not JSON (ignored).
    pub invalid_json: AtomicU64,
    /// Milliseconds between an event's arrival from the source and the start of its dispatch
    /// (last event; `livequery_dispatch_lag_seconds`).
    pub dispatch_lag_ms: AtomicU64,
    /// Whether the source is connected (1) or not (0).
    pub source_connected: AtomicI64,
    /// Times the source (re)connected.
    pub source_connects: AtomicU64,
    /// Identity and permission lookups that failed (backend unreachable, timeout).
    pub auth_lookup_failures: AtomicU64,
    /// Session-token lookups made (coalesced, cached, refreshed).
    pub auth_lookups: AtomicU64,
    /// Candidate queries evaluated by the fan-out.
    pub candidates_evaluated: AtomicU64,
    /// Time from the source's own timestamp of an event (its commit time) to its receipt,
    /// for sources that know it (`livequery_source_lag_seconds`).
    pub source_lag: Histogram,
    /// Time from an event's receipt to the write of its frame to a client's socket, per
    /// delivery (`livequery_delivery_latency_seconds`).
    pub delivery_latency: Histogram,
    /// Times the source lost its history and clients were told to reconnect.
    pub resyncs: AtomicU64,
    /// Cloud Code hook calls.
    pub hooks: crate::hooks::HookMetrics,
}

impl Metrics {
    /// Counts one event frame queued for a client.
    pub fn delivered(&self, op: EventOp, bytes: usize) {
        self.deliveries[op_index(op)].fetch_add(1, Relaxed);
        self.delivered_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts the deliveries tallied while dispatching one event.
    pub fn delivered_all(&self, tally: &DeliveryTally) {
        for (counter, &count) in self.deliveries.iter().zip(&tally.frames) {
            if count > 0 {
                counter.fetch_add(count, Relaxed);
            }
        }
        if tally.bytes > 0 {
            self.delivered_bytes.fetch_add(tally.bytes, Relaxed);
        }
    }

    /// Counts a drop.
    pub fn dropped(&self, reason: DropReason) {
        let index = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops[index].fetch_add(1, Relaxed);
    }

    /// Reads a drop counter.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let index = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops[index].load(Relaxed)
    }

    /// Reads a delivery counter.
    pub fn deliveries(&self, op: EventOp) -> u64 {
        self.deliveries[op_index(op)].load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "livequery_connections_open",
            "Open WebSocket connections.",
            self.connections.load(Relaxed),
        );
        gauge(
            "livequery_clients",
            "Connected clients (sent connect).",
            self.clients.load(Relaxed),
        );
        gauge(
            "livequery_subscriptions",
            "Live subscriptions.",
            self.subscriptions.load(Relaxed),
        );
        gauge(
            "livequery_distinct_queries",
            "Distinct queries evaluated per event.",
            self.distinct_queries.load(Relaxed),
        );
        gauge(
            "livequery_source_connected",
            "1 when the change source is connected.",
            self.source_connected.load(Relaxed),
        );
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "livequery_connections_accepted_total",
            "WebSocket connections accepted.",
            self.connections_accepted.load(Relaxed),
        );
        counter(
            "livequery_events_in_total",
            "Change events received from the source.",
            self.events_in.load(Relaxed),
        );
        counter(
            "livequery_invalidations_in_total",
            "Auth changes (sessions, roles, schemas) received from the source.",
            self.invalidations_in.load(Relaxed),
        );
        counter(
            "livequery_delivered_bytes_total",
            "Bytes of event frames queued for clients.",
            self.delivered_bytes.load(Relaxed),
        );
        counter(
            "livequery_error_frames_total",
            "Error frames sent.",
            self.error_frames.load(Relaxed),
        );
        counter(
            "livequery_invalid_json_total",
            "Inbound frames that were not JSON.",
            self.invalid_json.load(Relaxed),
        );
        counter(
            "livequery_source_connects_total",
            "Times the source connected.",
            self.source_connects.load(Relaxed),
        );
        counter(
            "livequery_source_resyncs_total",
            "Times the source lost events (change stream history gone, collection dropped) and told subscribers to reconnect.",
            self.resyncs.load(Relaxed),
        );
        counter(
            "livequery_auth_lookups_total",
            "Session-token lookups made.",
            self.auth_lookups.load(Relaxed),
        );
        counter(
            "livequery_auth_lookup_failures_total",
            "Identity and permission lookups that failed.",
            self.auth_lookup_failures.load(Relaxed),
        );
        counter(
            "livequery_candidates_evaluated_total",
            "Candidate queries evaluated.",
            self.candidates_evaluated.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP livequery_deliveries_total Event frames queued for clients, by op.\n# TYPE livequery_deliveries_total counter"
        );
        for op in OPS {
            let _ = writeln!(
                out,
                "livequery_deliveries_total{{op=\"{}\"}} {}",
                op.as_str(),
                self.deliveries(op)
            );
        }
        let _ = writeln!(
            out,
            "# HELP livequery_drops_total Frames or connections dropped, by reason.\n# TYPE livequery_drops_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "livequery_drops_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.drops(reason)
            );
        }
        let lag = self.dispatch_lag_ms.load(Relaxed) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP livequery_dispatch_lag_seconds Time the last event waited between its receipt and its dispatch.\n# TYPE livequery_dispatch_lag_seconds gauge\nlivequery_dispatch_lag_seconds {lag}"
        );
        self.source_lag.render(
            &mut out,
            "livequery_source_lag_seconds",
            "Time from an event's own timestamp at the source (its commit time) to its receipt, for sources that report one.",
        );
        self.delivery_latency.render(
            &mut out,
            "livequery_delivery_latency_seconds",
            "Time from an event's receipt from the source to the write of its frame to a client's socket, per delivery.",
        );
        self.hooks.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP livequery_build_info The running build (value 1).\n# TYPE livequery_build_info gauge\nlivequery_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        crate::process::render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn rendered(histogram: &Histogram) -> String {
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        out
    }

    #[test]
    fn tallied_deliveries_add_up_like_single_ones() {
        let metrics = Metrics::default();
        metrics.delivered(EventOp::Update, 10);
        let mut tally = DeliveryTally::default();
        tally.add(EventOp::Create, 100);
        tally.add(EventOp::Create, 50);
        tally.add(EventOp::Update, 7);
        metrics.delivered_all(&tally);
        metrics.delivered_all(&DeliveryTally::default());
        assert_eq!(metrics.deliveries(EventOp::Create), 2);
        assert_eq!(metrics.deliveries(EventOp::Update), 2);
        assert_eq!(metrics.deliveries(EventOp::Delete), 0);
        assert_eq!(metrics.delivered_bytes.load(Relaxed), 167);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500)); // le 0.0005 (inclusive)
        histogram.observe(Duration::from_micros(501)); // le 0.001
        histogram.observe(Duration::from_secs(60)); // +Inf only
        let now = Instant::now();
        let earlier = now.checked_sub(Duration::from_millis(30)).unwrap_or(now);
        histogram.observe_since(&[earlier, earlier], now); // le 0.05, twice
        histogram.observe_since(&[], now);
        assert_eq!(histogram.count(), 5);
        let text = rendered(&histogram);
        for line in [
            "# TYPE h histogram",
            "h_bucket{le=\"0.0005\"} 1",
            "h_bucket{le=\"0.001\"} 2",
            "h_bucket{le=\"0.025\"} 2",
            "h_bucket{le=\"0.05\"} 4",
            "h_bucket{le=\"10\"} 4",
            "h_bucket{le=\"+Inf\"} 5",
            "h_count 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("h_sum "))
            .and_then(|v| v.parse().ok())
            .expect("h_sum");
        assert!((sum - (60.0 + 0.060 + 0.001001)).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn no_gauge_shares_a_counter_family() {
        let text = Metrics::default().render();
        let types: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        for (name, kind) in &types {
            if *kind == "counter" {
                let family = name.strip_suffix("_total").expect("counters end in _total");
                assert!(
                    types.iter().all(|(other, _)| *other != family),
                    "{family} clashes with {name}"
                );
            }
        }
        assert!(text.contains("livequery_connections_open 0"));
        assert!(text.contains("livequery_connections_accepted_total 0"));
    }
}
