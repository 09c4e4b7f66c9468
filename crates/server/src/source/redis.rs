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
//! The client is built once, when the source is: a URL, a certificate or a key that could
//! never work stops the server at start-up instead of feeding a retry loop. TLS (`rediss://`)
//! uses rustls with the process's ring provider, the system's trust store or the configured
//! CA, and an optional client certificate. Errors that need an operator (a refused
//! certificate, refused credentials) are logged as errors, with the setting to check.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use livequery_matcher::ChangeKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Source;
use crate::config::RedisConfig;
use crate::ingest::{AuthChange, Ingest};
use crate::pubsub::{FromJsonError, Message};
use crate::retry::{Backoff, sleep_unless_shutdown};

/// How often the subscribed connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// How long a connect or a ping may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages already received that are delivered one after the other before the
/// subscription's loop looks at its ping timer and the shutdown signal again.
const DRAIN_AT_ONCE: usize = 256;

/// Subscribes to parse-server's Redis channels.
#[derive(Debug)]
pub struct RedisSource {
    connector: Connector,
    prefix: String,
    ping_interval: Duration,
}

/// How the Redis to subscribe to is found.
enum Connector {
    /// One address (credentials and certificates included; its `Debug` redacts them).
    Direct(redis::Client),
    /// The current master of a Sentinel-managed set, asked for on every connection. A tokio
    /// mutex: the lookup holds it across `.await`, and only the source's task takes it.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
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
    async fn client(&self) -> anyhow::Result<redis::Client> {
        match self {
            Self::Direct(client) => Ok(client.clone()),
            Self::Sentinel(sentinel) => tokio::time::timeout(IO_TIMEOUT, async {
                sentinel.lock().await.async_get_client().await
            })
            .await
            .context("asking Redis Sentinel for the master timed out")?
            .context("asking Redis Sentinel for the master"),
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
                connector: Connector::Sentinel(tokio::sync::Mutex::new(sentinel)),
                prefix: config.channel_prefix.clone(),
                ping_interval: PING_INTERVAL,
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
        let client = if config.tls_ca_file.is_empty() && config.tls_cert_file.is_empty() {
            if config.url.starts_with("rediss://") {
                install_crypto_provider();
            }
            redis::Client::open(info).context("invalid source.redis_url")?
        } else {
            install_crypto_provider();
            let read = |name: &str, path: &str| {
                std::fs::read(path).with_context(|| format!("{name}: reading {path:?}"))
            };
            let root_cert = (!config.tls_ca_file.is_empty())
                .then(|| read("source.redis_tls_ca_file", &config.tls_ca_file))
                .transpose()?;
            let client_tls = if config.tls_cert_file.is_empty() {
                None
            } else {
                Some(redis::ClientTlsConfig {
                    client_cert: read("source.redis_tls_cert_file", &config.tls_cert_file)?,
                    client_key: read("source.redis_tls_key_file", &config.tls_key_file)?,
                })
            };
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .context("source.redis_tls_*: the certificates cannot be used")?
        };
        Ok(Self {
            connector: Connector::Direct(client),
            prefix: config.channel_prefix.clone(),
            ping_interval: PING_INTERVAL,
        })
    }

    /// Checks the link every `interval` instead of every 15 s.
    #[must_use]
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
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
        let client = self.connector.client().await?;
        let pubsub = tokio::time::timeout(IO_TIMEOUT, client.get_async_pubsub())
            .await
            .context("connect timed out")??;
        let (mut control, mut messages) = pubsub.split();
        for channel in self.channels() {
            control
                .subscribe(&channel)
                .await
                .with_context(|| format!("subscribing to {channel}"))?;
        }
        *connected = true;
        ingest.set_connected(true);
        tracing::info!(channels = ?self.channels(), "subscribed to parse-server's Redis channels");
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ping_interval,
            self.ping_interval,
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = messages.next() => {
                    let Some(message) = message else { bail!("the Redis connection closed") };
                    // Then the messages already received (up to a bound), without going
                    // back to the select (its timer and shutdown signal) for each.
                    let deliver = |message: redis::Msg| async move {
                        self.deliver(ingest, message.get_channel_name(), message.get_payload_bytes()).await
                    };
                    match deliver_received(message, &mut messages, DRAIN_AT_ONCE, deliver).await {
                        Ok(Received::More) => {}
                        Ok(Received::End) => bail!("the Redis connection closed"),
                        // The dispatch workers are gone: the server is shutting down.
                        Err(crate::ingest::IngestClosed) => return Ok(()),
                    }
                }
                _ = ping.tick() => {
                    // A subscribed RESP2 connection answers PING with `["pong", ""]`, RESP3 with
                    // `PONG`: accept any reply.
                    tokio::time::timeout(IO_TIMEOUT, control.ping::<redis::Value>()).await.context("ping timed out")?.context("ping failed")?;
                }
            }
        }
    }

    async fn deliver(
        &self,
        ingest: &Ingest,
        channel: &str,
        payload: &[u8],
    ) -> Result<(), crate::ingest::IngestClosed> {
        let Some(name) = channel.strip_prefix(self.prefix.as_str()) else {
            return Ok(());
        };
        let kind = match name {
            "afterSave" => ChangeKind::Save,
            "afterDelete" => ChangeKind::Delete,
            "clearCache" => {
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
        let message = match Message::from_json(kind, payload) {
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
        ingest.publish_feed_message(message).await
    }
}

/// What is left of a stream after [`deliver_received`].
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// The stream may yield more (it had nothing ready, or the bound was reached).
    More,
    /// The stream ended.
    End,
}

/// Delivers `first`, then the messages `messages` has ready without waiting, in order, at
/// most `max` in all.
async fn deliver_received<M, S, F, Fut, E>(
    first: M,
    messages: &mut S,
    max: usize,
    mut deliver: F,
) -> Result<Received, E>
where
    S: futures_util::Stream<Item = M> + Unpin,
    F: FnMut(M) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    deliver(first).await?;
    for _ in 1..max {
        match messages.next().now_or_never() {
            Some(Some(message)) => deliver(message).await?,
            Some(None) => return Ok(Received::End),
            None => return Ok(Received::More),
        }
    }
    Ok(Received::More)
}

