//! The MongoDB source's conversion and event interpretation, on recorded documents in
//! MongoDB's documented formats (`tests/fixtures/mongo/*.json`, extended JSON).

use std::collections::BTreeSet;
use std::path::PathBuf;

use bson::{Bson, Document};
use livequery_matcher::ChangeKind;
use livequery_server::event::OriginalState;
use livequery_server::source::mongo::cache::ObjectCache;
use livequery_server::source::mongo::convert::{FileUrls, to_parse_json};
use livequery_server::source::mongo::schema::Schemas;
use livequery_server::source::mongo::store::RawEvent;
use livequery_server::source::mongo::transform::{LiveClasses, Output, Transformer};
use serde_json::{Value, json};

use crate::mongo_sim::SimMongo;
use crate::support::TestServer;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mongo")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON")
}

/// Extended JSON → a BSON document.
fn document(value: &Value) -> Document {
    match Bson::try_from(value.clone()).expect("extended JSON") {
        Bson::Document(document) => document,
        other => panic!("not a document: {other:?}"),
    }
}

/// Extended JSON → a change event, decoded from raw BSON bytes as the driver does.
fn event(value: &Value) -> Result<RawEvent, bson::de::Error> {
    let bytes = bson::to_vec(&document(value)).expect("BSON bytes");
    bson::from_slice(&bytes)
}

fn schemas() -> Schemas {
    let schemas = Schemas::default();
    let documents: Vec<Document> = fixture("schemas.json")["schemas"]
        .as_array()
        .expect("schemas")
        .iter()
        .map(document)
        .collect();
    schemas.replace_all(&documents);
    schemas
}

fn files() -> FileUrls {
    FileUrls {
        base: Some("http://parse.example/parse".to_owned()),
        app_id: "lqApp".to_owned(),
    }
}

#[test]
fn stored_documents_become_the_parse_json_parse_server_publishes() {
    let schemas = schemas();
    let cases = fixture("convert.json");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 7);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let class = case["class"].as_str().expect("class");
        let converted = to_parse_json(
            class,
            &document(&case["document"]),
            schemas.get(class).as_deref(),
            &files(),
        );
        assert_eq!(Value::Object(converted), case["expect"], "case {name:?}");
    }
}

#[test]
fn without_a_files_base_file_fields_carry_no_url() {
    let schemas = schemas();
    let stored = document(&json!({"_id": "m1", "attachment": "abc_f.txt"}));
    let converted = to_parse_json(
        "Message",
        &stored,
        schemas.get("Message").as_deref(),
        &FileUrls::default(),
    );
    assert_eq!(
        converted["attachment"],
        json!({"__type": "File", "name": "abc_f.txt"})
    );
}

fn output_json(output: Output) -> Value {
    match output {
        Output::Change(message) => {
            let state = match &message.original_state {
                OriginalState::Exact => json!("exact"),
                OriginalState::Partial { changed } => {
                    let sorted: BTreeSet<&String> = changed.iter().collect();
                    json!({"partial": sorted})
                }
                OriginalState::Unknown => json!("unknown"),
            };
            let kind = match message.kind {
                ChangeKind::Save => "save",
                ChangeKind::Delete => "delete",
            };
            json!({"change": {"kind": kind, "original_state": state, "current": message.current, "original": message.original}})
        }
        Output::Schema(class) => json!({"schema": class}),
        Output::Session { id, token } => json!({"session": {"id": id, "token": token}}),
        Output::UserRoles(user) => json!({"user_roles": user}),
        Output::RoleGraph => json!({"role_graph": true}),
        Output::Join {
            field,
            owner_class,
            owning_id,
            related_id,
            added,
        } => {
            json!({"join": {"field": field, "owner_class": owner_class, "owning_id": owning_id, "related_id": related_id, "added": added}})
        }
        Output::Dropped(class) => json!({"dropped": class}),
        Output::Invalidated => json!({"invalidated": true}),
    }
}

