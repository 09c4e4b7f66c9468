//! The Redis source's connection: one subscribed RESP2 link, read only as fast as its
//! messages are handled.
//!
//! [`Endpoint`] is where to connect and as whom (from the redis crate's URL parsing or its
//! Sentinel lookup); [`Link::open`] connects (TCP, TLS with rustls, or a Unix socket),
//! authenticates and subscribes. The caller then takes messages from [`Link::next_frame`]
//! and reads more with [`Link::read`] only when the buffered ones are handled, so a slow
//! dispatcher leaves the bytes in the kernel's socket buffers and then in Redis's output
//! buffer for this client — whose `client-output-buffer-limit pubsub` eventually makes
//! Redis close the connection; the source then reconnects. The read buffer
//! ([`super::resp::ReadBuffer`]) holds at most one message of at most the configured bound.
//!
//! Liveness: [`Link::send_ping`] writes a `PING` (answered `["pong", ""]` on a subscribed
//! connection); the link is dead when nothing at all arrives for a while after it, see
//! [`Link::pong_deadline`]. Bytes that arrive meanwhile count as life: the answer may wait
//! behind messages in Redis's buffer.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::resp::{Frame, Item, ReadBuffer, encode_command};

/// Where the subscribed connection goes and as whom. Its `Debug` omits the password.
#[derive(Clone)]
pub(crate) struct Endpoint {
    address: Address,
    username: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone)]
enum Address {
    Tcp { host: String, port: u16 },
    Tls { host: String, port: u16 },
    Unix(PathBuf),
}

impl Endpoint {
    /// The endpoint the redis crate parsed (from a URL, or a Sentinel's answer).
    pub(crate) fn from_info(info: &redis::ConnectionInfo) -> anyhow::Result<Self> {
        let address = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Address::Tcp {
                host: host.clone(),
                port: *port,
            },
            redis::ConnectionAddr::TcpTls { insecure: true, .. } => bail!(
                "#insecure (no certificate check) is not supported: give the CA that signed Redis's certificate with source.redis_tls_ca_file"
            ),
            redis::ConnectionAddr::TcpTls { host, port, .. } => Address::Tls {
                host: host.clone(),
                port: *port,
            },
            redis::ConnectionAddr::Unix(path) => Address::Unix(path.clone()),
            other => bail!("unsupported Redis address {other}"),
        };
        let settings = info.redis_settings();
        Ok(Self {
            address,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
        })
    }

    /// Whether the connection needs TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.address, Address::Tls { .. })
    }
}

/// Redis refused the credentials (or their permissions): an operator must act.
#[derive(Debug, thiserror::Error)]
#[error("Redis refused: {0}")]
pub(crate) struct RefusedCredentials(String);

/// Redis closed the subscribed connection.
#[derive(Debug, thiserror::Error)]
#[error("Redis closed the connection")]
pub(crate) struct ClosedByRedis;

/// A byte stream to Redis.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What one value read on a subscribed connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// A published message.
    Message {
        /// Its channel.
        channel: &'a [u8],
        /// Its payload.
        payload: &'a [u8],
    },
    /// The answer to a ping.
    Pong,
    /// A (un)subscription confirmation, or anything else a subscribed connection may
    /// receive and the source does not act on.
    Other,
}

impl<'a> Incoming<'a> {
    /// Reads one frame of a subscribed connection; an error reply is an error.
    pub(crate) fn of(frame: &Frame<'a>) -> anyhow::Result<Self> {
        match frame {
            Frame::Array(elements) => {
                let kept = elements.kept();
                let kind = kept.first().and_then(Item::bytes).unwrap_or_default();
                Ok(match (kind, kept) {
                    (b"message", [_, channel, payload]) => match (channel.bytes(), payload.bytes())
                    {
                        (Some(channel), Some(payload)) => Self::Message { channel, payload },
                        _ => bail!("Redis sent a message that is not two strings"),
                    },
                    (b"pong", _) => Self::Pong,
                    _ => Self::Other,
                })
            }
            Frame::Item(Item::Simple(b"PONG")) => Ok(Self::Pong),
            Frame::Item(Item::Error(error)) => Err(redis_error(error)),
            Frame::Item(_) => Ok(Self::Other),
        }
    }
}

