//! The MongoDB change-stream source.
//!
//! parse-server's LiveQuery only sees writes made through parse-server; this source tails
//! MongoDB itself, so it sees every write — scripts, migrations, the dashboard, other
//! services — and resumes after a restart without losing events (reference §5, §7.1, §7.4).
//!
//! - One change stream per database, filtered to the live classes and the system collections
//!   the server needs (`_SCHEMA`, `_Session`, `_Role`, `_Join:*`) — never one per
//!   subscription (anchors.md §1.8).
//! - With `mongodb.enable_pre_images`, pre- and post-images are switched on per collection at
//!   start-up (`collMod`, MongoDB ≥ 6.0): originals are exact. Without them the object cache
//!   and the update description stand in ([`transform`]; `protocol-spec/mongodb.md` says
//!   exactly where that is weaker).
//! - Stored documents become Parse JSON with the schemas of `_SCHEMA` ([`convert`],
//!   [`schema`]), kept current from the stream.
//! - The resume token (post-batch tokens of quiet streams included) is saved to
//!   `mongodb.resume_token_file` at most once a second and on shutdown; a restart continues
//!   after it. When MongoDB no longer has that history (error 286) or the stream is
//!   invalidated, the source starts over from now and every client is told, with an error
//!   frame carrying `reconnect: true`, that events may have been lost.
//! - Sessions, roles and class permissions are read from MongoDB ([`auth`]) and invalidated
//!   by the stream; subqueries are resolved and maintained ([`subquery`]); `query` is answered
//!   from MongoDB ([`reader`]).
//!
//! Several servers can tail the same replica set independently: each keeps its own position.

pub mod auth;
pub mod backend;
pub mod cache;
pub mod convert;
pub mod filter;
pub mod reader;
pub mod resume;
pub mod schema;
pub mod subquery;
pub mod transform;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::{Bson, Document, doc};
use mongodb::change_stream::event::{OperationType, ResumeToken};
use tokio_util::sync::CancellationToken;

use self::auth::MongoAuth;
use self::backend::{RawEvent, Store, StreamError, StreamMode, StreamStart};
use self::cache::ObjectCache;
use self::convert::FileUrls;
use self::resume::ResumeStore;
use self::schema::Schemas;
use self::subquery::Subqueries;
use self::transform::{LiveClasses, Output, Transformer};
use super::redis::Backoff;
use super::{EventSink, Source};

/// How often the resume token is saved while events flow.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Settings of the MongoDB source.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// Collection name prefix.
    pub prefix: String,
    /// Served classes (`None`: every class).
    pub classes: Option<Vec<String>>,
    /// Switch pre- and post-images on at start-up.
    pub enable_pre_images: bool,
    /// Where the resume token is kept.
    pub resume: ResumeStore,
    /// Size of the object cache.
    pub object_cache_entries: usize,
    /// File URLs.
    pub files: FileUrls,
}

/// The source.
pub struct MongoSource {
    store: Arc<dyn Store>,
    settings: MongoSettings,
    /// Collections whose pre- and post-images were switched on (or tried), so collections
    /// created later (a new class) get them on their first event.
    imaged: parking_lot::Mutex<std::collections::HashSet<String>>,
    schemas: Arc<Schemas>,
    auth: Arc<MongoAuth>,
    subqueries: Arc<Subqueries>,
}

impl std::fmt::Debug for MongoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoSource")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Collections the stream always needs besides the live classes.
const SYSTEM: &[&str] = &[
    "_SCHEMA",
    "_Session",
    "_Role",
    "_Join:users:_Role",
    "_Join:roles:_Role",
];

impl MongoSource {
    /// A source over `store`, sharing `schemas`, `auth` and `subqueries` with the server.
    pub fn new(
        store: Arc<dyn Store>,
        settings: MongoSettings,
        schemas: Arc<Schemas>,
        auth: Arc<MongoAuth>,
        subqueries: Arc<Subqueries>,
    ) -> Self {
        Self {
            store,
            settings,
            schemas,
            auth,
            subqueries,
            imaged: parking_lot::Mutex::default(),
        }
    }

