//! Cloud Code LiveQuery hooks (`protocol-spec/hooks.md`) against a fake hook server that
//! answers, rejects, fails or hangs as each test tells it: parse-server's error frames for
//! rejections, rewritten queries admitted by the gate, replaced objects cut to each reader's
//! view, one call per (event, identity), order kept under slow hooks, failure policies and
//! metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::{FRAME_TIMEOUT, TestServer, object};

/// One request the fake hook server received.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Answer = Pin<Box<dyn Future<Output = (u16, Value)> + Send>>;
type Behaviour = Arc<dyn Fn(&Call) -> Answer + Send + Sync>;

/// A hook endpoint on 127.0.0.1 answering with `behaviour`, recording every call.
struct FakeHooks {
    base: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeHooks {
    async fn start(behaviour: impl Fn(&Call) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let behaviour: Behaviour = Arc::new(behaviour);
        let recorded = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let behaviour = behaviour.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let behaviour = behaviour.clone();
                            let recorded = recorded.clone();
                            async move {
                                let path = request.uri().path().to_owned();
                                let headers = request
                                    .headers()
                                    .iter()
                                    .map(|(n, v)| {
                                        (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect();
                                let bytes = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let call = Call {
                                    path,
                                    headers,
                                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                                };
                                recorded.lock().expect("not poisoned").push(call.clone());
                                let (status, body) = behaviour(&call).await;
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .expect("response");
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { base, calls }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("not poisoned").clone()
    }

    fn calls_to(&self, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    /// Waits (at most `FRAME_TIMEOUT`) until the hook has been called at least once.
    async fn wait_for_a_call(&self) {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        while self.calls().is_empty() {
            assert!(Instant::now() < deadline, "the hook was never called");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn answer(status: u16, body: Value) -> Answer {
    Box::pin(async move { (status, body) })
}

fn webhook_success(x: Value) -> Answer {
    answer(200, json!({ "success": x }))
}

/// A `[[hooks.hook]]` table calling a webhook.
fn webhook(trigger: &str, class: Option<&str>, url: &str, extra: &str) -> String {
    let class = class.map_or(String::new(), |c| format!("class_name = \"{c}\"\n"));
    format!("[[hooks.hook]]\ntrigger = \"{trigger}\"\n{class}url = \"{url}\"\n{extra}\n")
}

async fn error_frame(client: &mut crate::support::Client) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["op"], "error", "{frame}");
    frame
}

#[tokio::test]
async fn before_connect_rejects_with_the_hooks_code_or_141_and_sends_the_webhook_format() {
    let hooks = FakeHooks::start(|call| match call.body["installationId"].as_str() {
        Some("banned") => answer(
            200,
            json!({"error": {"code": 3000, "message": "banned device"}}),
        ),
        Some("plain") => answer(200, json!({"error": "go away"})),
        _ => webhook_success(Value::Null),
    })
    .await;
    let server = TestServer::start(&format!(
        "[hooks]\nwebhook_key = \"hook-secret\"\n{}",
        webhook("beforeConnect", None, &hooks.url("/connect"), "")
    ))
    .await;
    server.session("r:alice", "alice", &[]).await;

    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "x", "installationId": "banned"}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "code": 3000, "error": "banned device", "reconnect": false, "requestId": null})
    );
    // Not connected: a subscribe is refused as before any connect.
    client
        .send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {}}}))
        .await;
    assert_eq!(error_frame(&mut client).await["code"], 2);

    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "x", "installationId": "plain"}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "code": 141, "error": "go away", "reconnect": false, "requestId": null})
    );

    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "x", "installationId": "ok", "sessionToken": "r:alice"}))
        .await;
    assert_eq!(client.recv().await["op"], "connected");

    let calls = hooks.calls_to("/connect");
    assert_eq!(calls.len(), 3);
    let last = &calls[2];
    assert_eq!(last.header("x-parse-webhook-key"), Some("hook-secret"));
    assert_eq!(last.header("content-type"), Some("application/json"));
    assert_eq!(last.body["triggerName"], "beforeConnect");
    assert_eq!(last.body["useMasterKey"], false);
    assert_eq!(last.body["installationId"], "ok");
    assert_eq!(last.body["sessionToken"], "r:alice");
    assert_eq!(
        last.body["user"],
        json!({"__type": "Object", "className": "_User", "objectId": "alice"})
    );
    assert!(last.body["clients"].is_number() && last.body["subscriptions"].is_number());
    assert_eq!(calls[0].body["user"], Value::Null);
    assert_eq!(
        server
            .metric("livequery_hook_calls_total{trigger=\"beforeConnect\",outcome=\"rejected\"}")
            .await,
        2.0
    );
    assert_eq!(
        server
            .metric("livequery_hook_calls_total{trigger=\"beforeConnect\",outcome=\"ok\"}")
            .await,
        1.0
    );
    assert!(
        server
            .metric("livequery_hook_duration_seconds_count{trigger=\"beforeConnect\"}")
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn cloud_functions_are_called_with_the_master_key_and_their_errors_become_frames() {
    let hooks = FakeHooks::start(|call| match call.body["installationId"].as_str() {
        Some("thrower") => answer(400, json!({"code": 141, "error": "Not today"})),
        Some("parse-error") => answer(400, json!({"code": 209, "error": "Invalid session token"})),
        _ => answer(200, json!({"result": null})),
    })
    .await;
    let server = TestServer::start(&format!(
        "[parse]\nserver_url = \"{}\"\n[[hooks.hook]]\ntrigger = \"beforeConnect\"\nfunction = \"lqConnect\"\n",
        hooks.url("/parse")
    ))
    .await;
    for (installation, expected) in [
        (
            "thrower",
            json!({"op": "error", "code": 141, "error": "Not today", "reconnect": false, "requestId": null}),
        ),
        (
            "parse-error",
            json!({"op": "error", "code": 209, "error": "Invalid session token", "reconnect": false, "requestId": null}),
        ),
    ] {
        let mut client = server.client().await;
        client
            .send(json!({"op": "connect", "applicationId": "x", "installationId": installation}))
            .await;
        assert_eq!(client.recv().await, expected);
    }
    let client = server.connected(None).await;
    drop(client);
    let calls = hooks.calls_to("/parse/functions/lqConnect");
    assert_eq!(calls.len(), 3, "{:?}", hooks.calls());
    assert_eq!(calls[0].header("x-parse-application-id"), Some("lqApp"));
    assert_eq!(
        calls[0].header("x-parse-master-key"),
        Some(crate::support::MASTER_KEY)
    );
    assert_eq!(calls[0].header("x-parse-webhook-key"), None);
}

#[tokio::test]
async fn before_subscribe_rejects_with_the_request_id() {
    let hooks = FakeHooks::start(|call| {
        if call.body["query"]["where"]["room"] == "closed" {
            answer(
                200,
                json!({"error": {"code": 119, "message": "room closed"}}),
            )
        } else {
            webhook_success(json!({}))
        }
    })
    .await;
    let server = TestServer::start(&webhook(
        "beforeSubscribe",
        Some("Message"),
        &hooks.url("/sub"),
        "",
    ))
    .await;
    let mut client = server.connected(None).await;
    client
        .send(json!({"op": "subscribe", "requestId": 7, "query": {"className": "Message", "where": {"room": "closed"}, "keys": ["text"]}}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "code": 119, "error": "room closed", "reconnect": false, "requestId": 7})
    );
    client
        .subscribe(8, "Message", json!({"room": "open"}))
        .await;
    let calls = hooks.calls_to("/sub");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].body["triggerName"], "beforeSubscribe");
    assert_eq!(calls[0].body["className"], "Message");
    assert_eq!(calls[0].body["requestId"], 7);
    assert_eq!(
        calls[0].body["query"],
        json!({"className": "Message", "where": {"room": "closed"}, "keys": ["text"]})
    );
    // A rejected subscription is not registered: an event for it reaches nobody.
    server
        .create(object("Message", "m", json!({"room": "closed"})))
        .await;
    server
        .create(object("Message", "n", json!({"room": "open"})))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "n");
}