/// An error reply as an error; refused credentials or permissions as [`RefusedCredentials`].
fn redis_error(error: &[u8]) -> anyhow::Error {
    let text = String::from_utf8_lossy(error).into_owned();
    let code = text.split(' ').next().unwrap_or_default();
    if matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM") {
        anyhow::Error::new(RefusedCredentials(text))
    } else {
        anyhow::anyhow!("Redis answered an error: {text}")
    }
}

/// One subscribed connection.
pub(crate) struct Link {
    stream: Box<dyn Stream>,
    buffer: ReadBuffer,
    /// When the link counts as dead unless something arrives (a ping is unanswered).
    pong_deadline: Option<Instant>,
    /// How long an unanswered ping waits for anything from Redis.
    patience: std::time::Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("buffer", &self.buffer)
            .field("pong_deadline", &self.pong_deadline)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects to `endpoint`, authenticates and subscribes to `channels`; values of more
    /// than `max_frame` bytes are refused. `tls` is required for a TLS endpoint.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        tls: Option<&Arc<rustls::ClientConfig>>,
        max_frame: usize,
        channels: &[String],
    ) -> anyhow::Result<Self> {
        let stream: Box<dyn Stream> = match &endpoint.address {
            Address::Tcp { host, port } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .with_context(|| format!("connecting to {host}:{port}"))?;
                tcp.set_nodelay(true)?;
                Box::new(tcp)
            }
            Address::Tls { host, port } => {
                let tls = tls.context("a rediss:// address without a TLS configuration")?;
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .with_context(|| format!("connecting to {host}:{port}"))?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .with_context(|| format!("{host:?} is not a host name for TLS"))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS with {host}:{port}"))?;
                Box::new(stream)
            }
            Address::Unix(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to {}", path.display()))?,
            ),
        };
        let mut link = Self::over(stream, max_frame);
        if let Some(password) = &endpoint.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(username) = &endpoint.username {
                auth.push(username.as_bytes());
            }
            auth.push(password.as_bytes());
            link.send(&auth).await.context("sending AUTH")?;
            match link.reply().await.context("reading AUTH's answer")? {
                Reply::Ok => {}
                Reply::Error(error) => return Err(redis_error(error.as_bytes())),
                Reply::Other => bail!("Redis answered AUTH with something else than OK"),
            }
        }
        let mut subscribe: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        subscribe.extend(channels.iter().map(String::as_bytes));
        link.send(&subscribe).await.context("sending SUBSCRIBE")?;
        for channel in channels {
            link.confirmation(channel)
                .await
                .with_context(|| format!("subscribing to {channel}"))?;
        }
        Ok(link)
    }

    fn over(stream: Box<dyn Stream>, max_frame: usize) -> Self {
        Self {
            stream,
            buffer: ReadBuffer::new(max_frame),
            pong_deadline: None,
            patience: std::time::Duration::ZERO,
        }
    }

    /// Reads values until the one confirming the subscription to `channel`.
    async fn confirmation(&mut self, channel: &str) -> anyhow::Result<()> {
        loop {
            if let Some((frame, size)) = self.buffer.next_frame()? {
                let confirmed = match frame {
                    Frame::Array(elements) => matches!(
                        elements.kept(),
                        [Item::Bulk(b"subscribe"), Item::Bulk(name), _] if *name == channel.as_bytes()
                    ),
                    Frame::Item(Item::Error(error)) => return Err(redis_error(error)),
                    Frame::Item(_) => false,
                };
                if !confirmed {
                    bail!("Redis answered SUBSCRIBE with something else than its confirmation");
                }
                self.buffer.consume(size);
                return Ok(());
            }
            self.read().await?;
        }
    }

    /// The answer to a command sent before subscribing.
    async fn reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((frame, size)) = self.buffer.next_frame()? {
                let reply = match frame {
                    Frame::Item(Item::Simple(b"OK")) => Reply::Ok,
                    Frame::Item(Item::Error(error)) => {
                        Reply::Error(String::from_utf8_lossy(error).into_owned())
                    }
                    _ => Reply::Other,
                };
                self.buffer.consume(size);
                return Ok(reply);
            }
            self.read().await?;
        }
    }

    async fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut command = Vec::new();
        encode_command(&mut command, args);
        self.stream.write_all(&command).await?;
        self.stream.flush().await
    }

    /// The value at the front of the read buffer, if it is all there; hand its size to
    /// [`Self::consume`] when done with it.
    pub(crate) fn next_frame(&mut self) -> anyhow::Result<Option<(Frame<'_>, usize)>> {
        Ok(self.buffer.next_frame()?)
    }

    /// Drops a value [`Self::next_frame`] returned.
    pub(crate) fn consume(&mut self, size: usize) {
        self.buffer.consume(size);
    }

    /// Reads more bytes (cancel-safe); an error when Redis closed the connection or the
    /// value being read is larger than the bound.
    pub(crate) async fn read(&mut self) -> anyhow::Result<()> {
        let space = self.buffer.space()?;
        let read = self
            .stream
            .read(space)
            .await
            .context("reading from Redis")?;
        if read == 0 {
            return Err(ClosedByRedis.into());
        }
        self.buffer.filled(read);
        self.made_progress();
        Ok(())
    }

    /// Sends a ping unless one is unanswered; the link is dead when nothing arrives for
    /// `timeout` after it.
    pub(crate) async fn send_ping(&mut self, timeout: std::time::Duration) -> anyhow::Result<()> {
        if self.pong_deadline.is_none() {
            tokio::time::timeout(timeout, self.send(&[b"PING"]))
                .await
                .context("sending a ping timed out")?
                .context("sending a ping")?;
            self.patience = timeout;
            self.pong_deadline = Some(Instant::now() + timeout);
        }
        Ok(())
    }

    /// The ping was answered.
    pub(crate) fn pong_received(&mut self) {
        self.pong_deadline = None;
    }

    /// Something arrived or was handled: an unanswered ping gets its full time again from
    /// now (its answer may be queued behind messages).
    pub(crate) fn made_progress(&mut self) {
        if let Some(deadline) = &mut self.pong_deadline {
            *deadline = Instant::now() + self.patience;
        }
    }

    /// When the link counts as dead if nothing arrives before, if a ping is unanswered.
    pub(crate) fn pong_deadline(&self) -> Option<Instant> {
        self.pong_deadline
    }

    /// The read buffer's capacity now.
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buffer.capacity()
    }
}

