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

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures_util::StreamExt;
use livequery_matcher::ChangeKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{EventSink, Message, Source};

/// How often the subscribed connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// How long a connect or a ping may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Subscribes to parse-server's Redis channels.
#[derive(Debug)]
pub struct RedisSource {
    url: String,
    prefix: String,
    ping_interval: Duration,
}

impl RedisSource {
    /// A source for `url`; channels are `<prefix>afterSave`, `<prefix>afterDelete` and
    /// `<prefix>clearCache` (parse-server uses the app id as prefix).
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            ping_interval: PING_INTERVAL,
        }
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

    /// One connection's lifetime: connect, subscribe, deliver until it fails or shutdown.
    /// Returns `Ok` only on shutdown.
    async fn session(
        &self,
        sink: &EventSink,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url.as_str()).context("invalid source.redis_url")?;
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
        sink.set_connected(true);
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
                    let channel = message.get_channel_name().to_owned();
                    let payload: String = match message.get_payload() {
                        Ok(payload) => payload,
                        Err(err) => {
                            tracing::warn!(channel, error = %err, "ignoring a non-text Redis message");
                            continue;
                        }
                    };
                    if self.deliver(sink, &channel, &payload).await.is_err() {
                        // The dispatcher is gone: the server is shutting down.
                        return Ok(());
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
        sink: &EventSink,
        channel: &str,
        payload: &str,
    ) -> Result<(), super::SinkClosed> {
        let Some(name) = channel.strip_prefix(self.prefix.as_str()) else {
            return Ok(());
        };
        let value: Value = match serde_json::from_str(payload) {
            Ok(value) => value,
            Err(err) => {
                tracing::warn!(channel, error = %err, "ignoring a Redis message that is not JSON");
                return Ok(());
            }
        };
        let kind = match name {
            "afterSave" => ChangeKind::Save,
            "afterDelete" => ChangeKind::Delete,
            "clearCache" => {
                match value.get("userId").and_then(Value::as_str) {
                    Some(user) => sink.clear_user(user).await,
                    None => tracing::warn!(channel, "ignoring a clearCache message without userId"),
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let message = match Message::parse(kind, value) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(channel, error = %err, "ignoring a malformed parse-server message");
                return Ok(());
            }
        };
        note_auth_changes(sink, &message).await;
        sink.publish(message).await
    }
}

/// Sessions and roles that parse-server publishes (when `_Session`/`_Role` are live classes)
/// invalidate cached identities at once, instead of after `cache_timeout`.
pub(crate) async fn note_auth_changes(sink: &EventSink, message: &Message) {
    match message.current.get("className").and_then(Value::as_str) {
        Some("_Session") => {
            if let Some(token) = message.current.get("sessionToken").and_then(Value::as_str) {
                sink.session_changed(token).await;
            }
        }
        // A role's membership or hierarchy may have changed, for users the message does not
        // name (parse-server's clearCache only names the user who made the change, and
        // master-key edits publish nothing): re-resolve every identity in the background.
        Some("_Role") => sink.roles_changed(),
        _ => {}
    }
}

#[async_trait]
impl Source for RedisSource {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn run(
        self: Arc<Self>,
        sink: EventSink,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let mut connected = false;
            let result = self.session(&sink, &shutdown, &mut connected).await;
            sink.set_connected(false);
            match result {
                Ok(()) => return Ok(()),
                Err(err) => {
                    if connected {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = format!("{err:#}"), retry_in = ?delay, "Redis source disconnected; messages published meanwhile are lost");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Exponential backoff with full jitter, so many instances do not reconnect in lockstep.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays grow from `base` to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in `[ceiling / 2, ceiling]`, the ceiling doubling per attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        ceiling / 2 + ceiling / 2 * jitter / 1000
    }

    /// Back to the first delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(
            delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100),
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(
            delays[7] >= Duration::from_secs(1),
            "reaches the cap: {delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
