//! The accept loops: the client port for WebSocket upgrades (any path) and the HTTP
//! endpoints, and optionally an admin port (`server.admin_listen`) for the probes, `/metrics`
//! and the ingest API. During a graceful drain ([`crate::drain`]) both keep accepting, but
//! WebSocket upgrades are refused with HTTP 503.
//!
//! On the client port a WebSocket upgrade is read and answered on the bare socket
//! ([`crate::upgrade`]) and the socket handed to [`crate::connection::serve_socket`] in a task
//! of its own; every other request (and any upgrade that module leaves alone or refuses) is
//! served by hyper, which reads the connection from its first byte, so its answers are those
//! of a connection it served from the start. An upgrade through hyper becomes a WebSocket
//! served by [`crate::connection::serve`]. Each port has a pool of connection permits
//! of its own, so clients that hold every connection of the client port (idle sockets or
//! WebSockets) never starve operators and publishers on the admin port. The pools are sized
//! within the process's open-file limit with a reserve for the admin port and the server's
//! own files and connections ([`crate::capacity::Capacity`]), so a flood ends in refused connections, never
//! in failing `accept`s or lookups. WebSockets are capped further (HTTP 503 beyond), leaving
//! a margin of the client pool for plain HTTP requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::http::{self, HttpResponse, Port, json_response};
use crate::metrics::DropReason;
use crate::state::ServerState;
use crate::upgrade;

/// How long a client may take to send its request head (hyper's `header_read_timeout` on
/// the connections it serves).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of a request head read at once (on the stack).
const HEAD_CHUNK: usize = 2048;

/// A request head longer than this is left to hyper (which has its own limits and answers).
const MAX_FAST_HEAD: usize = 16 * 1024;

/// How many connections the kernel may hold completed but not yet accepted (it caps this at
/// `net.core.somaxconn`, 4096 by default on Linux). tokio's `TcpListener::bind` asks for 1024:
/// when thousands of clients connect at once (a deploy, a restart, a network blip), the
/// handshakes beyond the queue are dropped and those clients wait a second for their SYN to be
/// sent again.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` for [`accept_loop`] with a [`LISTEN_BACKLOG`] accept queue (and, as
/// tokio's own `bind`, `SO_REUSEADDR`, so a restart is not refused while old connections
/// linger in `TIME_WAIT`).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `port` until shutdown, at most `connections` at a time.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ServerState>,
    port: Port,
    connections: usize,
) {
    let permits = Arc::new(Semaphore::new(connections));
    // Linux copies `TCP_NODELAY` from the listening socket to every accepted one: one
    // `setsockopt` per listener (whoever bound it) instead of one per connection.
    let inherits_nodelay = cfg!(target_os = "linux")
        && socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .is_ok();
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
        if !inherits_nodelay {
            let _ = stream.set_nodelay(true);
        }
        match port {
            Port::Client => ctx
                .tracker
                .spawn(serve_client(stream, ctx.clone(), peer, permit)),
            Port::Admin => ctx.tracker.spawn(serve_http(
                Replay::new(stream, Vec::new()),
                ctx.clone(),
                peer,
                port,
                permit,
            )),
        };
    }
}

/// Serves a connection to the client port: a WebSocket upgrade is answered here on the bare
/// socket ([`crate::upgrade`]); anything else is served by hyper, from the first byte read.
///
/// The handshake is boxed: hyper's state, when it serves the connection, is not part of the
/// handshake's.
async fn serve_client(
    stream: TcpStream,
    ctx: Arc<ServerState>,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let Some((stream, read, upgraded)) = Box::pin(handshake(stream, &ctx, peer)).await else {
        return;
    };
    if !upgraded {
        // Refusals (draining, full) and every other request are hyper's.
        let replay = Replay::new(stream, read);
        return Box::pin(serve_http(replay, ctx, peer, Port::Client, permit)).await;
    }
    // A WebSocket holds no permit of the HTTP pool (as one upgraded by hyper).
    drop(permit);
    // A task of its own: its cell then holds the connection's future itself, not this
    // task's state and a box beside it, for the connection's whole life.
    let tracker = ctx.tracker.clone();
    tracker.spawn(crate::connection::serve_socket(stream, &read, ctx, peer));
}

