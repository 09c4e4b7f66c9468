//! Attacks on authorization and on resources, as a hostile client (or a curious reader of
//! the logs) would try them. Each test failed before the authorization gate; the MongoDB
//! subquery and class-set cases are in `mongo.rs`, the REST lookup's URL in the server's
//! unit tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use livequery_server::Components;
use livequery_server::config::Config;
use livequery_server::identity::memory::MemoryIdentities;
use livequery_server::identity::{IdentityProvider, LookupError, ResolvedUser};
use livequery_server::source::embedded::EmbeddedSource;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Client, MASTER_KEY, TestServer, object, test_config};

fn denied(request_id: u32) -> Value {
    json!({"op": "error", "error": "Permission denied", "code": 119, "reconnect": false, "requestId": request_id})
}

fn subscribe(request_id: u32, class_name: &str, where_: Value) -> Value {
    json!({"op": "subscribe", "requestId": request_id, "query": {"className": class_name, "where": where_}})
}

/// The next frame, which must be an event for `request_id`; returns its object.
async fn event_for(client: &mut Client, request_id: u32) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["requestId"], request_id, "{frame}");
    frame["object"].clone()
}

/// Anonymous clients and other users could rebuild a user's session token with prefix
/// regexes (one save of the user publishes it), and probe `password`/`authData`: refused
/// like any protected field, in `where` at any depth and in `watch`.
#[tokio::test]
async fn user_secrets_cannot_steer_a_subscription() {
    let server = TestServer::start("").await;
    server.session("r:eve", "eve", &[]).await;
    let mut anon = server.connected(None).await;
    let mut eve = server.connected(Some("r:eve")).await;
    let probes = [
        json!({"sessionToken": {"$regex": "^r:a"}}),
        json!({"sessionToken": {"$exists": true}}),
        json!({"$or": [{"username": "alice"}, {"sessionToken": {"$regex": "^r:0"}}]}),
        json!({"$and": [{"$nor": [{"password": "hunter2"}]}]}),
        json!({"authData.anonymous.id": {"$regex": "^a"}}),
        json!({"authData": {"$exists": true}}),
    ];
    for (i, where_) in probes.iter().enumerate() {
        let id = i as u32 + 1;
        anon.send(subscribe(id, "_User", where_.clone())).await;
        assert_eq!(anon.recv().await, denied(id), "anonymous: {where_}");
        eve.send(subscribe(id, "_User", where_.clone())).await;
        assert_eq!(eve.recv().await, denied(id), "another user: {where_}");
    }
    for watch in [
        "sessionToken",
        "authData",
        "authData.facebook",
        "_hashed_password",
    ] {
        anon.send(json!({"op": "subscribe", "requestId": 50, "query": {"className": "_User", "where": {}, "watch": [watch]}}))
            .await;
        assert_eq!(anon.recv().await, denied(50), "watch {watch}");
    }
    // The user itself may name its own authData (never its token).
    eve.subscribe(
        60,
        "_User",
        json!({"objectId": "eve", "authData.x": {"$exists": false}}),
    )
    .await;
    eve.send(subscribe(
        61,
        "_User",
        json!({"objectId": "eve", "sessionToken": "r:eve"}),
    ))
    .await;
    assert_eq!(eve.recv().await, denied(61));
}

/// Permissions that only arrive with events (no `PUT /schemas`, or the Redis source
/// without `parse.server_url`) used to be replaced by the provider's "nothing known" after
/// `cache_timeout`, and a protected field became queryable.
#[tokio::test]
async fn event_permissions_outlive_a_provider_that_knows_nothing() {
    let server = TestServer::start("[auth]\ncache_timeout = \"100ms\"").await;
    let clp = json!({"find": {"*": true}, "protectedFields": {"*": ["secret"]}});
    server
        .create_with_clp(object("P", "seed", json!({"secret": "s0"})), clp.clone())
        .await;
    let mut client = server.connected(None).await;
    client
        .send(subscribe(1, "P", json!({"secret": {"$regex": "^a"}})))
        .await;
    assert_eq!(client.recv().await, denied(1));
    // Several cache periods: the refresher asks the provider, which knows nothing of P.
    tokio::time::sleep(Duration::from_millis(450)).await;
    client
        .send(subscribe(2, "P", json!({"secret": {"$regex": "^a"}})))
        .await;
    assert_eq!(client.recv().await, denied(2));
}

