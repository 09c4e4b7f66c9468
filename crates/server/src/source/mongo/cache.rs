//! The last stored version of recently changed documents, by `(collection, _id)`.
//!
//! Every change the source processes leaves the document's new version here. Without
//! pre-images this is what makes originals exact: the cached version *is* the version before
//! the next change (events are processed in order). Bounded: when full, the least recently
//! used document is evicted (O(1) per operation).

use std::num::NonZeroUsize;

use bson::Document;
use lru::LruCache;

/// A bounded cache of stored documents.
#[derive(Debug)]
pub struct ObjectCache {
    /// `None` when the capacity is 0 (caching disabled).
    entries: Option<LruCache<(String, String), Document>>,
}

impl ObjectCache {
    /// A cache holding at most `capacity` documents (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: NonZeroUsize::new(capacity).map(LruCache::new),
        }
    }

    fn key(collection: &str, id: &str) -> (String, String) {
        (collection.to_owned(), id.to_owned())
    }

    /// The cached version of a document.
    pub fn get(&mut self, collection: &str, id: &str) -> Option<Document> {
        self.entries
            .as_mut()?
            .get(&Self::key(collection, id))
            .cloned()
    }

    /// Stores the latest version of a document.
    pub fn put(&mut self, collection: &str, id: &str, document: Document) {
        if let Some(entries) = &mut self.entries {
            entries.put(Self::key(collection, id), document);
        }
    }

    /// Removes a document (deleted), returning its last version.
    pub fn remove(&mut self, collection: &str, id: &str) -> Option<Document> {
        self.entries.as_mut()?.pop(&Self::key(collection, id))
    }

    /// Forgets everything (after a resynchronisation).
    pub fn clear(&mut self) {
        if let Some(entries) = &mut self.entries {
            entries.clear();
        }
    }

    /// Number of cached documents.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, LruCache::len)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn bounded_and_least_recently_used_first() {
        let mut cache = ObjectCache::new(10);
        for i in 0..10 {
            cache.put("C", &i.to_string(), doc! {"n": i});
        }
        assert!(cache.get("C", "0").is_some());
        cache.put("C", "10", doc! {"n": 10});
        assert!(cache.len() <= 10);
        assert!(cache.get("C", "0").is_some(), "recently used survives");
        assert!(cache.get("C", "1").is_none(), "the oldest goes");
        assert_eq!(cache.remove("C", "10"), Some(doc! {"n": 10}));
        let mut off = ObjectCache::new(0);
        off.put("C", "x", doc! {});
        assert!(off.is_empty());
    }
}
