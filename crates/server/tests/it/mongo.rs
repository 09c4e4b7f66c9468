//! The MongoDB source end to end: a simulated replica set (`mongo_sim`) → change stream →
//! transform → auth from MongoDB → dispatch → WebSocket frames, over real sockets.

use std::path::PathBuf;

use bson::{Bson, DateTime, Document, doc};
use serde_json::{Value, json};

use livequery_server::source::mongo::store::StreamMode;

use crate::mongo_sim::{SimMongo, WatchRecord};
use crate::support::{Client, TestServer};

const T0: i64 = 1_795_338_840_000;
const T0_ISO: &str = "2026-11-22T09:14:00.000Z";

/// A stored Parse object: `_id`, timestamps, then `fields`.
fn stored(id: &str, fields: Document) -> Document {
    let mut document = doc! {"_id": id, "_created_at": DateTime::from_millis(T0), "_updated_at": DateTime::from_millis(T0)};
    document.extend(fields);
    document
}

/// A `_SCHEMA` document with `fields` and, when given, class-level permissions.
fn schema(class_name: &str, fields: Document, permissions: Option<Document>) -> Document {
    let mut document = doc! {"_id": class_name, "objectId": "string", "createdAt": "date", "updatedAt": "date", "ACL": "object"};
    document.extend(fields);
    if let Some(permissions) = permissions {
        document.insert("_metadata", doc! {"class_permissions": permissions});
    }
    document
}

fn public_read() -> Document {
    doc! {"find": {"*": true}, "get": {"*": true}, "count": {"*": true}, "create": {"*": true}, "update": {"*": true}, "delete": {"*": true}, "addField": {"*": true}}
}

/// A database with a `Message` class (public permissions) and nothing else.
fn database() -> SimMongo {
    let sim = SimMongo::new();
    sim.insert(
        "_SCHEMA",
        schema(
            "Message",
            doc! {"room": "string", "score": "number", "author": "*_User"},
            Some(public_read()),
        ),
    );
    sim
}

/// The next event frame's op and objectId.
async fn next_event(client: &mut Client) -> (String, String) {
    let frame = client.recv().await;
    let op = frame["op"]
        .as_str()
        .unwrap_or_else(|| panic!("not an event: {frame}"))
        .to_owned();
    let id = frame["object"]["objectId"]
        .as_str()
        .unwrap_or_else(|| panic!("no object: {frame}"))
        .to_owned();
    (op, id)
}

