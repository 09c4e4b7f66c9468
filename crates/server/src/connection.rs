//! The task that owns one WebSocket: it reads frames into the [`ClientState`], writes the
//! connection's outbox to the socket, pings, and enforces the per-connection limits.
//!
//! The task speaks WebSocket itself, on the bare socket: a read lands in a buffer on the
//! stack of the poll that reads, and [`MessageReader`] decodes it at once, keeping only an
//! incomplete frame's bytes, so an idle connection owns no read buffer. Everything the
//! server writes goes out whole between the frames of [`crate::frame_writer`]'s batches:
//! pongs, pings and close frames are written only when no data frame is partly written.
//!
//! A TCP socket is held by the connection's [`Outbox`], and this task reads and writes it
//! through it (`SharedTcp`): a dispatch worker writes an event's frame to it directly when
//! nothing is queued and this task is not writing (see [`crate::outbox`]). This task
//! announces its own writes to the outbox and, before anything else it writes, finishes a
//! frame a direct write left partly written. Other streams are written by this task only.
//!
//! One task per connection, holding its client state. Inbound frames are
//! handled one at a time, in order; while a frame's handling waits (an auth lookup), the
//! task keeps draining the outbox and pinging, so a slow lookup never makes a client look
//! dead or too slow. Writes are batched (every queued frame, few vectored writes, see
//! [`crate::frame_writer`]) and bounded by `write_timeout`.
//!
//! An idle connection's memory is mostly this task's future, so its layout is kept tight:
//! the socket is taken back out of hyper's boxed upgrade, the WebSocket is built inside the
//! one future that serves it (a socket passed as an argument into a nested future would be
//! held twice), and what only a write or a frame's handling needs lives in short-lived
//! boxes.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use livequery_protocol::ClientId;
use livequery_protocol::websocket_frame::{
    CLOSE, CloseCode, PING, PONG, close_frame, control_frame, text_frame_header,
};
use livequery_protocol::websocket_read::{Message, MessageReader, ReadError};
use livequery_protocol::{ServerMessage, WireError};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::client::ClientState;
use crate::frame_writer::FrameWriter;
use crate::metrics::DropReason;
use crate::outbox::{Drain, Frame, Outbox};
use crate::state::ServerState;

/// Frames written per flush.
const WRITE_BATCH: usize = 256;

/// Frames (and receipt times) a write batch holds without a heap allocation of its own.
const INLINE_BATCH: usize = 8;

/// Bytes read from the socket per read, into a buffer on the stack of the poll that reads.
const READ_CHUNK: usize = 4096;

/// Reads per poll before the task yields to others (a peer that keeps the socket full
/// must not monopolize its worker thread).
const READS_PER_POLL: usize = 16;

/// The connection's socket and the decoder of what it reads.
struct Socket<S> {
    stream: S,
    reader: MessageReader,
}

/// A TCP socket held by the connection's [`Outbox`] (which writes events to it directly when
/// the way is clear), read and written by the connection task through it.
struct SharedTcp(Arc<Outbox>);

