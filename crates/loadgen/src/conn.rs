//! One generator connection: set up (TCP from a chosen loopback source address, WebSocket
//! handshake, `connect`, `subscribe`s), then receive and judge frames until told to stop.
//!
//! Each connection is one task owning its socket and its subscriptions' oracles; nothing is
//! shared on the per-frame path except the thread's [`Recorder`] shard and read buffer. A
//! connection's memory is its socket, the start of a frame a read cut (usually nothing) and
//! ~100 bytes per subscription. tungstenite does the HTTP upgrade; from there on
//! [`WsClient`] reads and writes the frames.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::cli::Config;
use crate::oracle::SubOracle;
use crate::publish::now_ns;
use crate::scan::{self, Scanned};
use crate::stats::Recorder;
use crate::wsclient::{Message, WsClient};

/// Retries after a failed setup attempt.
const RETRIES: u32 = 3;
/// Error frames and setup failures logged in full (the rest are only counted).
const LOGGED_ERRORS: u64 = 5;

/// State shared by every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) recorder: Recorder,
    pub(crate) setup_permits: Semaphore,
    /// Subscriptions that will receive nothing more that counts: complete, or on a
    /// connection the server closed.
    pub(crate) finished_subs: AtomicU64,
    pub(crate) logged_errors: AtomicU64,
    pub(crate) logged_failures: AtomicU64,
    pub(crate) stop: CancellationToken,
}

/// How a connection's setup ended, sent to the coordinator.
#[derive(Debug)]
pub(crate) struct SetupReport {
    pub(crate) ok: bool,
    pub(crate) retries: u32,
    /// A stalled connection's socket, handed over so nobody polls it.
    pub(crate) stalled: Option<Box<WsClient>>,
}

/// A receiving connection's final tallies.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConnTally {
    pub(crate) subscriptions: u64,
    pub(crate) expected: u64,
    pub(crate) unique: u64,
    pub(crate) missing: u64,
    pub(crate) duplicate: u64,
    pub(crate) unexpected: u64,
    pub(crate) wrong_op: u64,
    pub(crate) errors: u64,
    pub(crate) disconnected: bool,
}

/// tungstenite only does the upgrade, but allocates and zero-fills a read buffer for the
/// connection it then makes (128 KiB by default).
fn upgrade_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
}

/// Connection `conn`'s whole life. Returns `None` for connections that failed setup or
/// stalled (they are not judged).
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: u64,
    setup_tx: mpsc::Sender<SetupReport>,
) -> Option<ConnTally> {
    // Boxed: the setup's state (handshake, timers, the report) is freed once it is done
    // instead of staying in every connection's future for its whole life.
    let ws = Box::pin(set_up(&shared, conn, setup_tx)).await?;
    let config = &shared.config;
    let mut subs: Vec<SubOracle> = (0..config.subs_per_conn)
        .map(|k| SubOracle::new(&config.workload, conn * config.subs_per_conn + k))
        .collect();
    Some(receive(&shared, ws, &mut subs).await)
}

/// Sets the connection up (with retries) and reports the outcome; returns the socket when
/// it is to be read (neither failed nor stalled).
async fn set_up(
    shared: &Shared,
    conn: u64,
    setup_tx: mpsc::Sender<SetupReport>,
) -> Option<WsClient> {
    let config = &shared.config;
    let mut retries = 0;
    let ws = loop {
        let attempt = {
            let _permit = shared
                .setup_permits
                .acquire()
                .await
                .expect("the setup semaphore is never closed");
            tokio::time::timeout(config.connect_timeout, establish(config, conn))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        };
        match attempt {
            Ok(ws) => break Some(ws),
            Err(e) if retries < RETRIES => {
                tracing::debug!(conn, error = %format!("{e:#}"), "setup attempt failed, retrying");
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(retries))).await;
            }
            Err(e) => {
                if shared.logged_failures.fetch_add(1, Ordering::Relaxed) < LOGGED_ERRORS {
                    tracing::warn!(conn, error = %format!("{e:#}"), "connection setup failed");
                }
                break None;
            }
        }
    };
    let mut report = SetupReport {
        ok: ws.is_some(),
        retries,
        stalled: None,
    };
    let ws = match ws {
        Some(ws) if conn < config.stalled => {
            report.stalled = Some(Box::new(ws));
            None
        }
        Some(ws) => {
            // Subscriptions that expect nothing are finished from the start; counted before
            // the report so the drain never sees a setup without them.
            let first = conn * config.subs_per_conn;
            let workload = &config.workload;
            let done_now = (first..first + config.subs_per_conn)
                .filter(|&j| workload.expected_count(workload.sub_room(j)) == 0)
                .count() as u64;
            shared.finished_subs.fetch_add(done_now, Ordering::Relaxed);
            Some(ws)
        }
        None => None,
    };
    let _ = setup_tx.send(report).await;
    ws
}