/// A subscription accepted before the permissions that protect its field were known (or
/// while its reader was entitled) never lets that field decide what it receives.
#[tokio::test]
async fn an_accepted_where_on_a_field_hidden_later_decides_nothing() {
    let server = TestServer::start("").await;
    server
        .schema(
            "P",
            json!({"find": {"*": true}, "protectedFields": {"*": ["secret"], "role:Staff": []}}),
        )
        .await;
    server.session("r:s", "s", &["Staff"]).await;
    let mut staff = server.connected(Some("r:s")).await;
    // Entitled: Staff sees `secret`, so it may query it.
    staff.subscribe(1, "P", json!({"secret": "x"})).await;
    staff.subscribe(2, "P", json!({})).await;
    server
        .create(object("P", "before", json!({"secret": "x"})))
        .await;
    // One event, two subscriptions: their frames come in either order.
    let mut frames = [staff.recv().await, staff.recv().await];
    frames.sort_by_key(|f| f["requestId"].as_u64());
    assert_eq!(frames[0]["requestId"], 1);
    assert_eq!(frames[0]["object"]["secret"], "x");
    assert_eq!(frames[1]["requestId"], 2);

    // The role is lost: `secret` is now hidden from this reader.
    let (status, _) = server
        .http(
            "PUT",
            "/livequery/v1/users/s/roles",
            Some(&json!({"roles": []})),
            Some(MASTER_KEY),
        )
        .await
        .expect("roles");
    assert_eq!(status, 200);
    server
        .create(object("P", "after", json!({"secret": "x"})))
        .await;
    server.create(object("P", "sentinel", json!({}))).await;
    // Everything up to the sentinel: subscription 1 must have got nothing.
    let mut seen = Vec::new();
    loop {
        let frame = staff.recv().await;
        let done = frame["object"]["objectId"] == "sentinel";
        seen.push(frame);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().all(|f| f["requestId"] == 2),
        "the where on a now hidden field still decided: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0]["object"].get("secret").is_none(), "{seen:?}");
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"hidden_field\"}")
            .await,
        1.0
    );
}

/// An anonymous client subscribing to parse-server's internal classes.
#[tokio::test]
async fn internal_classes_are_for_master_only() {
    let server =
        TestServer::start("[parse]\nkey_pairs = { javascriptKey = \"jsk\", masterKey = \"mk\" }")
            .await;
    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "a", "javascriptKey": "jsk"}))
        .await;
    client.recv().await;
    for (i, class) in [
        "_Installation",
        "_PushStatus",
        "_JobStatus",
        "_Idempotency",
        "_GlobalConfig",
        "_Audience",
    ]
    .iter()
    .enumerate()
    {
        let id = i as u32 + 1;
        client.send(subscribe(id, class, json!({}))).await;
        assert_eq!(client.recv().await, denied(id), "{class}");
    }
    let mut master = server.client().await;
    master
        .send(json!({"op": "connect", "applicationId": "a", "masterKey": "mk"}))
        .await;
    master.recv().await;
    master.subscribe(1, "_Installation", json!({})).await;
    server
        .create(object(
            "_Installation",
            "i1",
            json!({"deviceToken": "t", "installationId": "x"}),
        ))
        .await;
    assert_eq!(event_for(&mut master, 1).await["deviceToken"], "t");
}