impl SharedTcp {
    fn tcp(&self) -> &TcpStream {
        self.0
            .socket()
            .expect("a SharedTcp is made only of an outbox that holds its socket")
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = self.tcp();
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // Zeroed only once the socket is readable: a poll that finds nothing to read
            // (most of them) clears nothing.
            match try_read_draining(tcp, buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

/// `TcpStream::try_read`, except that a read returning less than `buf` could take also
/// clears the socket's read readiness: epoll is edge-triggered, so such a read has drained
/// the socket (tokio's own `TcpStream::poll_read` assumes the same), and the next wait is for
/// the next edge instead of a `recv` that finds nothing. Readiness that arrives during the
/// read has a newer tick and is kept.
pub(crate) fn try_read_draining(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let wanted = buf.len();
    let mut short = None;
    // `try_io` clears the readiness when its closure reports `WouldBlock`.
    let result = tcp.try_io(Interest::READABLE, || {
        let n = tcp.try_read(buf)?;
        if 0 < n && n < wanted {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => result,
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tcp = self.tcp();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = self.tcp();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write_vectored(bufs) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    // Writes go straight to the socket: nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    // The connection never half-closes: it ends with the close handshake, and the socket is
    // closed when the outbox holding it is dropped.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The rest of a frame a direct write left partly written, with its header.
fn unfinished(partial: Option<(Frame, usize)>) -> Vec<u8> {
    let Some((frame, skip)) = partial else {
        return Vec::new();
    };
    let mut bytes = frame.to_wire();
    bytes.drain(..skip);
    bytes
}

/// What a read from the peer gave.
enum Inbound {
    /// A whole message.
    Message(Message),
    /// The peer closed the TCP connection, or the read failed (with this error).
    Gone(Option<io::Error>),
    /// The peer violated the protocol: close with the error's code.
    Violation(ReadError),
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The next message, reading the socket as needed. Cancel-safe: what a read returned
    /// is decoded (and kept by the reader) within the same poll.
    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if self.reader.has_buffered() {
            match self.reader.read(&[]) {
                Ok(Some(message)) => return Poll::Ready(Inbound::Message(message)),
                Ok(None) => {}
                Err(err) => return Poll::Ready(Inbound::Violation(err)),
            }
        }
        for _ in 0..READS_PER_POLL {
            // Not zeroed: the read fills what it reports, and a poll that finds nothing to
            // read (most of them) should not pay for clearing 4 KiB.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Inbound::Gone(Some(err))),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(Inbound::Gone(None));
                }
                Poll::Ready(Ok(())) => {}
            }
            match self.reader.read(buf.filled()) {
                Ok(Some(message)) => return Poll::Ready(Inbound::Message(message)),
                Ok(None) => {}
                Err(err) => return Poll::Ready(Inbound::Violation(err)),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    async fn inbound(&mut self) -> Inbound {
        poll_fn(|cx| self.poll_inbound(cx)).await
    }

    /// Writes `bytes` (whole frames) and flushes.
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }
}

/// Where a connection is in its ping cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    /// Opened since the clock's last tick for it: no ping yet.
    Joined,
    /// The last ping was answered (or none was sent): ping at the next tick.
    Answered,
    /// A ping is unanswered: drop the peer at the next tick.
    Awaiting,
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The peer closed or went away.
    Peer,
    /// We close with a code (after an optional error frame).
    Close(CloseCode, &'static str, Option<WireError>),
    /// The peer sent a close frame: answer it with this one, then end.
    CloseReply(Vec<u8>),
    /// Drop the TCP connection without a close handshake (dead or stuck peer).
    Terminate,
    /// The server ends the connection with this frame (e.g. events were lost), then
    /// closes with 1012 (service restart) so the client reconnects.
    Abort(Bytes),
}

impl End {
    /// Why, in the words of the connection's closing log line.
    fn reason(&self) -> &'static str {
        match self {
            Self::Peer | Self::CloseReply(_) => "peer closed",
            Self::Close(_, reason, _) => reason,
            Self::Terminate => "dropped (dead, stuck or failed peer)",
            Self::Abort(_) => "events lost",
        }
    }
}

/// Serves one upgraded WebSocket (the handshake answered) until it closes.
pub fn serve(
    upgraded: Upgraded,
    ctx: Arc<ServerState>,
    peer: SocketAddr,
) -> impl Future<Output = ()> {
    ctx.metrics.connections_accepted.fetch_add(1, Relaxed);
    // The client port serves plain TCP: read and write the socket itself rather than
    // hyper's boxed stream with its rewind buffer, starting with the bytes hyper read past
    // the handshake (a client may send its `connect` right behind the upgrade request).
    // Copied: they are a slice of hyper's read buffer, which must not stay alive.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Either::Left(serve_tcp(parts.io.into_inner(), &parts.read_buf, ctx, peer)),
        Err(upgraded) => {
            let limits = &ctx.config.limits;
            let outbox = Arc::new(Outbox::new(
                limits.outbound_queue_frames,
                limits.outbound_queue_bytes,
            ));
            let ws = Socket {
                stream: TokioIo::new(upgraded),
                reader: MessageReader::new(limits.max_message_bytes),
            };
            Either::Right(run(ws, outbox, ctx, peer))
        }
    }
}

/// Serves a WebSocket whose handshake was answered on the bare socket
/// ([`crate::listener`]); `read_ahead` holds what the client sent behind its request head.
pub fn serve_socket(
    stream: TcpStream,
    read_ahead: &[u8],
    ctx: Arc<ServerState>,
    peer: SocketAddr,
) -> impl Future<Output = ()> + use<> {
    ctx.metrics.connections_accepted.fetch_add(1, Relaxed);
    serve_tcp(stream, read_ahead, ctx, peer)
}

/// Serves a WebSocket on a TCP socket, starting with the bytes read past its handshake
/// (decoded first: a `connect` may be among them). The outbox holds the socket, so
/// workers can write events to it directly.
fn serve_tcp(
    stream: TcpStream,
    read_ahead: &[u8],
    ctx: Arc<ServerState>,
    peer: SocketAddr,
) -> impl Future<Output = ()> + use<> {
    let limits = &ctx.config.limits;
    let mut reader = MessageReader::new(limits.max_message_bytes);
    reader.buffer(read_ahead);
    let outbox = Arc::new(Outbox::with_socket(
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        Some(stream),
    ));
    let ws = Socket {
        stream: SharedTcp(outbox.clone()),
        reader,
    };
    run(ws, outbox, ctx, peer)
}

/// The span of a connection's log lines, at info: who it is (`peer`, and `client_id` once
/// connected). Made when a line is logged or a frame handled, not held: an idle
/// connection keeps no span (with its entry in the subscriber's registry) alive.
fn span(peer: SocketAddr, client_id: Option<&ClientId>) -> Span {
    let span = tracing::info_span!("connection", %peer, client_id = tracing::field::Empty);
    if let Some(id) = client_id {
        span.record("client_id", tracing::field::display(id));
    }
    span
}

/// The connection's future: everything in it is held for the connection's whole life.
///
/// An `async move` block rather than an `async fn`: the block uses what it captures in place,
/// where an `async fn` would keep its arguments beside the locals moved out of them.
#[expect(
    clippy::manual_async_fn,
    reason = "the async fn would hold its arguments twice"
)]
fn run<S>(
    mut ws: Socket<S>,
    outbox: Arc<Outbox>,
    ctx: Arc<ServerState>,
    peer: SocketAddr,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let opened = Instant::now();
        let limits = &ctx.config.limits;
        // Cancelled when the graceful drain reaches this connection's wave, or on a stop.
        let closing = ctx.drain.join();
        let mut client = ClientState::new(ctx.clone(), outbox.clone());
        // Woken once per `websocket_timeout` by the shared clock, through the outbox (no timer
        // of our own).
        ctx.pings.join(&outbox);
        let mut ping = Ping::Joined;
        // Boxed and dropped once connected: an idle connection keeps no timer it does not need.
        let mut connect_deadline = Some(Box::pin(sleep(limits.connect_timeout)));

        let end = loop {
            // A ping request wakes the outbox branch below; it is handled here, after whatever
            // woke the task, so a request that came during a frame's handling is not lost.
            if outbox.take_ping_request() {
                match ping {
                    // Joined part-way through the clock's period: the first ping waits for a
                    // whole one, so every ping gets a whole period to be answered.
                    Ping::Joined => ping = Ping::Answered,
                    Ping::Awaiting => {
                        ctx.metrics.dropped(DropReason::PingTimeout);
                        span(peer, client.client_id()).in_scope(|| {
                            tracing::debug!("no pong since the last ping; dropping the peer");
                        });
                        break End::Terminate;
                    }
                    Ping::Answered => {
                        ping = Ping::Awaiting;
                        if let Err(end) = Box::pin(write_with_timeout(
                            &mut ws,
                            &outbox,
                            &control_frame(PING, &[]),
                            ctx.config.limits.write_timeout,
                            &ctx,
                        ))
                        .await
                        {
                            break end;
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                () = closing.cancelled() => break End::Close(CloseCode::AWAY, "server shutting down", None),
                () = outbox.notified() => {
                    // Boxed: a write in progress needs a few hundred bytes that an idle
                    // connection should not carry (one allocation per batch written).
                    let log_span = || span(peer, client.client_id());
                    if let Err(end) = Box::pin(flush_outbox(&mut ws, &outbox, &ctx, &log_span)).await {
                        break end;
                    }
                }
                () = async { connect_deadline.as_mut().expect("checked by the guard").await }, if connect_deadline.is_some() => {
                    ctx.metrics.dropped(DropReason::ConnectTimeout);
                    break End::Close(
                        CloseCode::POLICY,
                        "connect timeout",
                        Some(WireError::connect_timeout()),
                    );
                }
                inbound = ws.inbound() => match inbound {
                    Inbound::Gone(error) => {
                        if let Some(error) = error {
                            span(peer, client.client_id()).in_scope(|| {
                                tracing::debug!(%error, "websocket read failed");
                            });
                        }
                        break End::Peer;
                    }
                    Inbound::Violation(ReadError::MessageTooLarge { limit }) => {
                        ctx.metrics.dropped(DropReason::MessageTooLarge);
                        break End::Close(
                            CloseCode::TOO_BIG,
                            "message too large",
                            Some(WireError::frame_too_large(limit)),
                        );
                    }
                    Inbound::Violation(err) => {
                        span(peer, client.client_id()).in_scope(|| {
                            tracing::debug!(error = %err, "websocket protocol violation");
                        });
                        let reason = if err.close_code() == CloseCode::INVALID_PAYLOAD {
                            "invalid payload"
                        } else {
                            "protocol error"
                        };
                        break End::Close(err.close_code(), reason, None);
                    }
                    Inbound::Message(Message::Pong(_)) => {
                        if ping == Ping::Awaiting {
                            ping = Ping::Answered;
                        }
                    }
                    Inbound::Message(Message::Ping(payload)) => {
                        if let Err(end) = Box::pin(write_with_timeout(&mut ws, &outbox, &control_frame(PONG, &payload), ctx.config.limits.write_timeout, &ctx)).await {
                            break end;
                        }
                    }
                    Inbound::Message(Message::Close(frame)) => {
                        // Echo the peer's code (none for an empty close), then finish.
                        let reply = match frame {
                            Some(frame) => close_frame(frame.code, ""),
                            None => control_frame(CLOSE, &[]),
                        };
                        break End::CloseReply(reply);
                    }
                    Inbound::Message(Message::Binary(payload)) => client.handle_binary(&payload),
                    Inbound::Message(Message::Text(text)) => {
                        // Boxed: a frame's handling (auth lookups included) can need a large
                        // future; kept inline it would enlarge every idle connection's task.
                        let span = span(peer, client.client_id());
                        match Box::pin(handle_text(&mut ws, &mut client, &outbox, &closing, text, &ctx).instrument(span)).await {
                            Ok(Handled::Connected) => connect_deadline = None,
                            Ok(Handled::Done) => {}
                            Err(end) => break end,
                        }
                    }
                },
            }
        };

        let span = span(peer, client.client_id());
        span.in_scope(|| {
            client.disconnect();
            outbox.close();
            tracing::info!(
                reason = end.reason(),
                duration_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
                "connection closed"
            );
        });
        Box::pin(finish(&mut ws, &outbox, end, &ctx).instrument(span)).await;
        outbox.shut_down_socket();
        ctx.metrics.connections.fetch_sub(1, Relaxed);
    }
}

/// What a text frame's handling did.
enum Handled {
    /// The frame was a successful first `connect`.
    Connected,
    /// Anything else (replies, if any, written).
    Done,
}

/// Handles one text frame, keeping the socket serviced while its handling waits, then
/// writes its replies.
async fn handle_text<S>(
    ws: &mut Socket<S>,
    client: &mut ClientState,
    outbox: &Outbox,
    closing: &CancellationToken,
    text: String,
    ctx: &ServerState,
) -> Result<Handled, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let was_connected = client.is_connected();
    {
        let handled = client.handle_text(&text);
        tokio::pin!(handled);
        loop {
            tokio::select! {
                biased;
                () = &mut handled => break,
                () = closing.cancelled() => return Err(End::Close(CloseCode::AWAY, "server shutting down", None)),
                () = outbox.notified() => flush_outbox(ws, outbox, ctx, &Span::current).await?,
            }
        }
    }
    let mut handled = Handled::Done;
    if !was_connected && let Some(id) = client.client_id() {
        // This future runs inside the connection's span.
        Span::current().record("client_id", tracing::field::display(id));
        tracing::info!("client connected");
        handled = Handled::Connected;
    }
    flush_outbox(ws, outbox, ctx, &Span::current).await?;
    Ok(handled)
}

/// Ends the connection as `end` says (boxed by the caller: an idle connection carries none
/// of the close handshake's state).
async fn finish<S>(ws: &mut Socket<S>, outbox: &Outbox, end: End, ctx: &ServerState)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The outbox is closed: no worker writes any more. A frame a direct write left partly
    // written is finished first, so the close handshake starts on a frame boundary.
    let partial = unfinished(outbox.begin_write());
    match end {
        End::Peer | End::Terminate => {}
        End::CloseReply(reply) => {
            let timeout = ctx.config.limits.write_timeout;
            let mut frames = partial;
            frames.extend_from_slice(&reply);
            let _ = tokio::time::timeout(timeout, ws.write_all(&frames)).await;
        }
        End::Abort(frame) => {
            let grace = ctx.config.limits.write_timeout;
            close(
                ws,
                partial,
                CloseCode::RESTART,
                "events lost",
                Some(frame),
                grace,
            )
            .await;
        }
        End::Close(code, reason, error) => {
            tracing::debug!(?code, reason, "closing");
            let grace = if code == CloseCode::AWAY {
                ctx.config.shutdown_grace
            } else {
                ctx.config.limits.write_timeout
            };
            let frame = error.map(|error| {
                ctx.metrics.error_frames.fetch_add(1, Relaxed);
                ServerMessage::Error {
                    error: &error,
                    request_id: None,
                }
                .encode()
            });
            close(ws, partial, code, reason, frame, grace).await;
        }
    }
}

/// Writes every queued frame, in batches of vectored writes straight to the socket.
/// `log_span` makes the span of the (rare) lines this logs: none is made per batch.
async fn flush_outbox<S>(
    ws: &mut Socket<S>,
    outbox: &Outbox,
    ctx: &ServerState,
    log_span: &(dyn Fn() -> Span + Sync),
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The batch's frames and the receipt times of its events live in this (boxed, short-
    // lived) future: a small batch costs no allocation of its own, and an idle connection
    // keeps nothing.
    let mut batch: SmallVec<[Frame; INLINE_BATCH]> = SmallVec::new();
    let mut received: SmallVec<[std::time::Instant; INLINE_BATCH]> = SmallVec::new();
    loop {
        batch.clear();
        received.clear();
        let (state, skip) = outbox.drain_into(&mut batch, &mut received, WRITE_BATCH);
        // Set when the connection must end while a frame is partly written: that frame is
        // finished first, so the close handshake starts on a frame boundary. (A queue that
        // overflowed or was aborted keeps only a frame a direct write left partly written.)
        let mut ending: Option<End> = match state {
            Drain::Open => None,
            Drain::Closed => return Err(End::Terminate),
            Drain::Overflowed => {
                log_span().in_scope(|| {
                    tracing::info!("client too slow: outbound queue overflow; disconnecting");
                });
                Some(End::Close(
                    CloseCode::POLICY,
                    "client too slow",
                    Some(WireError::slow_consumer()),
                ))
            }
            Drain::Abort(frame) => Some(End::Abort(frame)),
        };
        if batch.is_empty() {
            return ending.map_or(Ok(()), Err);
        }
        // Control frames are written whole between batches: never inside a data frame.
        let mut writer = FrameWriter::new(&batch);
        writer.skip(skip);
        let deadline = sleep(ctx.config.limits.write_timeout);
        tokio::pin!(deadline);
        let result = loop {
            let write = poll_fn(|cx| writer.poll_write(cx, Pin::new(&mut ws.stream)));
            tokio::select! {
                biased;
                result = write => break result,
                () = &mut deadline => {
                    ctx.metrics.dropped(DropReason::SlowConsumerWrite);
                    log_span().in_scope(|| {
                        tracing::info!(timeout = ?ctx.config.limits.write_timeout, "client too slow: write blocked; disconnecting");
                    });
                    // The socket cannot take more data: an error frame could not get through.
                    return Err(End::Terminate);
                }
                // While a write is blocked, the workers may overflow the queue: stop
                // waiting and cut the client off now.
                () = outbox.notified(), if ending.is_none() => {
                    if outbox.is_ending() {
                        // Overflow or abort while a write is blocked: stop waiting.
                        let end = match outbox.state() {
                            Drain::Abort(frame) => End::Abort(frame),
                            _ => {
                                log_span().in_scope(|| {
                                    tracing::info!("client too slow: outbound queue overflow; disconnecting");
                                });
                                End::Close(CloseCode::POLICY, "client too slow", Some(WireError::slow_consumer()))
                            }
                        };
                        if !writer.stop_after_current() {
                            return Err(end);
                        }
                        ending = Some(end);
                    }
                }
            }
        };
        if let Err(err) = result {
            log_span().in_scope(|| tracing::debug!(error = %err, "websocket write failed"));
            return Err(End::Terminate);
        }
        if let Some(end) = ending {
            return Err(end);
        }
        ctx.metrics
            .delivery_latency
            .observe_since(&received, std::time::Instant::now());
    }
}

/// Writes whole control frames, within `timeout` (after the rest of a frame a direct write
/// left partly written, if any); no worker writes meanwhile.
async fn write_with_timeout<S>(
    ws: &mut Socket<S>,
    outbox: &Outbox,
    frames: &[u8],
    timeout: Duration,
    ctx: &ServerState,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut bytes = unfinished(outbox.begin_write());
    bytes.extend_from_slice(frames);
    let written = tokio::time::timeout(timeout, ws.write_all(&bytes)).await;
    if matches!(written, Ok(Ok(()))) {
        outbox.end_write();
    }
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Terminate),
        Err(_) => {
            ctx.metrics.dropped(DropReason::SlowConsumerWrite);
            Err(End::Terminate)
        }
    }
}

