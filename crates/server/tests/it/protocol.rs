//! Protocol state rules and error frames (`protocol-spec/frames.md`, `protocol-spec/errors.md`).

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::{Client, TestServer, object};

fn error(text: &str, code: u32, reconnect: bool, request_id: Value) -> Value {
    json!({"op": "error", "error": text, "code": code, "reconnect": reconnect, "requestId": request_id})
}

#[tokio::test]
async fn invalid_json_is_ignored_and_the_socket_stays_usable() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client.send_text("{\"op\":\"connect\",").await;
    client.send_text("not json at all").await;
    client
        .send(json!({"op": "connect", "applicationId": "x"}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        reply["op"], "connected",
        "nothing may be sent for invalid JSON: {reply}"
    );
    assert_eq!(server.metric("livequery_invalid_json_total").await, 2.0);
}

#[tokio::test]
async fn schema_violations_get_the_reference_errors() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    for (frame, text) in [
        ("{}", "Missing required property: op"),
        ("[]", "Invalid type: array (expected object)"),
        ("null", "Invalid type: null (expected object)"),
        (r#"{"op":"foo"}"#, r#"No enum match for: "foo""#),
        (r#"{"op":5}"#, "Invalid type: number (expected string)"),
        (
            r#"{"op":"connect"}"#,
            "Missing required property: applicationId",
        ),
        (
            r#"{"op":"connect","applicationId":"a","foo":1}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"connect","applicationId":"a","sessionToken":null}"#,
            "Invalid type: null (expected string)",
        ),
        (
            r#"{"op":"subscribe","requestId":"1","query":{"className":"M","where":{}}}"#,
            "Invalid type: string (expected number)",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"limit":5}}"#,
            "Additional properties not allowed",
        ),
        (
            r#"{"op":"subscribe","requestId":1,"query":{"className":"M","where":{},"keys":[]}}"#,
            "Array is too short (0), minimum 1",
        ),
    ] {
        client.send_text(frame).await;
        assert_eq!(
            client.recv().await,
            error(text, 1, true, Value::Null),
            "frame {frame}"
        );
    }
}

#[tokio::test]
async fn binary_frames_are_rejected_like_the_reference() {
    use futures_util::SinkExt;
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            br#"{"op":"connect","applicationId":"a"}"#.to_vec().into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        client.recv().await,
        error("Missing required property: op", 1, true, Value::Null)
    );
}

#[tokio::test]
async fn operations_before_connect_get_code_2() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    let subscribing =
        "Can not find this client, make sure you connect to server before subscribing";
    let unsubscribing =
        "Can not find this client, make sure you connect to server before unsubscribing";
    client
        .send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {}}}))
        .await;
    assert_eq!(
        client.recv().await,
        error(subscribing, 2, true, Value::Null)
    );
    client
        .send(json!({"op": "unsubscribe", "requestId": 1}))
        .await;
    assert_eq!(
        client.recv().await,
        error(unsubscribing, 2, true, Value::Null)
    );
    client
        .send(json!({"op": "update", "requestId": 1, "query": {"className": "M", "where": {}}}))
        .await;
    assert_eq!(
        client.recv().await,
        error(unsubscribing, 2, true, Value::Null)
    );
    assert_eq!(
        client.recv().await,
        error(subscribing, 2, true, Value::Null)
    );
    client.send(json!({"op": "query", "requestId": 1})).await;
    assert_eq!(
        client.recv().await,
        error(
            "Can not find this client, make sure you connect to server before querying",
            2,
            true,
            Value::Null
        )
    );
    // Nothing changed: a connect still works and no subscription exists.
    client
        .send(json!({"op": "connect", "applicationId": "a"}))
        .await;
    assert_eq!(client.recv().await["op"], "connected");
    assert_eq!(server.metric("livequery_subscriptions").await, 0.0);
}

