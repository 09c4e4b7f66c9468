//! `lq-loadgen ceiling`: the loopback ceiling writer, a measuring tool for broadcast
//! workloads.
//!
//! It is the least a LiveQuery server could do for `where: {}` subscriptions: it accepts
//! WebSocket clients, answers `connect` and `subscribe` with the frames the oracle expects,
//! reads parse-server's Redis feed (`<appId>afterSave`) and, for every event, encodes the
//! `create` frame once per requestId — the same bytes for every client with that requestId,
//! WebSocket header included — and writes those bytes to every subscribed client. No
//! matching, no per-client encoding, no queue but one shared ring of encoded events
//! ([`tokio::sync::broadcast`]) from which each client's task writes everything that is due
//! in one `write` call. It runs on a current-thread runtime (one core, like the servers when
//! pinned with `taskset`).
//!
//! It serves only what a broadcast benchmark needs: a subscription whose `where` is not
//! empty is refused with an error frame; event frames carry no `clientId` (that is what
//! makes them identical for every client); a client that falls more than
//! [`RING_EVENTS`] events behind is disconnected (so a too-slow reader shows up in the
//! oracle instead of growing memory).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast};

use crate::target;
use crate::wsframe;

/// Events held for the slowest client before it is disconnected.
const RING_EVENTS: usize = 1 << 16;
/// Largest client frame accepted.
const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Largest requestId served (frames are pre-encoded for 1..=this many).
const MAX_REQUEST_ID: u64 = 1024;
/// Most bytes one write call gathers from the ring.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Flags of `lq-loadgen ceiling`.
#[derive(Debug, clap::Args)]
pub(crate) struct CeilingArgs {
    /// Address to listen on (127.0.0.0/8 only; port 0 picks a free port). The address is
    /// printed on stdout as `listening ADDR` once the Redis subscription is active.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Redis to read parse-server's feed from (redis:// on 127.0.0.0/8 or localhost only).
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Parse application id: the Redis channel is `<app-id>afterSave`.
    #[arg(long, default_value = "myAppId")]
    app_id: String,
    /// Most clients connected at once (each needs one file descriptor).
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
}

/// One event, encoded once: `frames[k]` is the whole WebSocket frame for requestId k + 1.
#[derive(Debug)]
struct Encoded {
    frames: Vec<Bytes>,
}

/// State shared by the dispatcher and the clients.
#[derive(Debug)]
struct Hub {
    events: broadcast::Sender<Arc<Encoded>>,
    /// The largest requestId any client subscribed with: frames are encoded up to it.
    max_request_id: AtomicU64,
    next_client: AtomicU64,
}

/// Runs the writer until SIGINT or SIGTERM.
pub(crate) fn execute(args: CeilingArgs) -> anyhow::Result<()> {
    let listen: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an address", args.listen))?;
    let SocketAddr::V4(v4) = listen else {
        bail!("--listen must be an IPv4 address on 127.0.0.0/8");
    };
    if v4.ip().octets()[0] != 127 {
        bail!("--listen {listen} is not on 127.0.0.0/8: refusing to serve on it");
    }
    target::check_redis(&args.redis)?;
    anyhow::ensure!(args.max_connections >= 1, "--max-connections must be ≥ 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, listen))
}

async fn serve(args: CeilingArgs, listen: SocketAddr) -> anyhow::Result<()> {
    let channel = format!("{}afterSave", args.app_id);
    let client = redis::Client::open(args.redis.as_str())?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .with_context(|| format!("connecting to {}", args.redis))?;
    pubsub.subscribe(&channel).await.context("SUBSCRIBE")?;
    let (events, _) = broadcast::channel(RING_EVENTS);
    let hub = Arc::new(Hub {
        events,
        max_request_id: AtomicU64::new(1),
        next_client: AtomicU64::new(1),
    });
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("listening {}", listener.local_addr()?);

    let dispatcher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            let mut dropped = 0u64;
            while let Some(message) = messages.next().await {
                match encode_event(message.get_payload_bytes(), &hub) {
                    Some(encoded) => {
                        // No receiver (no client yet) is not an error.
                        let _ = hub.events.send(Arc::new(encoded));
                    }
                    None => {
                        dropped += 1;
                        if dropped <= 5 {
                            tracing::warn!("a Redis message without a currentParseObject: skipped");
                        }
                    }
                }
            }
            tracing::error!("the Redis subscription ended");
        })
    };

    let slots = Arc::new(Semaphore::new(args.max_connections));
    let accept = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and the like: wait for a slot instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                if let Err(e) = client_task(stream, &hub).await {
                    tracing::debug!(error = %format!("{e:#}"), "client ended");
                }
                drop(slot);
            });
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = accept => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        _ = dispatcher => bail!("the Redis subscription ended"),
    }
    Ok(())
}

