//! The Redis source: parse-server's own LiveQuery feed.
//!
//! parse-server configured with `liveQuery: { classNames, redisURL }` publishes every save
//! and delete of a live class to `<appId>afterSave` / `<appId>afterDelete`, and
//! `{"userId": …}` to `<appId>clearCache` when a user's roles change. This source subscribes
//! to those channels and turns each message into an event exactly as parse-server's
//! LiveQuery server does — which makes livequery a drop-in replacement for that process.
//!
//! Redis pub/sub does not store messages: whatever is published while this source is
//! disconnected is lost, as it is for the reference server. The source reconnects with a
//! jittered exponential backoff, pings the connection to notice a dead link, and reports
//! its state through `/health` and `livequery_source_connected`. (The MongoDB change-stream
//! source resumes from a stored position instead and loses nothing.)
//!
//! The subscribed connection is livequery's own (`redis_link`, reading RESP with
//! [`super::resp`]); the redis crate parses the URL and asks Sentinel for the master. Messages
//! are read from the socket only as fast as the dispatch workers take them (each delivery is
//! awaited before more is read), so a burst waits in the kernel's socket buffers and then in
//! Redis, not in livequery: the read buffer holds at most one message of at most
//! `limits.max_ingest_bytes` (the embedded ingest's bound, 16 MiB by default); a larger one
//! is logged as an error and the source reconnects. Redis closes a subscriber that falls
//! behind by more than its `client-output-buffer-limit pubsub` (32 MB, or 8 MB for a minute,
//! by default); that is logged and the source reconnects, losing what was published
//! meanwhile, as parse-server's LiveQuery server would.
//!
//! The settings are checked once, when the source is built: a URL, a certificate or a key
//! that could never work stops the server at start-up instead of feeding a retry loop. TLS
//! (`rediss://`) uses rustls with the process's ring provider, the system's trust store (as
//! the redis crate loads it) or the configured CA, and an optional client certificate.
//! Errors that need an operator (a refused certificate, refused credentials, a message past
//! the bound) are logged as errors, with the setting to check.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use livequery_matcher::ChangeKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Source;
use super::redis_link::{ClosedByRedis, Endpoint, Incoming, Link, RefusedCredentials};
use super::resp::RespError;
use crate::config::RedisConfig;
use crate::ingest::{AuthChange, Ingest};
use crate::pubsub::{FromJsonError, MessageText};
use crate::retry::{Backoff, sleep_unless_shutdown};

/// How often the subscribed connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// How long a connect or a ping may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages already received that are delivered one after the other before the
/// subscription's loop looks at its ping timer and the shutdown signal again.
const DRAIN_AT_ONCE: usize = 256;
/// The largest message payload read, unless set with
/// [`RedisSource::with_max_message_bytes`]: the default of `limits.max_ingest_bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Room for the rest of a message's frame (its type, the channel name, the lengths).
const FRAME_HEADROOM: usize = 1024;

/// Subscribes to parse-server's Redis channels.
#[derive(Debug)]
pub struct RedisSource {
    connector: Connector,
    /// For `rediss://` endpoints.
    tls: Option<TlsSettings>,
    prefix: String,
    ping_interval: Duration,
    max_message_bytes: usize,
    read_buffer_peak: ReadBufferPeak,
}

/// The largest capacity the subscribed connection's read buffer has had, in bytes (it
/// holds at most one message of at most the bound, or 64 KiB). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReadBufferPeak(Arc<AtomicUsize>);

impl ReadBufferPeak {
    /// The peak so far.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.0.load(Relaxed)
    }

    fn observe(&self, capacity: usize) {
        self.0.fetch_max(capacity, Relaxed);
    }
}

/// The TLS configuration (its `Debug` says only that there is one: it holds the client key).
struct TlsSettings(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSettings(<redacted>)")
    }
}

/// How the Redis to subscribe to is found.
enum Connector {
    /// One address (credentials included; its `Debug` redacts them).
    Direct(Endpoint),
    /// The current master of a Sentinel-managed set, asked for on every connection. A tokio
    /// mutex: the lookup holds it across `.await`, and only the source's task takes it.
    Sentinel(Box<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(client) => f.debug_tuple("Direct").field(client).finish(),
            Self::Sentinel(_) => f.write_str("Sentinel"),
        }
    }
}

impl Connector {
    async fn endpoint(&self) -> anyhow::Result<Endpoint> {
        match self {
            Self::Direct(endpoint) => Ok(endpoint.clone()),
            Self::Sentinel(sentinel) => {
                let client = tokio::time::timeout(IO_TIMEOUT, async {
                    sentinel.lock().await.async_get_client().await
                })
                .await
                .context("asking Redis Sentinel for the master timed out")?
                .context("asking Redis Sentinel for the master")?;
                Endpoint::from_info(client.get_connection_info())
                    .context("the master Redis Sentinel named")
            }
        }
    }
}