enum Reply {
    Ok,
    Error(String),
    Other,
}

/// The TLS configuration for a `rediss://` endpoint: the CA in `ca_pem` (else the system's
/// trust store, as the redis crate loads it), the client certificate chain and key in
/// `client_pem`, SNI on.
pub(crate) fn tls_config(
    ca_pem: Option<&[u8]>,
    client_pem: Option<(&[u8], &[u8])>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(certificate.context("source.redis_tls_ca_file: not a PEM certificate")?)
                    .context("source.redis_tls_ca_file: not a usable CA certificate")?;
            }
        }
        None => {
            let mut found = rustls_native_certs::load_native_certs();
            if let Some(error) = found.errors.pop() {
                return Err(error).context("loading the system's trusted certificates");
            }
            for certificate in found.certs {
                roots
                    .add(certificate)
                    .context("a system certificate that rustls cannot use")?;
            }
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client_pem {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .context("source.redis_tls_cert_file: not a PEM certificate chain")?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .context("source.redis_tls_key_file: not a PEM private key")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("source.redis_tls_cert_file / redis_tls_key_file cannot be used")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(input: &[u8]) -> anyhow::Result<Incoming<'_>> {
        match super::super::resp::parse(input, 1 << 20).unwrap() {
            super::super::resp::Parsed::Frame(frame, _) => Incoming::of(&frame),
            incomplete => panic!("{incomplete:?}"),
        }
    }

    #[test]
    fn subscribed_frames_are_told_apart() {
        assert_eq!(
            incoming(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\n{}\r\n").unwrap(),
            Incoming::Message {
                channel: b"c",
                payload: b"{}"
            }
        );
        assert_eq!(
            incoming(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").unwrap(),
            Incoming::Pong
        );
        assert_eq!(incoming(b"+PONG\r\n").unwrap(), Incoming::Pong);
        assert_eq!(
            incoming(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n").unwrap(),
            Incoming::Other
        );
        assert!(incoming(b"*3\r\n$7\r\nmessage\r\n:1\r\n$2\r\n{}\r\n").is_err());
        let refused = incoming(b"-NOPERM no permissions\r\n").unwrap_err();
        assert!(refused.is::<RefusedCredentials>(), "{refused:#}");
        let other = incoming(b"-ERR unknown\r\n").unwrap_err();
        assert!(!other.is::<RefusedCredentials>(), "{other:#}");
    }

    /// A ping unanswered while nothing arrives sets a deadline; bytes arriving (the answer
    /// may wait behind messages) push it back; the answer clears it.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_ping_has_a_deadline_that_arriving_bytes_push_back() {
        use std::time::Duration;
        let (ours, mut redis) = tokio::io::duplex(1 << 16);
        let mut link = Link::over(Box::new(ours), 1 << 20);
        assert_eq!(link.pong_deadline(), None);
        let sent = Instant::now();
        link.send_ping(Duration::from_secs(5)).await.unwrap();
        assert_eq!(link.pong_deadline(), Some(sent + Duration::from_secs(5)));
        let mut command = [0u8; 14];
        redis.read_exact(&mut command).await.unwrap();
        assert_eq!(&command, b"*1\r\n$4\r\nPING\r\n");
        // A second ping while one is unanswered is not sent.
        link.send_ping(Duration::from_secs(5)).await.unwrap();

        tokio::time::advance(Duration::from_secs(4)).await;
        redis
            .write_all(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\n{}\r\n")
            .await
            .unwrap();
        link.read().await.unwrap();
        let pushed_back = link.pong_deadline().unwrap();
        assert_eq!(pushed_back, Instant::now() + Duration::from_secs(5));
        let (frame, size) = link.next_frame().unwrap().unwrap();
        assert!(matches!(
            Incoming::of(&frame).unwrap(),
            Incoming::Message { .. }
        ));
        link.consume(size);

        redis
            .write_all(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
            .await
            .unwrap();
        link.read().await.unwrap();
        let (frame, size) = link.next_frame().unwrap().unwrap();
        assert_eq!(Incoming::of(&frame).unwrap(), Incoming::Pong);
        link.consume(size);
        link.pong_received();
        assert_eq!(link.pong_deadline(), None);
        // A closed connection is an error.
        drop(redis);
        assert!(link.read().await.unwrap_err().is::<ClosedByRedis>());
    }

    #[test]
    fn the_endpoints_debug_hides_the_password() {
        use redis::IntoConnectionInfo;
        let info = "redis://lq:hunter2@127.0.0.1:6390"
            .into_connection_info()
            .unwrap();
        let endpoint = Endpoint::from_info(&info).unwrap();
        let shown = format!("{endpoint:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("lq"),
            "{shown}"
        );
        assert!(!endpoint.is_tls());
        let insecure = "rediss://127.0.0.1:6390/#insecure"
            .into_connection_info()
            .unwrap();
        assert!(Endpoint::from_info(&insecure).is_err());
    }
}
