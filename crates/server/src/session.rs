//! The state of one WebSocket client: `connect`, `subscribe`, `update`, `unsubscribe` and
//! `query`, with the reference's state rules (parse-livequery.md §1.6) and its known bugs
//! fixed (a second `connect` replaces the first client instead of leaking it).
//!
//! Replies go through the connection's outbox, in order with events: `subscribed` is queued
//! before the subscription is registered (so no event can precede it), `unsubscribed` after
//! it is removed (so no event can follow it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use livequery_matcher::auth::ReadOp;
use livequery_matcher::{CompileOptions, Query, QueryId, SubqueryPolicy};
use livequery_protocol::error::msg;
use livequery_protocol::{
    ClientId, ClientMessage, ConnectRequest, EncodedObject, Envelope, ErrorCode, ProtocolError,
    QueryRequest, RequestId, ServerMessage, SubscribeRequest, UnsubscribeRequest, WireError,
};
use serde_json::{Map, Value, json};

use crate::auth::keys::{self, KeyCheck};
use crate::context::ServerCtx;
use crate::hub::{Identity, Subscription, filtered_object};
use crate::metrics::DropReason;
use crate::outbox::Outbox;

/// A connected client.
#[derive(Debug)]
struct Client {
    id: ClientId,
    envelope: Arc<Envelope>,
    master: bool,
    token: Option<String>,
    subscriptions: HashMap<RequestId, Registered>,
}

#[derive(Debug)]
struct Registered {
    query_id: QueryId,
    subscription: Arc<Subscription>,
    where_: Map<String, Value>,
}

/// One socket's protocol state.
#[derive(Debug)]
pub struct Session {
    ctx: Arc<ServerCtx>,
    outbox: Arc<Outbox>,
    client: Option<Client>,
}

impl Session {
    /// A session for a fresh socket.
    pub fn new(ctx: Arc<ServerCtx>, outbox: Arc<Outbox>) -> Self {
        Self {
            ctx,
            outbox,
            client: None,
        }
    }

    /// Whether the socket has sent a successful `connect`.
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// The client id, once connected.
    pub fn client_id(&self) -> Option<&ClientId> {
        self.client.as_ref().map(|c| &c.id)
    }

    fn send(&self, message: ServerMessage<'_>) {
        // A refused push means the client is being cut off as too slow; the connection
        // task is already closing it.
        let _ = self.outbox.push(message.encode());
    }

    fn error(&self, error: WireError, request_id: Option<RequestId>) {
        tracing::debug!(code = error.code.code(), error = %error.message, ?request_id, "error frame");
        self.ctx.metrics.error_frames.fetch_add(1, Relaxed);
        self.send(ServerMessage::Error {
            error: &error,
            request_id,
        });
    }

    /// Handles a text frame.
    pub async fn handle_text(&mut self, text: &str) {
        match ClientMessage::decode(text) {
            Ok(message) => self.handle(message).await,
            Err(err) => self.reject(err),
        }
    }

    /// Handles a binary frame (answered like the reference: the buffer has no `op`).
    pub fn handle_binary(&mut self, payload: &[u8]) {
        if let Err(err) = ClientMessage::decode_binary(payload) {
            self.reject(err);
        }
    }

    fn reject(&mut self, err: ProtocolError) {
        match err.to_wire() {
            Some(wire) => self.error(wire, None),
            None => {
                self.ctx.metrics.invalid_json.fetch_add(1, Relaxed);
                tracing::debug!(error = %err, "ignoring a frame that is not JSON");
            }
        }
    }

    async fn handle(&mut self, message: ClientMessage) {
        match message {
            ClientMessage::Connect(connect) => self.connect(connect),
            ClientMessage::Subscribe(subscribe) => {
                if self.client.is_none() {
                    return self.error(
                        WireError::new(
                            ErrorCode::ClientOrSubscriptionNotFound,
                            msg::NOT_CONNECTED_SUBSCRIBING,
                        ),
                        None,
                    );
                }
                self.subscribe(subscribe).await;
            }
            ClientMessage::Update(update) => self.update(update).await,
            ClientMessage::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            ClientMessage::Query(query) => self.query(query).await,
        }
    }

    fn connect(&mut self, request: ConnectRequest) {
        let config = &self.ctx.config;
        let master = match keys::check(&config.key_pairs, &request) {
            KeyCheck::Rejected => {
                return self.error(
                    WireError::new(ErrorCode::InvalidKey, msg::INVALID_KEY),
                    None,
                );
            }
            KeyCheck::Accepted { master } => master,
        };
        if config.check_application_id && request.application_id != config.app_id {
            return self.error(
                WireError::new(ErrorCode::InvalidKey, "Invalid applicationId"),
                None,
            );
        }
        // A second connect replaces the first client: its subscriptions go with it.
        if self.client.is_some() {
            self.disconnect();
        }
        let id = ClientId::new(uuid::Uuid::new_v4().to_string());
        let envelope = Arc::new(Envelope::new(
            id.clone(),
            request.installation_id.as_deref(),
        ));
        self.send(ServerMessage::Connected {
            envelope: &envelope,
        });
        tracing::debug!(client_id = %id, master, "connected");
        self.ctx.metrics.clients.fetch_add(1, Relaxed);
        self.client = Some(Client {
            id,
            envelope,
            master,
            token: request.session_token.filter(|t| !t.is_empty()),
            subscriptions: HashMap::new(),
        });
    }