fn temp_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("livequery-test-{}-{name}", uuid::Uuid::new_v4()));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn change_stream_events_reach_subscribers_as_parse_events() {
    let sim = database();
    sim.insert("Message", stored("seed", doc! {"room": "lobby"}));
    let server = TestServer::start_mongo("", sim.store(), true).await;
    assert!(
        sim.watches()
            .iter()
            .all(|w| w.mode == StreamMode::Images && w.after.is_none()),
        "{:?}",
        sim.watches()
    );
    assert_eq!(
        sim.imaged(),
        ["Message", "_SCHEMA"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );

    let mut client = server.client().await;
    client
        .send(json!({"op": "connect", "applicationId": "app", "installationId": "inst"}))
        .await;
    let client_id = client.recv().await["clientId"].clone();
    client.subscribe(1, "Message", json!({"room": "r1"})).await;

    sim.insert("Message", stored("m1", doc! {"room": "r1", "score": 3, "_p_author": "_User$u1", "_rperm": ["*"], "_wperm": ["u1"]}));
    let create = client.recv().await;
    assert_eq!(
        create,
        json!({"op": "create", "clientId": client_id, "installationId": "inst", "requestId": 1, "object": {
            "objectId": "m1", "room": "r1", "score": 3, "author": {"__type": "Pointer", "className": "_User", "objectId": "u1"},
            "ACL": {"*": {"read": true}, "u1": {"write": true}}, "createdAt": T0_ISO, "updatedAt": T0_ISO, "className": "Message"
        }})
    );

    sim.update("Message", "m1", doc! {"score": 4}, &[]);
    let update = client.recv().await;
    assert_eq!(update["op"], "update");
    assert_eq!(
        (
            update["object"]["score"].clone(),
            update["original"]["score"].clone()
        ),
        (json!(4), json!(3))
    );

    sim.update("Message", "m1", doc! {"room": "r2"}, &[]);
    let leave = client.recv().await;
    assert_eq!(
        (
            leave["op"].clone(),
            leave["object"]["room"].clone(),
            leave["original"]["room"].clone()
        ),
        (json!("leave"), json!("r2"), json!("r1"))
    );

    sim.update("Message", "seed", doc! {"room": "r1"}, &[]);
    let enter = client.recv().await;
    assert_eq!(
        (enter["op"].clone(), enter["original"]["room"].clone()),
        (json!("enter"), json!("lobby")),
        "exact original from the pre-image: {enter}"
    );

    // An object the subscriber may not read, then a class nobody subscribed to.
    sim.insert(
        "Message",
        stored("private", doc! {"room": "r1", "_rperm": ["someone"]}),
    );
    sim.insert("Other", stored("o1", doc! {"room": "r1"}));
    sim.replace(
        "Message",
        stored("seed", doc! {"room": "r1", "text": "replaced"}),
    );
    let replaced = client.recv().await;
    assert_eq!(
        (
            replaced["op"].clone(),
            replaced["object"]["text"].clone(),
            replaced["original"]["room"].clone()
        ),
        (json!("update"), json!("replaced"), json!("r1"))
    );

    sim.delete("Message", "seed");
    assert_eq!(
        next_event(&mut client).await,
        ("delete".to_owned(), "seed".to_owned())
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn without_pre_images_originals_come_from_the_cache_and_nothing_is_invented() {
    let sim = database();
    sim.without_image_support();
    // Objects written before the server started: never seen, so no original is known.
    sim.insert("Message", stored("away", doc! {"room": "r2"}));
    sim.insert("Message", stored("here", doc! {"room": "r1", "score": 1}));
    sim.insert(
        "Message",
        stored("watched", doc! {"room": "r1", "score": 1}),
    );
    sim.insert("Message", stored("gone", doc! {"room": "r1"}));
    let server = TestServer::start_mongo("", sim.store(), true).await;
    assert!(
        sim.watches().iter().all(|w| w.mode == StreamMode::Lookup),
        "MongoDB refused images: streams run without them"
    );

    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r1"})).await;
    let mut watcher = server.connected(None).await;
    watcher.subscribe_with(json!({"op": "subscribe", "requestId": 2, "query": {"className": "Message", "where": {"room": "r1"}, "watch": ["score"]}})).await;

    // `room` changed and its previous value is unknown: a matching object enters, without
    // an original.
    sim.update("Message", "away", doc! {"room": "r1"}, &[]);
    let enter = client.recv().await;
    assert_eq!(enter["op"], "enter");
    assert!(
        enter.get("original").is_none(),
        "no invented original: {enter}"
    );
    assert_eq!(
        watcher.recv().await["op"],
        "enter",
        "watch never suppresses enter"
    );

    // Only `score` changed: the object matched before too — an update whose original holds
    // the unchanged fields only.
    sim.update("Message", "here", doc! {"score": 2}, &[]);
    let update = client.recv().await;
    assert_eq!(update["op"], "update");
    assert_eq!(update["object"]["score"], 2);
    assert!(
        update["original"].get("score").is_none(),
        "the old score is unknown and not made up: {update}"
    );
    assert_eq!(update["original"]["room"], "r1");
    assert_eq!(
        watcher.recv().await["object"]["objectId"],
        "here",
        "a watched field changed"
    );

    // A field nobody watches: the watcher gets nothing, the other subscriber an update.
    sim.update("Message", "watched", doc! {"note": "x"}, &[]);
    assert_eq!(
        next_event(&mut client).await,
        ("update".to_owned(), "watched".to_owned())
    );

    // Now cached: the next change of `here` has an exact original, so it can leave.
    sim.update("Message", "here", doc! {"room": "r9"}, &[]);
    let leave = client.recv().await;
    assert_eq!(
        (leave["op"].clone(), leave["original"]["score"].clone()),
        (json!("leave"), json!(2))
    );
    assert_eq!(
        next_event(&mut watcher).await,
        ("leave".to_owned(), "here".to_owned()),
        "the watch-suppressed update was not delivered"
    );

    // A delete of an object never seen carries nothing to match or check: no event. A
    // sentinel proves the stream went on.
    sim.delete("Message", "gone");
    sim.insert("Message", stored("sentinel", doc! {"room": "r1"}));
    assert_eq!(
        next_event(&mut client).await,
        ("create".to_owned(), "sentinel".to_owned())
    );
    drop(client);
    drop(watcher);
    server.stop().await;
}

#[tokio::test]
async fn sessions_roles_and_logouts_are_read_from_mongodb() {
    let sim = database();
    let future = DateTime::from_millis(T0 + 10 * 365 * 86_400_000);
    sim.insert("_User", stored("u1", doc! {"username": "alice"}));
    sim.insert(
        "_Session",
        stored(
            "s1",
            doc! {"_session_token": "r:alice", "_p_user": "_User$u1", "expiresAt": future},
        ),
    );
    sim.insert("_Session", stored("s2", doc! {"_session_token": "r:expired", "_p_user": "_User$u1", "expiresAt": DateTime::from_millis(T0)}));
    sim.insert("_Role", stored("staff", doc! {"name": "Staff"}));
    sim.insert("_Role", stored("all", doc! {"name": "Everyone"}));
    sim.insert(
        "_Join:roles:_Role",
        doc! {"_id": "j0", "owningId": "all", "relatedId": "staff"},
    );
    let server = TestServer::start_mongo("", sim.store(), true).await;

    let mut alice = server.connected(Some("r:alice")).await;
    alice.subscribe(1, "Message", json!({})).await;
    let mut expired = server.connected(Some("r:expired")).await;
    expired.subscribe(1, "Message", json!({})).await;

    sim.insert("Message", stored("mine", doc! {"_rperm": ["u1"]}));
    assert_eq!(next_event(&mut alice).await.1, "mine");
    sim.insert(
        "Message",
        stored("staff-only", doc! {"_rperm": ["role:Staff"]}),
    );
    // Alice joins Staff (a relation row): from the next event on she reads it, and what the
    // Everyone role (whose `roles` relation holds Staff) may read.
    sim.insert(
        "_Join:users:_Role",
        doc! {"_id": "j1", "owningId": "staff", "relatedId": "u1"},
    );
    sim.insert(
        "Message",
        stored("staff-2", doc! {"_rperm": ["role:Staff"]}),
    );
    sim.insert(
        "Message",
        stored("everyone", doc! {"_rperm": ["role:Everyone"]}),
    );
    assert_eq!(
        next_event(&mut alice).await.1,
        "staff-2",
        "staff-only was written before she joined"
    );
    assert_eq!(next_event(&mut alice).await.1, "everyone", "inherited role");

    // Logout deletes the session: it takes effect from the next event.
    sim.delete("_Session", "s1");
    sim.insert("Message", stored("after-logout", doc! {"_rperm": ["u1"]}));
    sim.insert("Message", stored("public", doc! {"_rperm": ["*"]}));
    assert_eq!(
        next_event(&mut alice).await.1,
        "public",
        "nothing of alice's after her logout"
    );
    // An expired session reads as anonymous.
    assert_eq!(next_event(&mut expired).await.1, "public");
    drop(alice);
    drop(expired);
    server.stop().await;
}

#[tokio::test]
async fn class_permissions_and_protected_fields_follow_schema_changes_in_the_stream() {
    let sim = SimMongo::new();
    let mut permissions = public_read();
    permissions.insert("protectedFields", doc! {"*": ["salary"]});
    sim.insert(
        "_SCHEMA",
        schema(
            "Staff",
            doc! {"name": "string", "salary": "number"},
            Some(permissions.clone()),
        ),
    );
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Staff", json!({})).await;

    sim.insert("Staff", stored("a", doc! {"name": "Ann", "salary": 10}));
    let create = client.recv().await;
    assert_eq!(create["object"]["name"], "Ann");
    assert!(
        create["object"].get("salary").is_none(),
        "protected: {create}"
    );

    // The schema now protects `name` too; the very next event is judged by it.
    permissions.insert("protectedFields", doc! {"*": ["salary", "name"]});
    sim.update(
        "_SCHEMA",
        "Staff",
        doc! {"_metadata": {"class_permissions": permissions.clone()}},
        &[],
    );
    sim.insert("Staff", stored("b", doc! {"name": "Bob", "salary": 20}));
    let create = client.recv().await;
    assert_eq!(create["object"]["objectId"], "b");
    assert!(
        create["object"].get("name").is_none() && create["object"].get("salary").is_none(),
        "{create}"
    );

    // find closed to the public: nothing more reaches an anonymous subscriber.
    permissions.insert("find", doc! {"role:HR": true});
    sim.update(
        "_SCHEMA",
        "Staff",
        doc! {"_metadata": {"class_permissions": permissions}},
        &[],
    );
    sim.insert("Staff", stored("c", doc! {"name": "Cy"}));
    let mut fresh = server.connected(None).await;
    fresh.send(json!({"op": "subscribe", "requestId": 2, "query": {"className": "Staff", "where": {}}})).await;
    let refused = fresh.recv().await;
    assert_eq!(refused["op"], "error", "{refused}");
    sim.insert("_SCHEMA", schema("Open", doc! {}, Some(public_read())));
    client.subscribe(3, "Open", json!({})).await;
    sim.insert("Open", stored("sentinel", doc! {}));
    assert_eq!(
        next_event(&mut client).await,
        ("create".to_owned(), "sentinel".to_owned()),
        "Staff c was not delivered"
    );
    drop(client);
    drop(fresh);
    server.stop().await;
}

#[tokio::test]
async fn subqueries_are_resolved_from_mongodb_and_kept_current() {
    let sim = database();
    sim.insert(
        "_SCHEMA",
        schema(
            "Room",
            doc! {"name": "string", "open": "boolean"},
            Some(public_read()),
        ),
    );
    sim.insert(
        "_SCHEMA",
        schema(
            "Post",
            doc! {"room": "*Room", "roomName": "string"},
            Some(public_read()),
        ),
    );
    sim.insert(
        "_SCHEMA",
        schema(
            "Team",
            doc! {"posts": "relation<Post>"},
            Some(public_read()),
        ),
    );
    sim.insert("Room", stored("r1", doc! {"name": "one", "open": true}));
    sim.insert("Room", stored("r2", doc! {"name": "two", "open": false}));
    sim.insert(
        "Room",
        stored(
            "r3",
            doc! {"name": "three", "open": true, "_rperm": ["someone"]},
        ),
    );
    sim.insert("Team", stored("t1", doc! {}));
    sim.insert(
        "_Join:posts:Team",
        doc! {"_id": "j1", "owningId": "t1", "relatedId": "p-related"},
    );
    let server = TestServer::start_mongo("", sim.store(), true).await;

    let mut client = server.connected(None).await;
    client
        .subscribe(
            1,
            "Post",
            json!({"room": {"$inQuery": {"className": "Room", "where": {"open": true}}}}),
        )
        .await;
    client.subscribe(2, "Post", json!({"roomName": {"$select": {"query": {"className": "Room", "where": {"open": true}}, "key": "name"}}})).await;
    client.subscribe(3, "Post", json!({"$relatedTo": {"object": {"__type": "Pointer", "className": "Team", "objectId": "t1"}, "key": "posts"}})).await;
    // The same subquery for the same identity shares the set: no second read.
    let reads = sim.finds();
    let mut twin = server.connected(None).await;
    twin.subscribe(
        1,
        "Post",
        json!({"room": {"$inQuery": {"className": "Room", "where": {"open": true}}}}),
    )
    .await;
    assert_eq!(sim.finds(), reads, "the set was shared");
    drop(twin);

    sim.insert("Post", stored("in-open", doc! {"_p_room": "Room$r1"}));
    sim.insert("Post", stored("in-closed", doc! {"_p_room": "Room$r2"}));
    sim.insert(
        "Post",
        stored(
            "in-unreadable",
            doc! {"_p_room": "Room$r3", "roomName": "three"},
        ),
    );
    sim.insert("Post", stored("named-open", doc! {"roomName": "one"}));
    sim.insert("Post", stored("p-related", doc! {}));
    let frame = client.recv().await;
    assert_eq!(
        (
            frame["requestId"].clone(),
            frame["object"]["objectId"].clone()
        ),
        (json!(1), json!("in-open"))
    );
    let frame = client.recv().await;
    assert_eq!(
        (
            frame["requestId"].clone(),
            frame["object"]["objectId"].clone()
        ),
        (json!(2), json!("named-open"))
    );
    let frame = client.recv().await;
    assert_eq!(
        (
            frame["requestId"].clone(),
            frame["object"]["objectId"].clone()
        ),
        (json!(3), json!("p-related"))
    );

    // Room two opens: posts in it now match; a relation row joins a post to the team.
    sim.update("Room", "r2", doc! {"open": true}, &[]);
    sim.insert(
        "_Join:posts:Team",
        doc! {"_id": "j2", "owningId": "t1", "relatedId": "in-closed"},
    );
    sim.update("Post", "in-closed", doc! {"roomName": "two"}, &[]);
    let mut seen: Vec<(Value, Value)> = Vec::new();
    for _ in 0..3 {
        let frame = client.recv().await;
        seen.push((frame["requestId"].clone(), frame["op"].clone()));
    }
    seen.sort_by_key(|(id, _)| id.as_u64());
    // It already matched $inQuery and $relatedTo before this change (the sets changed
    // first): an update; for $select the name is new: it enters.
    assert_eq!(
        seen,
        vec![
            (json!(1), json!("update")),
            (json!(2), json!("enter")),
            (json!(3), json!("update"))
        ]
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn the_query_op_reads_current_objects_from_mongodb() {
    let sim = SimMongo::new();
    let mut permissions = public_read();
    permissions.insert("protectedFields", doc! {"*": ["secret"]});
    sim.insert(
        "_SCHEMA",
        schema(
            "Message",
            doc! {"room": "string", "n": "number", "secret": "string"},
            Some(permissions),
        ),
    );
    for i in 0..30 {
        let acl: Vec<Bson> = if i % 3 == 0 {
            vec![Bson::String("someone".into())]
        } else {
            vec![Bson::String("*".into())]
        };
        sim.insert("Message", stored(&format!("m{i}"), doc! {"room": if i % 2 == 0 { "even" } else { "odd" }, "n": i, "secret": "s", "_rperm": acl}));
    }
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut client = server.connected(None).await;
    client
        .subscribe(
            1,
            "Message",
            json!({"room": "even", "n": {"$gte": 10}, "objectId": {"$regex": "^m"}}),
        )
        .await;
    client.send(json!({"op": "query", "requestId": 1})).await;
    let result = client.recv().await;
    assert_eq!(result["op"], "result", "{result}");
    let mut ids: Vec<String> = result["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|o| o["objectId"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["m10", "m14", "m16", "m20", "m22", "m26", "m28"],
        "even n ≥ 10, not m12/m18/m24 (ACL)"
    );
    assert!(
        result["results"]
            .as_array()
            .expect("results")
            .iter()
            .all(|o| o.get("secret").is_none())
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_after_the_saved_token_and_loses_nothing() {
    let sim = database();
    let token_file = temp_file("resume");
    let overrides = format!(
        "[mongodb]\nresume_token_file = \"{}\"\n",
        token_file.display()
    );
    let server = TestServer::start_mongo(&overrides, sim.store(), true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    sim.insert("Message", stored("before", doc! {}));
    assert_eq!(next_event(&mut client).await.1, "before");
    drop(client);
    server.stop().await;
    let saved = SimMongo::seq_in_token_file(&token_file).expect("token saved at shutdown");
    assert!(
        saved >= sim.last_seq(),
        "saved {saved}, last {}",
        sim.last_seq()
    );

    // Written while the server was down.
    sim.insert("Message", stored("while-down-1", doc! {}));
    sim.insert("Message", stored("while-down-2", doc! {}));
    // Hold the stream back until a client has subscribed, to see the replayed events.
    sim.refuse_watches(usize::MAX);
    let server = TestServer::start_mongo(&overrides, sim.store(), false).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    sim.refuse_watches(0);
    assert_eq!(next_event(&mut client).await.1, "while-down-1");
    assert_eq!(next_event(&mut client).await.1, "while-down-2");
    let resumed: Vec<WatchRecord> = sim
        .watches()
        .into_iter()
        .filter(|w| w.after.is_some())
        .collect();
    assert!(
        !resumed.is_empty() && resumed.iter().all(|w| w.after == Some(saved)),
        "{:?}",
        sim.watches()
    );
    drop(client);
    server.stop().await;
    let _ = std::fs::remove_file(&token_file);
}

#[tokio::test]
async fn a_lost_connection_resumes_after_the_last_event() {
    let sim = database();
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    sim.insert("Message", stored("one", doc! {}));
    assert_eq!(next_event(&mut client).await.1, "one");
    let seen = sim.last_seq();
    sim.break_streams();
    sim.insert("Message", stored("two", doc! {}));
    sim.insert("Message", stored("three", doc! {}));
    assert_eq!(next_event(&mut client).await.1, "two");
    assert_eq!(next_event(&mut client).await.1, "three");
    let watches = sim.watches();
    assert_eq!(watches.len(), 2, "{watches:?}");
    assert!(
        watches[1].after.is_some_and(|after| after >= seen),
        "{watches:?}"
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn lost_history_tells_subscribers_to_reconnect_and_starts_over() {
    let sim = database();
    let token_file = temp_file("history");
    let overrides = format!(
        "[mongodb]\nresume_token_file = \"{}\"\n",
        token_file.display()
    );
    let server = TestServer::start_mongo(&overrides, sim.store(), true).await;
    let mut subscriber = server.connected(None).await;
    subscriber.subscribe(1, "Message", json!({})).await;
    let mut bystander = server.connected(None).await;
    sim.insert("Message", stored("one", doc! {}));
    assert_eq!(next_event(&mut subscriber).await.1, "one");

    // The stream falls off the oplog: events were lost.
    sim.lose_history();
    let error = subscriber.recv().await;
    assert_eq!(
        (
            error["op"].clone(),
            error["code"].clone(),
            error["reconnect"].clone()
        ),
        (json!("error"), json!(100), json!(true)),
        "{error}"
    );
    assert_eq!(subscriber.closed().await, Some(1012));

    // The source starts over from now; a client without subscriptions was left alone.
    bystander.subscribe(1, "Message", json!({})).await;
    sim.insert("Message", stored("two", doc! {}));
    assert_eq!(next_event(&mut bystander).await.1, "two");
    assert!(
        sim.watches().last().is_some_and(|w| w.after.is_none()),
        "{:?}",
        sim.watches()
    );
    assert_eq!(server.metric("livequery_source_resyncs_total").await, 1.0);
    drop(subscriber);
    drop(bystander);
    server.stop().await;
    let _ = std::fs::remove_file(&token_file);
}

#[tokio::test]
async fn a_saved_token_older_than_the_oplog_starts_over_from_now() {
    let sim = database();
    let token_file = temp_file("stale");
    let overrides = format!(
        "[mongodb]\nresume_token_file = \"{}\"\n",
        token_file.display()
    );
    let server = TestServer::start_mongo(&overrides, sim.store(), true).await;
    sim.insert("Message", stored("one", doc! {}));
    server.stop().await;
    assert!(SimMongo::seq_in_token_file(&token_file).is_some());
    sim.lose_history();
    let server = TestServer::start_mongo(&overrides, sim.store(), true).await;
    let watches = sim.watches();
    let n = watches.len();
    assert!(
        watches[n - 2].after.is_some() && watches[n - 1].after.is_none(),
        "resume refused, then from now: {watches:?}"
    );
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    sim.insert("Message", stored("two", doc! {}));
    assert_eq!(next_event(&mut client).await.1, "two");
    drop(client);
    server.stop().await;
    let _ = std::fs::remove_file(&token_file);
}

#[tokio::test]
async fn a_dropped_collection_tells_its_subscribers_to_reconnect() {
    let sim = database();
    sim.insert("Message", stored("m", doc! {}));
    sim.insert("_SCHEMA", schema("Other", doc! {}, Some(public_read())));
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut dropped = server.connected(None).await;
    dropped.subscribe(1, "Message", json!({})).await;
    let mut other = server.connected(None).await;
    other.subscribe(1, "Other", json!({})).await;
    sim.drop_collection("Message");
    let error = dropped.recv().await;
    assert_eq!(
        (error["code"].clone(), error["reconnect"].clone()),
        (json!(100), json!(true)),
        "{error}"
    );
    assert_eq!(dropped.closed().await, Some(1012));
    sim.insert("Other", stored("o", doc! {}));
    assert_eq!(next_event(&mut other).await.1, "o");
    drop(dropped);
    drop(other);
    server.stop().await;
}

#[tokio::test]
async fn only_served_classes_are_read_and_new_collections_get_images() {
    let sim = database();
    sim.insert("Message", stored("m", doc! {}));
    sim.insert("_PushStatus", stored("push", doc! {}));
    sim.insert("Unserved", stored("u", doc! {}));
    let server = TestServer::start_mongo(
        "[mongodb]\nclasses = [\"Message\", \"Fresh\"]\n",
        sim.store(),
        true,
    )
    .await;
    assert_eq!(
        sim.imaged(),
        ["Message", "_SCHEMA"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        "not _PushStatus, not Unserved"
    );
    let mut client = server.connected(None).await;
    client.subscribe(1, "Fresh", json!({})).await;
    client.subscribe(2, "Unserved", json!({})).await;
    sim.insert("Unserved", stored("u2", doc! {}));
    sim.insert("Fresh", stored("f1", doc! {}));
    assert_eq!(
        next_event(&mut client).await.1,
        "f1",
        "the unserved class's insert never reached the server"
    );
    assert!(
        sim.imaged().contains("Fresh"),
        "a class created after start-up gets images"
    );
    sim.update("Fresh", "f1", doc! {"n": 1}, &[]);
    let update = client.recv().await;
    assert_eq!(update["op"], "update");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn an_event_too_large_with_its_documents_is_read_without_them() {
    let sim = database();
    sim.insert("Message", stored("big", doc! {"room": "r1", "n": 1}));
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r1"})).await;
    sim.update("Message", "big", doc! {"n": 2}, &[]);
    assert_eq!(client.recv().await["object"]["n"], 2);
    // Its pre- and post-image together would exceed 16 MB.
    sim.update("Message", "big", doc! {"n": 3}, &[]);
    sim.make_last_write_too_large();
    sim.update("Message", "big", doc! {"n": 4}, &[]);
    let update = client.recv().await;
    assert_eq!(
        (
            update["op"].clone(),
            update["object"]["n"].clone(),
            update["original"]["n"].clone()
        ),
        (json!("update"), json!(3), json!(2)),
        "rebuilt from the cached version: {update}"
    );
    let update = client.recv().await;
    assert_eq!(
        (
            update["object"]["n"].clone(),
            update["original"]["n"].clone()
        ),
        (json!(4), json!(3)),
        "{update}"
    );
    let modes: Vec<StreamMode> = sim.watches().iter().map(|w| w.mode).collect();
    assert_eq!(
        modes,
        [StreamMode::Images, StreamMode::Lean, StreamMode::Images],
        "one lean stream for the large event only"
    );
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_database_down_at_start_up_still_gets_its_images_once_it_answers() {
    let sim = database();
    sim.insert("Message", stored("m", doc! {"n": 1}));
    sim.refuse_listings(2);
    let server = TestServer::start_mongo("", sim.store(), true).await;
    assert!(sim.imaged().contains("Message"));
    assert!(
        sim.watches().iter().all(|w| w.mode == StreamMode::Images),
        "{:?}",
        sim.watches()
    );
    drop(server);
}

/// The default class set served `_Installation` (device tokens, installation ids) to
/// anonymous clients. Internal classes are now master-only everywhere, and left out of the
/// default class set.
#[tokio::test]
async fn installations_are_not_served_by_default() {
    let sim = database();
    let server = TestServer::start_mongo(
        "[parse]\nkey_pairs = { javascriptKey = \"jsk\", masterKey = \"mk\" }\n",
        sim.store(),
        true,
    )
    .await;
    let mut anon = server.client().await;
    anon.send(json!({"op": "connect", "applicationId": "a", "javascriptKey": "jsk"}))
        .await;
    anon.recv().await;
    anon.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "_Installation", "where": {}}}))
        .await;
    assert_eq!(
        anon.recv().await,
        json!({"op": "error", "error": "Permission denied", "code": 119, "reconnect": false, "requestId": 1})
    );
    let mut master = server.client().await;
    master
        .send(json!({"op": "connect", "applicationId": "a", "masterKey": "mk"}))
        .await;
    master.recv().await;
    master.subscribe(1, "_Installation", json!({})).await;
    master.subscribe(2, "Message", json!({})).await;
    sim.insert(
        "_Installation",
        stored(
            "i1",
            doc! {"deviceToken": "secret-device", "installationId": "x"},
        ),
    );
    sim.insert("Message", stored("m1", doc! {"room": "lobby"}));
    assert_eq!(
        next_event(&mut master).await,
        ("create".to_owned(), "m1".to_owned()),
        "_Installation is not a live class unless listed"
    );
}

/// `$inQuery`/`$select` checked only the inner objects' ACLs: a protected field or a
/// secret of the inner class could be probed through them, and the inner class's
/// permissions were ignored.
#[tokio::test]
async fn subqueries_cannot_probe_what_the_inner_class_hides() {
    let sim = database();
    sim.insert(
        "_SCHEMA",
        schema(
            "Team",
            doc! {"name": "string"},
            Some(doc! {"find": {"requiresAuthentication": true}, "get": {"requiresAuthentication": true}}),
        ),
    );
    sim.insert(
        "_User",
        stored(
            "u1",
            doc! {"username": "alice", "email": "alice@example.com", "_rperm": ["*"]},
        ),
    );
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut anon = server.connected(None).await;
    let denied = |id: u32, code: u32| json!({"op": "error", "error": "Permission denied", "code": code, "reconnect": false, "requestId": id});
    for (id, where_) in [
        (
            1,
            json!({"author": {"$inQuery": {"className": "_User", "where": {"email": {"$regex": "^a"}}}}}),
        ),
        (
            2,
            json!({"author": {"$notInQuery": {"className": "_User", "where": {"sessionToken": {"$exists": true}}}}}),
        ),
        (
            3,
            json!({"room": {"$select": {"query": {"className": "_User", "where": {}}, "key": "email"}}}),
        ),
        (
            4,
            json!({"$or": [{"author": {"$inQuery": {"className": "_User", "where": {"authData.github.id": "1"}}}}]}),
        ),
    ] {
        anon.send(json!({"op": "subscribe", "requestId": id, "query": {"className": "Message", "where": where_}}))
            .await;
        assert_eq!(anon.recv().await, denied(id, 119), "{where_}");
    }
    anon.send(json!({"op": "subscribe", "requestId": 5, "query": {"className": "Message", "where": {"team": {"$inQuery": {"className": "Team", "where": {}}}}}}))
        .await;
    assert_eq!(anon.recv().await, denied(5, 101));
    // What the inner class shows may still be used.
    anon.subscribe(
        6,
        "Message",
        json!({"author": {"$inQuery": {"className": "_User", "where": {"username": "alice"}}}}),
    )
    .await;
    sim.insert(
        "Message",
        stored("m1", doc! {"room": "lobby", "_p_author": "_User$u1"}),
    );
    assert_eq!(
        next_event(&mut anon).await,
        ("create".to_owned(), "m1".to_owned())
    );
}

/// A subquery's set is read for the subscriber's identity at the time: once that identity
/// changes (here: logout), the subscription gets nothing more — the set may hold objects
/// only the old identity could read — until it subscribes again.
#[tokio::test]
async fn subquery_sets_do_not_outlive_their_identity() {
    let sim = database();
    sim.insert(
        "_SCHEMA",
        schema("Room", doc! {"open": "boolean"}, Some(public_read())),
    );
    sim.insert(
        "_SCHEMA",
        schema(
            "Post",
            doc! {"room": "*Room", "canary": "boolean"},
            Some(public_read()),
        ),
    );
    let future = DateTime::from_millis(T0 + 10 * 365 * 86_400_000);
    sim.insert("_User", stored("u1", doc! {"username": "alice"}));
    sim.insert(
        "_Session",
        stored(
            "s1",
            doc! {"_session_token": "r:alice", "_p_user": "_User$u1", "expiresAt": future},
        ),
    );
    // A room only alice may read.
    sim.insert(
        "Room",
        stored("private", doc! {"open": true, "_rperm": ["u1"]}),
    );
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let mut alice = server.connected(Some("r:alice")).await;
    alice
        .subscribe(
            1,
            "Post",
            json!({"room": {"$inQuery": {"className": "Room", "where": {"open": true}}}}),
        )
        .await;
    alice.subscribe(2, "Post", json!({"canary": true})).await;
    sim.insert("Post", stored("m1", doc! {"_p_room": "Room$private"}));
    sim.insert("Post", stored("c1", doc! {"canary": true}));
    let mut first = Vec::new();
    for _ in 0..2 {
        first.push(next_event(&mut alice).await.1);
    }
    first.sort();
    assert_eq!(first, ["c1", "m1"]);

    // Logout: the set was read for alice, who is now anonymous.
    sim.delete("_Session", "s1");
    sim.insert("Post", stored("m2", doc! {"_p_room": "Room$private"}));
    sim.insert("Post", stored("c2", doc! {"canary": true}));
    assert_eq!(
        next_event(&mut alice).await.1,
        "c2",
        "nothing for the stale set"
    );
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"stale_subqueries\"}")
            .await,
        1.0
    );
}

/// A subquery's set may not grow without bound as inner objects are created: past
/// `mongodb.max_subquery_results` it stops answering (a partial set would answer wrongly),
/// and its subscriptions get nothing until they subscribe again.
#[tokio::test]
async fn a_subquery_set_that_outgrows_its_bound_stops_answering() {
    let sim = database();
    sim.insert(
        "_SCHEMA",
        schema("Room", doc! {"open": "boolean"}, Some(public_read())),
    );
    sim.insert(
        "_SCHEMA",
        schema(
            "Post",
            doc! {"room": "*Room", "canary": "boolean"},
            Some(public_read()),
        ),
    );
    sim.insert("Room", stored("r1", doc! {"open": true}));
    let server =
        TestServer::start_mongo("[mongodb]\nmax_subquery_results = 2\n", sim.store(), true).await;
    let mut client = server.connected(None).await;
    client
        .subscribe(
            1,
            "Post",
            json!({"room": {"$notInQuery": {"className": "Room", "where": {"open": true}}}}),
        )
        .await;
    client.subscribe(2, "Post", json!({"canary": true})).await;
    sim.insert("Room", stored("r2", doc! {"open": true}));
    sim.insert("Post", stored("p0", doc! {"_p_room": "Room$r2"}));
    sim.insert("Post", stored("p1", doc! {"_p_room": "Room$closed"}));
    assert_eq!(next_event(&mut client).await.1, "p1", "r2 is in the set");
    // A third open room: the set outgrows its bound of 2.
    sim.insert("Room", stored("r3", doc! {"open": true}));
    sim.insert("Post", stored("p2", doc! {"_p_room": "Room$closed"}));
    sim.insert("Post", stored("c1", doc! {"canary": true}));
    assert_eq!(
        next_event(&mut client).await.1,
        "c1",
        "the outgrown set answers nothing"
    );
    // p2, and c1 (without a room it is not in the set either).
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"stale_subqueries\"}")
            .await,
        2.0
    );
}