#[tokio::test]
async fn a_rewritten_query_narrows_and_cannot_widen_past_the_gate() {
    let hooks = FakeHooks::start(|call| {
        let wants = call.body["query"]["where"]["wants"].as_str().unwrap_or("");
        match wants {
            "narrow" => webhook_success(
                json!({"query": {"where": {"room": "a"}, "keys": ["room", "text"]}}),
            ),
            "hidden" => webhook_success(json!({"query": {"where": {"secret": "x"}}})),
            "hidden-watch" => webhook_success(json!({"query": {"watch": ["secret"]}})),
            _ => webhook_success(json!("not an object")),
        }
    })
    .await;
    let server = TestServer::start(&webhook(
        "beforeSubscribe",
        Some("Message"),
        &hooks.url("/sub"),
        "on_failure = \"reject\"",
    ))
    .await;
    let clp = json!({"find": {"*": true}, "protectedFields": {"*": ["secret"]}});
    server.schema("Message", clp.clone()).await;
    let mut client = server.connected(None).await;
    client
        .subscribe(1, "Message", json!({"wants": "narrow"}))
        .await;
    for (id, room) in [("b1", "b"), ("a1", "a")] {
        server
            .publish(
                "afterSave",
                json!({"currentParseObject": object("Message", id, json!({"room": room, "text": "t", "other": 1, "secret": "s"})), "classLevelPermissions": clp}),
            )
            .await;
    }
    let event = client.recv().await;
    assert_eq!(event["object"]["objectId"], "a1", "{event}");
    assert!(
        event["object"].get("other").is_none(),
        "keys applied: {event}"
    );
    assert!(event["object"].get("secret").is_none(), "{event}");

    for (id, wants) in [(2, "hidden"), (3, "hidden-watch")] {
        client
            .send(json!({"op": "subscribe", "requestId": id, "query": {"className": "Message", "where": {"wants": wants}}}))
            .await;
        let frame = error_frame(&mut client).await;
        assert_eq!(
            (frame["code"].as_u64(), frame["requestId"].as_u64()),
            (Some(119), Some(id)),
            "{frame}"
        );
    }
    // An answer of another shape is a failure: `reject` gives 141 with the trigger's name.
    client
        .send(json!({"op": "subscribe", "requestId": 4, "query": {"className": "Message", "where": {"wants": "junk"}}}))
        .await;
    let frame = error_frame(&mut client).await;
    assert_eq!(frame["code"], 141);
    assert_eq!(frame["requestId"], 4);
    assert!(
        frame["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("beforeSubscribe hook failed: ")),
        "{frame}"
    );
}

#[tokio::test]
async fn frames_after_a_pending_before_subscribe_keep_their_order() {
    let hooks = FakeHooks::start(|call| {
        let slow = call.body["requestId"] == 1;
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (200, json!({"success": null}))
        })
    })
    .await;
    let server = TestServer::start(&webhook(
        "beforeSubscribe",
        Some("Message"),
        &hooks.url("/sub"),
        "",
    ))
    .await;
    let mut client = server.connected(None).await;
    for id in 1..=3 {
        client
            .send(json!({"op": "subscribe", "requestId": id, "query": {"className": "Message", "where": {}}}))
            .await;
    }
    client
        .send(json!({"op": "unsubscribe", "requestId": 1}))
        .await;
    for (op, id) in [
        ("subscribed", 1),
        ("subscribed", 2),
        ("subscribed", 3),
        ("unsubscribed", 1),
    ] {
        let frame = client.recv().await;
        assert_eq!(
            (frame["op"].as_str(), frame["requestId"].as_u64()),
            (Some(op), Some(id)),
            "{frame}"
        );
    }
}

