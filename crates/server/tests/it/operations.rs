//! HTTP endpoints, the ingest API's errors, and graceful shutdown.

use serde_json::{Value, json};

use crate::support::{MASTER_KEY, TestServer, object};

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start("").await;
    let (status, body) = server.http("GET", "/health", None, None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["status"].as_str(),
            body["source"].as_str(),
            body["sourceConnected"].as_bool()
        ),
        (Some("ok"), Some("embedded"), Some(true))
    );
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({})).await;
    server.create(object("M", "o", json!({}))).await;
    client.recv().await;
    let text = server.metrics().await;
    for line in [
        "livequery_connections_open 1",
        "livequery_connections_accepted_total 1",
        "livequery_clients 1",
        "livequery_subscriptions 1",
        "livequery_events_in_total 1",
        "livequery_deliveries_total{op=\"create\"} 1",
        "livequery_source_connected 1",
        "# TYPE livequery_drops_total counter",
        "livequery_source_lag_seconds",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let (status, _) = server.http("GET", "/", None, None).await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn ingest_requires_the_master_key() {
    let server = TestServer::start("").await;
    let message = json!({"currentParseObject": object("M", "o", json!({}))});
    for key in [None, Some("wrong")] {
        let (status, body) = server
            .http(
                "POST",
                "/livequery/v1/publish/afterSave",
                Some(&message),
                key,
            )
            .await
            .unwrap();
        assert_eq!(status, 401, "{body}");
    }
    let (status, body) = server
        .http(
            "POST",
            "/livequery/v1/publish/afterSave",
            Some(&message),
            Some(MASTER_KEY),
        )
        .await
        .unwrap();
    assert_eq!((status, body), (202, json!({"accepted": 1})));
}

#[tokio::test]
async fn ingest_rejects_bad_requests_clearly() {
    let server = TestServer::start("[limits]\nmax_ingest_bytes = 2048").await;
    let post = |path: &'static str, body: Value| {
        let server = &server;
        async move {
            server
                .http("POST", path, Some(&body), Some(MASTER_KEY))
                .await
                .unwrap()
        }
    };
    let (status, body) = post("/livequery/v1/publish/afterSave", json!({"nope": 1})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("currentParseObject"),
        "{body}"
    );
    let (status, body) = post(
        "/livequery/v1/publish/afterSave",
        json!([{"currentParseObject": object("M", "a", json!({}))}, {"currentParseObject": {"className": "M"}}]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("message 1:"),
        "{body}"
    );
    let (status, _) = post("/livequery/v1/publish/beforeSave", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = post("/livequery/v1/publish/clearCache", json!({"user": "x"})).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        "/livequery/v1/publish/afterSave",
        json!({"currentParseObject": object("M", "a", json!({"big": "x".repeat(4096)}))}),
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = server
        .http(
            "PUT",
            "/livequery/v1/sessions/t",
            Some(&json!({"roles": ["a"]})),
            Some(MASTER_KEY),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    // Nothing was published by the rejected batch (validated before publishing).
    assert_eq!(server.metric("livequery_events_in_total").await, 0.0);
}

#[tokio::test]
async fn graceful_shutdown_closes_every_socket_with_1001() {
    let server = TestServer::start("").await;
    let mut a = server.connected(None).await;
    let mut b = server.connected(None).await;
    a.subscribe(1, "M", json!({})).await;
    let addr = server.addr;
    let shutdown = server.shutdown.clone();
    let stopping = tokio::spawn(server.stop());
    // Both clients get a close with 1001 and can answer it; the server then exits.
    assert_eq!(a.closed().await, Some(1001));
    assert_eq!(b.closed().await, Some(1001));
    drop((a, b));
    tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .expect("server stopped")
        .unwrap();
    assert!(shutdown.is_cancelled());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
