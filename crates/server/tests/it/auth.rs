//! Authorization over the wire (`protocol-spec/authorization.md`), with the embedded
//! source's in-memory sessions as the test auth provider.

use serde_json::{Value, json};

use crate::support::{TestServer, object};

fn denied(code: u32, request_id: u32) -> Value {
    json!({"op": "error", "error": "Permission denied", "code": code, "reconnect": false, "requestId": request_id})
}

#[tokio::test]
async fn user_acl_reaches_only_that_user() {
    let server = TestServer::start("").await;
    server.session("r:alice", "alice", &[]).await;
    let mut alice = server.connected(Some("r:alice")).await;
    let mut anon = server.connected(None).await;
    alice.subscribe(1, "M", json!({})).await;
    anon.subscribe(1, "M", json!({})).await;
    server
        .create(object(
            "M",
            "private",
            json!({"ACL": {"alice": {"read": true, "write": true}}}),
        ))
        .await;
    server
        .create(object("M", "public", json!({"ACL": {"*": {"read": true}}})))
        .await;
    server.create(object("M", "no-acl", json!({}))).await;
    assert_eq!(alice.recv().await["object"]["objectId"], "private");
    assert_eq!(alice.recv().await["object"]["objectId"], "public");
    assert_eq!(anon.recv().await["object"]["objectId"], "public");
    assert_eq!(anon.recv().await["object"]["objectId"], "no-acl");
}

#[tokio::test]
async fn subscription_token_wins_over_connect_token() {
    let server = TestServer::start("").await;
    server.session("r:alice", "alice", &[]).await;
    server.session("r:bob", "bob", &[]).await;
    let mut client = server.connected(Some("r:alice")).await;
    client
        .subscribe_with(json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {}}, "sessionToken": "r:bob"}))
        .await;
    server
        .create(object(
            "M",
            "alices",
            json!({"ACL": {"alice": {"read": true}}}),
        ))
        .await;
    server
        .create(object("M", "bobs", json!({"ACL": {"bob": {"read": true}}})))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "bobs");
}

#[tokio::test]
async fn role_acls_include_inherited_roles() {
    let server = TestServer::start("").await;
    // Role resolution (with inheritance) is the auth provider's job; the embedded source
    // takes the resolved list.
    server.session("r:u", "u", &["Child", "Parent"]).await;
    let mut user = server.connected(Some("r:u")).await;
    user.subscribe(1, "M", json!({})).await;
    server
        .create(object(
            "M",
            "other",
            json!({"ACL": {"role:Other": {"read": true}}}),
        ))
        .await;
    server
        .create(object(
            "M",
            "parent",
            json!({"ACL": {"role:Parent": {"read": true}}}),
        ))
        .await;
    assert_eq!(user.recv().await["object"]["objectId"], "parent");
}

#[tokio::test]
async fn role_changes_take_effect_at_once() {
    let server = TestServer::start("").await;
    server.session("r:u", "u", &[]).await;
    let mut user = server.connected(Some("r:u")).await;
    user.subscribe(1, "M", json!({})).await;
    server
        .create(object(
            "M",
            "before",
            json!({"ACL": {"role:Admin": {"read": true}}}),
        ))
        .await;
    let (status, _) = server
        .http(
            "PUT",
            "/livequery/v1/users/u/roles",
            Some(&json!({"roles": ["Admin"]})),
            Some(crate::support::MASTER_KEY),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    server
        .create(object(
            "M",
            "after",
            json!({"ACL": {"role:Admin": {"read": true}}}),
        ))
        .await;
    assert_eq!(user.recv().await["object"]["objectId"], "after");
}

#[tokio::test]
async fn master_clients_see_everything_only_with_key_pairs() {
    let with_pairs = TestServer::start("[parse]\nkey_pairs = { masterKey = \"mk\" }").await;
    let mut master = with_pairs.client().await;
    master
        .send(json!({"op": "connect", "applicationId": "a", "masterKey": "mk"}))
        .await;
    assert_eq!(master.recv().await["op"], "connected");
    master.subscribe(1, "M", json!({})).await;
    with_pairs
        .create(object("M", "private", json!({"ACL": {}, "secret": 1})))
        .await;
    assert_eq!(master.recv().await["object"]["secret"], 1);

    // Without keyPairs the master key means nothing (the reference's rule).
    let without = TestServer::start("").await;
    let mut client = without.client().await;
    client
        .send(
            json!({"op": "connect", "applicationId": "a", "masterKey": crate::support::MASTER_KEY}),
        )
        .await;
    assert_eq!(client.recv().await["op"], "connected");
    client.subscribe(1, "M", json!({})).await;
    without
        .create(object("M", "private", json!({"ACL": {}})))
        .await;
    without.create(object("M", "sentinel", json!({}))).await;
    assert_eq!(client.recv().await["object"]["objectId"], "sentinel");
}

#[tokio::test]
async fn acl_changes_produce_redacted_enter_and_leave() {
    let server = TestServer::start("").await;
    server.session("r:u2", "u2", &[]).await;
    let mut u2 = server.connected(Some("r:u2")).await;
    let mut anon = server.connected(None).await;
    u2.subscribe(1, "M", json!({})).await;
    anon.subscribe(1, "M", json!({})).await;

    // Opened: anonymous gets `enter` without `original`; u2 gets `update`.
    let private = object("M", "o", json!({"v": 1, "ACL": {"u2": {"read": true}}}));
    let public = object("M", "o", json!({"v": 1, "ACL": {"*": {"read": true}}}));
    server.update(private.clone(), public.clone()).await;
    let event = anon.recv().await;
    assert_eq!(event["op"], "enter");
    assert!(
        event.get("original").is_none(),
        "the private state must not leak: {event}"
    );
    let event = u2.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["original"]),
        (Some("update"), &private)
    );

    // Closed with a change: anonymous gets `leave` showing the last readable state.
    let closed = object("M", "o", json!({"v": 2, "ACL": {"u2": {"read": true}}}));
    server.update(public.clone(), closed.clone()).await;
    let event = anon.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"], &event["original"]),
        (Some("leave"), &public, &public)
    );
    let event = u2.recv().await;
    assert_eq!(
        (event["op"].as_str(), &event["object"]),
        (Some("update"), &closed)
    );
}

