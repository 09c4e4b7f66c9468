//! The Redis source against a real redis-server: parse-server's message format, clearCache,
//! surviving Redis going away, and reading no faster than the dispatch (a burst waits in
//! Redis, not in livequery; Redis dropping a subscriber that fell behind is survived).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use livequery_server::Components;
use livequery_server::config::RedisConfig;
use livequery_server::identity::memory::MemoryIdentities;
use livequery_server::identity::{IdentityProvider, LookupError, ResolvedUser};
use livequery_server::source::redis::RedisSource;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{TestServer, object};

/// Starts redis-server on `port`. These tests only run where redis-server was found (or
/// `LIVEQUERY_TEST_REQUIRE_REDIS` is set, as scripts/test does after installing it);
/// elsewhere they are reported as ignored (`cfg(redis_tests)`, see build.rs). A
/// redis-server that cannot be started fails the test.
async fn redis_server(port: u16) -> Child {
    redis_server_with(port, &[]).await
}

/// Same, with more redis-server options.
async fn redis_server_with(port: u16, options: &[&str]) -> Child {
    let spawned = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(options)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = spawned.unwrap_or_else(|err| {
        panic!("redis-server is required: run scripts/stack-install ({err})")
    });
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server did not start");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn publish(port: u16, channel: &str, message: &serde_json::Value) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message.to_string())
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// A server fed by the Redis at `url` (channels prefixed `lqApp`), with no sessions.
async fn server_fed_by(url: &str) -> TestServer {
    let source = RedisSource::new(url, "lqApp").expect("valid URL");
    let components = Components::redis(source, Arc::new(MemoryIdentities::new()));
    TestServer::start_components("", components, true).await
}

async fn health(server: &TestServer) -> u16 {
    server
        .http("GET", "/health", None, None)
        .await
        .map(|(status, _)| status)
        .unwrap_or(0)
}

#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn parse_server_messages_from_redis_reach_subscribers_and_redis_outages_are_survived() {
    let port = free_port();
    let mut redis = redis_server(port).await;
    let memory = Arc::new(MemoryIdentities::new());
    memory.put_session("r:u", "u", None);
    let components = Components::redis(
        RedisSource::new(&format!("redis://127.0.0.1:{port}"), "lqApp").expect("valid URL"),
        memory.clone(),
    );
    let server = TestServer::start_components("", components, true).await;
    assert_eq!(health(&server).await, 200);
    let mut client = server.connected(Some("r:u")).await;
    client.subscribe(1, "Message", json!({"room": "r"})).await;

    // Exactly what parse-server 9.10 publishes (captured from parse-server 9.10 on Redis), with the prefix.
    let v1 = json!({"ACL": {"u": {"read": true}}, "room": "r", "score": 1, "createdAt": "2026-11-22T09:13:04.224Z", "updatedAt": "2026-11-22T09:13:04.224Z", "objectId": "m1", "__type": "Object", "className": "Message"});
    let clp = json!({"ACL": {"*": {"read": true, "write": true}}, "find": {"*": true}, "get": {"*": true}, "protectedFields": {"*": []}});
    publish(
        port,
        "lqAppafterSave",
        &json!({"currentParseObject": v1, "classLevelPermissions": clp}),
    )
    .await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), event["object"]["objectId"].as_str()),
        (Some("create"), Some("m1"))
    );
    assert!(event["object"].get("__type").is_none());
    let v2 = json!({"ACL": {"u": {"read": true}}, "room": "r", "score": 2, "createdAt": "2026-11-22T09:13:04.224Z", "updatedAt": "2026-11-22T09:13:05.000Z", "objectId": "m1", "__type": "Object", "className": "Message"});
    publish(
        port,
        "lqAppafterSave",
        &json!({"currentParseObject": v2, "originalParseObject": v1, "classLevelPermissions": clp}),
    )
    .await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["original"]["score"]),
        (Some("update"), &json!(1))
    );
    // Another app's channel is not ours.
    publish(
        port,
        "otherAppafterDelete",
        &json!({"currentParseObject": v2}),
    )
    .await;
    publish(
        port,
        "lqAppafterDelete",
        &json!({"currentParseObject": v2, "classLevelPermissions": clp}),
    )
    .await;
    assert_eq!(client.recv().await["op"], "delete");

    // clearCache: the user's roles are looked up again.
    memory.set_user_roles("u", vec!["Admin".into()]);
    publish(port, "lqAppclearCache", &json!({"userId": "u"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(port, "lqAppafterSave", &json!({"currentParseObject": object("Message", "m2", json!({"room": "r", "ACL": {"role:Admin": {"read": true}}}))})).await;
    assert_eq!(client.recv().await["object"]["objectId"], "m2");

    // Redis goes away: /health reports it; when it is back, events flow again.
    redis.kill().await.unwrap();
    let mut unhealthy = false;
    for _ in 0..200 {
        if health(&server).await == 503 {
            unhealthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unhealthy, "/health must report the lost source");
    assert_eq!(server.metric("livequery_source_connected").await, 0.0);
    let _redis = redis_server(port).await;
    server.wait_healthy().await;
    assert!(server.metric("livequery_source_connects_total").await >= 2.0);
    publish(
        port,
        "lqAppafterSave",
        &json!({"currentParseObject": object("Message", "m3", json!({"room": "r"}))}),
    )
    .await;
    assert_eq!(client.recv().await["object"]["objectId"], "m3");
}

/// The link check runs while subscribed: Redis answers a subscribed RESP2 connection's PING
/// with `["pong", ""]`, which must not count as a failure (a failed check reconnects, and
/// whatever was published meanwhile is lost).
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn link_checks_while_subscribed_do_not_reconnect() {
    let port = free_port();
    let _redis = redis_server(port).await;
    let components = Components::redis(
        RedisSource::new(&format!("redis://127.0.0.1:{port}"), "lqApp")
            .expect("valid URL")
            .with_ping_interval(Duration::from_millis(50)),
        Arc::new(MemoryIdentities::new()),
    );
    let server = TestServer::start_components("", components, true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r"})).await;
    // Twenty link checks.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        server.metric("livequery_source_connects_total").await,
        1.0,
        "a successful link check must not reconnect"
    );
    publish(
        port,
        "lqAppafterSave",
        &json!({"currentParseObject": object("Message", "m1", json!({"room": "r"}))}),
    )
    .await;
    assert_eq!(client.recv().await["object"]["objectId"], "m1");
    drop(client);
    server.stop().await;
}

/// A burst published faster than it is dispatched reaches the subscriber whole and in
/// order: the source delivers the messages Redis already sent in runs, and none may be
/// dropped at a run's end.
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_burst_from_redis_arrives_whole_and_in_order() {
    const BURST: usize = 1500;
    let port = free_port();
    let _redis = redis_server(port).await;
    let server = server_fed_by(&format!("redis://127.0.0.1:{port}")).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r"})).await;
    let redis = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for i in 0..BURST {
        let message = json!({"currentParseObject": object("Message", &format!("m{i}"), json!({"room": "r", "seq": i}))});
        pipe.cmd("PUBLISH")
            .arg("lqAppafterSave")
            .arg(message.to_string());
    }
    let receivers: Vec<i64> = pipe.query_async(&mut connection).await.unwrap();
    assert!(receivers.iter().all(|&r| r == 1));
    for i in 0..BURST {
        let event = client.recv().await;
        assert_eq!(event["object"]["seq"], json!(i), "{event}");
    }
    drop(client);
    server.stop().await;
}

/// Starts a Redis Sentinel on `port` watching the master on `master_port` as `lqmaster`.
async fn sentinel(port: u16, master_port: u16) -> (Child, std::path::PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("livequery-sentinel-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Sentinel rewrites its configuration file: it must be writable.
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor lqmaster 127.0.0.1 {master_port} 1\n",
            dir.display()
        ),
    )
    .expect("sentinel.conf");
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| {
            panic!("redis-server is required: run scripts/stack-install ({err})")
        });
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, dir);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis sentinel did not start");
}