/// One socket, many subscribes with huge operands: refused by the operand cap, and by the
/// connection's budget; the connection and its other subscriptions keep working.
#[tokio::test]
async fn huge_operands_and_many_large_queries_are_refused() {
    let server = TestServer::start(
        "[limits]\nmax_subscription_bytes = 6000000\nmax_message_bytes = 4194304",
    )
    .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "M", json!({"kind": "canary"})).await;

    // Attack 6: `$in` of many integers.
    let huge: Vec<u32> = (0..500_000).collect();
    client
        .send(subscribe(2, "M", json!({"n": {"$in": huge}})))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"op": "error", "error": "bad $in value: 500000 items, at most 10000 are allowed", "code": 102, "reconnect": false, "requestId": 2})
    );
    // Attack 7: `$nin` of 100,000 numbers.
    let many: Vec<u32> = (0..100_000).collect();
    client
        .send(subscribe(3, "M", json!({"tags": {"$nin": many}})))
        .await;
    assert_eq!(client.recv().await["code"], 102);

    // Within the cap, until the budget is spent.
    let large: Vec<u32> = (0..10_000).collect();
    let mut accepted = Vec::new();
    for id in 10..40u32 {
        client
            .send(subscribe(id, "M", json!({"n": {"$in": large}, "id": id})))
            .await;
        let reply = client.recv().await;
        if reply["op"] == "subscribed" {
            accepted.push(id);
            continue;
        }
        assert_eq!(reply["code"], 155, "{reply}");
        assert_eq!(reply["requestId"], id);
        assert!(
            reply["error"]
                .as_str()
                .is_some_and(|e| e.contains("would hold more than 6000000 bytes")),
            "{reply}"
        );
        break;
    }
    assert!(
        !accepted.is_empty() && accepted.len() < 29,
        "the budget ends the series: {accepted:?}"
    );
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"subscription_budget\"}")
            .await,
        1.0
    );
    // Unsubscribing frees budget.
    let freed = accepted[0];
    client
        .send(json!({"op": "unsubscribe", "requestId": freed}))
        .await;
    assert_eq!(client.recv().await["op"], "unsubscribed");
    client
        .subscribe_with(subscribe(99, "M", json!({"n": {"$in": large}})))
        .await;
    // Everything else still works, large set operands included (hashed).
    server
        .create(object("M", "c", json!({"kind": "canary"})))
        .await;
    assert_eq!(event_for(&mut client, 1).await["objectId"], "c");
    server
        .create(object("M", "t", json!({"n": [20_000, 9_999]})))
        .await;
    assert_eq!(event_for(&mut client, 99).await["objectId"], "t");
}

/// Counts lookups; `r:valid` is user `v`, every other token is unknown.
#[derive(Debug, Default)]
struct CountingBackend {
    lookups: AtomicUsize,
}

#[async_trait]
impl IdentityProvider for CountingBackend {
    async fn resolve_session(&self, token: &str) -> Result<Option<ResolvedUser>, LookupError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Ok((token == "r:valid").then(|| ResolvedUser {
            user_id: "v".into(),
            roles: vec![],
        }))
    }

    async fn class_permissions(&self, _class_name: &str) -> Result<Option<Value>, LookupError> {
        Ok(None)
    }
}

/// Subscriptions with random invalid tokens, then idle: each invalid token used to be
/// looked up again every half `cache_timeout`, forever.
#[tokio::test]
async fn invalid_tokens_cost_one_lookup_per_cache_period_at_most() {
    let backend = Arc::new(CountingBackend::default());
    let embedded = Arc::new(EmbeddedSource::new(Arc::new(MemoryIdentities::new())));
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
    let mut client = server.connected(None).await;
    for id in 1..=20u32 {
        client
            .subscribe_with(json!({"op": "subscribe", "requestId": id, "query": {"className": "M", "where": {}}, "sessionToken": format!("r:bogus-{id}")}))
            .await;
    }
    client
        .subscribe_with(json!({"op": "subscribe", "requestId": 21, "query": {"className": "M", "where": {}}, "sessionToken": "r:valid"}))
        .await;
    assert_eq!(backend.lookups.load(Ordering::SeqCst), 21);
    // Presenting the same invalid tokens again within cache_timeout: answered from the
    // negative cache.
    for id in 1..=20u32 {
        client
            .subscribe_with(json!({"op": "subscribe", "requestId": id + 100, "query": {"className": "M", "where": {}}, "sessionToken": format!("r:bogus-{id}")}))
            .await;
    }
    assert_eq!(backend.lookups.load(Ordering::SeqCst), 21);
    // Three cache periods idle: only the valid identity is refreshed (every half period).
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let lookups = backend.lookups.load(Ordering::SeqCst);
    assert!(
        (22..=21 + 8).contains(&lookups),
        "{lookups} lookups: invalid tokens must not be refreshed"
    );
}

