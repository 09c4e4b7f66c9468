//! The last stored version of recently changed documents, by `(collection, _id)`.
//!
//! Every change the source processes leaves the document's new version here. Without
//! pre-images this is what makes originals exact: the cached version *is* the version before
//! the next change (events are processed in order). Bounded: when full, the least recently
//! touched tenth is evicted.

use std::collections::HashMap;

use bson::Document;

/// A bounded cache of stored documents.
#[derive(Debug)]
pub struct ObjectCache {
    entries: HashMap<(String, String), (Document, u64)>,
    capacity: usize,
    clock: u64,
}

impl ObjectCache {
    /// A cache holding at most `capacity` documents (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            clock: 0,
        }
    }

    /// The cached version of a document.
    pub fn get(&mut self, collection: &str, id: &str) -> Option<Document> {
        self.clock += 1;
        let clock = self.clock;
        self.entries
            .get_mut(&(collection.to_owned(), id.to_owned()))
            .map(|(document, used)| {
                *used = clock;
                document.clone()
            })
    }

    /// Stores the latest version of a document.
    pub fn put(&mut self, collection: &str, id: &str, document: Document) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        self.entries.insert(
            (collection.to_owned(), id.to_owned()),
            (document, self.clock),
        );
        if self.entries.len() > self.capacity {
            let mut ages: Vec<u64> = self.entries.values().map(|(_, used)| *used).collect();
            let cut = ages.len() / 10 + 1;
            let (_, threshold, _) = ages.select_nth_unstable(cut - 1);
            let threshold = *threshold;
            self.entries.retain(|_, (_, used)| *used > threshold);
        }
    }

    /// Removes a document (deleted), returning its last version.
    pub fn remove(&mut self, collection: &str, id: &str) -> Option<Document> {
        self.entries
            .remove(&(collection.to_owned(), id.to_owned()))
            .map(|(document, _)| document)
    }

    /// Forgets everything (after a resynchronisation).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of cached documents.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