#[tokio::test]
async fn class_level_permissions_at_subscribe_time() {
    let server =
        TestServer::start("[parse]\nkey_pairs = { javascriptKey = \"jsk\", masterKey = \"mk\" }")
            .await;
    server.session("r:u", "u", &["Admin"]).await;
    server
        .schema("Closed", json!({"find": {}, "get": {}}))
        .await;
    server
        .schema("Members", json!({"find": {"requiresAuthentication": true}}))
        .await;
    server
        .schema("Admins", json!({"find": {"role:Admin": true}}))
        .await;
    server
        .schema("ById", json!({"find": {}, "get": {"*": true}}))
        .await;
    let connect = |token: Option<&str>| {
        let mut frame = json!({"op": "connect", "applicationId": "a", "javascriptKey": "jsk"});
        if let Some(token) = token {
            frame["sessionToken"] = json!(token);
        }
        frame
    };
    let mut anon = server.client().await;
    anon.send(connect(None)).await;
    anon.recv().await;
    let mut user = server.client().await;
    user.send(connect(Some("r:u"))).await;
    user.recv().await;
    let subscribe = |id: u32, class: &str, where_: Value| json!({"op": "subscribe", "requestId": id, "query": {"className": class, "where": where_}});

    anon.send(subscribe(1, "Closed", json!({}))).await;
    assert_eq!(anon.recv().await, denied(119, 1));
    anon.send(subscribe(2, "Members", json!({}))).await;
    assert_eq!(anon.recv().await, denied(101, 2));
    user.subscribe(2, "Members", json!({})).await;
    // Role entries grant (the reference never honours them).
    user.subscribe(3, "Admins", json!({})).await;
    anon.send(subscribe(3, "Admins", json!({}))).await;
    assert_eq!(anon.recv().await, denied(119, 3));
    // `{objectId: x}` uses `get`.
    anon.subscribe(4, "ById", json!({"objectId": "x"})).await;
    anon.send(subscribe(5, "ById", json!({"objectId": {"$in": ["x"]}})))
        .await;
    assert_eq!(anon.recv().await, denied(119, 5));
    // Master bypasses class-level permissions, as in REST.
    let mut master = server.client().await;
    master
        .send(json!({"op": "connect", "applicationId": "a", "masterKey": "mk"}))
        .await;
    master.recv().await;
    master.subscribe(1, "Closed", json!({})).await;
}

