//! The `query` op (SDK `subscription.find()`) answered from MongoDB.

use std::sync::Arc;

use async_trait::async_trait;
use livequery_matcher::Query;
use serde_json::{Map, Value};

use super::convert::{FileUrls, to_parse_json};
use super::filter::prefilter;
use super::schema::Schemas;
use super::store::Store;
use crate::backend::ObjectReader;

/// Candidates examined per requested result when the prefilter is not exact.
const SCAN_FACTOR: usize = 20;

/// Reads current objects from MongoDB.
pub struct MongoReader {
    store: Arc<dyn Store>,
    schemas: Arc<Schemas>,
    prefix: String,
    files: FileUrls,
}

impl std::fmt::Debug for MongoReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoReader")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl MongoReader {
    /// A reader over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        schemas: Arc<Schemas>,
        prefix: &str,
        files: FileUrls,
    ) -> Self {
        Self {
            store,
            schemas,
            prefix: prefix.to_owned(),
            files,
        }
    }
}

#[async_trait]
impl ObjectReader for MongoReader {
    /// The first `limit` matches. Constraints MongoDB can evaluate narrow the read; the rest
    /// (regular expressions, geo, …) are decided by the matcher over at most
    /// `SCAN_FACTOR × limit` candidates.
    async fn find(
        &self,
        class_name: &str,
        where_: &Map<String, Value>,
        query: &Query,
        limit: usize,
    ) -> anyhow::Result<Vec<Map<String, Value>>> {
        let schema = self.schemas.get(class_name);
        let (filter, exact) = prefilter(where_, schema.as_deref());
        let scan = if exact {
            limit
        } else {
            limit.saturating_mul(SCAN_FACTOR)
        };
        let documents = self
            .store
            .find(
                &format!("{}{class_name}", self.prefix),
                filter,
                i64::try_from(scan).unwrap_or(i64::MAX),
            )
            .await?;
        Ok(documents
            .iter()
            .map(|document| to_parse_json(class_name, document, schema.as_deref(), &self.files))
            .filter(|object| query.matches(object))
            .take(limit)
            .collect())
    }
}
