//! The coordinator of `lq-loadgen run`: setup → settle → publish (or idle) → drain → report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::Config;
use crate::conn::{self, ConnTally, SetupReport, Shared};
use crate::procstat::Proc;
use crate::publish::{self, Publisher, now_ns};
use crate::report::{self, Report};
use crate::stats::Recorder;
use crate::wsclient::WsClient;

/// How often the drain loop checks progress.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How often the server's RSS is sampled for its peak.
const PEAK_POLL: Duration = Duration::from_millis(200);
/// Reading a stalled connection's backlog at the end: longest pause between frames and
/// total time for all of them.
const STALLED_IDLE: Duration = Duration::from_millis(500);
const STALLED_BUDGET: Duration = Duration::from_secs(5);
/// With no deliveries to wait for, the drain waits instead until the server's CPU time grows
/// by at most this many seconds per [`QUIET_WINDOW`] (it has worked through the backlog).
const QUIET_CPU: f64 = 0.02;
const QUIET_WINDOW: Duration = Duration::from_millis(250);

/// Results of setting up every connection.
struct Setup {
    seconds: f64,
    failures: u64,
    retries: u64,
    stalled: Vec<WsClient>,
    receivers: JoinSet<Option<ConnTally>>,
}

/// Runs the whole benchmark and returns its report.
pub(crate) async fn run(config: Config) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        recorder: Recorder::new(config.threads),
        setup_permits: Semaphore::new(config.connect_concurrency),
        finished_subs: AtomicU64::new(0),
        logged_errors: AtomicU64::new(0),
        logged_failures: AtomicU64::new(0),
        stop: CancellationToken::new(),
        config,
    });
    let config = &shared.config;
    let server = config.server_pid.map(Proc::Pid);
    if let Some(Proc::Pid(pid)) = server
        && Proc::Pid(pid).rss_kb().is_none()
    {
        bail!("--server-pid {pid}: cannot read /proc/{pid}/status");
    }

    // Redis first: an unreachable Redis should fail before 20k connections are opened.
    let publisher = if config.workload.events > 0 {
        Some(
            Publisher::connect(publish::Plan {
                redis_url: config.redis.clone(),
                channel: config.channel(),
                workload: config.workload.clone(),
                rate: config.rate,
            })
            .await?,
        )
    } else {
        None
    };

    // 1. Setup, with both processes' CPU time around it: a set-up time is the server's only
    // when the generator was not the busy one.
    let server_setup_start = server.and_then(Proc::cpu_seconds);
    let me_setup_start = Proc::Me.cpu_seconds();
    let setup = setup(&shared).await?;
    let setup_cpu = SetupCpu {
        server: server
            .and_then(Proc::cpu_seconds)
            .zip(server_setup_start)
            .map(|(after, before)| after - before),
        generator: Proc::Me
            .cpu_seconds()
            .zip(me_setup_start)
            .map(|(after, before)| after - before),
    };
    if setup.failures == config.connections {
        bail!(
            "none of the {} connections could be set up (is the server at {} running?)",
            config.connections,
            config.url
        );
    }
    let active_conns = config.connections - setup.failures - setup.stalled.len() as u64;
    let active_subs = active_conns * config.subs_per_conn;
    tracing::info!(
        seconds = setup.seconds,
        failures = setup.failures,
        retries = setup.retries,
        stalled = setup.stalled.len(),
        "setup done"
    );

    // 2. Settle, then the "before" samples.
    tokio::time::sleep(config.settle).await;
    let server_before = server.map(Sample::take);
    let me_before = Sample::take(Proc::Me);
    let peak_stop = CancellationToken::new();
    let peak = server.map(|p| tokio::spawn(peak_rss(p, peak_stop.clone())));

    // 3. Publish (or idle).
    let mut outcome = None;
    if let Some(idle) = config.idle {
        tracing::info!(seconds = idle.as_secs_f64(), "holding the connections idle");
        tokio::time::sleep(idle).await;
    }
    if let Some(publisher) = publisher {
        tracing::info!(
            events = config.workload.events,
            rate = config.rate,
            "publishing"
        );
        let published = publisher.run().await.context("publishing to Redis")?;
        if published.unheard > 0 {
            tracing::warn!(
                events = published.unheard,
                channel = config.channel(),
                "Redis delivered events to no subscriber: is the server subscribed to this channel?"
            );
        }
        outcome = Some(published);
    }

    // 4. Drain.
    let drain_start = Instant::now();
    let quiet = drain(&shared, active_subs, server, outcome.is_some()).await;
    let drain_seconds = drain_start.elapsed().as_secs_f64();
    let server_after = server.map(Sample::take);
    let me_after = Sample::take(Proc::Me);
    peak_stop.cancel();
    let peak_kb = match peak {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };

    // Stalled connections: did the server cut them off?
    let mut checks = JoinSet::new();
    for ws in setup.stalled {
        checks.spawn(conn::stalled_was_cut_off(ws, STALLED_IDLE, STALLED_BUDGET));
    }
    let stalled_connections = checks.len() as u64;
    let mut stalled_disconnected = 0;
    while let Some(cut) = checks.join_next().await {
        stalled_disconnected += u64::from(cut.unwrap_or(false));
    }

    // Stop the receivers and collect their tallies.
    shared.stop.cancel();
    let mut tallies = Vec::with_capacity(active_conns as usize);
    let mut receivers = setup.receivers;
    while let Some(result) = receivers.join_next().await {
        if let Some(tally) = result.context("a receiver task panicked")? {
            tallies.push(tally);
        }
    }
    let totals = shared.recorder.totals();

    Ok(report::build(report::Inputs {
        config,
        setup_seconds: setup.seconds,
        setup_cpu,
        connect_failures: setup.failures,
        connect_retries: setup.retries,
        stalled_connections,
        stalled_disconnected,
        active_subscriptions: active_subs,
        publish: outcome,
        drain_seconds,
        server_quiet_ns: quiet,
        tallies: &tallies,
        totals,
        server_before,
        server_after,
        server_peak_kb: peak_kb,
        me_before,
        me_after,
        me_peak_kb: Proc::Me.status_kb("VmHWM"),
    }))
}

