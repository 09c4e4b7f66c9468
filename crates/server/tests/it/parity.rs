//! Parity with parse-server's LiveQuery server where it defines the behaviour, and with
//! Parse REST `find()` where livequery follows REST (`protocol-spec/deviations.md`): the
//! handshake's subprotocol, empty and too-deep frames, the dates of event objects, the
//! fallback of an invalid subscription token, and the matcher's REST semantics over the
//! wire.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{Client, FRAME_TIMEOUT, TestServer, object};

/// Opens a WebSocket offering `protocols` (one `Sec-WebSocket-Protocol` header line);
/// returns the client and the subprotocol the server selected.
async fn open_offering(server: &TestServer, protocols: &str) -> (Client, Option<String>) {
    let mut request = format!("ws://{}/", server.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).expect("header"),
    );
    let stream = TcpStream::connect(server.addr).await.expect("tcp connect");
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket handshake");
    let selected = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (Client { ws }, selected)
}

#[tokio::test]
async fn the_first_offered_subprotocol_is_selected() {
    let server = TestServer::start("").await;
    for (offered, selected) in [("x, y", "x"), ("graphql-ws", "graphql-ws"), ("a,b", "a")] {
        let (mut client, got) = open_offering(&server, offered).await;
        assert_eq!(got.as_deref(), Some(selected), "{offered}");
        // The connection then speaks the protocol as usual.
        client
            .send(json!({"op": "connect", "applicationId": "test"}))
            .await;
        assert_eq!(client.recv().await["op"], "connected");
    }
    // Without an offer, none is selected.
    let mut request = format!("ws://{}/", server.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().remove("Sec-WebSocket-Protocol");
    let stream = TcpStream::connect(server.addr).await.expect("tcp connect");
    let (_, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake");
    assert!(response.headers().get("Sec-WebSocket-Protocol").is_none());
}

#[tokio::test]
async fn an_invalid_subprotocol_header_is_refused() {
    let server = TestServer::start("").await;
    for header in ["x, x", "x,,y", "a b", "a/b"] {
        let mut request = format!("ws://{}/", server.addr)
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(header).expect("header"),
        );
        let stream = TcpStream::connect(server.addr).await.expect("tcp connect");
        match tokio_tungstenite::client_async(request, stream).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{header}");
            }
            other => panic!("{header}: expected HTTP 400, got {other:?}"),
        }
    }
    // Refusals do not hold connection slots.
    server.connected(None).await;
}

#[tokio::test]
async fn an_empty_frame_gets_the_reference_error() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client.send_text("").await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Missing required property: op", "code": 1, "reconnect": true, "requestId": null})
    );
    // Still usable.
    client
        .send(json!({"op": "connect", "applicationId": "test"}))
        .await;
    assert_eq!(client.recv().await["op"], "connected");
}

/// `{"$or": [ … ]}` nested `depth` times around `{"a": 1}`.
fn nested_or(depth: usize) -> Value {
    (0..depth).fold(json!({"a": 1}), |inner, _| json!({"$or": [inner]}))
}

/// The text of a subscribe whose `where` is `depth` levels of `$or` (built as text: a
/// `serde_json::Value` that deep could not be serialized by the test either).
fn deep_subscribe(request_id: u32, depth: usize) -> String {
    format!(
        r#"{{"op":"subscribe","requestId":{request_id},"query":{{"className":"M","where":{}{{"a":1}}{}}}}}"#,
        r#"{"$or":["#.repeat(depth),
        "]}".repeat(depth)
    )
}

#[tokio::test]
async fn a_where_nested_1000_levels_deep_gets_an_error() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.send_text(&deep_subscribe(1, 1000)).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Query nested too deeply: JSON deeper than 127 levels", "code": 102, "reconnect": false, "requestId": 1})
    );
    // Under the parser's limit, `limits.max_query_depth` (16 by default) decides.
    client
        .send(json!({"op": "subscribe", "requestId": 2, "query": {"className": "M", "where": nested_or(40)}}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Query condition nesting depth exceeds maximum allowed depth of 16", "code": 102, "reconnect": false, "requestId": 2})
    );
    // A too-deep frame of any other kind: code 1, requestId null.
    let deep_connect = format!(
        r#"{{"op":"connect","applicationId":"test","x":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    client.send_text(&deep_connect).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Frame nested too deeply: JSON deeper than 127 levels", "code": 1, "reconnect": true, "requestId": null})
    );
    // The connection still serves.
    client.subscribe(3, "M", nested_or(3)).await;
    server.create(object("M", "o", json!({"a": 1}))).await;
    assert_eq!(client.recv().await["op"], "create");
}

