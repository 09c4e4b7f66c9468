//! The Redis source against a real redis-server: parse-server's message format, clearCache,
//! and surviving Redis going away.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use livequery_server::Components;
use livequery_server::config::RedisConfig;
use livequery_server::identity::memory::MemoryIdentities;
use livequery_server::source::redis::RedisSource;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::support::{TestServer, object};

/// Starts redis-server on `port`. These tests only run where redis-server was found (or
/// `LIVEQUERY_TEST_REQUIRE_REDIS` is set, as scripts/test does after installing it);
/// elsewhere they are reported as ignored (`cfg(redis_tests)`, see build.rs). A
/// redis-server that cannot be started fails the test.
async fn redis_server(port: u16) -> Child {
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
    let components = Components::redis(
        RedisSource::new(&format!("redis://127.0.0.1:{port}"), "lqApp").expect("valid URL"),
        Arc::new(MemoryIdentities::new()),
    );
    let server = TestServer::start_components("", components, true).await;
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
    let components = Components::redis(
        RedisSource::new(&format!("redis://127.0.0.1:{port}"), "lqApp").expect("valid URL"),
        Arc::new(MemoryIdentities::new()),
    );
    let server = TestServer::start_components("", components, true).await;
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
    assert_eq!(
        (&left["op"], &left["requestId"], &left["object"]["objectId"]),
        (&json!("leave"), &json!(1), &json!("m1")),
        "{left}"
    );
    assert_eq!(left["object"]["room"], "x");
    let created = client.recv().await;
    assert_eq!(
        (
            &created["op"],
            &created["requestId"],
            &created["object"]["objectId"]
        ),
        (&json!("create"), &json!(2), &json!("d1")),
        "{created}"
    );
    assert_eq!(created["object"]["updatedAt"], "2026-11-22T09:13:04.224Z");
    let created = client.recv().await;
    assert_eq!(
        (
            &created["op"],
            &created["requestId"],
            &created["object"]["objectId"]
        ),
        (&json!("create"), &json!(1), &json!("m2")),
        "{created}"
    );
    assert_eq!(created["object"]["room"], "r");
}
