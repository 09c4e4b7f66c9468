//! Cross-connection tallies: latency histogram, delivery count, last receipt.
//!
//! A histogram for 1 µs .. 60 s at 3 significant figures is ~200 KB, far too much for one per
//! connection, so receivers record into a few shards instead, one per runtime worker thread
//! (chosen through a thread-local index). A shard's lock is taken only by the tasks of its
//! own thread and, every 50 ms, by the drain monitor, so it is practically uncontended.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use hdrhistogram::Histogram;

/// Lowest and highest trackable latencies, in microseconds.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;

#[derive(Debug)]
struct Shard {
    latency_us: Histogram<u64>,
    deliveries: u64,
    last_receipt_ns: u64,
}

/// The sharded tallies.
#[derive(Debug)]
pub(crate) struct Recorder {
    shards: Vec<Mutex<Shard>>,
}

/// A merged view of every shard.
#[derive(Debug)]
pub(crate) struct Totals {
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) deliveries: u64,
    /// 0 when nothing was received.
    pub(crate) last_receipt_ns: u64,
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, 3).expect("constant bounds are valid")
}

fn shard_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HINT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    HINT.with(|hint| {
        hint.get().unwrap_or_else(|| {
            let h = NEXT.fetch_add(1, Ordering::Relaxed);
            hint.set(Some(h));
            h
        })
    })
}

impl Recorder {
    /// A recorder for `threads` worker threads.
    pub(crate) fn new(threads: usize) -> Self {
        let shards = (0..threads.max(1))
            .map(|_| {
                Mutex::new(Shard {
                    latency_us: new_histogram(),
                    deliveries: 0,
                    last_receipt_ns: 0,
                })
            })
            .collect();
        Self { shards }
    }

    /// Records one delivered event frame received at `receipt_ns`, with its latency when it
    /// carried a `sentAt`.
    pub(crate) fn record(&self, receipt_ns: u64, latency_us: Option<u64>) {
        let shard = &self.shards[shard_hint() % self.shards.len()];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        shard.deliveries += 1;
        shard.last_receipt_ns = shard.last_receipt_ns.max(receipt_ns);
        if let Some(us) = latency_us {
            shard
                .latency_us
                .saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
        }
    }

    /// The latest receipt so far (0 when none), without merging histograms.
    pub(crate) fn last_receipt_ns(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).last_receipt_ns)
            .max()
            .unwrap_or(0)
    }

    /// Every shard merged.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = Totals {
            latency_us: new_histogram(),
            deliveries: 0,
            last_receipt_ns: 0,
        };
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            totals
                .latency_us
                .add(&shard.latency_us)
                .expect("histograms with equal bounds merge");
            totals.deliveries += shard.deliveries;
            totals.last_receipt_ns = totals.last_receipt_ns.max(shard.last_receipt_ns);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merge_across_threads() {
        let recorder = std::sync::Arc::new(Recorder::new(3));
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        recorder.record(t * 10_000 + n, Some(n + 1));
                    }
                    recorder.record(t, None);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let totals = recorder.totals();
        assert_eq!(totals.deliveries, 4004);
        assert_eq!(totals.latency_us.len(), 4000);
        assert_eq!(totals.last_receipt_ns, 30_999);
        assert_eq!(recorder.last_receipt_ns(), 30_999);
        assert_eq!(totals.latency_us.max(), 1000);
        recorder.record(0, Some(u64::MAX));
        assert_eq!(
            recorder.totals().latency_us.max(),
            recorder.totals().latency_us.highest_equivalent(HIGHEST_US)
        );
    }
}
