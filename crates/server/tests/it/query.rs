//! The `query` op (Parse JS SDK 8's `subscription.find()`).

use std::sync::Arc;

use async_trait::async_trait;
use livequery_server::backend::ObjectReader;
use serde_json::{Map, Value, json};

use crate::support::{TestServer, object};

/// Reads from a fixed list, like a database would (it may return more than matches; the
/// server re-checks).
struct FixedReader(Vec<Value>);

#[async_trait]
impl ObjectReader for FixedReader {
    async fn find(
        &self,
        class_name: &str,
        _where: &Map<String, Value>,
        _query: &livequery_matcher::Query,
        limit: usize,
    ) -> anyhow::Result<Vec<Map<String, Value>>> {
        Ok(self
            .0
            .iter()
            .filter(|o| o["className"] == class_name)
            .filter_map(|o| o.as_object().cloned())
            .take(limit)
            .collect())
    }
}

#[tokio::test]
async fn query_returns_current_matches_filtered_for_the_subscriber() {
    let objects = vec![
        object(
            "M",
            "public",
            json!({"room": "r", "text": "hello", "secret": "s"}),
        ),
        object(
            "M",
            "private",
            json!({"room": "r", "ACL": {"someoneElse": {"read": true}}}),
        ),
        object("M", "elsewhere", json!({"room": "other"})),
        object("Other", "x", json!({"room": "r"})),
    ];
    let server = TestServer::start_with("", Some(Arc::new(FixedReader(objects)))).await;
    server
        .schema(
            "M",
            json!({"find": {"*": true}, "protectedFields": {"*": ["secret"]}}),
        )
        .await;
    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "a", "installationId": "i"}))
        .await;
    let client_id = client.recv().await["clientId"].clone();
    client
        .subscribe_with(json!({"op": "subscribe", "requestId": 4, "query": {"className": "M", "where": {"room": "r"}, "keys": ["text", "secret"]}}))
        .await;
    client.send(json!({"op": "query", "requestId": 4})).await;
    let result = client.recv().await;
    assert_eq!(
        result,
        json!({"op": "result", "clientId": client_id, "installationId": "i", "requestId": 4, "results": [{
            "text": "hello", "createdAt": "2026-11-22T08:49:51.247Z", "updatedAt": "2026-11-22T08:49:51.247Z",
            "className": "M", "objectId": "public"
        }]})
    );
}

#[tokio::test]
async fn query_needs_a_reader_and_a_known_subscription() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "a"}))
        .await;
    let client_id = client.recv().await["clientId"].as_str().unwrap().to_owned();
    client.send(json!({"op": "query", "requestId": 9})).await;
    let text = format!(
        "Cannot find subscription with clientId {client_id} subscriptionId 9. Make sure you subscribe to live query server before querying."
    );
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": text, "code": 2, "reconnect": true, "requestId": null})
    );
    client.subscribe(9, "M", json!({})).await;
    client.send(json!({"op": "query", "requestId": 9})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "The configured source cannot read current objects", "code": 108, "reconnect": false, "requestId": 9})
    );
}