/// Reads the request head; when it is a WebSocket upgrade this server takes (not draining,
/// below `limits.max_connections`), answers it and returns `true` with what the client sent
/// behind its head; otherwise `false` with what was read. `None`: the peer closed, timed
/// out or failed first.
async fn handshake(
    mut stream: TcpStream,
    ctx: &ServerState,
    peer: SocketAddr,
) -> Option<(TcpStream, Vec<u8>, bool)> {
    let take = || !ctx.readiness.is_draining() && take_websocket_slot(ctx);
    let read = tokio::select! {
        () = ctx.shutdown.cancelled() => return None,
        read = tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(&mut stream, &take)) => read,
    };
    // A peer that never completes its head is closed without an answer, as hyper does.
    let (read, upgrade) = read.ok()??;
    let Some(upgrade) = upgrade else {
        return Some((stream, read, false));
    };
    let response = upgrade.response();
    // A fresh socket has room for the response: written at once, without a wait.
    let written = match stream.try_write(&response) {
        Ok(n) => n,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(err) => {
            ctx.metrics.connections.fetch_sub(1, Relaxed);
            tracing::debug!(%peer, error = %err, "writing the websocket handshake failed");
            return None;
        }
    };
    if written < response.len()
        && let Err(err) = stream.write_all(&response[written..]).await
    {
        ctx.metrics.connections.fetch_sub(1, Relaxed);
        tracing::debug!(%peer, error = %err, "writing the websocket handshake failed");
        return None;
    }
    Some((stream, read, true))
}

/// Reads a request head until it is complete or longer than [`MAX_FAST_HEAD`]. Returns the
/// upgrade it asks for, if this module answers it and `take` agrees, with what the client
/// sent behind the head; otherwise no upgrade, with the bytes read. `None` when the peer
/// closed or the read failed first.
///
/// A head that comes in one read (nearly all) is read on the stack: no buffer of the
/// handshake is left on the heap between the connection's long-lived allocations.
async fn read_head(
    stream: &mut TcpStream,
    take: &(dyn Fn() -> bool + Sync),
) -> Option<(Vec<u8>, Option<upgrade::Upgrade>)> {
    let mut partial: Vec<u8> = Vec::new();
    loop {
        stream.readable().await.ok()?;
        let mut chunk = [0u8; HEAD_CHUNK];
        let n = match crate::connection::try_read_draining(stream, &mut chunk) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        };
        let first = partial.is_empty();
        let read: &[u8] = if first {
            &chunk[..n]
        } else {
            partial.extend_from_slice(&chunk[..n]);
            &partial
        };
        match upgrade::parse(read) {
            upgrade::Head::Upgrade(upgrade) if take() => {
                let read_ahead = read[upgrade.head_len..].to_vec();
                return Some((read_ahead, Some(upgrade)));
            }
            upgrade::Head::Partial if read.len() < MAX_FAST_HEAD => {
                if first {
                    partial.extend_from_slice(&chunk[..n]);
                }
            }
            upgrade::Head::Partial | upgrade::Head::Upgrade(_) | upgrade::Head::Other => {
                let head = if first { chunk[..n].to_vec() } else { partial };
                return Some((head, None));
            }
        }
    }
}

/// Counts a WebSocket in `limits.max_connections`; `false` when there is no room (hyper's
/// path then answers 503).
fn take_websocket_slot(ctx: &ServerState) -> bool {
    let max = ctx.capacity.websockets as i64;
    if ctx.metrics.connections.fetch_add(1, Relaxed) >= max {
        ctx.metrics.connections.fetch_sub(1, Relaxed);
        return false;
    }
    true
}

