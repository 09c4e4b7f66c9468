//! The MongoDB source against a real replica set. No `mongod` can be installed where CI runs,
//! so these run only when `LIVEQUERY_TEST_MONGODB_URL` names one (e.g.
//! `mongodb://127.0.0.1:27017/?replicaSet=rs0`; `docker compose up mongo` starts one); without
//! it they are reported as ignored. Each test uses a database of its own and drops it.

use std::sync::Arc;

use bson::{DateTime, Document, doc};
use livequery_server::source::mongo::store::{MongoBackend, Store};
use serde_json::json;

use crate::support::{Client, TestServer};

struct Live {
    url: String,
    name: String,
    database: mongodb::Database,
}

impl Live {
    async fn new() -> Self {
        let url = std::env::var("LIVEQUERY_TEST_MONGODB_URL").expect("LIVEQUERY_TEST_MONGODB_URL");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = mongodb::Client::with_uri_str(&url)
            .await
            .expect("connect to LIVEQUERY_TEST_MONGODB_URL");
        let name = format!("lq_test_{}", uuid::Uuid::new_v4().simple());
        let database = client.database(&name);
        Self {
            url,
            name,
            database,
        }
    }

    async fn store(&self) -> Arc<dyn Store> {
        Arc::new(
            MongoBackend::connect(&self.url, &self.name)
                .await
                .expect("backend"),
        )
    }

    fn overrides(&self, extra: &str) -> String {
        format!(
            "[mongodb]\nurl = \"{}\"\ndatabase = \"{}\"\n{extra}",
            self.url.replace('"', "\\\""),
            self.name
        )
    }

    fn collection(&self, name: &str) -> mongodb::Collection<Document> {
        self.database.collection(name)
    }

    /// A `_SCHEMA` document with public permissions, as parse-server writes it.
    async fn schema(&self, class_name: &str, fields: Document) {
        let mut document = doc! {"_id": class_name, "objectId": "string", "createdAt": "date", "updatedAt": "date", "ACL": "object",
        "_metadata": {"class_permissions": {"find": {"*": true}, "get": {"*": true}, "count": {"*": true}, "create": {"*": true},
            "update": {"*": true}, "delete": {"*": true}, "addField": {"*": true}, "protectedFields": {"*": ["secret"]}}}};
        document.extend(fields);
        self.collection("_SCHEMA")
            .insert_one(document)
            .await
            .expect("insert _SCHEMA");
    }

    async fn drop(self) {
        self.database.drop().await.expect("drop the test database");
    }
}

fn stored(id: &str, fields: Document) -> Document {
    let now = DateTime::now();
    let mut document =
        doc! {"_id": id, "_created_at": now, "_updated_at": now, "_rperm": ["*"], "_wperm": []};
    document.extend(fields);
    document
}

