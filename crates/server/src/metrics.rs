//! Counters and gauges, rendered in the Prometheus text format at `GET /metrics`.
//!
//! Plain atomics: every hot-path update is one relaxed `fetch_add`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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

const OPS: [EventOp; 5] = [
    EventOp::Create,
    EventOp::Enter,
    EventOp::Update,
    EventOp::Leave,
    EventOp::Delete,
];

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
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
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
    /// (last event).
    pub source_lag_ms: AtomicU64,
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
    /// Milliseconds between the source's commit time of the latest event and its arrival.
    pub source_event_age_ms: AtomicU64,
    /// Times the source lost its history and clients were told to reconnect.
    pub resyncs: AtomicU64,
}

impl Metrics {
    /// Counts one event frame queued for a client.
    pub fn delivered(&self, op: EventOp, bytes: usize) {
        self.deliveries[op_index(op)].fetch_add(1, Relaxed);
        self.delivered_bytes.fetch_add(bytes as u64, Relaxed);
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
            "livequery_connections",
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
            "livequery_connections_total",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed),
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
        let lag = self.source_lag_ms.load(Relaxed) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP livequery_source_lag_seconds Time the last event waited between the source and dispatch.\n# TYPE livequery_source_lag_seconds gauge\nlivequery_source_lag_seconds {lag}"
        );
        let age = self.source_event_age_ms.load(Relaxed) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP livequery_source_event_age_seconds Age of the latest event when it arrived (source commit time to receipt).\n# TYPE livequery_source_event_age_seconds gauge\nlivequery_source_event_age_seconds {age}"
        );
        out
    }
}