/// Thousands of idle sockets on the client port: the admin port still answers `/health`
/// and accepts events.
#[tokio::test]
async fn operators_keep_their_own_port_when_clients_take_every_connection() {
    let config = test_config(&[
        "[limits]\nmax_connections = 20\n[server]\nadmin_listen = \"127.0.0.1:0\"\n",
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = listener.local_addr().expect("addr");
    let admin_addr = admin.local_addr().expect("admin addr");
    let components = Components::embedded(Arc::new(MemoryIdentities::new()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = livequery_server::Server::new(Arc::new(config), listener, components)
        .with_admin_listener(admin);
    let handle = tokio::spawn(server.run(shutdown.clone()));
    let admin_server = TestServer {
        addr: admin_addr,
        shutdown: shutdown.clone(),
        handle: Some(handle),
    };
    admin_server.wait_healthy().await;
    let client_server = TestServer {
        addr,
        shutdown: shutdown.clone(),
        handle: None,
    };
    let mut subscriber = client_server.connected(None).await;
    subscriber.subscribe(1, "M", json!({})).await;
    // Idle sockets that never send a request: every permit of the client port and more.
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(socket) = TcpStream::connect(addr).await {
            idle.push(socket);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = admin_server
        .http("GET", "/health", None, None)
        .await
        .expect("health on the admin port");
    assert_eq!(status, 200);
    admin_server
        .create(object("M", "still-flowing", json!({})))
        .await;
    assert_eq!(
        event_for(&mut subscriber, 1).await["objectId"],
        "still-flowing"
    );
    let (status, _) = admin_server
        .http("GET", "/metrics", None, None)
        .await
        .expect("metrics on the admin port");
    assert_eq!(status, 200);
    drop(idle);
    // With an admin port, operations are not served on the client port (once the idle
    // sockets' permits are back).
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(reply) = client_server.http("GET", "/metrics", None, None).await {
            answer = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.map(|(status, _)| status), Some(404));
    let (status, _) = client_server
        .http(
            "POST",
            "/livequery/v1/publish/afterSave",
            Some(&json!({"currentParseObject": object("M", "x", json!({}))})),
            Some(MASTER_KEY),
        )
        .await
        .expect("client port");
    assert_eq!(status, 404);
}

/// Pointer permissions and `userField:` groups granted to a pointer to another class, or to
/// a bare `{objectId}` carrying the user's id.
#[tokio::test]
async fn pointer_permissions_need_a_user_pointer() {
    let server = TestServer::start("").await;
    server.session("r:alice", "alice", &[]).await;
    let clp = json!({"find": {}, "readUserFields": ["owner"], "protectedFields": {"*": ["secret"], "userField:owner": []}});
    server.schema("Doc", clp.clone()).await;
    let mut alice = server.connected(Some("r:alice")).await;
    alice.subscribe(1, "Doc", json!({})).await;
    for (id, owner) in [
        (
            "team",
            json!({"__type": "Pointer", "className": "Team", "objectId": "alice"}),
        ),
        ("bare", json!({"objectId": "alice"})),
        ("string", json!("alice")),
        (
            "mine",
            json!({"__type": "Pointer", "className": "_User", "objectId": "alice"}),
        ),
    ] {
        server
            .create_with_clp(
                object("Doc", id, json!({"owner": owner, "secret": id})),
                clp.clone(),
            )
            .await;
    }
    let seen = event_for(&mut alice, 1).await;
    assert_eq!(seen["objectId"], "mine");
    assert_eq!(
        seen["secret"], "mine",
        "the userField: group applies to her own pointer"
    );
}

/// Two different clauses that differ only in the order of an array inside an equality
/// operand shared one evaluation (the canonical form sorted any array under a `$in` key).
#[tokio::test]
async fn array_order_inside_values_is_not_a_set() {
    let server = TestServer::start("").await;
    let mut a = server.connected(None).await;
    let mut b = server.connected(None).await;
    a.subscribe(1, "M", json!({"f": {"$eq": {"$in": [1, 2]}}}))
        .await;
    b.subscribe(1, "M", json!({"f": {"$eq": {"$in": [2, 1]}}}))
        .await;
    b.subscribe(2, "M", json!({"canary": true})).await;
    server
        .create(object("M", "o", json!({"f": {"$in": [1, 2]}})))
        .await;
    server
        .create(object("M", "c", json!({"canary": true})))
        .await;
    assert_eq!(event_for(&mut a, 1).await["objectId"], "o");
    assert_eq!(event_for(&mut b, 2).await["objectId"], "c");
}

/// The configuration refuses an ingest API on a public address without a master key.
#[test]
fn a_public_ingest_api_needs_a_master_key_of_its_own() {
    let public = "[server]\nlisten = \"0.0.0.0:1337\"\n";
    let err = Config::from_toml_layers(&[public]).expect_err("refused");
    assert!(format!("{err:#}").contains("parse.master_key"), "{err:#}");
}
