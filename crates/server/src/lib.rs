//! # livequery-server
//!
//! A WebSocket server that speaks Parse Server's LiveQuery protocol, built on the
//! `livequery-protocol` and `livequery-matcher` libraries. All I/O lives in this crate; every
//! decision that needs none (what matches, what a reader may see, which event a change is)
//! is the libraries'.
//!
//! ## The event path, one way
//! ```text
//! source/ ──pubsub::Message──▶ ingest ──event::ChangeEvent──▶ worker (one queue per shard)
//!    ──▶ hub: index → candidate queries → gate::judge per subscriber → encode once
//!    ──▶ outbox (bounded, per connection) ──▶ connection task ──▶ socket
//! ```
//! - [`source`]: the change sources (embedded HTTP ingest, parse-server's Redis feed,
//!   MongoDB change streams), each one task with its own reconnect policy ([`retry`]).
//! - [`pubsub`]: parse-server's pub/sub message format, which every source produces.
//!   Its hot path finds a message's parts with `json_skim`, a validating skim of the text
//!   that leaves to serde_json whatever it declines.
//! - [`ingest`]: the one door into the server for every source — events, and the auth
//!   changes (sessions, roles, schemas) that change how events are judged.
//! - [`event`]: the event type the workers and the hub consume.
//! - [`worker`]: the dispatch workers, each draining its shard's bounded queue.
//! - [`hub`]: the subscription registry and the fan-out of one event.
//! - [`outbox`]: the bounded per-connection queue; overflow cuts a slow client off.
//! - [`connection`]: the task owning one socket ([`frame_writer`] writes its queued
//!   frames straight to the socket; [`ping`] tells it when to ping); [`client`]: the
//!   protocol state of one client (`connect`, `subscribe`, `update`, `unsubscribe`,
//!   `query`); [`client_keys`]: the `keyPairs` check.
//! - [`listener`] and [`http`]: the accept loops and the HTTP endpoints (`/livez`,
//!   `/readyz`, `/health`, `/metrics`, the embedded source's ingest API).
//!
//! ## Around it
//! - [`identity`]: who a subscriber is (session tokens → users and roles) and what a class
//!   allows, resolved before events arrive, cached and refreshed; its providers are
//!   [`identity::memory`], [`parse_rest`] and [`source::mongo::identity`].
//! - [`backend`]: the traits for reading current objects (`query` op) and resolving
//!   subqueries.
//! - [`hooks`]: Cloud Code LiveQuery hooks called over HTTP — `beforeConnect` and
//!   `beforeSubscribe` on the connection's task, `afterLiveQueryEvent` on a task per class
//!   fed by the hub (`protocol-spec/hooks.md`).
//! - [`state`]: what every task of a running server shares; [`readiness`] and [`drain`]:
//!   what `/readyz` answers and the graceful drain; [`config`], [`telemetry`], [`metrics`],
//!   [`process`], [`clock`], [`encoding`]: the rest.
//!
//! Imports follow the same direction: sources depend on the ingest, the ingest on the
//! workers and the hub, never the other way.
//!
//! ## Invariants
//! - Every queue is bounded: the ingest → worker queues and each connection's outbox.
//! - Fan-out never awaits and never scans queries that cannot match (the index answers).
//! - A client never receives an object or a field its identity may not read, and nothing
//!   hidden from it decides what it receives (the authorization gate, in the matcher).
//! - Shutdown ([`drain`]): turn unready and refuse new WebSockets at once, close the open
//!   ones with 1001 in waves over `drain_period`, stop, wait at most `shutdown_grace`.