    async fn update(&mut self, request: SubscribeRequest) {
        let Some(client) = &mut self.client else {
            // The reference's update is "unsubscribe, then subscribe": both halves fail.
            self.error(
                WireError::new(
                    ErrorCode::ClientOrSubscriptionNotFound,
                    msg::NOT_CONNECTED_UNSUBSCRIBING,
                ),
                None,
            );
            self.error(
                WireError::new(
                    ErrorCode::ClientOrSubscriptionNotFound,
                    msg::NOT_CONNECTED_SUBSCRIBING,
                ),
                None,
            );
            return;
        };
        match client.subscriptions.remove(&request.request_id) {
            Some(old) => self.ctx.hub.remove(old.query_id, &old.subscription),
            None => {
                let error =
                    WireError::subscription_not_found(client.id.as_str(), request.request_id);
                self.error(error, None);
            }
        }
        self.subscribe(request).await;
    }

    async fn subscribe(&mut self, request: SubscribeRequest) {
        let ctx = self.ctx.clone();
        let config = &ctx.config;
        let request_id = request.request_id;
        let fail = |this: &Self, code: ErrorCode, message: String| {
            this.error(WireError::new(code, message), Some(request_id))
        };
        let Some(client) = &self.client else { return };
        let replacing = client.subscriptions.contains_key(&request_id);
        if !replacing
            && client.subscriptions.len() >= config.limits.max_subscriptions_per_connection
        {
            ctx.metrics.dropped(DropReason::SubscriptionLimit);
            let limit = config.limits.max_subscriptions_per_connection;
            return fail(
                self,
                ErrorCode::LimitExceeded,
                format!("Too many subscriptions on this connection (limit {limit})"),
            );
        }
        let master = client.master;
        let token = request
            .session_token
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| client.token.clone());
        let session = match token {
            Some(token) => Some(ctx.auth.identity(&token).await),
            None => None,
        };
        let identity = Identity { master, session };
        let class_name = request.query.class_name;
        let mut where_ = request.query.where_;

        if class_name == "_Session" {
            // A client only ever sees its own sessions, master included.
            let user = identity
                .session
                .as_ref()
                .and_then(|cell| cell.reader().user_id.clone());
            let Some(user) = user else {
                return fail(
                    self,
                    ErrorCode::InvalidSessionToken,
                    msg::INVALID_SESSION_TOKEN.to_owned(),
                );
            };
            where_.insert(
                "user".into(),
                json!({"__type": "Pointer", "className": "_User", "objectId": &*user}),
            );
        }

        let options = CompileOptions {
            max_depth: config.limits.max_query_depth,
            allow_regex: config.allow_regex || master,
            subqueries: if ctx.subqueries.is_some() {
                SubqueryPolicy::Represent
            } else {
                SubqueryPolicy::Reject
            },
        };
        let mut query = match Query::compile(&where_, &options) {
            Ok(query) => query,
            Err(err) => return fail(self, ErrorCode::InvalidQuery, err.to_string()),
        };
        if let Some(resolver) = &ctx.subqueries
            && !query.subqueries().is_empty()
        {
            let reader = identity.reader().clone();
            if let Err(err) = resolver.bind(&mut query, &reader).await {
                return fail(self, ErrorCode::InvalidQuery, err.to_string());
            }
        }

        let op = if query.object_id_lookup().is_some() {
            ReadOp::Get
        } else {
            ReadOp::Find
        };
        let permissions = ctx.auth.class_permissions(&class_name).await;
        if let Some(permissions) = &permissions {
            let reader = identity.reader();
            use livequery_matcher::auth::ReadAccess;
            match permissions.read_access(op, &reader) {
                ReadAccess::Granted | ReadAccess::PointerFields(_) => {}
                ReadAccess::RequiresAuthentication => {
                    return fail(
                        self,
                        ErrorCode::RequiresAuthentication,
                        msg::PERMISSION_DENIED.to_owned(),
                    );
                }
                ReadAccess::Forbidden => {
                    return fail(
                        self,
                        ErrorCode::OperationForbidden,
                        msg::PERMISSION_DENIED.to_owned(),
                    );
                }
            }
            // A protected field must not be usable as an oracle through `where` or `watch`.
            let own_user_object = class_name == "_User"
                && reader
                    .user_id
                    .as_deref()
                    .is_some_and(|id| where_.get("objectId").and_then(Value::as_str) == Some(id));
            if !reader.master && !own_user_object {
                let protected = permissions.protected_fields(&class_name, &reader, None);
                let watched = request.query.watch.iter().flatten().map(String::as_str);
                if query
                    .referenced_fields()
                    .chain(watched)
                    .any(|field| protected.contains(&field))
                {
                    return fail(
                        self,
                        ErrorCode::OperationForbidden,
                        msg::PERMISSION_DENIED.to_owned(),
                    );
                }
            }
        }

