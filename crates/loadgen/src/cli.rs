//! Command line: raw `clap` arguments, then a validated [`Config`].
//!
//! The flags and the JSON report are a contract with the benchmark scripts: add, never
//! rename.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::{Args, Parser, Subcommand};

use crate::target;
use crate::workload::{QueryFamily, Selectivity, Workload};

/// Load generator and correctness oracle for Parse LiveQuery servers.
///
/// Opens C WebSocket connections with S subscriptions each to a LiveQuery server (ours or
/// parse-server's own), publishes M afterSave events of new objects to Redis exactly as
/// parse-server does, and checks that every subscription receives exactly the events it
/// must, measuring latency (receipt − scheduled publish time) on the way. Prints one JSON
/// report on stdout; logs go to stderr (RUST_LOG, default info).
///
/// Exit status: 0 when the run completed, even when the oracle found errors (see "ok" in the
/// report); 1 on setup errors (Redis unreachable, setup timeout, publish failure); 2 on
/// usage errors.
#[derive(Debug, Parser)]
#[command(name = "lq-loadgen", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Set up connections and subscriptions, publish, drain, report.
    ///
    /// Phases: (1) setup: connect + subscribe every connection (the first
    /// round(stall-fraction × C) then stop reading); (2) settle, then sample the server's RSS,
    /// PSS and CPU; (3) publish M events open-loop at --rate (or hold idle for --idle-seconds);
    /// (4) drain until every subscription has its events or --drain-timeout passes without
    /// any receipt while the server (--server-pid) is idle; (5) print the JSON report.
    ///
    /// Workload: event i is a new object of --class with room(i) = i mod R (-1 with
    /// --selectivity zero, 0 for every K-th event with --canary-every K), seq i, sentAt
    /// (scheduled publish time, ns since the epoch), score (2 room(i) + 0.5 for the range
    /// family) and a body padding the object to --object-bytes. Subscription j = conn × S + k
    /// subscribes to {} (broadcast), {room: j mod R, tag: {$ne: j}} (distinct) or
    /// {score: {$gte: 2r, $lt: 2r + 1}} with r = j mod R (range).
    #[command(after_long_help = REPORT_HELP)]
    Run(Box<RunArgs>),
    /// The loopback ceiling writer: a minimal server for `where: {}` subscriptions that
    /// writes each event's pre-encoded frame to every client (no matching, one core). Runs
    /// until SIGINT or SIGTERM; prints `listening ADDR` once ready.
    Ceiling(crate::ceiling::CeilingArgs),
}

