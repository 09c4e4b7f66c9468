use serde_json::json;

use crate::support::{TestServer, object};

#[tokio::test]
async fn create_reaches_a_subscriber() {
    let server = TestServer::start("").await;
    let mut client = server.connected(None).await;
    client.subscribe(1, "Message", json!({"room": "r1"})).await;
    server
        .create(object("Message", "m1", json!({"room": "r1", "text": "hi"})))
        .await;
    let event = client.recv().await;
    assert_eq!(event["op"], "create");
    assert_eq!(event["requestId"], 1);
    assert_eq!(event["object"]["text"], "hi");
    assert_eq!(event["object"]["className"], "Message");
    server.stop().await;
}
