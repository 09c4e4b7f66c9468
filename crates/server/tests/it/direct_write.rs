//! Event frames written straight to the socket by the dispatch worker, mixed with the
//! connection task's queued writes: a reader too slow for the socket makes direct writes
//! stop part-way through a frame; every frame must still arrive whole and in order, with
//! pings between them, and the slow-consumer cut-off and shutdown must still work.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::support::{Client, TestServer, object};

/// Publishes `count` events of `bytes`-byte payloads, one per ingest call (each dispatched
/// alone, so the worker writes it directly wherever nothing is queued), numbered from
/// `first`.
async fn publish_one_by_one(server: &TestServer, first: usize, count: usize, bytes: usize) {
    let payload = "x".repeat(bytes);
    for n in first..first + count {
        let message = json!({"currentParseObject": object("Big", &format!("o{n}"), json!({"n": n, "payload": payload}))});
        server.publish("afterSave", json!([message])).await;
    }
}

/// Reads `count` events, checking their order, pausing every 16 events.
async fn read_in_order(client: &mut Client, count: usize, pause: Duration) {
    for n in 0..count {
        let event = client.recv().await;
        assert_eq!(event["op"], "create", "{event}");
        assert_eq!(event["object"]["n"], n, "every event, in order");
        if n % 16 == 0 {
            tokio::time::sleep(pause).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_frame_whole_and_in_order_with_pings_between() {
    // Pings every two seconds: several are written between the events while they are
    // published and read.
    let server = TestServer::start(
        "[server]\nwebsocket_timeout = \"2s\"\n[limits]\noutbound_queue_bytes = 268435456",
    )
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Big", json!({})).await;
    // ~20 MB, more than an unread loopback socket holds: direct writes are cut short
    // part-way through frames, and the rest of each is queued.
    let count = 300;
    let publisher = publish_one_by_one(&server, 0, count, 70_000);
    let reader = async {
        // Not reading at first: the socket fills.
        tokio::time::sleep(Duration::from_millis(300)).await;
        read_in_order(&mut client, count, Duration::from_millis(20)).await;
    };
    tokio::join!(publisher, reader);
    // Caught up: the next event is written directly again, and arrives.
    publish_one_by_one(&server, count, 1, 10).await;
    let event = client.recv().await;
    assert_eq!(event["object"]["n"], count);
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"ping_timeout\"}")
            .await,
        0.0,
        "the slow reader answered its pings"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflow_behind_a_cut_short_write_ends_with_the_slow_consumer_error() {
    let server =
        TestServer::start("[limits]\noutbound_queue_frames = 16\nwrite_timeout = \"120s\"").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Big", json!({})).await;
    // ~25 MB while the client does not read: the socket fills, then the queue overflows.
    publish_one_by_one(&server, 0, 400, 64 * 1024).await;
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"slow_consumer_queue\"}")
            .await,
        1.0
    );
    // Whole events in order, then the error frame, then close 1008.
    let mut n = 0;
    let error = loop {
        let frame = client
            .next_text()
            .await
            .expect("the error frame arrives before the close");
        if frame["op"] == "error" {
            break frame;
        }
        assert_eq!(frame["object"]["n"], n, "in order");
        n += 1;
    };
    assert!(
        n < 400,
        "the slow client cannot have received everything ({n})"
    );
    assert_eq!(
        error,
        json!({"op": "error", "error": "Client too slow: outbound queue overflow", "code": 155, "reconnect": true, "requestId": null})
    );
    assert_eq!(client.closed().await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_a_cut_short_frame_before_the_close_handshake() {
    let server = TestServer::start(
        "[server]\nshutdown_grace = \"30s\"\n[limits]\noutbound_queue_bytes = 268435456",
    )
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Big", json!({})).await;
    let count = 200;
    publish_one_by_one(&server, 0, count, 70_000).await;
    // The socket is full and a frame is likely cut short; the server now shuts down: the
    // frame on the wire is finished (queued ones are dropped), then the close handshake.
    let stopping = tokio::spawn(server.stop());
    let mut n = 0;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), client.ws.next())
            .await
            .expect("the server closes within its grace")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                let event: serde_json::Value = serde_json::from_str(&text).expect("whole JSON");
                assert_eq!(event["object"]["n"], n, "in order");
                n += 1;
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                break frame.map(|f| u16::from(f.code));
            }
            Some(Ok(_)) => {}
            other => panic!("the stream broke before the close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(1001));
    assert!(n <= count, "{n} events");
    stopping.await.unwrap();
}
