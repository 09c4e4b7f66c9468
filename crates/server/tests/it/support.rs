//! Test harness: a server on 127.0.0.1:0 with the embedded source, WebSocket clients, and
//! the HTTP ingest API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use livequery_server::backend::ObjectReader;
use livequery_server::config::{Config, SourceKind};
use livequery_server::identity::memory::MemoryIdentities;
use livequery_server::source::mongo::store::Store;
use livequery_server::{Components, Server};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub(crate) const MASTER_KEY: &str = "test-master-key";
/// How long a test waits for a frame that must arrive.
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The test defaults (known master key, one dispatcher worker, short grace) plus `layers`.
pub(crate) fn test_config(layers: &[&str]) -> Config {
    let base = format!(
        "[parse]\napp_id = \"lqApp\"\nmaster_key = \"{MASTER_KEY}\"\n[dispatch]\nworkers = 1\n[server]\nshutdown_grace = \"2s\"\ndrain_period = \"0s\"\n"
    );
    let mut all: Vec<&str> = vec![&base];
    all.extend_from_slice(layers);
    Config::from_toml_layers(&all).expect("test config is valid")
}

/// A running server.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// A server with the defaults plus `overrides` (TOML), one dispatcher worker (so all
    /// events reach a connection in publication order) and a known master key.
    pub(crate) async fn start(overrides: &str) -> Self {
        Self::start_with(overrides, None).await
    }

    /// Same, with a reader for the `query` op.
    pub(crate) async fn start_with(overrides: &str, reader: Option<Arc<dyn ObjectReader>>) -> Self {
        let mut components = Components::embedded(Arc::new(MemoryIdentities::new()));
        components.reader = reader;
        Self::start_components(overrides, components, true).await
    }

    /// A server with the given components; `wait_for_source` waits until `/health` is 200.
    pub(crate) async fn start_components(
        overrides: &str,
        components: Components,
        wait_for_source: bool,
    ) -> Self {
        Self::start_config(test_config(&[overrides]), components, wait_for_source).await
    }

    /// A server on the MongoDB source over `store` (in CI: the simulated database of
    /// `mongo_sim`); `overrides` may set `[mongodb]` options.
    pub(crate) async fn start_mongo(
        overrides: &str,
        store: Arc<dyn Store>,
        wait_for_source: bool,
    ) -> Self {
        let config = test_config(&["[source]\nkind = \"mongodb\"\n", overrides]);
        let SourceKind::Mongo(mongo) = &config.source else {
            panic!("not a mongodb configuration")
        };
        let components = Components::mongo(store, &mongo.clone(), &config);
        Self::start_config(config, components, wait_for_source).await
    }

    async fn start_config(config: Config, components: Components, wait_for_source: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = Server::new(Arc::new(config), listener, components);
        let handle = tokio::spawn(server.run(shutdown.clone()));
        let this = Self {
            addr,
            shutdown,
            handle: Some(handle),
        };
        if wait_for_source {
            this.wait_healthy().await;
        }
        this
    }

    pub(crate) async fn wait_healthy(&self) {
        for _ in 0..200 {
            if let Ok((200, _)) = self.http("GET", "/health", None, None).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not become healthy");
    }

    /// A connected WebSocket client (not yet sent `connect`).
    pub(crate) async fn client(&self) -> Client {
        Client::open(self.addr, "/").await
    }

    /// A client that already did `connect` (optionally with a session token).
    pub(crate) async fn connected(&self, session_token: Option<&str>) -> Client {
        let mut client = self.client().await;
        let mut frame = json!({"op": "connect", "applicationId": "test"});
        if let Some(token) = session_token {
            frame["sessionToken"] = json!(token);
        }
        client.send(frame).await;
        let reply = client.recv().await;
        assert_eq!(reply["op"], "connected", "{reply}");
        client
    }

    /// An HTTP request; returns the status and the JSON (or text) body.
    pub(crate) async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        master_key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let stream = TcpStream::connect(self.addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(key) = master_key {
            request = request.header("X-Parse-Master-Key", key);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// Posts a parse-server pub/sub message (or an array of them) to the ingest endpoint.
    pub(crate) async fn publish(&self, channel: &str, message: Value) {
        let (status, body) = self
            .http(
                "POST",
                &format!("/livequery/v1/publish/{channel}"),
                Some(&message),
                Some(MASTER_KEY),
            )
            .await
            .expect("publish request");
        assert_eq!(status, 202, "publish failed: {body}");
    }

    /// `afterSave` of a new object.
    pub(crate) async fn create(&self, object: Value) {
        self.publish("afterSave", json!({ "currentParseObject": object }))
            .await;
    }

    /// `afterSave` of an update.
    pub(crate) async fn update(&self, original: Value, current: Value) {
        self.publish(
            "afterSave",
            json!({ "currentParseObject": current, "originalParseObject": original }),
        )
        .await;
    }

    /// `afterDelete`.
    pub(crate) async fn delete(&self, object: Value) {
        self.publish("afterDelete", json!({ "currentParseObject": object }))
            .await;
    }

    /// `afterSave` carrying class-level permissions.
    pub(crate) async fn create_with_clp(&self, object: Value, clp: Value) {
        self.publish(
            "afterSave",
            json!({ "currentParseObject": object, "classLevelPermissions": clp }),
        )
        .await;
    }

    /// Registers a session in the embedded source.
    pub(crate) async fn session(&self, token: &str, user_id: &str, roles: &[&str]) {
        let body = json!({"userId": user_id, "roles": roles});
        let (status, reply) = self
            .http(
                "PUT",
                &format!("/livequery/v1/sessions/{token}"),
                Some(&body),
                Some(MASTER_KEY),
            )
            .await
            .expect("session");
        assert_eq!(status, 200, "{reply}");
    }

    /// Sets a class's permissions in the embedded source.
    pub(crate) async fn schema(&self, class_name: &str, clp: Value) {
        let (status, reply) = self
            .http(
                "PUT",
                &format!("/livequery/v1/schemas/{class_name}"),
                Some(&clp),
                Some(MASTER_KEY),
            )
            .await
            .expect("schema");
        assert_eq!(status, 200, "{reply}");
    }

    /// The Prometheus exposition.
    pub(crate) async fn metrics(&self) -> String {
        match self
            .http("GET", "/metrics", None, None)
            .await
            .expect("metrics")
        {
            (200, Value::String(text)) => text,
            other => panic!("metrics: {other:?}"),
        }
    }

    /// The value of one metric line (`name` includes labels).
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Stops the server and waits for it.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A WebSocket test client.
pub(crate) struct Client {
    pub(crate) ws: WebSocketStream<TcpStream>,
}

impl Client {
    pub(crate) async fn open(addr: SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream)
            .await
            .expect("websocket handshake");
        Self { ws }
    }

    pub(crate) async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON; panics after [`FRAME_TIMEOUT`].
    pub(crate) async fn recv(&mut self) -> Value {
        tokio::time::timeout(FRAME_TIMEOUT, self.next_text())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection closed")
    }

    /// The next text frame, or `None` when the connection closed.
    pub(crate) async fn next_text(&mut self) -> Option<Value> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("server frames are JSON"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Waits for the close frame; returns its code.
    pub(crate) async fn closed(&mut self) -> Option<u16> {
        tokio::time::timeout(FRAME_TIMEOUT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return None,
                }
            }
        })
        .await
        .expect("timed out waiting for close")
    }

    /// Subscribes and waits for `subscribed`.
    pub(crate) async fn subscribe(&mut self, request_id: u32, class_name: &str, where_: Value) {
        self.subscribe_with(json!({"op": "subscribe", "requestId": request_id, "query": {"className": class_name, "where": where_}})).await;
    }

    /// Sends a full subscribe frame and waits for `subscribed`.
    pub(crate) async fn subscribe_with(&mut self, frame: Value) {
        let request_id = frame["requestId"].clone();
        self.send(frame).await;
        let reply = self.recv().await;
        assert_eq!(reply["op"], "subscribed", "{reply}");
        assert_eq!(reply["requestId"], request_id);
    }
}

/// A Parse object JSON with the given fields plus identity and timestamps.
pub(crate) fn object(class_name: &str, object_id: &str, fields: Value) -> Value {
    let mut object = fields;
    object["className"] = json!(class_name);
    object["objectId"] = json!(object_id);
    if object.get("createdAt").is_none() {
        object["createdAt"] = json!("2026-11-22T08:49:51.247Z");
    }
    if object.get("updatedAt").is_none() {
        object["updatedAt"] = json!("2026-11-22T08:49:51.247Z");
    }
    object
}