const REPORT_HELP: &str = "\
Report (one JSON object on stdout; keys are only ever added):
  target_url query connections subs_per_conn subscriptions distinct_queries rooms
  selectivity (0, 1/R or 1) object_bytes stalled_connections setup_seconds connect_failures
  events_published publish_seconds publish_rate publish_max_lag_ms expected_deliveries
  deliveries first_publish_to_last_receipt_seconds delivery_rate event_rate
  latency_ms {p50 p90 p99 p999 max count}: receipt − scheduled sentAt, judged connections only
  oracle {missing duplicate unexpected wrong_op errors disconnected}
  stalled_disconnected: stalled connections the server closed or sent an error
  server {pid rss_kb_before rss_kb_after rss_kb_peak pss_kb_before cpu_seconds rss_kb_baseline
          pss_kb_after}: before = after --settle-seconds; cpu = during publish + drain
  generator {cpu_seconds rss_kb rss_kb_peak}
  ok: no missing/duplicate/unexpected/wrong_op/errors/disconnected and no connect failure
  and: run_id class app_id rate_requested idle_seconds threads connect_retries
  judged_subscriptions drain_seconds drain_complete first_publish_to_server_quiet_seconds
  quiet_event_rate (selectivity zero: the server's CPU going quiet ends the drain)
  events_without_subscriber (PUBLISH reached no subscriber: wrong --app-id or Redis link down)
  setup_server_cpu_seconds setup_generator_cpu_seconds (CPU time spent during setup)
  canary_every
Figures that cannot be measured are null: latencies and receipt-based rates when nothing
was received, server figures without --server-pid (which must be the server process itself,
not a wrapper).

Redis disconnects a pub/sub subscriber whose output buffer exceeds its
client-output-buffer-limit (pubsub 32mb 8mb 60 by default): for heavy runs start Redis with
--client-output-buffer-limit 'pubsub 0 0 0' so both servers see every event.";

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    // --- target ---
    /// WebSocket URL of the LiveQuery server (ws:// on 127.0.0.0/8 or localhost only).
    #[arg(long, value_name = "URL", default_value = "ws://127.0.0.1:1337/")]
    pub(crate) url: String,
    /// Redis the server listens to (redis:// on 127.0.0.0/8 or localhost only).
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis: String,
    /// Parse application id: sent on connect and used as the Redis channel prefix.
    #[arg(long, default_value = "myAppId")]
    pub(crate) app_id: String,
    /// javascriptKey sent on connect (omitted when not given).
    #[arg(long)]
    pub(crate) js_key: Option<String>,
    /// Class of the published objects and of the subscriptions.
    #[arg(long, default_value = "LQBench")]
    pub(crate) class: String,

    // --- workload ---
    /// C: WebSocket connections (each needs one file descriptor).
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: u64,
    /// S: subscriptions per connection.
    #[arg(long, default_value_t = 1)]
    pub(crate) subs_per_conn: u64,
    /// Query family.
    #[arg(long, value_enum, default_value_t = QueryFamily::Distinct)]
    pub(crate) query: QueryFamily,
    /// R: rooms; a distinct subscription receives 1/R of the events.
    #[arg(long, default_value_t = 1)]
    pub(crate) rooms: u64,
    /// `rooms`: event i goes to room i mod R; `zero`: every event to room -1, which no
    /// subscription matches (distinct and range only).
    #[arg(long, value_enum, default_value_t = Selectivity::Rooms)]
    pub(crate) selectivity: Selectivity,
    /// K (with --selectivity zero): every K-th event (i mod K = 0) goes to room 0 instead, so
    /// the subscriptions of room 0 are canaries receiving 1/K of the feed (with R equal to
    /// the number of subscriptions, subscription 0 alone); 0 = none.
    #[arg(long, default_value_t = 0)]
    pub(crate) canary_every: u64,
    /// Size of each published currentParseObject JSON, in bytes (± a few).
    #[arg(long, default_value_t = 256)]
    pub(crate) object_bytes: usize,
    /// M: events to publish.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) events: u64,
    /// P: publish rate in events/s, open loop; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,
    /// Hold the connections idle for T seconds instead of publishing (forces M = 0).
    #[arg(long, value_name = "T", conflicts_with = "events")]
    pub(crate) idle_seconds: Option<f64>,
    /// Makes objectIds unique per run (`b<run-id><i>`); letters and digits, default random.
    #[arg(long)]
    pub(crate) run_id: Option<String>,

    // --- setup ---
    /// Local source addresses 127.0.0.2 .. 127.0.0.(1+N), used round-robin.
    #[arg(long, default_value_t = 29)]
    pub(crate) source_ips: u8,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 512)]
    pub(crate) connect_concurrency: usize,
    /// Limit for one attempt (TCP + WebSocket + connect + subscribes), in seconds; a failed
    /// attempt is retried up to 3 times.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) connect_timeout: f64,
    /// Give up (exit 1) when setup takes longer than this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) setup_timeout: f64,
    /// Fraction F of connections that stop reading after subscribing (the first round(F × C));
    /// they are left out of the oracle and latency.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) stall_fraction: f64,

    // --- phases ---
    /// Pause between setup and publishing, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle_seconds: f64,
    /// Stop draining once no event arrived, and the server's CPU was quiet, for this many
    /// seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) drain_timeout: f64,
    /// Stop draining at the latest this many seconds after the last publish.
    #[arg(long, default_value_t = 120.0)]
    pub(crate) max_drain: f64,

    // --- measurement ---
    /// The server's pid, to sample its RSS, PSS and CPU time from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Reported as server.rss_kb_baseline (e.g. the server's RSS with no connections).
    #[arg(long)]
    pub(crate) server_rss_baseline_kb: Option<u64>,

    // --- generator ---
    /// Tokio worker threads receiving frames (the publisher has its own thread).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Bytes read from a connection at most per `recv`, into a buffer the connections of a
    /// receiving thread share (not resident per connection).
    #[arg(long, default_value_t = 65_536)]
    pub(crate) read_buffer_bytes: usize,
}