#[tokio::test]
async fn event_permissions_from_the_message_apply() {
    let server = TestServer::start("").await;
    server.session("r:u", "u", &[]).await;
    let mut anon = server.connected(None).await;
    let mut user = server.connected(Some("r:u")).await;
    anon.subscribe(1, "M", json!({})).await;
    user.subscribe(1, "M", json!({})).await;
    server
        .create_with_clp(
            object("M", "members-only", json!({})),
            json!({"find": {"requiresAuthentication": true}}),
        )
        .await;
    server
        .create_with_clp(object("M", "open", json!({})), json!({"find": {"*": true}}))
        .await;
    assert_eq!(user.recv().await["object"]["objectId"], "members-only");
    assert_eq!(
        anon.recv().await["object"]["objectId"],
        "open",
        "no per-event error frames, no event"
    );
    assert_eq!(
        server
            .metric("livequery_drops_total{reason=\"clp_denied\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn pointer_permissions_limit_events_to_the_pointed_user() {
    let server = TestServer::start("").await;
    server.session("r:alice", "alice", &[]).await;
    server.session("r:bob", "bob", &[]).await;
    server
        .schema("Doc", json!({"find": {}, "readUserFields": ["owner"]}))
        .await;
    let mut alice = server.connected(Some("r:alice")).await;
    alice.subscribe(1, "Doc", json!({})).await;
    let clp = json!({"find": {}, "readUserFields": ["owner"]});
    let pointer = |id: &str| json!({"__type": "Pointer", "className": "_User", "objectId": id});
    server
        .create_with_clp(
            object("Doc", "bobs", json!({"owner": pointer("bob")})),
            clp.clone(),
        )
        .await;
    server
        .create_with_clp(
            object("Doc", "alices", json!({"owner": pointer("alice")})),
            clp,
        )
        .await;
    assert_eq!(alice.recv().await["object"]["objectId"], "alices");
}

#[tokio::test]
async fn protected_fields_are_stripped_and_cannot_be_queried() {
    let server = TestServer::start("").await;
    let clp = json!({"find": {"*": true}, "protectedFields": {"*": ["secretField"]}});
    server.schema("P", clp.clone()).await;
    let mut client = server.connected(None).await;
    client.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "P", "where": {"secretField": "x"}}})).await;
    assert_eq!(client.recv().await, denied(119, 1));
    client.send(json!({"op": "subscribe", "requestId": 2, "query": {"className": "P", "where": {"$or": [{"a": 1}, {"secretField.x": 1}]}}})).await;
    assert_eq!(client.recv().await, denied(119, 2));
    client.send(json!({"op": "subscribe", "requestId": 3, "query": {"className": "P", "where": {}, "watch": ["secretField"]}})).await;
    assert_eq!(client.recv().await, denied(119, 3));
    client.subscribe(4, "P", json!({})).await;
    let before = object("P", "o", json!({"secretField": "a", "foo": 1}));
    let after = object("P", "o", json!({"secretField": "b", "foo": 2}));
    server.publish("afterSave", json!({"currentParseObject": after, "originalParseObject": before, "classLevelPermissions": clp})).await;
    let event = client.recv().await;
    assert!(
        event["object"].get("secretField").is_none()
            && event["original"].get("secretField").is_none(),
        "{event}"
    );
    assert_eq!(event["object"]["foo"], 2);
}

#[tokio::test]
async fn user_objects_never_leak_secrets() {
    let server = TestServer::start("").await;
    server.session("r:u", "u", &[]).await;
    let mut anon = server.connected(None).await;
    // The owner's token is only on `connect`: the owner exemption still applies (deviation A3).
    let mut owner = server.connected(Some("r:u")).await;
    anon.subscribe(1, "_User", json!({})).await;
    owner.subscribe(1, "_User", json!({})).await;
    let user = object(
        "_User",
        "u",
        json!({"username": "u", "email": "u@example.com", "sessionToken": "r:secret", "password": "p",
               "authData": {"anonymous": {"id": "x"}}, "_hashed_password": "h", "ACL": {"*": {"read": true}}}),
    );
    server
        .create_with_clp(
            user,
            json!({"find": {"*": true}, "protectedFields": {"*": ["email"]}}),
        )
        .await;
    let seen = anon.recv().await["object"].clone();
    for hidden in [
        "email",
        "sessionToken",
        "password",
        "authData",
        "_hashed_password",
    ] {
        assert!(seen.get(hidden).is_none(), "anonymous saw {hidden}: {seen}");
    }
    let seen = owner.recv().await["object"].clone();
    assert_eq!(
        (
            seen["email"].as_str(),
            seen["authData"]["anonymous"]["id"].as_str()
        ),
        (Some("u@example.com"), Some("x"))
    );
    assert!(
        seen.get("sessionToken").is_none() && seen.get("password").is_none(),
        "{seen}"
    );
}

#[tokio::test]
async fn default_protected_fields_hide_user_email() {
    let server = TestServer::start("").await;
    let mut anon = server.connected(None).await;
    anon.subscribe(1, "_User", json!({})).await;
    // No CLP in the message: the server's protected_fields default applies.
    server
        .create(object(
            "_User",
            "u",
            json!({"username": "u", "email": "u@example.com"}),
        ))
        .await;
    let seen = anon.recv().await["object"].clone();
    assert!(seen.get("email").is_none(), "{seen}");
    anon.send(json!({"op": "subscribe", "requestId": 2, "query": {"className": "_User", "where": {"email": "u@example.com"}}})).await;
    assert_eq!(anon.recv().await, denied(119, 2));
}

