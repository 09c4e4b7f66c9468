//! Dispatcher workers: dedicated threads that take events from their shard's bounded queue
//! and run [`Hub::dispatch`].
//!
//! Matching and encoding are CPU-bound; running them on their own threads keeps the async
//! runtime free for socket I/O, and the OS spreads both over the cores. Events are sharded
//! by object (see `source::shard_of`), so one object's events are dispatched in order.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{DispatchScratch, Hub};
use crate::metrics::Metrics;
use crate::source::ChangeEvent;

/// What a dispatcher worker takes from its queue.
// Events are nearly every job: boxing them would cost an allocation each, for rare barriers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Job {
    /// An event to dispatch.
    Event(ChangeEvent),
    /// Answered once every job queued before it was dispatched.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The running workers.
#[derive(Debug)]
pub struct Dispatcher {
    threads: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts `workers` threads sharing `queue` slots; returns the shard senders.
    pub fn start(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        workers: usize,
        queue: usize,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) -> std::io::Result<(Arc<[mpsc::Sender<Job>]>, Self)> {
        let workers = workers.max(1);
        let per_shard = (queue / workers).max(1);
        let mut senders = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (tx, mut rx) = mpsc::channel::<Job>(per_shard);
            senders.push(tx);
            let hub = hub.clone();
            let metrics = metrics.clone();
            let runtime = runtime.clone();
            let shutdown = shutdown.clone();
            let thread = std::thread::Builder::new()
                .name(format!("livequery-dispatch-{worker}"))
                .spawn(move || {
                    let mut scratch = DispatchScratch::default();
                    // `block_on` only parks this thread between events; the dispatch itself is
                    // synchronous and never touches the runtime's worker threads.
                    runtime.block_on(async {
                        loop {
                            let job = tokio::select! {
                                biased;
                                () = shutdown.cancelled() => return,
                                job = rx.recv() => match job {
                                    Some(job) => job,
                                    None => return,
                                },
                            };
                            let event = match job {
                                Job::Event(event) => event,
                                Job::Barrier(done) => {
                                    let _ = done.send(());
                                    continue;
                                }
                            };
                            let lag = event.received.elapsed();
                            metrics
                                .source_lag_ms
                                .store(u64::try_from(lag.as_millis()).unwrap_or(u64::MAX), Relaxed);
                            hub.dispatch(&event, &mut scratch);
                        }
                    });
                })?;
            threads.push(thread);
        }
        Ok((senders.into(), Self { threads }))
    }

    /// Waits for the workers to stop (after shutdown was signalled).
    pub fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a dispatcher thread panicked");
            }
        }
    }
}