/// A validated run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) target: SocketAddrV4,
    pub(crate) redis: String,
    pub(crate) app_id: String,
    pub(crate) js_key: Option<String>,
    pub(crate) workload: Workload,
    pub(crate) connections: u64,
    pub(crate) subs_per_conn: u64,
    pub(crate) rate: f64,
    pub(crate) idle: Option<Duration>,
    pub(crate) source_ips: Vec<Ipv4Addr>,
    pub(crate) connect_concurrency: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) setup_timeout: Duration,
    pub(crate) stalled: u64,
    pub(crate) settle: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_drain: Duration,
    pub(crate) server_pid: Option<u32>,
    pub(crate) server_rss_baseline_kb: Option<u64>,
    pub(crate) threads: usize,
    pub(crate) read_buffer_bytes: usize,
}

impl Config {
    pub(crate) fn channel(&self) -> String {
        format!("{}afterSave", self.app_id)
    }

    pub(crate) fn subscriptions(&self) -> u64 {
        self.connections * self.subs_per_conn
    }
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    ensure!(
        value.is_finite() && value >= 0.0,
        "--{name} must be a number of seconds ≥ 0 (got {value})"
    );
    Duration::try_from_secs_f64(value).with_context(|| format!("--{name} is too large"))
}

impl RunArgs {
    /// Checks every argument and derives the run's configuration.
    pub(crate) fn validate(self) -> anyhow::Result<Config> {
        let target = target::websocket_target(&self.url)?;
        target::check_redis(&self.redis)?;
        ensure!(self.connections >= 1, "--connections must be ≥ 1");
        ensure!(self.subs_per_conn >= 1, "--subs-per-conn must be ≥ 1");
        ensure!(self.rooms >= 1, "--rooms must be ≥ 1");
        ensure!(
            self.connections.checked_mul(self.subs_per_conn).is_some(),
            "--connections × --subs-per-conn overflows"
        );
        ensure!(
            self.rate.is_finite() && self.rate >= 0.0,
            "--rate must be ≥ 0 events/s (0 = as fast as possible)"
        );
        ensure!(
            self.selectivity == Selectivity::Rooms || self.query != QueryFamily::Broadcast,
            "--selectivity zero needs --query distinct or range (a broadcast query matches every event)"
        );
        ensure!(
            self.canary_every == 0 || self.selectivity == Selectivity::Zero,
            "--canary-every needs --selectivity zero"
        );
        ensure!(
            (1..=253).contains(&self.source_ips),
            "--source-ips must be in 1..=253 (127.0.0.2 .. 127.0.0.254)"
        );
        ensure!(
            self.connect_concurrency >= 1,
            "--connect-concurrency must be ≥ 1"
        );
        ensure!(self.threads >= 1, "--threads must be ≥ 1");
        ensure!(
            self.read_buffer_bytes >= 256,
            "--read-buffer-bytes must be ≥ 256"
        );
        ensure!(
            (0.0..1.0).contains(&self.stall_fraction),
            "--stall-fraction must be in [0, 1)"
        );
        ensure!(!self.app_id.is_empty(), "--app-id must not be empty");
        ensure!(!self.class.is_empty(), "--class must not be empty");
        let run_id = match self.run_id {
            Some(id) => {
                ensure!(
                    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()),
                    "--run-id must be 1 to 20 letters or digits (it becomes part of objectIds)"
                );
                id
            }
            None => uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        };
        let idle = self
            .idle_seconds
            .map(|s| seconds("idle-seconds", s))
            .transpose()?;
        let events = if idle.is_some() { 0 } else { self.events };
        let connect_timeout = seconds("connect-timeout", self.connect_timeout)?;
        ensure!(!connect_timeout.is_zero(), "--connect-timeout must be > 0");
        let stalled = (self.stall_fraction * self.connections as f64).round() as u64;
        Ok(Config {
            url: self.url,
            target,
            redis: self.redis,
            app_id: self.app_id,
            js_key: self.js_key,
            workload: Workload {
                class: self.class,
                query: self.query,
                rooms: self.rooms,
                selectivity: self.selectivity,
                events,
                object_bytes: self.object_bytes,
                run_id,
                canary_every: self.canary_every,
            },
            connections: self.connections,
            subs_per_conn: self.subs_per_conn,
            rate: self.rate,
            idle,
            source_ips: (0..self.source_ips)
                .map(|n| Ipv4Addr::new(127, 0, 0, 2 + n))
                .collect(),
            connect_concurrency: self.connect_concurrency,
            connect_timeout,
            setup_timeout: seconds("setup-timeout", self.setup_timeout)?,
            stalled,
            settle: seconds("settle-seconds", self.settle_seconds)?,
            drain_timeout: seconds("drain-timeout", self.drain_timeout)?,
            max_drain: seconds("max-drain", self.max_drain)?,
            server_pid: self.server_pid,
            server_rss_baseline_kb: self.server_rss_baseline_kb,
            threads: self.threads,
            read_buffer_bytes: self.read_buffer_bytes,
        })
    }
}