#[tokio::test]
async fn sessions_are_private_and_tokens_withheld() {
    let server = TestServer::start("").await;
    let mut anon = server.connected(None).await;
    anon.send(
        json!({"op": "subscribe", "requestId": 3, "query": {"className": "_Session", "where": {}}}),
    )
    .await;
    assert_eq!(
        anon.recv().await,
        json!({"op": "error", "error": "Invalid session token", "code": 209, "reconnect": false, "requestId": 3})
    );
    server.session("r:alice", "alice", &[]).await;
    let mut alice = server.connected(Some("r:alice")).await;
    // A client-supplied `user` constraint is overridden.
    alice
        .subscribe(
            1,
            "_Session",
            json!({"user": {"__type": "Pointer", "className": "_User", "objectId": "bob"}}),
        )
        .await;
    let session = |id: &str, user: &str, token: &str| {
        object(
            "_Session",
            id,
            json!({"user": {"__type": "Pointer", "className": "_User", "objectId": user}, "sessionToken": token,
            "createdWith": {"action": "login", "authProvider": "password"}, "expiresAt": {"__type": "Date", "iso": "2099-01-01T00:00:00.000Z"}}),
        )
    };
    server.create(session("s-bob", "bob", "r:bob2")).await;
    server.create(session("s-alice", "alice", "r:alice2")).await;
    let event = alice.recv().await;
    assert_eq!(event["object"]["objectId"], "s-alice");
    assert!(
        event["object"].get("sessionToken").is_none(),
        "only master sees session tokens: {event}"
    );
    assert_eq!(event["object"]["createdWith"]["action"], "login");
}

#[tokio::test]
async fn logout_stops_access_at_once() {
    let server = TestServer::start("").await;
    server.session("r:u", "u", &[]).await;
    let mut client = server.connected(Some("r:u")).await;
    client.subscribe(1, "M", json!({})).await;
    server
        .create(object("M", "first", json!({"ACL": {"u": {"read": true}}})))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "first");
    let (status, _) = server
        .http(
            "DELETE",
            "/livequery/v1/sessions/r:u",
            None,
            Some(crate::support::MASTER_KEY),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    server
        .create(object("M", "second", json!({"ACL": {"u": {"read": true}}})))
        .await;
    server.create(object("M", "sentinel", json!({}))).await;
    assert_eq!(client.recv().await["object"]["objectId"], "sentinel");
}

#[tokio::test]
async fn sessions_fed_as_objects_are_tracked() {
    let server = TestServer::start("").await;
    let mut client = server.connected(Some("r:fed")).await;
    client.subscribe(1, "M", json!({})).await;
    let session = object(
        "_Session",
        "s1",
        json!({"user": {"__type": "Pointer", "className": "_User", "objectId": "u9"}, "sessionToken": "r:fed"}),
    );
    server.create(session.clone()).await;
    server
        .create(object("M", "mine", json!({"ACL": {"u9": {"read": true}}})))
        .await;
    assert_eq!(client.recv().await["object"]["objectId"], "mine");
    server.delete(session).await;
    server
        .create(object(
            "M",
            "after-logout",
            json!({"ACL": {"u9": {"read": true}}}),
        ))
        .await;
    server.create(object("M", "sentinel", json!({}))).await;
    assert_eq!(client.recv().await["object"]["objectId"], "sentinel");
}

#[tokio::test]
async fn invalid_tokens_read_as_anonymous() {
    let server = TestServer::start("").await;
    let mut client = server.connected(Some("r:doesnotexist")).await;
    client
        .subscribe_with(json!({"op": "subscribe", "requestId": 1, "query": {"className": "M", "where": {}}, "sessionToken": "r:nope"}))
        .await;
    server
        .create(object(
            "M",
            "private",
            json!({"ACL": {"u": {"read": true}}}),
        ))
        .await;
    server.create(object("M", "public", json!({}))).await;
    assert_eq!(client.recv().await["object"]["objectId"], "public");
}

#[tokio::test]
async fn schema_permissions_outlive_the_cache_period() {
    let server = TestServer::start("[auth]\ncache_timeout = \"100ms\"").await;
    server
        .schema(
            "P",
            json!({"find": {"*": true}, "protectedFields": {"*": ["secret"]}}),
        )
        .await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "P", json!({})).await;
    // Several cache periods pass; the event carries no CLP of its own.
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    server
        .create(object("P", "o", json!({"secret": "s", "open": 1})))
        .await;
    let seen = client.recv().await["object"].clone();
    assert!(seen.get("secret").is_none(), "{seen}");
}