/// An `afterLiveQueryEvent` webhook on Message with `extra` options, a server, and `n`
/// anonymous clients subscribed to every Message (and to Other, which has no hook).
async fn after_event_setup(
    behaviour: impl Fn(&Call) -> Answer + Send + Sync + 'static,
    extra: &str,
) -> (FakeHooks, TestServer) {
    let hooks = FakeHooks::start(behaviour).await;
    let server = TestServer::start(&webhook(
        "afterLiveQueryEvent",
        Some("Message"),
        &hooks.url("/event"),
        extra,
    ))
    .await;
    (hooks, server)
}

/// An `afterLiveQueryEvent` webhook on `Message` whose every call waits until `release` is
/// notified (one call per notification), with the hook settings in `extra`.
async fn hanging_after_event_setup(
    extra: &str,
) -> (Arc<tokio::sync::Notify>, FakeHooks, TestServer) {
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let (hooks, server) = after_event_setup(
        move |_| {
            let gate = gate.clone();
            Box::pin(async move {
                gate.notified().await;
                (200, json!({"success": null}))
            })
        },
        extra,
    )
    .await;
    (release, hooks, server)
}

#[tokio::test]
async fn after_event_enriches_the_object_and_the_gate_still_cuts_it() {
    let (hooks, server) = after_event_setup(
        |call| {
            let mut object = call.body["object"].clone();
            object["author"] = json!({
                "__type": "Object", "className": "_User", "objectId": "u1",
                "username": "ann", "sessionToken": "r:leak", "password": "pw",
                "authData": {"facebook": {"id": "1"}}, "_hashed_password": "h",
                "ACL": {"*": {"read": true}}
            });
            object["secret"] = json!("planted");
            object["objectId"] = json!("forged");
            webhook_success(json!({"object": object}))
        },
        "",
    )
    .await;
    let clp = json!({"find": {"*": true}, "protectedFields": {"*": ["secret"]}});
    server.schema("Message", clp.clone()).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    let message = object(
        "Message",
        "m1",
        json!({"text": "hi", "author": {"__type": "Pointer", "className": "_User", "objectId": "u1"}}),
    );
    server
        .publish(
            "afterSave",
            json!({"currentParseObject": message, "classLevelPermissions": clp}),
        )
        .await;
    let event = client.recv().await;
    assert_eq!(event["op"], "create", "{event}");
    let object = &event["object"];
    assert_eq!(
        object["objectId"], "m1",
        "the real objectId is kept: {event}"
    );
    assert_eq!(object["text"], "hi");
    assert!(object.get("secret").is_none(), "{event}");
    assert_eq!(
        object["author"],
        json!({"__type": "Object", "className": "_User", "objectId": "u1", "username": "ann", "ACL": {"*": {"read": true}}}),
        "{event}"
    );
    let calls = hooks.calls_to("/event");
    assert_eq!(calls.len(), 1);
    let body = &calls[0].body;
    assert_eq!(body["triggerName"], "afterLiveQueryEvent");
    assert_eq!(body["event"], "create");
    assert_eq!(body["className"], "Message");
    assert_eq!(body["object"]["__type"], "Object");
    assert_eq!(body["object"]["objectId"], "m1");
    assert_eq!(body["original"], Value::Null);
    assert_eq!(
        (
            &body["installationId"],
            &body["sessionToken"],
            &body["user"]
        ),
        (&Value::Null, &Value::Null, &Value::Null)
    );
}