/// reqwest and the MongoDB driver share this provider: one crypto library in the process.
fn install_crypto_provider() {
    // Fails only when a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What an operator must fix, for errors a retry will not heal until they do.
fn operator_hint(err: &anyhow::Error) -> Option<&'static str> {
    let refused_credentials = err
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn collect(into: &mut Vec<u32>) -> impl FnMut(u32) -> std::future::Ready<Result<(), ()>> {
        move |m| {
            into.push(m);
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn received_messages_are_delivered_in_order_in_bounded_runs() {
        // 600 messages ready, then nothing yet.
        let mut ready = stream::iter(1..=600u32).chain(stream::pending());
        let mut delivered = Vec::new();
        // Runs of at most 256, none lost at a run's end.
        for expected_run in [256, 256, 88] {
            let first = ready.next().await.unwrap();
            let before = delivered.len();
            let left = deliver_received(first, &mut ready, 256, collect(&mut delivered)).await;
            assert_eq!(left, Ok(Received::More));
            assert_eq!(delivered.len() - before, expected_run);
        }
        assert_eq!(delivered, (1..=600).collect::<Vec<_>>());

        // A stream that ends.
        let mut ending = stream::iter(2..=5u32);
        let mut delivered = Vec::new();
        let left = deliver_received(1, &mut ending, 256, collect(&mut delivered)).await;
        assert_eq!(left, Ok(Received::End));
        assert_eq!(delivered, vec![1, 2, 3, 4, 5]);

        // A failed delivery stops the run at once.
        let mut more = stream::iter(2..=5u32);
        let mut seen = Vec::new();
        let stopped = deliver_received(1, &mut more, 256, |m| {
            seen.push(m);
            std::future::ready(Err::<(), _>("closed"))
        })
        .await;
        assert_eq!((stopped, seen), (Err("closed"), vec![1]));
    }
}
