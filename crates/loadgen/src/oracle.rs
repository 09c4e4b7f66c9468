//! The correctness oracle of one subscription: what it must receive and what it did.
//!
//! A subscription expects a known, ordered set of events (see [`crate::workload`]); each
//! received event is mapped to its position `k` in that set and recorded in a sliding bitmap.
//! Events arrive nearly in order, so the bitmap stays a few words long: its low words fill up
//! and are dropped as the base advances. A position below the base was seen already.

use std::collections::VecDeque;

use crate::scan::Scanned;
use crate::workload::Workload;

/// A set of seen positions, stored as a bitmap window starting at `base`.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Every position below `base` has been seen.
    base: u64,
    /// Bit `b` of word `w` is position `base + 64 w + b`.
    words: VecDeque<u64>,
}

impl Window {
    /// Records position `k`; `false` when it was seen before.
    pub(crate) fn insert(&mut self, k: u64) -> bool {
        if k < self.base {
            return false;
        }
        let offset = k - self.base;
        let word = usize::try_from(offset / 64).expect("window offsets are bounded by M");
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (offset % 64);
        if self.words[word] & bit != 0 {
            return false;
        }
        self.words[word] |= bit;
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
        true
    }

    /// How many 64-bit words the window holds (for tests and memory checks).
    #[cfg(test)]
    fn len_words(&self) -> usize {
        self.words.len()
    }
}

/// Verdict on one received event frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An expected event seen for the first time.
    New,
    Duplicate,
    /// An event this subscription must not receive (wrong room, seq out of range, no seq).
    Unexpected,
    /// An op other than `create`.
    WrongOp,
}

/// One subscription's expectations and tallies.
#[derive(Debug)]
pub(crate) struct SubOracle {
    /// The room asked for; `None` for broadcast.
    room: Option<i64>,
    pub(crate) expected: u64,
    pub(crate) unique: u64,
    pub(crate) duplicate: u64,
    pub(crate) unexpected: u64,
    pub(crate) wrong_op: u64,
    seen: Window,
}

impl SubOracle {
    pub(crate) fn new(workload: &Workload, j: u64) -> Self {
        let room = workload.sub_room(j);
        Self {
            room,
            expected: workload.expected_count(room),
            unique: 0,
            duplicate: 0,
            unexpected: 0,
            wrong_op: 0,
            seen: Window::default(),
        }
    }

    /// Whether every expected event has arrived.
    pub(crate) fn complete(&self) -> bool {
        self.unique >= self.expected
    }

    pub(crate) fn missing(&self) -> u64 {
        self.expected.saturating_sub(self.unique)
    }

    /// Judges and records one event frame addressed to this subscription.
    pub(crate) fn observe(&mut self, workload: &Workload, frame: &Scanned<'_>) -> Verdict {
        let verdict = self.judge(workload, frame);
        match verdict {
            Verdict::New => self.unique += 1,
            Verdict::Duplicate => self.duplicate += 1,
            Verdict::Unexpected => self.unexpected += 1,
            Verdict::WrongOp => self.wrong_op += 1,
        }
        verdict
    }