impl RedisSource {
    /// A source for `url` (credentials in the URL); channels are `<prefix>afterSave`,
    /// `<prefix>afterDelete` and `<prefix>clearCache` (parse-server uses the app id as prefix).
    pub fn new(url: &str, prefix: impl Into<String>) -> anyhow::Result<Self> {
        Self::from_config(&RedisConfig {
            url: url.to_owned(),
            channel_prefix: prefix.into(),
            username: String::new(),
            password: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
        })
    }

    /// A source for the configured Redis. Fails on settings no retry could heal: a URL the
    /// driver cannot use, unreadable or invalid certificate or key files.
    pub fn from_config(config: &RedisConfig) -> anyhow::Result<Self> {
        use redis::IntoConnectionInfo;
        // Credentials kept out of the URL (`source.redis_username` / `redis_password`).
        let credentials = |mut settings: redis::RedisConnectionInfo| {
            if !config.username.is_empty() {
                settings = settings.set_username(&config.username);
            }
            if !config.password.is_empty() {
                settings = settings.set_password(&config.password);
            }
            settings
        };
        if !config.sentinels.is_empty() {
            let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(credentials(redis::RedisConnectionInfo::default()));
            let sentinel = redis::sentinel::SentinelClient::build(
                config.sentinels.iter().map(String::as_str).collect(),
                config.sentinel_master.as_str(),
                Some(node),
                redis::sentinel::SentinelServerType::Master,
            )
            .context("invalid source.redis_sentinels")?;
            return Ok(Self {
                connector: Connector::Sentinel(Box::new(tokio::sync::Mutex::new(sentinel))),
                tls: None,
                prefix: config.channel_prefix.clone(),
                ping_interval: PING_INTERVAL,
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                read_buffer_peak: ReadBufferPeak::default(),
            });
        }
        // The driver's errors never carry the URL, so they cannot leak its password.
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .context("invalid source.redis_url")?;
        let settings = credentials(info.redis_settings().clone());
        let info = info.set_redis_settings(settings);
        let endpoint = Endpoint::from_info(&info).context("invalid source.redis_url")?;
        let tls = if endpoint.is_tls() {
            install_crypto_provider();
            let read = |name: &str, path: &str| {
                std::fs::read(path).with_context(|| format!("{name}: reading {path:?}"))
            };
            let ca = (!config.tls_ca_file.is_empty())
                .then(|| read("source.redis_tls_ca_file", &config.tls_ca_file))
                .transpose()?;
            let client = if config.tls_cert_file.is_empty() {
                None
            } else {
                Some((
                    read("source.redis_tls_cert_file", &config.tls_cert_file)?,
                    read("source.redis_tls_key_file", &config.tls_key_file)?,
                ))
            };
            let client = client
                .as_ref()
                .map(|(chain, key)| (chain.as_slice(), key.as_slice()));
            Some(TlsSettings(
                super::redis_link::tls_config(ca.as_deref(), client)
                    .context("source.redis_tls_*: the certificates cannot be used")?,
            ))
        } else {
            None
        };
        Ok(Self {
            connector: Connector::Direct(endpoint),
            tls,
            prefix: config.channel_prefix.clone(),
            ping_interval: PING_INTERVAL,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            read_buffer_peak: ReadBufferPeak::default(),
        })
    }

    /// Checks the link every `interval` instead of every 15 s.
    #[must_use]
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Reads messages of at most `bytes` (their payload) instead of
    /// [`DEFAULT_MAX_MESSAGE_BYTES`]; a larger one is an error and a reconnect.
    #[must_use]
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The read buffer's peak capacity, for tests and diagnostics.
    #[must_use]
    pub fn read_buffer_peak(&self) -> ReadBufferPeak {
        self.read_buffer_peak.clone()
    }

    fn channels(&self) -> [String; 3] {
        ["afterSave", "afterDelete", "clearCache"].map(|c| format!("{}{c}", self.prefix))
    }

