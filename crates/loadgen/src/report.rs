//! The JSON report printed on stdout: a contract with the benchmark scripts (keys are only
//! ever added, never renamed). Figures that cannot be measured in a run are `null`: the
//! latency percentiles and receipt-based rates when nothing was received, server figures
//! without `--server-pid`.

use serde::Serialize;

use crate::cli::Config;
use crate::conn::ConnTally;
use crate::publish::Outcome;
use crate::run::{Sample, SetupCpu};
use crate::stats::Totals;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) target_url: String,
    pub(crate) query: &'static str,
    pub(crate) connections: u64,
    pub(crate) subs_per_conn: u64,
    pub(crate) subscriptions: u64,
    pub(crate) distinct_queries: u64,
    pub(crate) rooms: u64,
    pub(crate) selectivity: f64,
    pub(crate) object_bytes: usize,
    pub(crate) stalled_connections: u64,
    pub(crate) setup_seconds: f64,
    pub(crate) connect_failures: u64,
    pub(crate) events_published: u64,
    pub(crate) publish_seconds: f64,
    pub(crate) publish_rate: f64,
    pub(crate) publish_max_lag_ms: f64,
    /// CPU time of the publisher thread alone (part of the generator's).
    pub(crate) publisher_cpu_seconds: Option<f64>,
    pub(crate) expected_deliveries: u64,
    pub(crate) deliveries: u64,
    pub(crate) first_publish_to_last_receipt_seconds: Option<f64>,
    pub(crate) delivery_rate: Option<f64>,
    pub(crate) event_rate: Option<f64>,
    pub(crate) latency_ms: Latency,
    pub(crate) oracle: Oracle,
    pub(crate) stalled_disconnected: u64,
    pub(crate) server: Server,
    pub(crate) generator: Generator,
    pub(crate) ok: bool,
    // Additions beyond the contract.
    pub(crate) run_id: String,
    pub(crate) class: String,
    pub(crate) app_id: String,
    pub(crate) rate_requested: f64,
    pub(crate) idle_seconds: Option<f64>,
    pub(crate) threads: usize,
    /// Failed setup attempts that a retry made good.
    pub(crate) connect_retries: u64,
    /// Subscriptions judged by the oracle (neither stalled nor on failed connections).
    pub(crate) judged_subscriptions: u64,
    /// Seconds from the end of publishing to the end of the drain.
    pub(crate) drain_seconds: f64,
    /// Whether every judged subscription got all its events before the drain ended.
    pub(crate) drain_complete: bool,
    /// With selectivity zero: seconds from the first publish until the server's CPU went
    /// quiet (it had processed every event), and events_published / that span.
    pub(crate) first_publish_to_server_quiet_seconds: Option<f64>,
    pub(crate) quiet_event_rate: Option<f64>,
    /// Events Redis delivered to no subscriber (PUBLISH answered 0): the server was not
    /// subscribed to `<app-id>afterSave` then (wrong --app-id, or its Redis link was down).
    pub(crate) events_without_subscriber: u64,
    /// CPU seconds of the server and of the generator during setup (connect + subscribe of
    /// every connection): the generator near setup_seconds means the set-up time is the
    /// generator's, not the server's.
    pub(crate) setup_server_cpu_seconds: Option<f64>,
    pub(crate) setup_generator_cpu_seconds: Option<f64>,
    /// With --canary-every: the period K of the canary events.
    pub(crate) canary_every: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: Option<f64>,
    pub(crate) p90: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) p999: Option<f64>,
    pub(crate) max: Option<f64>,
    pub(crate) count: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Oracle {
    pub(crate) missing: u64,
    pub(crate) duplicate: u64,
    pub(crate) unexpected: u64,
    pub(crate) wrong_op: u64,
    pub(crate) errors: u64,
    pub(crate) disconnected: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Server {
    pub(crate) pid: Option<u32>,
    pub(crate) rss_kb_before: Option<u64>,
    pub(crate) rss_kb_after: Option<u64>,
    pub(crate) rss_kb_peak: Option<u64>,
    pub(crate) pss_kb_before: Option<u64>,
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) rss_kb_baseline: Option<u64>,
    pub(crate) pss_kb_after: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Generator {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) rss_kb: Option<u64>,
    pub(crate) rss_kb_peak: Option<u64>,
}