#[tokio::test]
async fn installation_id_is_echoed_in_every_frame_and_absent_otherwise() {
    let server = TestServer::start("").await;
    let mut with = server.client().await;
    with.send(json!({"op": "connect", "applicationId": "a", "installationId": "inst-1"}))
        .await;
    let connected = with.recv().await;
    assert_eq!(connected["installationId"], "inst-1");
    let client_id = connected["clientId"].as_str().unwrap().to_owned();
    assert_eq!(client_id.len(), 36, "a UUID: {client_id}");
    assert_eq!(
        uuid::Uuid::parse_str(&client_id).map(|u| u.get_version_num()),
        Ok(4)
    );
    with.subscribe(1, "M", json!({})).await;
    server.create(object("M", "o1", json!({}))).await;
    let event = with.recv().await;
    assert_eq!(
        (event["op"].as_str(), event["installationId"].as_str()),
        (Some("create"), Some("inst-1"))
    );
    assert_eq!(event["clientId"], client_id.as_str());
    with.send(json!({"op": "unsubscribe", "requestId": 1}))
        .await;
    assert_eq!(
        with.recv().await,
        json!({"op": "unsubscribed", "clientId": client_id, "installationId": "inst-1", "requestId": 1})
    );

    let mut without = server.connected(None).await;
    without.subscribe(1, "M", json!({})).await;
    server.create(object("M", "o2", json!({}))).await;
    let event = without.recv().await;
    assert!(event.get("installationId").is_none(), "{event}");
}

#[tokio::test]
async fn key_pairs_are_checked_like_the_reference() {
    let server =
        TestServer::start("[parse]\nkey_pairs = { javascriptKey = \"jsk\", masterKey = \"mk\" }")
            .await;
    let invalid = error("Key in request is not valid", 4, true, Value::Null);
    let mut client = server.client().await;
    for frame in [
        json!({"op": "connect", "applicationId": "a"}),
        json!({"op": "connect", "applicationId": "a", "javascriptKey": "wrong"}),
        json!({"op": "connect", "applicationId": "a", "clientKey": "jsk"}),
        json!({"op": "connect", "applicationId": "a", "masterKey": "nope"}),
    ] {
        client.send(frame.clone()).await;
        assert_eq!(client.recv().await, invalid, "{frame}");
    }
    // Right key plus a wrong master key: connected, not master (does not see ACL {}).
    client.send(json!({"op": "connect", "applicationId": "someOtherApp", "javascriptKey": "jsk", "masterKey": "wrong"})).await;
    assert_eq!(client.recv().await["op"], "connected");
    client.subscribe(1, "M", json!({})).await;
    let mut master = server.client().await;
    master
        .send(json!({"op": "connect", "applicationId": "a", "masterKey": "mk"}))
        .await;
    assert_eq!(master.recv().await["op"], "connected");
    master.subscribe(1, "M", json!({})).await;
    server
        .create(object("M", "private", json!({"ACL": {}})))
        .await;
    server.create(object("M", "public", json!({}))).await;
    assert_eq!(master.recv().await["object"]["objectId"], "private");
    assert_eq!(master.recv().await["object"]["objectId"], "public");
    assert_eq!(
        client.recv().await["object"]["objectId"],
        "public",
        "a non-master client never sees ACL {{}}"
    );
}

#[tokio::test]
async fn application_id_is_only_checked_when_configured() {
    let lax = TestServer::start("").await;
    let mut client = lax.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "anything"}))
        .await;
    assert_eq!(client.recv().await["op"], "connected");

    let strict =
        TestServer::start("[parse]\napp_id = \"myApp\"\ncheck_application_id = true").await;
    let mut client = strict.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "other"}))
        .await;
    assert_eq!(
        client.recv().await,
        error("Invalid applicationId", 4, true, Value::Null)
    );
    client
        .send(json!({"op": "connect", "applicationId": "myApp"}))
        .await;
    assert_eq!(client.recv().await["op"], "connected");
}

#[tokio::test]
async fn any_path_is_accepted() {
    let server = TestServer::start("").await;
    for path in ["/", "/parse", "/x?y=1", "/deeply/nested/path"] {
        let mut client = Client::open(server.addr, path).await;
        client
            .send(json!({"op": "connect", "applicationId": "a"}))
            .await;
        assert_eq!(client.recv().await["op"], "connected", "{path}");
    }
}

#[tokio::test]
async fn request_ids_are_echoed_exactly() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    for id in [json!(0), json!(-3), json!(1.5), json!(123456789)] {
        client.send(json!({"op": "subscribe", "requestId": id, "query": {"className": "M", "where": {}}})).await;
        let reply = client.recv().await;
        assert_eq!(
            (reply["op"].as_str(), &reply["requestId"]),
            (Some("subscribed"), &id)
        );
    }
    client
        .send(json!({"op": "unsubscribe", "requestId": 1.5}))
        .await;
    assert_eq!(client.recv().await["requestId"], json!(1.5));
}

