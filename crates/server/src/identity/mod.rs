//! Who a subscriber is, resolved before events arrive.
//!
//! The event path must never wait on I/O, so identities are resolved when a subscription is
//! created and kept current in the background:
//!
//! - An [`IdentityProvider`] answers "which user and roles does this session token have?" and
//!   "what are this class's permissions?" (in memory for the embedded source; parse-server's
//!   REST API or MongoDB for the others).
//! - [`IdentityCache`] caches both and hands out one shared [`IdentityCell`] per token. Lookups of
//!   one token are coalesced: whoever asks while a lookup runs waits for its answer. Every
//!   *valid* identity in use is re-resolved when it is older than half `cache_timeout`,
//!   and at once when a source reports a change ([`IdentityCache::invalidate_user`],
//!   [`IdentityCache::invalidate_token`]): a logged-out session stops granting access within
//!   `cache_timeout` at most, sooner where the source tells.
//! - An invalid token is cached as such (negatively) for `cache_timeout`, even when no
//!   subscription holds it any more, and is never refreshed in the background: it costs one
//!   lookup per `cache_timeout` at most, however often it is presented, and the
//!   refresher's work is bounded by the distinct valid identities in use.
//! - A failed lookup never grants access: the cell reads as anonymous until a later lookup
//!   succeeds; retries back off exponentially, never a tight loop.
//! - Class permissions a source delivered with an event (parse-server sends them with
//!   every message) are kept until the source or the provider says otherwise: a provider
//!   that knows nothing about a class ("no schema") never replaces them.
//!
//! Providers: [`memory`] (the embedded source's sessions and schemas),
//! [`crate::parse_rest`] (parse-server's REST API), [`crate::source::mongo::identity`]
//! (MongoDB); [`roles`] is the role-graph closure they share.

pub mod memory;
pub mod roles;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use livequery_matcher::date::parse_iso_millis;
use livequery_matcher::gate::{ClassPermissions, Reader};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;
// The runtime's clock, so tests can pause it.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;

/// A resolved session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user's objectId.
    pub user_id: String,
    /// Role names, inherited ones included, without `role:`.
    pub roles: Vec<String>,
}

/// A `_Session` object as parse-server publishes and returns it: its token, its user, when
/// it expires. The one reading of that shape (the embedded source keeping sessions, the
/// REST provider resolving them, the ingest noticing revocations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// `sessionToken`.
    pub token: String,
    /// `user` (a pointer): its objectId.
    pub user_id: Option<String>,
    /// `expiresAt` (a Date), in milliseconds since the Unix epoch.
    pub expires_at_ms: Option<i64>,
}

impl SessionRecord {
    /// Reads a `_Session` object; `None` without a string `sessionToken`.
    pub fn from_object(object: &Map<String, Value>) -> Option<Self> {
        let token = object.get("sessionToken")?.as_str()?.to_owned();
        let user_id = object
            .get("user")
            .and_then(|u| u.get("objectId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let expires_at_ms = object
            .get("expiresAt")
            .and_then(|e| e.get("iso").or(Some(e)))
            .and_then(Value::as_str)
            .and_then(parse_iso_millis);
        Some(Self {
            token,
            user_id,
            expires_at_ms,
        })
    }

    /// Whether the session has not expired.
    pub fn is_valid_now(&self) -> bool {
        self.expires_at_ms
            .is_none_or(|expires| expires > crate::clock::unix_millis())
    }
}

/// The permissions of the classes a subscription involves, as known when it subscribes
/// (`None`: nothing restricted).
pub type ClassPermissionMap = HashMap<String, Option<Arc<ClassPermissions>>>;

/// A lookup that could not be answered (backend down, timeout, bad response).
#[derive(Debug, Clone, thiserror::Error)]
#[error("auth lookup failed: {0}")]
pub struct LookupError(pub String);

/// Where sessions, roles and class permissions come from.
#[async_trait]
pub trait IdentityProvider: Send + Sync + 'static {
    /// The user and roles of a session token; `Ok(None)` when the token is unknown or
    /// expired.
    async fn resolve_session(&self, token: &str) -> Result<Option<ResolvedUser>, LookupError>;
    /// A class's class-level permissions as parse-server's CLP JSON; `Ok(None)` when the
    /// class has none (everything allowed).
    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, LookupError>;
}

/// The current identity behind one session token, shared by every subscription using it
/// and swapped atomically when it changes.
#[derive(Debug)]
pub struct IdentityCell {
    token: Box<str>,
    /// The identity now: read lock-free per event, swapped whole when a lookup answers.
    reader: ArcSwap<Reader>,
    /// The last lookup's outcome and start; a short critical section, never held across an
    /// await (parking_lot).
    state: Mutex<Resolution>,
    /// Held while this token is looked up: concurrent lookups wait for one answer.
    resolving: tokio::sync::Mutex<()>,
}

/// What the last lookup of a token said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Never looked up yet.
    Pending,
    /// A user (possibly with roles).
    Valid,
    /// Unknown or expired token: anonymous, cached negatively.
    Invalid,
    /// The lookup failed this many times in a row: anonymous until one succeeds.
    Failed(u32),
}