/// Everything the report is computed from.
#[derive(Debug)]
pub(crate) struct Inputs<'a> {
    pub(crate) config: &'a Config,
    pub(crate) setup_seconds: f64,
    pub(crate) setup_cpu: SetupCpu,
    pub(crate) connect_failures: u64,
    pub(crate) connect_retries: u64,
    pub(crate) stalled_connections: u64,
    pub(crate) stalled_disconnected: u64,
    pub(crate) active_subscriptions: u64,
    pub(crate) publish: Option<Outcome>,
    pub(crate) drain_seconds: f64,
    pub(crate) server_quiet_ns: Option<u64>,
    pub(crate) tallies: &'a [ConnTally],
    pub(crate) totals: Totals,
    pub(crate) server_before: Option<Sample>,
    pub(crate) server_after: Option<Sample>,
    pub(crate) server_peak_kb: Option<u64>,
    pub(crate) me_before: Sample,
    pub(crate) me_after: Sample,
    pub(crate) me_peak_kb: Option<u64>,
}

/// `x` rounded to 3 decimals; non-finite values become `None` (JSON null).
fn round3(x: f64) -> Option<f64> {
    x.is_finite().then(|| (x * 1000.0).round() / 1000.0)
}

fn ratio(numerator: f64, seconds: f64) -> Option<f64> {
    (seconds > 0.0)
        .then(|| numerator / seconds)
        .and_then(round3)
}

fn cpu_delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    round3(after? - before?)
}