#[tokio::test]
async fn unknown_request_ids_get_the_reference_text() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "a"}))
        .await;
    let client_id = client.recv().await["clientId"].as_str().unwrap().to_owned();
    client
        .send(json!({"op": "unsubscribe", "requestId": 99}))
        .await;
    let text = format!(
        "Cannot find subscription with clientId {client_id} subscriptionId 99. Make sure you subscribe to live query server before unsubscribing."
    );
    assert_eq!(client.recv().await, error(&text, 2, true, Value::Null));
}

#[tokio::test]
async fn update_of_an_unknown_id_errors_then_subscribes() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "a"}))
        .await;
    let client_id = client.recv().await["clientId"].as_str().unwrap().to_owned();
    client
        .send(json!({"op": "update", "requestId": 42, "query": {"className": "M", "where": {}}}))
        .await;
    let text = format!(
        "Cannot find subscription with clientId {client_id} subscriptionId 42. Make sure you subscribe to live query server before unsubscribing."
    );
    assert_eq!(client.recv().await, error(&text, 2, true, Value::Null));
    assert_eq!(
        client.recv().await,
        json!({"op": "subscribed", "clientId": client_id, "requestId": 42})
    );
    server.create(object("M", "o", json!({}))).await;
    assert_eq!(client.recv().await["op"], "create");
}

#[tokio::test]
async fn update_replaces_the_query() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(5, "M", json!({"room": "A"})).await;
    client.send(json!({"op": "update", "requestId": 5, "query": {"className": "M", "where": {"room": "B"}, "keys": ["room"]}})).await;
    let reply = client.recv().await;
    assert_eq!(
        (reply["op"].as_str(), reply["requestId"].as_u64()),
        (Some("subscribed"), Some(5))
    );
    server
        .create(object("M", "a", json!({"room": "A", "text": "t"})))
        .await;
    server
        .create(object("M", "b", json!({"room": "B", "text": "t"})))
        .await;
    let event = client.recv().await;
    assert_eq!(
        event["object"]["objectId"], "b",
        "room A is no longer watched"
    );
    assert!(
        event["object"].get("text").is_none(),
        "keys of the update apply: {event}"
    );
    assert_eq!(server.metric("livequery_subscriptions").await, 1.0);
}

#[tokio::test]
async fn duplicate_request_id_replaces_the_subscription() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({"tag": "T"})).await;
    client.subscribe(1, "M", json!({"tag": "T", "n": 1})).await;
    assert_eq!(server.metric("livequery_subscriptions").await, 1.0);
    // An object moving from n=1 to n=2 leaves the second query (the first would update).
    let before = object("M", "o", json!({"tag": "T", "n": 1}));
    let after = object("M", "o", json!({"tag": "T", "n": 2}));
    server.update(before, after).await;
    let event = client.recv().await;
    assert_eq!(event["op"], "leave", "{event}");
}

#[tokio::test]
async fn a_second_connect_replaces_the_first_client() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "a"}))
        .await;
    let first = client.recv().await["clientId"].clone();
    client.subscribe(1, "M", json!({"room": "old"})).await;
    client
        .send(json!({"op": "connect", "applicationId": "a"}))
        .await;
    let second = client.recv().await["clientId"].clone();
    assert_ne!(first, second);
    assert_eq!(
        server.metric("livequery_subscriptions").await,
        0.0,
        "the first client's subscriptions are gone"
    );
    assert_eq!(server.metric("livequery_clients").await, 1.0);
    client
        .send(json!({"op": "unsubscribe", "requestId": 1}))
        .await;
    assert_eq!(client.recv().await["code"], 2);
    client.subscribe(2, "M", json!({"room": "new"})).await;
    server
        .create(object("M", "o1", json!({"room": "old"})))
        .await;
    server
        .create(object("M", "o2", json!({"room": "new"})))
        .await;
    let event = client.recv().await;
    assert_eq!(
        (
            event["object"]["objectId"].as_str(),
            event["clientId"].clone()
        ),
        (Some("o2"), second)
    );
}

#[tokio::test]
async fn unsubscribe_and_close_stop_events() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(98, "M", json!({"k": 1})).await;
    client.subscribe(99, "M", json!({"k": 2})).await;
    client
        .send(json!({"op": "unsubscribe", "requestId": 98}))
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (reply["op"].as_str(), reply["requestId"].as_u64()),
        (Some("unsubscribed"), Some(98))
    );
    server.create(object("M", "a", json!({"k": 1}))).await;
    server.create(object("M", "b", json!({"k": 2}))).await;
    assert_eq!(
        client.recv().await["object"]["objectId"],
        "b",
        "no event for the unsubscribed query"
    );
    drop(client);
    for _ in 0..100 {
        if server.metric("livequery_subscriptions").await == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric("livequery_subscriptions").await, 0.0);
    assert_eq!(server.metric("livequery_clients").await, 0.0);
}