#[derive(Debug, Clone, Copy)]
struct Resolution {
    outcome: Outcome,
    /// When the last lookup started (`None`: never, or marked stale).
    started: Option<Instant>,
}

impl IdentityCell {
    fn new(token: &str, outcome: Outcome, started: Option<Instant>) -> Self {
        Self {
            token: token.into(),
            reader: ArcSwap::from_pointee(Reader::anonymous()),
            state: Mutex::new(Resolution { outcome, started }),
            resolving: tokio::sync::Mutex::new(()),
        }
    }

    /// The identity now (cheap; used per event).
    pub fn reader(&self) -> arc_swap::Guard<Arc<Reader>> {
        self.reader.load()
    }

    /// The identity now, as an owned handle.
    pub fn reader_arc(&self) -> Arc<Reader> {
        self.reader.load_full()
    }

    fn resolution(&self) -> Resolution {
        *self.state.lock()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaOrigin {
    /// Read from the provider (or nothing known: the server's defaults).
    Provider,
    /// Delivered by the source with an event: kept until the source or the provider says
    /// otherwise.
    Event,
}

#[derive(Debug)]
struct SchemaEntry {
    permissions: Option<Arc<ClassPermissions>>,
    /// The raw CLP it was parsed from (to recognise repeats without re-parsing; shared, so
    /// that a repeat handed over as the same `Arc` is recognised without comparing trees).
    raw: Option<Arc<Value>>,
    origin: SchemaOrigin,
    fetched: Instant,
    /// Last time a subscription or an event needed it; unused entries are evicted.
    used: Instant,
}

/// Schemas unused for this many cache periods are forgotten (those a source delivered are
/// kept: their number is bounded by the classes the source publishes).
const SCHEMA_IDLE_PERIODS: u32 = 10;

/// Invalid tokens remembered after their cells are gone; beyond this the oldest half is
/// dropped (each dropped token then costs one more lookup).
const NEGATIVE_CAPACITY: usize = 10_000;

/// A failed lookup is retried after half `cache_timeout`, doubling per failure, up to this
/// many cache periods: a recovered backend is used again within that time.
const MAX_RETRY_PERIODS: u32 = 1;

type Pending<T> = Arc<OnceCell<T>>;
type PendingSchema = Pending<Option<Arc<ClassPermissions>>>;

/// Cached, coalesced, continuously refreshed auth lookups.
pub struct IdentityCache {
    provider: Arc<dyn IdentityProvider>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    // Every lock below is a parking_lot mutex held for one map operation, never across an
    // await: lookups run outside them.
    /// Token → its cell, while a subscription holds it (weak: dropped with the last one).
    cells: Mutex<HashMap<Box<str>, Weak<IdentityCell>>>,
    /// Tokens found invalid, and when, also for tokens no cell holds any more; at most
    /// `NEGATIVE_CAPACITY` entries.
    invalid: Mutex<HashMap<Box<str>, Instant>>,
    /// Class name → its permissions and where they came from.
    schemas: Mutex<HashMap<Box<str>, SchemaEntry>>,
    /// Class name → the lookup in progress, which concurrent askers share.
    inflight_schemas: Mutex<HashMap<Box<str>, PendingSchema>>,
    /// Wakes the refresher before its next tick.
    refresh_now: tokio::sync::Notify,
}

/// Lookups the refresher runs at once.
const REFRESH_CONCURRENCY: usize = 16;

impl std::fmt::Debug for IdentityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCache")
            .field("cells", &self.cells.lock().len())
            .finish_non_exhaustive()
    }
}