    /// One Redis connection's lifetime: connect, subscribe, deliver until it fails or
    /// shutdown. Returns `Ok` only on shutdown.
    async fn subscribe_and_deliver(
        &self,
        ingest: &Ingest,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> anyhow::Result<()> {
        let endpoint = self.connector.endpoint().await?;
        let channels = self.channels();
        let max_frame = self
            .max_message_bytes
            .saturating_add(FRAME_HEADROOM + self.prefix.len());
        let mut link = tokio::time::timeout(
            IO_TIMEOUT,
            Link::open(
                &endpoint,
                self.tls.as_ref().map(|tls| &tls.0),
                max_frame,
                &channels,
            ),
        )
        .await
        .context("connect timed out")??;
        *connected = true;
        ingest.set_connected(true);
        tracing::info!(?channels, "subscribed to parse-server's Redis channels");
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ping_interval,
            self.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The messages already read (up to a bound), without going back to the select
            // (its timer and shutdown signal) for each.
            let mut handled = 0;
            while handled < DRAIN_AT_ONCE {
                let Some((frame, size)) = link.next_frame()? else {
                    break;
                };
                match Incoming::of(&frame)? {
                    Incoming::Message { channel, payload } => {
                        if self.deliver(ingest, channel, payload).await.is_err() {
                            // The dispatch workers are gone: the server is shutting down.
                            return Ok(());
                        }
                    }
                    Incoming::Pong => link.pong_received(),
                    Incoming::Other => {}
                }
                link.consume(size);
                handled += 1;
            }
            if handled > 0 {
                link.made_progress();
            }
            let more_buffered = handled == DRAIN_AT_ONCE;
            let pong_deadline = link.pong_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = ping.tick() => link.send_ping(IO_TIMEOUT).await?,
                () = sleep_until(pong_deadline), if pong_deadline.is_some() => {
                    anyhow::bail!("Redis did not answer a ping");
                }
                // A whole run was handled: the rest is read after the checks above.
                () = std::future::ready(()), if more_buffered => {}
                read = link.read() => {
                    read?;
                    self.read_buffer_peak.observe(link.buffer_capacity());
                }
            }
        }
    }

    async fn deliver(
        &self,
        ingest: &Ingest,
        channel: &[u8],
        payload: &[u8],
    ) -> Result<(), crate::ingest::IngestClosed> {
        let Some(name) = channel.strip_prefix(self.prefix.as_bytes()) else {
            return Ok(());
        };
        let channel = String::from_utf8_lossy(channel);
        let channel = channel.as_ref();
        let kind = match name {
            b"afterSave" => ChangeKind::Save,
            b"afterDelete" => ChangeKind::Delete,
            b"clearCache" => {
                let value: Value = match serde_json::from_slice(payload) {
                    Ok(value) => value,
                    Err(err) => {
                        tracing::warn!(channel, error = %err, "ignoring a Redis message that is not JSON");
                        return Ok(());
                    }
                };
                match value.get("userId").and_then(Value::as_str) {
                    Some(user_id) => ingest.auth_changed(AuthChange::UserRoles { user_id }).await,
                    None => tracing::warn!(channel, "ignoring a clearCache message without userId"),
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let message = match MessageText::read(kind, payload) {
            Ok(message) => message,
            Err(FromJsonError::Json(err)) => {
                tracing::warn!(channel, error = %err, "ignoring a Redis message that is not JSON");
                return Ok(());
            }
            Err(FromJsonError::Message(err)) => {
                tracing::warn!(channel, error = %err, "ignoring a malformed parse-server message");
                return Ok(());
            }
        };
        ingest.publish_feed_text(message).await
    }
}

/// reqwest and the MongoDB driver share this provider: one crypto library in the process.
fn install_crypto_provider() {
    // Fails only when a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What an operator must fix, for errors a retry will not heal until they do.
fn operator_hint(err: &anyhow::Error) -> Option<&'static str> {
    let refused_credentials = err.chain().any(|e| e.is::<RefusedCredentials>())
        || err
            .chain()
            .filter_map(|e| e.downcast_ref::<redis::RedisError>())
            .any(|redis| {
                redis.kind() == redis::ErrorKind::AuthenticationFailed
                    || redis
                        .code()
                        .is_some_and(|code| matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM"))
            });
    if refused_credentials {
        return Some(
            "Redis refused livequery's credentials: check the user and password in source.redis_url (or source.redis_username / redis_password) and the user's ACL (it needs +subscribe +ping on the channels)",
        );
    }
    if err
        .chain()
        .any(|e| matches!(e.downcast_ref(), Some(RespError::TooLarge { .. })))
    {
        return Some(
            "Redis sent a message larger than limits.max_ingest_bytes: raise it if parse-server's objects are that large",
        );
    }
    let text = format!("{err:#}");
    if text.contains("certificate") || text.contains("InvalidCertificate") {
        return Some(
            "Redis's TLS certificate was not accepted: check source.redis_tls_ca_file (the CA that signed the server's certificate) and that the URL's host name is in the certificate",
        );
    }
    None
}

#[async_trait]
impl Source for RedisSource {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn run(
        self: Arc<Self>,
        ingest: Ingest,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::for_sources();
        loop {
            let mut connected = false;
            let result = self
                .subscribe_and_deliver(&ingest, &shutdown, &mut connected)
                .await;
            ingest.set_connected(false);
            match result {
                Ok(()) => return Ok(()),
                Err(err) => {
                    if connected {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    let error = format!("{err:#}");
                    match operator_hint(&err) {
                        Some(hint) => tracing::error!(error, retry_in = ?delay, "{hint}"),
                        // Once subscribed, this is how Redis drops a subscriber that fell behind.
                        None if connected && err.is::<ClosedByRedis>() => {
                            tracing::warn!(error, retry_in = ?delay, "Redis closed the subscription: Redis drops a subscriber that falls behind by more than its client-output-buffer-limit for pubsub clients (raise it, or give livequery more CPU); messages published meanwhile are lost")
                        }
                        None => {
                            tracing::warn!(error, retry_in = ?delay, "Redis source disconnected; messages published meanwhile are lost")
                        }
                    }
                    if !sleep_unless_shutdown(delay, &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Waits until `deadline` (forever without one).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
