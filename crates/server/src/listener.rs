//! The accept loops: the client port for WebSocket upgrades (any path) and the HTTP
//! endpoints, and optionally an admin port (`server.admin_listen`) for the probes, `/metrics`
//! and the ingest API. During a graceful drain ([`crate::drain`]) both keep accepting, but
//! WebSocket upgrades are refused with HTTP 503.
//!
//! Each TCP connection is served by hyper; an upgrade request becomes a WebSocket served by
//! [`crate::connection::serve`] in its own task. Each port has a pool of connection permits
//! of its own, so clients that hold every connection of the client port (idle sockets or
//! WebSockets) never starve operators and publishers on the admin port. The pools are sized
//! within the process's open-file limit with a reserve for the admin port and the server's
//! own files and connections ([`crate::capacity::Capacity`]), so a flood ends in refused connections, never
//! in failing `accept`s or lookups. WebSockets are capped further (HTTP 503 beyond), leaving
//! a margin of the client pool for plain HTTP requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::{self, HttpResponse, Port, json_response};
use crate::metrics::DropReason;
use crate::state::ServerState;

/// Accepts connections on `port` until shutdown, at most `connections` at a time.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ServerState>,
    port: Port,
    connections: usize,
) {
    let permits = Arc::new(Semaphore::new(connections));
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ctx.metrics.dropped(DropReason::ConnectionLimit);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx2 = ctx.clone();
        let ctx3 = ctx.clone();
        ctx.tracker.spawn(async move {
            let ctx = ctx3;
            let io = TokioIo::new(stream);
            let service = service_fn(move |request| {
                let ctx = ctx2.clone();
                async move { Ok::<_, Infallible>(route(request, ctx, peer, port).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(connection);
            let shutdown = ctx.shutdown.clone();
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "http connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
            drop(permit);
        });
    }
}

fn is_upgrade(request: &Request<Incoming>) -> bool {
    let has_token = |name, token: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    has_token(CONNECTION, "upgrade") && has_token(UPGRADE, "websocket")
}

async fn route(
    request: Request<Incoming>,
    ctx: Arc<ServerState>,
    peer: SocketAddr,
    port: Port,
) -> HttpResponse {
    match port {
        // Draining: clients are sent to the other nodes (they retry on an error).
        Port::Client if is_upgrade(&request) && ctx.readiness.is_draining() => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "this node is shutting down: connect to another one"}),
        ),
        Port::Client if is_upgrade(&request) => upgrade(request, ctx, peer),
        _ => http::handle(request, &ctx, port).await,
    }
}

/// Answers a WebSocket handshake (any path; the first offered subprotocol selected) and
/// spawns the connection task.
fn upgrade(
    mut request: Request<Incoming>,
    ctx: Arc<ServerState>,
    peer: SocketAddr,
) -> HttpResponse {
    let key = request.headers().get(SEC_WEBSOCKET_KEY).cloned();
    let version_ok = request
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true) = (key, version_ok) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad WebSocket handshake: need Sec-WebSocket-Key and Sec-WebSocket-Version: 13"}),
        );
    };
    // Browsers refuse a handshake that selects none of the subprotocols their page offered:
    // echo the first one, as parse-server's `ws` server does (several header lines are
    // one comma-separated list).
    let offered: Vec<&str> = request
        .headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        // A value that is not visible ASCII holds no token: refused like a malformed list.
        .map(|value| value.to_str().unwrap_or("\u{0}"))
        .collect();
    let subprotocol = if offered.is_empty() {
        None
    } else {
        match livequery_protocol::handshake::select_subprotocol(&offered.join(", "))
            .ok()
            .and_then(|chosen| HeaderValue::from_str(chosen).ok())
        {
            Some(value) => Some(value),
            None => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "Invalid Sec-WebSocket-Protocol header"}),
                );
            }
        }
    };
    let max = ctx.capacity.websockets as i64;
    if ctx.metrics.connections.fetch_add(1, Relaxed) >= max {
        ctx.metrics.connections.fetch_sub(1, Relaxed);
        ctx.metrics.dropped(DropReason::ConnectionLimit);
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "too many connections"}),
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let ctx2 = ctx.clone();
    // Only the upgrade future goes into the task: the request's header values are slices of
    // hyper's read buffer (8 KiB and more), which the task would otherwise keep alive for
    // the connection's whole life.
    let on_upgrade = hyper::upgrade::on(&mut request);
    drop(request);
    ctx.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // Boxed: the task then holds the upgrade's small future and this box, not
                // also the space of the upgrade beside the connection's own state.
                Box::pin(crate::connection::serve(upgraded, ctx2, peer)).await;
            }
            Err(err) => {
                ctx2.metrics.connections.fetch_sub(1, Relaxed);
                tracing::debug!(%peer, error = %err, "websocket upgrade failed");
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, value);
    }
    if let Some(value) = subprotocol {
        headers.insert(hyper::header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    response
}
