//! The MongoDB change-stream source.
//!
//! parse-server's LiveQuery only sees writes made through parse-server; this source tails
//! MongoDB itself, so it sees every write — scripts, migrations, the dashboard, other
//! services — and resumes after a restart without losing events.
//!
//! - One change stream per database, filtered to the live classes and the system collections
//!   the server needs (`_SCHEMA`, `_Session`, `_Role`, `_Join:*`) — never one per
//!   subscription (a stream per subscription is what makes such servers fall over).
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
//! - Sessions, roles and class permissions are read from MongoDB ([`identity`]) and invalidated
//!   by the stream; subqueries are resolved and maintained ([`subquery`]); `query` is answered
//!   from MongoDB ([`reader`]).
//!
//! Several servers can tail the same replica set independently: each keeps its own position.

pub mod cache;
pub mod convert;
pub mod filter;
pub mod identity;
pub mod reader;
pub mod resume;
pub mod schema;
pub mod store;
pub mod subquery;
pub mod transform;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::{Bson, Document, doc};
use mongodb::change_stream::event::{OperationType, ResumeToken};
use tokio_util::sync::CancellationToken;

use self::cache::ObjectCache;
use self::convert::FileUrls;
use self::identity::MongoIdentities;
use self::resume::ResumeStore;
use self::schema::Schemas;
use self::store::{RawEvent, Store, StreamError, StreamMode, StreamStart};
use self::subquery::Subqueries;
use self::transform::{LiveClasses, Output, Transformer};
use super::Source;
use crate::ingest::{AuthChange, Ingest};
use crate::retry::{Backoff, sleep_unless_shutdown};

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
    identities: Arc<MongoIdentities>,
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
    /// A source over `store`, sharing `schemas`, `identities` and `subqueries` with the server.
    pub fn new(
        store: Arc<dyn Store>,
        settings: MongoSettings,
        schemas: Arc<Schemas>,
        identities: Arc<MongoIdentities>,
        subqueries: Arc<Subqueries>,
    ) -> Self {
        Self {
            store,
            settings,
            schemas,
            identities,
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
    async fn resynchronise(&self, transformer: &mut Transformer, ingest: &Ingest, reason: &str) {
        tracing::warn!(
            reason,
            "change stream history lost or invalidated: clients are told to reconnect; resuming from now"
        );
        transformer.cache.clear();
        self.subqueries.clear();
        if let Err(err) = self.settings.resume.clear().await {
            tracing::warn!(error = %err, "cannot remove the resume token file");
        }
        ingest.resync(None).await;
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
        ingest: &Ingest,
        pre_images: bool,
    ) -> Result<(), StreamError> {
        if let Some(wall) = event.wall_time {
            ingest.observe_source_time(wall.timestamp_millis());
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
                    let permissions = ingest.permissions_of(&message);
                    self.subqueries
                        .apply_change(&message, permissions.as_deref());
                    if ingest.publish(message).await.is_err() {
                        return Ok(());
                    }
                }
                Output::Schema(class) => {
                    ingest
                        .auth_changed(AuthChange::Schema { class_name: &class })
                        .await;
                    let permissions = ingest.class_permissions(&class).await;
                    self.subqueries
                        .refresh_class(&class, permissions.as_deref())
                        .await;
                }
                // A session nobody resolved (no token known): no identity depends on it.
                Output::Session { id, token } => {
                    if let Some(token) = token.or_else(|| self.identities.token_of_session(&id)) {
                        ingest
                            .auth_changed(AuthChange::Session { token: &token })
                            .await;
                    }
                }
                Output::UserRoles(user_id) => {
                    ingest
                        .auth_changed(AuthChange::UserRoles { user_id: &user_id })
                        .await;
                }
                Output::RoleGraph => ingest.auth_changed(AuthChange::RoleGraph).await,
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
                    ingest.resync(Some(&class)).await;
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

/// Where the source stands in the change stream, across reconnects.
struct Position {
    /// Whether pre- and post-images are on; decided once MongoDB answers (it may be down at
    /// start-up).
    images: Option<bool>,
    transformer: Transformer,
    /// The last position read, saved to `mongodb.resume_token_file`.
    token: Option<ResumeToken>,
    backoff: Backoff,
    /// The next event is too large to carry its documents: read it alone, without them.
    lean: bool,
}

/// What one step of the source's loop came to.
enum Step<T> {
    /// Go on with this.
    Go(T),
    /// Start over (after a back-off or a resynchronisation).
    Retry,
    /// The server is shutting down.
    Shutdown,
}

impl MongoSource {
    async fn start_position(&self) -> Position {
        Position {
            images: (!self.settings.enable_pre_images).then_some(false),
            transformer: Transformer {
                prefix: self.settings.prefix.clone(),
                live: self.live(),
                files: self.settings.files.clone(),
                cache: ObjectCache::new(self.settings.object_cache_entries),
            },
            token: self.settings.resume.load().await,
            backoff: Backoff::for_sources(),
            lean: false,
        }
    }

    /// Waits a back-off delay; `Retry`, or `Shutdown` if it came first.
    async fn back_off<T>(&self, position: &mut Position, shutdown: &CancellationToken) -> Step<T> {
        if sleep_unless_shutdown(position.backoff.next_delay(), shutdown).await {
            Step::Retry
        } else {
            Step::Shutdown
        }
    }

    /// Whether pre-images are on, enabling them first if that is still undecided.
    async fn images(&self, position: &mut Position, shutdown: &CancellationToken) -> Step<bool> {
        if let Some(known) = position.images {
            return Step::Go(known);
        }
        match self.enable_images().await {
            Ok(known) => Step::Go(*position.images.insert(known)),
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot reach MongoDB to enable pre-images"
                );
                self.back_off(position, shutdown).await
            }
        }
    }

    /// Opens the change stream after the last position, then reads the schemas (after, so
    /// no schema change can fall between).
    async fn open(
        &self,
        position: &mut Position,
        pre_images: bool,
        ingest: &Ingest,
        shutdown: &CancellationToken,
    ) -> Step<Box<dyn store::EventStream>> {
        let mode = match (position.lean, pre_images) {
            (true, _) => StreamMode::Lean,
            (false, true) => StreamMode::Images,
            (false, false) => StreamMode::Lookup,
        };
        let start = position
            .token
            .clone()
            .map_or(StreamStart::Now, StreamStart::After);
        let opened = tokio::select! {
            () = shutdown.cancelled() => return Step::Shutdown,
            opened = self.store.watch(start, self.pipeline(), mode) => opened,
        };
        let stream = match opened {
            Ok(stream) => stream,
            Err(StreamError::TooLarge(reason)) if !position.lean => {
                tracing::warn!(
                    reason,
                    "the next change event is too large with its documents; reading it without them"
                );
                position.lean = true;
                return Step::Retry;
            }
            Err(err @ StreamError::HistoryLost(_)) => {
                return self.recover(err, position, ingest, shutdown).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot open the change stream");
                return self.back_off(position, shutdown).await;
            }
        };
        if let Err(err) = self.load_schemas().await {
            tracing::warn!(error = format!("{err:#}"), "cannot read _SCHEMA; retrying");
            return self.back_off(position, shutdown).await;
        }
        Step::Go(stream)
    }

    /// Reads the open stream until it fails, shutdown, or (in lean mode) the one large
    /// event is stepped over; saves the position at most once a second and on shutdown.
    async fn follow(
        &self,
        mut stream: Box<dyn store::EventStream>,
        position: &mut Position,
        ingest: &Ingest,
        pre_images: bool,
        shutdown: &CancellationToken,
    ) -> Step<StreamError> {
        let mut saved_at = Instant::now();
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => {
                    self.save(stream.resume_token().as_ref().or(position.token.as_ref())).await;
                    return Step::Shutdown;
                }
                next = stream.next() => next,
            };
            match next {
                Ok(Some(event)) => {
                    position.token = Some(event.id.clone());
                    if let Err(err) = self
                        .handle(event, &mut position.transformer, ingest, pre_images)
                        .await
                    {
                        return Step::Go(err);
                    }
                    if position.lean {
                        // Stepped over the large event: back to the normal stream.
                        position.lean = false;
                        return Step::Retry;
                    }
                }
                // An empty batch still advances the position (post-batch token).
                Ok(None) => {}
                Err(err) => return Step::Go(err),
            }
            if let Some(latest) = stream.resume_token() {
                position.token = Some(latest);
            }
            if saved_at.elapsed() >= SAVE_EVERY {
                self.save(position.token.as_ref()).await;
                saved_at = Instant::now();
            }
        }
    }

    /// After the stream failed: step over a too-large event, start over from now when the
    /// history is gone (telling clients), or back off and resume after the last event.
    async fn recover<T>(
        &self,
        failure: StreamError,
        position: &mut Position,
        ingest: &Ingest,
        shutdown: &CancellationToken,
    ) -> Step<T> {
        match failure {
            StreamError::TooLarge(reason) if !position.lean => {
                tracing::warn!(
                    reason,
                    "the next change event is too large with its documents; reading it without them"
                );
                position.lean = true;
                Step::Retry
            }
            StreamError::HistoryLost(reason) => {
                self.resynchronise(&mut position.transformer, ingest, &reason)
                    .await;
                position.token = None;
                Step::Retry
            }
            StreamError::Invalidated => {
                self.resynchronise(&mut position.transformer, ingest, "invalidated")
                    .await;
                position.token = None;
                Step::Retry
            }
            err @ (StreamError::Other(_) | StreamError::TooLarge(_)) => {
                self.save(position.token.as_ref()).await;
                tracing::warn!(
                    error = format!("{err:#}"),
                    "change stream failed; resuming after the last event"
                );
                self.back_off(position, shutdown).await
            }
        }
    }
}

#[async_trait]
impl Source for MongoSource {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    async fn run(
        self: Arc<Self>,
        ingest: Ingest,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut position = self.start_position().await;
        loop {
            let pre_images = match self.images(&mut position, &shutdown).await {
                Step::Go(pre_images) => pre_images,
                Step::Retry => continue,
                Step::Shutdown => return Ok(()),
            };
            let stream = match self
                .open(&mut position, pre_images, &ingest, &shutdown)
                .await
            {
                Step::Go(stream) => stream,
                Step::Retry => continue,
                Step::Shutdown => return Ok(()),
            };
            ingest.set_connected(true);
            position.backoff.reset();
            tracing::info!(
                resumed = position.token.is_some(),
                pre_images,
                "tailing the MongoDB change stream"
            );
            let followed = self
                .follow(stream, &mut position, &ingest, pre_images, &shutdown)
                .await;
            ingest.set_connected(false);
            match followed {
                Step::Go(failure) => {
                    if let Step::Shutdown = self
                        .recover::<()>(failure, &mut position, &ingest, &shutdown)
                        .await
                    {
                        return Ok(());
                    }
                }
                Step::Retry => {}
                Step::Shutdown => return Ok(()),
            }
        }
    }
}