#[tokio::test]
async fn send_event_false_suppresses_and_other_classes_never_call_the_hook() {
    let (hooks, server) = after_event_setup(
        |call| {
            if call.body["object"]["hide"] == true {
                webhook_success(json!({"sendEvent": false}))
            } else {
                webhook_success(Value::Null)
            }
        },
        "",
    )
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    client.subscribe(2, "Other", json!({})).await;
    server.create(object("Other", "o1", json!({}))).await;
    assert_eq!(client.recv().await["object"]["objectId"], "o1");
    assert!(
        hooks.calls().is_empty(),
        "a class without a hook calls nothing"
    );
    server
        .create(object("Message", "hidden", json!({"hide": true})))
        .await;
    server
        .create(object("Message", "shown", json!({"hide": false})))
        .await;
    let event = client.recv().await;
    assert_eq!(event["object"]["objectId"], "shown", "{event}");
    assert_eq!(hooks.calls().len(), 2);
}

#[tokio::test]
async fn one_call_per_event_and_identity_whatever_the_number_of_recipients() {
    let (hooks, server) = after_event_setup(|_| webhook_success(Value::Null), "").await;
    server.session("r:bob", "bob", &[]).await;
    let mut anonymous = Vec::new();
    for _ in 0..5 {
        let mut client = server.connected(None).await;
        client.subscribe(1, "Message", json!({})).await;
        // Two subscriptions of one client: still the same identity.
        client.subscribe(2, "Message", json!({"n": 1})).await;
        anonymous.push(client);
    }
    let mut bob = server.connected(Some("r:bob")).await;
    bob.subscribe(1, "Message", json!({})).await;

    server.create(object("Message", "x", json!({"n": 1}))).await;
    for client in &mut anonymous {
        for _ in 0..2 {
            assert_eq!(client.recv().await["op"], "create");
        }
    }
    assert_eq!(bob.recv().await["op"], "create");
    let calls = hooks.calls_to("/event");
    assert_eq!(calls.len(), 2, "{calls:?}");
    let mut users: Vec<Value> = calls
        .iter()
        .map(|c| c.body["user"]["objectId"].clone())
        .collect();
    users.sort_by_key(ToString::to_string);
    assert_eq!(users, vec![json!("bob"), Value::Null]);
}

