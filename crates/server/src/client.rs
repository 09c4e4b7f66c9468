//! The state of one WebSocket client: `connect`, `subscribe`, `update`, `unsubscribe` and
//! `query`, with parse-server's state rules (`protocol-spec/frames.md`) and its known bugs
//! fixed (a second `connect` replaces the first client instead of leaking it).
//!
//! Replies go through the connection's outbox, in order with events: `subscribed` is queued
//! before the subscription is registered (so no event can precede it), `unsubscribed` after
//! it is removed (so no event can follow it).
//!
//! Whether a client may subscribe is the authorization gate's decision
//! ([`livequery_matcher::gate::admit`]); this module gathers what the gate needs (the
//! identity, the permissions of the classes involved), compiles the query — off the I/O
//! threads when it is large — and enforces the connection's budget: what its subscriptions
//! hold (compiled queries, index postings, kept `where` text) is bounded by
//! `limits.max_subscription_bytes`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use livequery_matcher::gate::{self, Denial, Reader, Subscriber, SubscriptionRequest};
use livequery_matcher::{CompileOptions, Query, QueryError, SubqueryPolicy};
use livequery_protocol::{
    ClassName, ClientId, ClientMessage, ConnectRequest, EncodedObject, Envelope, NotConnected,
    ProtocolError, QueryRequest, QuerySpec, RequestId, ServerMessage, SubscribeRequest,
    UnsubscribeRequest, WireError,
};
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::client_keys::{self, KeyCheck};
use crate::hooks::{self, Caller, Decision, Trigger};
use crate::hub::{Identity, NewSubscription, Subscription, SubscriptionTerms, encode_visible};
use crate::identity::ClassPermissionMap;
use crate::metrics::DropReason;
use crate::outbox::Outbox;
use crate::state::ServerState;

/// Frames larger than this are compiled on a blocking thread, so that one client's large
/// query never stalls the connections served by the same I/O thread.
const OFFLOAD_COMPILE_BYTES: usize = 64 * 1024;

/// Bytes charged per subscription besides its query (its registration, envelope share,
/// index entry).
const SUBSCRIPTION_OVERHEAD: usize = 512;

/// A connected client. Held by every idle connection: its id and installation id are read
/// from the envelope rather than kept twice.
#[derive(Debug)]
struct Connected {
    envelope: Arc<Envelope>,
    master: bool,
    token: Option<Box<str>>,
    subscriptions: Subscriptions,
    /// Bytes its subscriptions hold (sum of their footprints).
    held: usize,
}

/// A connection's subscriptions by `requestId`: a plain list, searched linearly. Most
/// connections hold one or a few (a hash map's table and hasher state would cost several
/// times what they hold), and `limits.max_subscriptions_per_connection` bounds the search.
/// The first is held inline: a connection with one subscription allocates no list.
#[derive(Debug, Default)]
struct Subscriptions(SmallVec<[Arc<Subscription>; 1]>);

impl Subscriptions {
    fn position(&self, request_id: RequestId) -> Option<usize> {
        self.0.iter().position(|s| s.request_id == request_id)
    }

    fn get(&self, request_id: &RequestId) -> Option<&Arc<Subscription>> {
        self.position(*request_id).map(|at| &self.0[at])
    }

    fn contains_key(&self, request_id: &RequestId) -> bool {
        self.position(*request_id).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn remove(&mut self, request_id: &RequestId) -> Option<Arc<Subscription>> {
        let at = self.position(*request_id)?;
        let removed = self.0.swap_remove(at);
        if self.0.len() <= 1 && self.0.spilled() {
            // Back to one (or none): inline again, the list freed.
            self.0.shrink_to_fit();
        }
        Some(removed)
    }

    /// Adds a subscription whose id is not in the list (callers remove its predecessor).
    fn insert(&mut self, subscription: Arc<Subscription>) {
        debug_assert!(!self.contains_key(&subscription.request_id));
        self.0.push(subscription);
    }
}

/// A subscription checked and compiled, ready to be registered.
#[derive(Debug)]
struct Prepared {
    class_name: ClassName,
    query: Query,
    terms: SubscriptionTerms,
}

/// The error frame for a refusal by the gate.
fn denial_error(denial: Denial) -> WireError {
    match denial {
        Denial::RequiresAuthentication => WireError::requires_authentication(),
        Denial::Forbidden => WireError::forbidden(),
        Denial::InvalidSessionToken => WireError::invalid_session_token(),
    }
}

/// One socket's protocol state.
///
/// It lives in the connection task's future for the connection's whole life, so the client
/// is boxed: inline, its bytes would push every idle connection's task (a cache-line
/// aligned allocation, in steps of 128 bytes) into the next step.
#[derive(Debug)]
pub struct ClientState {
    ctx: Arc<ServerState>,
    outbox: Arc<Outbox>,
    client: Option<Box<Connected>>,
}

impl ClientState {
    /// A session for a fresh socket.
    pub fn new(ctx: Arc<ServerState>, outbox: Arc<Outbox>) -> Self {
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
        self.client.as_ref().map(|c| c.envelope.client_id())
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
            Ok(message) => self.handle(message, text.len()).await,
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
            Some(wire) => self.error(wire, err.request_id()),
            None => {
                self.ctx.metrics.invalid_json.fetch_add(1, Relaxed);
                tracing::debug!(error = %err, "ignoring a frame that is not JSON");
            }
        }
    }