    /// Whether the source reads `collection` (a live class, a system collection, a relation).
    fn reads(&self, collection: &str) -> bool {
        collection
            .strip_prefix(self.settings.prefix.as_str())
            .is_some_and(|class| {
                self.live().contains(class)
                    || SYSTEM.contains(&class)
                    || class.starts_with("_Join:")
            })
    }

    /// Switches images on for a collection first seen in the stream (a class created after
    /// start-up). Its first events still lack them; later ones carry them.
    async fn enable_images_on_new(&self, collection: &str) {
        if !self.imaged.lock().insert(collection.to_owned()) || !self.reads(collection) {
            return;
        }
        match self.store.enable_images(collection).await {
            Ok(()) => tracing::info!(
                collection,
                "pre- and post-images enabled on a new collection"
            ),
            Err(err) => tracing::warn!(
                collection,
                error = format!("{err:#}"),
                "cannot enable pre-images on a new collection; its originals fall back to the object cache"
            ),
        }
    }

    fn live(&self) -> LiveClasses {
        LiveClasses(
            self.settings
                .classes
                .as_ref()
                .map(|c| c.iter().cloned().collect()),
        )
    }

    /// The `$match` stage: data operations on the live classes, the system collections and
    /// relation tables, plus the events that end or damage the stream.
    fn pipeline(&self) -> Vec<Document> {
        let prefix = &self.settings.prefix;
        let mut namespaces: Vec<Document> =
            vec![doc! {"ns.coll": {"$regex": format!("^{}_Join:", regex_escape(prefix))}}];
        let mut names: Vec<String> = SYSTEM.iter().map(|c| format!("{prefix}{c}")).collect();
        match &self.settings.classes {
            Some(classes) => names.extend(classes.iter().map(|c| format!("{prefix}{c}"))),
            // Every user class, and `_User` (`_Session` and `_Role` are in SYSTEM already).
            // parse-server's internal classes (`_Installation`, …) only when listed.
            None => {
                namespaces
                    .push(doc! {"ns.coll": {"$regex": format!("^{}[^_]", regex_escape(prefix))}});
                names.push(format!("{prefix}_User"));
            }
        }
        namespaces.push(doc! {"ns.coll": {"$in": names}});
        vec![doc! {"$match": {"$or": [
            {"operationType": {"$in": ["insert", "update", "replace", "delete", "drop", "rename"]}, "$or": namespaces},
            {"operationType": {"$in": ["invalidate", "dropDatabase"]}},
        ]}}]
    }

    /// Switches pre- and post-images on for every collection the source reads; returns
    /// whether that worked anywhere (MongoDB < 6.0 refuses everywhere). An error means the
    /// database could not be asked (it is down): try again later.
    async fn enable_images(&self) -> anyhow::Result<bool> {
        let collections = self.store.collections().await?;
        let mut any = false;
        let mut all = true;
        for collection in collections {
            if !self.reads(&collection) {
                continue;
            }
            self.imaged.lock().insert(collection.clone());
            match self.store.enable_images(&collection).await {
                Ok(()) => any = true,
                Err(err) => {
                    tracing::warn!(
                        collection,
                        error = format!("{err:#}"),
                        "cannot enable pre-images (MongoDB < 6.0 or missing privileges); originals fall back to the object cache"
                    );
                    all = false;
                }
            }
        }
        // An empty database: images are switched on per collection as classes appear.
        Ok(any || all)
    }

    async fn load_schemas(&self) -> anyhow::Result<()> {
        let documents = self
            .store
            .find(&format!("{}_SCHEMA", self.settings.prefix), doc! {}, 0)
            .await?;
        self.schemas.replace_all(&documents);
        Ok(())
    }