#[tokio::test]
async fn events_keep_their_order_under_a_slow_hook() {
    let (_hooks, server) = after_event_setup(
        |call| {
            // Earlier events answer later.
            let n = call.body["object"]["n"].as_u64().unwrap_or(0);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20 * (10 - n.min(10)))).await;
                (200, json!({"success": {"object": {"n": n, "seen": true}}}))
            })
        },
        "timeout = \"5s\"",
    )
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    for n in 0..10 {
        server
            .create(object("Message", &format!("m{n}"), json!({"n": n})))
            .await;
    }
    for n in 0..10 {
        let event = client.recv().await;
        assert_eq!(event["object"]["n"], n, "{event}");
        assert_eq!(event["object"]["seen"], true);
    }
}

#[tokio::test]
async fn a_hanging_hook_on_one_class_does_not_delay_another() {
    let (release, hooks, server) = hanging_after_event_setup("timeout = \"30s\"").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    client.subscribe(2, "Other", json!({})).await;
    server.create(object("Message", "slow", json!({}))).await;
    // The hook has the Message event before Other's is published.
    hooks.wait_for_a_call().await;
    let published = Instant::now();
    server.create(object("Other", "fast", json!({}))).await;
    let event = client.recv().await;
    assert_eq!(event["object"]["objectId"], "fast", "{event}");
    assert!(
        published.elapsed() < Duration::from_secs(2),
        "{:?}",
        published.elapsed()
    );
    release.notify_waiters();
    assert_eq!(client.recv().await["object"]["objectId"], "slow");
}