async fn setup(shared: &Arc<Shared>) -> anyhow::Result<Setup> {
    let config = &shared.config;
    let (tx, mut rx) = mpsc::channel::<SetupReport>(1024);
    let mut receivers = JoinSet::new();
    let start = Instant::now();
    for conn in 0..config.connections {
        receivers.spawn(conn::run(shared.clone(), conn, tx.clone()));
    }
    drop(tx);
    let mut done = 0u64;
    let mut failures = 0u64;
    let mut retries = 0u64;
    let mut stalled = Vec::with_capacity(config.stalled as usize);
    let deadline = tokio::time::Instant::now() + config.setup_timeout;
    let mut last_log = Instant::now();
    while done < config.connections {
        let report = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(report)) => report,
            Ok(None) => bail!("connection tasks ended before reporting their setup"),
            Err(_) => bail!(
                "setup timed out after {:?}: {done} of {} connections set up",
                config.setup_timeout,
                config.connections
            ),
        };
        done += 1;
        failures += u64::from(!report.ok);
        retries += u64::from(report.retries);
        if let Some(ws) = report.stalled {
            stalled.push(*ws);
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(done, of = config.connections, failures, "setting up");
        }
    }
    Ok(Setup {
        seconds: start.elapsed().as_secs_f64(),
        failures,
        retries,
        stalled,
        receivers,
    })
}

/// Waits until every judged subscription has all its events, or no event arrived for
/// `--drain-timeout`, or `--max-drain` passed. When the workload expects no deliveries at
/// all (selectivity zero), it waits instead for the server's CPU to go quiet (when its pid
/// is known: the server has worked through the published backlog) and returns when, in ns
/// since the epoch, that happened.
async fn drain(
    shared: &Shared,
    active_subs: u64,
    server: Option<Proc>,
    published: bool,
) -> Option<u64> {
    let config = &shared.config;
    let start = Instant::now();
    let start_ns = now_ns();
    let workload = &config.workload;
    let expect_nothing = workload.events == 0 || workload.selectivity_value() == 0.0;
    if expect_nothing {
        let (Some(server), true) = (server, published) else {
            return None;
        };
        // The server may need long for a large backlog: wait while it works, up to --max-drain.
        let limit = config.max_drain;
        let mut previous = server.cpu_seconds()?;
        loop {
            tokio::time::sleep(QUIET_WINDOW).await;
            let cpu = server.cpu_seconds()?;
            if cpu - previous <= QUIET_CPU {
                return Some(now_ns());
            }
            previous = cpu;
            if start.elapsed() >= limit {
                tracing::warn!("the server's CPU did not go quiet within --max-drain");
                return None;
            }
        }
    }
    // A server still working through the backlog (its CPU time growing) counts as progress,
    // like a receipt: a slow server may deliver its first event long after publishing ended.
    let mut busy_ns = start_ns;
    let mut cpu_checked = Instant::now();
    let mut previous_cpu = server.and_then(|s| s.cpu_seconds());
    loop {
        if shared.finished_subs.load(Ordering::Relaxed) >= active_subs {
            return None;
        }
        if cpu_checked.elapsed() >= QUIET_WINDOW
            && let Some(server) = server
            && let Some(cpu) = server.cpu_seconds()
        {
            if previous_cpu.is_some_and(|p| cpu - p > QUIET_CPU) {
                busy_ns = now_ns();
            }
            previous_cpu = Some(cpu);
            cpu_checked = Instant::now();
        }
        if start.elapsed() >= config.max_drain {
            tracing::warn!("drain stopped by --max-drain");
            return None;
        }
        let last = shared.recorder.last_receipt_ns().max(busy_ns);
        let idle = Duration::from_nanos(now_ns().saturating_sub(last));
        if idle >= config.drain_timeout {
            tracing::warn!(
                idle_seconds = idle.as_secs_f64(),
                "drain stopped: no event for --drain-timeout"
            );
            return None;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Samples `process`'s RSS every [`PEAK_POLL`] until `stop`; returns the largest.
async fn peak_rss(process: Proc, stop: CancellationToken) -> Option<u64> {
    let mut peak = process.rss_kb();
    let mut tick = tokio::time::interval(PEAK_POLL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return peak,
            _ = tick.tick() => {
                if let Some(kb) = process.rss_kb() {
                    peak = Some(peak.map_or(kb, |p| p.max(kb)));
                }
            }
        }
    }
}

/// CPU seconds the server and the generator spent during setup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SetupCpu {
    pub(crate) server: Option<f64>,
    pub(crate) generator: Option<f64>,
}

/// Memory and CPU of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rss_kb: Option<u64>,
    pub(crate) pss_kb: Option<u64>,
    pub(crate) cpu_seconds: Option<f64>,
}

impl Sample {
    fn take(process: Proc) -> Self {
        Self {
            rss_kb: process.rss_kb(),
            pss_kb: process.pss_kb(),
            cpu_seconds: process.cpu_seconds(),
        }
    }
}
