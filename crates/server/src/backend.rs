//! The pluggable backends behind the server: where current objects are read (the `query`
//! op) and where subqueries are resolved. Sources and identity providers implement them;
//! the client protocol uses them.

use async_trait::async_trait;
use livequery_matcher::gate::Reader;
use livequery_matcher::{Query, QueryError};
use serde_json::{Map, Value};

use crate::identity::ClassPermissionMap;

/// Reads current objects, for the `query` op.
#[async_trait]
pub trait ObjectReader: Send + Sync + 'static {
    /// Up to `limit` objects of `class_name` matching `where_` (compiled: `query`), as Parse
    /// REST JSON with `className`. The server re-checks every object against the
    /// subscription's query and permissions.
    async fn find(
        &self,
        class_name: &str,
        where_: &Map<String, Value>,
        query: &Query,
        limit: usize,
    ) -> anyhow::Result<Vec<Map<String, Value>>>;
}

/// Resolves `$inQuery`, `$notInQuery`, `$select`, `$dontSelect` and `$relatedTo` against the
/// database, for sources that can.
#[async_trait]
pub trait SubqueryResolver: Send + Sync + 'static {
    /// Binds every subquery of `query` to a maintained result set, computed for `reader`
    /// (the inner objects the gate lets it count, judged with `permissions` of the inner
    /// classes). Returns the bytes the sets hold, which the subscriber's budget is charged.
    async fn bind(
        &self,
        query: &mut Query,
        reader: &Reader,
        permissions: &ClassPermissionMap,
    ) -> Result<usize, QueryError>;
}
