//! `lq-loadgen`: a load generator and correctness oracle for Parse LiveQuery servers.
//!
//! It drives either livequery or parse-server's own Node LiveQuery server with
//! byte-identical input: both read parse-server's Redis channels, and this generator
//! publishes to them exactly what parse-server would publish for the creation of new
//! objects. Its C WebSocket clients subscribe with a deterministic family of queries, so
//! which events each subscription must receive is a pure function of the indexes (no
//! coordination between publisher and receivers, and no dependency on the server's own
//! matcher: the oracle is independent of the code under test).
//!
//! Modules:
//! - [`cli`]: flags (a contract with the benchmark scripts) and their validation; the
//!   127.0.0.0/8-only rule is in [`target`].
//! - [`workload`]: rooms, queries, and the exact Redis payloads.
//! - [`conn`]: one task per connection: setup, then receive and judge frames.
//! - [`wsclient`]: the connection's WebSocket client after the upgrade: reads into a buffer
//!   shared by the thread's connections and hands messages over in place.
//! - [`scan`]: finds `op`, `requestId`, `seq`, `sentAt`, `room` in a frame without parsing it.
//! - [`oracle`]: per-subscription expectations and the sliding-bitmap duplicate check.
//! - [`stats`]: per-thread latency histograms and delivery counters.
//! - [`publish`]: the open-loop publisher on its own thread.
//! - [`procstat`]: RSS, PSS and CPU time from /proc.
//! - [`run`]: the phases; [`report`]: the JSON report.
//! - [`ceiling`] (`lq-loadgen ceiling`): the loopback ceiling writer, a minimal broadcast
//!   server that the same runs measure to give the physical limit of the machine.
//! - [`wsframe`]: WebSocket framing, for both the ceiling writer and the client.
//!
//! Invariants: latency is receipt time − *scheduled* publish time (coordinated-omission
//! safe); the generator holds one file descriptor per connection plus about ten; per
//! connection it keeps the start of a frame a read cut (usually nothing) and ~100 bytes per
//! subscription.

mod ceiling;
mod cli;
mod conn;
mod oracle;
mod procstat;
mod publish;
mod report;
mod run;
mod scan;
mod stats;
mod target;
mod workload;
mod wsclient;
mod wsframe;

use anyhow::Context;
use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let args = match cli.command {
        cli::Command::Run(args) => args,
        cli::Command::Ceiling(args) => {
            init_tracing();
            if let Err(err) = ceiling::execute(args) {
                eprintln!("lq-loadgen ceiling: {err:#}");
                std::process::exit(1);
            }
            return;
        }
    };
    let config = match args.validate() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("lq-loadgen: {err:#}");
            std::process::exit(2);
        }
    };
    init_tracing();
    if let Err(err) = execute(config) {
        eprintln!("lq-loadgen: {err:#}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The generator allocates in bursts (tens of thousands of handshakes at once): glibc's
/// per-thread arena grew in page steps there, an `mprotect` each; mimalloc costs ~10 % less
/// of the generator's CPU in a 19,600-connection set-up, which the generator bounds. Built
/// without transparent huge pages (`no_thp`): with them, memory freed and taken again during
/// set-up came back as fresh 2 MB pages to zero, a quarter of the generator's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn execute(config: cli::Config) -> anyhow::Result<()> {
    cli::check_fd_limit(config.connections)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .thread_name("lq-receiver")
        .enable_all()
        .build()?;
    // The coordinator runs on a worker, not on this thread: every connection's setup report
    // would otherwise wake this thread (a futex and a context switch per connection).
    let report = runtime.block_on(async {
        tokio::spawn(run::run(config))
            .await
            .context("the coordinator panicked")?
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