#[tokio::test]
async fn event_dates_are_re_encoded_like_the_reference() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({})).await;
    // No updatedAt, a createdAt without milliseconds, dates with offsets and fractions.
    server
        .create(json!({
            "className": "M", "objectId": "o",
            "createdAt": "2024-01-02T03:04:05Z",
            "when": {"__type": "Date", "iso": "2024-01-02T05:04:05.5+02:00"},
            "list": [{"__type": "Date", "iso": "2024-01-02"}],
            "text": "2024-01-02T03:04:05Z"
        }))
        .await;
    let event = client.recv().await;
    assert_eq!(
        event["object"],
        json!({
            "className": "M", "objectId": "o",
            "createdAt": "2024-01-02T03:04:05.000Z",
            "updatedAt": "2024-01-02T03:04:05.000Z",
            "when": {"__type": "Date", "iso": "2024-01-02T03:04:05.500Z"},
            "list": [{"__type": "Date", "iso": "2024-01-02T00:00:00.000Z"}],
            "text": "2024-01-02T03:04:05Z"
        })
    );
    // Originals too; an offset createdAt is brought to UTC.
    server
        .update(
            json!({"className": "M", "objectId": "o", "createdAt": "2024-01-02T04:04:05+01:00", "n": 1}),
            json!({"className": "M", "objectId": "o", "createdAt": "2024-01-02T04:04:05+01:00", "updatedAt": "2024-01-03T00:00:00.1Z", "n": 2}),
        )
        .await;
    let event = client.recv().await;
    assert_eq!(event["op"], "update");
    assert_eq!(event["object"]["createdAt"], "2024-01-02T03:04:05.000Z");
    assert_eq!(event["object"]["updatedAt"], "2024-01-03T00:00:00.100Z");
    assert_eq!(event["original"]["updatedAt"], "2024-01-02T03:04:05.000Z");
}

#[tokio::test]
async fn an_invalid_subscription_token_falls_back_to_the_connect_token() {
    let server = TestServer::start("").await;
    server.session("r:alice", "alice", &[]).await;
    let mut client = server.connected(Some("r:alice")).await;
    client
        .subscribe_with(json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {}}, "sessionToken": "r:unknown"}))
        .await;
    server
        .create(object(
            "M",
            "alices",
            json!({"ACL": {"alice": {"read": true}}}),
        ))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "alices");
}

#[tokio::test]
async fn logical_operators_name_what_is_wrong() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    for (request_id, where_, message) in [
        (
            1,
            json!({"$or": [null]}),
            "$or entries must be objects (query clauses), found null",
        ),
        (
            2,
            json!({"$or": [1]}),
            "$or entries must be objects (query clauses), found a number",
        ),
        (3, json!({"$and": []}), "$and must be a non-empty array"),
        (4, json!({"$nor": {"a": 1}}), "$nor must be an array"),
    ] {
        client
            .send(json!({"op": "subscribe", "requestId": request_id, "query": {"className": "M", "where": where_}}))
            .await;
        assert_eq!(
            client.recv().await,
            json!({"op": "error", "error": message, "code": 102, "reconnect": false, "requestId": request_id})
        );
    }
}

#[tokio::test]
async fn matching_follows_rest_over_the_wire() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    // `$in` flattens array items one level; a path into a GeoPoint designates nothing;
    // `$options: "u"` is accepted.
    client
        .subscribe(1, "M", json!({"n": {"$in": [[1, 2]]}}))
        .await;
    client
        .subscribe(2, "M", json!({"loc.latitude": {"$gt": 5}}))
        .await;
    client
        .subscribe(3, "M", json!({"name": {"$regex": "^é", "$options": "iu"}}))
        .await;
    server
        .create(object(
            "M",
            "o",
            json!({"n": 2, "loc": {"__type": "GeoPoint", "latitude": 10, "longitude": 20}, "name": "Écru"}),
        ))
        .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = client.recv().await;
        seen.push(event["requestId"].as_u64().expect("requestId"));
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 3]);
    // Nothing for subscription 2: the next frame is the sentinel's.
    client.subscribe(4, "S", json!({})).await;
    server.create(object("S", "sentinel", json!({}))).await;
    let next = tokio::time::timeout(FRAME_TIMEOUT, client.ws.next())
        .await
        .expect("a frame")
        .expect("open")
        .expect("frame");
    let next: Value = serde_json::from_str(next.to_text().expect("text")).expect("json");
    assert_eq!(next["requestId"], 4, "{next}");
}