pub(crate) fn build(inputs: Inputs<'_>) -> Report {
    let config = inputs.config;
    let workload = &config.workload;
    let mut oracle = Oracle {
        missing: 0,
        duplicate: 0,
        unexpected: 0,
        wrong_op: 0,
        errors: 0,
        disconnected: 0,
    };
    let mut expected = 0;
    let mut unique = 0;
    for t in inputs.tallies {
        expected += t.expected;
        unique += t.unique;
        oracle.missing += t.missing;
        oracle.duplicate += t.duplicate;
        oracle.unexpected += t.unexpected;
        oracle.wrong_op += t.wrong_op;
        oracle.errors += t.errors;
        oracle.disconnected += u64::from(t.disconnected);
    }

    let hist = &inputs.totals.latency_us;
    let quantile = |q: f64| {
        (!hist.is_empty())
            .then(|| round3(hist.value_at_quantile(q) as f64 / 1000.0))
            .flatten()
    };
    let latency_ms = Latency {
        p50: quantile(0.5),
        p90: quantile(0.9),
        p99: quantile(0.99),
        p999: quantile(0.999),
        max: (!hist.is_empty())
            .then(|| round3(hist.max() as f64 / 1000.0))
            .flatten(),
        count: hist.len(),
    };

    let (published, publish_seconds, max_lag_ms, start_ns) = match &inputs.publish {
        Some(o) => (
            o.published,
            o.elapsed.as_secs_f64(),
            o.max_lag.as_secs_f64() * 1000.0,
            Some(o.start_ns),
        ),
        None => (0, 0.0, 0.0, None),
    };
    let deliveries = inputs.totals.deliveries;
    let span = match (start_ns, inputs.totals.last_receipt_ns) {
        (Some(start), last) if last > start => Some((last - start) as f64 / 1e9),
        _ => None,
    };
    let quiet_span = match (start_ns, inputs.server_quiet_ns) {
        (Some(start), Some(quiet)) if quiet > start => Some((quiet - start) as f64 / 1e9),
        _ => None,
    };

    let before = inputs.server_before;
    let after = inputs.server_after;
    let server = Server {
        pid: config.server_pid,
        rss_kb_before: before.and_then(|s| s.rss_kb),
        rss_kb_after: after.and_then(|s| s.rss_kb),
        rss_kb_peak: [
            before.and_then(|s| s.rss_kb),
            after.and_then(|s| s.rss_kb),
            inputs.server_peak_kb,
        ]
        .into_iter()
        .flatten()
        .max(),
        pss_kb_before: before.and_then(|s| s.pss_kb),
        cpu_seconds: cpu_delta(
            before.and_then(|s| s.cpu_seconds),
            after.and_then(|s| s.cpu_seconds),
        ),
        rss_kb_baseline: config.server_rss_baseline_kb,
        pss_kb_after: after.and_then(|s| s.pss_kb),
    };
    let generator = Generator {
        cpu_seconds: cpu_delta(inputs.me_before.cpu_seconds, inputs.me_after.cpu_seconds),
        rss_kb: inputs.me_after.rss_kb,
        // VmHWM is maintained lazily by the kernel and can trail VmRSS.
        rss_kb_peak: inputs.me_peak_kb.max(inputs.me_after.rss_kb),
    };

    let ok = oracle.missing == 0
        && oracle.duplicate == 0
        && oracle.unexpected == 0
        && oracle.wrong_op == 0
        && oracle.errors == 0
        && oracle.disconnected == 0
        && inputs.connect_failures == 0;

    let subscriptions = config.subscriptions();
    Report {
        target_url: config.url.clone(),
        query: workload.query.name(),
        connections: config.connections,
        subs_per_conn: config.subs_per_conn,
        subscriptions,
        distinct_queries: workload.distinct_queries(subscriptions),
        rooms: workload.rooms,
        selectivity: workload.selectivity_value(),
        object_bytes: workload.object_bytes,
        stalled_connections: inputs.stalled_connections,
        setup_seconds: round3(inputs.setup_seconds).unwrap_or(0.0),
        connect_failures: inputs.connect_failures,
        events_published: published,
        publish_seconds: round3(publish_seconds).unwrap_or(0.0),
        publish_rate: ratio(published as f64, publish_seconds).unwrap_or(0.0),
        publish_max_lag_ms: round3(max_lag_ms).unwrap_or(0.0),
        publisher_cpu_seconds: inputs
            .publish
            .as_ref()
            .and_then(|o| o.cpu_seconds)
            .and_then(round3),
        expected_deliveries: expected,
        deliveries,
        first_publish_to_last_receipt_seconds: span.and_then(round3),
        delivery_rate: span.and_then(|s| ratio(deliveries as f64, s)),
        event_rate: span.and_then(|s| ratio(published as f64, s)),
        latency_ms,
        oracle,
        stalled_disconnected: inputs.stalled_disconnected,
        server,
        generator,
        ok,
        run_id: workload.run_id.clone(),
        class: workload.class.clone(),
        app_id: config.app_id.clone(),
        rate_requested: config.rate,
        idle_seconds: config.idle.map(|d| d.as_secs_f64()),
        threads: config.threads,
        connect_retries: inputs.connect_retries,
        judged_subscriptions: inputs.active_subscriptions,
        drain_seconds: round3(inputs.drain_seconds).unwrap_or(0.0),
        drain_complete: unique >= expected,
        first_publish_to_server_quiet_seconds: quiet_span.and_then(round3),
        quiet_event_rate: quiet_span.and_then(|s| ratio(published as f64, s)),
        events_without_subscriber: inputs.publish.as_ref().map_or(0, |o| o.unheard),
        setup_server_cpu_seconds: inputs.setup_cpu.server.and_then(round3),
        setup_generator_cpu_seconds: inputs.setup_cpu.generator.and_then(round3),
        canary_every: workload.canary_every,
    }
}