/// Encodes the `create` frames of one Redis message for requestIds 1..=max_request_id.
fn encode_event(payload: &[u8], hub: &Hub) -> Option<Encoded> {
    let message: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let object = message.get("currentParseObject")?;
    if !object.is_object() {
        return None;
    }
    let object = object.to_string();
    let ids = hub.max_request_id.load(Ordering::Relaxed);
    let frames = (1..=ids)
        .map(|id| {
            let text = format!(r#"{{"op":"create","requestId":{id},"object":{object}}}"#);
            let mut frame = Vec::with_capacity(text.len() + 10);
            wsframe::encode(wsframe::TEXT, text.as_bytes(), &mut frame);
            Bytes::from(frame)
        })
        .collect();
    Some(Encoded { frames })
}

/// One client: handshake, then its control frames and its share of the ring.
async fn client_task(stream: TcpStream, hub: &Hub) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    // tungstenite does the HTTP upgrade; the client sends nothing before the 101 answer, so
    // no frame is left in its buffer when the raw socket is taken back.
    let ws = tokio_tungstenite::accept_async(stream)
        .await
        .context("WebSocket handshake")?;
    let mut stream = ws.into_inner();
    let client_id = hub.next_client.fetch_add(1, Ordering::Relaxed);
    let (mut reader, mut writer) = stream.split();
    let mut events: Option<broadcast::Receiver<Arc<Encoded>>> = None;
    let mut request_ids: Vec<u64> = Vec::new();
    let mut inbound: Vec<u8> = Vec::with_capacity(1024);
    let mut outbound: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            biased;
            read = reader.read(&mut chunk) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                inbound.extend_from_slice(&chunk[..n]);
                let mut used = 0;
                while let Some((frame, len)) = wsframe::decode(&inbound[used..], MAX_CLIENT_FRAME)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                {
                    used += len;
                    let reply = match frame.opcode {
                        wsframe::TEXT => on_text(&frame.payload, client_id, hub, &mut request_ids, &mut events),
                        wsframe::PING => Some((wsframe::PONG, frame.payload)),
                        wsframe::CLOSE => {
                            outbound.clear();
                            wsframe::encode(wsframe::CLOSE, &frame.payload[..frame.payload.len().min(2)], &mut outbound);
                            writer.write_all(&outbound).await?;
                            return Ok(());
                        }
                        _ => None,
                    };
                    if let Some((opcode, payload)) = reply {
                        outbound.clear();
                        wsframe::encode(opcode, &payload, &mut outbound);
                        writer.write_all(&outbound).await?;
                    }
                }
                inbound.drain(..used);
            }
            event = recv(&mut events) => {
                outbound.clear();
                let mut next = Some(event?);
                while let Some(encoded) = next {
                    for &id in &request_ids {
                        if let Some(frame) = encoded.frames.get((id - 1) as usize) {
                            outbound.extend_from_slice(frame);
                        }
                    }
                    next = if outbound.len() < WRITE_BATCH_BYTES {
                        match events.as_mut().map(broadcast::Receiver::try_recv) {
                            Some(Ok(encoded)) => Some(encoded),
                            Some(Err(broadcast::error::TryRecvError::Lagged(n))) => {
                                bail!("{n} events behind: disconnected")
                            }
                            _ => None,
                        }
                    } else {
                        None
                    };
                }
                writer.write_all(&outbound).await?;
            }
        }
    }
}

/// The next event for a subscribed client; never ready before the first subscription.
async fn recv(
    events: &mut Option<broadcast::Receiver<Arc<Encoded>>>,
) -> anyhow::Result<Arc<Encoded>> {
    let Some(events) = events else {
        return std::future::pending().await;
    };
    match events.recv().await {
        Ok(encoded) => Ok(encoded),
        Err(broadcast::error::RecvError::Lagged(n)) => bail!("{n} events behind: disconnected"),
        Err(broadcast::error::RecvError::Closed) => bail!("the feed ended"),
    }
}

