//! What every task of a running server shares: configuration, metrics, the hub, the
//! identity cache, the optional backends, and the shutdown signal.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{ObjectReader, SubqueryResolver};
use crate::capacity::Capacity;
use crate::config::Config;
use crate::drain::Drain;
use crate::hooks::Hooks;
use crate::hub::Hub;
use crate::identity::IdentityCache;
use crate::metrics::Metrics;
use crate::ping::PingClock;
use crate::readiness::Readiness;
use crate::source::embedded::EmbeddedSource;

/// Shared state of a running server.
pub struct ServerState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The subscription registry and fan-out.
    pub hub: Arc<Hub>,
    /// Cloud Code LiveQuery hooks.
    pub hooks: Arc<Hooks>,
    /// Identities and class permissions.
    pub identities: Arc<IdentityCache>,
    /// Reads current objects for the `query` op, when the deployment can.
    pub reader: Option<Arc<dyn ObjectReader>>,
    /// The embedded source's HTTP ingest, when it is the source.
    pub embedded: Option<Arc<EmbeddedSource>>,
    /// Resolves subqueries, when the source can.
    pub subqueries: Option<Arc<dyn SubqueryResolver>>,
    /// Problems that make this node unready, and the drain flag (`/readyz`).
    pub readiness: Arc<Readiness>,
    /// The source's name (for `/health`).
    pub source_name: &'static str,
    /// Cancelled when the server stops (after a graceful drain, or at once on a fault).
    pub shutdown: CancellationToken,
    /// The graceful drain's waves: each connection closes when its wave's token is cancelled.
    pub drain: Arc<Drain>,
    /// Tells the connections when to ping.
    pub pings: Arc<PingClock>,
    /// Every connection task.
    pub tracker: TaskTracker,
    /// Connection pools of the ports.
    pub capacity: Capacity,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("source", &self.source_name)
            .finish_non_exhaustive()
    }
}