/// Fails when the file-descriptor limit cannot hold the connections.
pub(crate) fn check_fd_limit(connections: u64) -> anyhow::Result<()> {
    let Some(limit) = crate::procstat::Proc::Me.soft_limit("Max open files") else {
        return Ok(());
    };
    // stdio, two runtimes (epoll + eventfd each), Redis, /proc reads.
    let needed = connections + 16;
    if needed > limit {
        bail!(
            "{connections} connections need about {needed} file descriptors; the limit is {limit} (ulimit -n)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(["lq-loadgen", "run"].iter().chain(args))?;
        let Command::Run(run) = cli.command else {
            panic!("not a run");
        };
        run.validate()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.connections, 1000);
        assert_eq!(c.subscriptions(), 1000);
        assert_eq!(c.workload.events, 10_000);
        assert_eq!(c.source_ips.len(), 29);
        assert_eq!(c.source_ips[28], Ipv4Addr::new(127, 0, 0, 30));
        assert_eq!(c.workload.run_id.len(), 8);
        assert_eq!(c.channel(), "myAppIdafterSave");
        assert_eq!(c.stalled, 0);
    }

    #[test]
    fn derived_values() {
        let c = parse(&[
            "--connections",
            "199",
            "--stall-fraction",
            "0.01",
            "--idle-seconds",
            "5",
            "--run-id",
            "abc9",
        ])
        .unwrap();
        assert_eq!(c.stalled, 2);
        assert_eq!(c.workload.events, 0);
        assert_eq!(c.idle, Some(Duration::from_secs(5)));
        assert_eq!(c.workload.run_id, "abc9");
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["--connections", "0"][..],
            &["--subs-per-conn", "0"],
            &["--rooms", "0"],
            &["--rate", "-1"],
            &["--rate", "NaN"],
            &["--query", "broadcast", "--selectivity", "zero"],
            &["--canary-every", "10"],
            &["--source-ips", "0"],
            &["--stall-fraction", "1"],
            &["--run-id", "a-b"],
            &["--url", "ws://10.0.0.1:1337/"],
            &["--redis", "redis://192.168.1.1:6379"],
            &["--settle-seconds", "-2"],
            &["--idle-seconds", "5", "--events", "10"],
            &["--threads", "0"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }
}