    async fn handle(&mut self, message: ClientMessage, frame_len: usize) {
        match message {
            ClientMessage::Connect(connect) => self.connect(connect).await,
            ClientMessage::Subscribe(subscribe) => {
                if self.client.is_none() {
                    return self.error(WireError::not_connected(NotConnected::Subscribing), None);
                }
                self.subscribe(subscribe, frame_len).await;
            }
            ClientMessage::Update(update) => self.update(update, frame_len).await,
            ClientMessage::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            ClientMessage::Query(query) => self.query(query).await,
        }
    }

    async fn connect(&mut self, request: ConnectRequest) {
        let config = &self.ctx.config;
        let master = match client_keys::check(&config.key_pairs, &request) {
            KeyCheck::Rejected => {
                return self.error(WireError::invalid_key(), None);
            }
            KeyCheck::Accepted { master } => master,
        };
        if config.check_application_id && request.application_id != config.app_id {
            return self.error(WireError::invalid_application_id(), None);
        }
        let token = request.session_token.filter(|t| !t.is_empty());
        if let Some(error) = self
            .before_connect(master, request.installation_id.as_deref(), token.as_deref())
            .await
        {
            return self.error(error, None);
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
        self.client = Some(Box::new(Connected {
            envelope,
            master,
            token: token.map(String::into_boxed_str),
            subscriptions: Subscriptions::default(),
            held: 0,
        }));
    }

    /// The `beforeConnect` hook, when configured: the error frame of its rejection, if any.
    async fn before_connect(
        &self,
        master: bool,
        installation_id: Option<&str>,
        token: Option<&str>,
    ) -> Option<WireError> {
        let hook = self.ctx.hooks.before_connect()?.clone();
        let user_id = match token {
            Some(token) => self
                .ctx
                .identities
                .identity(token)
                .await
                .reader()
                .user_id
                .clone(),
            None => None,
        };
        let caller = Caller {
            master,
            installation_id,
            session_token: token,
            user_id: user_id.as_deref(),
        };
        let request = hooks::request_base(Trigger::BeforeConnect, &caller, &self.ctx.metrics);
        match hook.decide(&Value::Object(request)).await {
            Decision::Proceed(_) => None,
            Decision::Reject(error) => Some(error),
            // Refused by the configuration; as a failure under `reject`, never silence.
            Decision::Drop => Some(WireError::server_failure("beforeConnect hook", "dropped")),
        }
    }

    /// The `beforeSubscribe` hook of the class, when configured: the query as the hook
    /// leaves it, or the error frame of its rejection.
    async fn before_subscribe(
        &self,
        connected: &Connected,
        identity: &Identity,
        token: Option<&str>,
        request_id: RequestId,
        query: &mut QuerySpec,
    ) -> Result<(), WireError> {
        let Some(hook) = self.ctx.hooks.before_subscribe(&query.class_name).cloned() else {
            return Ok(());
        };
        let user_id = identity.session_user_id();
        let caller = Caller {
            master: connected.master,
            installation_id: connected.envelope.installation_id(),
            session_token: token
                .filter(|t| !t.is_empty())
                .or(connected.token.as_deref()),
            user_id: user_id.as_deref(),
        };
        let mut request = hooks::request_base(Trigger::BeforeSubscribe, &caller, &self.ctx.metrics);
        let mut spec = Map::new();
        spec.insert("className".into(), query.class_name.as_str().into());
        spec.insert("where".into(), Value::Object(query.where_.clone()));
        if let Some(keys) = &query.keys {
            spec.insert("keys".into(), keys.clone().into());
        }
        if let Some(watch) = &query.watch {
            spec.insert("watch".into(), watch.clone().into());
        }
        request.insert("className".into(), query.class_name.as_str().into());
        request.insert("requestId".into(), hooks::request_id_json(request_id));
        request.insert("query".into(), Value::Object(spec));
        let answer = match hook.decide(&Value::Object(request)).await {
            Decision::Proceed(answer) => answer,
            Decision::Reject(error) => return Err(error),
            Decision::Drop => {
                return Err(WireError::server_failure("beforeSubscribe hook", "dropped"));
            }
        };
        match hooks::apply_query_rewrite(answer, query) {
            Ok(()) => Ok(()),
            Err(reason) => match hook.failure(reason) {
                Decision::Proceed(_) => Ok(()),
                Decision::Reject(error) => Err(error),
                Decision::Drop => Err(WireError::server_failure("beforeSubscribe hook", "dropped")),
            },
        }
    }

    async fn update(&mut self, request: SubscribeRequest, frame_len: usize) {
        let Some(client) = &mut self.client else {
            // The reference's update is "unsubscribe, then subscribe": both halves fail.
            self.error(WireError::not_connected(NotConnected::Unsubscribing), None);
            self.error(WireError::not_connected(NotConnected::Subscribing), None);
            return;
        };
        match client.subscriptions.remove(&request.request_id) {
            Some(old) => {
                client.held -= old.footprint;
                self.ctx.hub.remove(&old);
            }
            None => {
                let error = WireError::subscription_not_found(
                    client.envelope.client_id().as_str(),
                    request.request_id,
                );
                self.error(error, None);
            }
        }
        self.subscribe(request, frame_len).await;
    }

    async fn subscribe(&mut self, request: SubscribeRequest, frame_len: usize) {
        let request_id = request.request_id;
        match self.prepare(request, frame_len).await {
            Ok(prepared) => self.register(request_id, prepared),
            Err(error) => self.error(error, Some(request_id)),
        }
    }

    /// Everything a subscription needs before it is registered: the identity, the compiled
    /// query, the gate's admission, bound subqueries, and room in the connection's budget.
    async fn prepare(
        &self,
        request: SubscribeRequest,
        frame_len: usize,
    ) -> Result<Prepared, WireError> {
        let request_id = request.request_id;
        let connected = self
            .client
            .as_ref()
            .ok_or_else(|| WireError::not_connected(NotConnected::Subscribing))?;
        self.check_subscription_count(connected, request_id)?;
        let identity = self
            .identity(connected, request.session_token.as_deref())
            .await;
        let mut spec = request.query;
        self.before_subscribe(
            connected,
            &identity,
            request.session_token.as_deref(),
            request_id,
            &mut spec,
        )
        .await?;
        let reader = identity.reader_snapshot();
        let QuerySpec {
            class_name,
            mut where_,
            keys,
            watch,
        } = spec;
        gate::restrict_where(
            &class_name,
            identity.session_user_id().as_deref(),
            &mut where_,
        )
        .map_err(denial_error)?;
        let where_text = self.kept_where(&where_);
        let mut query = self.compile(where_, &reader, frame_len).await?;
        let permissions = self.permissions_involved(&class_name, &query).await;
        let lookup = |class: &str| permissions.get(class).and_then(|p| p.as_deref());
        let admission = gate::admit(
            &SubscriptionRequest {
                class_name: &class_name,
                query: &query,
                watch: watch.as_deref(),
            },
            &reader,
            &lookup,
        )
        .map_err(denial_error)?;
        let subquery_sets = self
            .bind_subqueries(&mut query, &reader, &permissions)
            .await?;
        let footprint = SUBSCRIPTION_OVERHEAD
            + query.footprint()
            + subquery_sets
            + where_text.as_ref().map_or(0, |w| w.len())
            + keys
                .iter()
                .chain(watch.iter())
                .flatten()
                .map(|f| f.len() + 24)
                .sum::<usize>();
        self.check_budget(connected, request_id, footprint)?;
        Ok(Prepared {
            class_name,
            query,
            terms: SubscriptionTerms {
                keys,
                watch,
                identity,
                op: admission.op,
                where_text,
                footprint,
            },
        })
    }

    /// `limits.max_subscriptions_per_connection` (replacing a subscription is always
    /// allowed).
    fn check_subscription_count(
        &self,
        connected: &Connected,
        request_id: RequestId,
    ) -> Result<(), WireError> {
        let limit = self.ctx.config.limits.max_subscriptions_per_connection;
        if !connected.subscriptions.contains_key(&request_id)
            && connected.subscriptions.len() >= limit
        {
            self.ctx.metrics.dropped(DropReason::SubscriptionLimit);
            return Err(WireError::too_many_subscriptions(limit));
        }
        Ok(())
    }

    /// Who the subscription reads as: its own session token, else the connection's. A
    /// subscription token that resolves to no user (unknown, expired, or its lookup failed)
    /// falls back to the connection's token, as the reference's ACL check tries both.
    async fn identity(&self, connected: &Connected, token: Option<&str>) -> Identity {
        let own = token.filter(|t| !t.is_empty());
        let fallback = connected.token.as_deref();
        let mut session = match own.or(fallback) {
            Some(token) => Some(self.ctx.identities.identity(token).await),
            None => None,
        };
        if let (Some(own), Some(fallback)) = (own, fallback)
            && own != fallback
            && session
                .as_ref()
                .is_some_and(|cell| cell.reader().user_id.is_none())
        {
            tracing::debug!("the subscription's session token is invalid; using the connection's");
            session = Some(self.ctx.identities.identity(fallback).await);
        }
        Identity {
            master: connected.master,
            session,
        }
    }

    /// The `where` as text (its smallest form), kept only where the `query` op can use it.
    fn kept_where(&self, where_: &Map<String, Value>) -> Option<Box<str>> {
        self.ctx.reader.as_ref()?;
        match serde_json::to_string(where_) {
            Ok(text) => Some(text.into_boxed_str()),
            Err(err) => {
                tracing::error!(error = %err, "a where clause does not serialize");
                None
            }
        }
    }

    /// Compiles the `where` with the configured limits and the reader's regex policy.
    async fn compile(
        &self,
        where_: Map<String, Value>,
        reader: &Reader,
        frame_len: usize,
    ) -> Result<Query, WireError> {
        let limits = &self.ctx.config.limits;
        let options = CompileOptions {
            max_depth: limits.max_query_depth,
            allow_regex: gate::regex_allowed(reader, self.ctx.config.allow_regex),
            subqueries: if self.ctx.subqueries.is_some() {
                SubqueryPolicy::Represent
            } else {
                SubqueryPolicy::Reject
            },
            max_set_items: limits.max_operand_items,
            max_conditions: limits.max_query_conditions,
        };
        match compile_off_io_threads(where_, options, frame_len).await {
            Ok(compiled) => compiled.map_err(WireError::invalid_query),
            Err(err) => {
                tracing::error!(error = %err, "compiling a query failed");
                Err(WireError::server_failure("compiling the query", err))
            }
        }
    }

    /// The permissions of the subscription's class and of its subqueries' classes.
    async fn permissions_involved(&self, class_name: &str, query: &Query) -> ClassPermissionMap {
        let mut permissions = ClassPermissionMap::new();
        for class in gate::classes_involved(class_name, query) {
            if !permissions.contains_key(class) {
                let found = self.ctx.identities.class_permissions(class).await;
                permissions.insert(class.to_owned(), found);
            }
        }
        permissions
    }

    /// Binds the query's subqueries (when the source resolves them); returns the bytes
    /// their sets hold.
    async fn bind_subqueries(
        &self,
        query: &mut Query,
        reader: &Reader,
        permissions: &ClassPermissionMap,
    ) -> Result<usize, WireError> {
        match &self.ctx.subqueries {
            Some(resolver) if !query.subqueries().is_empty() => resolver
                .bind(query, reader, permissions)
                .await
                .map_err(WireError::invalid_query),
            _ => Ok(0),
        }
    }

    /// `limits.max_subscription_bytes`: what the connection's subscriptions would hold with
    /// this one (replacing its predecessor of the same `requestId`).
    fn check_budget(
        &self,
        connected: &Connected,
        request_id: RequestId,
        footprint: usize,
    ) -> Result<(), WireError> {
        let released = connected
            .subscriptions
            .get(&request_id)
            .map_or(0, |old| old.footprint);
        let budget = self.ctx.config.limits.max_subscription_bytes;
        if connected.held - released + footprint > budget {
            self.ctx.metrics.dropped(DropReason::SubscriptionBudget);
            return Err(WireError::subscription_budget(budget, footprint));
        }
        Ok(())
    }

    /// Replaces any subscription with the same id, queues `subscribed`, then registers the
    /// subscription with the hub (so no event can precede `subscribed`).
    fn register(&mut self, request_id: RequestId, prepared: Prepared) {
        let Some(connected) = &mut self.client else {
            return;
        };
        if let Some(old) = connected.subscriptions.remove(&request_id) {
            connected.held -= old.footprint;
            self.ctx.hub.remove(&old);
        }
        let _ = self.outbox.push(
            ServerMessage::Subscribed {
                envelope: &connected.envelope,
                request_id,
            }
            .encode(),
        );
        let Prepared {
            class_name,
            query,
            terms,
        } = prepared;
        let footprint = terms.footprint;
        let subscription = self.ctx.hub.insert(
            &class_name,
            query,
            NewSubscription {
                outbox: self.outbox.clone(),
                envelope: connected.envelope.clone(),
                request_id,
                terms,
            },
        );
        tracing::debug!(client_id = %connected.envelope.client_id(), %request_id, class = %class_name, footprint, "subscribed");
        connected.held += footprint;
        connected.subscriptions.insert(subscription);
    }

    fn unsubscribe(&mut self, request: UnsubscribeRequest) {
        let Some(client) = &mut self.client else {
            return self.error(WireError::not_connected(NotConnected::Unsubscribing), None);
        };
        let Some(old) = client.subscriptions.remove(&request.request_id) else {
            let error = WireError::subscription_not_found(
                client.envelope.client_id().as_str(),
                request.request_id,
            );
            return self.error(error, None);
        };
        client.held -= old.footprint;
        self.ctx.hub.remove(&old);
        let envelope = client.envelope.clone();
        self.send(ServerMessage::Unsubscribed {
            envelope: &envelope,
            request_id: request.request_id,
        });
    }

    async fn query(&mut self, request: QueryRequest) {
        let request_id = request.request_id;
        let Some(client) = &self.client else {
            return self.error(WireError::not_connected(NotConnected::Querying), None);
        };
        let Some(subscription) = client.subscriptions.get(&request_id) else {
            let error = WireError::query_subscription_not_found(
                client.envelope.client_id().as_str(),
                request_id,
            );
            return self.error(error, None);
        };
        let (Some(reader), Some(where_text)) = (self.ctx.reader.clone(), &subscription.where_text)
        else {
            let error = WireError::cannot_read_current_objects();
            return self.error(error, Some(request_id));
        };
        let where_: Map<String, Value> = match serde_json::from_str(where_text) {
            Ok(where_) => where_,
            Err(err) => {
                tracing::error!(error = %err, "a kept where clause does not parse back");
                return self.error(
                    WireError::server_failure("query", "the kept where clause does not parse"),
                    Some(request_id),
                );
            }
        };
        let subscription = subscription.clone();
        let Some((class_name, query)) = self.ctx.hub.query(&subscription) else {
            return;
        };
        let envelope = client.envelope.clone();
        let limit = self.ctx.config.limits.query_result_limit;
        let found = tokio::time::timeout(
            self.ctx.config.lookup_timeout * 2,
            reader.find(&class_name, &where_, &query, limit),
        )
        .await;
        let objects = match found {
            Ok(Ok(objects)) => objects,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "query op: reading current objects failed");
                return self.error(WireError::server_failure("query", err), Some(request_id));
            }
            Err(_) => {
                return self.error(WireError::query_timed_out(), Some(request_id));
            }
        };
        let permissions = self.ctx.identities.class_permissions(&class_name).await;
        let reader_now = subscription.identity.reader();
        let subscriber = Subscriber {
            reader: &reader_now,
            op: subscription.op,
            query: &query,
            watch: None,
            keys: subscription.keys(),
        };
        let results: Vec<EncodedObject> = objects
            .iter()
            .filter_map(|object| {
                gate::find_result(&class_name, permissions.as_deref(), &subscriber, object)
            })
            .take(limit)
            .map(|visible| encode_visible(&visible))
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
            for subscription in client.subscriptions.0 {
                self.ctx.hub.remove(&subscription);
            }
            self.ctx.metrics.clients.fetch_sub(1, Relaxed);
            tracing::debug!(client_id = %client.envelope.client_id(), "client removed");
        }
    }
}

/// Compiles a `where`; a large one on a blocking thread (`Err`: that thread failed).
async fn compile_off_io_threads(
    where_: Map<String, Value>,
    options: CompileOptions,
    frame_len: usize,
) -> Result<Result<Query, QueryError>, tokio::task::JoinError> {
    if frame_len <= OFFLOAD_COMPILE_BYTES {
        return Ok(Query::compile(&where_, &options));
    }
    tokio::task::spawn_blocking(move || Query::compile(&where_, &options)).await
}

impl Drop for ClientState {
    fn drop(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state every connection's task holds for its whole life stays three pointers; the
    /// client (with its inline subscription) is boxed apart.
    #[test]
    fn the_state_a_connection_task_holds_is_three_pointers() {
        assert_eq!(
            std::mem::size_of::<ClientState>(),
            3 * std::mem::size_of::<usize>()
        );
    }
}
