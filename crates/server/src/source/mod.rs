//! Change sources: where events come from.
//!
//! A [`Source`] runs as one task, owns its connection and reconnect policy ([`crate::retry`]),
//! and hands parse-server-shaped messages ([`crate::pubsub::Message`]) and auth changes to
//! the server through [`crate::ingest::Ingest`], the one door every source uses.
//!
//! - [`embedded`]: the HTTP ingest API (parse-server's messages posted to livequery).
//! - [`mongo`]: MongoDB change streams on parse-server's database.
//! - [`redis`]: parse-server's Redis pub/sub feed, over a connection of its own
//!   (`redis_link`) that reads RESP ([`resp`]) from one bounded buffer, only as fast as
//!   the dispatch takes the messages.

pub mod embedded;
pub mod mongo;
pub mod redis;
mod redis_link;
pub mod resp;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;

/// A change source.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// A short name for logs and `/health`.
    fn name(&self) -> &'static str;
    /// Delivers events into `sink` until `shutdown`; owns reconnects and backoff. Returns
    /// an error only for failures it cannot recover from.
    async fn run(self: Arc<Self>, sink: Ingest, shutdown: CancellationToken) -> anyhow::Result<()>;
}