#[test]
fn change_events_mean_what_parse_server_would_have_published() {
    let cases = fixture("events.json");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 17);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let schemas = schemas();
        let live = case.get("live").map(|list| {
            list.as_array()
                .expect("live")
                .iter()
                .map(|c| c.as_str().expect("class").to_owned())
                .collect()
        });
        let mut transformer = Transformer {
            prefix: String::new(),
            live: LiveClasses(live),
            files: files(),
            cache: ObjectCache::new(100),
        };
        let mut outputs = Vec::new();
        for raw in case["events"].as_array().expect("events") {
            let event = event(raw)
                .unwrap_or_else(|err| panic!("case {name:?}: event does not parse: {err}"));
            outputs.extend(
                transformer
                    .transform(event, &schemas)
                    .into_iter()
                    .map(output_json),
            );
        }
        assert_eq!(Value::Array(outputs), case["expect"], "case {name:?}");
    }
}

#[test]
fn a_collection_prefix_is_stripped_and_foreign_collections_are_ignored() {
    let schemas = schemas();
    let mut transformer = Transformer {
        prefix: "app1_".to_owned(),
        live: LiveClasses(None),
        files: files(),
        cache: ObjectCache::new(10),
    };
    let insert = |coll: &str| -> RawEvent {
        event(&json!({
            "_id": {"_data": "01"}, "operationType": "insert", "ns": {"db": "parse", "coll": coll},
            "documentKey": {"_id": "p1"}, "fullDocument": {"_id": "p1", "n": 1}
        }))
        .expect("event")
    };
    let outputs: Vec<Value> = transformer
        .transform(insert("app1_Plain"), &schemas)
        .into_iter()
        .map(output_json)
        .collect();
    assert_eq!(
        outputs,
        vec![
            json!({"change": {"kind": "save", "original_state": "exact", "original": null, "current": {"objectId": "p1", "n": 1, "className": "Plain"}}})
        ]
    );
    assert!(
        transformer
            .transform(insert("app2_Plain"), &schemas)
            .is_empty(),
        "another app's collection"
    );
}

#[test]
fn updates_through_arrays_and_truncations_rebuild_the_exact_next_version() {
    let schemas = schemas();
    let mut transformer = Transformer {
        prefix: String::new(),
        live: LiveClasses(None),
        files: files(),
        cache: ObjectCache::new(10),
    };
    let insert = event(&json!({
        "_id": {"_data": "01"}, "operationType": "insert", "ns": {"db": "parse", "coll": "Doc"}, "documentKey": {"_id": "d1"},
        "fullDocument": {"_id": "d1", "list": [1, 2, 3, 4], "rows": [{"a": 1}, {"a": 2}], "keep": true}
    }))
    .expect("event");
    transformer.transform(insert, &schemas);
    // No post-image (updateLookup found nothing): the cached version plus the description.
    let update = event(&json!({
        "_id": {"_data": "02"}, "operationType": "update", "ns": {"db": "parse", "coll": "Doc"}, "documentKey": {"_id": "d1"},
        "updateDescription": {"updatedFields": {"rows.1.a": 5, "list.1": 9}, "removedFields": ["keep"],
            "truncatedArrays": [{"field": "list", "newSize": 2}]}
    }))
    .expect("event");
    let outputs: Vec<Value> = transformer
        .transform(update, &schemas)
        .into_iter()
        .map(output_json)
        .collect();
    assert_eq!(
        outputs[0]["change"]["current"],
        json!({"objectId": "d1", "list": [1, 9], "rows": [{"a": 1}, {"a": 5}], "className": "Doc"})
    );
    assert_eq!(
        outputs[0]["change"]["original"],
        json!({"objectId": "d1", "list": [1, 2, 3, 4], "rows": [{"a": 1}, {"a": 2}], "keep": true, "className": "Doc"})
    );
    assert_eq!(outputs[0]["change"]["original_state"], json!("exact"));
}

