//! The real Parse JS SDK against the MongoDB source (on the simulated replica set):
//! `tests/conformance/mongo-sdk.mjs` subscribes, asks for writes line by line, and checks what
//! the SDK makes of the frames — including the reconnect after lost history.
//!
//! Needs `node` and `tests/conformance/node_modules` (scripts/stack-install). Where they are
//! missing the test is reported as ignored (`cfg(node_tests)`, see build.rs); where it runs
//! (or `LIVEQUERY_TEST_REQUIRE_NODE` is set, as scripts/test does), missing tools fail it.

use std::path::PathBuf;
use std::process::Stdio;

use bson::{Bson, Document};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::mongo_sim::SimMongo;
use crate::support::TestServer;

fn document(value: &Value) -> Document {
    match Bson::try_from(value.clone()).expect("extended JSON") {
        Bson::Document(document) => document,
        other => panic!("not a document: {other:?}"),
    }
}

#[tokio::test]
#[cfg_attr(
    not(node_tests),
    ignore = "needs node and the Parse JS SDK: run scripts/stack-install"
)]
async fn the_parse_js_sdk_follows_the_change_stream_and_recovers_from_lost_history() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/conformance/mongo-sdk.mjs");
    let sdk = root.join("tests/conformance/node_modules/parse/package.json");
    assert!(
        sdk.exists(),
        "the Parse JS SDK is required: run scripts/stack-install"
    );
    let sim = SimMongo::new();
    sim.insert(
        "_SCHEMA",
        document(&serde_json::json!({
            "_id": "Message", "objectId": "string", "createdAt": "date", "updatedAt": "date", "ACL": "object",
            "room": "string", "score": "number", "author": "*_User",
            "_metadata": {"class_permissions": {"find": {"*": true}, "get": {"*": true}}}
        })),
    );
    let server = TestServer::start_mongo("", sim.store(), true).await;
    let spawned = Command::new("node")
        .arg(&script)
        .current_dir(root.join("tests/conformance"))
        .env("LIVEQUERY_WS_URL", format!("ws://{}", server.addr))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    let mut node =
        spawned.unwrap_or_else(|err| panic!("node is required: run scripts/stack-install ({err})"));
    let mut stdin = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut done = false;
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            let command: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a command: {line}"));
            let collection = command["collection"].as_str().unwrap_or_default();
            match command["op"].as_str() {
                Some("insert") => sim.insert(collection, document(&command["document"])),
                Some("update") => sim.update(
                    collection,
                    command["id"].as_str().expect("id"),
                    document(&command["set"]),
                    &[],
                ),
                Some("lose_history") => sim.lose_history(),
                Some("done") => {
                    done = true;
                    break;
                }
                _ => panic!("unknown command {command}"),
            }
            stdin.write_all(b"ok\n").await.expect("acknowledge");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(90), run)
        .await
        .expect("the SDK script finished in time");
    let status = node.wait().await.expect("node exit");
    assert!(
        status.success() && done,
        "the SDK script failed ({status}); its error is above"
    );
    server.stop().await;
}
