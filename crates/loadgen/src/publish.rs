//! The open-loop publisher: PUBLISHes the events to Redis on their schedule.
//!
//! It runs on its own OS thread with a blocking Redis connection, so a busy receiving side
//! can never delay a publish. Event i is due at t0 + i/P and carries that *scheduled* time as
//! `sentAt`: when the publisher falls behind, the delay shows up as latency instead of being
//! hidden (no coordinated omission). Everything due is sent in one pipeline of at most
//! [`BATCH`] PUBLISHes per round trip, packed here as RESP and written with one blocking
//! write: at the matching sweep's rates (100k+ events/s) the publisher shares its core with
//! Redis, and every microsecond it spends per event is one Redis cannot.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use redis::ConnectionLike as _;
use tokio::sync::oneshot;

use crate::procstat::Proc;
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
    /// CPU time of the publisher's thread (packing and sending the pipelines), when readable:
    /// whether the generator could keep a rate is a question about this thread.
    pub(crate) cpu_seconds: Option<f64>,
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
                let mut con = match connect(&plan.redis_url) {
                    Ok(con) => con,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if go_rx.blocking_recv().is_err() {
                    return;
                }
                let _ = done_tx.send(publish(&plan, &mut con));
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

/// A blocking connection: the publisher thread does nothing else, and a blocking write of a
/// whole pipeline is the cheapest way to hand it to Redis.
fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .with_context(|| format!("connecting to {url}"))?;
    con.set_read_timeout(Some(Duration::from_secs(60)))?;
    redis::cmd("PING")
        .query::<String>(&mut con)
        .context("PING")?;
    Ok(con)
}

/// Appends `PUBLISH channel payload` to `out` in RESP, the form Redis reads (the redis
/// crate's `Cmd` would copy each payload twice and allocate per command).
fn pack_publish(out: &mut Vec<u8>, channel: &[u8], payload: &[u8]) {
    fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "${}\r\n", bytes.len());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
    bulk(out, channel);
    bulk(out, payload);
}

fn publish(plan: &Plan, con: &mut redis::Connection) -> anyhow::Result<Outcome> {
    let total = plan.workload.events;
    let start_ns = now_ns();
    let t0 = Instant::now();
    let mut max_lag = Duration::ZERO;
    let mut unheard = 0u64;
    let mut i = 0u64;
    let mut payload = String::with_capacity(plan.workload.object_bytes + 512);
    let mut pipeline = Vec::with_capacity(BATCH as usize * (plan.workload.object_bytes + 600));
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
        pipeline.clear();
        for e in i..i + n {
            let sent_at = if plan.rate > 0.0 {
                start_ns + due(e).as_nanos() as u64
            } else {
                batch_ns
            };
            payload.clear();
            plan.workload.encode_event(e, sent_at, &mut payload);
            pack_publish(&mut pipeline, plan.channel.as_bytes(), payload.as_bytes());
        }
        // Each PUBLISH answers how many subscribers got the message: 0 means the server was
        // not subscribed (a wrong --app-id, or its Redis connection was down).
        let receivers = con
            .req_packed_commands(&pipeline, 0, n as usize)
            .with_context(|| format!("publishing events {i}..{}", i + n))?;
        for receiver in receivers {
            match receiver {
                redis::Value::Int(0) => unheard += 1,
                redis::Value::Int(_) => {}
                other => return Err(anyhow!("PUBLISH answered {other:?}")),
            }
        }
        i += n;
    }
    Ok(Outcome {
        published: i,
        start_ns,
        elapsed: t0.elapsed(),
        max_lag,
        unheard,
        cpu_seconds: Proc::ThisThread.cpu_seconds(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_publish_is_the_resp_the_redis_crate_writes() {
        let payload = "{\"currentParseObject\":{\"é\":\"x\\r\\n\"}}";
        let mut ours = Vec::new();
        pack_publish(&mut ours, b"app1LQBench", payload.as_bytes());
        pack_publish(&mut ours, b"c", b"");
        let mut theirs = redis::cmd("PUBLISH")
            .arg("app1LQBench")
            .arg(payload)
            .get_packed_command();
        theirs.extend(redis::cmd("PUBLISH").arg("c").arg("").get_packed_command());
        assert_eq!(ours, theirs);
    }
}