/// A hook that hangs for objects whose `hang` is true, past its 200 ms timeout.
async fn timing_out(policy: &str) -> (FakeHooks, TestServer, crate::support::Client) {
    let (hooks, server) = after_event_setup(
        |call| {
            let hang = call.body["object"]["hang"] == true;
            Box::pin(async move {
                if hang {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                (200, json!({"success": null}))
            })
        },
        &format!("timeout = \"200ms\"\non_failure = \"{policy}\""),
    )
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    server
        .create(object("Message", "hung", json!({"hang": true})))
        .await;
    server
        .create(object("Message", "next", json!({"hang": false})))
        .await;
    (hooks, server, client)
}

#[tokio::test]
async fn a_timeout_under_reject_sends_the_error_frame() {
    let (_hooks, server, mut client) = timing_out("reject").await;
    let frame = error_frame(&mut client).await;
    assert_eq!(frame["code"], 141);
    assert_eq!(frame["requestId"], 1);
    assert_eq!(frame["reconnect"], false);
    assert!(
        frame["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("afterLiveQueryEvent hook failed: no answer within")),
        "{frame}"
    );
    assert!(
        !frame.to_string().contains("127.0.0.1"),
        "no URL in errors: {frame}"
    );
    assert_eq!(client.recv().await["object"]["objectId"], "next");
    let timeout = "livequery_hook_calls_total{trigger=\"afterLiveQueryEvent\",outcome=\"timeout\"}";
    let ok = "livequery_hook_calls_total{trigger=\"afterLiveQueryEvent\",outcome=\"ok\"}";
    assert_eq!(server.metric(timeout).await, 1.0);
    assert_eq!(server.metric(ok).await, 1.0);
}

#[tokio::test]
async fn a_timeout_under_send_unmodified_sends_the_event() {
    let (_hooks, _server, mut client) = timing_out("send_unmodified").await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"]["objectId"]),
        (Some("create"), &json!("hung"))
    );
    assert_eq!(client.recv().await["object"]["objectId"], "next");
}

#[tokio::test]
async fn a_timeout_under_drop_sends_nothing() {
    let (_hooks, _server, mut client) = timing_out("drop").await;
    assert_eq!(client.recv().await["object"]["objectId"], "next");
}

#[tokio::test]
async fn a_failing_before_subscribe_under_send_unmodified_subscribes_and_5xx_counts_as_failed() {
    let hooks = FakeHooks::start(|_| answer(503, json!({"error": "overloaded"}))).await;
    let server = TestServer::start(&webhook(
        "beforeSubscribe",
        Some("Message"),
        &hooks.url("/sub"),
        "on_failure = \"send_unmodified\"",
    ))
    .await;
    let mut client = server.connected(None).await;
    // A 503 with an error body is still a rejection by the hook's own word.
    client
        .send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "Message", "where": {}}}))
        .await;
    assert_eq!(error_frame(&mut client).await["error"], "overloaded");

    let hooks = FakeHooks::start(|_| answer(502, Value::Null)).await;
    let server = TestServer::start(&webhook(
        "beforeSubscribe",
        Some("Message"),
        &hooks.url("/sub"),
        "on_failure = \"send_unmodified\"",
    ))
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    assert_eq!(
        server
            .metric("livequery_hook_calls_total{trigger=\"beforeSubscribe\",outcome=\"failed\"}")
            .await,
        1.0
    );
}