    fn judge(&mut self, workload: &Workload, frame: &Scanned<'_>) -> Verdict {
        if frame.op != Some("create") {
            return Verdict::WrongOp;
        }
        let Some(seq) = frame.seq else {
            return Verdict::Unexpected;
        };
        if let Some(room) = self.room
            && frame.room != Some(room)
        {
            return Verdict::Unexpected;
        }
        let Some(k) = workload.expected_index(self.room, seq) else {
            return Verdict::Unexpected;
        };
        if self.seen.insert(k) {
            Verdict::New
        } else {
            Verdict::Duplicate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{QueryFamily, Selectivity};

    #[test]
    fn window_in_order() {
        let mut w = Window::default();
        for k in 0..10_000 {
            assert!(w.insert(k));
        }
        assert!(w.len_words() <= 1, "full words are dropped");
        assert_eq!(w.base, 9984);
    }

    #[test]
    fn window_out_of_order() {
        let mut w = Window::default();
        let order = [5, 3, 200, 0, 1, 2, 4, 64, 63];
        for k in order {
            assert!(w.insert(k), "{k}");
        }
        assert_eq!(w.len_words(), 4);
        for k in (6..200).filter(|k| !order.contains(k)) {
            assert!(w.insert(k));
        }
        assert_eq!(w.base, 192);
        for k in order {
            assert!(!w.insert(k), "{k} is a duplicate");
        }
    }

    #[test]
    fn window_duplicates_and_below_base() {
        let mut w = Window::default();
        assert!(w.insert(70));
        assert!(!w.insert(70), "same position twice");
        for k in 0..64 {
            assert!(w.insert(k));
        }
        assert_eq!(w.base, 64, "the first word filled and was dropped");
        assert!(!w.insert(10), "below the base");
        assert!(!w.insert(63), "below the base");
        assert!(!w.insert(70));
        assert!(w.insert(64));
    }

    fn create(room: i64, seq: u64) -> Scanned<'static> {
        Scanned {
            op: Some("create"),
            request_id: Some(1),
            seq: Some(seq),
            sent_at_ns: Some(1),
            room: Some(room),
        }
    }

    #[test]
    fn distinct_subscription() {
        let workload = Workload {
            class: "C".into(),
            query: QueryFamily::Distinct,
            rooms: 10,
            selectivity: Selectivity::Rooms,
            events: 100,
            object_bytes: 256,
            run_id: "r".into(),
            canary_every: 0,
        };
        let mut sub = SubOracle::new(&workload, 13);
        assert_eq!(sub.expected, 10);
        assert_eq!(sub.observe(&workload, &create(3, 3)), Verdict::New);
        assert_eq!(sub.observe(&workload, &create(3, 23)), Verdict::New);
        assert_eq!(sub.observe(&workload, &create(3, 23)), Verdict::Duplicate);
        assert_eq!(sub.observe(&workload, &create(4, 4)), Verdict::Unexpected);
        assert_eq!(
            sub.observe(&workload, &create(3, 4)),
            Verdict::Unexpected,
            "room field and seq disagree"
        );
        assert_eq!(sub.observe(&workload, &create(3, 103)), Verdict::Unexpected);
        let update = Scanned {
            op: Some("update"),
            ..create(3, 13)
        };
        assert_eq!(sub.observe(&workload, &update), Verdict::WrongOp);
        let no_seq = Scanned {
            seq: None,
            ..create(3, 13)
        };
        assert_eq!(sub.observe(&workload, &no_seq), Verdict::Unexpected);
        assert_eq!(sub.missing(), 8);
        assert!(!sub.complete());
        for seq in (13..100).step_by(10).filter(|&s| s != 23) {
            sub.observe(&workload, &create(3, seq));
        }
        assert!(sub.complete());
        assert_eq!(
            (sub.unique, sub.duplicate, sub.unexpected, sub.wrong_op),
            (10, 1, 4, 1)
        );
    }

    #[test]
    fn broadcast_subscription() {
        let workload = Workload {
            class: "C".into(),
            query: QueryFamily::Broadcast,
            rooms: 10,
            selectivity: Selectivity::Rooms,
            events: 100,
            object_bytes: 256,
            run_id: "r".into(),
            canary_every: 0,
        };
        let mut sub = SubOracle::new(&workload, 13);
        assert_eq!(sub.expected, 100);
        for seq in (0..100).rev() {
            assert_eq!(
                sub.observe(&workload, &create(workload.event_room(seq), seq)),
                Verdict::New
            );
        }
        assert!(sub.complete());
        assert_eq!(sub.observe(&workload, &create(0, 100)), Verdict::Unexpected);
        assert_eq!(sub.observe(&workload, &create(0, 0)), Verdict::Duplicate);
    }
}
