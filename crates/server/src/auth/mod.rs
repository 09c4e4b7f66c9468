//! Who a subscriber is, resolved before events arrive.
//!
//! The event path must never wait on I/O, so identities are resolved when a subscription is
//! created and kept current in the background:
//!
//! - An [`AuthProvider`] answers "which user and roles does this session token have?" and
//!   "what are this class's permissions?" (in memory for the embedded source; parse-server's
//!   REST API or MongoDB for the others).
//! - [`Auth`] caches both, coalesces concurrent lookups of the same key into one, and hands
//!   out one shared [`IdentityCell`] per token. Every cell in use is re-resolved when it is
//!   older than `cache_timeout`, and at once when a source reports a change
//!   ([`Auth::invalidate_user`], [`Auth::invalidate_token`]): a logged-out session stops
//!   granting access within `cache_timeout` at most, sooner where the source tells.
//! - A failed lookup never grants access: the cell reads as anonymous until a later lookup
//!   succeeds, and retries are paced by the refresh tick, never a tight loop.

pub mod keys;
pub mod memory;
pub mod rest;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use livequery_matcher::auth::{ClassPermissions, Reader};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;

/// A resolved session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The user's objectId.
    pub user_id: String,
    /// Role names, inherited ones included, without `role:`.
    pub roles: Vec<String>,
}

/// A lookup that could not be answered (backend down, timeout, bad response).
#[derive(Debug, Clone, thiserror::Error)]
#[error("auth lookup failed: {0}")]
pub struct AuthError(pub String);

/// Where sessions, roles and class permissions come from.
#[async_trait]
pub trait AuthProvider: Send + Sync + 'static {
    /// The user and roles of a session token; `Ok(None)` when the token is unknown or
    /// expired.
    async fn resolve_session(&self, token: &str) -> Result<Option<SessionInfo>, AuthError>;
    /// A class's class-level permissions as parse-server's CLP JSON; `Ok(None)` when the
    /// class has none (everything allowed).
    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, AuthError>;
}

/// The current identity behind one session token, shared by every subscription using it
/// and swapped atomically when it changes.
#[derive(Debug)]
pub struct IdentityCell {
    token: Box<str>,
    reader: ArcSwap<Reader>,
    /// Milliseconds since `Auth::epoch` of the last successful resolution (0: never / stale).
    resolved_ms: AtomicU64,
}

impl IdentityCell {
    /// The identity now (cheap; used per event).
    pub fn reader(&self) -> arc_swap::Guard<Arc<Reader>> {
        self.reader.load()
    }

    /// The identity now, as an owned handle.
    pub fn reader_arc(&self) -> Arc<Reader> {
        self.reader.load_full()
    }

