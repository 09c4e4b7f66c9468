//! The open-loop publisher: PUBLISHes the events to Redis on their schedule.
//!
//! It runs on its own OS thread with a current-thread runtime, so a busy receiving side can
//! never delay a publish. Event i is due at t0 + i/P and carries that *scheduled* time as
//! `sentAt`: when the publisher falls behind, the delay shows up as latency instead of being
//! hidden (no coordinated omission). Everything due is sent in one pipeline of at most
//! [`BATCH`] PUBLISHes per round trip.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use tokio::sync::oneshot;

use crate::workload::Workload;

/// Most PUBLISH commands per pipeline round trip.
const BATCH: u64 = 256;

/// What to publish.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) redis_url: String,
    pub(crate) channel: String,
    pub(crate) workload: Workload,
    /// Events per second; 0 = as fast as possible.
    pub(crate) rate: f64,
}

/// How publishing went.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) published: u64,
    /// When publishing started (t0), in ns since the epoch.
    pub(crate) start_ns: u64,
    /// Wall time from t0 to the acknowledgement of the last pipeline.
    pub(crate) elapsed: Duration,
    /// Longest delay between an event's due time and its pipeline being sent.
    pub(crate) max_lag: Duration,
    /// Events that Redis delivered to no subscriber at all.
    pub(crate) unheard: u64,
}

/// A publisher connected to Redis and waiting for [`Publisher::run`].
#[derive(Debug)]
pub(crate) struct Publisher {
    go: oneshot::Sender<()>,
    done: oneshot::Receiver<anyhow::Result<Outcome>>,
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Publisher {
    /// Starts the thread and waits until its Redis connection answers PING.
    pub(crate) async fn connect(plan: Plan) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("lq-publisher".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!(e).context("publisher runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut con = match connect(&plan.redis_url).await {
                        Ok(con) => con,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    if go_rx.await.is_err() {
                        return;
                    }
                    let _ = done_tx.send(publish(&plan, &mut con).await);
                });
            })
            .context("spawning the publisher thread")?;
        ready_rx
            .await
            .context("the publisher thread died")?
            .context("cannot connect to Redis")?;
        Ok(Self { go, done })
    }

    /// Publishes every event; returns once the last pipeline is acknowledged.
    pub(crate) async fn run(self) -> anyhow::Result<Outcome> {
        self.go
            .send(())
            .map_err(|()| anyhow!("the publisher thread died"))?;
        self.done.await.context("the publisher thread died")?
    }
}

async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .context("PING")?;
    Ok(con)
}

async fn publish(
    plan: &Plan,
    con: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Outcome> {
    let total = plan.workload.events;
    let start_ns = now_ns();
    let t0 = Instant::now();
    let mut max_lag = Duration::ZERO;
    let mut unheard = 0u64;
    let mut i = 0u64;
    let mut payload = String::with_capacity(plan.workload.object_bytes + 512);
    let interval_ns = if plan.rate > 0.0 {
        1e9 / plan.rate
    } else {
        0.0
    };
    // Offset of event i's due time from t0.
    let due = |i: u64| Duration::from_nanos((i as f64 * interval_ns) as u64);
    while i < total {
        let n = if plan.rate > 0.0 {
            let elapsed = t0.elapsed();
            let due_i = due(i);
            if due_i > elapsed {
                // A blocking sleep is precise to tens of µs (tokio timers: 1 ms), and nothing
                // else runs on this thread between pipelines.
                std::thread::sleep(due_i - elapsed);
                continue;
            }
            max_lag = max_lag.max(elapsed - due_i);
            let due_now = (elapsed.as_nanos() as f64 / interval_ns) as u64 + 1;
            due_now.saturating_sub(i).clamp(1, BATCH).min(total - i)
        } else {
            BATCH.min(total - i)
        };
        let batch_ns = now_ns();
        let mut pipe = redis::pipe();
        for e in i..i + n {
            let sent_at = if plan.rate > 0.0 {
                start_ns + due(e).as_nanos() as u64
            } else {
                batch_ns
            };
            payload.clear();
            plan.workload.encode_event(e, sent_at, &mut payload);
            pipe.cmd("PUBLISH").arg(&plan.channel).arg(payload.as_str());
        }
        // Each PUBLISH answers how many subscribers got the message: 0 means the server was
        // not subscribed (a wrong --app-id, or its Redis connection was down).
        let receivers: Vec<u64> = pipe
            .query_async(con)
            .await
            .with_context(|| format!("publishing events {i}..{}", i + n))?;
        unheard += receivers.iter().filter(|&&r| r == 0).count() as u64;
        i += n;
    }
    Ok(Outcome {
        published: i,
        start_ns,
        elapsed: t0.elapsed(),
        max_lag,
        unheard,
    })
}