    /// Tells every client that events may have been lost, and starts over.
    async fn resynchronise(&self, transformer: &mut Transformer, sink: &EventSink, reason: &str) {
        tracing::warn!(
            reason,
            "change stream history lost or invalidated: clients are told to reconnect; resuming from now"
        );
        transformer.cache.clear();
        self.subqueries.clear();
        if let Err(err) = self.settings.resume.clear().await {
            tracing::warn!(error = %err, "cannot remove the resume token file");
        }
        sink.resync(None).await;
    }

    /// Looks up the current version of a document whose event carries no post-image and
    /// whose previous version is not cached (what `updateLookup` would have done).
    async fn fill_post_image(&self, event: &mut RawEvent, transformer: &mut Transformer) {
        if !matches!(
            event.operation_type,
            OperationType::Update | OperationType::Replace
        ) || event.full_document.is_some()
        {
            return;
        }
        let (Some(collection), Some(id)) = (
            event.ns.as_ref().and_then(|n| n.coll.clone()),
            event
                .document_key
                .as_ref()
                .and_then(|k| k.get("_id").cloned()),
        ) else {
            return;
        };
        if let Bson::String(key) = &id
            && transformer.cache.get(&collection, key).is_some()
        {
            return;
        }
        match self.store.find(&collection, doc! {"_id": id}, 1).await {
            Ok(mut found) => event.full_document = found.pop(),
            Err(err) => tracing::warn!(
                collection,
                error = format!("{err:#}"),
                "cannot look up a post-image"
            ),
        }
    }

    async fn handle(
        &self,
        mut event: RawEvent,
        transformer: &mut Transformer,
        sink: &EventSink,
        pre_images: bool,
    ) -> Result<(), StreamError> {
        if let Some(wall) = event.wall_time {
            sink.observe_source_time(wall.timestamp_millis());
        }
        if pre_images
            && event.operation_type == OperationType::Insert
            && let Some(collection) = event.ns.as_ref().and_then(|n| n.coll.as_deref())
        {
            self.enable_images_on_new(collection).await;
        }
        self.fill_post_image(&mut event, transformer).await;
        for output in transformer.transform(event, &self.schemas) {
            match output {
                Output::Change(message) => {
                    let permissions = sink.permissions_of(&message);
                    self.subqueries
                        .apply_change(&message, permissions.as_deref());
                    if sink.publish(message).await.is_err() {
                        return Ok(());
                    }
                }
                Output::Schema(class) => {
                    sink.schema_changed(&class);
                    let permissions = sink.class_permissions(&class).await;
                    self.subqueries
                        .refresh_class(&class, permissions.as_deref())
                        .await;
                }
                // A session nobody resolved (no token known): no identity depends on it.
                Output::Session { id, token } => {
                    if let Some(token) = token.or_else(|| self.auth.token_of_session(&id)) {
                        sink.session_changed(&token).await;
                    }
                }
                Output::UserRoles(user) => sink.clear_user(&user).await,
                Output::RoleGraph => sink.roles_changed(),
                Output::Join {
                    field,
                    owner_class,
                    owning_id,
                    related_id,
                    added,
                } => {
                    self.subqueries.apply_join(
                        &field,
                        &owner_class,
                        &owning_id,
                        &related_id,
                        added,
                    );
                }
                Output::Dropped(class) => {
                    tracing::warn!(
                        class,
                        "a live class's collection was dropped; its subscribers are told to reconnect"
                    );
                    sink.resync(Some(&class)).await;
                }
                Output::Invalidated => return Err(StreamError::Invalidated),
            }
        }
        Ok(())
    }