    /// The session token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

#[derive(Debug)]
struct SchemaEntry {
    permissions: Option<Arc<ClassPermissions>>,
    /// The raw CLP it was parsed from (to recognise repeats without re-parsing).
    raw: Option<Value>,
    fetched: Instant,
    /// Last time a subscription or an event needed it; unused entries are evicted.
    used: Instant,
}

/// Schemas unused for this many cache periods are forgotten.
const SCHEMA_IDLE_PERIODS: u32 = 10;

type Pending<T> = Arc<OnceCell<T>>;
type PendingSchema = Pending<Option<Arc<ClassPermissions>>>;

/// Cached, coalesced, continuously refreshed auth lookups.
pub struct Auth {
    provider: Arc<dyn AuthProvider>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    epoch: Instant,
    cells: Mutex<HashMap<Box<str>, Weak<IdentityCell>>>,
    inflight_sessions: Mutex<HashMap<Box<str>, Pending<Arc<IdentityCell>>>>,
    schemas: Mutex<HashMap<Box<str>, SchemaEntry>>,
    inflight_schemas: Mutex<HashMap<Box<str>, PendingSchema>>,
    /// Wakes the refresher before its next tick.
    refresh_now: tokio::sync::Notify,
}

/// Lookups the refresher runs at once.
const REFRESH_CONCURRENCY: usize = 16;

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("cells", &self.cells.lock().len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Wraps a provider.
    pub fn new(
        provider: Arc<dyn AuthProvider>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            provider,
            config,
            metrics,
            epoch: Instant::now(),
            cells: Mutex::new(HashMap::new()),
            inflight_sessions: Mutex::new(HashMap::new()),
            schemas: Mutex::new(HashMap::new()),
            inflight_schemas: Mutex::new(HashMap::new()),
            refresh_now: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn age_ms(&self, cell: &IdentityCell) -> Option<u64> {
        let resolved = cell.resolved_ms.load(Relaxed);
        (resolved != 0).then(|| self.now_ms().saturating_sub(resolved))
    }

    /// Usable without a lookup: resolved less than `cache_timeout` ago.
    fn is_fresh(&self, cell: &IdentityCell) -> bool {
        self.age_ms(cell)
            .is_some_and(|age| age < self.config.cache_timeout.as_millis() as u64)
    }

    /// Due for re-validation by the refresher: half the cache period has passed, so that
    /// with a tick of a quarter period a revoked session stops granting access within
    /// `cache_timeout` (plus the lookup's own time).
    fn is_due(&self, cell: &IdentityCell) -> bool {
        self.age_ms(cell)
            .is_none_or(|age| age >= self.config.cache_timeout.as_millis() as u64 / 2)
    }

    /// The identity cell of `token`, resolving it if it is not known and fresh.
    pub async fn identity(&self, token: &str) -> Arc<IdentityCell> {
        if let Some(cell) = self.cells.lock().get(token).and_then(Weak::upgrade)
            && self.is_fresh(&cell)
        {
            return cell;
        }
        let pending = self
            .inflight_sessions
            .lock()
            .entry(token.into())
            .or_default()
            .clone();
        let cell = pending
            .get_or_init(|| async {
                let existing = self.cells.lock().get(token).and_then(Weak::upgrade);
                let cell = existing.unwrap_or_else(|| {
                    let cell = Arc::new(IdentityCell {
                        token: token.into(),
                        reader: ArcSwap::from_pointee(Reader::anonymous()),
                        resolved_ms: AtomicU64::new(0),
                    });
                    self.cells
                        .lock()
                        .insert(token.into(), Arc::downgrade(&cell));
                    cell
                });
                self.resolve_into(&cell).await;
                cell
            })
            .await
            .clone();
        self.inflight_sessions.lock().remove(token);
        cell
    }

    /// Looks `cell`'s token up and stores the result; a failure reads as anonymous and
    /// leaves the cell stale so the refresher retries it.
    async fn resolve_into(&self, cell: &IdentityCell) {
        let lookup = tokio::time::timeout(
            self.config.lookup_timeout,
            self.provider.resolve_session(&cell.token),
        )
        .await;
        match lookup {
            Ok(Ok(session)) => {
                let reader = match session {
                    Some(info) => Reader::user(info.user_id, info.roles),
                    None => Reader::anonymous(),
                };
                if **cell.reader.load() != reader {
                    cell.reader.store(Arc::new(reader));
                }
                cell.resolved_ms.store(self.now_ms(), Relaxed);
            }
            Ok(Err(err)) => {
                self.metrics.auth_lookup_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, "session lookup failed; treating the token as anonymous until it succeeds");
                cell.reader.store(Arc::new(Reader::anonymous()));
                cell.resolved_ms.store(0, Relaxed);
            }
            Err(_) => {
                self.metrics.auth_lookup_failures.fetch_add(1, Relaxed);
                tracing::warn!(timeout = ?self.config.lookup_timeout, "session lookup timed out; treating the token as anonymous until it succeeds");
                cell.reader.store(Arc::new(Reader::anonymous()));
                cell.resolved_ms.store(0, Relaxed);
            }
        }
    }

    fn live_cells(&self) -> Vec<Arc<IdentityCell>> {
        let mut cells = self.cells.lock();
        cells.retain(|_, weak| weak.strong_count() > 0);
        cells.values().filter_map(Weak::upgrade).collect()
    }

    /// Re-resolves the cells of `user_id` now (a source saw a role or session change).
    pub async fn invalidate_user(&self, user_id: &str) {
        for cell in self.live_cells() {
            if cell.reader().user_id.as_deref() == Some(user_id) {
                self.resolve_into(&cell).await;
            }
        }
    }

    /// Re-resolves the cell of `token` now (e.g. the session was deleted).
    pub async fn invalidate_token(&self, token: &str) {
        let cell = self.cells.lock().get(token).and_then(Weak::upgrade);
        if let Some(cell) = cell {
            self.resolve_into(&cell).await;
        }
    }

    /// Marks every identity in use for re-resolution and wakes the refresher (e.g. a role
    /// graph change whose members are unknown). Until each lookup completes the previous
    /// identity stays in effect, as it would until `cache_timeout` otherwise.
    pub fn mark_all_stale(&self) {
        for cell in self.live_cells() {
            cell.resolved_ms.store(0, Relaxed);
        }
        self.refresh_now.notify_one();
    }

    /// Keeps every identity in use fresh until `shutdown`; run it once.
    pub async fn run_refresher(self: Arc<Self>, shutdown: CancellationToken) {
        use futures_util::StreamExt;
        let period = (self.config.cache_timeout / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                () = self.refresh_now.notified() => {}
            }
            let due: Vec<Arc<IdentityCell>> = self
                .live_cells()
                .into_iter()
                .filter(|cell| self.is_due(cell))
                .collect();
            futures_util::stream::iter(due)
                .for_each_concurrent(REFRESH_CONCURRENCY, |cell| {
                    let this = &*self;
                    async move { this.resolve_into(&cell).await }
                })
                .await;
            self.refresh_schemas().await;
        }
    }

    /// Re-reads the permissions of classes in use once they are older than
    /// `cache_timeout` (the event path reads only the cache), and forgets unused ones.
    async fn refresh_schemas(&self) {
        let ttl = self.config.cache_timeout;
        let stale: Vec<Box<str>> = {
            let mut schemas = self.schemas.lock();
            schemas.retain(|_, entry| entry.used.elapsed() < ttl * SCHEMA_IDLE_PERIODS);
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
                    self.store_schema(&class_name, raw);
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
            && entry.fetched.elapsed() < self.config.cache_timeout
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
                    Ok(Ok(raw)) => self.store_schema(class_name, raw),
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
        if let Some(entry) = self.schemas.lock().get_mut(class_name)
            && entry.raw.as_ref() == Some(raw)
        {
            entry.fetched = Instant::now();
            entry.used = entry.fetched;
            return entry.permissions.clone();
        }
        self.store_schema(class_name, Some(raw.clone()))
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

    fn store_schema(&self, class_name: &str, raw: Option<Value>) -> Option<Arc<ClassPermissions>> {
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
                fetched: now,
                used: now,
            },
        );
        permissions
    }

    /// Forgets a class's cached permissions.
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

/// Wall-clock time in milliseconds since the Unix epoch (session `expiresAt`, source
/// timestamps).
pub(crate) fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
