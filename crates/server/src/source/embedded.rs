//! The embedded default source: parse-server's pub/sub messages POSTed to this server.
//!
//! `POST /livequery/v1/publish/afterSave` (or `afterDelete`, `clearCache`) with the exact
//! message parse-server publishes to Redis (`{currentParseObject, originalParseObject?,
//! classLevelPermissions?}`, or an array of them), authenticated with the master key. A
//! script, a Cloud Code `afterSave` webhook or a test can drive it with curl. Because this
//! source has no database, it also keeps the sessions it needs in memory: `_Session` objects
//! it is fed register or revoke their tokens, and `/livequery/v1/sessions`,
//! `/livequery/v1/users/{id}/roles` and `/livequery/v1/schemas/{class}` set sessions, roles and
//! class-level permissions directly (see `protocol-spec/ingest.md`).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use livequery_matcher::ChangeKind;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Source;
use crate::identity::memory::MemoryIdentities;
use crate::ingest::{AuthChange, Ingest};
use crate::pubsub::{Message, MessageError};

/// The pub/sub channel a message was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `afterSave`: creates and updates.
    AfterSave,
    /// `afterDelete`.
    AfterDelete,
    /// `clearCache`: `{"userId": …}`, a user's roles changed.
    ClearCache,
}

impl Channel {
    /// Parses a channel name as it appears in the URL.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "afterSave" => Self::AfterSave,
            "afterDelete" => Self::AfterDelete,
            "clearCache" => Self::ClearCache,
            _ => return None,
        })
    }
}

/// Why an ingest request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is not a valid message (HTTP 400).
    #[error("message {index}: {source}")]
    Invalid {
        /// Position in a batch.
        index: usize,
        /// What is wrong.
        source: MessageError,
    },
    /// A `clearCache` body without a string `userId` (HTTP 400).
    #[error("clearCache needs {{\"userId\": <string>}}")]
    BadClearCache,
    /// The server is shutting down or the source is not running (HTTP 503).
    #[error("the server is not accepting events")]
    Unavailable,
}

/// A validated ingest body.
#[derive(Debug)]
pub enum Batch {
    /// `clearCache`: the users whose roles changed.
    ClearCache(Vec<String>),
    /// `afterSave` / `afterDelete`: the changes, in order.
    Changes(ChangeKind, Vec<Message>),
}

impl Batch {
    /// Validates one message or an array of them posted to `channel`: all of it, or none.
    pub fn parse(channel: Channel, body: Value) -> Result<Self, IngestError> {
        let items = match body {
            Value::Array(items) => items,
            single => vec![single],
        };
        let kind = match channel {
            Channel::ClearCache => {
                let users = items
                    .iter()
                    .map(|item| {
                        item.get("userId")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or(IngestError::BadClearCache)
                    })
                    .collect::<Result<_, _>>()?;
                return Ok(Self::ClearCache(users));
            }
            Channel::AfterSave => ChangeKind::Save,
            Channel::AfterDelete => ChangeKind::Delete,
        };
        let messages = items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                Message::parse(kind, item).map_err(|source| IngestError::Invalid { index, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::Changes(kind, messages))
    }
}

/// The embedded source.
#[derive(Debug)]
pub struct EmbeddedSource {
    /// The server's ingest, set when the source starts running.
    ingest: OnceLock<Ingest>,
    /// Sessions, roles and schemas this source is told about (its identity provider).
    memory: Arc<MemoryIdentities>,
}

impl EmbeddedSource {
    /// A source whose sessions and schemas live in `memory`.
    pub fn new(memory: Arc<MemoryIdentities>) -> Self {
        Self {
            ingest: OnceLock::new(),
            memory,
        }
    }

    /// The in-memory identity store this source maintains.
    pub fn memory(&self) -> &Arc<MemoryIdentities> {
        &self.memory
    }

    fn ingest(&self) -> Result<&Ingest, IngestError> {
        self.ingest.get().ok_or(IngestError::Unavailable)
    }

    /// Accepts one message or an array of messages posted to `channel`; returns how many
    /// were accepted. A batch is validated completely before any of it is published.
    pub async fn accept(&self, channel: Channel, body: Value) -> Result<usize, IngestError> {
        let ingest = self.ingest()?;
        let messages = match Batch::parse(channel, body)? {
            Batch::ClearCache(users) => {
                for user_id in &users {
                    ingest.auth_changed(AuthChange::UserRoles { user_id }).await;
                }
                return Ok(users.len());
            }
            Batch::Changes(_, messages) => messages,
        };
        let count = messages.len();
        for message in messages {
            // This source is its own session store: a `_Session` object fed to it registers
            // or revokes its token before the ingest re-resolves that token.
            if message.class_name() == "_Session" {
                self.memory.record_session(message.kind, &message.current);
            }
            ingest
                .publish_feed_message(message)
                .await
                .map_err(|_| IngestError::Unavailable)?;
        }
        Ok(count)
    }

    /// Registers a session token for a user (`PUT /livequery/v1/sessions/{token}`).
    pub async fn put_session(
        &self,
        token: &str,
        user_id: &str,
        roles: Option<Vec<String>>,
        expires_at_ms: Option<i64>,
    ) {
        self.memory.put_session(token, user_id, expires_at_ms);
        if let Some(roles) = roles {
            self.memory.set_user_roles(user_id, roles);
        }
        if let Ok(ingest) = self.ingest() {
            ingest.auth_changed(AuthChange::Session { token }).await;
            ingest.auth_changed(AuthChange::UserRoles { user_id }).await;
        }
    }

    /// Revokes a session token (`DELETE /livequery/v1/sessions/{token}`); returns whether
    /// it existed.
    pub async fn delete_session(&self, token: &str) -> bool {
        let existed = self.memory.remove_session(token).is_some();
        if let Ok(ingest) = self.ingest() {
            ingest.auth_changed(AuthChange::Session { token }).await;
        }
        existed
    }

    /// Sets a user's roles (`PUT /livequery/v1/users/{id}/roles`).
    pub async fn set_user_roles(&self, user_id: &str, roles: Vec<String>) {
        self.memory.set_user_roles(user_id, roles);
        if let Ok(ingest) = self.ingest() {
            ingest.auth_changed(AuthChange::UserRoles { user_id }).await;
        }
    }

    /// Sets a class's class-level permissions (`PUT /livequery/v1/schemas/{class}`).
    pub async fn put_schema(&self, class_name: &str, clp: Value) -> Result<(), IngestError> {
        self.memory.put_schema(class_name, clp);
        self.ingest()?
            .auth_changed(AuthChange::Schema { class_name })
            .await;
        Ok(())
    }
}

#[async_trait]
impl Source for EmbeddedSource {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn run(
        self: Arc<Self>,
        ingest: Ingest,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        ingest.set_connected(true);
        // A second `run` would keep the first ingest; there is only ever one.
        let _ = self.ingest.set(ingest.clone());
        shutdown.cancelled().await;
        ingest.set_connected(false);
        Ok(())
    }
}