/// Serves HTTP on a connection (with WebSocket upgrades on the client port) until it closes.
async fn serve_http(
    stream: Replay,
    ctx: Arc<ServerState>,
    peer: SocketAddr,
    port: Port,
    permit: OwnedSemaphorePermit,
) {
    {
        let ctx2 = ctx.clone();
        let io = TokioIo::new(stream);
        let service = service_fn(move |request| {
            let ctx = ctx2.clone();
            async move { Ok::<_, Infallible>(route(request, ctx, peer, port).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
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
    if !take_websocket_slot(&ctx) {
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

/// A socket whose first bytes were already read: they are read again first (hyper then
/// serves the connection as if it had read it from the start).
struct Replay {
    read: Vec<u8>,
    replayed: usize,
    stream: TcpStream,
}

impl Replay {
    fn new(stream: TcpStream, read: Vec<u8>) -> Self {
        Self {
            read,
            replayed: 0,
            stream,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.read.len() {
            let left = &this.read[this.replayed..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.replayed += n;
            if this.replayed == this.read.len() {
                // Replayed: the buffer is not kept for the connection's life.
                this.read = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::{TcpListener, TcpStream};

    use super::read_head;
    use crate::test_socket::connected_pair;

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    /// Connections that complete while nothing accepts wait in the kernel's queue, up to the
    /// backlog: a burst of 1,500 (more than tokio's default of 1024) is all there to accept
    /// at once, none left to a SYN retransmission a second later.
    #[tokio::test]
    async fn a_burst_of_connections_waits_whole_in_the_accept_queue() {
        // The kernel caps the backlog at somaxconn (and holds one more).
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(4096);
        // Each connection takes two descriptors of this process (and other tests run beside).
        let open_files = crate::process::ProcessStats::read().max_fds.unwrap_or(1024) as usize;
        let burst = 1500
            .min(somaxconn + 1)
            .min(open_files.saturating_sub(512) / 2);
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..burst)
            .map(|_| tokio::spawn(TcpStream::connect(address)))
            .collect();
        let mut connected = Vec::with_capacity(burst);
        for client in clients {
            connected.push(client.await.unwrap().unwrap());
        }
        let mut accepted = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await
        {
            accepted += 1;
        }
        assert_eq!(accepted, burst);
    }

    /// `accept_loop` leaves `TCP_NODELAY` to the listener on Linux: an accepted socket must
    /// have it, or every small reply would wait on Nagle's algorithm. Set here as
    /// `accept_loop` sets it on a listener bound by someone else.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let ((server, _), _client) =
            tokio::join!(async { listener.accept().await.unwrap() }, async {
                client.await.unwrap()
            });
        assert!(server.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_head_split_over_reads_is_answered_with_what_follows_it() {
        let (mut server, mut client) = connected_pair().await;
        let reading = tokio::spawn(async move { read_head(&mut server, &|| true).await });
        client.write_all(&HEAD[..20]).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(&HEAD[20..]).await.unwrap();
        client.write_all(b"\x81\x00").await.unwrap();
        let (read_ahead, upgrade) = reading.await.unwrap().expect("a head");
        let upgrade = upgrade.expect("an upgrade");
        assert_eq!(upgrade.head_len, HEAD.len());
        // What followed the head may come with it or not; it is never part of the head.
        assert!(b"\x81\x00".starts_with(&read_ahead), "{read_ahead:?}");
    }

    #[tokio::test]
    async fn a_refused_upgrade_returns_the_whole_head_for_hyper() {
        let (mut server, mut client) = connected_pair().await;
        client.write_all(HEAD).await.unwrap();
        let (read, upgrade) = read_head(&mut server, &|| false).await.expect("a head");
        assert!(upgrade.is_none());
        assert_eq!(read, HEAD);
    }

    #[tokio::test]
    async fn other_requests_return_what_was_read_for_hyper() {
        let (mut server, mut client) = connected_pair().await;
        let request = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n";
        client.write_all(request).await.unwrap();
        let (read, upgrade) = read_head(&mut server, &|| true).await.expect("a head");
        assert!(upgrade.is_none());
        assert_eq!(read, request);
    }

    #[tokio::test]
    async fn a_peer_that_closes_before_its_head_ends_gets_nothing() {
        let (mut server, mut client) = connected_pair().await;
        client.write_all(&HEAD[..30]).await.unwrap();
        drop(client);
        assert!(read_head(&mut server, &|| true).await.is_none());
    }
}