/// The one close handshake: sends an optional final frame (an error) and a close frame,
/// then waits at most `grace` for the peer's close reply.
async fn close<S>(
    ws: &mut Socket<S>,
    unfinished: Vec<u8>,
    code: CloseCode,
    reason: &'static str,
    final_frame: Option<Bytes>,
    grace: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let mut frames = unfinished;
        if let Some(frame) = final_frame {
            let (header, used) = text_frame_header(frame.len());
            frames.extend_from_slice(&header[..used]);
            frames.extend_from_slice(&frame);
        }
        frames.extend_from_slice(&close_frame(code, reason));
        ws.write_all(&frames).await?;
        // Read until the peer's close reply, or the end of the stream.
        loop {
            match ws.inbound().await {
                Inbound::Message(Message::Close(_)) | Inbound::Gone(_) | Inbound::Violation(_) => {
                    break;
                }
                Inbound::Message(_) => {}
            }
        }
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(grace, handshake).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpStream;

    use super::try_read_draining;
    use crate::test_socket::connected_pair;

    /// Whether the socket counts as readable right now, without waiting for an event.
    async fn readable_now(tcp: &TcpStream) -> bool {
        tokio::time::timeout(Duration::ZERO, tcp.readable())
            .await
            .is_ok()
    }

    /// Waits (boundedly) for what the peer sent, as the connection task does.
    async fn read_next(tcp: &TcpStream, buf: &mut [u8]) -> usize {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tcp.readable().await.unwrap();
                match try_read_draining(tcp, buf) {
                    Ok(n) => return n,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) => panic!("read failed: {err}"),
                }
            }
        })
        .await
        .expect("what the peer sent was never reported readable")
    }

    /// A short read leaves the socket waiting for the next edge (no `recv` that finds
    /// nothing), a full one does not, and nothing sent afterwards is missed either way.
    #[tokio::test]
    async fn a_short_read_clears_readiness_without_losing_later_data() {
        let (server, mut client) = connected_pair().await;
        let mut buf = [0u8; 64];

        client.write_all(b"0123456789").await.unwrap();
        assert_eq!(read_next(&server, &mut buf).await, 10);
        assert!(
            !readable_now(&server).await,
            "a short read drained the socket"
        );

        client.write_all(&[7u8; 64]).await.unwrap();
        assert_eq!(read_next(&server, &mut buf).await, 64);
        assert!(
            readable_now(&server).await,
            "a read that filled the buffer may have left more behind"
        );
        assert!(matches!(
            try_read_draining(&server, &mut buf),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
        ));

        client.write_all(b"later").await.unwrap();
        assert_eq!(read_next(&server, &mut buf).await, 5);
        assert_eq!(&buf[..5], b"later");

        drop(client);
        assert_eq!(read_next(&server, &mut buf).await, 0, "the peer's close");
    }
}
