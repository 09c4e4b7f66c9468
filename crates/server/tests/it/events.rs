//! Event types and payloads (`protocol-spec/frames.md`).

use serde_json::json;

use crate::support::{TestServer, object};

#[tokio::test]
async fn the_five_events_follow_the_reference_transcript() {
    five_events("").await;
}

/// One dispatcher (a one-core machine) runs on the runtime instead of its own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_single_dispatcher_on_the_runtime_delivers_the_same_events() {
    five_events("[dispatch]\nworkers = 1\n").await;
}

async fn five_events(overrides: &str) {
    let server = TestServer::start(overrides).await;
    let mut client = server.connected(None).await;
    client
        .subscribe(1, "Message", json!({"room": "r", "score": {"$gt": 10}}))
        .await;

    let a1 = object(
        "Message",
        "a",
        json!({"room": "r", "score": 20, "text": "a"}),
    );
    server.create(a1.clone()).await;
    let event = client.recv().await;
    assert_eq!(event["op"], "create");
    assert!(event.get("original").is_none());
    assert_eq!(event["object"], a1);

    // A create that does not match, then an update that still matches.
    let b1 = object("Message", "b", json!({"room": "r", "score": 1}));
    server.create(b1.clone()).await;
    let a2 = object(
        "Message",
        "a",
        json!({"room": "r", "score": 21, "text": "a"}),
    );
    server.update(a1.clone(), a2.clone()).await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"], &event["original"]),
        (Some("update"), &a2, &a1)
    );

    let b2 = object("Message", "b", json!({"room": "r", "score": 50}));
    server.update(b1.clone(), b2.clone()).await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"], &event["original"]),
        (Some("enter"), &b2, &b1)
    );

    let a3 = object(
        "Message",
        "a",
        json!({"room": "r", "score": 0, "text": "a"}),
    );
    server.update(a2.clone(), a3.clone()).await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"], &event["original"]),
        (Some("leave"), &a3, &a2)
    );

    server.delete(b2.clone()).await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"]),
        (Some("delete"), &b2)
    );
    assert!(event.get("original").is_none());

    // Deleting a non-matching object sends nothing; the next frame is the sentinel.
    server.delete(a3).await;
    server
        .create(object(
            "Message",
            "sentinel",
            json!({"room": "r", "score": 99}),
        ))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "sentinel");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn objects_are_sent_as_parse_json_without_internal_keys() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "TestObject", json!({})).await;
    let published = json!({
        "score": 3, "when": {"__type": "Date", "iso": "2020-01-02T03:04:05.678Z"},
        "ptr": {"__type": "Pointer", "className": "Other", "objectId": "abc"},
        "loc": {"__type": "GeoPoint", "latitude": 10, "longitude": 20},
        "file": {"__type": "File", "name": "f.txt", "url": "http://x/f.txt"},
        "rel": {"__type": "Relation", "className": "Other"},
        "nul": null, "_hashed_password": "secret", "_rperm": ["*"], "__type": "Object",
        "ACL": {"*": {"read": true}}, "createdAt": "2026-11-22T08:49:51.247Z", "updatedAt": "2026-11-22T08:49:51.247Z",
        "className": "TestObject", "objectId": "o1"
    });
    server.create(published).await;
    let event = client.recv().await;
    let object = event["object"].as_object().unwrap();
    for hidden in ["_hashed_password", "_rperm", "__type"] {
        assert!(!object.contains_key(hidden), "{hidden} leaked: {event}");
    }
    assert_eq!(
        object["when"],
        json!({"__type": "Date", "iso": "2020-01-02T03:04:05.678Z"})
    );
    assert_eq!(
        object["rel"],
        json!({"__type": "Relation", "className": "Other"})
    );
    assert_eq!(object["nul"], json!(null));
    assert_eq!(object["createdAt"], "2026-11-22T08:49:51.247Z");
    assert_eq!(
        (object["className"].as_str(), object["objectId"].as_str()),
        (Some("TestObject"), Some("o1"))
    );
}

#[tokio::test]
async fn keys_projection() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client
        .subscribe_with(json!({"op": "subscribe", "requestId": 2, "query": {"className": "M", "where": {}, "keys": ["score", "nope"]}}))
        .await;
    let before = object(
        "M",
        "o",
        json!({"score": 3, "name": "A", "ACL": {"*": {"read": true}}}),
    );
    let after = object(
        "M",
        "o",
        json!({"score": 10, "name": "B", "ACL": {"*": {"read": true}}}),
    );
    server.update(before, after).await;
    let event = client.recv().await;
    for side in ["object", "original"] {
        let mut keys: Vec<&str> = event[side]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "ACL",
                "className",
                "createdAt",
                "objectId",
                "score",
                "updatedAt"
            ],
            "{side}: {event}"
        );
    }
}