/// Answers one text frame: `connect`, `subscribe` (of `where: {}` only) and `unsubscribe`.
fn on_text(
    payload: &[u8],
    client_id: u64,
    hub: &Hub,
    request_ids: &mut Vec<u64>,
    events: &mut Option<broadcast::Receiver<Arc<Encoded>>>,
) -> Option<(u8, Vec<u8>)> {
    let error = |code: u32, text: &str| {
        let frame =
            serde_json::json!({"op": "error", "code": code, "error": text, "reconnect": false});
        Some((wsframe::TEXT, frame.to_string().into_bytes()))
    };
    let Ok(frame) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return error(1, "the message is not JSON");
    };
    let request_id = frame.get("requestId").and_then(serde_json::Value::as_u64);
    let reply = match frame.get("op").and_then(serde_json::Value::as_str) {
        Some("connect") => {
            serde_json::json!({"op": "connected", "clientId": client_id.to_string()})
        }
        Some("subscribe") => {
            let Some(id) = request_id.filter(|id| (1..=MAX_REQUEST_ID).contains(id)) else {
                return error(1, "requestId must be 1..=1024 here");
            };
            let where_ = frame.pointer("/query/where");
            if !where_.is_none_or(|w| w.as_object().is_some_and(serde_json::Map::is_empty)) {
                return error(1, "the ceiling writer serves only where: {}");
            }
            if !request_ids.contains(&id) {
                request_ids.push(id);
            }
            hub.max_request_id.fetch_max(id, Ordering::Relaxed);
            if events.is_none() {
                *events = Some(hub.events.subscribe());
            }
            serde_json::json!({"op": "subscribed", "clientId": client_id.to_string(), "requestId": id})
        }
        Some("unsubscribe") => {
            let Some(id) = request_id.filter(|id| request_ids.contains(id)) else {
                return error(2, "no subscription with this requestId");
            };
            request_ids.retain(|&r| r != id);
            serde_json::json!({"op": "unsubscribed", "clientId": client_id.to_string(), "requestId": id})
        }
        _ => return error(1, "unsupported op"),
    };
    Some((wsframe::TEXT, reply.to_string().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_request_id: u64) -> Hub {
        Hub {
            events: broadcast::channel(4).0,
            max_request_id: AtomicU64::new(max_request_id),
            next_client: AtomicU64::new(1),
        }
    }

    #[test]
    fn an_event_is_encoded_once_per_request_id() {
        let hub = hub(2);
        let payload = br#"{"currentParseObject":{"seq":7,"className":"C"}}"#;
        let encoded = encode_event(payload, &hub).unwrap();
        assert_eq!(encoded.frames.len(), 2);
        let text = br#"{"op":"create","requestId":2,"object":{"seq":7,"className":"C"}}"#;
        let mut want = Vec::new();
        wsframe::encode(wsframe::TEXT, text, &mut want);
        assert_eq!(&encoded.frames[1][..], &want[..]);
        assert!(encode_event(b"not json", &hub).is_none());
        assert!(encode_event(br#"{"original":{}}"#, &hub).is_none());
    }

    #[test]
    fn answers_connect_and_broadcast_subscriptions_only() {
        let hub = hub(1);
        let mut ids = Vec::new();
        let mut events = None;
        let text = |reply: Option<(u8, Vec<u8>)>| {
            let (opcode, payload) = reply.unwrap();
            assert_eq!(opcode, wsframe::TEXT);
            serde_json::from_slice::<serde_json::Value>(&payload).unwrap()
        };
        let mut on = |frame: &str| text(on_text(frame.as_bytes(), 9, &hub, &mut ids, &mut events));
        assert_eq!(
            on(r#"{"op":"connect","applicationId":"a"}"#)["op"],
            "connected"
        );
        let sub = on(r#"{"op":"subscribe","requestId":3,"query":{"className":"C","where":{}}}"#);
        assert_eq!(
            (sub["op"].as_str(), sub["requestId"].as_u64()),
            (Some("subscribed"), Some(3))
        );
        assert_eq!(
            on(r#"{"op":"subscribe","requestId":4,"query":{"className":"C","where":{"a":1}}}"#)["op"],
            "error"
        );
        assert_eq!(
            on(r#"{"op":"subscribe","requestId":0,"query":{"className":"C"}}"#)["op"],
            "error"
        );
        assert_eq!(on("nonsense")["op"], "error");
        assert_eq!(
            on(r#"{"op":"unsubscribe","requestId":3}"#)["op"],
            "unsubscribed"
        );
        assert_eq!(on(r#"{"op":"unsubscribe","requestId":3}"#)["op"], "error");
        assert!(ids.is_empty());
        assert!(events.is_some());
        assert_eq!(hub.max_request_id.load(Ordering::Relaxed), 3);
    }
}