#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn the_master_is_found_through_redis_sentinel() {
    let (port, sentinel_port) = (free_port(), free_port());
    let _redis = redis_server(port).await;
    let (_sentinel, dir) = sentinel(sentinel_port, port).await;
    let source = RedisSource::from_config(&RedisConfig {
        // Not used with Sentinel: nothing listens there.
        url: "redis://127.0.0.1:1".to_owned(),
        channel_prefix: "lqApp".to_owned(),
        username: String::new(),
        password: String::new(),
        tls_ca_file: String::new(),
        tls_cert_file: String::new(),
        tls_key_file: String::new(),
        sentinels: vec![format!("redis://127.0.0.1:{sentinel_port}")],
        sentinel_master: "lqmaster".to_owned(),
    })
    .expect("valid");
    let components = Components::redis(source, Arc::new(MemoryIdentities::new()));
    let server = TestServer::start_components("", components, true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r"})).await;
    let mut message = object("Message", "s1", json!({"room": "r"}));
    message["__type"] = json!("Object");
    publish(
        port,
        "lqAppafterSave",
        &json!({"currentParseObject": message}),
    )
    .await;
    let event = client.recv().await;
    assert_eq!(
        (event["op"].as_str(), event["object"]["objectId"].as_str()),
        (Some("create"), Some("s1"))
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Sessions of [`MemoryIdentities`], looked up only while the gate is open: a closed gate
/// holds up whoever waits for a lookup — the Redis source, on a `clearCache` message.
struct GatedIdentities {
    memory: MemoryIdentities,
    open: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl IdentityProvider for GatedIdentities {
    async fn resolve_session(&self, token: &str) -> Result<Option<ResolvedUser>, LookupError> {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        self.memory.resolve_session(token).await
    }

    async fn class_permissions(&self, class_name: &str) -> Result<Option<Value>, LookupError> {
        self.memory.class_permissions(class_name).await
    }
}

/// A server on the Redis at `port` whose source has `max_message_bytes` and is held up while
/// the returned gate is closed (after a `clearCache` for user `u`), with a client of user
/// `u` subscribed to `{"room": "r"}`.
async fn gated_server(
    port: u16,
    max_message_bytes: usize,
) -> (
    TestServer,
    crate::support::Client,
    Arc<GatedIdentities>,
    livequery_server::source::redis::ReadBufferPeak,
) {
    let memory = MemoryIdentities::new();
    memory.put_session("r:u", "u", None);
    let identities = Arc::new(GatedIdentities {
        memory,
        open: tokio::sync::watch::Sender::new(true),
    });
    let source = RedisSource::new(&format!("redis://127.0.0.1:{port}"), "lqApp")
        .expect("valid URL")
        .with_max_message_bytes(max_message_bytes);
    let peak = source.read_buffer_peak();
    let components = Components::redis(source, identities.clone());
    // Lookups may wait for the gate for as long as the test needs.
    let server =
        TestServer::start_components("[auth]\nlookup_timeout = \"120s\"\n", components, true).await;
    let mut client = server.connected(Some("r:u")).await;
    client.subscribe(1, "Message", json!({"room": "r"})).await;
    (server, client, identities, peak)
}

/// Publishes `count` messages of about `padding` bytes in one pipeline: every
/// `MATCH_EVERY`th is in room `r` (and reaches the test's client), the others in room `x`.
async fn publish_burst(port: u16, count: usize, padding: usize) {
    let redis = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
    let pad = "p".repeat(padding);
    for start in (0..count).step_by(500) {
        let mut pipe = redis::pipe();
        for i in start..(start + 500).min(count) {
            let room = if i % MATCH_EVERY == 0 { "r" } else { "x" };
            let message = json!({"currentParseObject": object("Message", &format!("m{i}"), json!({"room": room, "seq": i, "pad": pad}))});
            pipe.cmd("PUBLISH")
                .arg("lqAppafterSave")
                .arg(message.to_string());
        }
        let _: Vec<i64> = pipe.query_async(&mut connection).await.unwrap();
    }
}

const MATCH_EVERY: usize = 100;

/// The bytes Redis holds in its output buffer for the (one) pub/sub subscriber.
async fn subscriber_output_buffer(port: u16) -> Option<u64> {
    let redis = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = redis.get_multiplexed_async_connection().await.unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut connection)
        .await
        .unwrap();
    clients.lines().next().and_then(|line| {
        line.split(' ')
            .find_map(|field| field.strip_prefix("omem="))
            .and_then(|omem| omem.parse().ok())
    })
}

/// While the dispatch is held up, a burst far larger than the source's bound waits in Redis
/// (its output buffer for livequery grows) while livequery's read buffer stays within the
/// bound; once the dispatch resumes, every message is delivered, in order. (A driver that
/// reads whatever Redis sends into a queue of its own leaves Redis's buffer empty.)
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_burst_waits_in_redis_while_the_dispatch_is_held_up_and_arrives_whole() {
    const BURST: usize = 3000;
    const PADDING: usize = 8000;
    const BOUND: usize = 64 * 1024;
    let port = free_port();
    // No output buffer limit: Redis keeps whatever livequery has not read yet.
    let _redis = redis_server_with(port, &["--client-output-buffer-limit", "pubsub 0 0 0"]).await;
    let (server, mut client, identities, peak) = gated_server(port, BOUND).await;

    identities.open.send_replace(false);
    publish(port, "lqAppclearCache", &json!({"userId": "u"})).await;
    publish_burst(port, BURST, PADDING).await;
    let burst_bytes = (BURST * PADDING) as u64;
    let mut waiting_in_redis = 0;
    for _ in 0..100 {
        waiting_in_redis = subscriber_output_buffer(port).await.unwrap_or(0);
        if waiting_in_redis >= burst_bytes / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        waiting_in_redis >= burst_bytes / 2,
        "only {waiting_in_redis} of the burst's {burst_bytes} bytes wait in Redis: livequery read the rest"
    );
    assert!(
        peak.bytes() <= BOUND + 2048,
        "the read buffer reached {} bytes",
        peak.bytes()
    );

    identities.open.send_replace(true);
    for i in (0..BURST).step_by(MATCH_EVERY) {
        let event = client.recv().await;
        assert_eq!(event["object"]["seq"], json!(i), "{event}");
    }
    for _ in 0..200 {
        if server.metric("livequery_events_in_total").await >= BURST as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.metric("livequery_events_in_total").await,
        BURST as f64
    );
    assert_eq!(server.metric("livequery_source_connects_total").await, 1.0);
    assert!(peak.bytes() <= BOUND + 2048, "{}", peak.bytes());
    drop(client);
    server.stop().await;
}

/// When livequery falls further behind than Redis's `client-output-buffer-limit pubsub`,
/// Redis drops the connection; the source reconnects and events flow again.
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_subscriber_redis_dropped_for_falling_behind_reconnects() {
    let port = free_port();
    let _redis = redis_server_with(port, &["--client-output-buffer-limit", "pubsub 1mb 0 0"]).await;
    let (server, mut client, identities, _) = gated_server(port, 64 * 1024).await;

    identities.open.send_replace(false);
    publish(port, "lqAppclearCache", &json!({"userId": "u"})).await;
    publish_burst(port, 3000, 8000).await;
    identities.open.send_replace(true);
    let mut reconnected = false;
    for _ in 0..200 {
        if server.metric("livequery_source_connects_total").await >= 2.0 {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reconnected, "the source did not reconnect");
    server.wait_healthy().await;
    publish(
        port,
        "lqAppafterSave",
        &json!({"currentParseObject": object("Message", "after", json!({"room": "r"}))}),
    )
    .await;
    // The burst's first messages (those read before Redis gave up), then this one.
    loop {
        let event = client.recv().await;
        if event["object"]["objectId"] == "after" {
            break;
        }
        assert!(event["object"]["seq"].is_u64(), "{event}");
    }
    drop(client);
    server.stop().await;
}

/// A message larger than the source's bound is refused (the connection is dropped, not the
/// buffer grown) and the source reconnects.
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_message_past_the_bound_is_refused_and_the_source_reconnects() {
    const BOUND: usize = 100 * 1024;
    let port = free_port();
    let _redis = redis_server(port).await;
    let (server, mut client, _, peak) = gated_server(port, BOUND).await;
    let big = object(
        "Message",
        "big",
        json!({"room": "r", "pad": "p".repeat(2 * BOUND)}),
    );
    publish(port, "lqAppafterSave", &json!({"currentParseObject": big})).await;
    let mut reconnected = false;
    for _ in 0..200 {
        if server.metric("livequery_source_connects_total").await >= 2.0 {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reconnected, "the source did not reconnect");
    assert!(peak.bytes() <= BOUND + 2048, "{}", peak.bytes());
    server.wait_healthy().await;
    // Just under the bound: read whole.
    let fits = object(
        "Message",
        "fits",
        json!({"room": "r", "pad": "p".repeat(BOUND - 200)}),
    );
    publish(port, "lqAppafterSave", &json!({"currentParseObject": fits})).await;
    assert_eq!(client.recv().await["object"]["objectId"], "fits");
    assert!(peak.bytes() <= BOUND + 2048, "{}", peak.bytes());
    drop(client);
    server.stop().await;
}

/// A Redis on a Unix socket (`redis+unix://` / `unix://`).
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn a_redis_on_a_unix_socket_feeds_subscribers() {
    let port = free_port();
    let socket = std::env::temp_dir().join(format!(
        "livequery-redis-{}-{port}.sock",
        std::process::id()
    ));
    let path = socket.display().to_string();
    let _redis = redis_server_with(port, &["--unixsocket", &path]).await;
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for url in [format!("redis+unix://{path}"), format!("unix://{path}")] {
        let server = server_fed_by(&url).await;
        let mut client = server.connected(None).await;
        client.subscribe(1, "Message", json!({"room": "r"})).await;
        publish(
            port,
            "lqAppafterSave",
            &json!({"currentParseObject": object("Message", "u1", json!({"room": "r"}))}),
        )
        .await;
        assert_eq!(client.recv().await["object"]["objectId"], "u1", "{url}");
        drop(client);
        server.stop().await;
    }
    let _ = std::fs::remove_file(socket);
}

/// The feed's messages are read only as far as the subscriptions need: those that concern
/// nobody (another room, a class nobody watches, text that is not valid JSON past what
/// routing reads) are dropped, the others arrive whole and in order — found by the
/// original when only the original matches, and by `updatedAt` dated from `createdAt`
/// when the message has none.
#[tokio::test]
#[cfg_attr(
    not(redis_tests),
    ignore = "needs redis-server: run scripts/stack-install"
)]
async fn feed_messages_are_read_as_far_as_subscriptions_need() {
    let port = free_port();
    let _redis = redis_server(port).await;
    let server = server_fed_by(&format!("redis://127.0.0.1:{port}")).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r"})).await;
    let since = json!({"$gte": {"__type": "Date", "iso": "2026-01-01T00:00:00.000Z"}});
    client
        .subscribe(2, "Dated", json!({"updatedAt": since}))
        .await;
    let clp = json!({"find": {"*": true}, "get": {"*": true}, "protectedFields": {"*": []}});
    let save = |current: serde_json::Value, original: Option<serde_json::Value>| {
        let mut message = json!({"currentParseObject": current, "classLevelPermissions": clp});
        if let Some(original) = original {
            message["originalParseObject"] = original;
        }
        message
    };
    let channel = "lqAppafterSave";
    publish(
        port,
        channel,
        &save(object("Message", "x1", json!({"room": "x"})), None),
    )
    .await;
    publish(
        port,
        channel,
        &save(object("Other", "o1", json!({"room": "r"})), None),
    )
    .await;
    let client_redis = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = client_redis
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(r#"{"currentParseObject": {"className": "Message", "objectId": "bad", "room": "r", "note": "\ud800"}}"#)
        .query_async(&mut connection)
        .await
        .unwrap();
    publish(
        port,
        channel,
        &save(
            object("Message", "m1", json!({"room": "x"})),
            Some(object("Message", "m1", json!({"room": "r"}))),
        ),
    )
    .await;
    let dated =
        json!({"className": "Dated", "objectId": "d1", "createdAt": "2026-11-22T09:13:04.224Z"});
    publish(port, channel, &save(dated, None)).await;
    publish(
        port,
        channel,
        &save(object("Message", "m2", json!({"room": "r"})), None),
    )
    .await;

    let left = client.recv().await;
    assert_event(&left, "leave", 1, "m1");
    assert_eq!(left["object"]["room"], "x");
    let created = client.recv().await;
    assert_event(&created, "create", 2, "d1");
    assert_eq!(created["object"]["updatedAt"], "2026-11-22T09:13:04.224Z");
    let created = client.recv().await;
    assert_event(&created, "create", 1, "m2");
    assert_eq!(created["object"]["room"], "r");
}

/// Asserts that `event` is an `op` event of subscription `request_id` about `object_id`.
fn assert_event(event: &Value, op: &str, request_id: u32, object_id: &str) {
    assert_eq!(
        (
            &event["op"],
            &event["requestId"],
            &event["object"]["objectId"]
        ),
        (&json!(op), &json!(request_id), &json!(object_id)),
        "{event}"
    );
}
