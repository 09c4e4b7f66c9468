//! Limits: slow consumers, dead peers, connect timeout, sizes, connection and subscription
//! caps. Timeouts run on paused time where the test would otherwise wait for real.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Client, TestServer, object};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_without_hurting_others() {
    // The close handshake (error frame, close) waits at most `write_timeout` for the slow
    // client, which reads only after the healthy one got everything: generous, so that a
    // loaded machine cannot turn it into a cut-off without the error frame.
    let server =
        TestServer::start("[limits]\noutbound_queue_frames = 16\nwrite_timeout = \"120s\"").await;
    let mut slow = server.connected(None).await;
    let mut healthy = server.connected(None).await;
    slow.subscribe(1, "Big", json!({})).await;
    healthy.subscribe(1, "Big", json!({})).await;
    // ~25 MB of events: far more than the kernel buffers of an unread socket plus 16 frames.
    let payload = "x".repeat(64 * 1024);
    let (batches, per_batch) = (10, 40);
    let (progress, mut done) = tokio::sync::mpsc::channel::<usize>(1);
    let reader = tokio::spawn(async move {
        for batch in 0..batches {
            for i in 0..per_batch {
                let event = healthy.recv().await;
                assert_eq!(
                    event["object"]["n"],
                    batch * per_batch + i,
                    "the healthy client gets every event, in order: {}",
                    event["op"]
                );
            }
            progress.send(batch).await.unwrap();
        }
        healthy
    });
    for batch in 0..batches {
        let messages: Vec<Value> = (0..per_batch)
            .map(|i| {
                let n = batch * per_batch + i;
                json!({"currentParseObject": object("Big", &format!("o{n}"), json!({"n": n, "payload": payload}))})
            })
            .collect();
        server.publish("afterSave", json!(messages)).await;
        // The healthy client keeps up with the publisher; the slow one never reads.
        assert_eq!(done.recv().await, Some(batch));
    }
    let _healthy = reader.await.unwrap();
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"slow_consumer_queue\"}")
            .await,
        1.0
    );
    // The slow client now reads: events, then the error frame, then close 1008.
    let mut events = 0;
    let error = loop {
        let frame = slow
            .next_text()
            .await
            .expect("the error frame arrives before the close");
        if frame["op"] == "error" {
            break frame;
        }
        events += 1;
    };
    assert!(
        events < batches * per_batch,
        "the slow client cannot have received everything ({events})"
    );
    assert_eq!(
        error,
        json!({"op": "error", "error": "Client too slow: outbound queue overflow", "code": 155, "reconnect": true, "requestId": null})
    );
    assert_eq!(slow.closed().await, Some(1008));
}

/// Opens a WebSocket by hand and never reads frames, so pings are never answered.
async fn raw_socket(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_answers_pings_is_dropped() {
    let server = TestServer::start("[server]\nwebsocket_timeout = \"10s\"").await;
    let mut stream = raw_socket(&server).await;
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 256];
    // Read raw bytes (pings included) until the server drops the socket.
    while tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
        .await
        .expect("dropped within 60 s")
        .unwrap_or(0)
        > 0
    {}
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(20) && elapsed < Duration::from_secs(31),
        "dropped after {elapsed:?}"
    );
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"ping_timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_pings_stays() {
    let server = TestServer::start("[server]\nwebsocket_timeout = \"10s\"").await;
    let mut client = server.connected(None).await;
    // Reading answers pings; nothing else arrives for a long (virtual) time.
    assert!(
        tokio::time::timeout(Duration::from_secs(120), client.next_text())
            .await
            .is_err(),
        "still connected, no frames"
    );
    client
        .send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {}}}))
        .await;
    assert_eq!(client.recv().await["op"], "subscribed");
}

#[tokio::test(start_paused = true)]
async fn sockets_that_never_connect_are_closed() {
    let server = TestServer::start("[limits]\nconnect_timeout = \"5s\"").await;
    let mut client = server.client().await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Timed out waiting for connect", "code": 124, "reconnect": true, "requestId": null})
    );
    assert_eq!(client.closed().await, Some(1008));
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"connect_timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn oversized_messages_close_the_connection() {
    let server = TestServer::start("[limits]\nmax_message_bytes = 1024").await;
    let mut client = server.connected(None).await;
    let huge = json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {"a": "x".repeat(2000)}}});
    client.send(huge).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Message too large (limit 1024 bytes)", "code": 116, "reconnect": true, "requestId": null})
    );
    assert_eq!(client.closed().await, Some(1009));
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused() {
    let server = TestServer::start("[limits]\nmax_connections = 2").await;
    let _a = server.connected(None).await;
    let _b = server.connected(None).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let refused = tokio_tungstenite::client_async(format!("ws://{}/", server.addr), stream).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"connection_limit\"}")
            .await,
        1.0
    );
    drop(_a);
    // The freed slot is usable again.
    for _ in 0..100 {
        if server.metric("livequery_connections_open").await < 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _c = Client::open(server.addr, "/").await;
}

#[tokio::test]
async fn subscriptions_beyond_the_cap_are_refused() {
    let server = TestServer::start("[limits]\nmax_subscriptions_per_connection = 2").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({})).await;
    client.subscribe(2, "M", json!({})).await;
    client
        .send(json!({"op": "subscribe", "requestId": 3, "query": {"className": "M", "where": {}}}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Too many subscriptions on this connection (limit 2)", "code": 155, "reconnect": false, "requestId": 3})
    );
    // Replacing an existing id is not a new subscription.
    client.subscribe(2, "M", json!({"a": 1})).await;
}

#[tokio::test]
async fn query_nesting_is_limited() {
    let server = TestServer::start("[limits]\nmax_query_depth = 2").await;
    let mut client = server.connected(None).await;
    client
        .subscribe(1, "M", json!({"$or": [{"$and": [{"a": 1}]}]}))
        .await;
    client.send(json!({"op": "subscribe", "requestId": 2, "query": {"className": "M", "where": {"$or": [{"$and": [{"$or": [{"a": 1}]}]}]}}})).await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "Query condition nesting depth exceeds maximum allowed depth of 2", "code": 102, "reconnect": false, "requestId": 2})
    );
}

/// A client's first frame can arrive in the same segment as its upgrade request: the bytes
/// the HTTP parser read past the handshake are the start of the WebSocket stream.
#[tokio::test]
async fn a_frame_sent_right_behind_the_upgrade_request_is_read() {
    let server = TestServer::start("").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    // One masked text frame (FIN, opcode 1; a payload under 126 bytes).
    let payload = br#"{"op":"connect","applicationId":"test"}"#;
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    bytes.extend([0x81, 0x80 | u8::try_from(payload.len()).unwrap()]);
    bytes.extend(mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&bytes).await.unwrap();
    // The response head, byte by byte so that nothing after it is consumed here.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        stream,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let mut client = Client { ws };
    assert_eq!(client.recv().await["op"], "connected");
}