#[tokio::test]
async fn watch_suppresses_creates_and_updates_without_watched_changes() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe_with(json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {}, "watch": ["w"]}})).await;
    server.create(object("M", "no-w", json!({"x": 1}))).await;
    let v1 = object("M", "o", json!({"w": 1, "x": 1}));
    server.create(v1.clone()).await;
    assert_eq!(
        client.recv().await["object"]["objectId"],
        "o",
        "create without w is suppressed, with w sent"
    );
    let v2 = object("M", "o", json!({"w": 1, "x": 2}));
    server.update(v1, v2.clone()).await;
    let v3 = object("M", "o", json!({"w": 2, "x": 2}));
    server.update(v2, v3.clone()).await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"]["w"]),
        (Some("update"), &json!(2)),
        "only the w change: {event}"
    );
}

#[tokio::test]
async fn deleted_fields_are_absent_from_the_object() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({})).await;
    let before = object("M", "o", json!({"a": 1, "tags": ["x"]}));
    let after = object("M", "o", json!({"a": 1}));
    server.update(before, after).await;
    let event = client.recv().await;
    assert!(
        event["object"].get("tags").is_none() && event["original"]["tags"] == json!(["x"]),
        "{event}"
    );
}

#[tokio::test]
async fn one_update_can_leave_one_subscription_and_enter_another() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({"state": "open"})).await;
    client.subscribe(2, "M", json!({"state": "closed"})).await;
    let before = object("M", "o", json!({"state": "open"}));
    let after = object("M", "o", json!({"state": "closed"}));
    server.update(before.clone(), after.clone()).await;
    let mut events = vec![client.recv().await, client.recv().await];
    events.sort_by_key(|e| e["requestId"].as_u64());
    assert_eq!(
        (events[0]["op"].as_str(), events[0]["requestId"].as_u64()),
        (Some("leave"), Some(1))
    );
    assert_eq!(
        (events[1]["op"].as_str(), events[1]["requestId"].as_u64()),
        (Some("enter"), Some(2))
    );
    for event in &events {
        assert_eq!((&event["object"], &event["original"]), (&after, &before));
    }
}

#[tokio::test]
async fn identical_queries_share_evaluation_but_each_subscriber_gets_its_event() {
    let server = TestServer::start("").await;
    let mut a = server.connected(None).await;
    let mut b = server.connected(None).await;
    a.subscribe(1, "M", json!({"room": "r"})).await;
    a.subscribe(2, "M", json!({"room": "r"})).await;
    b.subscribe(1, "M", json!({"room": "r"})).await;
    assert_eq!(server.metric("livequery_distinct_queries").await, 1.0);
    server.create(object("M", "o", json!({"room": "r"}))).await;
    let mut ids = vec![
        a.recv().await["requestId"].as_u64(),
        a.recv().await["requestId"].as_u64(),
    ];
    ids.sort_unstable();
    assert_eq!(ids, [Some(1), Some(2)]);
    assert_eq!(b.recv().await["requestId"], 1);
}

#[tokio::test]
async fn or_queries_with_different_siblings_do_not_collide() {
    let server = TestServer::start("").await;
    let mut one = server.connected(None).await;
    let mut two = server.connected(None).await;
    one.subscribe(1, "M", json!({"a1": 1, "$or": [{"b": 1}, {"c": 1}]}))
        .await;
    two.subscribe(1, "M", json!({"a1": 2, "$or": [{"b": 1}, {"c": 1}]}))
        .await;
    server
        .create(object("M", "o1", json!({"a1": 1, "b": 1})))
        .await;
    server
        .create(object("M", "o2", json!({"a1": 2, "c": 1})))
        .await;
    assert_eq!(one.recv().await["object"]["objectId"], "o1");
    assert_eq!(
        two.recv().await["object"]["objectId"],
        "o2",
        "the reference delivers o1 here (hash collision)"
    );
}

#[tokio::test]
async fn events_of_one_object_arrive_in_order() {
    let server = TestServer::start("[dispatch]\nworkers = 2").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({})).await;
    let batch: Vec<_> = (0..50)
        .map(|n| json!({"currentParseObject": object("M", "o", json!({"n": n})), "originalParseObject": object("M", "o", json!({"n": n - 1}))}))
        .collect();
    server.publish("afterSave", json!(batch)).await;
    for n in 0..50 {
        assert_eq!(client.recv().await["object"]["n"], n);
    }
}
