//! A failing auth backend never grants access, and is retried at a bounded pace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use livequery_server::Components;
use livequery_server::identity::{IdentityProvider, LookupError, ResolvedUser};
use livequery_server::source::embedded::EmbeddedSource;
use serde_json::{Value, json};

use crate::support::{TestServer, object};

/// Resolves `r:u` to user `u` while `up`, fails while down; counts lookups.
#[derive(Debug, Default)]
struct FlakyBackend {
    up: AtomicBool,
    lookups: AtomicUsize,
}

#[async_trait]
impl IdentityProvider for FlakyBackend {
    async fn resolve_session(&self, token: &str) -> Result<Option<ResolvedUser>, LookupError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if !self.up.load(Ordering::SeqCst) {
            return Err(LookupError("parse-server is down".into()));
        }
        Ok((token == "r:u").then(|| ResolvedUser {
            user_id: "u".into(),
            roles: vec![],
        }))
    }

    async fn class_permissions(&self, _class_name: &str) -> Result<Option<Value>, LookupError> {
        Ok(None)
    }
}

#[tokio::test]
async fn a_failing_backend_never_grants_access_and_is_not_hammered() {
    let backend = Arc::new(FlakyBackend::default());
    let embedded = Arc::new(EmbeddedSource::new(Arc::new(
        livequery_server::identity::memory::MemoryIdentities::new(),
    )));
    let components = Components {
        source: embedded.clone(),
        identities: backend.clone(),
        reader: None,
        embedded: Some(embedded),
        subqueries: None,
        readiness: Default::default(),
    };
    let server =
        TestServer::start_components("[auth]\ncache_timeout = \"1s\"", components, true).await;
    let mut client = server.connected(Some("r:u")).await;
    client.subscribe(1, "M", json!({})).await;
    server
        .create(object(
            "M",
            "private",
            json!({"ACL": {"u": {"read": true}}}),
        ))
        .await;
    server.create(object("M", "public", json!({}))).await;
    assert_eq!(
        client.recv().await["object"]["objectId"],
        "public",
        "a failed lookup reads as anonymous"
    );
    assert!(server.metric("livequery_auth_lookup_failures_total").await >= 1.0);

    // Ten (virtual) seconds of outage: retries back off from half cache_timeout to
    // cache_timeout, never a tight loop. Time is paused only here, where no frame is awaited
    // (frames come from dispatcher threads, which paused time does not wait for).
    let before = backend.lookups.load(Ordering::SeqCst);
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(10)).await;
    tokio::time::resume();
    let retries = backend.lookups.load(Ordering::SeqCst) - before;
    eprintln!("{retries} lookups in 10 s of outage");
    assert!((5..=50).contains(&retries), "{retries} lookups in 10 s");

    // The backend recovers: the identity is restored without any client action, within
    // cache_timeout (the longest back-off) and a refresh tick.
    backend.up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    server
        .create(object(
            "M",
            "private2",
            json!({"ACL": {"u": {"read": true}}}),
        ))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "private2");
}