    async fn save(&self, token: Option<&ResumeToken>) {
        if let Some(token) = token
            && let Err(err) = self.settings.resume.save(token).await
        {
            tracing::warn!(error = %err, "cannot save the resume token");
        }
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if "\\^$.|?*+()[]{}".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

#[async_trait]
impl Source for MongoSource {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    async fn run(
        self: Arc<Self>,
        sink: EventSink,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        // Decided once the database answers (it may be down at start-up).
        let mut images: Option<bool> = (!self.settings.enable_pre_images).then_some(false);
        let mut transformer = Transformer {
            prefix: self.settings.prefix.clone(),
            live: self.live(),
            files: self.settings.files.clone(),
            cache: ObjectCache::new(self.settings.object_cache_entries),
        };
        let mut token: Option<ResumeToken> = self.settings.resume.load().await;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        // Set when the next event is too large to carry its documents: read it alone, lean.
        let mut lean = false;
        loop {
            let pre_images = match images {
                Some(known) => known,
                None => match self.enable_images().await {
                    Ok(known) => *images.insert(known),
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = format!("{err:#}"), retry_in = ?delay, "cannot reach MongoDB to enable pre-images");
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(delay) => continue,
                        }
                    }
                },
            };
            let normal = if pre_images {
                StreamMode::Images
            } else {
                StreamMode::Lookup
            };
            let start = token.clone().map_or(StreamStart::Now, StreamStart::After);
            let mode = if lean { StreamMode::Lean } else { normal };
            let opened = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                opened = self.store.watch(start, self.pipeline(), mode) => opened,
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(StreamError::HistoryLost(reason)) => {
                    self.resynchronise(&mut transformer, &sink, &reason).await;
                    token = None;
                    continue;
                }
                Err(StreamError::TooLarge(reason)) if !lean => {
                    tracing::warn!(
                        reason,
                        "the next change event is too large with its documents; reading it without them"
                    );
                    lean = true;
                    continue;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "cannot open the change stream");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            // Schemas are read after the stream is open, so no schema change can fall between.
            if let Err(err) = self.load_schemas().await {
                tracing::warn!(error = format!("{err:#}"), "cannot read _SCHEMA; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            sink.set_connected(true);
            backoff.reset();
            tracing::info!(
                resumed = token.is_some(),
                pre_images,
                "tailing the MongoDB change stream"
            );
            let mut saved_at = Instant::now();
            let failure = loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => {
                        self.save(stream.resume_token().as_ref().or(token.as_ref())).await;
                        sink.set_connected(false);
                        return Ok(());
                    }
                    next = stream.next() => next,
                };
                match next {
                    Ok(Some(event)) => {
                        token = Some(event.id.clone());
                        if let Err(err) = self
                            .handle(event, &mut transformer, &sink, pre_images)
                            .await
                        {
                            break Some(err);
                        }
                        if lean {
                            // Stepped over the large event: back to the normal stream.
                            lean = false;
                            break None;
                        }
                    }
                    // An empty batch still advances the position (post-batch token).
                    Ok(None) => {}
                    Err(err) => break Some(err),
                }
                if let Some(latest) = stream.resume_token() {
                    token = Some(latest);
                }
                if saved_at.elapsed() >= SAVE_EVERY {
                    self.save(token.as_ref()).await;
                    saved_at = Instant::now();
                }
            };
            let Some(failure) = failure else { continue };
            sink.set_connected(false);
            match failure {
                StreamError::TooLarge(reason) if !lean => {
                    tracing::warn!(
                        reason,
                        "the next change event is too large with its documents; reading it without them"
                    );
                    lean = true;
                }
                StreamError::HistoryLost(reason) => {
                    self.resynchronise(&mut transformer, &sink, &reason).await;
                    token = None;
                }
                StreamError::Invalidated => {
                    self.resynchronise(&mut transformer, &sink, "invalidated")
                        .await;
                    token = None;
                }
                err @ (StreamError::Other(_) | StreamError::TooLarge(_)) => {
                    self.save(token.as_ref()).await;
                    let delay = backoff.next_delay();
                    tracing::warn!(error = format!("{err:#}"), retry_in = ?delay, "change stream failed; resuming after the last event");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