#[test]
fn a_looked_up_later_version_does_not_replace_the_exact_one() {
    // Without pre-images the driver's updateLookup can return a version later than the event;
    // with the previous version cached, the event's own version is rebuilt instead.
    let schemas = schemas();
    let mut transformer = Transformer {
        prefix: String::new(),
        live: LiveClasses(None),
        files: files(),
        cache: ObjectCache::new(10),
    };
    let insert = event(&json!({
        "_id": {"_data": "01"}, "operationType": "insert", "ns": {"db": "parse", "coll": "Doc"}, "documentKey": {"_id": "d1"},
        "fullDocument": {"_id": "d1", "a": 0, "b": 0}
    }))
    .expect("event");
    transformer.transform(insert, &schemas);
    let update = |data: &str, field: &str, later: Value| -> RawEvent {
        event(&json!({
            "_id": {"_data": data}, "operationType": "update", "ns": {"db": "parse", "coll": "Doc"}, "documentKey": {"_id": "d1"},
            "updateDescription": {"updatedFields": {field: 1}, "removedFields": []}, "fullDocument": later
        }))
        .expect("event")
    };
    let first: Vec<Value> = transformer
        .transform(
            update("02", "a", json!({"_id": "d1", "a": 1, "b": 1})),
            &schemas,
        )
        .into_iter()
        .map(output_json)
        .collect();
    assert_eq!(
        first[0]["change"]["current"],
        json!({"objectId": "d1", "a": 1, "b": 0, "className": "Doc"})
    );
    let second: Vec<Value> = transformer
        .transform(
            update("03", "b", json!({"_id": "d1", "a": 1, "b": 1})),
            &schemas,
        )
        .into_iter()
        .map(output_json)
        .collect();
    assert_eq!(
        second[0]["change"]["original"],
        json!({"objectId": "d1", "a": 1, "b": 0, "className": "Doc"})
    );
    assert_eq!(
        second[0]["change"]["current"],
        json!({"objectId": "d1", "a": 1, "b": 1, "className": "Doc"})
    );
}

/// Replays each recorded stream of `stream.json` through a running server and compares every
/// client's frames with the expected ones, exactly and in order.
#[tokio::test]
async fn recorded_streams_become_the_expected_client_events() {
    let cases = fixture("stream.json");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let sim = SimMongo::new();
        for (collection, documents) in case["collections"].as_object().expect("collections") {
            for stored in documents.as_array().expect("documents") {
                sim.insert(collection, document(stored));
            }
        }
        let server = TestServer::start_mongo("", sim.store(), true).await;
        let mut clients = Vec::new();
        for spec in case["clients"].as_array().expect("clients") {
            let mut client = server.connected(spec["session"].as_str()).await;
            client
                .subscribe_with(
                    json!({"op": "subscribe", "requestId": 1, "query": spec["subscribe"]}),
                )
                .await;
            client.subscribe(99, "Sentinel", json!({})).await;
            clients.push((
                spec["name"].as_str().expect("client name").to_owned(),
                client,
            ));
        }
        for event in case["events"].as_array().expect("events") {
            sim.replay(document(event));
        }
        sim.replay(document(&json!({
            "operationType": "insert", "ns": {"db": "parse", "coll": "Sentinel"}, "documentKey": {"_id": "end"},
            "fullDocument": {"_id": "end"}
        })));
        for (client_name, client) in &mut clients {
            let mut frames = Vec::new();
            loop {
                let mut frame = client.recv().await;
                if frame["requestId"] == 99 {
                    break;
                }
                frame.as_object_mut().expect("frame").remove("clientId");
                frames.push(frame);
            }
            assert_eq!(
                Value::Array(frames),
                case["expect"][client_name.as_str()],
                "case {name:?}, client {client_name:?}"
            );
        }
        drop(clients);
        server.stop().await;
    }
}