async fn next_op(client: &mut Client) -> (String, String) {
    let frame = client.recv().await;
    (
        frame["op"].as_str().unwrap_or_default().to_owned(),
        frame["object"]["objectId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
#[cfg_attr(
    not(mongodb_live),
    ignore = "needs a MongoDB replica set: set LIVEQUERY_TEST_MONGODB_URL"
)]
async fn live_writes_become_events_with_exact_originals() {
    let live = Live::new().await;
    live.schema(
        "Message",
        doc! {"room": "string", "n": "number", "secret": "string"},
    )
    .await;
    live.collection("Message")
        .insert_one(stored("seed", doc! {"room": "lobby"}))
        .await
        .expect("seed");
    let server = TestServer::start_mongo(&live.overrides(""), live.store().await, true).await;
    let mut client = server.connected(None).await;
    client
        .subscribe(1, "Message", json!({"room": "r1", "n": {"$gte": 1}}))
        .await;
    let messages = live.collection("Message");

    messages
        .insert_one(stored("m1", doc! {"room": "r1", "n": 1, "secret": "s"}))
        .await
        .expect("insert");
    let create = client.recv().await;
    assert_eq!(create["op"], "create", "{create}");
    assert_eq!(create["object"]["n"], 1);
    assert!(
        create["object"].get("secret").is_none(),
        "protected field: {create}"
    );
    assert!(create["object"]["createdAt"].is_string());

    messages
        .update_one(doc! {"_id": "m1"}, doc! {"$set": {"n": 2}})
        .await
        .expect("update");
    let update = client.recv().await;
    assert_eq!(
        (update["op"].clone(), update["original"]["n"].clone()),
        (json!("update"), json!(1)),
        "{update}"
    );

    messages
        .update_one(doc! {"_id": "seed"}, doc! {"$set": {"room": "r1", "n": 5}})
        .await
        .expect("update");
    let enter = client.recv().await;
    assert_eq!(enter["op"], "enter", "{enter}");

    messages
        .update_one(doc! {"_id": "m1"}, doc! {"$set": {"room": "r2"}})
        .await
        .expect("update");
    assert_eq!(
        next_op(&mut client).await,
        ("leave".to_owned(), "m1".to_owned())
    );
    messages
        .delete_one(doc! {"_id": "seed"})
        .await
        .expect("delete");
    assert_eq!(
        next_op(&mut client).await,
        ("delete".to_owned(), "seed".to_owned())
    );
    drop(client);
    server.stop().await;
    live.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(mongodb_live),
    ignore = "needs a MongoDB replica set: set LIVEQUERY_TEST_MONGODB_URL"
)]
async fn live_query_op_and_subqueries_run_valid_filters() {
    let live = Live::new().await;
    live.schema(
        "Message",
        doc! {"room": "string", "n": "number", "author": "*_User", "at": "date"},
    )
    .await;
    live.schema("Room", doc! {"open": "boolean"}).await;
    live.collection("Room")
        .insert_one(stored("open", doc! {"open": true}))
        .await
        .expect("room");
    for i in 0..20 {
        let room = if i % 2 == 0 { "r1" } else { "r2" };
        let at = DateTime::from_millis(1_795_338_840_000 + i * 1000);
        live.collection("Message")
            .insert_one(stored(&format!("m{i}"), doc! {"room": room, "n": i, "_p_author": "_User$u1", "at": at, "_p_inRoom": "Room$open"}))
            .await
            .expect("insert");
    }
    let server = TestServer::start_mongo(&live.overrides(""), live.store().await, true).await;
    let mut client = server.connected(None).await;
    let author = json!({"__type": "Pointer", "className": "_User", "objectId": "u1"});
    client
        .subscribe(
            1,
            "Message",
            json!({
                "room": {"$in": ["r1"]}, "n": {"$gt": 3, "$lte": 12}, "author": author,
                "at": {"$gte": {"__type": "Date", "iso": "2026-11-22T09:14:04.000Z"}},
                "$or": [{"n": {"$ne": 8}}, {"room": "nowhere"}], "text": {"$exists": false}
            }),
        )
        .await;
    client.send(json!({"op": "query", "requestId": 1})).await;
    let result = client.recv().await;
    let mut ids: Vec<String> = result["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .map(|o| o["objectId"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["m10", "m12", "m4", "m6"]);
    client
        .subscribe(
            2,
            "Message",
            json!({"inRoom": {"$inQuery": {"className": "Room", "where": {"open": true}}}}),
        )
        .await;
    live.collection("Message")
        .insert_one(stored("late", doc! {"_p_inRoom": "Room$open"}))
        .await
        .expect("insert");
    let frame = client.recv().await;
    assert_eq!(
        (
            frame["requestId"].clone(),
            frame["object"]["objectId"].clone()
        ),
        (json!(2), json!("late")),
        "{frame}"
    );
    drop(client);
    server.stop().await;
    live.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(mongodb_live),
    ignore = "needs a MongoDB replica set: set LIVEQUERY_TEST_MONGODB_URL"
)]
async fn live_restart_resumes_from_the_saved_token() {
    let live = Live::new().await;
    live.schema("Message", doc! {}).await;
    let token_file = std::env::temp_dir().join(format!("{}.token", live.name));
    let overrides = live.overrides(&format!(
        "resume_token_file = \"{}\"\n",
        token_file.display()
    ));
    let server = TestServer::start_mongo(&overrides, live.store().await, true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    live.collection("Message")
        .insert_one(stored("before", doc! {}))
        .await
        .expect("insert");
    assert_eq!(next_op(&mut client).await.1, "before");
    drop(client);
    server.stop().await;
    assert!(token_file.exists(), "the token is saved at shutdown");

    live.collection("Message")
        .insert_one(stored("while-down", doc! {}))
        .await
        .expect("insert");
    live.collection("Message")
        .update_one(doc! {"_id": "while-down"}, doc! {"$set": {"n": 1}})
        .await
        .expect("update");
    let server = TestServer::start_mongo(&overrides, live.store().await, true).await;
    // The two writes made while the server was down are replayed from the oplog.
    for _ in 0..500 {
        if server.metric("livequery_events_in_total").await >= 2.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.metric("livequery_events_in_total").await,
        2.0,
        "replayed after the saved token"
    );
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    live.collection("Message")
        .update_one(doc! {"_id": "while-down"}, doc! {"$set": {"n": 2}})
        .await
        .expect("update");
    let update = client.recv().await;
    assert_eq!(
        (update["op"].clone(), update["original"]["n"].clone()),
        (json!("update"), json!(1)),
        "{update}"
    );
    drop(client);
    server.stop().await;
    let _ = std::fs::remove_file(&token_file);
    live.drop().await;
}

#[tokio::test]
#[cfg_attr(
    not(mongodb_live),
    ignore = "needs a MongoDB replica set: set LIVEQUERY_TEST_MONGODB_URL"
)]
async fn live_dropped_database_tells_clients_to_reconnect() {
    let live = Live::new().await;
    live.schema("Message", doc! {}).await;
    live.collection("Message")
        .insert_one(stored("m", doc! {}))
        .await
        .expect("insert");
    let server = TestServer::start_mongo(&live.overrides(""), live.store().await, true).await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({})).await;
    live.database.drop().await.expect("drop");
    let error = client.recv().await;
    assert_eq!(
        (error["code"].clone(), error["reconnect"].clone()),
        (json!(100), json!(true)),
        "{error}"
    );
    drop(client);
    server.stop().await;
}