pub mod backend;
pub mod capacity;
pub mod client;
pub mod client_keys;
pub mod clock;
pub mod config;
pub mod connection;
pub mod drain;
pub mod encoding;
pub mod event;
pub mod frame_writer;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod identity;
pub mod ingest;
mod json_skim;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod parse_rest;
pub mod ping;
pub mod process;
pub mod pubsub;
pub mod readiness;
pub mod retry;
pub mod source;
pub mod state;
pub mod telemetry;
#[cfg(test)]
mod test_http;
#[cfg(test)]
mod test_socket;
pub mod upgrade;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{ObjectReader, SubqueryResolver};
use crate::config::{Config, MongoConfig, SourceKind};
use crate::hub::Hub;
use crate::identity::memory::MemoryIdentities;
use crate::identity::{IdentityCache, IdentityProvider};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::parse_rest::ParseRest;
use crate::readiness::Readiness;
use crate::source::Source;
use crate::source::embedded::EmbeddedSource;
use crate::source::mongo::convert::FileUrls;
use crate::source::mongo::identity::MongoIdentities;
use crate::source::mongo::reader::MongoReader;
use crate::source::mongo::resume::ResumeStore;
use crate::source::mongo::schema::Schemas;
use crate::source::mongo::store::{MongoBackend, Store};
use crate::source::mongo::subquery::Subqueries;
use crate::source::mongo::{MongoSettings, MongoSource};
use crate::source::redis::RedisSource;
use crate::state::ServerState;
use crate::worker::Workers;

/// The pluggable parts of a server.
pub struct Components {
    /// Where events come from.
    pub source: Arc<dyn Source>,
    /// Where sessions, roles and class permissions come from.
    pub identities: Arc<dyn IdentityProvider>,
    /// What answers the `query` op, if anything.
    pub reader: Option<Arc<dyn ObjectReader>>,
    /// The embedded source's ingest API, when the source is the embedded one.
    pub embedded: Option<Arc<EmbeddedSource>>,
    /// Resolves subqueries, when the source can.
    pub subqueries: Option<Arc<dyn SubqueryResolver>>,
    /// Where components report problems that make this node unready (`/readyz`).
    pub readiness: Arc<Readiness>,
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Components")
            .field("source", &self.source.name())
            .finish_non_exhaustive()
    }
}

impl Components {
    /// The components the configuration asks for.
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        let readiness = Arc::new(Readiness::default());
        let rest = if config.server_url.is_empty() {
            None
        } else {
            // The read-only master key is all livequery's lookups need.
            let (key, kind) = if config.read_only_master_key.is_empty() {
                (&config.master_key, parse_rest::KeyKind::Master)
            } else {
                (&config.read_only_master_key, parse_rest::KeyKind::ReadOnly)
            };
            Some(Arc::new(
                ParseRest::new(
                    &config.server_url,
                    &config.app_id,
                    key,
                    config.lookup_timeout,
                )?
                .with_readiness(readiness.clone(), kind),
            ))
        };
        let mut components = match &config.source {
            SourceKind::Embedded => Self::embedded(Arc::new(MemoryIdentities::new())),
            SourceKind::Redis(redis) => {
                let identities: Arc<dyn IdentityProvider> = match &rest {
                    Some(rest) => rest.clone(),
                    None => {
                        tracing::warn!(
                            "source.kind = \"redis\" without parse.server_url: session tokens cannot be resolved, every subscriber reads as anonymous"
                        );
                        Arc::new(MemoryIdentities::new())
                    }
                };
                Self {
                    readiness: readiness.clone(),
                    ..Self::redis(
                        RedisSource::from_config(redis)?
                            .with_max_message_bytes(config.limits.max_ingest_bytes),
                        identities,
                    )
                }
            }
            SourceKind::Mongo(mongo) => {
                let store: Arc<dyn Store> =
                    Arc::new(MongoBackend::connect(&mongo.url, &mongo.database).await?);
                return Ok(Self::mongo(store, mongo, config));
            }
        };
        if let Some(rest) = rest {
            components.reader = Some(rest);
        }
        components.readiness = readiness;
        Ok(components)
    }

    /// The MongoDB source over `store` (the driver, or a test double), with identities, `query`
    /// and subqueries all served from the database.
    pub fn mongo(store: Arc<dyn Store>, mongo: &MongoConfig, config: &Config) -> Self {
        let schemas = Arc::new(Schemas::default());
        let prefix = mongo.collection_prefix.as_str();
        let files_base = if mongo.files_url.is_empty() {
            &config.server_url
        } else {
            &mongo.files_url
        };
        let files = FileUrls {
            base: (!files_base.is_empty()).then(|| files_base.trim_end_matches('/').to_owned()),
            app_id: config.app_id.clone(),
        };
        let identities = Arc::new(MongoIdentities::new(store.clone(), prefix, schemas.clone()));
        let subqueries = Arc::new(Subqueries::new(
            store.clone(),
            schemas.clone(),
            prefix,
            files.clone(),
            mongo.max_subquery_results,
        ));
        let settings = MongoSettings {
            prefix: prefix.to_owned(),
            classes: (!mongo.classes.is_empty()).then(|| mongo.classes.clone()),
            enable_pre_images: mongo.enable_pre_images,
            resume: ResumeStore::new(
                (!mongo.resume_token_file.is_empty())
                    .then(|| mongo.resume_token_file.clone().into()),
            ),
            object_cache_entries: mongo.object_cache_entries,
            files: files.clone(),
        };
        let source = Arc::new(MongoSource::new(
            store.clone(),
            settings,
            schemas.clone(),
            identities.clone(),
            subqueries.clone(),
        ));
        Self {
            source,
            identities,
            reader: Some(Arc::new(MongoReader::new(store, schemas, prefix, files))),
            embedded: None,
            subqueries: Some(subqueries),
            readiness: Arc::new(Readiness::default()),
        }
    }

    /// parse-server's Redis feed, with identities from `identities` (and nothing that reads
    /// current objects or resolves subqueries unless the caller adds it).
    pub fn redis(source: RedisSource, identities: Arc<dyn IdentityProvider>) -> Self {
        Self {
            source: Arc::new(source),
            identities,
            reader: None,
            embedded: None,
            subqueries: None,
            readiness: Arc::default(),
        }
    }

    /// The embedded source, with sessions and schemas kept in `memory`.
    pub fn embedded(memory: Arc<MemoryIdentities>) -> Self {
        let embedded = Arc::new(EmbeddedSource::new(memory.clone()));
        Self {
            source: embedded.clone(),
            identities: memory,
            reader: None,
            embedded: Some(embedded),
            subqueries: None,
            readiness: Arc::new(Readiness::default()),
        }
    }
}