#[test]
fn hook_configuration_is_validated() {
    use livequery_server::config::Config;
    let base = "[parse]\napp_id = \"a\"\nmaster_key = \"k\"\n";
    for (bad, why) in [
        (
            "[[hooks.hook]]\ntrigger = \"afterSave\"\nurl = \"http://h/\"\n",
            "trigger",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeSubscribe\"\nurl = \"http://h/\"\n",
            "class_name",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nclass_name = \"M\"\nurl = \"http://h/\"\n",
            "class_name",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\n",
            "exactly one",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nurl = \"http://h/\"\nfunction = \"f\"\n",
            "exactly one",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nfunction = \"f\"\n",
            "server_url",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nurl = \"ftp://h/\"\n",
            "http",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nurl = \"http://h/\"\non_failure = \"drop\"\n",
            "drop",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nurl = \"http://h/\"\non_failure = \"maybe\"\n",
            "on_failure",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nurl = \"http://h/\"\ntimeout = \"0s\"\n",
            "timeout",
        ),
        (
            "[[hooks.hook]]\ntrigger = \"beforeConnect\"\nurl = \"http://h/\"\n[[hooks.hook]]\ntrigger = \"beforeConnect\"\nurl = \"http://i/\"\n",
            "second",
        ),
    ] {
        let err = Config::from_toml_layers(&[base, bad]).expect_err(bad);
        let text = format!("{err:#}");
        assert!(text.contains(why), "{bad}: {text}");
    }
    let config = Config::from_toml_layers(&[
        base,
        "[hooks]\nwebhook_key = \"whk\"\n[[hooks.hook]]\ntrigger = \"afterLiveQueryEvent\"\nclass_name = \"M\"\nurl = \"https://user:pw@h/x\"\non_failure = \"drop\"\n",
    ])
    .expect("valid");
    assert_eq!(config.hooks.hooks.len(), 1);
    assert_eq!(config.hooks.hooks[0].timeout, Duration::from_secs(2));
    let printed = config.to_redacted_toml();
    assert!(
        !printed.contains("whk") && !printed.contains("pw@"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_rejected_event_becomes_the_hooks_error_frame() {
    let (_hooks, server) = after_event_setup(
        |call| {
            if call.body["object"]["refuse"] == true {
                answer(
                    200,
                    json!({"error": {"code": 142, "message": "not for you"}}),
                )
            } else {
                webhook_success(Value::Null)
            }
        },
        "",
    )
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(5, "Message", json!({})).await;
    server
        .create(object("Message", "r", json!({"refuse": true})))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "code": 142, "error": "not for you", "reconnect": false, "requestId": 5})
    );
    server
        .create(object("Message", "a", json!({"refuse": false})))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "a");
}

#[tokio::test]
async fn no_event_follows_unsubscribed_while_its_hook_was_pending() {
    let (release, hooks, server) = hanging_after_event_setup("timeout = \"30s\"").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    client.subscribe(2, "Other", json!({})).await;
    server.create(object("Message", "late", json!({}))).await;
    hooks.wait_for_a_call().await;
    client
        .send(json!({"op": "unsubscribe", "requestId": 1}))
        .await;
    assert_eq!(client.recv().await["op"], "unsubscribed");
    release.notify_waiters();
    // Let the hook's answer arrive before the sentinel is published.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.create(object("Other", "sentinel", json!({}))).await;
    let frame = client.recv().await;
    assert_eq!(frame["object"]["objectId"], "sentinel", "{frame}");
}

#[tokio::test]
async fn a_full_hook_queue_applies_the_failure_policy_without_blocking_the_dispatcher() {
    let (release, _hooks, server) =
        hanging_after_event_setup("timeout = \"30s\"\non_failure = \"send_unmodified\"").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    client.subscribe(2, "Other", json!({})).await;
    // 16 events in flight and 1,024 queued fill the class's hook; the rest overflow.
    let total = 1100;
    let messages: Vec<Value> = (0..total)
        .map(
            |n| json!({"currentParseObject": object("Message", &format!("m{n}"), json!({"n": n}))}),
        )
        .collect();
    server.publish("afterSave", Value::Array(messages)).await;
    server.create(object("Other", "sentinel", json!({}))).await;
    // The overflowing events arrive unmodified while the hook is still blocked, and the
    // dispatcher went on to the next event.
    let mut overflowed = 0;
    loop {
        let frame = client.recv().await;
        if frame["object"]["objectId"] == "sentinel" {
            break;
        }
        assert_eq!(frame["op"], "create", "{frame}");
        assert!(
            frame["object"]["n"].as_u64().is_some_and(|n| n >= 1000),
            "{frame}"
        );
        overflowed += 1;
    }
    let full = server.metric("livequery_hook_queue_full_total").await;
    assert_eq!(f64::from(overflowed), full);
    assert!(overflowed >= 50, "{overflowed}");
    assert_eq!(
        server
            .metric(
                "livequery_hook_calls_total{trigger=\"afterLiveQueryEvent\",outcome=\"failed\"}"
            )
            .await,
        full
    );
    release.notify_waiters();
}
