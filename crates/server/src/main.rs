//! `livequery`: the server binary.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use livequery_server::config::Config;
use tokio_util::sync::CancellationToken;

/// A Parse LiveQuery-compatible WebSocket server.
#[derive(Debug, Parser)]
#[command(name = "livequery", version, about)]
struct Args {
    /// A TOML file layered over the defaults (then LIVEQUERY__SECTION__KEY variables).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() {
    if let Err(err) = run() {
        eprintln!("livequery: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?;
    if args.check_config {
        print!("{}", config.to_redacted_toml());
        return Ok(());
    }
    livequery_server::telemetry::init(&config)?;
    if config.master_key.is_empty() {
        // Never shown: a key in the logs is a key for anyone who reads them. Without a key of
        // the operator's own the ingest API is closed (and, on a non-loopback address, the
        // configuration is refused).
        config.master_key = uuid::Uuid::new_v4().simple().to_string();
        if config.source == livequery_server::config::SourceKind::Embedded {
            tracing::warn!(
                "parse.master_key is not set: the ingest API (/livequery/v1/...) accepts no request; set LIVEQUERY__PARSE__MASTER_KEY to use it"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("livequery-io")
        .build()?;
    runtime
        .block_on(async move {
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            livequery_server::run(Arc::new(config), shutdown).await
        })
        .context("server failed")
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
