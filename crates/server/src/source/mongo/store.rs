//! The seam between the MongoDB source and MongoDB: a change stream and a handful of reads.
//!
//! [`MongoBackend`] implements both on the official driver. Tests implement them in memory
//! with recorded change-event documents, so the whole pipeline (stream → transform → auth →
//! dispatch → socket) runs in CI without a `mongod`.

use async_trait::async_trait;
use bson::{Document, doc};
use futures_util::TryStreamExt;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::error::ErrorKind;
use mongodb::options::{ChangeStreamOptions, FullDocumentBeforeChangeType, FullDocumentType};

/// Where a change stream starts.
#[derive(Debug, Clone)]
pub enum StreamStart {
    /// From now.
    Now,
    /// Right after the event with this token (resume after a restart or a disconnect).
    After(ResumeToken),
}

/// Which documents change events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Pre- and post-images where the collection records them (`whenAvailable`).
    Images,
    /// The current document looked up for updates (`updateLookup`); no pre-images.
    Lookup,
    /// Only what the event itself says (key and update description): used to step over an
    /// event that would exceed 16 MB with its documents attached.
    Lean,
}

/// Why a change stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The resume point is no longer in the oplog (error 286 ChangeStreamHistoryLost, or a
    /// resume token the server cannot use): events were lost.
    #[error("the change stream's history was lost: {0}")]
    HistoryLost(String),
    /// The stream was invalidated (database dropped or renamed).
    #[error("the change stream was invalidated")]
    Invalidated,
    /// The next event with its documents attached exceeds MongoDB's 16 MB limit
    /// (BSONObjectTooLarge): it must be read in [`StreamMode::Lean`].
    #[error("the next change event is too large with its documents attached: {0}")]
    TooLarge(String),
    /// Anything else (network, server down): resume from the last token.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A change event as the driver delivers it.
pub type RawEvent = ChangeStreamEvent<Document>;

/// An open change stream.
#[async_trait]
pub trait EventStream: Send {
    /// The next event; `Ok(None)` when a batch came back empty (the resume token still
    /// advanced: quiet streams must keep their position fresh).
    async fn next(&mut self) -> Result<Option<RawEvent>, StreamError>;
    /// The latest resume token (post-batch token included).
    fn resume_token(&self) -> Option<ResumeToken>;
}

/// Reads and commands on the Parse database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Opens one change stream on the database, filtered by `pipeline`.
    async fn watch(
        &self,
        start: StreamStart,
        pipeline: Vec<Document>,
        mode: StreamMode,
    ) -> Result<Box<dyn EventStream>, StreamError>;
    /// Documents of `collection` matching `filter`, at most `limit` (0: no limit).
    async fn find(
        &self,
        collection: &str,
        filter: Document,
        limit: i64,
    ) -> anyhow::Result<Vec<Document>>;
    /// Enables pre- and post-images on `collection` (MongoDB ≥ 6.0).
    async fn enable_images(&self, collection: &str) -> anyhow::Result<()>;
    /// Names of the collections in the database.
    async fn collections(&self) -> anyhow::Result<Vec<String>>;
}

/// MongoDB through the official driver.
#[derive(Debug, Clone)]
pub struct MongoBackend {
    database: mongodb::Database,
}

impl MongoBackend {
    /// Connects lazily (the driver connects on first use) to `url`; the database is
    /// `database`, or the one named in the URL.
    pub async fn connect(url: &str, database: &str) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = mongodb::options::ClientOptions::parse(url).await?;
        let name = if database.is_empty() {
            options.default_database.clone()
        } else {
            Some(database.to_owned())
        };
        let Some(name) = name else {
            anyhow::bail!("mongodb.url names no database and mongodb.database is empty");
        };
        let client = mongodb::Client::with_options(options)?;
        Ok(Self {
            database: client.database(&name),
        })
    }
}

fn classify(error: mongodb::error::Error) -> StreamError {
    if let ErrorKind::Command(command) = &*error.kind {
        // 286 ChangeStreamHistoryLost; 280 ChangeStreamFatalError (e.g. an unusable token).
        if command.code == 286 || command.code == 280 {
            return StreamError::HistoryLost(command.message.clone());
        }
        // 10334 BSONObjectTooLarge: the event with its images exceeds 16 MB.
        if command.code == 10334 {
            return StreamError::TooLarge(command.message.clone());
        }
    }
    StreamError::Other(anyhow::Error::new(error))
}

struct DriverStream(ChangeStream<RawEvent>);

#[async_trait]
impl EventStream for DriverStream {
    async fn next(&mut self) -> Result<Option<RawEvent>, StreamError> {
        if !self.0.is_alive() {
            return Err(StreamError::Invalidated);
        }
        self.0.next_if_any().await.map_err(classify)
    }

    fn resume_token(&self) -> Option<ResumeToken> {
        self.0.resume_token()
    }
}

#[async_trait]
impl Store for MongoBackend {
    async fn watch(
        &self,
        start: StreamStart,
        pipeline: Vec<Document>,
        mode: StreamMode,
    ) -> Result<Box<dyn EventStream>, StreamError> {
        let mut options = ChangeStreamOptions::default();
        // With images enabled the post-image is exact; without, the document is looked up (it
        // may be a later version than the event, which the source accounts for).
        let (full, before) = match mode {
            StreamMode::Images => (
                Some(FullDocumentType::WhenAvailable),
                FullDocumentBeforeChangeType::WhenAvailable,
            ),
            StreamMode::Lookup => (
                Some(FullDocumentType::UpdateLookup),
                FullDocumentBeforeChangeType::Off,
            ),
            // MongoDB's default: post-images of inserts and replaces only.
            StreamMode::Lean => (None, FullDocumentBeforeChangeType::Off),
        };
        options.full_document = full;
        options.full_document_before_change = Some(before);
        if let StreamStart::After(token) = start {
            options.start_after = Some(token);
        }
        let stream = self
            .database
            .watch()
            .pipeline(pipeline)
            .with_options(options)
            .await
            .map_err(classify)?;
        Ok(Box::new(DriverStream(stream)))
    }

    async fn find(
        &self,
        collection: &str,
        filter: Document,
        limit: i64,
    ) -> anyhow::Result<Vec<Document>> {
        let cursor = self
            .database
            .collection::<Document>(collection)
            .find(filter)
            .limit(limit)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    async fn enable_images(&self, collection: &str) -> anyhow::Result<()> {
        self.database
            .run_command(
                doc! { "collMod": collection, "changeStreamPreAndPostImages": { "enabled": true } },
            )
            .await?;
        Ok(())
    }

    async fn collections(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.database.list_collection_names().await?)
    }
}