/// One setup attempt.
async fn establish(config: &Config, conn: u64) -> anyhow::Result<WsClient> {
    let source = config.source_ips[(conn % config.source_ips.len() as u64) as usize];
    let socket = TcpSocket::new_v4().context("socket")?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket
        .connect(SocketAddr::V4(config.target))
        .await
        .with_context(|| format!("connect {} from {source}", config.target))?;
    stream.set_nodelay(true)?;
    let (upgraded, _) = tokio_tungstenite::client_async_with_config(
        config.url.as_str(),
        stream,
        Some(upgrade_config()),
    )
    .await
    .context("WebSocket handshake")?;
    // Servers send nothing before the client's `connect`, so tungstenite has buffered
    // nothing past the upgrade response.
    let mut ws = WsClient::new(upgraded.into_inner(), config.read_buffer_bytes, conn);

    let mut connect = json!({"op": "connect", "applicationId": config.app_id});
    if let Some(key) = &config.js_key {
        connect["javascriptKey"] = key.as_str().into();
    }
    ws.send_texts([connect.to_string()]).await?;
    ws.read_texts_until(|text| match scan::scan(text).op {
        Some("connected") => Ok(true),
        Some("error") => bail!("connect refused: {text}"),
        _ => Ok(false),
    })
    .await?;

    let first = conn * config.subs_per_conn;
    let subscribes = (0..config.subs_per_conn).map(|k| {
        json!({
            "op": "subscribe",
            "requestId": k + 1,
            "query": config.workload.subscribe_query(first + k),
        })
        .to_string()
    });
    ws.send_texts(subscribes).await?;
    let mut pending = config.subs_per_conn;
    ws.read_texts_until(|text| {
        let frame = scan::scan(text);
        match frame.op {
            Some("subscribed")
                if frame
                    .request_id
                    .is_some_and(|id| (1..=config.subs_per_conn).contains(&id)) =>
            {
                pending -= 1;
            }
            Some("error") => bail!("subscribe refused: {text}"),
            _ => {}
        }
        Ok(pending == 0)
    })
    .await?;
    Ok(ws)
}

/// Receives until [`Shared::stop`] or the server closes the connection.
async fn receive(shared: &Shared, mut ws: WsClient, subs: &mut [SubOracle]) -> ConnTally {
    let workload = &shared.config.workload;
    let mut errors = 0;
    let mut disconnected = false;
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        // The frames of one read arrived together: one clock reading serves them all.
        let mut receipt_ns = None;
        let read = ws.read(|message| {
            let text = match message {
                Message::Text(text) => text,
                Message::Binary(_) => {
                    // Neither server sends binary frames; judged like an unknown event.
                    subs[0].unexpected += 1;
                    return;
                }
            };
            let frame = scan::scan(text);
            match frame.op {
                Some(op) if scan::is_event_op(op) => {
                    let receipt_ns = *receipt_ns.get_or_insert_with(now_ns);
                    on_event(shared, workload, subs, &frame, receipt_ns);
                }
                Some("error") => {
                    errors += 1;
                    log_error(shared, text);
                }
                _ => {}
            }
        });
        let open = tokio::select! {
            biased;
            read = read => read,
            () = &mut stop => break,
        };
        if !matches!(open, Ok(true)) {
            disconnected = true;
            break;
        }
    }
    if disconnected && !shared.stop.is_cancelled() {
        let unfinished = subs.iter().filter(|s| !s.complete()).count() as u64;
        shared
            .finished_subs
            .fetch_add(unfinished, Ordering::Relaxed);
    } else {
        disconnected = false;
    }
    let mut tally = ConnTally {
        errors,
        disconnected,
        ..ConnTally::default()
    };
    for sub in subs.iter() {
        tally.subscriptions += 1;
        tally.expected += sub.expected;
        tally.unique += sub.unique;
        tally.missing += sub.missing();
        tally.duplicate += sub.duplicate;
        tally.unexpected += sub.unexpected;
        tally.wrong_op += sub.wrong_op;
    }
    tally
}

fn on_event(
    shared: &Shared,
    workload: &crate::workload::Workload,
    subs: &mut [SubOracle],
    frame: &Scanned<'_>,
    receipt_ns: u64,
) {
    let latency_us = frame
        .sent_at_ns
        .map(|sent| receipt_ns.saturating_sub(sent) / 1000);
    shared.recorder.record(receipt_ns, latency_us);
    let sub = frame
        .request_id
        .and_then(|id| id.checked_sub(1))
        .and_then(|k| usize::try_from(k).ok())
        .filter(|&k| k < subs.len());
    let Some(k) = sub else {
        // No subscription of ours: charged to the first so the total stays right.
        subs[0].unexpected += 1;
        return;
    };
    let sub = &mut subs[k];
    let was_complete = sub.complete();
    sub.observe(workload, frame);
    if !was_complete && sub.complete() {
        shared.finished_subs.fetch_add(1, Ordering::Relaxed);
    }
}

fn log_error(shared: &Shared, text: &str) {
    if shared.logged_errors.fetch_add(1, Ordering::Relaxed) < LOGGED_ERRORS {
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        tracing::warn!(
            code = %parsed["code"],
            error = %parsed["error"],
            frame = text,
            "error frame received"
        );
    }
}

/// Reads what a stalled connection has buffered, without waiting for more than `idle`
/// between reads nor `budget` in all: `true` when the server has closed it or sent it an
/// error (i.e. cut it off).
pub(crate) async fn stalled_was_cut_off(ws: WsClient, idle: Duration, budget: Duration) -> bool {
    ws.was_cut_off(idle, budget, |text| scan::scan(text).op == Some("error"))
        .await
}
