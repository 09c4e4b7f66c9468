//! The interval tree behind the range part of the subscription index.
//!
//! A range-only query (`{score: {$gt: 5}}`, `{createdAt: {$gte: d1, $lt: d2}}`) is posted
//! as one interval of one type bracket; an object's values of that field and bracket span
//! `[min, max]` (one value, or the elements of an array). The query can only match if its
//! interval meets that span, so a lookup asks for every interval that overlaps
//! `[min, max]`. Bounds are treated as inclusive here: the tree answers a superset, the
//! exact evaluation decides.
//!
//! The tree is a treap (a binary search tree ordered by lower bound, heap-ordered by a
//! pseudo-random priority, hence balanced in expectation whatever order the bounds arrive
//! in) whose nodes know which node of their subtree has the highest upper bound. A lookup
//! skips every subtree whose highest upper bound is below `min` and every right subtree
//! whose lower bounds exceed `max`: it costs O(log n) plus O(log n) per interval found.
//! Nodes live in a slot arena; a slot number is the handle under which an interval is
//! removed, and removal needs no copy of the bounds.

use std::borrow::Borrow;
use std::cmp::Ordering;

use crate::index::QueryId;

/// A lower bound; `Unbounded` sorts first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lower<K> {
    Unbounded,
    At(K),
}

/// An upper bound; `Unbounded` sorts last.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Upper<K> {
    At(K),
    Unbounded,
}

impl<K> Lower<K> {
    fn at_most<Q: ?Sized + Ord>(&self, max: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        match self {
            Self::Unbounded => true,
            Self::At(k) => k.borrow() <= max,
        }
    }
}

impl<K> Upper<K> {
    fn at_least<Q: ?Sized + Ord>(&self, min: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        match self {
            Self::Unbounded => true,
            Self::At(k) => k.borrow() >= min,
        }
    }
}

/// A number as an ordered key: never NaN, and `-0` is stored as `0` (they are equal
/// numbers), so the total order of `f64` agrees with numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NumKey(f64);

impl NumKey {
    /// `None` for NaN, which compares with nothing.
    pub(crate) fn new(n: f64) -> Option<Self> {
        if n.is_nan() {
            None
        } else if n == 0.0 {
            Some(Self(0.0))
        } else {
            Some(Self(n))
        }
    }
}

impl Eq for NumKey {}

impl PartialOrd for NumKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NumKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Node<K> {
    lower: Lower<K>,
    upper: Upper<K>,
    id: QueryId,
    priority: u32,
    left: u32,
    right: u32,
    /// The node of this subtree (itself included) with the highest upper bound.
    max_upper: u32,
}

/// A set of intervals over `K`, each tagged with the query it belongs to.
#[derive(Debug)]
pub(crate) struct IntervalTree<K> {
    nodes: Vec<Option<Node<K>>>,
    free: Vec<u32>,
    root: u32,
    len: usize,
    /// State of the priority generator.
    seed: u64,
}

impl<K> Default for IntervalTree<K> {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            len: 0,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl<K: Ord> IntervalTree<K> {
    /// Number of intervals.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds an interval of `id`; returns the handle that removes it.
    pub(crate) fn insert(&mut self, lower: Lower<K>, upper: Upper<K>, id: QueryId) -> u32 {
        let priority = self.next_priority();
        let node = Node {
            lower,
            upper,
            id,
            priority,
            left: NIL,
            right: NIL,
            max_upper: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = Some(node);
                slot
            }
            None => {
                let slot = u32::try_from(self.nodes.len())
                    .ok()
                    .filter(|&s| s != NIL)
                    .expect("fewer than 2^32 - 1 intervals");
                self.nodes.push(Some(node));
                slot
            }
        };
        self.node_mut(slot).max_upper = slot;
        self.root = self.insert_at(self.root, slot);
        self.len += 1;
        slot
    }

    /// Removes the interval `slot` returned by [`IntervalTree::insert`].
    pub(crate) fn remove(&mut self, slot: u32) {
        self.root = self.remove_at(self.root, slot);
        self.nodes[slot as usize] = None;
        self.free.push(slot);
        self.len -= 1;
        if self.len == 0 {
            self.nodes.clear();
            self.free.clear();
        }
    }

    /// Calls `found` with the query of every interval that overlaps `[min, max]` (bounds
    /// taken as inclusive), once per interval.
    pub(crate) fn overlapping<Q: ?Sized + Ord>(
        &self,
        min: &Q,
        max: &Q,
        found: &mut impl FnMut(QueryId),
    ) where
        K: Borrow<Q>,
    {
        self.visit(self.root, min, max, found);
    }

    fn visit<Q: ?Sized + Ord>(&self, t: u32, min: &Q, max: &Q, found: &mut impl FnMut(QueryId))
    where
        K: Borrow<Q>,
    {
        if t == NIL {
            return;
        }
        let node = self.node(t);
        if !self.node(node.max_upper).upper.at_least(min) {
            return;
        }
        self.visit(node.left, min, max, found);
        if !node.lower.at_most(max) {
            // Every node to the right starts even later.
            return;
        }
        if node.upper.at_least(min) {
            found(node.id);
        }
        self.visit(node.right, min, max, found);
    }

    fn next_priority(&mut self) -> u32 {
        // splitmix64: priorities the clients that choose the bounds cannot predict from
        // them, so no insertion order unbalances the tree.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u32
    }