/// A server whose listener is bound.
pub struct Server {
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    config: Arc<Config>,
    components: Components,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Prepares a server on an already bound listener.
    pub fn new(config: Arc<Config>, listener: TcpListener, components: Components) -> Self {
        Self {
            listener,
            admin_listener: None,
            config,
            components,
        }
    }

    /// Serves `/health`, `/metrics` and the ingest API on `listener` (instead of binding
    /// `server.admin_listen`, which must be set).
    #[must_use]
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin_listener = Some(listener);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains ([`drain`]): unready at once, open
    /// WebSockets closed in waves over `server.drain_period`, then stops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            admin_listener,
            config,
            components,
        } = self;
        let admin_listener = match (admin_listener, config.admin_listen) {
            (Some(listener), _) => Some(listener),
            (None, Some(address)) => Some(listener::bind(address)?),
            (None, None) => None,
        };
        // Before the pools are sized: they follow the limit.
        match process::raise_open_files_limit() {
            Some(Ok(limit)) if limit.after > limit.before => tracing::info!(
                from = limit.before,
                to = limit.after,
                "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
            ),
            Some(Ok(limit)) => tracing::info!(
                limit = limit.after,
                "the open-files limit (RLIMIT_NOFILE) is already at its hard limit"
            ),
            Some(Err(err)) => tracing::warn!(
                error = %err,
                "could not raise the open-files limit (RLIMIT_NOFILE)"
            ),
            None => {}
        }
        let open_files = capacity::open_files_limit();
        let capacity = capacity::Capacity::new(
            config.limits.max_connections,
            admin_listener.is_some(),
            open_files,
        );
        if capacity.websockets < config.limits.max_connections {
            tracing::warn!(
                configured = config.limits.max_connections,
                websockets = capacity.websockets,
                open_files,
                "limits.max_connections exceeds what the open-file limit allows (with a reserve for HTTP, the admin port and the server itself): WebSockets are capped lower; raise the hard limit (`ulimit -Hn`, LimitNOFILE=, --ulimit nofile=) to serve more"
            );
        }
        let metrics = Arc::new(Metrics::default());
        let identities = Arc::new(IdentityCache::new(
            components.identities,
            config.clone(),
            metrics.clone(),
        ));
        // Internal token: cancelled once the drain that `shutdown` starts is over, or at
        // once when we stop on our own (a failed source).
        let stop = CancellationToken::new();
        let hooks = Arc::new(hooks::Hooks::new(
            &config.hooks.hooks,
            &Arc::new(hooks::HookClient::new(
                &config.server_url,
                &config.app_id,
                // The master key, as parse-server's own trigger calls; the read-only one only
                // when no master key is set.
                if config.master_key.is_empty() {
                    &config.read_only_master_key
                } else {
                    &config.master_key
                },
                &config.hooks.webhook_key,
            )?),
            &metrics,
        ));
        let hub = Arc::new(if hooks.after_event().is_empty() {
            Hub::new(metrics.clone())
        } else {
            Hub::with_hooks(
                metrics.clone(),
                hooks::after_event::AfterEvents::start(
                    &hooks,
                    identities.clone(),
                    metrics.clone(),
                    &stop,
                ),
            )
        });
        let drain = Arc::new(drain::Drain::new(&stop));
        let pings = Arc::new(ping::PingClock::new());
        let (shards, workers) = Workers::start(
            hub.clone(),
            metrics.clone(),
            config.dispatch_workers,
            config.source_queue,
            tokio::runtime::Handle::current(),
            stop.clone(),
        )?;
        let ingest = Ingest::new(shards, identities.clone(), hub.clone(), metrics.clone());
        let tracker = TaskTracker::new();
        let ctx = Arc::new(ServerState {
            config: config.clone(),
            metrics: metrics.clone(),
            hub: hub.clone(),
            hooks,
            identities: identities.clone(),
            reader: components.reader,
            embedded: components.embedded,
            subqueries: components.subqueries,
            readiness: components.readiness,
            source_name: components.source.name(),
            shutdown: stop.clone(),
            drain: drain.clone(),
            pings: pings.clone(),
            tracker: tracker.clone(),
            capacity,
        });
        let admin_addr = match &admin_listener {
            Some(admin) => Some(admin.local_addr()?),
            None => None,
        };
        tracing::info!(listen = %listener.local_addr()?, admin_listen = ?admin_addr, source = ctx.source_name, websockets = capacity.websockets, "livequery is serving");

        let source = components.source.clone();
        let source_task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let name = source.name();
                if let Err(err) = source.run(ingest, stop.clone()).await {
                    tracing::error!(source = name, error = ?err, "the change source failed; shutting down");
                    stop.cancel();
                }
            }
        });
        let refresher = tokio::spawn(identities.clone().run_refresher(stop.clone()));
        let pinger = tokio::spawn({
            let stop = stop.clone();
            let period = config.websocket_timeout;
            async move { pings.run(period, stop).await }
        });
        let drainer = tokio::spawn(drain.run(
            config.drain_period,
            ctx.readiness.clone(),
            metrics.clone(),
            shutdown,
            stop.clone(),
        ));

        let admin_loop = admin_listener.map(|admin| {
            tokio::spawn(listener::accept_loop(
                admin,
                ctx.clone(),
                http::Port::Admin,
                capacity.admin_connections,
            ))
        });
        // A task of its own rather than this (`block_on`) thread's future: accepting on the
        // runtime's workers spawns each connection's task where it will run, instead of
        // waking a worker from this thread for every connection.
        let accepted = tokio::spawn(listener::accept_loop(
            listener,
            ctx.clone(),
            http::Port::Client,
            capacity.client_connections,
        ))
        .await;
        if let Err(err) = accepted
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
        if let Some(admin_loop) = admin_loop {
            let _ = admin_loop.await;
        }

        // Stopped: the drain is over (or skipped); the accept loops have ended and any
        // connection left sees its wave's token (a child of `stop`) and closes with 1001.
        let _ = drainer.await;
        tracing::info!(
            connections = metrics
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            "shutting down"
        );
        tracker.close();
        if tokio::time::timeout(
            config.shutdown_grace + std::time::Duration::from_secs(1),
            tracker.wait(),
        )
        .await
        .is_err()
        {
            tracing::warn!("some connections did not close within the grace period");
        }
        let _ = source_task.await;
        let _ = refresher.await;
        let _ = pinger.await;
        workers.join().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Binds `config.listen` and serves with the configured components until `shutdown`.
pub async fn run(config: Arc<Config>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = listener::bind(config.listen)?;
    let components = Components::from_config(&config).await?;
    Server::new(config, listener, components)
        .run(shutdown)
        .await
}