impl IdentityCache {
    /// Wraps a provider.
    pub fn new(
        provider: Arc<dyn IdentityProvider>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            provider,
            config,
            metrics,
            cells: Mutex::new(HashMap::new()),
            invalid: Mutex::new(HashMap::new()),
            schemas: Mutex::new(HashMap::new()),
            inflight_schemas: Mutex::new(HashMap::new()),
            refresh_now: tokio::sync::Notify::new(),
        }
    }

    fn ttl(&self) -> Duration {
        self.config.cache_timeout
    }

    /// Usable without a lookup: a definite answer less than `cache_timeout` old.
    fn is_fresh(&self, resolution: Resolution) -> bool {
        matches!(resolution.outcome, Outcome::Valid | Outcome::Invalid)
            && resolution
                .started
                .is_some_and(|started| started.elapsed() < self.ttl())
    }

    /// Due for a background lookup: a valid identity older than half the cache period
    /// (with a tick of a quarter period, a revoked session stops granting access within
    /// `cache_timeout` plus the lookup's own time), or a failed one whose back-off is over.
    /// Invalid tokens are never refreshed: presenting one again looks it up again.
    fn is_due(&self, resolution: Resolution) -> bool {
        let half = self.ttl() / 2;
        match (resolution.outcome, resolution.started) {
            (Outcome::Valid, None) => true,
            (Outcome::Valid, Some(started)) => started.elapsed() >= half,
            (Outcome::Failed(failures), started) => {
                let backoff = half
                    .saturating_mul(1 << failures.saturating_sub(1).min(16))
                    .min(self.ttl() * MAX_RETRY_PERIODS);
                started.is_none_or(|started| started.elapsed() >= backoff)
            }
            (Outcome::Pending | Outcome::Invalid, _) => false,
        }
    }

    /// The identity cell of `token`, looking it up if it is not known and fresh.
    pub async fn identity(&self, token: &str) -> Arc<IdentityCell> {
        let existing = self.cells.lock().get(token).and_then(Weak::upgrade);
        let cell = match existing {
            Some(cell) => cell,
            None => {
                let known_invalid = self
                    .invalid
                    .lock()
                    .get(token)
                    .copied()
                    .filter(|found| found.elapsed() < self.ttl());
                let cell = Arc::new(match known_invalid {
                    Some(found) => IdentityCell::new(token, Outcome::Invalid, Some(found)),
                    None => IdentityCell::new(token, Outcome::Pending, None),
                });
                let mut cells = self.cells.lock();
                // Another task may have created it meanwhile: share that one.
                match cells.get(token).and_then(Weak::upgrade) {
                    Some(raced) => raced,
                    None => {
                        cells.insert(token.into(), Arc::downgrade(&cell));
                        cell
                    }
                }
            }
        };
        if !self.is_fresh(cell.resolution()) {
            self.resolve(&cell, Instant::now()).await;
        }
        cell
    }

    /// Looks `cell`'s token up and stores the result, unless a lookup that started at or
    /// after `requested` already answered (coalescing). A failure reads as anonymous.
    async fn resolve(&self, cell: &IdentityCell, requested: Instant) {
        let _resolving = cell.resolving.lock().await;
        if cell
            .resolution()
            .started
            .is_some_and(|started| started >= requested)
        {
            return;
        }
        let started = Instant::now();
        let lookup = tokio::time::timeout(
            self.config.lookup_timeout,
            self.provider.resolve_session(&cell.token),
        )
        .await;
        let (outcome, reader) = match lookup {
            Ok(Ok(Some(info))) => (Outcome::Valid, Reader::user(info.user_id, info.roles)),
            Ok(Ok(None)) => (Outcome::Invalid, Reader::anonymous()),
            Ok(Err(err)) => {
                self.metrics.auth_lookup_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, "session lookup failed; treating the token as anonymous until it succeeds");
                (self.failed(cell), Reader::anonymous())
            }
            Err(_) => {
                self.metrics.auth_lookup_failures.fetch_add(1, Relaxed);
                tracing::warn!(timeout = ?self.config.lookup_timeout, "session lookup timed out; treating the token as anonymous until it succeeds");
                (self.failed(cell), Reader::anonymous())
            }
        };
        if **cell.reader.load() != reader {
            cell.reader.store(Arc::new(reader));
        }
        *cell.state.lock() = Resolution {
            outcome,
            started: Some(started),
        };
        self.metrics.auth_lookups.fetch_add(1, Relaxed);
        let mut invalid = self.invalid.lock();
        if outcome == Outcome::Invalid {
            if invalid.len() >= NEGATIVE_CAPACITY {
                let ttl = self.ttl();
                invalid.retain(|_, found| found.elapsed() < ttl);
                if invalid.len() >= NEGATIVE_CAPACITY {
                    invalid.clear();
                }
            }
            invalid.insert(cell.token.clone(), started);
        } else {
            invalid.remove(&cell.token);
        }
    }

    fn failed(&self, cell: &IdentityCell) -> Outcome {
        match cell.resolution().outcome {
            Outcome::Failed(failures) => Outcome::Failed(failures.saturating_add(1)),
            _ => Outcome::Failed(1),
        }
    }

    fn live_cells(&self) -> Vec<Arc<IdentityCell>> {
        let mut cells = self.cells.lock();
        cells.retain(|_, weak| weak.strong_count() > 0);
        cells.values().filter_map(Weak::upgrade).collect()
    }

    /// Re-resolves the cells of `user_id` now (a source saw a role or session change).
    pub async fn invalidate_user(&self, user_id: &str) {
        let requested = Instant::now();
        for cell in self.live_cells() {
            if cell.reader().user_id.as_deref() == Some(user_id) {
                self.resolve(&cell, requested).await;
            }
        }
    }

    /// Re-resolves the cell of `token` now (the session was created, changed or deleted),
    /// and forgets that it was invalid.
    pub async fn invalidate_token(&self, token: &str) {
        let requested = Instant::now();
        self.invalid.lock().remove(token);
        let cell = self.cells.lock().get(token).and_then(Weak::upgrade);
        if let Some(cell) = cell {
            self.resolve(&cell, requested).await;
        }
    }

    /// Marks every valid identity in use for re-resolution and wakes the refresher (e.g. a
    /// role graph change whose members are unknown). Until each lookup completes the
    /// previous identity stays in effect, as it would until `cache_timeout` otherwise.
    pub fn mark_all_stale(&self) {
        for cell in self.live_cells() {
            let mut state = cell.state.lock();
            if state.outcome == Outcome::Valid {
                state.started = None;
            }
        }
        self.refresh_now.notify_one();
    }

    /// Keeps every identity in use fresh until `shutdown`; run it once.
    pub async fn run_refresher(self: Arc<Self>, shutdown: CancellationToken) {
        use futures_util::StreamExt;
        let period = (self.ttl() / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                () = self.refresh_now.notified() => {}
            }
            let requested = Instant::now();
            let due: Vec<Arc<IdentityCell>> = self
                .live_cells()
                .into_iter()
                .filter(|cell| self.is_due(cell.resolution()))
                .collect();
            futures_util::stream::iter(due)
                .for_each_concurrent(REFRESH_CONCURRENCY, |cell| {
                    let this = &*self;
                    async move { this.resolve(&cell, requested).await }
                })
                .await;
            self.refresh_schemas().await;
        }
    }

    /// Re-reads the permissions of classes in use once they are older than
    /// `cache_timeout` (the event path reads only the cache), and forgets unused ones.
    async fn refresh_schemas(&self) {
        let ttl = self.ttl();
        let stale: Vec<Box<str>> = {
            let mut schemas = self.schemas.lock();
            schemas.retain(|_, entry| {
                entry.origin == SchemaOrigin::Event
                    || entry.used.elapsed() < ttl * SCHEMA_IDLE_PERIODS
            });
            schemas
                .iter()
                .filter(|(_, entry)| entry.fetched.elapsed() >= ttl)
                .map(|(class, _)| class.clone())
                .collect()
        };
        for class_name in stale {
            let lookup = tokio::time::timeout(
                self.config.lookup_timeout,
                self.provider.class_permissions(&class_name),
            )
            .await;
            match lookup {
                Ok(Ok(raw)) => {
                    self.store_provided_schema(&class_name, raw);
                }
                _ => {
                    // Keep the last known permissions rather than opening or closing the
                    // class on a transient failure; the next tick retries.
                    self.metrics.auth_lookup_failures.fetch_add(1, Relaxed);
                    tracing::warn!(
                        class = &*class_name,
                        "refreshing class permissions failed; keeping the last known ones"
                    );
                }
            }
        }
    }

    /// The class-level permissions of `class_name` (with the server's default protected
    /// fields merged), cached for `cache_timeout`. `None`: no CLP, everything allowed. A
    /// failed lookup yields closed permissions (nothing is allowed but master), never open
    /// ones.
    pub async fn class_permissions(&self, class_name: &str) -> Option<Arc<ClassPermissions>> {
        if let Some(entry) = self.schemas.lock().get_mut(class_name)
            && entry.fetched.elapsed() < self.ttl()
        {
            entry.used = Instant::now();
            return entry.permissions.clone();
        }
        let pending = self
            .inflight_schemas
            .lock()
            .entry(class_name.into())
            .or_default()
            .clone();
        let result = pending
            .get_or_init(|| async {
                let lookup = tokio::time::timeout(self.config.lookup_timeout, self.provider.class_permissions(class_name)).await;
                match lookup {
                    Ok(Ok(raw)) => self.store_provided_schema(class_name, raw),
                    Ok(Err(err)) => {
                        self.metrics.auth_lookup_failures.fetch_add(1, Relaxed);
                        tracing::warn!(class = class_name, error = %err, "class permissions lookup failed; denying");
                        Some(Arc::new(closed_permissions()))
                    }
                    Err(_) => {
                        self.metrics.auth_lookup_failures.fetch_add(1, Relaxed);
                        tracing::warn!(class = class_name, "class permissions lookup timed out; denying");
                        Some(Arc::new(closed_permissions()))
                    }
                }
            })
            .await
            .clone();
        self.inflight_schemas.lock().remove(class_name);
        result
    }

    /// Caches permissions a source delivered with an event (parse-server sends the class's
    /// CLP with every message) and returns them; repeats of the same CLP are not re-parsed.
    pub fn event_permissions(
        &self,
        class_name: &str,
        raw: &Value,
    ) -> Option<Arc<ClassPermissions>> {
        if let Some(permissions) = self.repeated_event_permissions(class_name, |known| known == raw)
        {
            return permissions;
        }
        self.store_schema(class_name, Some(Arc::new(raw.clone())), SchemaOrigin::Event)
    }

    /// [`IdentityCache::event_permissions`] for permissions shared by many events (the ingest
    /// reads a CLP text once): the same `Arc` as last time is recognised without comparing
    /// the trees.
    pub fn shared_event_permissions(
        &self,
        class_name: &str,
        raw: &Arc<Value>,
    ) -> Option<Arc<ClassPermissions>> {
        if let Some(permissions) = self.repeated_event_permissions(class_name, |known| {
            std::ptr::eq(known, &**raw) || known == &**raw
        }) {
            return permissions;
        }
        self.store_schema(class_name, Some(raw.clone()), SchemaOrigin::Event)
    }

    /// The permissions of a class whose cached raw CLP `same` recognises as an event's,
    /// marked as delivered by the source; `None` when they are not cached.
    fn repeated_event_permissions(
        &self,
        class_name: &str,
        same: impl FnOnce(&Value) -> bool,
    ) -> Option<Option<Arc<ClassPermissions>>> {
        let mut schemas = self.schemas.lock();
        let entry = schemas.get_mut(class_name)?;
        if !entry.raw.as_deref().is_some_and(same) {
            return None;
        }
        entry.fetched = Instant::now();
        entry.used = entry.fetched;
        entry.origin = SchemaOrigin::Event;
        Some(entry.permissions.clone())
    }

    /// The last known permissions of a class, without any lookup (for the event path).
    pub fn cached_permissions(&self, class_name: &str) -> Option<Arc<ClassPermissions>> {
        if let Some(entry) = self.schemas.lock().get_mut(class_name) {
            entry.used = Instant::now();
            return entry.permissions.clone();
        }
        self.default_permissions(class_name)
    }

    fn default_permissions(&self, class_name: &str) -> Option<Arc<ClassPermissions>> {
        self.config.protected_fields.get(class_name).map(|_| {
            let mut clp = ClassPermissions::default();
            self.config.apply_protected_defaults(class_name, &mut clp);
            Arc::new(clp)
        })
    }

    /// Stores what the provider answered. "No schema" (`None`) does not replace
    /// permissions a source delivered: the provider simply does not know the class.
    fn store_provided_schema(
        &self,
        class_name: &str,
        raw: Option<Value>,
    ) -> Option<Arc<ClassPermissions>> {
        if raw.is_none()
            && let Some(entry) = self.schemas.lock().get_mut(class_name)
            && entry.origin == SchemaOrigin::Event
        {
            entry.fetched = Instant::now();
            entry.used = entry.fetched;
            return entry.permissions.clone();
        }
        self.store_schema(class_name, raw.map(Arc::new), SchemaOrigin::Provider)
    }

    fn store_schema(
        &self,
        class_name: &str,
        raw: Option<Arc<Value>>,
        origin: SchemaOrigin,
    ) -> Option<Arc<ClassPermissions>> {
        let permissions = match &raw {
            Some(raw) => {
                let mut clp = ClassPermissions::from_json(raw);
                self.config.apply_protected_defaults(class_name, &mut clp);
                Some(Arc::new(clp))
            }
            None => self.default_permissions(class_name),
        };
        let now = Instant::now();
        self.schemas.lock().insert(
            class_name.into(),
            SchemaEntry {
                permissions: permissions.clone(),
                raw,
                origin,
                fetched: now,
                used: now,
            },
        );
        permissions
    }

    /// Forgets a class's cached permissions (its schema changed at the source).
    pub fn invalidate_schema(&self, class_name: &str) {
        self.schemas.lock().remove(class_name);
    }

    /// Number of identity cells in use (for tests and metrics).
    pub fn identities_in_use(&self) -> usize {
        self.live_cells().len()
    }
}

fn closed_permissions() -> ClassPermissions {
    ClassPermissions::from_json(&serde_json::json!({"find": {}, "get": {}}))
}