#[tokio::test]
async fn bad_queries_are_rejected_with_code_102() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    for (where_, text) in [
        (
            json!({"name": {"$regex": "("}}),
            "Invalid regular expression: Invalid regular expression: /(/: Unterminated group",
        ),
        (
            json!({"name": {"$regex": "^A$", "$options": "x"}}),
            "Invalid regular expression: Invalid flags supplied to RegExp constructor 'x'",
        ),
        (json!({"$or": {"a": 1}}), "$or must be an array"),
        (
            json!({"a": {"$inQuery": {"className": "X", "where": {}}}}),
            "$inQuery is not supported yet: subqueries need a database-backed source to resolve them",
        ),
        (json!({"a": {"$foo": 1}}), "bad constraint: $foo"),
    ] {
        client.send(json!({"op": "subscribe", "requestId": 7, "query": {"className": "M", "where": where_}})).await;
        assert_eq!(client.recv().await, error(text, 102, false, json!(7)));
    }
    assert_eq!(server.metric("livequery_subscriptions").await, 0.0);
}

#[tokio::test]
async fn regex_can_be_disabled_except_for_master() {
    let server = TestServer::start(
        "[parse]\nallow_regex = false\nkey_pairs = { javascriptKey = \"jsk\", masterKey = \"mk\" }",
    )
    .await;
    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "a", "javascriptKey": "jsk"}))
        .await;
    assert_eq!(client.recv().await["op"], "connected");
    client.send(json!({"op": "subscribe", "requestId": 3, "query": {"className": "M", "where": {"name": {"$regex": "^A"}}}})).await;
    assert_eq!(
        client.recv().await,
        error("$regex operator is not allowed", 102, false, json!(3))
    );
    let mut master = server.client().await;
    master
        .send(json!({"op": "connect", "applicationId": "a", "masterKey": "mk"}))
        .await;
    assert_eq!(master.recv().await["op"], "connected");
    master
        .subscribe(1, "M", json!({"name": {"$regex": "^A"}}))
        .await;
}

/// A client frame through tungstenite's raw-frame path (masked like any client frame, but
/// neither validated nor assembled).
async fn send_frame(client: &mut Client, payload: &[u8], opcode: OpCode, fin: bool) {
    let frame = Frame::message(payload.to_vec(), opcode, fin);
    client.ws.send(Message::Frame(frame)).await.expect("send");
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_and_pings_between_them_answered() {
    let server = TestServer::start("").await;
    let mut client = server.client().await;
    let connect = json!({"op": "connect", "applicationId": "x"}).to_string();
    let (head, tail) = connect.as_bytes().split_at(10);
    send_frame(&mut client, head, OpCode::Data(Data::Text), false).await;
    client
        .ws
        .send(Message::Ping(b"between".to_vec().into()))
        .await
        .expect("send");
    send_frame(&mut client, tail, OpCode::Data(Data::Continue), true).await;
    let pong = tokio::time::timeout(std::time::Duration::from_secs(5), client.ws.next())
        .await
        .expect("a pong in time")
        .expect("open")
        .expect("a frame");
    assert_eq!(pong, Message::Pong(b"between".to_vec().into()));
    assert_eq!(client.recv().await["op"], "connected");
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let server = TestServer::start("").await;
    // An unmasked client frame.
    let mut client = server.connected(None).await;
    client
        .ws
        .get_mut()
        .write_all(&[0x81, 0x01, b'x'])
        .await
        .expect("write");
    assert_eq!(client.closed().await, Some(1002));
    // A continuation with no message to continue.
    let mut client = server.connected(None).await;
    send_frame(&mut client, b"x", OpCode::Data(Data::Continue), true).await;
    assert_eq!(client.closed().await, Some(1002));
    // A reserved opcode.
    let mut client = server.connected(None).await;
    send_frame(&mut client, b"x", OpCode::Data(Data::Reserved(3)), true).await;
    assert_eq!(client.closed().await, Some(1002));
    // The server still serves others.
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({})).await;
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    send_frame(&mut client, &[b'{', 0xff], OpCode::Data(Data::Text), true).await;
    assert_eq!(client.closed().await, Some(1007));
}
