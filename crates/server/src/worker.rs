//! The dispatch workers: each takes events from its shard's bounded queue, hands them to
//! [`Hub::fan_out`], and writes the frames they queued to the clients' sockets itself
//! ([`WritePass`]), looking at its queue again between writes (see `WRITES_PER_LOOK`).
//!
//! Matching and encoding are CPU-bound; with several workers each runs on a thread of its
//! own, which keeps the async runtime free for socket I/O while the OS spreads both over
//! the cores. Events are sharded by object (the ingest routes them), so one object's events
//! are dispatched in order.
//!
//! A single worker (one core) runs as a task on the runtime instead: handing each event to
//! another thread of the same core costs a thread wake-up and two context switches, more
//! than dispatching a typical event, and made latency grow with load.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::ChangeEvent;
use crate::hub::{FanOutScratch, Hub};
use crate::metrics::Metrics;
use crate::outbox::WritePass;

/// What a dispatch worker takes from its queue.
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
pub struct Workers {
    /// One thread per worker when there are several.
    threads: Vec<JoinHandle<()>>,
    /// The single worker's task on the runtime, when there is one worker.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Workers {
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
        if workers == 1 {
            let (tx, rx) = mpsc::channel::<Job>(per_shard);
            let task = runtime.spawn(worker_loop(hub, metrics, rx, shutdown, true));
            return Ok((
                vec![tx].into(),
                Self {
                    threads: Vec::new(),
                    task: Some(task),
                },
            ));
        }
        let mut senders = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (tx, rx) = mpsc::channel::<Job>(per_shard);
            senders.push(tx);
            let hub = hub.clone();
            let metrics = metrics.clone();
            let runtime = runtime.clone();
            let shutdown = shutdown.clone();
            let thread = std::thread::Builder::new()
                .name(format!("livequery-dispatch-{worker}"))
                .spawn(move || {
                    // `block_on` only parks this thread between events; the dispatch itself is
                    // synchronous and never touches the runtime's worker threads.
                    runtime.block_on(worker_loop(hub, metrics, rx, shutdown, false));
                })?;
            threads.push(thread);
        }
        Ok((
            senders.into(),
            Self {
                threads,
                task: None,
            },
        ))
    }

    /// Waits for the workers to stop (after shutdown was signalled).
    pub async fn join(self) {
        if let Some(task) = self.task
            && task.await.is_err()
        {
            tracing::error!("the dispatch worker task panicked");
        }
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a dispatch worker thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("joining the dispatch worker threads failed");
        }
    }
}

/// Jobs taken from the queue at once: beyond the queue's own bound, at most this many are
/// held by a worker.
const BATCH: usize = 64;

/// Sockets a worker writes at least between two looks at its queue; more when the look
/// queued more frames (one write per
/// [`FRAMES_PER_WRITE`](crate::outbox::FRAMES_PER_WRITE) of them), so that queues stay
/// short under a heavy fan-out.
///
/// A worker writes the frames it queued itself, connection after connection, one vectored
/// write each ([`WritePass`]). The kernel's cost of a write (most of the server's CPU at a
/// steady rate: the loopback send and the receiver's wake-up) is paid per write, not per
/// frame; an event that comes in while a pass is under way is fanned out at the next look,
/// and its frames join the queues not yet written: one write carries both. So a backlog is
/// written several events per write, and an event waits about one pass (a write per
/// connection it concerns) whatever the rate. On the runtime the worker yields at each
/// look, so the source's reader (and every other task) runs between two of them.
const WRITES_PER_LOOK: usize = 64;

/// How long a worker keeps fanning out a backlog (events already waiting in its queue)
/// before its next writes: long enough that each write carries a good part of it, short
/// enough that a look stays a small part of a pass. Measured (one core, 1,000 connections,
/// bursts): with one batch of at most 64 events per look, 1 % selectivity delivered 589k/s
/// (the previous dispatch, queueing a 20 ms slice for the connection tasks: 703k/s); with
/// 2 ms of fan-out per look, 774–780k/s, and a broadcast burst 2.01 M/s (1.93 M/s).
const BACKLOG_LOOK: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a worker on the runtime dispatches a backlog that queues nothing to write (it
/// concerns nobody) before it lets the other tasks run.
const SLICE: std::time::Duration = std::time::Duration::from_millis(20);

/// One worker: dispatches its queue's jobs in order until shutdown, and writes what they
/// queued, at least [`WRITES_PER_LOOK`] sockets at a time; at each look it fans out what
/// came in meanwhile (a backlog for up to [`BACKLOG_LOOK`]).
async fn worker_loop(
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Job>,
    shutdown: CancellationToken,
    on_runtime: bool,
) {
    let mut scratch = FanOutScratch::default();
    // Dropped with writes still owed (at shutdown), it wakes their connection tasks.
    let mut pass = WritePass::default();
    let mut jobs = Vec::with_capacity(BATCH);
    let mut slice_start = Instant::now();
    loop {
        if pass.is_empty() {
            // One wake-up (and one look at the shutdown signal) per batch of queued jobs.
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                received = rx.recv_many(&mut jobs, BATCH) => received,
            };
            if received == 0 {
                return;
            }
        } else {
            if shutdown.is_cancelled() {
                return;
            }
            take_waiting(&mut rx, &mut jobs);
        }
        let look_start = Instant::now();
        loop {
            for job in jobs.drain(..) {
                let event = match job {
                    Job::Event(event) => event,
                    Job::Barrier(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let lag = Instant::now().saturating_duration_since(event.received);
                metrics
                    .dispatch_lag_ms
                    .store(u64::try_from(lag.as_millis()).unwrap_or(u64::MAX), Relaxed);
                hub.fan_out(&event, &mut scratch, &mut pass);
            }
            // A backlog is fanned out for a while before the next writes, so that they carry
            // more of it each.
            if rx.is_empty() || look_start.elapsed() >= BACKLOG_LOOK {
                break;
            }
            take_waiting(&mut rx, &mut jobs);
        }
        pass.write_next(WRITES_PER_LOOK, &metrics.delivery_latency);
        if on_runtime && (!pass.is_empty() || slice_start.elapsed() >= SLICE) {
            tokio::task::yield_now().await;
            slice_start = Instant::now();
        }
    }
}

/// Adds the jobs already waiting in `rx` to `jobs`, up to [`BATCH`], without waiting.
fn take_waiting(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < BATCH
        && let Ok(job) = rx.try_recv()
    {
        jobs.push(job);
    }
}