        let Some(client) = &mut self.client else {
            return;
        };
        if let Some(old) = client.subscriptions.remove(&request_id) {
            self.ctx.hub.remove(old.query_id, &old.subscription);
        }
        let subscription = Arc::new(Subscription {
            outbox: self.outbox.clone(),
            envelope: client.envelope.clone(),
            request_id,
            class_name: class_name.into(),
            keys: request.query.keys.map(Vec::into_boxed_slice),
            watch: request.query.watch.map(Vec::into_boxed_slice),
            identity,
            op,
        });
        let _ = self.outbox.push(
            ServerMessage::Subscribed {
                envelope: &client.envelope,
                request_id,
            }
            .encode(),
        );
        let query_id = self.ctx.hub.insert(subscription.clone(), query);
        tracing::debug!(client_id = %client.id, %request_id, class = %subscription.class_name, "subscribed");
        client.subscriptions.insert(
            request_id,
            Registered {
                query_id,
                subscription,
                where_,
            },
        );
    }

    fn unsubscribe(&mut self, request: UnsubscribeRequest) {
        let Some(client) = &mut self.client else {
            return self.error(
                WireError::new(
                    ErrorCode::ClientOrSubscriptionNotFound,
                    msg::NOT_CONNECTED_UNSUBSCRIBING,
                ),
                None,
            );
        };
        let Some(old) = client.subscriptions.remove(&request.request_id) else {
            let error = WireError::subscription_not_found(client.id.as_str(), request.request_id);
            return self.error(error, None);
        };
        self.ctx.hub.remove(old.query_id, &old.subscription);
        let envelope = client.envelope.clone();
        self.send(ServerMessage::Unsubscribed {
            envelope: &envelope,
            request_id: request.request_id,
        });
    }

    async fn query(&mut self, request: QueryRequest) {
        let request_id = request.request_id;
        let Some(client) = &self.client else {
            return self.error(
                WireError::new(
                    ErrorCode::ClientOrSubscriptionNotFound,
                    msg::NOT_CONNECTED_QUERYING,
                ),
                None,
            );
        };
        let Some(registered) = client.subscriptions.get(&request_id) else {
            let error = WireError::query_subscription_not_found(client.id.as_str(), request_id);
            return self.error(error, None);
        };
        let Some(reader) = self.ctx.reader.clone() else {
            let error = WireError::new(
                ErrorCode::CommandUnavailable,
                "The configured source cannot read current objects",
            );
            return self.error(error, Some(request_id));
        };
        let subscription = registered.subscription.clone();
        let where_ = registered.where_.clone();
        let Some(query) = self.ctx.hub.query(registered.query_id) else {
            return;
        };
        let envelope = client.envelope.clone();
        let limit = self.ctx.config.limits.query_result_limit;
        let found = tokio::time::timeout(
            self.ctx.config.lookup_timeout * 2,
            reader.find(&subscription.class_name, &where_, &query, limit),
        )
        .await;
        let objects = match found {
            Ok(Ok(objects)) => objects,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "query op: reading current objects failed");
                return self.error(
                    WireError::new(ErrorCode::ScriptFailed, format!("query failed: {err}")),
                    Some(request_id),
                );
            }
            Err(_) => {
                return self.error(
                    WireError::new(ErrorCode::Timeout, "query timed out"),
                    Some(request_id),
                );
            }
        };
        let permissions = self
            .ctx
            .auth
            .class_permissions(&subscription.class_name)
            .await;
        let reader_now = subscription.identity.reader();
        let results: Vec<EncodedObject> = objects
            .iter()
            .filter(|object| query.matches(object))
            .filter_map(|object| {
                filtered_object(
                    &subscription.class_name,
                    object,
                    &reader_now,
                    subscription.op,
                    permissions.as_deref(),
                    subscription.keys.as_deref(),
                )
            })
            .take(limit)
            .collect();
        self.send(ServerMessage::Result {
            envelope: &envelope,
            request_id,
            results: &results,
        });
    }

    /// Removes the client and all its subscriptions (socket closed, or a second `connect`).
    pub fn disconnect(&mut self) {
        if let Some(client) = self.client.take() {
            for (_, registered) in client.subscriptions {
                self.ctx
                    .hub
                    .remove(registered.query_id, &registered.subscription);
            }
            self.ctx.metrics.clients.fetch_sub(1, Relaxed);
            tracing::debug!(client_id = %client.id, "client removed");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.disconnect();
    }
}