    fn node(&self, slot: u32) -> &Node<K> {
        self.nodes[slot as usize]
            .as_ref()
            .expect("tree links point to live nodes")
    }

    fn node_mut(&mut self, slot: u32) -> &mut Node<K> {
        self.nodes[slot as usize]
            .as_mut()
            .expect("tree links point to live nodes")
    }

    /// The tree order: by lower bound, ties by slot (slots are unique).
    fn precedes(&self, a: u32, b: u32) -> bool {
        (&self.node(a).lower, a) < (&self.node(b).lower, b)
    }

    fn higher_upper(&self, a: u32, b: u32) -> u32 {
        if b != NIL && self.node(b).upper > self.node(a).upper {
            b
        } else {
            a
        }
    }

    fn update(&mut self, t: u32) {
        let node = self.node(t);
        let (left, right) = (node.left, node.right);
        let mut best = t;
        if left != NIL {
            best = self.higher_upper(best, self.node(left).max_upper);
        }
        if right != NIL {
            best = self.higher_upper(best, self.node(right).max_upper);
        }
        self.node_mut(t).max_upper = best;
    }

    fn insert_at(&mut self, t: u32, x: u32) -> u32 {
        if t == NIL {
            return x;
        }
        if self.node(x).priority > self.node(t).priority {
            let (left, right) = self.split(t, x);
            let node = self.node_mut(x);
            node.left = left;
            node.right = right;
            self.update(x);
            return x;
        }
        if self.precedes(x, t) {
            let left = self.insert_at(self.node(t).left, x);
            self.node_mut(t).left = left;
        } else {
            let right = self.insert_at(self.node(t).right, x);
            self.node_mut(t).right = right;
        }
        self.update(t);
        t
    }

    /// Splits the subtree `t` into the nodes that precede `x` and the others.
    fn split(&mut self, t: u32, x: u32) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.precedes(t, x) {
            let (left, right) = self.split(self.node(t).right, x);
            self.node_mut(t).right = left;
            self.update(t);
            (t, right)
        } else {
            let (left, right) = self.split(self.node(t).left, x);
            self.node_mut(t).left = right;
            self.update(t);
            (left, t)
        }
    }

    fn remove_at(&mut self, t: u32, x: u32) -> u32 {
        assert!(t != NIL, "removed intervals are in the tree");
        if t == x {
            let node = self.node(t);
            return self.merge(node.left, node.right);
        }
        if self.precedes(x, t) {
            let left = self.remove_at(self.node(t).left, x);
            self.node_mut(t).left = left;
        } else {
            let right = self.remove_at(self.node(t).right, x);
            self.node_mut(t).right = right;
        }
        self.update(t);
        t
    }

    /// Joins two subtrees, every node of `a` preceding every node of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.node(a).priority > self.node(b).priority {
            let right = self.merge(self.node(a).right, b);
            self.node_mut(a).right = right;
            self.update(a);
            a
        } else {
            let left = self.merge(a, self.node(b).left);
            self.node_mut(b).left = left;
            self.update(b);
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(intervals: &[(Lower<i64>, Upper<i64>, u32)], min: i64, max: i64) -> Vec<u32> {
        let mut ids: Vec<u32> = intervals
            .iter()
            .filter(|(l, u, _)| l.at_most(&max) && u.at_least(&min))
            .map(|(_, _, id)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Overlap lookups agree with a linear scan through inserts and removals, with
    /// duplicate bounds, unbounded sides and empty intervals.
    #[test]
    fn overlap_lookups_agree_with_a_scan() {
        let mut tree = IntervalTree::default();
        let mut live = Vec::new();
        let mut state = 7u64;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        for round in 0..3000u32 {
            if next(3) > 0 || live.is_empty() {
                let a = next(50) as i64;
                let b = next(50) as i64;
                let lower = if next(5) == 0 {
                    Lower::Unbounded
                } else {
                    Lower::At(a)
                };
                let upper = if next(5) == 0 {
                    Upper::Unbounded
                } else {
                    Upper::At(b)
                };
                let slot = tree.insert(lower.clone(), upper.clone(), QueryId::new(round));
                live.push((lower, upper, round, slot));
            } else {
                let (_, _, _, slot) = live.swap_remove(next(live.len() as u64) as usize);
                tree.remove(slot);
            }
            assert_eq!(tree.len(), live.len());
            let min = next(55) as i64 - 2;
            let max = min + next(4) as i64;
            let intervals: Vec<_> = live
                .iter()
                .map(|(l, u, id, _)| (l.clone(), u.clone(), *id))
                .collect();
            let mut got = Vec::new();
            tree.overlapping(&min, &max, &mut |id| got.push(id.index() as u32));
            got.sort_unstable();
            assert_eq!(got, brute(&intervals, min, max), "round {round}");
        }
    }

    #[test]
    fn numbers_order_numerically_with_signed_zero_equal_and_no_nan() {
        assert!(NumKey::new(f64::NAN).is_none());
        assert_eq!(NumKey::new(-0.0), NumKey::new(0.0));
        let mut keys: Vec<NumKey> = [3.5, -1e300, 0.0, -2.0, 1e300]
            .into_iter()
            .filter_map(NumKey::new)
            .collect();
        keys.sort();
        let sorted: Vec<f64> = keys.iter().map(|k| k.0).collect();
        assert_eq!(sorted, [-1e300, -2.0, 0.0, 3.5, 1e300]);
    }
}
